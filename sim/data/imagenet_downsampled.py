"""Downsampled ImageNet (kind 'imagenet_downsampled'): Chrabaszcz, Loshchilov and Hutter (2017), "A Downsampled
Variant of ImageNet as an Alternative to the CIFAR datasets" (the Imagenet32x32 / Imagenet64x64 releases).

Layout: one folder with ``train_data_batch_1`` .. ``train_data_batch_10`` and ``val_data``, either pickled dicts
(the original release) or ``.npz`` files (the npz release) with the same keys:

- ``data``: uint8 ``[N, 3 * R * R]``, one image per row, CHANNELS-FIRST: all R*R red values (row-major), then all
  green, then all blue. So ``reshape(N, 3, R, R)`` is the correct CHW view here (unlike HWC bytes, where a reshape
  scrambles the image); R (32 or 64, or any other) is inferred from the row length;
- ``labels``: ``[N]`` class numbers 1..1000, made 0-based here by subtracting 1.

The 'test' split reads ``val_data``. Pickles go through an unpickler that only resolves numpy's array, dtype and
scalar constructors, so a tampered file cannot run code; ``.npz`` files are read with ``allow_pickle=False``.
"""

from __future__ import annotations

import importlib
import math
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from sim.data.dataset import TensorImageDataset, build_in_memory, read_files
from sim.data.spec import DataSpec
from sim.errors import DataError

CLASSES = 1000
LAYOUT = (
    "expected a folder with train_data_batch_1 .. train_data_batch_10 and val_data (pickles or .npz) from the "
    "Imagenet32x32/Imagenet64x64 release, each holding 'data' uint8 [N, 3*R*R] (channels-first rows) and "
    "'labels' 1..1000"
)

# The only globals a numpy-array pickle needs (protocols 2-5, numpy 1.x and 2.x module names).
_ALLOWED_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # protocol 2 stores array bytes as latin-1 text
    }
)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that builds dicts, lists, numbers, strings and numpy arrays, and refuses every other global."""

    def find_class(self, module: str, name: str):
        # Pickles written by numpy 1.x name numpy.core; numpy 2 moved it to numpy._core.
        canonical = "numpy._core" + module[len("numpy.core") :] if module.startswith("numpy.core") else module
        if (canonical, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}: only numpy arrays are allowed")
        try:
            return getattr(importlib.import_module(canonical), name)
        except ImportError:  # numpy 1.x: the original module name is the real one
            return getattr(importlib.import_module(module), name)


def _batch_files(folder: Path, split: str) -> list[Path]:
    """The batch files of ``split``, preferring the .npz release when both are present."""
    if not folder.is_dir():
        raise DataError(f"downsampled ImageNet folder {folder} does not exist or is not a folder; {LAYOUT}")
    stem = "train_data_batch_" if split == "train" else "val_data"
    for suffix in (".npz", ""):
        if split == "train":
            pattern = re.compile(rf"{stem}(\d+){re.escape(suffix)}")
            found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := pattern.fullmatch(p.name))]
            files = [p for _, p in sorted(found)]
        else:
            files = [p for p in [folder / f"{stem}{suffix}"] if p.is_file()]
        if files:
            return files
    entries = sorted(p.name for p in folder.iterdir())
    shown = ", ".join(entries[:20]) + (f", ... ({len(entries)} entries)" if len(entries) > 20 else "")
    raise DataError(f"no {split} batches in {folder} (found: {shown or 'nothing'}); {LAYOUT}")


def _read_dict(path: Path) -> dict:
    """The ``{'data', 'labels', ...}`` mapping of one batch file, read without running code."""
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                return {key: archive[key] for key in archive.files}
        with path.open("rb") as handle:
            # latin1 decodes the byte strings of pickles written by Python 2, as the release was.
            content = _ArrayUnpickler(handle, encoding="latin1").load()
    except (
        OSError,
        ValueError,
        EOFError,
        zipfile.BadZipFile,
        pickle.UnpicklingError,
        AttributeError,
        IndexError,
        TypeError,
    ) as exc:
        raise DataError(f"{path}: cannot read this batch file ({type(exc).__name__}: {exc}); {LAYOUT}") from None
    if not isinstance(content, dict):
        raise DataError(f"{path}: holds a {type(content).__name__}, not a dict with 'data' and 'labels'; {LAYOUT}")
    return content


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file: images uint8 ``[N, 3, R, R]`` and 0-based labels ``[N]`` int64, checked."""
    content = _read_dict(path)
    for key in ("data", "labels"):
        if key not in content:
            raise DataError(f"{path}: missing key {key!r} (keys found: {', '.join(map(str, content))}); {LAYOUT}")
    data = np.asarray(content["data"])
    if data.dtype != np.uint8 or data.ndim != 2:
        raise DataError(f"{path}: 'data' must be uint8 [N, 3*R*R], got {data.dtype} {list(data.shape)}; {LAYOUT}")
    side = math.isqrt(data.shape[1] // 3)
    if 3 * side * side != data.shape[1] or side == 0:
        raise DataError(f"{path}: rows of {data.shape[1]} values are not 3*R*R for a square R x R RGB image")
    try:
        labels = np.asarray(content["labels"], dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: 'labels' is not a list of integers ({exc})") from None
    if labels.ndim != 1 or len(labels) != len(data):
        raise DataError(f"{path}: {labels.size} labels for {len(data)} images; they must match one to one")
    if labels.size and labels.min() < 1:
        raise DataError(
            f"{path}: label {labels.min()} found, but this release numbers classes from 1 (1..1000); "
            f"is this really a downsampled-ImageNet batch?"
        )
    if not data.flags.writeable:  # arrays rebuilt from a pickle's bytes are read-only; torch wants writable memory
        data = data.copy()
    # Rows are channels-first (R plane, G plane, B plane), so this reshape is the true CHW layout.
    return data.reshape(len(data), 3, side, side), labels - 1


def load_imagenet_downsampled(spec: DataSpec, split: str, seed: int = 0) -> TensorImageDataset:
    """Load ``split`` ('test' reads ``val_data``) of a downsampled-ImageNet folder; 1000 classes unless overridden."""
    folder = Path(spec.path).expanduser()
    xs, y = read_files(_batch_files(folder, split), read_batch, spec.size, lambda path, x, first: (
        f"{path}: images are {x.shape[-1]}x{x.shape[-1]} but earlier batches hold {first.shape[-1]}x"
        f"{first.shape[-1]}; do not mix resolutions in one folder"))
    raw = torch.from_numpy(np.concatenate(xs)) if len(xs) > 1 else torch.from_numpy(xs[0])
    y = torch.from_numpy(y)
    return build_in_memory(raw, y, peak=255.0, spec=spec, source=f"{folder} ({split})", classes=CLASSES)
