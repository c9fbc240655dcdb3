"""Run configs: one YAML file (or one dict section of a workflow config) per training run (docs/runs.md).

The package by role:

* :mod:`sim.config.schema`: the one JSON schema, its error messages (each with its key path) and the one YAML
  reader; imports neither torch nor the simulator, so the workflow's study compiler (:mod:`sim.study`) uses it.
* :mod:`sim.config.sections`: the nested frozen dataclasses (:class:`RunConfig` and its sections).
* :mod:`sim.config.overrides`: dotted keys (``set_key``, ``deep_merge``, ``--set KEY=VALUE``), torch-free.
* :mod:`sim.config.load`: :func:`load_config` / :func:`validate_config`: schema first, then the semantic checks.
* :mod:`sim.config.build`: :func:`build_network` / :func:`build_scheduler`.

Every name below is imported on first use (PEP 562), so ``import sim.config.schema`` does not import torch.

    cfg = load_config("configs/digits_deep_gp.yaml")
    net = build_network(cfg)                 # sim.network.Network
    sched = build_scheduler(cfg, net)        # sim.schedule.Scheduler (Adam per layer, noise, seed)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sim.config.build import build_network, build_scheduler
    from sim.config.load import load_config, validate_config
    from sim.config.overrides import apply_overrides, deep_merge, parse_assignment, set_key
    from sim.config.schema import (
        MAX_DEPTH,
        MAX_NODES,
        SCHEMA_RESOURCE,
        check_schema,
        load_schema,
        read_yaml,
        schema_errors,
        schema_problems,
    )
    from sim.config.sections import DataSection, NetworkSection, RecordSection, RunConfig, TrainSection

_WHERE = {
    **dict.fromkeys(["build_network", "build_scheduler"], "build"),
    **dict.fromkeys(["load_config", "validate_config"], "load"),
    **dict.fromkeys(["apply_overrides", "deep_merge", "parse_assignment", "set_key"], "overrides"),
    **dict.fromkeys(["MAX_DEPTH", "MAX_NODES", "SCHEMA_RESOURCE", "_key_path", "_Loader", "check_schema",
                     "load_schema", "read_yaml", "schema_errors", "schema_problems"], "schema"),
    **dict.fromkeys(["DataSection", "NetworkSection", "RecordSection", "RunConfig", "TrainSection"], "sections"),
}

__all__ = [
    "MAX_DEPTH", "MAX_NODES", "SCHEMA_RESOURCE", "DataSection", "NetworkSection", "RecordSection", "RunConfig",
    "TrainSection", "apply_overrides", "build_network", "build_scheduler", "check_schema", "deep_merge", "load_config",
    "load_schema", "parse_assignment", "read_yaml", "schema_errors", "schema_problems", "set_key", "validate_config",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'sim.config' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"sim.config.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})
