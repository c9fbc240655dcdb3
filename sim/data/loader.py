"""A run's input pipeline: one persistent loader per split (:class:`SplitLoader`), fed by a batch sampler whose
batches are set before each pass (:class:`EpochBatchSampler`), with uploads to the device that overlap compute.

    sampler = EpochBatchSampler(len(ds), 256, seed=0)
    loader = SplitLoader(ds, sampler, num_workers=8, device="cuda")
    for epoch in range(1, epochs + 1):
        for x, y in loader.epoch(epoch):           # x [B, C, H, W] on the device, y [B] int64
            ...
        for x, y in loader.over(eval_batches):      # any fixed index batches, e.g. an evaluation subset
            ...

**Order.** The batches of an epoch are :func:`sim.data.batches.epoch_batches` of ``(seed, epoch)``, exactly those of
:func:`~sim.data.iterate_batches`: the sampler computes them, the ``DataLoader`` only decodes them (in order, with any
number of workers), so neither the number of workers nor the loader's history changes a batch, and a resumed run
passes ``start_batch`` and sees the rest of the epoch as an uninterrupted run does.

**Streaming datasets** (:meth:`~sim.data.ImageDataset.loader_parts` not None, e.g. 'imagenet_folder'): one
``DataLoader`` per split for the whole run, built here once, with ``persistent_workers`` (the worker processes are
started by the first pass and kept, so an epoch does not pay their start-up and the dataset's pickling),
``prefetch_factor`` batches per worker decoded ahead, and ``pin_memory`` when the device is CUDA (page-locked batches
can be copied asynchronously). Its ``batch_sampler`` is the :class:`EpochBatchSampler`; a new pass re-reads it
(torch's persistent iterator calls ``iter(batch_sampler)`` on every ``iter(loader)``, and discards what the workers
had prefetched for an abandoned pass).

**In-memory datasets** (:class:`~sim.data.TensorImageDataset`: digits, CIFAR-10, downsampled ImageNet) have no
parts: each batch is one ``index_select`` of the preloaded tensor (:meth:`~sim.data.ImageDataset.batches`), no
``DataLoader`` and no workers, exactly as :func:`~sim.data.iterate_batches` gathers them.

**Device.** On CUDA each batch from the host is copied with ``non_blocking=True`` on a side stream one batch ahead,
so the copy of batch ``k+1`` runs while the kernels of batch ``k`` do (the compute stream waits for the copy
stream before a batch is handed out, and the batch is recorded on the compute stream so its memory is not reused
early). Off CUDA a batch is only cast to ``dtype`` (a float32 batch of a float32 run is passed on as it is).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from sim.data.batches import epoch_batches
from sim.data.dataset import LoaderParts, _as_is
from sim.errors import DataError


class EpochBatchSampler(Sampler[list[int]]):
    """A ``batch_sampler`` whose index batches are set before each pass: :meth:`set_epoch` (the batches of one
    training epoch) or :meth:`set_batches` (any fixed batches, e.g. an evaluation subset).

    Args:
        n: samples in the split.
        batch_size: samples per (global) batch.
        seed: with the epoch, fixes the order (:func:`~sim.data.epoch_order`).
        shuffle: False visits the samples in index order every epoch.
        drop_last: drop the last, shorter batch of every epoch.
        shard: ``(rank, world_size)``: this process's contiguous part of every global batch (see
            :func:`~sim.data.iterate_batches`); over an epoch the ranks together visit every sample once.
    """

    def __init__(self, n: int, batch_size: int, *, seed: int, shuffle: bool = True, drop_last: bool = False,
                 shard: tuple[int, int] = (0, 1)) -> None:
        self.n, self.batch_size, self.seed = int(n), batch_size, seed
        self.shuffle, self.drop_last, self.shard = shuffle, drop_last, shard
        epoch_batches(self.n, batch_size, seed=seed, epoch=0, shuffle=False, shard=shard)  # refuse bad settings now
        self.batches: list[Tensor] = []
        """The index batches ``[B]`` int64 of the next pass, in order."""

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """The next pass is epoch ``epoch`` from its batch ``start_batch`` on (:func:`epoch_batches`)."""
        self.batches = epoch_batches(self.n, self.batch_size, seed=self.seed, epoch=epoch, shuffle=self.shuffle,
                                     drop_last=self.drop_last, start_batch=start_batch, shard=self.shard)

    def set_batches(self, index_batches: Iterable[Tensor]) -> None:
        """The next pass reads ``index_batches`` (int64 tensors ``[B]`` of indices below ``n``), in order."""
        batches = [torch.as_tensor(b, dtype=torch.int64) for b in index_batches]
        for b in batches:
            if b.numel() and not (0 <= int(b.min()) and int(b.max()) < self.n):
                raise DataError(f"index batch {b.tolist()[:8]}... is outside 0..{self.n - 1} ({self.n} samples)")
        self.batches = batches

    def __iter__(self) -> Iterator[list[int]]:
        for b in self.batches:
            yield b.tolist()

    def __len__(self) -> int:
        return len(self.batches)


def _parts(ds: Dataset) -> LoaderParts | None:
    """A dataset's :class:`LoaderParts` (a plain map-style dataset of ``(x, y)`` pairs: itself, as it is)."""
    loader_parts = getattr(ds, "loader_parts", None)
    return loader_parts() if loader_parts is not None else LoaderParts(ds, None, _as_is)


class SplitLoader:
    """One split of a run, read through the same loader for the whole run (see the module docstring).

    Args:
        ds: the split (an :class:`~sim.data.ImageDataset`, or any map-style dataset of ``(x, y)`` pairs).
        sampler: its batches; :meth:`epoch` and :meth:`over` set them before each pass.
        num_workers: decoding processes of a streaming dataset, started by the first pass and kept until the
            loader is dropped; 0 decodes in this process. In-memory datasets take none.
        device: where batches are delivered; CUDA pins host batches and overlaps their upload with compute.
        dtype: the floating type ``x`` is cast to (on the device); None keeps the dataset's.
        prefetch_factor: batches each worker decodes ahead.

    One pass at a time: :meth:`epoch` and :meth:`over` set the sampler and start the pass at once, so a new pass
    abandons the one before (what the workers decoded ahead for it is dropped).
    """

    def __init__(self, ds: Dataset, sampler: EpochBatchSampler, *, num_workers: int = 0,
                 device: torch.device | str = "cpu", dtype: torch.dtype | None = None, prefetch_factor: int = 2
                 ) -> None:
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise DataError(f"num_workers must be an integer >= 0, got {num_workers!r}")
        if len(ds) != sampler.n:
            raise DataError(f"the sampler is for {sampler.n} samples but the dataset has {len(ds)}")
        self.ds, self.sampler = ds, sampler
        self.device, self.dtype = torch.device(device), dtype
        self.parts = _parts(ds)
        self.num_workers = num_workers if self.parts is not None else 0
        self.loader: DataLoader | None = None
        """The split's one ``DataLoader`` (None for an in-memory dataset)."""
        if self.parts is not None:
            workers = dict(persistent_workers=True, prefetch_factor=prefetch_factor) if num_workers else {}
            self.loader = DataLoader(self.parts.items, batch_sampler=sampler, num_workers=num_workers,
                                     collate_fn=self.parts.collate, pin_memory=self.device.type == "cuda",
                                     **workers)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """``(x [B, C, H, W], y [B] int64)`` on the device for epoch ``epoch`` from batch ``start_batch`` on."""
        self.sampler.set_epoch(epoch, start_batch)
        return self._pass()

    def over(self, index_batches: Sequence[Tensor]) -> Iterator[tuple[Tensor, Tensor]]:
        """``(x, y)`` on the device for each index tensor ``[B]`` of ``index_batches``, in order."""
        self.sampler.set_batches(index_batches)
        return self._pass()

    def _pass(self) -> Iterator[tuple[Tensor, Tensor]]:
        if self.loader is None:
            host = self.ds.batches(self.sampler.batches)  # in memory: one index_select per batch
        else:
            host = (out for out in map(self.parts.finish, self.loader) if out is not None)
        return to_device(host, self.device, self.dtype)


def to_device(batches: Iterable[tuple[Tensor, Tensor]], device: torch.device, dtype: torch.dtype | None
              ) -> Iterator[tuple[Tensor, Tensor]]:
    """``batches`` moved to ``device`` with ``x`` cast to ``dtype``; on CUDA the upload of a host batch runs one
    batch ahead on a side stream (see the module docstring)."""
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # so that it compares equal to a tensor's
    if device.type != "cuda":
        for x, y in batches:
            yield x.to(device=device, dtype=dtype or x.dtype), y.to(device)
        return
    copy_stream = torch.cuda.Stream(device)
    compute = torch.cuda.current_stream(device)

    def upload(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        x, y = batch
        if x.device == device:  # gathered on the GPU already (an in-memory dataset moved there)
            return x.to(dtype=dtype or x.dtype), y
        with torch.cuda.stream(copy_stream):
            return x.to(device, non_blocking=True).to(dtype or x.dtype), y.to(device, non_blocking=True)

    it = iter(batches)
    staged = next(it, None)
    staged = upload(staged) if staged is not None else None
    while staged is not None:
        compute.wait_stream(copy_stream)
        x, y = staged
        x.record_stream(compute)  # freed later on the compute stream's schedule, not the copy stream's
        y.record_stream(compute)
        following = next(it, None)
        staged = upload(following) if following is not None else None
        yield x, y
