"""What a benchmark times: its options (:class:`BenchOptions`), checked (:func:`validate`), and one run config per
case (:func:`make_cases`, :func:`case_config`, :func:`build_case`), so every timed step is the step of a run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from sim.config import RunConfig, build_network, build_scheduler, load_config, validate_config
from sim.errors import ConfigError
from sim.memory import check_fits
from sim.presets import PRESETS, preset
from sim.rules import get_rule
from sim.run.init_from import load_initial_weights
from sim.schedule import Scheduler
from sim.step_options import NUMERICS_CHECKS

#: training-set sizes for the epoch figure, by preset-name prefix
EPOCH_SAMPLES = {"cifar10": 50_000, "imagenet": 1_281_167}


#: the network preset and rules benchmarked without a run config
DEFAULT_NET = "cifar10_deep"
#: the paper's four rules: the default stays these (docs/performance.md's tables compare them, and timing every rule
#: of the zoo on cifar10_deep takes minutes on a CPU); ``--rules all`` times every registered rule
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
    """Override: one case per rule, the rule on every layer; ``all`` (or ``*``) among them stands for every registered
    rule in the registry's order. None: the config's rules (one case) or, without a config, :data:`DEFAULT_RULES`."""
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
    data: bool = False
    """Benchmark the input pipeline and the step fed by it instead (:mod:`sim.bench.data`, ``bench --data``)."""
    data_path: str | None = None
    """``data`` only, override: an ImageNet-style folder (``train/<class>/*.JPEG``) as the data section (kind
    'imagenet_folder', decoded at the network's input size, ImageNet normalisation)."""
    workers: tuple[int, ...] | None = None
    """``data`` only: the worker counts (``train.num_workers``) to time, one row each; None: the config's."""


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
    if opts.data_path is not None:
        shape = validate_config(doc, source="bench").network_config().input_shape
        doc["data"] = {"kind": "imagenet_folder", "path": str(opts.data_path), "image_size": shape[-1],
                       "normalize": "imagenet"}
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
    rules = expand_rules(opts.rules) if opts.rules is not None else (
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


def gp_form(cfg: RunConfig) -> tuple[str, str]:
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
    if cfg.train.init_from is not None:  # a trained network's weights (GP's inverses see its conditioning)
        load_initial_weights(net, cfg.train.init_from)
    sched = build_scheduler(cfg, net)
    g = torch.Generator().manual_seed(cfg.train.seed)
    x = torch.rand((cfg.train.batch_size, *net.config.input_shape), generator=g, dtype=torch.float64)
    y = torch.randint(0, net.classes, (cfg.train.batch_size,), generator=g)
    return sched, x.to(device=net.device, dtype=net.dtype), y.to(net.device), cfg




#: ``--rules all`` (or ``*``): every registered rule, in the registry's order
ALL_RULES = ("all", "*")


def expand_rules(rules: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """``rules`` with ``all`` (or ``*``) replaced by every registered rule in the registry's order
    (:func:`sim.rules.registry.specs`: the built-in catalogue, then the ``gaitsim.rules`` plugins)."""
    if rules is None or not any(r in ALL_RULES for r in rules):
        return rules
    from sim.rules.registry import specs

    out = [name for r in rules for name in (specs() if r in ALL_RULES else [r])]
    return tuple(dict.fromkeys(out))




def validate(opts: BenchOptions) -> RunConfig:
    """Refuse options that cannot run, with a message; returns the base run config (:func:`base_config`)."""
    if opts.net is not None and opts.net not in PRESETS:
        raise ConfigError(f"unknown network preset {opts.net!r}; presets: {', '.join(sorted(PRESETS))}")
    if opts.rules is not None:
        if not opts.rules:
            raise ConfigError("no rules to benchmark; give e.g. --rules bp,gp")
        for r in opts.rules:
            if r not in ALL_RULES:
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
    for name, flag in (("workers", "--workers"), ("data_path", "--data-path")):
        if not opts.data and getattr(opts, name) is not None:
            raise ConfigError(f"{flag} applies to the input-pipeline benchmark only; add --data")
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
