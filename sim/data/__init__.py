"""Image data for the simulator: load a split named by a :class:`DataSpec`, then iterate deterministic batches.

    ds = load_split(DataSpec("npz", path="data/cifar10_npz"), "train")
    for x, y in iterate_batches(ds, 256, seed=0, epoch=3):   # x [B, C, H, W] float32, y [B] int64
        ...

Every loader returns an :class:`ImageDataset` with ``classes`` and ``input_shape`` ``(C, H, W)``. In-memory kinds
(npz, cifar10, imagenet_downsampled, digits, random) are preprocessed once at load time; 'imagenet_folder' decodes
files on the fly in ``DataLoader`` workers. Bad input raises :class:`sim.errors.DataError` with a message that
names the file and the expected layout.

A run reads each split through one persistent :class:`~sim.data.loader.SplitLoader` (workers kept across epochs,
pinned memory and overlapped uploads on CUDA) whose :class:`~sim.data.loader.EpochBatchSampler` yields the same
batches as :func:`iterate_batches`.
"""

from __future__ import annotations

from collections.abc import Callable

from sim.data.batches import count_batches, epoch_batches, epoch_order, iterate_batches
from sim.data.cifar10 import load_cifar10
from sim.data.dataset import ImageDataset, TensorImageDataset
from sim.data.digits import load_digits_split
from sim.data.imagenet_downsampled import load_imagenet_downsampled
from sim.data.imagenet_folder import ImageFolderDataset, load_imagenet_folder
from sim.data.loader import EpochBatchSampler, SplitLoader
from sim.data.npz import load_npz
from sim.data.spec import IMAGENET_MEAN, IMAGENET_STD, KINDS, DataSpec, check_split
from sim.data.synthetic import load_random
from sim.errors import DataError

__all__ = [
    "DataSpec",
    "ImageDataset",
    "TensorImageDataset",
    "ImageFolderDataset",
    "load_split",
    "iterate_batches",
    "count_batches",
    "epoch_batches",
    "epoch_order",
    "EpochBatchSampler",
    "SplitLoader",
    "LOADERS",
    "KINDS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

Loader = Callable[[DataSpec, str, int], ImageDataset]

# One loader per kind; DataSpec validates ``kind`` against KINDS, which lists exactly these keys.
LOADERS: dict[str, Loader] = {
    "npz": load_npz,
    "cifar10": load_cifar10,
    "imagenet_folder": load_imagenet_folder,
    "imagenet_downsampled": load_imagenet_downsampled,
    "digits": load_digits_split,
    "random": load_random,
}
assert tuple(LOADERS) == KINDS, "every data kind needs exactly one loader"


def load_split(spec: DataSpec, split: str, *, seed: int = 0) -> ImageDataset:
    """Load the 'train' or 'test' split of ``spec``.

    ``seed`` only matters for kind 'random' (it draws the noise); every other kind, the digits split included, is
    the same for every seed, so runs with different seeds are evaluated on the same images.
    """
    check_split(split)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed!r}")
    ds = LOADERS[spec.kind](spec, split, seed)
    if spec.input_shape is not None and tuple(ds.input_shape) != spec.input_shape:
        raise DataError(
            f"{spec.kind} data ({spec.path or 'built in'}, {split}) has images of shape "
            f"{ds.input_shape} (C, H, W), but DataSpec.input_shape is {spec.input_shape}; fix "
            f"input_shape or set image_size to resize"
        )
    return ds
