"""CIFAR-10 through ``torchvision.datasets.CIFAR10`` (kind 'cifar10').

torchvision reads the python-pickle release (``<root>/cifar-10-batches-py``) and checks its md5 sums. We take its
whole uint8 ``data`` array ``[N, 32, 32, 3]`` (HWC) and ``targets`` at once and transpose to ``[N, 3, 32, 32]``:
no PIL image per item. Pixels / 255 and nothing else is the reference preprocessing (REFERENCE.md section 6).
Offline, point ``path`` at an existing copy, or load a folder of npz shards (e.g. ``data/cifar10_npz``) with kind
'npz'.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sim.data.dataset import TensorImageDataset, build_in_memory
from sim.data.spec import DataSpec
from sim.errors import DataError

CLASSES = 10


def load_cifar10(spec: DataSpec, split: str, seed: int = 0) -> TensorImageDataset:
    """Load the CIFAR-10 ``split`` ('train': 50,000, 'test': 10,000 images) from the torchvision root ``spec.path``."""
    from torchvision.datasets import CIFAR10  # imported here: torchvision is only needed for this kind

    root = Path(spec.path).expanduser()
    try:
        data = CIFAR10(root=str(root), train=split == "train", download=spec.download)
    except RuntimeError:  # torchvision's "Dataset not found or corrupted"
        hint = ""
        if list(root.glob("train_*.npz")) or (root / "test.npz").is_file():
            hint = f" {root} holds .npz shards: load it with kind='npz' instead."
        raise DataError(
            f"CIFAR-10 not found (or failing its md5 check) under {root}. Pass download=True "
            f"to fetch it there, point path at a folder that holds cifar-10-batches-py, or use "
            f"kind='npz' with a folder of train_*.npz/test_*.npz shards (e.g. data/cifar10_npz).{hint}"
        ) from None
    except OSError as exc:  # download failures (no network, unwritable root)
        raise DataError(
            f"could not download CIFAR-10 to {root} ({exc}); without network access point path at "
            f"an existing copy, or use kind='npz' with a folder of npz shards (e.g. data/cifar10_npz)"
        ) from None
    pixels = np.asarray(data.data)
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1:] != (32, 32, 3):
        raise DataError(
            f"{root}: torchvision returned CIFAR-10 images of {pixels.dtype} {list(pixels.shape)}, "
            f"expected uint8 [N, 32, 32, 3]; the copy is damaged, download it again"
        )
    # HWC -> CHW by transposing, never reshaping. torchvision's HWC array is itself a transposed view of the
    # channels-first rows on disk, so this transpose is usually already contiguous and copies nothing.
    raw = torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))
    y = torch.as_tensor(np.asarray(data.targets, dtype=np.int64))
    return build_in_memory(raw, y, peak=255.0, spec=spec, source=f"CIFAR-10 {split} in {root}", classes=CLASSES)
