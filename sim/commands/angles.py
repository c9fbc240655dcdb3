"""``python -m sim angles``: one batch, every layer's angle to BP (REFERENCE.md section 7).

Builds a preset for a rule (or one rule per layer, comma-separated), draws one batch (from a folder of ``.npz``
shards, or a seeded random batch), computes every layer's raw update and BP's gradient on the same weights and batch,
and prints the angles. ``--perturb`` adds a seeded Gaussian perturbation (std ``p / sqrt(fan_in)``) to every weight,
the "orthogonal init plus small perturbation" of the reference table; without it, GP sees exactly orthogonal
weights and its angles are ~0.

The case is a run config (:func:`case_config`), built with ``build_network`` and ``build_scheduler`` as a run builds
its own: ``--config FILE`` starts from a run config's network, rules, settings and ``train`` section (seed, dtype,
device, ``step`` options), and the flags override it.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from sim.config import RunConfig, build_network, build_scheduler, load_config, validate_config
from sim.correspondence import compare
from sim.errors import ConfigError
from sim.memory import check_fits
from sim.presets import PRESETS, preset, preset_options
from sim.rules import RULES, get_rule, get_spec
from sim.run.init_from import load_initial_weights

help = "angle of each layer's update to BP's on one batch"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="a run config (YAML) whose network, rules, settings and train section (seed, "
                                    "dtype, device, step) build the case; the flags below override it")
    p.add_argument("--net", help=f"network preset: {', '.join(sorted(PRESETS))} (required without --config)")
    p.add_argument("--rule", help=f"rule for every layer ({', '.join(sorted(RULES))}) or one per layer, "
                                  "comma-separated (required without --config)")
    p.add_argument("--arithmetic", choices=["difference", "target"],
                   help="GP arithmetic (default: difference, exact in float32, or the config's settings)")
    p.add_argument("--dtype", choices=["float32", "float64"], help="default float32, or the config's")
    p.add_argument("--data", metavar="DIR", help="folder of train_*.npz shards (x uint8 NHWC, y); default: random")
    p.add_argument("--batch", type=int, default=256, help="batch size (default 256)")
    p.add_argument("--seed", type=int, help="seeds the weights, the batch and the perturbation (default 0, or the "
                                            "config's train.seed)")
    p.add_argument("--perturb", type=float, default=0.0,
                   help="relative Gaussian perturbation of every weight (std p/sqrt(fan_in)); default 0")
    p.add_argument("--image-size", type=int, help="input resolution (conv presets)")
    p.add_argument("--width-mult", type=float, help="filter-count multiplier (conv presets)")
    p.add_argument("--classes", type=int, help="number of classes (default: the preset's, or the data's)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default cpu, or the config's)")
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


def case_config(args: argparse.Namespace, classes: int | None = None) -> RunConfig:
    """The run config of the case: ``--config`` (or ``--net`` and ``--rule`` with the rules' defaults) with the flags
    as overrides; ``classes``: the data's class count, where the preset is not told one."""
    if args.config is not None:
        doc = load_config(args.config).to_dict()
    else:
        if args.net is None or args.rule is None:
            raise ConfigError("give --net and --rule, or a run config with --config")
        doc = {"name": "angles", "network": {"preset": args.net}, "rules": args.rule,
               "data": {"kind": "digits"}, "train": {"epochs": 1}}
    if args.data:
        doc["data"] = {"kind": "npz", "path": args.data}
    if args.net is not None and args.config is not None:
        doc["network"] = {"preset": args.net}
    doc["network"].update(preset_options(args))
    if classes is not None and doc["network"].get("classes") is None:
        doc["network"]["classes"] = classes
    if args.rule is not None:
        doc["rules"] = args.rule.split(",") if "," in args.rule else args.rule
        for r in [doc["rules"]] if isinstance(doc["rules"], str) else doc["rules"]:
            get_rule(r)
    settings = doc.setdefault("settings", {})
    for r in {doc["rules"]} if isinstance(doc["rules"], str) else set(doc["rules"]):
        settings.setdefault(r, {})
        # only the rules that read it (the GP rules): a setting a rule does not read is refused
        if (args.arithmetic is not None or args.config is None) and "arithmetic" in get_spec(r).declared():
            settings[r]["arithmetic"] = args.arithmetic or "difference"
    train = doc["train"]
    for key, value in (("dtype", args.dtype), ("device", args.device), ("seed", args.seed),
                       ("batch_size", args.batch)):
        if value is not None:
            train[key] = value
    return validate_config(doc, source="angles")


def main(args: argparse.Namespace) -> int:
    if args.batch < 1:
        raise ConfigError(f"--batch must be at least 1, got {args.batch}")
    if not math.isfinite(args.perturb) or args.perturb < 0:
        raise ConfigError(f"--perturb must be a finite number >= 0, got {args.perturb}")
    # with --data the class count comes from the data: a placeholder until it is read
    cfg = case_config(args, 2 if args.data else None)
    x = y = None
    if args.data:
        if cfg.network.preset is None:
            raise ConfigError("--data needs a preset network (--net, or network.preset in the config)")
        # Only the input shape is needed before the data says how many classes there are: ask the preset with a
        # non-inverting rule so a square output's "too few features for the classes" check cannot fire yet.
        opts = cfg.network.preset_options()
        probe = preset(cfg.network.preset, "bp", **opts)
        normalize = "imagenet" if cfg.network.preset.startswith("imagenet") else "unit"
        x, y, classes = load_batch(args.data, args.batch, cfg.train.seed, probe.input_shape, normalize)
        cfg = case_config(args, classes)
    check_fits(cfg.network_config(), args.batch, cfg.train.device, "--batch, --width-mult or --image-size")
    net = build_network(cfg)
    if cfg.train.init_from is not None:  # the angles at another run's trained weights
        load_initial_weights(net, cfg.train.init_from)
    seed = cfg.train.seed
    if x is None:
        g = torch.Generator().manual_seed(seed)
        x = torch.rand((args.batch, *net.config.input_shape), generator=g)
        y = torch.randint(0, net.classes, (args.batch,), generator=g)
    if int(y.max()) >= net.classes:
        raise ConfigError(f"the data has labels up to {int(y.max())} but the network has {net.classes} classes; "
                          "pass --classes")
    if args.perturb:
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for layer in net.layers:
                w = layer.weight
                fan_in = math.prod(w.shape[1:])
                noise = torch.randn(w.shape, generator=g, dtype=torch.float64) * args.perturb / math.sqrt(fan_in)
                w.add_(noise.to(w.dtype).to(w.device))
    x = x.to(device=net.device, dtype=net.dtype)
    y = y.to(net.device)
    t0 = time.perf_counter()
    corr = compare(build_scheduler(cfg, net), x, y)
    wall = time.perf_counter() - t0
    angles = [None if math.isnan(a) else a for a in corr.angle_deg]
    if args.json:
        print(json.dumps({"layers": corr.layers, "angle_deg": angles}))
        return 0
    forms = sorted({cfg.settings[r].arithmetic for r in set(corr.rules) if get_rule(r).factorizes}) or ["-"]
    print(f"net {cfg.network.preset or cfg.name}, rules {','.join(corr.rules)}, {'/'.join(forms)} form, "
          f"{cfg.train.dtype}, batch {x.shape[0]}, data {args.data or 'random'}, perturb {args.perturb}, "
          f"step options {cfg.train.step}")
    print(f"{'layer':<10} {'rule':<5} {'angle_deg':>10} {'norm/BP':>9}")
    for name, rule, a, r in zip(corr.layers, corr.rules, corr.angle_deg, corr.norm_ratio):
        print(f"{name:<10} {rule:<5} {a:>10.3f} {r:>9.4g}")
    print(f"({wall:.2f} s for the step and its BP reference)")
    return 0
