"""Will it fit? A rough upper estimate of the memory a network and a batch take, checked before anything is built,
so that a size that cannot fit (``--batch 1000000000``, ``--width-mult 1000000``) is refused with the memory it would
need instead of ending in an allocation failure, or in the kernel's OOM killer after minutes.

The estimate, from a build on torch's ``meta`` device (shapes only)::

    bytes ~ itemsize * (PARAM_COPIES * parameters + ACTIVITY_COPIES * batch * (input + sum of layer outputs))

``PARAM_COPIES`` counts the weights, their gradient, Adam's two moments and feedback/inverse copies;
``ACTIVITY_COPIES`` the activity, pre-activation, message and target of every layer. It is meant to catch sizes off
by orders of magnitude, not to budget memory: a run close to the limit may still fail, and then with torch's own
message.
"""

from __future__ import annotations

import math
import os
from dataclasses import replace

import torch

from sim.errors import ConfigError

PARAM_COPIES = 6
ACTIVITY_COPIES = 6


def estimate_bytes(net_cfg, batch: int) -> int:
    """Estimated bytes to train ``net_cfg`` (a :class:`~sim.network.NetworkConfig`) on batches of ``batch``."""
    from sim.network import Network

    with torch.device("meta"):
        net = Network(replace(net_cfg, device="meta"))
    itemsize = torch.empty((), dtype=net.dtype, device="meta").element_size()
    params = sum(p.numel() for p in net.parameters()) + sum(b.numel() for b in net.buffers())
    units = math.prod(net_cfg.input_shape) + sum(math.prod(layer.out_shape) for layer in net.layers)
    return itemsize * (PARAM_COPIES * params + ACTIVITY_COPIES * batch * units)


def available_bytes(device: str | torch.device) -> int | None:
    """Memory this process may still take on ``device``: free GPU memory, or the host's available memory (capped by
    ``RLIMIT_AS``); None where it cannot be told."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except Exception:  # noqa: BLE001 - no usable CUDA: the device check reports that
            return None
    free = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if free is None and hasattr(os, "sysconf"):
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            pass
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        if limit != resource.RLIM_INFINITY:
            free = limit if free is None else min(free, limit)
    except (ImportError, OSError, ValueError):
        pass
    return free


def _gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB"


def check_fits(net_cfg, batch: int, device: str | torch.device, what: str) -> None:
    """Refuse (ConfigError) a network and batch whose estimate exceeds what ``device`` has free; ``what`` names
    the settings to change (e.g. '--batch or --width-mult')."""
    need = estimate_bytes(net_cfg, batch)
    have = available_bytes(device)
    if have is not None and need > have:
        raise ConfigError(f"this network with batch {batch} would need about {_gib(need)} on {device}, but only "
                          f"{_gib(have)} is free there; lower {what}")
