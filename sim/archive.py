"""One zarr v3 store per run, growing as training runs (docs/runs.md has every variable, dim and unit).

The store is written with zarr directly, in the layout xarray reads (``dimension_names`` on every array, non-index
coordinates listed in each variable's ``coordinates`` attribute), so ``xr.open_zarr(store)`` gives a Dataset with

* dims ``step`` (global optimizer step, 0-based), ``epoch`` (1-based), ``layer``, ``probe_epoch`` (the epochs
  after which the probe batch was recorded, 0 = before training; coordinate ``probe_step``: steps taken by then),
  ``sample`` (sample of the probe batch) and one set of unit dims per layer (``unit_<layer>`` for dense layers,
  ``channel_/row_/col_<layer>`` for conv layers);
* per step ``loss``, ``angle(step, layer)``, ``batch_size``; per epoch ``train_top1`` ... ``test_loss``,
  ``ortho_error(epoch, layer)``, ``feedback_angle(epoch, layer)``, ``reconstruction_loss(epoch, layer)``,
  ``epoch_wall_s``; per probe record ``activity_<layer>`` and ``target_<layer>``
  ``(probe_epoch, sample, unit...)``; per sample ``probe_label``.

"Checkpoint" means only resumable state (:mod:`sim.checkpoint`, ``STORE/_checkpoints/``). Stores written before
the probe records were renamed (dims ``checkpoint`` and ``probe``, coordinate ``checkpoint_step``) read with the new
names through :func:`open_run`; they cannot be resumed (:data:`OLD_NAMES`).

**Growing safely.** Rows are appended per epoch: every array of a dim is resized and written, then :meth:`commit`
rewrites the consolidated metadata in the root ``zarr.json`` (one atomic file replace). Readers use the consolidated
metadata, so they see the store as of the last commit: a crash at any point leaves a readable, self-consistent
prefix. zarr's ``LocalStore`` writes every file atomically (temp file + rename), so rewriting a partly filled chunk
never leaves a torn chunk either (a kill leaves at most a ``*.partial`` temp file, removed on reopening).
:meth:`truncate` cuts every dim back to given lengths (resume).

**Checking what is kept.** Every block of rows is hashed (SHA-256 of its bytes) as it is written; the checkpoint
stores these :attr:`RunArchive.digests`, and on resume :meth:`verify` re-reads the rows the checkpoint keeps and
names every chunk file whose rows are missing, undecodable or changed (docs/reliability.md). Every commit also writes
the digests of the committed rows into the root attribute :data:`DIGESTS_ATTR`, so readers verify a store without
its checkpoints: :func:`open_run` does by default (:func:`verify_store`; :class:`DamagedStoreError` names each damaged
chunk and array), and a damaged store is never read as zarr's fill values. A store is deleted by
renaming it out of the way first (:func:`remove_store`), so no moment of a deletion leaves a half-deleted store that
still reads as a run.

Every ``OSError`` (full disk, read-only folder) becomes an :class:`ArchiveError` naming the store.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import re
import shutil
import uuid
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from sim import faults
from sim.errors import GaitsimError

#: rows per chunk along ``epoch`` and ``probe_epoch`` (coordinates); a step chunk holds one epoch's steps
EPOCH_CHUNK = 64

#: the growing dims, in the order of :class:`Lengths`
GROWING = ("step", "epoch", "probe_epoch")

#: old name -> name, for stores written before "checkpoint" came to mean only resumable state
OLD_NAMES = {"checkpoint": "probe_epoch", "checkpoint_step": "probe_step", "probe": "sample"}

#: what a layer name must look like to become part of variable and dim names (no path separators, no dots)
SAFE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")

#: per-epoch scalar variables: name -> (units, long_name, description)
EPOCH_METRICS: dict[str, tuple[str, str, str]] = {
    "train_top1": ("1", "train top-1 accuracy",
                   "top-1 accuracy on the whole train split after the epoch (fraction of samples)"),
    "train_top5": ("1", "train top-5 accuracy",
                   "top-5 accuracy (top-min(5, classes)) on the whole train split after the epoch"),
    "test_top1": ("1", "test top-1 accuracy",
                  "top-1 accuracy on the whole test split after the epoch (fraction of samples)"),
    "test_top5": ("1", "test top-5 accuracy",
                  "top-5 accuracy (top-min(5, classes)) on the whole test split after the epoch"),
    "train_loss": ("nat", "train loss", "mean cross-entropy per sample on the whole train split after the epoch"),
    "test_loss": ("nat", "test loss", "mean cross-entropy per sample on the whole test split after the epoch"),
    "epoch_wall_s": ("s", "epoch wall time", "wall-clock time of the epoch: training steps, evaluation and recording"),
}

#: per-epoch, per-layer records of the rules' learned (or fixed) feedback (sim.rules.registry.STATE_METRICS):
#: name -> description; NaN where a layer's rule reports none
STATE_DESCRIPTIONS: dict[str, str] = {
    "feedback_angle": "angle between each layer's feedback weight B (learned: kp; fixed: fa, usf, brsf, frsf) and its "
                      "forward weight W after the epoch, in degrees (B -> W for Kolen-Pollack); NaN for other rules",
    "reconstruction_loss": "local reconstruction loss of a learned feedback mapping (learned inverses) after the "
                           "epoch; "
                           "NaN for rules without one",
}


class ArchiveError(GaitsimError, OSError):
    """The run store (or a checkpoint) could not be written or read: full disk, read-only folder, damaged store.
    The message names the path."""


class DamagedStoreError(ArchiveError):
    """A run store whose rows do not match the checksums written with them (a chunk missing, undecodable or
    changed): never to be read as a result. :attr:`problems` names each damaged chunk file and its array."""

    def __init__(self, path: Path | str, problems: list[str]) -> None:
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"the run store {path} is damaged:\n{lines}\nIts results cannot be trusted: run it again "
                         "(--overwrite) or restore it from a backup.")
        self.path = Path(path)
        self.problems = problems


@contextlib.contextmanager
def io_errors(path: Path | str, what: str) -> Iterator[None]:
    """Turn an ``OSError`` raised inside the block into an :class:`ArchiveError` naming ``path``."""
    try:
        yield
    except ArchiveError:
        raise
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ArchiveError(f"cannot {what} {path}: {reason}; check that the folder is writable and the disk has "
                           "space (the earlier checkpoints and the store's last commit are left intact: continue "
                           "with --resume once fixed)") from exc


@dataclass(frozen=True)
class LayerInfo:
    """What the archive needs to know about one layer."""

    name: str
    """Layer name (``dense1`` ... ``output``)."""
    rule: str
    """Rule name."""
    square: bool
    """Whether the layer is square (has an orthogonality error)."""
    out_shape: tuple[int, ...]
    """Per-sample full output shape, aux units included."""

    @property
    def unit_dims(self) -> tuple[str, ...]:
        """Dim names of one sample's activity: ``unit_<name>`` (dense) or ``channel/row/col_<name>`` (conv)."""
        if len(self.out_shape) == 1:
            return (f"unit_{self.name}",)
        if len(self.out_shape) == 3:
            return (f"channel_{self.name}", f"row_{self.name}", f"col_{self.name}")
        return tuple(f"unit{i}_{self.name}" for i in range(len(self.out_shape)))


@dataclass(frozen=True)
class Lengths:
    """How many rows the store holds along each growing dim."""

    steps: int
    epochs: int
    probes: int
    """Probe records (rows along ``probe_epoch``)."""


_FILL = {"f": math.nan, "i": -1, "b": False}

#: ``{array name: [[first row, end row, digest], ...]}``: the digests of the row blocks written to a store
Digests = dict[str, list[list]]

#: the root attribute holding the :data:`Digests` of every committed row (written by every :meth:`RunArchive.commit`)
DIGESTS_ATTR = "digests"


def digest(values: np.ndarray) -> str:
    """A short SHA-256 of an array's rows as stored (shape, dtype and bytes; strings by their text)."""
    values = np.asarray(values)
    h = hashlib.sha256(f"{values.shape}|".encode())
    if values.dtype.kind in "OUT":
        h.update(json.dumps([str(v) for v in values.reshape(-1)]).encode())
    else:
        h.update(values.dtype.str.encode())
        h.update(np.ascontiguousarray(values).tobytes())
    return h.hexdigest()[:32]


@contextlib.contextmanager
def _quiet_zarr() -> Iterator[None]:
    """Silence zarr's notes that consolidated metadata is not yet in the v3 spec and that the checkpoint folder
    inside the store is not a zarr node (both expected here)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        warnings.filterwarnings("ignore", message="Object at .* is not recognized", category=UserWarning)
        yield


class RunArchive:
    """A run's zarr store, open for appending. Create with :meth:`create`, reopen with :meth:`open`."""

    def __init__(self, path: Path, group: zarr.Group) -> None:
        self.path = path
        self.group = group
        try:
            self.layers = [str(v) for v in group["layer"][:]]
        except KeyError:
            raise  # no such array (a store killed while it was created): open() reports it
        except Exception as exc:  # noqa: BLE001 - a damaged chunk fails in the codec, whichever it is
            raise ArchiveError(f"{path / 'layer' / 'c' / '0'} (layer) cannot be decoded ({type(exc).__name__}: "
                               f"{exc}); the run store {path} is damaged: start over with --overwrite") from None
        self._arrays: dict[str, zarr.Array] = dict(group.arrays())
        self._by_dim: dict[str, list[zarr.Array]] = {dim: [] for dim in GROWING}
        for arr in self._arrays.values():
            first = self._growing_dim(arr)
            if first is not None:
                self._by_dim[first].append(arr)
        #: digests of the row blocks written by this process (or set from a checkpoint with :meth:`set_digests`)
        self._digests: Digests = {}

    @staticmethod
    def _growing_dim(arr: zarr.Array) -> str | None:
        first = (arr.metadata.dimension_names or (None,))[0]
        return first if first in GROWING else None

    # ----- creation -----------------------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: Path | str, *, layers: Sequence[LayerInfo], steps_per_epoch: int,
               probe_labels: np.ndarray | None, activity_dtype: str, attrs: dict[str, Any]) -> RunArchive:
        """A new, empty store at ``path`` (which must not exist) with every variable at length 0 along the growing
        dims, the static coordinates filled in, ``attrs`` set and ``complete = False``; committed."""
        path = Path(path)
        names = [layer.name for layer in layers]
        for name in names:
            if not isinstance(name, str) or not SAFE_NAME.match(name):
                raise ArchiveError(f"layer name {name!r} cannot name archive variables ({path}): use a letter, then "
                                   "letters, digits or '_' (at most 64 characters)")
        if len(set(names)) != len(names):
            raise ArchiveError(f"layer names {names} are not unique; they name the archive's variables ({path})")
        digests: Digests = {}
        with io_errors(path, "create the run store"):
            _sweep_trash(path)
            # the attributes (config included) go into the very first zarr.json: a store is a run store from its
            # first file on, so a crash during creation leaves something --overwrite or --resume recognises
            group = zarr.open_group(str(path), mode="w-", zarr_format=3, attributes={**attrs, "complete": False})
            n_layers = len(layers)
            steps_chunk = max(1, int(steps_per_epoch))

            def array(name, shape, chunks, dtype, dims, *, long_name, units="1", description=None, coords=None,
                      data=None):
                # CF attributes on every array: long_name and units label xarray's plots (``ds.test_top1.plot()``);
                # units "1": a dimensionless number, an index or a label
                dt = np.dtype(dtype) if dtype is not str else None
                fill = "" if dt is None else _FILL.get(dt.kind, 0)
                attributes = {"long_name": long_name, "units": units}
                if description is not None:
                    attributes["description"] = description
                if coords:
                    attributes["coordinates"] = " ".join(coords)
                arr = group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, dimension_names=dims,
                                         fill_value=fill, attributes=attributes)
                if data is not None:
                    arr[...] = data
                    digests[name] = [[0, len(data), digest(data if dt is None else np.asarray(data, dtype=dt))]]
                faults.hit("archive.create")
                return arr

            # static coordinates
            array("layer", (n_layers,), (n_layers,), str, ["layer"], long_name="layer",
                  description="layer names, bottom to top",
                  data=np.array([layer.name for layer in layers], dtype=object))
            array("rule", (n_layers,), (n_layers,), str, ["layer"], long_name="rule",
                  description="plasticity rule of each layer",
                  data=np.array([layer.rule for layer in layers], dtype=object))
            array("square", (n_layers,), (n_layers,), "bool", ["layer"], long_name="square layer",
                  description="whether the layer is square (invertible, may carry aux units)",
                  data=np.array([layer.square for layer in layers]))
            layer_coords = ["rule", "square"]

            # per step
            array("step", (0,), (steps_chunk,), "int64", ["step"], units="step", long_name="training step",
                  description="global optimizer step, 0-based")
            array("step_epoch", (0,), (steps_chunk,), "int64", ["step"], units="epoch",
                  long_name="epoch of the step",
                  description="the epoch (1-based) each step belongs to")
            array("loss", (0,), (steps_chunk,), "float64", ["step"], units="nat", coords=["step_epoch"],
                  long_name="training batch loss",
                  description="mean cross-entropy per sample of the step's training batch (before the update)")
            array("batch_size", (0,), (steps_chunk,), "int64", ["step"], units="sample", coords=["step_epoch"],
                  long_name="batch size",
                  description="samples in the step's training batch")
            array("angle", (0, n_layers), (steps_chunk, n_layers), "float64", ["step", "layer"], units="degree",
                  long_name="angle to BP",
                  coords=["step_epoch", *layer_coords],
                  description="angle between each layer's raw update and BP's gradient on the same batch and "
                              "weights (sim.compare); NaN at steps where it was not measured")
            # per epoch
            array("epoch", (0,), (EPOCH_CHUNK,), "int64", ["epoch"], units="epoch", long_name="epoch",
                  description="epoch, 1-based")
            for name, (units, long_name, desc) in EPOCH_METRICS.items():
                array(name, (0,), (EPOCH_CHUNK,), "float64", ["epoch"], units=units, long_name=long_name,
                      description=desc)
            array("ortho_error", (0, n_layers), (EPOCH_CHUNK, n_layers), "float64", ["epoch", "layer"],
                  units="1", coords=layer_coords, long_name="orthogonality error",
                  description="||W W^T - I||_F / sqrt(n) of each layer whose weight matrix is square (any "
                              "rule) after the epoch; NaN for the others")
            for name, desc in STATE_DESCRIPTIONS.items():
                array(name, (0, n_layers), (EPOCH_CHUNK, n_layers), "float64", ["epoch", "layer"],
                      units="degree" if name.endswith("angle") else "1", coords=layer_coords,
                      long_name=name.replace("_", " "), description=desc)
            # per probe record
            array("probe_epoch", (0,), (EPOCH_CHUNK,), "int64", ["probe_epoch"], units="epoch",
                  long_name="probe epoch",
                  description="epoch after which the probe batch was recorded; 0 = before training")
            array("probe_step", (0,), (EPOCH_CHUNK,), "int64", ["probe_epoch"], units="step",
                  long_name="step of the probe record",
                  description="optimizer steps taken when the probe batch was recorded")
            if probe_labels is not None and len(probe_labels):
                n_probe = len(probe_labels)
                array("sample", (n_probe,), (n_probe,), "int64", ["sample"], long_name="probe sample",
                      description="sample index in the probe batch (= index in the test split)",
                      data=np.arange(n_probe))
                array("probe_label", (n_probe,), (n_probe,), "int64", ["sample"], long_name="probe label",
                      description="label of each probe sample", data=np.asarray(probe_labels, dtype=np.int64))
                for layer in layers:
                    dims = ["probe_epoch", "sample", *layer.unit_dims]
                    shape, chunks = (0, n_probe, *layer.out_shape), (1, n_probe, *layer.out_shape)
                    array(f"activity_{layer.name}", shape, chunks, activity_dtype, dims, units="1",
                          long_name=f"activity of {layer.name}",
                          coords=["probe_step"], description=f"full output a of layer {layer.name} (aux units "
                          "included) on the probe batch, no noise")
                    array(f"target_{layer.name}", shape, chunks, "float64", dims, units="1",
                          long_name=f"target of {layer.name}",
                          coords=["probe_step"], description=f"target t = a + d of layer {layer.name} on the "
                          "probe batch (no noise, no update applied), in float64 so that t - a recovers d")
        archive = cls(path, group)
        archive._digests = digests
        archive.commit()
        return archive

    @classmethod
    def open(cls, path: Path | str) -> RunArchive:
        """Reopen an existing store for appending (reads the arrays' own metadata, not the consolidated copy) and
        remove the temp files a killed write may have left (zarr writes ``<file>.<uuid>.partial``, then renames)."""
        path = Path(path)
        check_codecs(path)
        with io_errors(path, "open the run store"):
            for partial in path.rglob("*.partial"):
                if partial.is_file() and not partial.is_symlink():
                    partial.unlink()
            try:
                with _quiet_zarr():
                    group = zarr.open_group(str(path), mode="r+", use_consolidated=False)
                    return cls(path, group)
            except (OSError, ArchiveError):
                raise
            except Exception as exc:  # noqa: BLE001 - damaged metadata shows up as many kinds of errors
                where = next((p for p in sorted(path.rglob("zarr.json")) if not _is_json(p)), path)
                raise ArchiveError(f"{where} is not readable ({type(exc).__name__}: {exc}); the run store {path} is "
                                   "damaged: start over with --overwrite") from None

    # ----- appending ----------------------------------------------------------------------------------------------
    @property
    def lengths(self) -> Lengths:
        """Rows along ``step``, ``epoch`` and ``probe_epoch`` per the arrays' own metadata (in the old layout,
        :data:`OLD_NAMES`, the probe records lie along ``checkpoint``)."""
        probes = "probe_epoch" if "probe_epoch" in self._arrays else "checkpoint"
        return Lengths(*(int(self._arrays[d].shape[0]) for d in ("step", "epoch", probes)))

    @property
    def digests(self) -> Digests:
        """A copy of the digests of every row block written (what a checkpoint stores, see :meth:`verify`)."""
        return {name: [list(r) for r in records] for name, records in self._digests.items()}

    def set_digests(self, digests: Digests) -> None:
        """Take the digests a checkpoint stored (on resume, before :meth:`truncate`)."""
        self._digests = {name: [list(r) for r in records] for name, records in digests.items()}

    def _append(self, name: str, values: np.ndarray) -> None:
        arr = self._arrays[name]
        n = arr.shape[0]
        values = np.asarray(values, dtype=arr.dtype)
        with io_errors(self.path, f"write {name!r} to the run store"):
            arr.resize((n + values.shape[0], *arr.shape[1:]))
            faults.hit("archive.append")
            arr[n:] = values
        self._digests.setdefault(name, []).append([n, n + values.shape[0], digest(values)])

    def append_steps(self, *, first_step: int, epoch: int, loss: np.ndarray, batch_size: np.ndarray,
                     angle: np.ndarray) -> None:
        """Append ``k`` steps starting at ``first_step``: ``loss [k]`` (mean CE per sample), ``batch_size [k]``,
        ``angle [k, layers]`` (degrees, NaN where not measured), all of epoch ``epoch``."""
        k = len(loss)
        if k == 0:
            return
        if self.lengths.steps != first_step:
            raise ArchiveError(f"{self.path}: appending steps from {first_step} to a store holding "
                               f"{self.lengths.steps} steps")
        with io_errors(self.path, "write to the run store"):
            self._append("step", np.arange(first_step, first_step + k, dtype=np.int64))
            self._append("step_epoch", np.full(k, epoch, dtype=np.int64))
            self._append("loss", np.asarray(loss, dtype=np.float64))
            self._append("batch_size", np.asarray(batch_size, dtype=np.int64))
            self._append("angle", np.asarray(angle, dtype=np.float64).reshape(k, len(self.layers)))

    def append_epoch(self, epoch: int, metrics: dict[str, float], ortho_error: np.ndarray,
                     state: dict[str, np.ndarray] | None = None) -> None:
        """Append one epoch's row: every name of :data:`EPOCH_METRICS`, ``ortho_error [layers]`` and the rules'
        learned-state metrics ``state[name] [layers]`` (:data:`STATE_DESCRIPTIONS`; NaN where not given; a store
        written before they existed has none and gets none)."""
        n = len(self.layers)
        with io_errors(self.path, "write to the run store"):
            self._append("epoch", np.array([epoch], dtype=np.int64))
            for name in EPOCH_METRICS:
                self._append(name, np.array([metrics[name]], dtype=np.float64))
            self._append("ortho_error", np.asarray(ortho_error, dtype=np.float64).reshape(1, n))
            for name in STATE_DESCRIPTIONS:
                if name in self._arrays:
                    row = (state or {}).get(name, np.full(n, math.nan))
                    self._append(name, np.asarray(row, dtype=np.float64).reshape(1, n))

    def append_probe(self, epoch: int, step: int, activities: Sequence[np.ndarray],
                     targets: Sequence[np.ndarray]) -> None:
        """Append one probe record: per layer the activity and target arrays ``[sample, *out_shape]``."""
        with io_errors(self.path, "write to the run store"):
            self._append("probe_epoch", np.array([epoch], dtype=np.int64))
            self._append("probe_step", np.array([step], dtype=np.int64))
            for name, a, t in zip(self.layers, activities, targets):
                self._append(f"activity_{name}", np.asarray(a)[None])
                self._append(f"target_{name}", np.asarray(t, dtype=np.float64)[None])

    def truncate(self, lengths: Lengths) -> None:
        """Cut every growing dim back to ``lengths`` (rows after it are dropped and will be rewritten); committed.
        A store of the old layout (:data:`OLD_NAMES`) is refused: it can be read and verified, not continued."""
        if "checkpoint" in self._arrays and "probe_epoch" not in self._arrays:
            raise ArchiveError(f"the run store {self.path} was written by an older gaitsim (probe records along the "
                               "dim 'checkpoint', now 'probe_epoch'); it cannot be continued: start it over with "
                               "--overwrite (open_run reads it with the new names)")
        target = _targets(lengths)
        with io_errors(self.path, "truncate the run store"):
            for dim, arrays in self._by_dim.items():
                for arr in arrays:
                    if arr.shape[0] < target[dim]:
                        raise ArchiveError(f"{self.path}: {arr.path} holds {arr.shape[0]} rows along {dim}, fewer "
                                           f"than the checkpoint's {target[dim]}; the store is damaged, start over "
                                           f"with --overwrite")
                    if arr.shape[0] != target[dim]:
                        arr.resize((target[dim], *arr.shape[1:]))
                        faults.hit("archive.truncate")
        for name, records in self._digests.items():
            dim = self._growing_dim(self._arrays[name]) if name in self._arrays else None
            if dim is not None:
                self._digests[name] = [r for r in records if r[1] <= target[dim]]
        self.commit()

    # ----- verification -------------------------------------------------------------------------------------------
    def chunk_path(self, name: str, row: int) -> Path:
        """The file of array ``name``'s chunk that holds ``row`` (along its first dim)."""
        arr = self._arrays[name]
        coords = (row // arr.chunks[0], *([0] * (arr.ndim - 1)))
        return self.path / arr.path / arr.metadata.chunk_key_encoding.encode_chunk_key(coords)

    def verify(self, lengths: Lengths, digests: Digests) -> list[str]:
        """Check the rows a checkpoint keeps (``lengths`` along the growing dims, every row of the static
        coordinates) against the ``digests`` recorded when they were written.

        Returns one line per damaged chunk, ``'<chunk file> (<array>): <what is wrong>'``; empty if all is intact.
        Reads every kept row once (the store's size, a few MB per probe record)."""
        target = _targets(lengths)
        problems: list[str] = []
        for name, records in sorted(digests.items()):
            arr = self._arrays.get(name)
            if arr is None:
                problems.append(f"{self.path / name} ({name}): the array is missing")
                continue
            dim = self._growing_dim(arr)
            stop = target[dim] if dim is not None else arr.shape[0]
            if arr.shape[0] < stop:
                problems.append(f"{self.path / arr.path} ({name}): holds {arr.shape[0]} rows along {dim}, fewer than "
                                f"the checkpoint's {stop}")
                continue
            reasons: dict[int, str] = {}
            rows = arr.chunks[0]
            for start, end, expected in records:
                if end > stop:
                    continue
                chunks = range(start // rows, (end - 1) // rows + 1)
                try:
                    with _quiet_zarr():
                        values = arr[start:end]
                except Exception as exc:  # noqa: BLE001 - a torn chunk fails in the codec, whichever it is
                    why = f"cannot be decoded ({type(exc).__name__}: {exc})"
                    for c in chunks:
                        reasons.setdefault(c, why)
                    continue
                if digest(values) != expected:
                    for c in chunks:
                        missing = not self.chunk_path(name, c * rows).exists()
                        reasons.setdefault(c, "is missing" if missing else f"rows {start}..{end - 1} differ from "
                                           "what was written (checksum mismatch)")
            problems += [f"{self.chunk_path(name, c * rows)} ({name}): {why}" for c, why in sorted(reasons.items())]
        return problems

    # ----- attributes and commits ---------------------------------------------------------------------------------
    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs)

    def commit(self, **attrs: Any) -> None:
        """Rewrite the consolidated metadata, then set ``attrs`` (if any): readers now see everything appended."""
        with io_errors(self.path, "write to the run store"):
            # consolidate first, then set the attributes on the consolidated group: each step is one atomic
            # replace of the root zarr.json that keeps the consolidated metadata (attributes set through a group
            # opened without it would write a zarr.json without it, and readers would see uncommitted rows)
            with _quiet_zarr():
                group = zarr.consolidate_metadata(self.group.store)
            faults.hit("archive.commit")
            # the digests of every row committed go with the commit (in the root attributes), so the store can
            # be verified without its checkpoints: by readers (open_run) and by --resume of a complete store
            group.attrs.update({**attrs, DIGESTS_ATTR: self._digests})
            self.group = group


def _is_json(path: Path) -> bool:
    try:
        json.loads(path.read_text(encoding="utf-8"))
        return True
    except (OSError, ValueError):
        return False


def _targets(lengths: Lengths) -> dict[str, int]:
    return {"step": lengths.steps, "epoch": lengths.epochs, "probe_epoch": lengths.probes}


def _trash_name(path: Path) -> str:
    return f".{path.name}.deleting-"


def _sweep_trash(path: Path) -> None:
    """Finish deletions a kill interrupted: the renamed-away copies of the store at ``path``."""
    if path.parent.is_dir():
        for old in path.parent.iterdir():
            if old.name.startswith(_trash_name(path)) and old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)


def remove_store(path: Path | str) -> None:
    """Delete the run store (or symlink) at ``path``: renamed aside first (one atomic step, after which ``path``
    no longer exists), then removed, so a kill during the deletion never leaves a half-deleted store behind that
    still reads as a run. A leftover ``.<name>.deleting-*`` folder is removed by the next :meth:`RunArchive.create`."""
    path = Path(path)
    with io_errors(path, "remove the old run store"):
        if path.is_symlink() or not path.is_dir():
            path.unlink()
            return
        trash = path.with_name(f"{_trash_name(path)}{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            os.replace(path, trash)
        except OSError as exc:
            if exc.errno not in (errno.EBUSY, errno.EINVAL, errno.EXDEV):
                raise
            raise ArchiveError(f"cannot replace the run store {path}: it cannot be renamed aside for deletion "
                               f"({exc.strerror}: it is a mount point or the current folder); remove its contents "
                               "yourself, or choose another output path") from None
        faults.hit("archive.remove")
        shutil.rmtree(trash)


#: the codecs a run store is written with (and the few other plain ones zarr offers); a store whose metadata names
#: any other (``numcodecs.pickle``, an object codec, a third-party name resolved by import) is refused before a
#: chunk is decoded: nothing loaded is executed, whatever the installed zarr/numcodecs would do with it
SAFE_CODECS = frozenset({"bytes", "zstd", "crc32c", "gzip", "blosc", "transpose", "sharding_indexed", "vlen-utf8",
                         "vlen-bytes"})


def unsafe_codecs(path: Path | str) -> list[str]:
    """``'file: codec'`` for every codec named in the store's metadata (each ``zarr.json``, the consolidated copy
    in the root one included) that is not in :data:`SAFE_CODECS`; empty for a store we could have written."""
    found = []

    def walk(node: Any, where: Path) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("codecs", "index_codecs") and isinstance(value, list):
                    for codec in value:
                        name = codec.get("name") if isinstance(codec, dict) else codec
                        if name not in SAFE_CODECS:
                            found.append(f"{where}: codec {name!r}")
                walk(value, where)
        elif isinstance(node, list):
            for value in node:
                walk(value, where)

    root = Path(path)
    for name in (".zarray", ".zgroup", ".zmetadata", ".zattrs"):  # zarr v2: object codecs such as pickle
        found += [f"{meta}: zarr v2 metadata (a run store is zarr v3)" for meta in sorted(root.rglob(name))]
    for meta in sorted(root.rglob("zarr.json")) if root.is_dir() else []:
        try:
            walk(json.loads(meta.read_text(encoding="utf-8")), meta)
        except (OSError, ValueError):
            continue  # unreadable metadata is reported by whoever opens it
    return found


def check_codecs(path: Path | str) -> None:
    """Refuse (ArchiveError) a store whose metadata names a codec a run never writes (see :data:`SAFE_CODECS`)."""
    bad = unsafe_codecs(path)
    if bad:
        raise ArchiveError(f"{path} names codecs a gaitsim run never writes ({'; '.join(bad[:4])}"
                           f"{'; ...' if len(bad) > 4 else ''}); refused before anything is decoded (such a codec "
                           "can run code from the file). Do not open stores from untrusted sources")


def read_attrs(path: Path | str) -> dict[str, Any] | None:
    """The root attributes of the zarr store at ``path``, or None if ``path`` holds no zarr group."""
    path = Path(path)
    if not (path / "zarr.json").is_file():
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception:  # noqa: BLE001 - anything unreadable is "not a run store"
        return None


def verify_store(path: Path | str) -> list[str] | None:
    """Check every committed row of the run store at ``path`` against the digests of its last commit (the root
    attribute :data:`DIGESTS_ATTR`); read-only, takes no lock. Returns one line per damaged chunk
    (``'<chunk file> (<array>): <what is wrong>'``, empty if intact), or None for a store written before the digests
    were kept in its attributes (it cannot be checked without its checkpoints)."""
    path = Path(path)
    try:
        with _quiet_zarr():
            group = zarr.open_group(str(path), mode="r")
            digests = group.attrs.get(DIGESTS_ATTR)
            if not isinstance(digests, dict):
                return None
            archive = RunArchive(path, group)
    except ArchiveError as exc:
        return [str(exc)]
    except Exception as exc:  # noqa: BLE001 - damaged metadata shows up as many kinds of errors
        return [f"{path / 'zarr.json'} (metadata): not readable ({type(exc).__name__}: {exc})"]
    return archive.verify(archive.lengths, digests)


def open_run(path: Path | str, *, verify: bool = True):
    """The run's ``xarray.Dataset`` (lazy), as of its last commit: ``xr.open_zarr(path)`` with zarr's note that
    consolidated metadata is not yet part of the v3 spec silenced. A store of the old layout comes with its probe
    records' dims and coordinates renamed (:data:`OLD_NAMES`).

    ``verify`` (default): first check every committed row against the checksums written with it
    (:func:`verify_store`, one read of the store) and raise :class:`DamagedStoreError` naming each damaged chunk and
    array, so that a missing chunk is never read as zarr's fill values; ``verify=False`` skips the check (faster)."""
    import xarray as xr

    check_codecs(path)
    if verify:
        problems = verify_store(path)
        if problems:
            raise DamagedStoreError(path, problems)
    with _quiet_zarr():
        ds = xr.open_zarr(str(path))
    ds.attrs.pop(DIGESTS_ATTR, None)
    if "checkpoint" in ds.dims:
        ds = ds.rename({old: new for old, new in OLD_NAMES.items() if old in ds.variables or old in ds.dims})
    return ds
