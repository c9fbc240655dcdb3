"""Deterministic minibatch order: :func:`iterate_batches` and :func:`count_batches`.

The sample order of an epoch is a pure function of ``(seed, epoch)``: a ``torch.Generator`` seeded from both draws
one permutation of ``0 .. N-1``, which is cut into consecutive batches. Nothing else (number of workers, earlier
epochs, whether earlier batches were consumed) influences it, so a run resumed at batch ``k`` of an epoch passes
``start_batch=k`` and receives exactly the batches the uninterrupted run would have seen, without decoding the
skipped ones.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from sim.data.dataset import ImageDataset, stream_batches
from sim.errors import DataError


def _check_count(name: str, value: object, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise DataError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def count_batches(ds: Dataset, batch_size: int, drop_last: bool = False) -> int:
    """Number of batches in one epoch of ``ds``: ``N // batch_size``, plus one for a short last batch kept."""
    return _batch_count(len(ds), _check_count("batch_size", batch_size, low=1), drop_last)


def _batch_count(n: int, batch_size: int, drop_last: bool) -> int:
    # the one place an epoch's batch count is computed (from checked arguments)
    return n // batch_size if drop_last else -(-n // batch_size)


def epoch_order(n: int, *, seed: int, epoch: int, shuffle: bool = True) -> Tensor:
    """The sample order ``[n]`` int64 of one epoch: a permutation drawn from ``(seed, epoch)``, or ``arange(n)``.

    ``numpy.random.SeedSequence`` mixes the pair into one 63-bit generator seed, so neighbouring pairs such as
    (seed 0, epoch 1) and (seed 1, epoch 0) give unrelated orders.
    """
    seed = _check_count("seed", seed, low=0)
    epoch = _check_count("epoch", epoch, low=0)
    if not shuffle:
        return torch.arange(n, dtype=torch.int64)
    mixed = int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0]) >> 1
    generator = torch.Generator(device="cpu").manual_seed(mixed)
    return torch.randperm(n, generator=generator, dtype=torch.int64)


def epoch_batches(
    n: int,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    drop_last: bool = False,
    start_batch: int = 0,
    shard: tuple[int, int] = (0, 1),
) -> list[Tensor]:
    """The index batches ``[B]`` int64 of one epoch of ``n`` samples: :func:`epoch_order` cut into ``batch_size``
    pieces, from batch ``start_batch`` on, each reduced to this rank's part (``shard``; see :func:`iterate_batches`).

    The one definition of an epoch's batches: :func:`iterate_batches` and the persistent loaders'
    :class:`~sim.data.loader.EpochBatchSampler` both read them from here.
    """
    batch_size = _check_count("batch_size", batch_size, low=1)
    start_batch = _check_count("start_batch", start_batch, low=0)
    rank, world_size = shard
    world_size = _check_count("world_size", world_size, low=1)
    rank = _check_count("rank", rank, low=0)
    if rank >= world_size:
        raise DataError(f"rank {rank} is not below the world size {world_size}")
    total = _batch_count(n, batch_size, drop_last)
    if start_batch > total:
        raise DataError(f"start_batch {start_batch} is past the end of the epoch ({total} batches of {batch_size})")
    order = epoch_order(n, seed=seed, epoch=epoch, shuffle=shuffle)
    index_batches = list(order.split(batch_size))[start_batch:total]
    if world_size > 1:
        index_batches = [torch.tensor_split(b, world_size)[rank] for b in index_batches]
    return index_batches


def iterate_batches(
    ds: Dataset,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    drop_last: bool = False,
    num_workers: int = 0,
    start_batch: int = 0,
    shard: tuple[int, int] = (0, 1),
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(x [B, C, H, W] float32, y [B] int64)`` for one epoch of ``ds`` in the order of :func:`epoch_order`.

    Args:
        ds: an :class:`ImageDataset` (in-memory ones gather whole batches from one tensor; folder ones decode in a
            ``DataLoader`` with ``num_workers`` processes), or any map-style dataset of ``(x, y)`` pairs.
        batch_size: B; the last batch is shorter unless ``drop_last``.
        seed, epoch: fix the order; the same pair always gives the same batches.
        shuffle: ``False`` visits the samples in index order.
        num_workers: decoding processes for streaming datasets; the order does not depend on it.
        start_batch: skip this many batches of the epoch (to resume); the rest are exactly those of a full pass.
        shard: ``(rank, world_size)``: yield only this process's part of every (global) batch, the ``rank``-th of
            ``torch.tensor_split(batch, world_size)`` (contiguous parts whose sizes differ by at most one), so the
            ranks of a data-parallel run together visit each batch exactly once, and only decode their own part.

    A one-off pass: a streaming dataset starts a new ``DataLoader`` (and its workers) on every call. A run reads
    each split through one :class:`~sim.data.loader.SplitLoader` instead, whose workers live for the whole run.
    """
    num_workers = _check_count("num_workers", num_workers, low=0)
    index_batches = epoch_batches(len(ds), batch_size, seed=seed, epoch=epoch, shuffle=shuffle, drop_last=drop_last,
                                  start_batch=start_batch, shard=shard)
    if isinstance(ds, ImageDataset):
        yield from ds.batches(index_batches, num_workers=num_workers)
    else:
        yield from stream_batches(ds, index_batches, num_workers=num_workers)
