"""The run's data: both splits, their persistent loaders, the probe batch and the train samples evaluated each
epoch, checked against the network before anything is written.

A mismatch between data and network (image shape, class count), an empty split, a probe larger than the test split,
``drop_last`` leaving no batch or ``train.eval_train_subset`` larger than the train split is a :class:`ConfigError`
/ :class:`DataError` raised before the store is touched.

Each split is read through one :class:`~sim.data.loader.SplitLoader` for the whole run (its workers live as long as
the run): the train split's serves the training epochs and the per-epoch evaluation of the train split, the test
split's the probe batch and the evaluation of the test split (docs/performance.md, "The input pipeline").
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from sim.config import RunConfig
from sim.errors import ConfigError, DataError
from sim.network import Network


class RunData(NamedTuple):
    """What a run trains and evaluates on. ``probe``: the first ``record.probe_size`` test samples ``(x, y)`` on
    the network's device and dtype, or None; ``steps_per_epoch``: batches per epoch of the train split;
    ``loaders``: one :class:`~sim.data.loader.SplitLoader` per split, ``{'train': ..., 'test': ...}``;
    ``eval_train``: the train indices ``[N]`` int64 (sorted) whose accuracy and loss are recorded each epoch."""

    train: object
    test: object
    probe: tuple[torch.Tensor, torch.Tensor] | None
    steps_per_epoch: int
    loaders: dict
    eval_train: torch.Tensor


def check_fit(ds, net: Network, where: str) -> None:
    """Refuse a split whose image shape or class count is not the network's (a ConfigError saying what to set)."""
    if tuple(ds.input_shape) != tuple(net.config.input_shape):
        raise ConfigError(f"the data ({where}) has images of shape {tuple(ds.input_shape)} (C, H, W) but the "
                          f"network reads {tuple(net.config.input_shape)}; set data.image_size or the network's "
                          f"image_size/input_shape so they agree")
    if ds.classes != net.classes:
        raise ConfigError(f"the data ({where}) has {ds.classes} classes but the network has {net.classes}; "
                          f"set network.classes: {ds.classes}")


def eval_train_indices(n: int, subset: int | None, seed: int) -> torch.Tensor:
    """The train samples evaluated after every epoch, ``[N]`` int64 sorted: all ``n`` (``subset`` None), or the
    first ``subset`` of :func:`~sim.data.epoch_order` ``(seed, epoch=0)``, the order of an epoch no run trains
    (epochs count from 1), so the subset is fixed by ``train.seed`` and the same every epoch and on resume. Sorted,
    so a folder dataset reads its files in order. A ``subset`` above ``n`` is refused, never capped."""
    from sim.data import epoch_order

    if subset is None:
        return torch.arange(n, dtype=torch.int64)
    if subset > n:
        raise ConfigError(f"train.eval_train_subset: {subset} is more than the {n} samples of the train split; give "
                          f"at most {n}, or null to evaluate the whole split", key="train.eval_train_subset")
    return epoch_order(n, seed=seed, epoch=0)[:subset].sort().values


def load_data(cfg: RunConfig, net: Network, *, shard: tuple[int, int] = (0, 1)) -> RunData:
    """Load ``cfg.data`` for ``net``, check that they fit each other (see the module docstring) and build the
    loaders; ``shard`` ``(rank, world_size)``: this process's part of every training batch."""
    from sim.data import TensorImageDataset, count_batches, load_split
    from sim.data.loader import EpochBatchSampler, SplitLoader

    spec = cfg.data.spec()
    train = load_split(spec, "train", seed=cfg.train.seed)
    test = load_split(spec, "test", seed=cfg.train.seed)
    where = spec.path or spec.kind
    check_fit(train, net, where)
    for split, ds in (("train", train), ("test", test)):
        if len(ds) == 0:
            raise DataError(f"the {split} split of {where} is empty")
    if cfg.record.probe_size > len(test):
        raise ConfigError(f"record.probe_size: {cfg.record.probe_size} is larger than the test split "
                          f"({len(test)} samples)")
    if cfg.train.drop_last and len(train) < cfg.train.batch_size:
        raise ConfigError(f"train.batch_size {cfg.train.batch_size} with drop_last leaves no batch of the "
                          f"{len(train)} training samples")
    eval_train = eval_train_indices(len(train), cfg.train.eval_train_subset, cfg.train.seed)
    if net.device.type != "cpu" and isinstance(train, TensorImageDataset):
        train, test = train.to(net.device), test.to(net.device)  # gather batches where they are used
    t = cfg.train
    loaders = {
        "train": SplitLoader(train, EpochBatchSampler(len(train), t.batch_size, seed=t.seed, drop_last=t.drop_last,
                                                      shard=shard),
                             num_workers=t.num_workers, device=net.device, dtype=net.dtype),
        "test": SplitLoader(test, EpochBatchSampler(len(test), t.eval_batch_size, seed=t.seed, shuffle=False),
                            num_workers=t.num_workers, device=net.device, dtype=net.dtype),
    }
    probe = None
    if cfg.record.probe_size:
        probe = next(loaders["test"].over([torch.arange(cfg.record.probe_size)]))
    return RunData(train, test, probe, count_batches(train, t.batch_size, t.drop_last), loaders, eval_train)


def evaluation_batches(data: RunData, split: str, eval_batch_size: int, *, shard: tuple[int, int] = (0, 1)):
    """The batches of the per-epoch evaluation of ``split`` ('train': the samples ``data.eval_train``; 'test': the
    whole split), in index order, ``eval_batch_size`` at a time, on the network's device: the one place that
    decides which samples the recorded accuracies and losses cover. ``shard`` ``(rank, world_size)``: this
    process's contiguous part of every evaluation batch (the parts of all ranks make up the batch)."""
    indices = data.eval_train if split == "train" else torch.arange(len(data.test))
    batches = indices.split(eval_batch_size)
    rank, world_size = shard
    if world_size > 1:
        batches = [torch.tensor_split(b, world_size)[rank] for b in batches]
    return data.loaders[split].over(batches)
