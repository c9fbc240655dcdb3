"""Checkpoints of a run: everything needed to continue it bit for bit (docs/runs.md, "Checkpoints and resume";
docs/reliability.md).

A checkpoint holds the network's ``state_dict`` (weights, biases, FA feedback buffers), the scheduler's (Adam state,
learning rates, noise-generator state, step counter), the global torch and numpy RNG states, the position in the
data order (``epochs_done`` completed epochs plus ``batches_done`` batches of the next one), the archive's row counts
and the digests of those rows at that moment (so a resumed run cuts the archive back to exactly the state the
checkpoint describes, and checks that what it keeps is intact), and the non-finite retries taken so far.

The two newest checkpoints live inside the run store, ``STORE/_checkpoints/last.pt`` and ``prev.pt`` (zarr ignores
the folder), so deleting the store deletes them and a new run can never resume from a stale one. Beside them,
``manifest.json`` lists the SHA-256 of every checkpoint file written that may still be on disk; a file whose hash is
not listed is damaged (truncated, overwritten, bit rot) and is passed over, with its path named, for the older one.

Writing (:func:`save`) never leaves a moment without an intact checkpoint: ``torch.save`` to a temp file in the same
folder, ``fsync``; its hash added to the manifest (temp file, ``fsync``, ``os.replace``); ``last.pt`` renamed to
``prev.pt``; the temp file renamed to ``last.pt``; ``fsync`` of the folder. A failed write (full disk, read-only
folder) leaves the previous checkpoints intact and raises :class:`~sim.archive.ArchiveError` naming the path. Only
tensors and primitives are stored, and files are read with ``torch.load(..., weights_only=True)``: a checkpoint
that holds anything else (e.g. a pickle that would run code) is refused, not executed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sim import faults
from sim.archive import ArchiveError, Digests, Lengths, io_errors

FOLDER = "_checkpoints"
FILENAME = "last.pt"
PREVIOUS = "prev.pt"
MANIFEST = "manifest.json"
FORMAT = 2
#: ``lengths`` keys of checkpoints written before the probe records were renamed (sim.archive.OLD_NAMES)
_NEW_LENGTHS = {"checkpoints": "probes"}
#: checksums the manifest keeps (the files on disk are at most last.pt, prev.pt and one being written)
_MANIFEST_ENTRIES = 4


def checkpoint_path(store: Path | str) -> Path:
    """Where the newest checkpoint of the run store ``store`` lives."""
    return Path(store) / FOLDER / FILENAME


def previous_path(store: Path | str) -> Path:
    """Where the checkpoint before the newest one lives."""
    return Path(store) / FOLDER / PREVIOUS


def manifest_path(store: Path | str) -> Path:
    """The checksum manifest of the store's checkpoints."""
    return Path(store) / FOLDER / MANIFEST


@dataclass
class Checkpoint:
    """A run's resumable state."""

    config_json: str
    """The resolved config (canonical JSON) the run was started with."""
    epochs_done: int
    """Completed epochs."""
    batches_done: int
    """Batches of epoch ``epochs_done + 1`` already trained on (0 after a completed epoch)."""
    step: int
    """Optimizer steps taken (= the scheduler's step counter)."""
    lengths: Lengths
    """The archive's rows along step / epoch / probe_epoch at this state."""
    network: dict[str, torch.Tensor]
    """``Network.state_dict()``."""
    scheduler: dict[str, Any]
    """``Scheduler.state_dict()`` (the optimizer's learning rates included)."""
    torch_rng: torch.Tensor
    """``torch.get_rng_state()``."""
    numpy_rng: dict[str, Any]
    """``numpy.random.get_state()`` as tensors and primitives."""
    reason: str = "scheduled"
    """Why it was written: 'start' (before the first step, for non-finite retries), 'scheduled', 'final' or
    'failure' (the last good state before a non-finite step)."""
    digests: Digests = field(default_factory=dict)
    """:attr:`sim.archive.RunArchive.digests` at this state: what :meth:`~sim.archive.RunArchive.verify` checks."""
    retries: list[dict[str, Any]] = field(default_factory=list)
    """The non-finite retries taken so far (``train.on_nonfinite: retry``): step, step resumed from, lr factor."""
    path: Path | None = None
    """The file it was read from (not stored)."""

    def to_state(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "config_json": self.config_json, "epochs_done": self.epochs_done,
            "batches_done": self.batches_done, "step": self.step,
            "lengths": {"steps": self.lengths.steps, "epochs": self.lengths.epochs,
                        "probes": self.lengths.probes},
            "network": self.network, "scheduler": self.scheduler, "torch_rng": self.torch_rng,
            "numpy_rng": self.numpy_rng, "reason": self.reason, "digests": self.digests,
            "retries": self.retries,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], path: Path | None = None) -> Checkpoint:
        if not isinstance(state, dict) or state.get("format") not in (1, FORMAT):
            found = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"checkpoint format {found!r}, expected {FORMAT}")
        return cls(config_json=state["config_json"], epochs_done=int(state["epochs_done"]),
                   batches_done=int(state["batches_done"]), step=int(state["step"]),
                   lengths=Lengths(**{_NEW_LENGTHS.get(k, k): int(v) for k, v in state["lengths"].items()}),
                   network=state["network"],
                   scheduler=state["scheduler"], torch_rng=state["torch_rng"], numpy_rng=state["numpy_rng"],
                   reason=str(state.get("reason", "scheduled")), digests=dict(state.get("digests", {})),
                   retries=list(state.get("retries", [])), path=path)


def numpy_rng_state() -> dict[str, Any]:
    """``numpy.random.get_state()`` in a form ``weights_only`` loading accepts."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def set_numpy_rng_state(state: dict[str, Any]) -> None:
    np.random.set_state((state["name"], state["keys"].numpy().astype(np.uint32), state["pos"], state["has_gauss"],
                         state["cached_gaussian"]))


# ----- writing ------------------------------------------------------------------------------------------------------
def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a folder be opened or synced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_manifest(folder: Path) -> list[dict[str, Any]] | None:
    """The manifest's entries, newest first; None if there is no manifest; raises ValueError if it is damaged."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    doc = json.loads(path.read_text(encoding="utf-8"))
    entries = doc.get("checkpoints") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("sha256"), str)
                                                for e in entries):
        raise ValueError("it does not list checkpoints with their sha256")
    return entries


def _save_error(folder: Path, exc: RuntimeError) -> OSError:
    """The ``OSError`` behind a ``RuntimeError`` of ``torch.save``: its zip writer reports a write that failed
    (a full disk, typically) as 'unexpected pos', not as the ``OSError`` it was. Told apart by the free space left."""
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, OSError):
        return cause
    try:
        st = os.statvfs(folder)
        full = st.f_bavail * st.f_frsize < (1 << 20)
    except OSError:
        full = False
    if full:
        return OSError(errno.ENOSPC, "No space left on device")
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return OSError(errno.EIO, f"torch.save failed to write the file ({first})")


def _write_atomic(path: Path, write) -> None:
    """Write a file through ``write(f)`` to a temp file beside ``path``, fsync it, rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def save(store: Path | str, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` as the store's newest checkpoint (the newest before it becomes ``prev.pt``); returns its path.

    At every moment of the write an intact checkpoint is on disk (the module docstring has the sequence)."""
    path = checkpoint_path(store)
    folder = path.parent
    with io_errors(path, "write the checkpoint"):
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(".*.tmp"):  # left by a write a kill interrupted
            with contextlib.suppress(OSError):
                stale.unlink()
        try:
            entries = _read_manifest(folder) or []
        except ValueError:
            entries = []  # a damaged manifest: start a new one (the files it described can no longer be verified)
        fd, tmp = tempfile.mkstemp(prefix=f".{FILENAME}.", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                try:
                    torch.save(ckpt.to_state(), f)
                    f.flush()
                except RuntimeError as exc:  # a failed write inside torch's zip writer ('unexpected pos ...')
                    raise _save_error(folder, exc) from exc
                faults.hit("checkpoint.write")
                os.fsync(f.fileno())
            entry = {"sha256": _sha256(Path(tmp)), "step": ckpt.step, "epochs_done": ckpt.epochs_done,
                     "batches_done": ckpt.batches_done, "reason": ckpt.reason}
            entries = [entry, *[e for e in entries if e.get("sha256") != entry["sha256"]]][:_MANIFEST_ENTRIES]
            faults.hit("checkpoint.manifest")
            doc = {"format": FORMAT, "checkpoints": entries}
            _write_atomic(folder / MANIFEST, lambda f: f.write(json.dumps(doc, indent=1).encode()))
            if path.exists():
                os.replace(path, folder / PREVIOUS)
                faults.hit("checkpoint.rotate")
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(folder)
    return path


# ----- checking what was read against the run ------------------------------------------------------------------------
def _tensor_problem(name: str, value: Any, like: torch.Tensor) -> str | None:
    if not isinstance(value, torch.Tensor):
        return f"{name} is a {type(value).__name__}, not a tensor"
    if value.shape != like.shape or value.dtype != like.dtype:
        return (f"{name} is {str(value.dtype).removeprefix('torch.')}{list(value.shape)}, the run's is "
                f"{str(like.dtype).removeprefix('torch.')}{list(like.shape)}")
    return None


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def fit_problem(ckpt: Checkpoint, *, network: dict[str, torch.Tensor], scheduler: dict[str, Any],
                param_shapes: list[torch.Size], epochs: int, steps_per_epoch: int) -> str | None:
    """Why ``ckpt`` (intact by its checksum) cannot continue this run, or None if it fits: its tensors against the
    run's ``network`` and ``scheduler`` state dicts (keys, shapes, dtypes; the optimizer's per-parameter state
    against ``param_shapes``, the parameters in the optimizer's order), the RNG states' types and sizes, and its
    position against ``epochs`` and ``steps_per_epoch``. A checkpoint that does not fit is passed over like a torn
    one (:func:`sim.run.recovery.resume_point`), instead of failing deep inside ``load_state_dict``."""
    net = ckpt.network
    if not isinstance(net, dict):
        return f"its network state is a {type(net).__name__}, not a mapping"
    if set(net) != set(network):
        odd = sorted(set(net) ^ set(network))[:4]
        return f"its network state has other tensors than the run's network (differs in {', '.join(map(str, odd))})"
    for key, like in network.items():
        if (why := _tensor_problem(f"network tensor {key!r}", net[key], like)) is not None:
            return why
    sch = ckpt.scheduler
    if not isinstance(sch, dict) or set(sch) != set(scheduler):
        return f"its scheduler state does not have the keys {sorted(scheduler)}"
    if not _int(sch["step"]) or sch["step"] != ckpt.step or ckpt.step < 0:
        return f"its scheduler's step counter {sch['step']!r} does not match its step {ckpt.step}"
    if (why := _tensor_problem("the noise generator state", sch["generator"], scheduler["generator"])) is not None:
        return why
    opt, ref = sch["optimizer"], scheduler["optimizer"]
    if not isinstance(opt, dict) or not isinstance(opt.get("state"), dict) or not isinstance(opt.get("param_groups"),
                                                                                             list):
        return "its optimizer state is not an optimizer state dict (state, param_groups)"
    groups, ref_groups = opt["param_groups"], ref["param_groups"]
    if len(groups) != len(ref_groups) or any(
            not isinstance(g, dict) or not isinstance(g.get("params"), list) or len(g["params"]) != len(r["params"])
            or not isinstance(g.get("lr"), (int, float)) for g, r in zip(groups, ref_groups)):
        return "its optimizer's parameter groups do not match the run's layers"
    index = [i for g in groups for i in g["params"]]
    if sorted(index) != list(range(len(param_shapes))):
        return "its optimizer's parameter groups do not list the run's parameters"
    for pid, entry in opt["state"].items():
        if pid not in index or not isinstance(entry, dict):
            return f"its optimizer state holds an unknown parameter {pid!r}"
        for name, value in entry.items():
            if not isinstance(value, torch.Tensor):
                if isinstance(value, (int, float)):
                    continue
                return f"its optimizer state {name!r} of parameter {pid} is a {type(value).__name__}"
            if value.ndim and value.shape != param_shapes[pid]:
                return (f"its optimizer state {name!r} of parameter {pid} has shape {list(value.shape)}, the "
                        f"parameter {list(param_shapes[pid])}")
    if (why := _tensor_problem("the torch RNG state", ckpt.torch_rng, torch.get_rng_state())) is not None:
        return why
    rng = ckpt.numpy_rng
    if not (isinstance(rng, dict) and rng.get("name") == "MT19937" and isinstance(rng.get("keys"), torch.Tensor)
            and rng["keys"].shape == (624,) and _int(rng.get("pos")) and 0 <= rng["pos"] <= 624
            and _int(rng.get("has_gauss")) and isinstance(rng.get("cached_gaussian"), (int, float))):
        return "its numpy RNG state is not an MT19937 state (name, 624 keys, pos, has_gauss, cached_gaussian)"
    if not (0 <= ckpt.epochs_done <= epochs and 0 <= ckpt.batches_done < max(1, steps_per_epoch)
            and ckpt.step <= epochs * steps_per_epoch):
        return (f"its position (epoch {ckpt.epochs_done} done, batch {ckpt.batches_done}, step {ckpt.step}) is "
                f"outside the run's {epochs} epochs of {steps_per_epoch} steps")
    lengths = ckpt.lengths
    if min(lengths.steps, lengths.epochs, lengths.probes) < 0:
        return f"its archive lengths {lengths} are negative"
    digests = ckpt.digests
    if not all(isinstance(k, str) and isinstance(v, list) and all(
            isinstance(r, list) and len(r) == 3 and _int(r[0]) and _int(r[1]) and isinstance(r[2], str) for r in v)
            for k, v in digests.items()):
        return "its archive digests are not lists of [first row, end row, digest]"
    if not isinstance(ckpt.config_json, str) or not isinstance(ckpt.retries, list):
        return "its config or retries have the wrong type"
    return None


# ----- reading ------------------------------------------------------------------------------------------------------
@dataclass
class Candidate:
    """One checkpoint file of a store, read and checked: ``checkpoint`` is set if it is intact, else ``problem``
    says what is wrong with it (naming its path)."""

    path: Path
    checkpoint: Checkpoint | None = None
    problem: str | None = None
    verified: bool = False
    """Whether its checksum was found in the manifest (False: no manifest to check it against)."""


def _read(path: Path, known: set[str] | None, map_location) -> Candidate:
    try:
        data = path.read_bytes()
    except OSError as exc:
        return Candidate(path, problem=f"checkpoint {path} cannot be read: {exc.strerror or exc}")
    if known is not None and hashlib.sha256(data).hexdigest() not in known:
        return Candidate(path, problem=f"checkpoint {path} is damaged (truncated or overwritten): its SHA-256 is "
                                       f"not among those {path.parent / MANIFEST} recorded when checkpoints were "
                                       "written")
    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling, zip and format errors all mean "refused"
        why = _load_error(exc)
        if "GLOBAL" in why or "global" in why:
            return Candidate(path, problem=f"checkpoint {path} holds objects other than tensors and plain values; "
                                           f"refused, not unpickled (torch.load with weights_only=True: {why})")
        return Candidate(path, problem=f"checkpoint {path} is unreadable ({why})")
    try:
        ckpt = Checkpoint.from_state(state, path)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        what = f"no key {exc}" if isinstance(exc, KeyError) else str(exc)
        return Candidate(path, problem=f"checkpoint {path} is unreadable (not a gaitsim checkpoint: {what})")
    return Candidate(path, checkpoint=ckpt, verified=known is not None)


def _load_error(exc: Exception) -> str:
    """The informative line of a ``torch.load`` error (torch wraps it in paragraphs of advice)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "GLOBAL" in line or "error:" in line and line.split("error:", 1)[1].strip():
            return line.split("error:", 1)[1].strip() if "error:" in line and "GLOBAL" not in line else line
    if lines and "Weights only load failed" in lines[0]:
        useful = [line for line in lines[1:] if not line.startswith(("Check the documentation", "Please file"))]
        if useful:
            return useful[-1]
    return f"{type(exc).__name__}: {lines[0].split('. ')[0] if lines else ''}".strip()


def candidates(store: Path | str, map_location: torch.device | str = "cpu") -> Iterator[Candidate]:
    """The store's checkpoint files, newest first (``last.pt``, then ``prev.pt``), each read lazily and checked
    against the manifest. Without a manifest (stores written before it existed, or a deleted one) the files are
    read unverified; a damaged manifest is reported as the first candidate's problem and then ignored."""
    folder = Path(store) / FOLDER
    files = [p for p in (folder / FILENAME, folder / PREVIOUS) if p.is_file()]
    if not files:
        return
    try:
        entries = _read_manifest(folder)
    except (OSError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        yield Candidate(folder / MANIFEST, problem=f"checkpoint manifest {folder / MANIFEST} is damaged ({exc}); "
                                                   "reading the checkpoints without checksums")
        entries = None
    known = None if entries is None else {e["sha256"] for e in entries}
    for path in files:
        yield _read(path, known, map_location)


def load(store: Path | str, map_location: torch.device | str = "cpu") -> Checkpoint | None:
    """The store's newest intact checkpoint, or None if it has none.

    Raises:
        ArchiveError: checkpoint files exist but none is intact (each file's problem is named).
    """
    problems = []
    for cand in candidates(store, map_location):
        if cand.checkpoint is not None:
            return cand.checkpoint
        problems.append(cand.problem)
    if not problems:
        return None
    raise ArchiveError(no_intact_checkpoint(store, problems))


def no_intact_checkpoint(store: Path | str, problems: list[str]) -> str:
    """The message for a store whose checkpoints are all damaged."""
    lines = "\n".join(f"  - {p}" for p in problems)
    return (f"cannot resume {store}: no intact checkpoint to continue from:\n{lines}\nStart the run over with "
            "--overwrite (this deletes the store), or restore the files from a backup.")
