"""``python -m sim angles``: one batch, every layer's angle to BP (REFERENCE.md section 7).

Builds a preset for a rule (or one rule per layer, comma-separated), draws one batch (from a folder of ``.npz``
shards, or a seeded random batch), computes every layer's raw update and BP's gradient on the same weights and batch,
and prints the angles. ``--perturb`` adds a seeded Gaussian perturbation (std ``p / sqrt(fan_in)``) to every weight,
the "orthogonal init plus small perturbation" of the reference table; without it, GP sees exactly orthogonal
weights and its angles are ~0.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace

import torch

from sim.correspondence import compare
from sim.errors import ConfigError
from sim.network import Network
from sim.presets import PRESETS, preset, preset_options
from sim.rules import RULES, get_rule
from sim.schedule import Scheduler

help = "angle of each layer's update to BP's on one batch"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--net", required=True, help=f"network preset: {', '.join(sorted(PRESETS))}")
    p.add_argument("--rule", required=True,
                   help=f"rule for every layer ({', '.join(sorted(RULES))}) or one per layer, comma-separated")
    p.add_argument("--arithmetic", choices=["difference", "target"], default="difference",
                   help="GP arithmetic (default: difference, exact in float32)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--data", metavar="DIR", help="folder of train_*.npz shards (x uint8 NHWC, y); default: random")
    p.add_argument("--batch", type=int, default=256, help="batch size (default 256)")
    p.add_argument("--seed", type=int, default=0, help="seeds the weights, the batch and the perturbation")
    p.add_argument("--perturb", type=float, default=0.0,
                   help="relative Gaussian perturbation of every weight (std p/sqrt(fan_in)); default 0")
    p.add_argument("--image-size", type=int, help="input resolution (conv presets)")
    p.add_argument("--width-mult", type=float, help="filter-count multiplier (conv presets)")
    p.add_argument("--classes", type=int, help="number of classes (default: the preset's, or the data's)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--json", action="store_true", help='print only {"layers": [...], "angle_deg": [...]}')


def load_batch(path: str, batch: int, seed: int, input_shape: tuple[int, ...] | None, normalize: str):
    """One seeded batch from an npz shard folder, resized to ``input_shape`` when given."""
    from sim.data import DataSpec, load_split

    size = input_shape[-1] if input_shape is not None else None
    ds = load_split(DataSpec("npz", path=path, image_size=size, normalize=normalize), "train")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(ds), generator=g)[:batch]
    x, y = next(iter(ds.batches([idx])))
    return x, y, ds.classes


def main(args: argparse.Namespace) -> int:
    if args.batch < 1:
        raise ConfigError(f"--batch must be at least 1, got {args.batch}")
    rules = args.rule.split(",") if "," in args.rule else args.rule
    for r in [rules] if isinstance(rules, str) else rules:
        get_rule(r)
    names = {rules} if isinstance(rules, str) else set(rules)
    settings = {r: replace(get_rule(r).defaults, arithmetic=args.arithmetic) for r in names}
    kw = preset_options(args)
    common = dict(settings=settings, dtype=args.dtype, device=args.device, seed=args.seed)
    x = y = None
    if args.data:
        # Only the input shape is needed before the data says how many classes there are: ask the preset with a
        # non-inverting rule so a square output's "too few features for the classes" check cannot fire yet.
        probe = preset(args.net, "bp", **{**kw, "classes": kw.get("classes", 2)})
        normalize = "imagenet" if args.net.startswith("imagenet") else "unit"
        x, y, classes = load_batch(args.data, args.batch, args.seed, probe.input_shape, normalize)
        kw.setdefault("classes", classes)
    net = Network(preset(args.net, rules, **common, **kw))
    if x is None:
        g = torch.Generator().manual_seed(args.seed)
        x = torch.rand((args.batch, *net.config.input_shape), generator=g)
        y = torch.randint(0, net.classes, (args.batch,), generator=g)
    if int(y.max()) >= net.classes:
        raise ConfigError(f"the data has labels up to {int(y.max())} but the network has {net.classes} classes; "
                          "pass --classes")
    if args.perturb:
        g = torch.Generator().manual_seed(args.seed + 1)
        with torch.no_grad():
            for layer in net.layers:
                w = layer.weight
                fan_in = math.prod(w.shape[1:])
                noise = torch.randn(w.shape, generator=g, dtype=torch.float64) * args.perturb / math.sqrt(fan_in)
                w.add_(noise.to(w.dtype).to(w.device))
    x = x.to(device=net.device, dtype=net.dtype)
    y = y.to(net.device)
    t0 = time.perf_counter()
    corr = compare(Scheduler(net, seed=args.seed), x, y)
    wall = time.perf_counter() - t0
    angles = [None if math.isnan(a) else a for a in corr.angle_deg]
    if args.json:
        print(json.dumps({"layers": corr.layers, "angle_deg": angles}))
        return 0
    print(f"net {args.net}, rules {','.join(corr.rules)}, {args.arithmetic} form, {args.dtype}, batch {x.shape[0]}, "
          f"data {args.data or 'random'}, perturb {args.perturb}")
    print(f"{'layer':<10} {'rule':<5} {'angle_deg':>10} {'norm/BP':>9}")
    for name, rule, a, r in zip(corr.layers, corr.rules, corr.angle_deg, corr.norm_ratio):
        print(f"{name:<10} {rule:<5} {a:>10.3f} {r:>9.4g}")
    print(f"({wall:.2f} s for the step and its BP reference)")
    return 0
