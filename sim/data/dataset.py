"""The dataset contract: :class:`ImageDataset`, and the in-memory :class:`TensorImageDataset`.

Every loader returns an :class:`ImageDataset`: a map-style ``torch.utils.data.Dataset`` of ``(x, y)`` pairs with
``x`` float32 ``[C, H, W]`` and ``y`` an int in ``0 .. classes-1``, that also knows its ``classes`` and
``input_shape``. What differs is how a whole batch is made. A streaming dataset (the default) describes how a
``DataLoader`` reads it, :meth:`ImageDataset.loader_parts` (the per-item dataset the workers decode, the collate
function, and a last step in the main process), and both a one-off pass (``batches``) and a run's persistent loader
(:class:`sim.data.loader.SplitLoader`) use those parts. :class:`TensorImageDataset` has no parts (``None``): it
gathers each batch from one preloaded tensor with a single ``index_select``, so an epoch of CIFAR-10 costs a few
hundred tensor copies and no per-image Python.
:func:`build_in_memory` is the shared last step of every in-memory loader: cap, resize and normalise, once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from sim.data.pixels import PixelMap, resize_images
from sim.data.spec import DataSpec
from sim.errors import DataError

# Above this many bytes of float32 pixels, uint8 sources stay uint8 in memory and are normalised per batch.
FLOAT_COPY_LIMIT_BYTES = 8 * 2**30


class LoaderParts(NamedTuple):
    """How a ``DataLoader`` reads a streaming dataset (:meth:`ImageDataset.loader_parts`)."""

    items: Dataset
    """What the workers index: ``items[i]`` is one decoded sample (or whatever ``collate`` expects)."""
    collate: Callable | None
    """Stacks the items of one batch (in the worker); None: torch's default collate."""
    finish: Callable
    """Turns a collated batch into ``(x [B, C, H, W], y [B])``, or None to yield nothing for it; runs in the main
    process (where it may raise or keep count)."""


def _as_is(batch):
    return batch


class ImageDataset(Dataset):
    """Labelled images: ``ds[i] -> (x float32 [C, H, W], y int)``; ``classes`` and ``input_shape`` describe them."""

    classes: int
    """Number of classes; labels are ``0 .. classes-1``."""
    input_shape: tuple[int, int, int]
    """``(C, H, W)`` of every image."""

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        raise NotImplementedError

    def loader_parts(self) -> LoaderParts | None:
        """How a ``DataLoader`` reads this dataset; None for a dataset that gathers whole batches itself.

        The default: the items themselves, torch's default collate, and the batch as it comes.
        """
        return LoaderParts(self, None, _as_is)

    def batches(self, index_batches: Sequence[Tensor], *, num_workers: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield ``(x [B, C, H, W] float32, y [B] int64)`` for each index tensor ``[B]`` in ``index_batches``.

        The default decodes items through a one-off ``DataLoader`` with ``num_workers`` worker processes (see
        :meth:`loader_parts`); batches come back in the order given, whatever the number of workers.
        """
        parts = self.loader_parts()
        for batch in stream_batches(parts.items, index_batches, num_workers=num_workers, collate_fn=parts.collate):
            out = parts.finish(batch)
            if out is not None:
                yield out


def stream_batches(ds: Dataset, index_batches: Sequence[Tensor], *, num_workers: int = 0, collate_fn=None) -> Iterator:
    """Yield the collated items of ``ds`` for each index tensor in ``index_batches``, via a ``DataLoader``.

    The index batches are the ``batch_sampler``, so the order is exactly the one given (the DataLoader keeps batch
    order with any number of workers); ``num_workers`` only decides how many processes decode in parallel.
    """
    if len(index_batches) == 0:
        return
    loader = DataLoader(
        ds, batch_sampler=[b.tolist() for b in index_batches], num_workers=num_workers, collate_fn=collate_fn
    )
    yield from loader


class TensorImageDataset(ImageDataset):
    """Images held in memory as one tensor ``x [N, C, H, W]`` with labels ``y [N]`` int64.

    ``x`` is normally float32, already resized and normalised at load time (``pixel_map`` is ``None``). Sources too
    large for a float32 copy (the 1.28M-image downsampled ImageNet would take 16-63 GB) keep raw uint8 pixels and a
    :class:`PixelMap` that each gathered batch goes through; both forms give the same float32 batches.
    """

    def __init__(
        self, x: Tensor, y: Tensor, *, classes: int, pixel_map: PixelMap | None = None, source: str = ""
    ) -> None:
        where = source or "in-memory data"
        if x.dim() != 4 or y.dim() != 1 or x.shape[0] != y.shape[0]:
            raise DataError(
                f"{where}: images [N, C, H, W] and labels [N] do not match: x {tuple(x.shape)}, y {tuple(y.shape)}"
            )
        if pixel_map is None and x.dtype != torch.float32:
            raise DataError(f"{where}: images of dtype {x.dtype} need a PixelMap to become float32")
        self.x = x
        self.y = y.to(torch.int64)
        self.classes = int(classes)
        self.input_shape = (int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))
        self.pixel_map = pixel_map
        self.source = source
        """Where the images came from (a path or a description), for messages and archives."""

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        x, y = self._gather(torch.tensor([index % len(self)], device=self.x.device))
        return x[0], int(y[0])

    def _gather(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """The images and labels at ``index [B]``: ``(x [B, C, H, W] float32, y [B] int64)``, always a copy."""
        x = self.x.index_select(0, index)
        if self.pixel_map is not None:
            x = self.pixel_map.apply(x, inplace=True)
        return x, self.y.index_select(0, index)

    def loader_parts(self) -> None:
        """None: batches are gathered from the preloaded tensor, never through a ``DataLoader``."""
        return None

    def batches(self, index_batches: Sequence[Tensor], *, num_workers: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """Gather each batch from the preloaded tensor; ``num_workers`` is ignored (there is nothing to decode)."""
        for index in index_batches:
            yield self._gather(index.to(self.x.device))

    def to(self, device: torch.device | str) -> TensorImageDataset:
        """A copy whose tensors live on ``device`` (e.g. all of CIFAR-10 on the GPU); batches are gathered there."""
        return TensorImageDataset(
            self.x.to(device), self.y.to(device), classes=self.classes, pixel_map=self.pixel_map, source=self.source
        )


def read_files(paths: Iterable[Path], read: Callable[[Path], tuple[np.ndarray, np.ndarray]], size: int | None,
               mismatch: Callable[[Path, np.ndarray, np.ndarray], str]) -> tuple[list[np.ndarray], np.ndarray]:
    """Read ``(images, labels)`` from ``paths`` in order with ``read`` until ``size`` images are in (None: all files).

    Returns the image arrays (one per file, for the caller to join in its layout) and the joined labels ``[N]``. A
    file whose per-image shape differs from the first file's stops the load with ``DataError(mismatch(path, x,
    first_x))``; files after the cap are never opened.
    """
    xs, ys, count = [], [], 0
    for path in paths:
        x, y = read(path)
        if xs and x.shape[1:] != xs[0].shape[1:]:
            raise DataError(mismatch(path, x, xs[0]))
        xs.append(x)
        ys.append(y)
        count += len(x)
        if size is not None and count >= size:
            break
    return xs, np.concatenate(ys)


def check_labels(y: Tensor, classes: int, source: str) -> None:
    """Refuse labels ``y [N]`` outside ``0 .. classes-1``, naming the source and the offending value."""
    if y.numel() == 0:
        return
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= classes:
        bad = low if low < 0 else high
        raise DataError(
            f"{source}: label {bad} is outside 0..{classes - 1} ({classes} classes); "
            f"fix the labels or set DataSpec.classes to the true number of classes"
        )


def build_in_memory(
    raw: Tensor, y: Tensor, *, peak: float, spec: DataSpec, source: str, classes: int | None = None
) -> TensorImageDataset:
    """Preprocess raw images once and hold them in memory; takes ownership of ``raw`` (float32 input is normalised
    in place, so pass a tensor nobody else holds).

    Args:
        raw: images ``[N, C, H, W]``, uint8 or float, channels-first already.
        y: labels ``[N]``, integers from 0.
        peak: the raw value of full brightness (255; 16 for the digits; 1 for float noise).
        spec: takes ``size`` (keep the first N), ``image_size`` (resize) and ``normalize``; ``spec.classes``
            overrides ``classes`` after checking the labels against it.
        source: the path or description used in messages.
        classes: the label space the source defines; ``None`` means max label + 1.
    """
    if spec.size is not None:
        raw, y = raw[: spec.size], y[: spec.size]
    if spec.classes is not None:
        classes = spec.classes
    elif classes is None:
        classes = int(y.max()) + 1 if y.numel() else 0
    check_labels(y, classes, source)
    pixel_map = PixelMap.for_normalize(spec.normalize, peak=peak, channels=int(raw.shape[1]), source=source)
    if spec.image_size is not None:
        raw = resize_images(raw, spec.image_size)
    if raw.dtype == torch.uint8 and raw.numel() * 4 > FLOAT_COPY_LIMIT_BYTES:
        # Too big to hold as float32: keep the bytes and normalise each batch as it is gathered.
        return TensorImageDataset(raw, y, classes=classes, pixel_map=pixel_map, source=source)
    x = pixel_map.apply(raw, inplace=True)
    return TensorImageDataset(x, y, classes=classes, source=source)
