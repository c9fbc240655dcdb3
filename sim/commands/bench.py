"""``python -m sim bench``: time whole training steps of each rule side by side (the CLI twin of :mod:`sim.bench`).

Example (the cifar10_deep table of docs/performance.md)::

    python -m sim bench --net cifar10_deep --rules bp,fa,vgp,gp --batch 256 --reference-cost
    python -m sim bench --net cifar10_deep --rules all --batch 256       # every registered rule (the zoo)

Every case is a run config: ``--config configs/cifar10_deep_gp.yaml`` times the step a run of that file takes (its
``train.step`` options included); the other flags override the file. Each ``--json`` row holds the case's resolved
``config`` and its ``step`` options, so a run of that config reproduces the benchmarked step.

``--json`` prints one JSON list with a row per case (``rule``, ``mode``, ``dtype``, ``arithmetic``,
``ms_per_step`` (median), ``gflops`` (achieved), spread, memory, FLOP count, matmul rates, ratios).

``--data`` measures the input pipeline instead (:mod:`sim.bench.data`): images/s of the train loader alone, of
training steps fed by it and of the step alone, for each worker count, and which one limits::

    python -m sim bench --data --data-path /data/imagenet --net imagenet_conv --rules bp --workers 0,4,8
    python -m sim bench --data --config configs/imagenet_conv_bp.yaml --data-path /data/imagenet --workers 0,4,8
"""

from __future__ import annotations

import argparse
import json
import sys

from sim.bench import DEFAULT_CHECK, DEFAULT_NET, DEFAULT_RULES, BenchOptions, format_table, run
from sim.errors import ConfigError
from sim.presets import PRESETS, preset_options
from sim.rules import RULES
from sim.step_options import NUMERICS_CHECKS

help = "time training steps of each rule (median, spread, memory, FLOP/s against a matmul)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = BenchOptions()
    p.add_argument("--config", help="a run config (YAML) whose network, rules, settings, noise and train section "
                                    "(seed, dtype, device, batch_size, step) build every case; the flags below "
                                    "override it (default: the preset --net with each rule's defaults)")
    p.add_argument("--net", help=f"network preset: {', '.join(sorted(PRESETS))} (default {DEFAULT_NET}, or the "
                                 "config's network)")
    p.add_argument("--rules", help=f"comma-separated rules, one case each, the rule on every layer "
                                   f"({', '.join(RULES)}), or all: every registered rule in the registry's order "
                                   f"(default {','.join(DEFAULT_RULES)}, the paper's four, or the config's rules as "
                                   "one case)")
    p.add_argument("--dtype", choices=["float32", "float64"], help="dtype of the fast mode (default float32)")
    p.add_argument("--arithmetic", choices=["difference", "target"],
                   help="GP arithmetic of the fast mode (default: the rules' settings, difference)")
    p.add_argument("--batch", type=int, help="batch size (default 256, or the config's train.batch_size)")
    p.add_argument("--steps", type=int, default=d.steps, help=f"training steps per timed repeat (default {d.steps})")
    p.add_argument("--repeats", type=int, default=d.repeats, help=f"timed repeats per case (default {d.repeats})")
    p.add_argument("--warmup", type=int, default=d.warmup, help=f"untimed steps per case first (default {d.warmup})")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default cpu, or the config's train.device)")
    p.add_argument("--reference-cost", action="store_true",
                   help="also time each rule at the authors' costs: float64, target form, explicit inverse each step")
    p.add_argument("--check-numerics", choices=NUMERICS_CHECKS,
                   help=f"train.step.check_numerics (default {DEFAULT_CHECK}: one on-device flag per step, or the "
                        "config's)")
    p.add_argument("--no-fused-adam", action="store_const", const=False, dest="fused_adam",
                   help="train.step.fused_adam: false (torch's for-loop/foreach Adam)")
    p.add_argument("--ortho-every", type=int,
                   help="train.step.ortho_every: the regulariser every k steps with k x its weight (trades fidelity; "
                        "default 1)")
    p.add_argument("--no-skip-aux", action="store_const", const=False, dest="skip_aux",
                   help="train.step.skip_aux: false, compute the aux units of difference-form GP layers too (exact "
                        "either way; measures what skipping them saves)")
    p.add_argument("--tf32", choices=["both", "on", "off"],
                   help="CUDA float32: time with TF32 matmuls allowed, not allowed, or both (default both)")
    p.add_argument("--image-size", type=int, help="input resolution (conv presets)")
    p.add_argument("--width-mult", type=float, help="filter-count multiplier (conv presets)")
    p.add_argument("--classes", type=int, help="number of classes (default: the preset's)")
    p.add_argument("--compile", action="store_const", const=True,
                   help="train.step.compile_nudge: torch.compile GP's elementwise nudge (compiled during warm-up; "
                        "about a minute on 2 cores)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's, usually the core count)")
    p.add_argument("--seed", type=int, help="train.seed: seeds the weights and the batch (default 0)")
    p.add_argument("--data", action="store_true",
                   help="measure the input pipeline instead: images/s of the train loader alone, of training steps "
                        "fed by it and of the step alone, per worker count, and which one limits (needs --data-path "
                        "or --config with a data section; one rule)")
    p.add_argument("--data-path", help="--data: an ImageNet-style folder (train/<class>/*.JPEG, val/...) decoded at "
                                       "the network's input size; replaces the config's data section")
    p.add_argument("--workers", help="--data: comma-separated worker counts (train.num_workers) to time, e.g. 0,1,2 "
                                     "(default: the config's train.num_workers)")
    p.add_argument("--json", action="store_true", help="print only a JSON list, one object per case")


def options(args: argparse.Namespace) -> BenchOptions:
    tf32 = {None: None, "both": (False, True), "on": (True,), "off": (False,)}[args.tf32]
    rules = None if args.rules is None else tuple(r.strip() for r in args.rules.split(",") if r.strip())
    return BenchOptions(
        config=args.config, net=args.net, rules=rules, dtype=args.dtype, arithmetic=args.arithmetic,
        batch=args.batch, steps=args.steps, repeats=args.repeats, warmup=args.warmup, device=args.device,
        reference_cost=args.reference_cost, preset_kwargs=preset_options(args),
        check_numerics=args.check_numerics, fused_adam=args.fused_adam, ortho_every=args.ortho_every,
        skip_aux=args.skip_aux, tf32=tf32, seed=args.seed, threads=args.threads, compile=args.compile,
        data=args.data, data_path=args.data_path, workers=_workers(args.workers))


def _workers(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(w) for w in text.split(","))
    except ValueError:
        raise ConfigError(f"--workers {text!r}: give comma-separated worker counts, e.g. 0,1,2") from None


def main(args: argparse.Namespace) -> int:
    opts = options(args)
    progress = None if args.json else (lambda msg: print(msg, file=sys.stderr, flush=True))
    if opts.data:
        from sim.bench.data import format_data_table, run_data

        rows, table = run_data(opts, progress), format_data_table
    else:
        rows, table = run(opts, progress), format_table
    print(json.dumps(rows) if args.json else table(rows))
    return 0
