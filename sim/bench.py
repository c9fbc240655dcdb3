"""Benchmark of whole training steps: time, memory, FLOPs and the matmul rate they are measured against.

What is timed is :meth:`Scheduler.train_step` (forward, messages, plasticity, regulariser, Adam) on a random batch,
after warm-up steps, ``repeats`` times ``steps`` steps. The cases (one per rule, and with ``reference_cost`` the
authors' costs beside each) are built first and then timed **round-robin**, one repeat of every case per round, so a
change in the machine's load (other processes on a shared CPU) hits every case alike; the matmul rates are measured
in the same rounds. Per case it reports the median step time and its spread (min, max, inter-quartile range).

Ratios between cases (``ratio_to_bp``, ``speedup_vs_reference``) are medians of per-round ratios, which a load
change between rounds does not move.

FLOPs are counted analytically from the layer shapes (matmul/conv-class work only; elementwise ops, Adam included, are
not counted), per step with batch ``B``:

* forward ``2 B K`` for a layer of ``K`` multiply-adds per sample (``W.numel()`` per output position); a GP layer
  that skips its aux units (``StepOptions.skip_aux``, the default) computes only its ``width`` forwarded rows of
  ``W``, and ``K`` counts those;
* messages: the same ``2 B K`` for every layer but the first (BP's transpose, FA's feedback; GP's solve with the LU
  factors ``2 B n^2`` or its product with an explicit inverse or its first ``k`` columns, the same count);
* GP's factorisation per square layer and step: LU ``2/3 n^3``, or explicit inverse ``2 n^3`` (``inverse='inv'``);
  with LU, forming the ``k`` columns of ``M^{-1}`` a message passes through (all ``n`` for a conv layer that computes
  its aux channels, ``width`` when it skips them) ``2 n^2 k``;
* weight gradients ``2 B K``;
* the orthogonality regulariser per square layer, ``W W^T`` (symmetric: ``1.25 n^3`` from ``n = 512`` on,
  :func:`sim.regularizer.gram`; ``2 n^3`` below) and ``(W W^T - I) W`` (``2 n^3``), divided by ``ortho_every``.

The matmul/conv part is checked against ``torch.utils.flop_counter.FlopCounterMode`` in the tests (it does not count
LU factorisations or triangular solves). "Achieved GFLOP/s" is that count over the median step time, to be read
against the rate of a ``[B, n] x [n, n]`` and an ``n x n x n`` matmul measured in the same process and dtype.

Memory: on CUDA the peak of ``torch.cuda.max_memory_allocated`` during one step above what was allocated before it;
on CPU the peak resident set size (``VmHWM``, reset through ``/proc/self/clear_refs``) during one step above the
resident size before it, after returning freed heap pages to the system (``malloc_trim``); where ``/proc`` is not
writable, the growth of ``getrusage``'s max RSS (a lower bound). ``state_mb`` is the exact size of the parameters,
buffers and Adam state. ``tracemalloc`` does not see torch's allocations.

Host syncs (``host_syncs_per_step``, CUDA only): the synchronising calls of one more step, counted with
``torch.cuda.set_sync_debug_mode('warn')`` (:func:`host_syncs`); 0 expected with ``check_numerics='off'``, 1 with
``'step'``.

Reference-cost mode: float64 everywhere; the inverting rules (gp, vgp) in the target form with an explicit inverse of
every square layer every step (``RuleSettings(inverse='inv', arithmetic='target')``) and ``W W^T`` as one full matmul
(``train.step.symmetric_gram: false``), the costs of the authors' implementation; the same step options as
the fast mode otherwise (the target form computes every aux unit: it reads them). The command-line twin is
``python -m sim bench`` (:mod:`sim.commands.bench`); the numbers and how to read them are in docs/performance.md.
"""

from __future__ import annotations

import ctypes
import gc
import math
import os
import resource
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from sim import regularizer
from sim.config import RunConfig, build_network, build_scheduler, load_config, validate_config
from sim.errors import ConfigError
from sim.memory import check_fits
from sim.network import Network, resolve_device
from sim.presets import PRESETS, preset
from sim.rules import get_rule
from sim.schedule import Scheduler
from sim.step_options import NUMERICS_CHECKS

#: training-set sizes for the epoch figure, by preset-name prefix
EPOCH_SAMPLES = {"cifar10": 50_000, "imagenet": 1_281_167}


#: the network preset and rules benchmarked without a run config
DEFAULT_NET = "cifar10_deep"
DEFAULT_RULES = ("bp", "fa", "vgp", "gp")
#: the numerics-check mode benchmarked without a run config or ``check_numerics`` (one flag per step)
DEFAULT_CHECK = "step"


@dataclass(frozen=True)
class BenchOptions:
    """What to benchmark and how (the fields of ``python -m sim bench``).

    Every case is a run config (:class:`~sim.config.RunConfig`) built by :func:`base_config` and :func:`case_config`:
    ``config`` (or, without one, the preset ``net`` with each rule's default settings) with the fields marked
    *override* replacing its values where they are set (not None). A benchmarked step is therefore the step a run of
    that config takes; each JSON row holds the case's resolved config (``config``) and step options (``step``).
    """

    config: str | Path | dict | None = None
    """A run config (YAML path or dict): its network, rules, settings, noise and train section (seed, dtype, device,
    batch_size, step) build every case. None: the preset ``net`` (default cifar10_deep), no noise, seed 0, batch 256,
    float32 on the CPU, ``StepOptions(check_numerics='step')``."""
    net: str | None = None
    """Override: the network preset (with ``preset_kwargs``) in place of the config's network."""
    rules: tuple[str, ...] | None = None
    """Override: one case per rule, the rule on every layer. None: the config's rules (one case) or, without a
    config, bp, fa, vgp and gp."""
    dtype: str | None = None
    """Override: dtype of the fast mode (``train.dtype``)."""
    arithmetic: str | None = None
    """Override: GP arithmetic of the fast mode ('difference' or 'target'; the inverting rules' settings)."""
    batch: int | None = None
    """Override: batch size (``train.batch_size``)."""
    steps: int = 3
    """Training steps per timed repeat."""
    repeats: int = 5
    """Timed repeats per case (the median and spread are over these)."""
    warmup: int = 2
    """Untimed steps per case before timing."""
    device: str | None = None
    """Override: torch device (``train.device``)."""
    reference_cost: bool = False
    """Also time every case in the reference-cost mode (float64, target form, explicit inverse every step, ``W W^T``
    as one full matmul)."""
    preset_kwargs: dict = field(default_factory=dict)
    """Override: preset options (``image_size``, ``width_mult``, ``classes``) of the config's or ``net``'s preset."""
    check_numerics: str | None = None
    """Override ``train.step.check_numerics``: 'tensor', 'step' or 'off'."""
    fused_adam: bool | None = None
    """Override ``train.step.fused_adam``."""
    ortho_every: int | None = None
    """Override ``train.step.ortho_every`` (1 is the reference)."""
    skip_aux: bool | None = None
    """Override ``train.step.skip_aux`` (False computes the aux units too, to measure what skipping saves)."""
    tf32: tuple[bool, ...] | None = None
    """CUDA float32 only: time with TF32 matmuls not allowed and/or allowed; None: both on CUDA, n/a on CPU."""
    seed: int | None = None
    """Override ``train.seed``; seeds the weights and the batch."""
    threads: int | None = None
    """CPU threads for torch (``torch.set_num_threads``); None keeps torch's default."""
    compile: bool | None = None
    """Override ``train.step.compile_nudge``: ``torch.compile`` GP's elementwise nudge (compiled during warm-up)."""


@dataclass(frozen=True)
class Case:
    """One timed configuration."""

    rule: str
    """The rule on every layer, or the config's per-layer rules joined by commas."""
    mode: str
    """'fast' or 'reference'."""
    dtype: str
    arithmetic: str | None
    """GP arithmetic set for this case; None: the config's settings."""
    tf32: bool | None


def base_config(opts: BenchOptions) -> RunConfig:
    """The run config every case starts from: ``opts.config`` (or the preset ``net``), with ``opts``' overrides."""
    if opts.config is not None:
        doc = load_config(opts.config).to_dict()
    else:
        net = opts.net or DEFAULT_NET
        if net not in PRESETS:
            raise ConfigError(f"unknown network preset {net!r}; presets: {', '.join(sorted(PRESETS))}")
        shape = preset(net, "bp", **opts.preset_kwargs)  # no tensors: the data section's shapes
        doc = {"name": "bench", "network": {"preset": net}, "rules": "bp",
               "data": {"kind": "random", "classes": shape.classes, "input_shape": list(shape.input_shape)},
               "train": {"epochs": 1, "step": {"check_numerics": DEFAULT_CHECK}}}
    if opts.net is not None:
        doc["network"] = {"preset": opts.net}
    if opts.preset_kwargs:
        doc["network"].update(opts.preset_kwargs)
    train = doc["train"]
    for key, value in (("dtype", opts.dtype), ("device", opts.device), ("seed", opts.seed),
                       ("batch_size", opts.batch)):
        if value is not None:
            train[key] = value
    step = train.setdefault("step", {})
    for key, value in (("check_numerics", opts.check_numerics), ("fused_adam", opts.fused_adam),
                       ("ortho_every", opts.ortho_every), ("skip_aux", opts.skip_aux),
                       ("compile_nudge", opts.compile)):
        if value is not None:
            step[key] = value
    return validate_config(doc, source="bench")


def _rules_label(rules: str | tuple[str, ...]) -> str:
    return rules if isinstance(rules, str) else ",".join(rules)


def make_cases(opts: BenchOptions, base: RunConfig | None = None) -> list[Case]:
    """The cases of a run: every rule (or the config's rules) in the fast mode, then (``reference_cost``) in the
    reference mode."""
    base = base or base_config(opts)
    cuda = torch.device(base.train.device).type == "cuda"
    rules = opts.rules if opts.rules is not None else (
        (_rules_label(base.rules),) if opts.config is not None else DEFAULT_RULES)
    cases = []
    for mode in ("fast", "reference") if opts.reference_cost else ("fast",):
        dtype = base.train.dtype if mode == "fast" else "float64"
        tf32s = (opts.tf32 if opts.tf32 is not None else (False, True)) if cuda and dtype == "float32" else (None,)
        for rule in rules:
            arithmetic = opts.arithmetic if mode == "fast" else "target"
            for tf32 in tf32s:
                cases.append(Case(rule, mode, dtype, arithmetic, tf32))
    return cases


def case_config(base: RunConfig, case: Case) -> RunConfig:
    """The run config of one case: ``base`` with the case's rules, dtype and GP arithmetic; the reference mode adds
    the explicit inverse and the full-matmul ``W W^T`` (``train.step.symmetric_gram: false``)."""
    doc = base.to_dict()
    doc["name"] = f"bench_{case.rule.replace(',', '_')}_{case.mode}"
    doc["rules"] = case.rule.split(",") if "," in case.rule else case.rule
    doc["train"]["dtype"] = case.dtype
    used = set(doc["rules"]) if isinstance(doc["rules"], list) else {doc["rules"]}
    for rule in used:
        doc["settings"].setdefault(rule, {})
        if case.arithmetic is not None and get_rule(rule).factorizes:
            doc["settings"][rule]["arithmetic"] = case.arithmetic
            if case.mode == "reference":
                doc["settings"][rule]["inverse"] = "inv"
    if case.mode == "reference":
        doc["train"]["step"]["symmetric_gram"] = False
    return validate_config(doc, source=f"bench case {case.rule}/{case.mode}")


def _gp_form(cfg: RunConfig) -> tuple[str, str]:
    """The case's ``(arithmetic, inverse)``: those of its inverting rule, '-' where it has none (or several)."""
    rules = {cfg.rules} if isinstance(cfg.rules, str) else set(cfg.rules)
    forms = {(cfg.settings[r].arithmetic, cfg.settings[r].inverse) for r in rules if get_rule(r).factorizes}
    return forms.pop() if len(forms) == 1 else ("-", "-")


def build_case(opts: BenchOptions, case: Case, base: RunConfig | None = None
               ) -> tuple[Scheduler, Tensor, Tensor, RunConfig]:
    """A fresh network and scheduler for ``case`` from its run config (:func:`case_config`), a random batch on its
    device, and the config."""
    cfg = case_config(base or base_config(opts), case)
    check_fits(cfg.network_config(), cfg.train.batch_size, cfg.train.device, "--batch, --width-mult or --image-size")
    net = build_network(cfg)
    sched = build_scheduler(cfg, net)
    g = torch.Generator().manual_seed(cfg.train.seed)
    x = torch.rand((cfg.train.batch_size, *net.config.input_shape), generator=g, dtype=torch.float64)
    y = torch.randint(0, net.classes, (cfg.train.batch_size,), generator=g)
    return sched, x.to(device=net.device, dtype=net.dtype), y.to(net.device), cfg


# ----- FLOPs --------------------------------------------------------------------------------------------------------
def step_flops(net: Network, batch: int, ortho_every: int = 1, narrow: list[bool] | None = None,
               symmetric_gram: bool = True) -> dict[str, float]:
    """FLOPs of one training step by part: ``forward``, ``messages``, ``weight_grads``, ``factorization``,
    ``regularizer`` and ``total`` (see the module docstring for the formulas). ``narrow[l]``: layer l runs on its
    forwarded units only (:attr:`Scheduler.narrow <sim.schedule.Scheduler>`); ``ortho_every`` and
    ``symmetric_gram``: the step's options (:class:`~sim.step_options.StepOptions`)."""
    parts = dict.fromkeys(("forward", "messages", "weight_grads", "factorization", "regularizer"), 0.0)
    narrow = narrow or [False] * len(net.layers)
    for i, (layer, rule, skip) in enumerate(zip(net.layers, net.rules, narrow)):
        positions = math.prod(layer.out_shape[1:])  # 1 for dense, H' W' for conv
        rows = layer.width if skip else layer.out_shape[0]  # output units (channels) computed
        macs = rows * layer.weight[0].numel() * positions * batch
        parts["forward"] += 2 * macs
        parts["weight_grads"] += 2 * macs
        if i > 0:
            n = layer.square_matrix().shape[0] if layer.square else 0
            # GP's message either solves for the (zero-padded) batch or goes through `rows` columns of the inverse
            solved = rule.factorizes and not layer.forms_inverse_columns(rows, batch)
            parts["messages"] += 2 * batch * n * n if solved else 2 * macs
            if rule.factorizes:
                parts["factorization"] += 2 * n**3 if rule.settings.inverse == "inv" else 2 / 3 * n**3
                if rule.settings.inverse != "inv" and not solved:
                    parts["factorization"] += 2 * n**2 * rows  # columns of M^{-1} from the LU factors
        matrix = layer.square_weight() if rule.settings.ortho_lambda > 0 else None  # any rule's square weight
        if matrix is not None:
            parts["regularizer"] += regularizer.gradient_flops(matrix.shape[0], symmetric_gram) / ortho_every
    parts["total"] = sum(parts.values())
    return parts


# ----- measuring ----------------------------------------------------------------------------------------------------
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


def _set_tf32(value: bool | None) -> None:
    if value is not None:
        torch.backends.cuda.matmul.allow_tf32 = value
        torch.backends.cudnn.allow_tf32 = value


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


# ----- the run ------------------------------------------------------------------------------------------------------
def validate(opts: BenchOptions) -> RunConfig:
    """Refuse options that cannot run, with a message; returns the base run config (:func:`base_config`)."""
    if opts.net is not None and opts.net not in PRESETS:
        raise ConfigError(f"unknown network preset {opts.net!r}; presets: {', '.join(sorted(PRESETS))}")
    if opts.rules is not None:
        if not opts.rules:
            raise ConfigError("no rules to benchmark; give e.g. --rules bp,gp")
        for r in opts.rules:
            get_rule(r)
        if len(set(opts.rules)) != len(opts.rules):
            raise ConfigError(f"rules listed twice: {','.join(opts.rules)}")
    for name in ("batch", "steps", "repeats"):
        if getattr(opts, name) is not None and getattr(opts, name) < 1:
            raise ConfigError(f"--{name} must be at least 1, got {getattr(opts, name)}")
    for name, most in (("steps", MAX_STEPS), ("repeats", MAX_REPEATS), ("warmup", MAX_STEPS)):
        if getattr(opts, name) > most:
            raise ConfigError(f"--{name} must be at most {most:,} (a benchmark, not a run), got {getattr(opts, name)}")
    if opts.threads is not None and not 1 <= opts.threads <= max_threads():
        raise ConfigError(f"--threads must be between 1 and {max_threads()} (4 x the {os.cpu_count()} cores: more "
                          f"only oversubscribes them, and torch crashes at huge counts), got {opts.threads}")
    if opts.warmup < 0:
        raise ConfigError(f"--warmup must be >= 0, got {opts.warmup}")
    if opts.dtype not in (None, "float32", "float64"):
        raise ConfigError(f"--dtype must be float32 or float64, got {opts.dtype!r}")
    if opts.arithmetic not in (None, "difference", "target"):
        raise ConfigError(f"--arithmetic must be difference or target, got {opts.arithmetic!r}")
    if opts.check_numerics is not None and opts.check_numerics not in NUMERICS_CHECKS:
        raise ConfigError(f"--check-numerics must be one of {NUMERICS_CHECKS}, got {opts.check_numerics!r}")
    base = base_config(opts)
    every = base.train.step.ortho_every
    if opts.steps % every:
        raise ConfigError(f"--steps ({opts.steps}) must be a multiple of ortho_every ({every}), so that every timed "
                          "repeat holds the same share of steps with the regulariser")
    return base


#: bounds of the timed loop: beyond them a typo (an extra zero or ten) would run for days
MAX_STEPS = 100_000
MAX_REPEATS = 1_000


def max_threads() -> int:
    """The most CPU threads ``--threads`` may ask for: 4 per core (torch's thread pool segfaults at ~100,000)."""
    return 4 * (os.cpu_count() or 1)


def run(opts: BenchOptions, progress: Callable[[str], None] | None = None) -> list[dict]:
    """Benchmark every case of ``opts``; one result dict per case (the ``--json`` rows)."""
    base = validate(opts)
    device = resolve_device(base.train.device, "--device")
    tf32_before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    threads_before = torch.get_num_threads()
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    try:
        return _run(opts, base, device, progress)
    finally:
        torch.set_num_threads(threads_before)
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32_before


def _run(opts: BenchOptions, base: RunConfig, device: torch.device, progress: Callable[[str], None] | None
         ) -> list[dict]:
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    cases = make_cases(opts, base)
    batch = base.train.batch_size
    net_name = base.network.preset or base.name
    built = {}
    for case in cases:
        if progress:
            progress(f"building {case.rule} ({case.mode}, {case.dtype})")
        built[case] = build_case(opts, case, base)
    times: dict[Case, list[float]] = {c: [] for c in cases}
    mm_times: dict[tuple[str, bool | None, int], list[dict[str, float]]] = {}
    # the matmul each case is compared with: [B, n] x [n, n] for its widest layer (rows of the weight)
    n_mm = {c: max(layer.weight.shape[0] for layer in built[c][0].net.layers) for c in cases}
    for case in cases:
        sched, x, y, _ = built[case]
        _set_tf32(case.tf32)
        for _ in range(opts.warmup):
            sched.train_step(x, y)
    for r in range(opts.repeats):
        for case in cases:
            sched, x, y, _ = built[case]
            _set_tf32(case.tf32)
            times[case].append(time_steps(sched, x, y, opts.steps))
            key = (case.dtype, case.tf32, n_mm[case])
            if len(mm_times.setdefault(key, [])) <= r:
                mm_times[key].append(matmul_seconds(batch, n_mm[case], sched.net.dtype, device))
        if progress:
            progress(f"round {r + 1}/{opts.repeats}: " + ", ".join(
                f"{_label(c.rule, c.mode, c.tf32)} {1000 * times[c][-1]:.0f} ms" for c in cases))
    rows = []
    for case in cases:
        sched, x, y, cfg = built[case]
        step = cfg.train.step
        arithmetic, inverse = _gp_form(cfg)
        _set_tf32(case.tf32)
        mem = step_memory_mb(sched, x, y)
        syncs = host_syncs(sched, x, y)
        flops = step_flops(sched.net, batch, step.ortho_every, sched.narrow, step.symmetric_gram)
        t = statistics.median(times[case])
        q1, q3 = _quartiles(times[case])
        n = n_mm[case]
        mm = mm_times[(case.dtype, case.tf32, n)]
        mm_batch = statistics.median(m["batch"] for m in mm)
        mm_square = statistics.median(m["square"] for m in mm)
        samples = batch / t
        epoch = next((v for k, v in EPOCH_SAMPLES.items() if net_name.startswith(k)), None)
        rows.append({
            "net": net_name, "rule": case.rule, "mode": case.mode, "dtype": case.dtype,
            "arithmetic": arithmetic, "inverse": inverse, "tf32": case.tf32, "batch": batch,
            "ms_per_step": 1000 * t, "ms_min": 1000 * min(times[case]), "ms_max": 1000 * max(times[case]),
            "ms_q1": 1000 * q1, "ms_q3": 1000 * q3, "ms_repeats": [1000 * v for v in times[case]],
            "repeats": opts.repeats, "steps_per_repeat": opts.steps,
            "flop_per_step": flops["total"], "flop_parts": {k: v for k, v in flops.items() if k != "total"},
            "gflops": flops["total"] / t / 1e9,
            "matmul_n": n, "matmul_gflops": 2 * batch * n**2 / mm_batch / 1e9,
            "square_matmul_gflops": 2 * n**3 / mm_square / 1e9,
            "peak_mem_mb": mem, "state_mb": state_mb(sched), "host_syncs_per_step": syncs,
            "samples_per_s": samples, "epoch_samples": epoch, "epoch_s": None if epoch is None else epoch / samples,
            "check_numerics": step.check_numerics, "fused_adam": step.fused_adam, "ortho_every": step.ortho_every,
            "skip_aux": step.skip_aux, "narrow_layers": sum(sched.narrow), "compile": step.compile_nudge,
            "step": asdict(step), "config": cfg.to_dict(),
            "device": str(device), "device_name": _device_name(device), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "load_start": load_start,
            "thp": os.environ.get("THP_MEM_ALLOC_ENABLE") == "1",
        })
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    for row in rows:
        row["load_end"] = load_end
        row["gflops_frac_of_matmul"] = row["gflops"] / row["matmul_gflops"]
        bp = _match(rows, row, rule="bp")
        row["ratio_to_bp"] = _paired_ratio(row, bp) if bp else None
        ref = _match(rows, row, mode="reference") if row["mode"] == "fast" else None
        row["speedup_vs_reference"] = _paired_ratio(ref, row) if ref else None
    return rows


def _paired_ratio(num: dict, den: dict) -> float:
    """Median over rounds of ``num``'s time over ``den``'s in the same round: two cases timed back to back see the
    same machine load, so this ratio stays put when the load of a shared machine changes between rounds."""
    return statistics.median(a / b for a, b in zip(num["ms_repeats"], den["ms_repeats"]))


def _match(rows: list[dict], row: dict, **changes) -> dict | None:
    """The row equal to ``row`` in rule, mode and TF32 setting after ``changes`` (the reference has no TF32)."""
    want = {"rule": row["rule"], "mode": row["mode"], "tf32": row["tf32"], **changes}
    if changes.get("mode") == "reference":
        want["tf32"] = None
    return next((r for r in rows if all(r[k] == v for k, v in want.items())), None)


def _device_name(device: torch.device) -> str:
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


def _label(rule: str, mode: str, tf32: bool | None) -> str:
    """A case's short name in progress and summary lines: ``gp/fast``, ``gp/fast/tf32`` with TF32 allowed."""
    return f"{rule}/{mode}{'/tf32' if tf32 else ''}"


def format_table(rows: list[dict]) -> str:
    """A plain-text table of the rows (the non-JSON output)."""
    if not rows:
        return "(no cases)"
    head = (f"{'rule':<5} {'mode':<9} {'dtype':<7} {'arith':<10} {'inv':<3} {'tf32':<5} {'ms/step':>9} "
            f"{'IQR ms':>13} {'xBP':>5} {'ref/x':>6} {'GFLOP':>7} {'GFLOP/s':>8} {'%mm':>4} {'mem MB':>7} "
            f"{'samples/s':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        tf32 = "-" if r["tf32"] is None else ("yes" if r["tf32"] else "no")
        ratio = f"{r['ratio_to_bp']:.2f}" if r["ratio_to_bp"] is not None else "-"
        speed = f"{r['speedup_vs_reference']:.2f}" if r["speedup_vs_reference"] is not None else "-"
        mem = f"{r['peak_mem_mb']:.0f}" if r["peak_mem_mb"] is not None else "-"
        lines.append(
            f"{r['rule']:<5} {r['mode']:<9} {r['dtype']:<7} {r['arithmetic']:<10} {r['inverse']:<3} {tf32:<5} "
            f"{r['ms_per_step']:>9.1f} {r['ms_q1']:>6.0f}-{r['ms_q3']:<6.0f} {ratio:>5} {speed:>6} "
            f"{r['flop_per_step'] / 1e9:>7.2f} {r['gflops']:>8.2f} {100 * r['gflops_frac_of_matmul']:>4.0f} "
            f"{mem:>7} {r['samples_per_s']:>9.1f}")
    r0 = rows[0]
    lines.append("")
    lines.append(f"net {r0['net']}, batch {r0['batch']}, {r0['repeats']} repeats x {r0['steps_per_repeat']} steps, "
                 f"device {r0['device_name']}, {r0['threads']} threads, torch {r0['torch']}, "
                 f"check_numerics {r0['check_numerics']}, fused_adam {r0['fused_adam']}, ortho_every "
                 f"{r0['ortho_every']}, skip_aux {r0['skip_aux']}, compile {r0['compile']}, "
                 f"THP {'on' if r0['thp'] else 'off'}, "
                 f"load {r0['load_start']:.2f} -> {r0['load_end']:.2f}")
    mm = sorted({(r["dtype"], r["tf32"], r["matmul_n"], r["matmul_gflops"], r["square_matmul_gflops"]) for r in rows},
                key=str)
    for dtype, tf32, n, g_b, g_s in mm:
        tf = "" if tf32 is None else f" tf32 {'on' if tf32 else 'off'}"
        lines.append(f"matmul {dtype}{tf}: [{r0['batch']}, {n}] x [{n}, {n}] {g_b:.1f} GFLOP/s, "
                     f"[{n}, {n}] x [{n}, {n}] {g_s:.1f} GFLOP/s")
    if r0["host_syncs_per_step"] is not None:
        lines.append("host syncs per step: " + ", ".join(
            f"{_label(r['rule'], r['mode'], r['tf32'])} {r['host_syncs_per_step']}" for r in rows))
    if r0["epoch_s"] is not None:
        lines.append("epoch of " + f"{r0['epoch_samples']} samples: " + ", ".join(
            f"{_label(r['rule'], r['mode'], r['tf32'])} {r['epoch_s']:.0f} s" for r in rows))
    return "\n".join(lines)
