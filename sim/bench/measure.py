"""Measuring a step: its time (synchronised on CUDA), its memory (peak over the step), its host syncs, the size of the
state, and the matmul rates the achieved FLOP/s are read against.
"""

from __future__ import annotations

import ctypes
import gc
import os
import resource
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from sim.schedule import Scheduler


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(sched: Scheduler, x: Tensor, y: Tensor, steps: int) -> float:
    """Seconds per training step over ``steps`` steps; on CUDA synchronised only before and after the loop."""
    device = sched.net.device
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        sched.train_step(x, y)
    _sync(device)
    return (time.perf_counter() - t0) / steps


def _proc_status(key: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024  # kB -> MiB
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def _trim_heap() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def step_memory_mb(sched: Scheduler, x: Tensor, y: Tensor) -> float | None:
    """Peak memory one training step needs above what is held before it, in MiB (see the module docstring)."""
    device = sched.net.device
    if device.type == "cuda":
        _sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        sched.train_step(x, y)
        _sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    _trim_heap()
    base = _proc_status("VmRSS")
    if base is not None and _reset_peak_rss():
        sched.train_step(x, y)
        peak = _proc_status("VmHWM")
        return None if peak is None else max(peak - base, 0.0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sched.train_step(x, y)
    return max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before, 0.0)


def host_syncs(sched: Scheduler, x: Tensor, y: Tensor) -> int | None:
    """Synchronising CUDA calls one training step makes (None on CPU), counted with torch's sync debug mode.

    A step should make none with numerics checks off and exactly one (reading the step's flags) with
    ``check_numerics='step'``; each is the CPU waiting for the GPU's queue to drain. torch's detector covers the
    common synchronising calls (device-to-host copies, ``.item()``, ``nonzero``, stream syncs), not every one.
    """
    device = sched.net.device
    if device.type != "cuda":
        return None
    _sync(device)
    before = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            sched.train_step(x, y)
        finally:
            torch.cuda.set_sync_debug_mode(before)
    _sync(device)
    return sum("synchronizing" in str(w.message) for w in caught)


def state_mb(sched: Scheduler) -> float:
    """Parameters, buffers and optimiser state, in MiB."""
    tensors = [*sched.net.parameters(), *sched.net.buffers()]
    tensors += [v for s in sched.optimizer.state.values() for v in s.values() if isinstance(v, Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def _median_time(fn: Callable[[], object], device: torch.device, min_s: float = 0.05, max_reps: int = 50) -> float:
    """Median seconds of ``fn`` over enough calls to fill ``min_s`` (at least 3)."""
    times: list[float] = []
    while len(times) < 3 or (sum(times) < min_s and len(times) < max_reps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_seconds(batch: int, n: int, dtype: torch.dtype, device: torch.device) -> dict[str, float]:
    """Median seconds of a ``[batch, n] x [n, n]`` and an ``[n, n] x [n, n]`` matmul (one sample of each)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(batch, n, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    w = torch.randn(n, n, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    out_a = torch.empty(batch, n, dtype=dtype, device=device)
    out_w = torch.empty(n, n, dtype=dtype, device=device)
    return {"batch": _median_time(lambda: torch.mm(a, w, out=out_a), device),
            "square": _median_time(lambda: torch.mm(w, w, out=out_w), device)}


def set_tf32(value: bool | None) -> None:
    if value is not None:
        torch.backends.cuda.matmul.allow_tf32 = value
        torch.backends.cudnn.allow_tf32 = value


def quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model and core count (the rows' ``device_name``)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"cpu ({os.cpu_count()} cores)"
