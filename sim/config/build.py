"""Building a run: the network and its scheduler from a resolved :class:`~sim.config.sections.RunConfig`.

    cfg = load_config("configs/digits_deep_gp.yaml")
    net = build_network(cfg)                 # sim.network.Network
    sched = build_scheduler(cfg, net)        # sim.schedule.Scheduler (Adam per layer, noise, seed)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sim.config.sections import RunConfig
from sim.network import Network
from sim.schedule import Scheduler

if TYPE_CHECKING:
    from sim.distributed import Group


def build_network(cfg: RunConfig) -> Network:
    """The run's :class:`Network` (weights initialised from ``train.seed``, on ``train.device``)."""
    return Network(cfg.network_config())


def build_scheduler(cfg: RunConfig, net: Network, parallel: Group | None = None) -> Scheduler:
    """The run's :class:`Scheduler`: one Adam group per layer with its rule's settings, the noise floors, the
    noise generator seeded from ``train.seed``, and the step options ``train.step``; ``parallel``: the processes of
    a data-parallel run (:mod:`sim.distributed`), whose parts of each batch a step sums."""
    return Scheduler(net, noise=cfg.noise, seed=cfg.train.seed, options=cfg.train.step, parallel=parallel,
                     task_updates=cfg.train.task_updates)
