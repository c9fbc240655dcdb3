"""The run store's lifecycle: what to do with what is at the output path, and publishing (docs/runs.md).

Decided before anything is built, from the store's attributes (:func:`sim.archive.read_attrs`, the one read-only way
to look at a store; :meth:`RunArchive.open` is the one way to write to an existing one):

- nothing there (or an empty folder a workflow or a kill left): a **fresh** run;
- a gaitsim run store: refused unless ``resume`` (continue it from its newest intact checkpoint; a complete store is
  checked and left as it is, **done**) or ``overwrite`` (replaced once the new run's data are loaded);
- anything else: refused, never written into or deleted.

With ``publish`` the run is written to ``STORE.partial`` and renamed to ``STORE`` in one atomic step once it is
complete (or, with ``on_diverge: keep``, once it stopped at a NaN/Inf), so a failed or killed run leaves no ``STORE``
that a reader would take for a result. A ``STORE.partial`` with the same config is resumed, one with another config is
replaced: what a workflow job needs to continue after a kill. A published ``STORE`` is refused unless ``resume``
(kept as it is) or ``overwrite`` (replaced when the new run is published).

"The same config" is decided in one place, :func:`config_diffs`: every key but ``train.device`` (a runtime setting).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from sim import checkpoint as ckpt_io
from sim.archive import DIGESTS_ATTR, ArchiveError, LayerInfo, RunArchive, io_errors, read_attrs, remove_store
from sim.config import RunConfig
from sim.errors import ConfigError
from sim.network import Network
from sim.run import provenance
from sim.run.log import log


def partial_path(out: Path | str) -> Path:
    """Where a run published as ``out`` is written until it is published: ``<out>.partial`` beside it."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


def _flat(d: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flat(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def _declared_settings_only(doc: dict) -> dict:
    """A stored config as it is stored today: a store written before rules declared their settings holds every
    ``RuleSettings`` field under every rule (``settings.bp.eta``, which bp never read); those are left out, so such a
    store still resumes under the same config."""
    from sim.rules.registry import specs

    settings = doc.get("settings")
    if not isinstance(settings, dict):
        return doc
    known = specs()
    kept = {rule: ({k: v for k, v in values.items() if k in known[rule].declared()}
                   if rule in known and isinstance(values, dict) else values) for rule, values in settings.items()}
    return {**doc, "settings": kept}


#: the keys ``--allow-change`` may let differ on resume (``*``: one key part): what a recovery from a diverged run
#: needs (a lower learning rate, the retry settings); everything else changes what a checkpoint holds or means
CHANGEABLE = ("settings.*.lr", "train.on_nonfinite", "train.max_retries", "train.retry_lr_factor")


#: keys added to the run config after stores were first written, with the value every store written before them
#: ran with: such a store still resumes under a config that leaves them at that value
ADDED_LATER = {"train.task_updates": True}


def config_changes(stored_json: str, cfg: RunConfig) -> dict[str, tuple[object, object]]:
    """``{key: (old, new)}`` for every setting in which ``cfg`` differs from the stored config, ``train.device``
    (a runtime setting) excepted; empty when they are the same run."""
    old = {**ADDED_LATER, **_flat(_declared_settings_only(json.loads(stored_json)))}
    new = _flat(json.loads(cfg.to_json()))
    return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
            if k != "train.device" and old.get(k) != new.get(k)}


def config_diffs(stored_json: str, cfg: RunConfig, allow: tuple[str, ...] = ()) -> list[str]:
    """``'key: old -> new'`` for every difference :func:`config_changes` finds that ``allow`` does not allow."""
    return [f"{k}: {old!r} -> {new!r}" for k, (old, new) in config_changes(stored_json, cfg).items()
            if not allowed(k, allow)]


def _matches(key: str, pattern: str) -> bool:
    parts, pats = key.split("."), pattern.split(".")
    return len(parts) == len(pats) and all(p in ("*", k) for k, p in zip(parts, pats))


def allowed(key: str, allow: tuple[str, ...]) -> bool:
    """Whether ``--allow-change`` (``allow``) lets ``key`` differ on resume."""
    return any(_matches(key, a) for a in allow) and any(_matches(key, c) for c in CHANGEABLE)


def check_allow_change(allow: tuple[str, ...]) -> None:
    """Refuse ``--allow-change`` keys that may never change on resume (before anything is read)."""
    bad = [a for a in allow if not any(_matches(a, c) or _matches(c.replace("*", "x"), a.replace("*", "x"))
                                       for c in CHANGEABLE)]
    if bad:
        raise ConfigError(f"--allow-change {', '.join(bad)}: only {', '.join(CHANGEABLE)} may change when a run is "
                          "resumed (any other key changes what its checkpoints hold); start over with --overwrite")


def check_same_config(stored_json: str, cfg: RunConfig, out: Path, allow: tuple[str, ...] = ()) -> None:
    """Refuse to resume a store written with another config (the device may differ, and the keys ``allow`` lets
    differ)."""
    diffs = config_diffs(stored_json, cfg, allow)
    if diffs:
        keys = [d.split(":", 1)[0] for d in diffs]
        hint = ""
        if all(any(_matches(k, c) for c in CHANGEABLE) for k in keys):
            hint = f", allow the change with --resume --allow-change {','.join(keys)},"
        raise ConfigError(f"cannot resume {out}: it was started with a different config ({'; '.join(diffs[:8])}"
                          f"{'; ...' if len(diffs) > 8 else ''}); resume with the same config{hint} or pass "
                          "--overwrite")


def _holds_no_run(folder: Path) -> bool:
    """Whether ``folder`` holds nothing but empty folders and zarr's temp files (``*.partial``)."""
    return all(p.is_dir() and not p.is_symlink() or p.is_file() and p.name.endswith(".partial")
               for p in folder.rglob("*"))


def _clear_empty(path: Path) -> bool:
    """Empty ``path`` if it is a folder with no run in it (made by a workflow, or a kill before the store's first
    file was renamed into place); returns whether ``path`` is now such an empty folder. The folder itself is left in
    place: it may be the current folder (``--out .``) or a mount point, neither of which can be removed."""
    if not (path.is_dir() and not path.is_symlink() and _holds_no_run(path)):
        return False
    with io_errors(path, "clear the empty output folder"):
        for partial in path.rglob("*.partial"):
            partial.unlink()
        for folder in sorted(path.rglob("*"), reverse=True):
            folder.rmdir()
    return True


def is_empty_folder(path: Path) -> bool:
    """Whether ``path`` is a real folder with nothing in it (a fresh store may be written into it)."""
    return path.is_dir() and not path.is_symlink() and next(path.iterdir(), None) is None


def output_path(out: Path | str) -> Path:
    """``out`` as a store path with a name: ``.`` and ``..`` (and paths ending in them) become absolute, so that
    the lock file, log file and ``.partial`` store can be named beside it. Raises ConfigError for ``/``."""
    out = Path(out)
    if out.name in ("", ".."):
        out = Path(os.path.abspath(out))
    if not out.name:
        raise ConfigError(f"--out {out} cannot hold a run store (a store is a folder with a name: pass e.g. "
                          "--out results/run.zarr)")
    return out


def _run_attrs(path: Path) -> dict | None:
    """The attributes of the run store at ``path``; None if nothing is there; ConfigError if something else is."""
    if _clear_empty(path) or not (path.exists() or path.is_symlink()):
        return None
    attrs = read_attrs(path)
    if attrs is None or "config" not in attrs:
        raise ConfigError(f"{path} exists and is not a gaitsim run store (no readable zarr.json with a run config); "
                          "refusing to write into or delete it. Choose another output path, or remove it yourself.")
    return attrs


@dataclass(frozen=True)
class Plan:
    """What :func:`plan` decided. ``path``: the store to write (``out`` or ``out.partial``); ``continuing``: resume
    ``path`` from its checkpoint (else start over, replacing whatever is at ``path``); ``done``: ``path`` is
    complete already (nothing to train), or ``diverged``: published as a diverged run; ``append_log``: continue the
    log file rather than start it afresh."""

    path: Path
    continuing: bool
    done: bool
    append_log: bool
    diverged: bool = False

    def to_dict(self) -> dict[str, object]:
        """As JSON (rank 0 of a data-parallel run sends its plan to the other processes)."""
        return {"path": str(self.path), "continuing": self.continuing, "done": self.done,
                "append_log": self.append_log, "diverged": self.diverged}

    @classmethod
    def from_dict(cls, doc: dict[str, object]) -> Plan:
        return cls(Path(doc["path"]), bool(doc["continuing"]), bool(doc["done"]), bool(doc["append_log"]),
                   bool(doc["diverged"]))


def plan(cfg: RunConfig, out: Path, *, resume: bool, overwrite: bool, publish: bool,
         allow: tuple[str, ...] = ()) -> Plan:
    """Decide what to do with what is at ``out`` (and ``out.partial`` when ``publish``); see the module docstring.
    Touches nothing but empty folders; raises ConfigError for what is refused, ArchiveError for a damaged complete
    store."""
    attrs = _run_attrs(out)
    if attrs is not None:
        if not (resume or overwrite):
            raise ConfigError(f"run store {out} already exists; pass --resume to continue it or --overwrite to "
                              "replace it")
        if resume:
            check_same_config(attrs["config"], cfg, out, allow)
            if attrs.get("complete"):
                check_complete(out)
                return Plan(out, continuing=False, done=True, append_log=True)
            if publish:
                if "diverged" not in attrs:
                    raise ConfigError(f"{out} is an unfinished run store that was not published (written without "
                                      "--publish); continue it with --resume without --publish, or pass --overwrite")
                return Plan(out, continuing=False, done=True, append_log=True, diverged=True)  # on_diverge: keep
            return Plan(out, continuing=True, done=False, append_log=True)
    if not publish:
        return Plan(out, continuing=False, done=False, append_log=resume)
    partial = partial_path(out)
    attrs = _run_attrs(partial)
    same = attrs is not None and not overwrite and not config_diffs(attrs["config"], cfg, allow)
    if same and attrs.get("complete"):
        check_complete(partial)
        return Plan(partial, continuing=False, done=True, append_log=True)
    return Plan(partial, continuing=same, done=False, append_log=resume or same)


def check_complete(path: Path) -> None:
    """Check a complete store's rows against the digests of its last commit (or, for a store written before those
    were kept, its newest intact checkpoint's); raise ArchiveError naming the damage. Completeness is claimed only
    for a store that verifies."""
    archive = RunArchive.open(path)
    digests = archive.attrs.get(DIGESTS_ATTR)
    lengths = archive.lengths
    if not isinstance(digests, dict):
        checkpoint = next((c.checkpoint for c in ckpt_io.candidates(path) if c.checkpoint is not None), None)
        if checkpoint is None:
            raise ArchiveError(f"{path} is marked complete but it cannot be verified (it keeps no checksums and no "
                               "intact checkpoint); run it again with --overwrite, or read it with "
                               "open_run(..., verify=False) at your own risk")
        digests, lengths = checkpoint.digests, checkpoint.lengths
    damaged = archive.verify(lengths, digests)
    if damaged:
        lines = "\n".join(f"  - {d}" for d in damaged)
        raise ArchiveError(f"{path} is marked complete but its archive is damaged:\n{lines}\nRun it again "
                           "with --overwrite (or restore the store from a backup).")


def create(path: Path, cfg: RunConfig, net: Network, *, steps_per_epoch: int, probe_labels, resume: bool,
           attrs: dict | None = None, world_size: int = 1) -> RunArchive:
    """A new store at ``path`` for ``cfg`` on ``net``, with its provenance (``world_size``: the processes training
    it) and ``attrs`` (what the data add, e.g. ``train_eval_samples``); a run store already there is removed first
    (it was planned to be replaced)."""
    if (path.exists() or path.is_symlink()) and not is_empty_folder(path):
        log.info(f"{path}: no checkpoint to resume from; starting over" if resume else f"replacing {path}")
        remove_store(path)
    layers = [LayerInfo(layer.name, rule.name, bool(layer.square), tuple(layer.out_shape))
              for layer, rule in zip(net.layers, net.rules)]
    return RunArchive.create(path, layers=layers, steps_per_epoch=steps_per_epoch, probe_labels=probe_labels,
                             activity_dtype=cfg.train.dtype,
                             attrs={**provenance.start_attrs(cfg, net.device, world_size), **(attrs or {})})


def publish(partial: Path, out: Path) -> Path:
    """Rename the finished store ``partial`` to ``out`` in one atomic step (an old store at ``out`` is removed
    first, which a kill can interrupt only before the rename); returns ``out``."""
    if (out.exists() or out.is_symlink()) and not is_empty_folder(out):
        remove_store(out)  # an empty folder (made by a workflow) is replaced by the rename itself
    with io_errors(out, "publish the run store"):
        os.replace(partial, out)
        fd = os.open(out.parent, os.O_RDONLY)
        try:
            os.fsync(fd)  # the rename itself survives a power cut
        finally:
            os.close(fd)
    log.info(f"published {partial} as {out}")
    return out
