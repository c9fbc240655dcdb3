"""Writing a run store: :class:`RunArchive` creates, grows, truncates, verifies and commits it; :func:`remove_store`
deletes one without ever leaving a half-deleted store that reads as a run (the package docstring says how)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import shutil
import uuid
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from sim import faults
from sim.archive.codecs import check_codecs
from sim.archive.errors import ArchiveError, io_errors
from sim.archive.layout import (
    EPOCH_CHUNK,
    EPOCH_METRICS,
    GROWING,
    SAFE_NAME,
    STATE_DESCRIPTIONS,
    LayerInfo,
    Lengths,
)

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
