"""Benchmark of whole training steps: time, memory, FLOPs and the matmul rate they are measured against.

What is timed is :meth:`Scheduler.train_step` (forward, messages, plasticity, regulariser, Adam) on a random batch,
after warm-up steps, ``repeats`` times ``steps`` steps. The cases (one per rule, and with ``reference_cost`` the
authors' costs beside each) are built first and then timed **round-robin**, one repeat of every case per round, so a
change in the machine's load (other processes on a shared CPU) hits every case alike; the matmul rates are measured
in the same rounds. Per case it reports the median step time and its spread (min, max, inter-quartile range).

Ratios between cases (``ratio_to_bp``, ``speedup_vs_reference``) are medians of per-round ratios, which a load
change between rounds does not move.

FLOPs are counted analytically from the layer shapes (matmul/conv-class work only; elementwise ops, Adam included, are
not counted: activations, GP's nudge, the sign-symmetry rules' ``sign(W)`` and BRSF's magnitudes redrawn every batch,
KP's decay), per step with batch ``B``. The plasticity of a rule's learned state (:meth:`Rule.feedback_plasticity
<sim.rules.base.Rule.feedback_plasticity>`) is not counted: KP's is a copy of the weight update (no FLOPs), but a
rule that trains a learned inverse on a reconstruction loss does matmuls the count leaves out; each JSON row says so
in ``flop_uncounted``. The parts:

* forward ``2 B K`` for a layer of ``K`` multiply-adds per sample (``W.numel()`` per output position); a GP layer
  that skips its aux units (``StepOptions.skip_aux``, the default) computes only its ``width`` forwarded rows of
  ``W``, and ``K`` counts those;
* messages: the same ``2 B K`` for every layer but the first (BP's transpose, FA's, the sign-symmetry rules' and
  KP's feedback weight; GP's solve with the LU factors ``2 B n^2`` or its product with an explicit inverse or its
  first ``k`` columns, the same count), except a layer whose layer below hears the broadcast channel (a direct rule,
  DFA) sends none; instead every hidden layer of a direct rule receives ``B_l e``, ``2 B n_l n_out`` (``n_l`` its
  output units, ``n_out`` the classes);
* GP's factorisation per square layer and step: LU ``2/3 n^3``, or explicit inverse ``2 n^3`` (``inverse='inv'``);
  with LU, forming the ``k`` columns of ``M^{-1}`` a message passes through (all ``n`` for a conv layer that computes
  its aux channels, ``width`` when it skips them) ``2 n^2 k``;
* weight gradients ``2 B K``;
* the orthogonality regulariser per square layer, ``W W^T`` (symmetric: ``1.25 n^3`` from ``n = 512`` on,
  :func:`sim.regularizer.gram`; ``2 n^3`` below) and ``(W W^T - I) W`` (``2 n^3``), divided by ``ortho_every``.

The matmul/conv part is checked against ``torch.utils.flop_counter.FlopCounterMode`` in the tests (it does not count
LU factorisations or triangular solves). "Achieved GFLOP/s" is that count over the median step time, to be read
against the rate of a ``[B, n] x [n, n]`` and an ``n x n x n`` matmul measured in the same process and dtype
(``n`` the widest layer, at most :data:`MATMUL_MAX_N`).

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

Modules: :mod:`~sim.bench.cases` (options, cases as run configs), :mod:`~sim.bench.flops` (the FLOP model),
:mod:`~sim.bench.measure` (time, memory, syncs, matmul rates); :func:`run` and :func:`format_table` here.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Callable
from dataclasses import asdict

import torch

from sim.bench.cases import (
    ALL_RULES,
    DEFAULT_CHECK,
    DEFAULT_NET,
    DEFAULT_RULES,
    EPOCH_SAMPLES,
    MAX_REPEATS,
    MAX_STEPS,
    BenchOptions,
    Case,
    base_config,
    build_case,
    case_config,
    expand_rules,
    gp_form,
    make_cases,
    max_threads,
    validate,
)
from sim.bench.flops import learned_state_rules, step_flops, uncounted
from sim.bench.measure import (
    device_name,
    host_syncs,
    matmul_seconds,
    quartiles,
    set_tf32,
    state_mb,
    step_memory_mb,
    time_steps,
)
from sim.config import RunConfig
from sim.network import resolve_device

#: the largest n of the reference matmuls ``[B, n] x [n, n]`` and ``[n, n] x [n, n]``
MATMUL_MAX_N = 8192


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
    # the matmul each case is compared with: [B, n] x [n, n] for its widest layer (rows of the weight), n at most
    # MATMUL_MAX_N: the rate has long saturated there, and the n x n operand of a very wide layer (an output layer
    # of 10^5 classes) would neither fit in memory nor finish
    n_mm = {c: min(MATMUL_MAX_N, max(layer.weight.shape[0] for layer in built[c][0].net.layers)) for c in cases}
    for case in cases:
        sched, x, y, _ = built[case]
        set_tf32(case.tf32)
        for _ in range(opts.warmup):
            sched.train_step(x, y)
    for r in range(opts.repeats):
        for case in cases:
            sched, x, y, _ = built[case]
            set_tf32(case.tf32)
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
        arithmetic, inverse = gp_form(cfg)
        set_tf32(case.tf32)
        mem = step_memory_mb(sched, x, y)
        syncs = host_syncs(sched, x, y)
        flops = step_flops(sched.net, batch, step.ortho_every, sched.narrow, step.symmetric_gram)
        t = statistics.median(times[case])
        q1, q3 = quartiles(times[case])
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
            "flop_uncounted": uncounted(sched.net),
            "gflops": flops["total"] / t / 1e9,
            "matmul_n": n, "matmul_gflops": 2 * batch * n**2 / mm_batch / 1e9,
            "square_matmul_gflops": 2 * n**3 / mm_square / 1e9,
            "peak_mem_mb": mem, "state_mb": state_mb(sched), "host_syncs_per_step": syncs,
            "samples_per_s": samples, "epoch_samples": epoch, "epoch_s": None if epoch is None else epoch / samples,
            "check_numerics": step.check_numerics, "fused_adam": step.fused_adam, "ortho_every": step.ortho_every,
            "skip_aux": step.skip_aux, "narrow_layers": sum(sched.narrow), "compile": step.compile_nudge,
            "step": asdict(step), "config": cfg.to_dict(),
            "device": str(device), "device_name": device_name(device), "threads": torch.get_num_threads(),
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

__all__ = [
    "ALL_RULES", "DEFAULT_CHECK", "DEFAULT_NET", "DEFAULT_RULES", "EPOCH_SAMPLES", "MATMUL_MAX_N", "MAX_REPEATS",
    "MAX_STEPS",
    "BenchOptions", "Case", "base_config", "build_case", "case_config", "expand_rules", "format_table",
    "host_syncs", "learned_state_rules", "make_cases", "matmul_seconds", "max_threads", "run", "state_mb",
    "step_flops", "step_memory_mb", "time_steps", "validate",
]
