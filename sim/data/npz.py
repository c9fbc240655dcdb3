"""Folders of ``.npz`` image shards (kind 'npz'), e.g. an offline copy of CIFAR-10 in ``data/cifar10_npz``.

Layout: ``<folder>/train_*.npz`` and ``<folder>/test_*.npz`` (or one ``train.npz`` / ``test.npz``). Each shard holds

- ``x``: uint8 ``[N, H, W, 3]`` RGB, channels-last (or ``[N, H, W]`` grayscale, read as one channel);
- ``y``: integer labels ``[N]`` from 0.

Shards are concatenated in natural name order (``train_2`` before ``train_10``; the same as plain sorting for
zero-padded names). Pixels are moved to channels-first with a transpose (``permute(0, 3, 1, 2)``), never a reshape:
reshaping HWC bytes to CHW scrambles every image (REFERENCE.md section 6). The label space is read from the labels
of every shard in the folder, train and test together, so both splits agree on ``classes``. Arrays are read with
``allow_pickle=False``: a shard cannot run code.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from sim.data.dataset import TensorImageDataset, build_in_memory, read_files
from sim.data.spec import DataSpec
from sim.errors import DataError

LAYOUT = (
    "expected a folder of train_*.npz / test_*.npz shards (or one train.npz / test.npz), each with "
    "'x' uint8 [N, H, W, 3] (or [N, H, W] grayscale) and 'y' integer labels [N]"
)


def _natural_key(path: Path) -> list:
    """Sort key that orders embedded numbers by value: train_2 < train_10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def shard_files(folder: Path, split: str) -> list[Path]:
    """The shards of ``split`` in ``folder``, in concatenation order; DataError if there are none."""
    if not folder.exists():
        raise DataError(
            f"npz data folder {folder} does not exist; {LAYOUT}. Point the data path at such a folder (a "
            "relative one, e.g. data/cifar10_npz, is read from the working directory)"
        )
    if not folder.is_dir():
        raise DataError(f"npz data path {folder} is a file, not a folder; {LAYOUT}")
    shards = sorted((p for p in folder.glob(f"{split}_*.npz") if p.is_file()), key=_natural_key)
    single = folder / f"{split}.npz"
    if single.is_file():
        if shards:
            raise DataError(
                f"{folder} holds both {single.name} and {len(shards)} {split}_*.npz shards; keep one "
                f"layout so no image is counted twice"
            )
        shards = [single]
    if not shards:
        found = sorted(p.name for p in folder.iterdir())
        shown = ", ".join(found[:20]) + (f", ... ({len(found)} entries)" if len(found) > 20 else "")
        raise DataError(f"no {split} shards in {folder} (found: {shown or 'nothing'}); {LAYOUT}")
    return shards


def _open(path: Path) -> np.lib.npyio.NpzFile:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: cannot read it as an .npz archive ({exc}); {LAYOUT}") from None


def _array(archive: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    if key not in archive.files:
        raise DataError(f"{path}: missing key {key!r} (keys found: {', '.join(archive.files) or 'none'}); {LAYOUT}")
    try:
        return archive[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: cannot read key {key!r} ({exc}); {LAYOUT}") from None


def _labels(archive: np.lib.npyio.NpzFile, path: Path) -> np.ndarray:
    """The shard's labels ``[N]`` as int64, after checking dtype, rank and sign."""
    y = _array(archive, "y", path)
    if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1:
        raise DataError(f"{path}: key 'y' must be integer labels [N], got {y.dtype} {list(y.shape)}")
    if y.size and y.min() < 0:
        raise DataError(f"{path}: key 'y' holds a negative label ({y.min()}); labels count from 0")
    return y.astype(np.int64)


def read_shard(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One shard's images ``[N, H, W, C]`` uint8 (C = 1 or 3) and labels ``[N]`` int64, checked."""
    with _open(path) as archive:
        x = _array(archive, "x", path)
        y = _labels(archive, path)
    if x.dtype != np.uint8:
        raise DataError(f"{path}: key 'x' must be uint8 pixels 0..255, got {x.dtype}; {LAYOUT}")
    if x.ndim == 3:
        x = x[..., None]  # grayscale [N, H, W] -> one channel
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        hint = ""
        if x.ndim == 4 and x.shape[1] in (1, 3):
            hint = " (it looks channels-first; store channels-last [N, H, W, C])"
        raise DataError(f"{path}: key 'x' has shape {list(x.shape)}{hint}; {LAYOUT}")
    if len(y) != len(x):
        raise DataError(f"{path}: {len(y)} labels in 'y' but {len(x)} images in 'x'; they must match one to one")
    return x, y


def label_space(folder: Path) -> int:
    """max label + 1 over every train and test shard in ``folder`` (only the small 'y' arrays are read)."""
    high = -1
    for split in ("train", "test"):
        paths = sorted(folder.glob(f"{split}_*.npz")) + sorted(folder.glob(f"{split}.npz"))
        for path in paths:
            with _open(path) as archive:
                y = _labels(archive, path)
            if y.size:
                high = max(high, int(y.max()))
    return high + 1


def load_npz(spec: DataSpec, split: str, seed: int = 0) -> TensorImageDataset:
    """Load ``split`` from the shard folder ``spec.path``; images ``[N, C, H, W]`` float32, labels ``[N]``."""
    folder = Path(spec.path).expanduser()
    xs, y = read_files(shard_files(folder, split), read_shard, spec.size, lambda path, x, first: (
        f"{path}: images are {list(x.shape[1:])} (H, W, C) but earlier shards hold {list(first.shape[1:])}; all "
        "shards of a folder must share one image shape"))
    # NHWC -> NCHW by transposing each shard's view; cat writes one contiguous channels-first tensor.
    raw = torch.cat([torch.from_numpy(x).permute(0, 3, 1, 2) for x in xs])
    y = torch.from_numpy(y)
    classes = None if spec.classes is not None else label_space(folder)
    return build_in_memory(raw, y, peak=255.0, spec=spec, source=f"{folder} ({split})", classes=classes)
