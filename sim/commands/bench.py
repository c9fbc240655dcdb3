"""``python -m sim bench``: time whole training steps of each rule side by side (the CLI twin of :mod:`sim.bench`).

Example (the cifar10_deep table of docs/performance.md)::

    python -m sim bench --net cifar10_deep --rules bp,fa,vgp,gp --batch 256 --reference-cost

``--json`` prints one JSON list with a row per case (``rule``, ``mode``, ``dtype``, ``arithmetic``,
``ms_per_step`` (median), ``gflops`` (achieved), spread, memory, FLOP count, matmul rates, ratios).
"""

from __future__ import annotations

import argparse
import json
import sys

from sim.bench import BenchOptions, format_table, run
from sim.presets import PRESETS, preset_options
from sim.rules import RULES
from sim.schedule import NUMERICS_CHECKS

help = "time training steps of each rule (median, spread, memory, FLOP/s against a matmul)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = BenchOptions()
    p.add_argument("--net", default=d.net, help=f"network preset: {', '.join(sorted(PRESETS))} (default {d.net})")
    p.add_argument("--rules", default=",".join(d.rules),
                   help=f"comma-separated rules, one case each ({', '.join(sorted(RULES))}; default "
                        f"{','.join(d.rules)})")
    p.add_argument("--dtype", choices=["float32", "float64"], default=d.dtype, help="dtype of the fast mode")
    p.add_argument("--arithmetic", choices=["difference", "target"], default=d.arithmetic,
                   help="GP arithmetic of the fast mode (default difference)")
    p.add_argument("--batch", type=int, default=d.batch, help=f"batch size (default {d.batch})")
    p.add_argument("--steps", type=int, default=d.steps, help=f"training steps per timed repeat (default {d.steps})")
    p.add_argument("--repeats", type=int, default=d.repeats, help=f"timed repeats per case (default {d.repeats})")
    p.add_argument("--warmup", type=int, default=d.warmup, help=f"untimed steps per case first (default {d.warmup})")
    p.add_argument("--device", default=d.device, help="cpu, cuda or cuda:N")
    p.add_argument("--reference-cost", action="store_true",
                   help="also time each rule at the authors' costs: float64, target form, explicit inverse each step")
    p.add_argument("--check-numerics", choices=NUMERICS_CHECKS, default=d.check_numerics,
                   help=f"scheduler numerics checks (default {d.check_numerics}: one on-device flag per step)")
    p.add_argument("--no-fused-adam", action="store_true", help="use torch's for-loop/foreach Adam")
    p.add_argument("--ortho-every", type=int, default=d.ortho_every,
                   help="apply the regulariser every k steps with k x its weight (trades fidelity; default 1)")
    p.add_argument("--no-skip-aux", action="store_true",
                   help="compute the aux units of difference-form GP layers too (exact either way; measures what "
                        "skipping them saves)")
    p.add_argument("--tf32", choices=["both", "on", "off"], default="both",
                   help="CUDA float32: time with TF32 matmuls allowed, not allowed, or both (default both)")
    p.add_argument("--image-size", type=int, help="input resolution (conv presets)")
    p.add_argument("--width-mult", type=float, help="filter-count multiplier (conv presets)")
    p.add_argument("--classes", type=int, help="number of classes (default: the preset's)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile GP's elementwise nudge (compiled during warm-up; about a minute on 2 cores)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's, usually the core count)")
    p.add_argument("--seed", type=int, default=d.seed, help="seeds the weights and the batch")
    p.add_argument("--json", action="store_true", help="print only a JSON list, one object per case")


def options(args: argparse.Namespace) -> BenchOptions:
    tf32 = {"both": None, "on": (True,), "off": (False,)}[args.tf32]
    return BenchOptions(
        net=args.net, rules=tuple(r.strip() for r in args.rules.split(",") if r.strip()), dtype=args.dtype,
        arithmetic=args.arithmetic, batch=args.batch, steps=args.steps, repeats=args.repeats, warmup=args.warmup,
        device=args.device, reference_cost=args.reference_cost,
        preset_kwargs=preset_options(args), check_numerics=args.check_numerics,
        fused_adam=not args.no_fused_adam, ortho_every=args.ortho_every, skip_aux=not args.no_skip_aux, tf32=tf32,
        seed=args.seed, threads=args.threads, compile=args.compile)


def main(args: argparse.Namespace) -> int:
    opts = options(args)
    progress = None if args.json else (lambda msg: print(msg, file=sys.stderr, flush=True))
    rows = run(opts, progress)
    if args.json:
        print(json.dumps(rows))
    else:
        print(format_table(rows))
    return 0
