"""The run's data: both splits and the probe batch, checked against the network before anything is written.

A mismatch between data and network (image shape, class count), an empty split, a probe larger than the test split
or ``drop_last`` leaving no batch is a :class:`ConfigError` / :class:`DataError` raised before the store is touched.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from sim.config import RunConfig
from sim.errors import ConfigError, DataError
from sim.network import Network


class RunData(NamedTuple):
    """What a run trains and evaluates on. ``probe``: the first ``record.probe_size`` test samples ``(x, y)`` on
    the network's device and dtype, or None; ``steps_per_epoch``: batches per epoch of the train split."""

    train: object
    test: object
    probe: tuple[torch.Tensor, torch.Tensor] | None
    steps_per_epoch: int


def load_data(cfg: RunConfig, net: Network) -> RunData:
    """Load ``cfg.data`` for ``net`` and check that they fit each other (see the module docstring)."""
    from sim.data import TensorImageDataset, count_batches, iterate_batches, load_split

    spec = cfg.data.spec()
    train = load_split(spec, "train", seed=cfg.train.seed)
    test = load_split(spec, "test", seed=cfg.train.seed)
    where = spec.path or spec.kind
    if tuple(train.input_shape) != tuple(net.config.input_shape):
        raise ConfigError(f"the data ({where}) has images of shape {tuple(train.input_shape)} (C, H, W) but the "
                          f"network reads {tuple(net.config.input_shape)}; set data.image_size or the network's "
                          f"image_size/input_shape so they agree")
    if train.classes != net.classes:
        raise ConfigError(f"the data ({where}) has {train.classes} classes but the network has {net.classes}; "
                          f"set network.classes: {train.classes}")
    for split, ds in (("train", train), ("test", test)):
        if len(ds) == 0:
            raise DataError(f"the {split} split of {where} is empty")
    if cfg.record.probe_size > len(test):
        raise ConfigError(f"record.probe_size: {cfg.record.probe_size} is larger than the test split "
                          f"({len(test)} samples)")
    if net.device.type != "cpu" and isinstance(train, TensorImageDataset):
        train, test = train.to(net.device), test.to(net.device)  # gather batches where they are used
    probe = None
    if cfg.record.probe_size:
        x, y = next(iter(iterate_batches(test, cfg.record.probe_size, seed=0, epoch=0, shuffle=False)))
        probe = (x.to(device=net.device, dtype=net.dtype), y.to(net.device))
    if cfg.train.drop_last and len(train) < cfg.train.batch_size:
        raise ConfigError(f"train.batch_size {cfg.train.batch_size} with drop_last leaves no batch of the "
                          f"{len(train)} training samples")
    return RunData(train, test, probe, count_batches(train, cfg.train.batch_size, cfg.train.drop_last))
