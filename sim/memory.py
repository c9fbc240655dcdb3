"""Will it fit? Two checks made before anything runs.

**The estimate** (:func:`check_fits`, any device): a rough upper estimate of the memory a network and a batch take,
checked before anything is built, so that a size that cannot fit (``--batch 1000000000``, ``--width-mult 1000000``)
is refused with the memory it would need instead of ending in an allocation failure, or in the kernel's OOM killer
after minutes.

The estimate, from a build on torch's ``meta`` device (shapes only)::

    bytes ~ itemsize * (PARAM_COPIES * parameters + ACTIVITY_COPIES * batch * (input + sum of layer outputs))

``PARAM_COPIES`` counts the weights, their gradient, Adam's two moments and feedback/inverse copies;
``ACTIVITY_COPIES`` the activity, pre-activation, message and target of every layer. It is meant to catch sizes off
by orders of magnitude, not to budget memory: a run close to the limit may still fail, and then with torch's own
message.

**The measurement** (:func:`check_batch_fits`, CUDA runs, before the first step): a fresh copy of the run's network
and scheduler takes one training step at two small probe batches ``b1 < b2`` (``PROBE_BATCH // 2`` and
``PROBE_BATCH``, or the batch itself when smaller) and one evaluation forward pass at each, and
``torch.cuda.max_memory_allocated`` gives each peak above what the copy's weights hold. The peak is then taken as
linear in the batch, ``need(B) = fixed + per_sample * B`` (``fixed``: Adam's moments, factorisations and other
batch-independent temporaries; ``per_sample``: activities, messages, the input), and a per-process batch whose
``need`` exceeds ``FIT_MARGIN`` of the memory free on the device (free plus what torch's cache holds unused) is
refused with the memory needed and free and the largest batch that fits. On a CPU nothing is measured or said (the
estimate above covers it). The arithmetic, :func:`batch_fit`, takes the peak and the free memory as arguments, so it
is tested without a GPU.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

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


def _size(n: float) -> str:
    return _gib(n) if n >= 2**30 else f"{n / 2**20:.3g} MiB"


def check_fits(net_cfg, batch: int, device: str | torch.device, what: str) -> None:
    """Refuse (ConfigError) a network and batch whose estimate exceeds what ``device`` has free; ``what`` names
    the settings to change (e.g. '--batch or --width-mult')."""
    need = estimate_bytes(net_cfg, batch)
    have = available_bytes(device)
    if have is not None and need > have:
        raise ConfigError(f"this network with batch {batch} would need about {_gib(need)} on {device}, but only "
                          f"{_gib(have)} is free there; lower {what}")


# ----- the measurement (CUDA) -----------------------------------------------------------------------------------------
#: the largest probe batch a step is measured at (and half of it); small, so that the probe itself fits
PROBE_BATCH = 8
#: the share of the free device memory a run plans to fill: the rest is for fragmentation of torch's caching
#: allocator, cuDNN workspaces that vary with the batch, and the error of the linear model
FIT_MARGIN = 0.9

#: ``peak(kind, batch)``: bytes a step ('train') or an evaluation pass ('eval') at ``batch`` needs at its peak above
#: the weights, Adam's moments included
PeakFn = Callable[[str, int], int]


@dataclass(frozen=True)
class BatchFit:
    """What :func:`batch_fit` found for one batch size (bytes)."""

    batch: int
    need: float
    """Predicted peak at ``batch`` (measured directly when ``batch`` is a probe size)."""
    available: int
    fixed: float
    """Batch-independent part of the peak."""
    per_sample: float
    """Bytes per sample of the batch."""
    largest: int
    """The largest batch whose predicted peak is within ``FIT_MARGIN`` of ``available`` (0: not even 1)."""

    @property
    def fits(self) -> bool:
        return self.need <= FIT_MARGIN * self.available


def batch_fit(peak_at: Callable[[int], int], batch: int, available: int, *, probe: int = PROBE_BATCH) -> BatchFit:
    """Fit ``need(B) = fixed + per_sample * B`` to ``peak_at`` at ``b2 = min(batch, probe)`` and ``b1 = b2 // 2``
    (at least 1) and predict ``batch``'s peak; with ``b1 == b2 == 1`` the whole peak counts per sample (an upper
    bound)."""
    b2 = min(batch, probe)
    b1 = max(1, b2 // 2)
    p1 = float(peak_at(b1))
    p2 = float(peak_at(b2)) if b2 != b1 else p1
    per_sample = max((p2 - p1) / (b2 - b1), 0.0) if b2 > b1 else p1
    fixed = max(p2 - per_sample * b2, 0.0)
    need = p2 if batch == b2 else fixed + per_sample * batch
    budget = FIT_MARGIN * available
    largest = batch if per_sample == 0 else max(int((budget - fixed) // per_sample), 0)
    return BatchFit(batch, need, available, fixed, per_sample, largest)


def check_batch_fits(cfg, *, processes: int = 1, available: int | None = None, peak: PeakFn | None = None
                     ) -> None:
    """Refuse (ConfigError) a per-process training batch or evaluation batch that does not fit the run's CUDA
    device, before the first step (see the module docstring); on a CPU return at once.

    Args:
        cfg: the run's :class:`~sim.config.RunConfig` (network, ``train.device``, ``batch_size``,
            ``eval_batch_size``).
        processes: the processes of a data-parallel run; each computes its share (``ceil(B / processes)``) of every
            training and evaluation batch, and the largest batch the message suggests is the global one.
        available, peak: the free bytes and the peak function; measured on the device when not given (tests pass
            both to check the arithmetic and the message without a GPU).
    """
    device = torch.device(cfg.train.device)
    if peak is None and device.type != "cuda":
        return
    checks = (("train", cfg.train.batch_size, "train.batch_size"),
              ("eval", cfg.train.eval_batch_size, "train.eval_batch_size"))
    with _measured(cfg, device, available, peak) as (have, peak_fn):
        for kind, size, key in checks:  # 'train' first: its first step creates Adam's moments, which 'eval' keeps
            fit = batch_fit(lambda b, kind=kind: peak_fn(kind, b), -(-size // processes), have)
            if not fit.fits:
                raise ConfigError.at(key, _no_fit_message(fit, kind, device, processes))


def _no_fit_message(fit: BatchFit, kind: str, device: torch.device, processes: int = 1) -> str:
    what = "a training step" if kind == "train" else "an evaluation pass"
    per = f" ({processes} processes share each batch)" if processes > 1 else ""
    largest = fit.largest * processes  # the setting is the global batch; each process computes its share
    largest = (f"the largest batch that fits is about {largest}{per}: set it to {largest} or less"
               if fit.largest >= 1 else "not even a batch of 1 fits: use a smaller network or a larger device")
    return (f"{fit.batch} samples per process do not fit on {device}: {what} would need about {_size(fit.need)} "
            f"({_size(fit.fixed)} + {_size(fit.per_sample)} per sample, measured at batches up to "
            f"{min(fit.batch, PROBE_BATCH)}), but {_size(fit.available)} is free there (a run plans for "
            f"{FIT_MARGIN:.0%} of it); {largest}")


@contextmanager
def _measured(cfg, device: torch.device, available: int | None, peak: PeakFn | None) -> Iterator[tuple[int, PeakFn]]:
    """``(available bytes, peak function)``: the given ones, or measured on ``device`` with a probe copy of the
    run's network that is freed afterwards."""
    if available is None:
        free, _ = torch.cuda.mem_get_info(device)
        available = int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if peak is not None:
        yield available, peak
        return
    with _cuda_probe(cfg, device) as probe_peak:
        yield available, probe_peak


@contextmanager
def _cuda_probe(cfg, device: torch.device) -> Iterator[PeakFn]:
    """A fresh network and scheduler of ``cfg`` on ``device`` and the peak function that steps them on random
    batches; the global RNG states are restored and the copy freed afterwards, so the run is untouched."""
    from sim.config import build_network, build_scheduler

    with torch.random.fork_rng(devices=[device]):
        net = build_network(cfg)
        copy = {"net": net, "sched": build_scheduler(cfg, net)}  # dropped at the end, so the memory is freed
        del net
        torch.cuda.synchronize(device)
        ref = torch.cuda.memory_allocated(device)  # the copy's weights: the run's own are allocated already

        def peak(kind: str, batch: int) -> int:
            net, sched = copy["net"], copy["sched"]
            torch.cuda.reset_peak_memory_stats(device)
            x = torch.rand((batch, *net.config.input_shape), device=device, dtype=net.dtype)
            y = torch.randint(0, net.classes, (batch,), device=device)
            try:
                if kind == "train":
                    sched.train_step(x, y)
                else:
                    with torch.no_grad():
                        net(x)
            except torch.cuda.OutOfMemoryError:
                raise ConfigError.at("train.batch_size" if kind == "train" else "train.eval_batch_size",
                                     f"even a probe batch of {batch} does not fit on {device}; use a smaller "
                                     "network or a larger device") from None
            torch.cuda.synchronize(device)
            return torch.cuda.max_memory_allocated(device) - ref

        try:
            yield peak
        finally:
            copy.clear()
            torch.cuda.empty_cache()
