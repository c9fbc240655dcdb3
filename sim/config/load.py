"""Loading a run config: read (one YAML reader), validate **first** by the one JSON schema, then check what a schema
cannot see, and resolve every default into the dataclasses of :mod:`sim.config.sections` (docs/runs.md).

The schema is ``sim/schema/run.schema.json`` (:mod:`sim.config.schema`; the workflow's study compiler and its
``check_configs`` step use the same file and messages). The checks beyond it: rules per layer against the network's
depth, preset options, noise lists, probe epochs, the data section's own checks, and layers that do not fit together
(the network is built on torch's 'meta' device). Every check runs before any tensor is built or any file is written,
and every error is a :class:`~sim.errors.ConfigError` whose message starts with the key path and whose ``key`` is it,
e.g. ``settings.gp.lr: -1 is less than or equal to the minimum of 0``.

    cfg = load_config("configs/digits_deep_gp.yaml")
    assert load_config(cfg.to_dict()) == cfg
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import fields, replace
from pathlib import Path

import torch

from sim.config.overrides import apply_overrides
from sim.config.schema import check_schema, read_yaml, with_integers
from sim.config.sections import DataSection, NetworkSection, RecordSection, RunConfig, TrainSection
from sim.errors import ConfigError, GaitsimError, ShapeError
from sim.network import LayerSpec, Network, NetworkConfig
from sim.presets import OPTIONS, check_options
from sim.rules.registry import get_spec
from sim.schedule import NoiseFloor
from sim.step_options import StepOptions


def load_config(source: str | Path | dict, *, name: str | None = None, overrides: Iterable[str] = ()
                ) -> RunConfig:
    """Read (YAML path) or take (dict) a run config, validate it and resolve every default.

    Args:
        source: path of a YAML file, or a dict (e.g. one section of a Snakemake config; it is not modified).
        name: the run name when the config gives none (default: the file's stem, or 'run').
        overrides: ``KEY=VALUE`` changes (``python -m sim run --set``, :func:`sim.config.overrides.apply_overrides`),
            applied before validation, so their problems read exactly as the same keys in the file would.

    Raises:
        ConfigError: naming the key path of every problem the schema finds, or of the first semantic problem.
    """
    if isinstance(source, dict):
        doc, where, stem = copy.deepcopy(source), "config", "run"
    else:
        path = Path(source)
        where, stem = str(path), path.stem
        doc = read_yaml(path)
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: a run config must be a mapping of keys (network, rules, data, train, ...), "
                          f"got {type(doc).__name__}")
    doc = apply_overrides(doc, overrides)
    doc.setdefault("name", name or stem)
    return validate_config(doc, source=where)


def validate_config(doc: dict, *, source: str = "config") -> RunConfig:
    """Schema-validate a config dict, then resolve and check it (see :func:`load_config`); ``source`` (a file, a
    run folder) starts every message."""
    check_schema(doc, source)
    try:
        return _resolve(with_integers(doc))
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}", key=exc.key) from None


def _section(cls, values: dict | None, **overrides):
    values = {**(values or {}), **overrides}
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in known})


def _tuple_or_none(value):
    return None if value is None else tuple(value)


def _resolve(doc: dict) -> RunConfig:
    """Turn a schema-valid dict into a :class:`RunConfig` and run the checks the schema cannot express."""
    # network: a preset with options, or an explicit stack, never a mix
    n = dict(doc["network"])
    if n.get("preset") is not None:
        mixed = [k for k in ("input_shape", "layers") if n.get(k) is not None]
        if mixed:
            raise ConfigError.at("network", f"give either preset (with its options {', '.join(OPTIONS)}) or an "
                                 f"explicit stack (input_shape, classes, layers), not both; drop network."
                                 f"{' and network.'.join(mixed)}")
        for opt in OPTIONS:
            if n.get(opt) is not None:
                check_options(n["preset"], [opt], where=f"network.{opt}")
        layers = None
    else:
        missing = [k for k in ("input_shape", "classes", "layers") if n.get(k) is None]
        if missing:
            raise ConfigError(f"network: give a preset, or input_shape, classes and layers for an explicit stack; "
                              f"missing network.{', network.'.join(missing)}", key=f"network.{missing[0]}")
        for opt in OPTIONS:
            if opt != "classes" and n.get(opt) is not None:
                raise ConfigError.at(f"network.{opt}", "a preset option, but no network.preset is given; an "
                                     "explicit stack states its input_shape and layers instead")
        layers = tuple(LayerSpec(**layer) for layer in n["layers"])
    network = _section(NetworkSection, n, input_shape=_tuple_or_none(n.get("input_shape")), layers=layers)

    rules = doc["rules"] if isinstance(doc["rules"], str) else tuple(doc["rules"])
    used = {rules} if isinstance(rules, str) else set(rules)
    given = doc.get("settings") or {}
    settings = {}
    for rule in sorted(used | set(given)):
        # each rule's declared settings only (the schema refused the others already, naming who reads them)
        settings[rule] = get_spec(rule).resolve(given.get(rule) or {}, where=f"settings.{rule}")

    noise_doc = doc.get("noise") or {}
    noise = NoiseFloor(**{k: (tuple(float(x) for x in v) if isinstance(v, list) else float(v))
                          for k, v in noise_doc.items()})
    d = dict(doc["data"])
    data = _section(DataSection, d, input_shape=_tuple_or_none(d.get("input_shape")))
    try:
        step = StepOptions(**doc["train"].get("step", {}))
    except ConfigError as exc:
        raise ConfigError.at("train.step", str(exc)) from None
    train = _section(TrainSection, doc["train"], step=step)
    rec = dict(doc.get("record") or {})
    probe_epochs = rec.get("probe_epochs")
    probe_epochs = (0, train.epochs) if probe_epochs is None else tuple(sorted(probe_epochs))
    late = [e for e in probe_epochs if e > train.epochs]
    if late:
        raise ConfigError.at("record.probe_epochs", f"epoch(s) {late} come after the last epoch (train.epochs = "
                                                    f"{train.epochs})")
    record = _section(RecordSection, rec, probe_epochs=probe_epochs)
    cfg = RunConfig(name=str(doc["name"]), network=network, rules=rules, data=data, train=train,
                    settings=settings, noise=noise, record=record)

    # what only the network's depth tells: rules per layer, noise per layer (no tensors are built here)
    try:
        net_cfg = cfg.network_config()
        depth = len(net_cfg.rule_names())
    except GaitsimError as exc:
        raise _keyed(exc, None) from None
    for which in ("message_std", "activity_std"):
        noise.per_layer(which, depth)
    _dry_build(net_cfg, network)
    return cfg


def _dry_build(net_cfg: NetworkConfig, network: NetworkSection) -> None:
    """Build the network on torch's 'meta' device (shapes only: no memory, no numbers, a few ms) so that layers
    that do not fit together are a ConfigError naming the key now, not a ShapeError when the run starts. The
    device itself is not checked here: a config for a GPU is valid on a machine without one."""
    try:
        with torch.device("meta"):
            Network(replace(net_cfg, device="meta"))
    except (ShapeError, ConfigError) as exc:
        raise _keyed(exc, network) from None
    except (RuntimeError, OverflowError, ValueError, MemoryError) as exc:  # e.g. a size whose byte count overflows
        raise ConfigError.at("network", f"the network cannot be built at this size ({type(exc).__name__}: "
                             f"{str(exc)[:200]}); lower its widths, width_mult or image_size") from None


def _keyed(exc: GaitsimError, network: NetworkSection | None) -> ConfigError:
    """A network problem as a ConfigError naming its key: the error's own key (e.g. ``rules``), else the layer of
    an explicit stack it was raised in (``network.layers[i]``, or ``network.classes`` for the output layer), else
    ``network``."""
    if getattr(exc, "key", None) is not None:
        return ConfigError(str(exc), key=exc.key)  # a keyed error: its message starts with its key already
    if network is not None and network.layers is not None and exc.layer_index is not None:
        key = f"network.layers[{exc.layer_index}]" if exc.layer_index < len(network.layers) else "network.classes"
        return ConfigError.at(key, str(exc))
    return ConfigError.at("network", str(exc))
