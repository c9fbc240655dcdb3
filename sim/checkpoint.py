"""Checkpoints of a run: everything needed to continue it bit for bit (docs/runs.md, "Checkpoints and resume").

A checkpoint holds the network's ``state_dict`` (weights, biases, FA feedback buffers), the scheduler's (Adam state,
noise-generator state, step counter), the global torch and numpy RNG states, the position in the data order
(``epochs_done`` completed epochs plus ``batches_done`` batches of the next one) and the archive's row counts at that
moment, so a resumed run cuts the archive back to exactly the state the checkpoint describes.

It lives inside the run store, ``STORE/_checkpoints/last.pt`` (zarr ignores the folder), so deleting the store
deletes its checkpoint and a new run can never resume from a stale one. It is written atomically: ``torch.save`` to a
temp file in the same folder, ``fsync``, ``os.replace`` over the previous checkpoint, ``fsync`` of the folder; a
failed write (full disk, read-only folder) leaves the previous checkpoint intact and raises
:class:`~sim.archive.ArchiveError` naming the path. Only tensors and primitives are stored, so it loads with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sim.archive import ArchiveError, Lengths, io_errors

FOLDER = "_checkpoints"
FILENAME = "last.pt"
FORMAT = 1


def checkpoint_path(store: Path | str) -> Path:
    """Where the checkpoint of the run store ``store`` lives."""
    return Path(store) / FOLDER / FILENAME


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
    """The archive's rows along step / epoch / checkpoint at this state."""
    network: dict[str, torch.Tensor]
    """``Network.state_dict()``."""
    scheduler: dict[str, Any]
    """``Scheduler.state_dict()``."""
    torch_rng: torch.Tensor
    """``torch.get_rng_state()``."""
    numpy_rng: dict[str, Any]
    """``numpy.random.get_state()`` as tensors and primitives."""
    reason: str = "scheduled"
    """Why it was written: 'scheduled', 'final' or 'failure' (the last good state before a non-finite step)."""

    def to_state(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "config_json": self.config_json, "epochs_done": self.epochs_done,
            "batches_done": self.batches_done, "step": self.step,
            "lengths": {"steps": self.lengths.steps, "epochs": self.lengths.epochs,
                        "checkpoints": self.lengths.checkpoints},
            "network": self.network, "scheduler": self.scheduler, "torch_rng": self.torch_rng,
            "numpy_rng": self.numpy_rng, "reason": self.reason,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Checkpoint:
        if state.get("format") != FORMAT:
            raise ValueError(f"checkpoint format {state.get('format')!r}, expected {FORMAT}")
        return cls(config_json=state["config_json"], epochs_done=int(state["epochs_done"]),
                   batches_done=int(state["batches_done"]), step=int(state["step"]),
                   lengths=Lengths(**{k: int(v) for k, v in state["lengths"].items()}), network=state["network"],
                   scheduler=state["scheduler"], torch_rng=state["torch_rng"], numpy_rng=state["numpy_rng"],
                   reason=str(state.get("reason", "scheduled")))


def numpy_rng_state() -> dict[str, Any]:
    """``numpy.random.get_state()`` in a form ``weights_only`` loading accepts."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def set_numpy_rng_state(state: dict[str, Any]) -> None:
    np.random.set_state((state["name"], state["keys"].numpy().astype(np.uint32), state["pos"], state["has_gauss"],
                         state["cached_gaussian"]))


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a folder be opened or synced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save(store: Path | str, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` atomically as the store's checkpoint; returns its path."""
    path = checkpoint_path(store)
    with io_errors(path, "write the checkpoint"):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{FILENAME}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(ckpt.to_state(), f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(path.parent)
    return path


def load(store: Path | str, map_location: torch.device | str = "cpu") -> Checkpoint | None:
    """The store's checkpoint, or None if it has none."""
    path = checkpoint_path(store)
    if not path.is_file():
        return None
    with io_errors(path, "read the checkpoint"):
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
            return Checkpoint.from_state(state)
        except OSError:
            raise
        except Exception as exc:  # noqa: BLE001 - unpickling, zip and format errors all mean "damaged"
            raise ArchiveError(f"checkpoint {path} is unreadable ({exc}); delete it to restart the run from the "
                               "beginning with --overwrite") from None
