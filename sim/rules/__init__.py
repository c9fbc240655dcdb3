"""Plasticity rules, one file each, looked up by name (REFERENCE.md sections 2, 6; docs/rules.md).

The registry has a torch-free half, :mod:`sim.rules.registry` (each rule's name, implementation path and declared
settings: what the config schema enumerates), and this package's :data:`RULES`, the implementations, imported on
first use (PEP 562) so that ``import sim.rules.registry`` (the schema, the workflow) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from sim.rules.registry import RuleSettings, RuleSpec, Setting, get_spec, specs

_LAZY = {name: "sim.rules.base" for name in ("RULES", "Rule", "get_rule", "register")}

__all__ = ["RULES", "Rule", "RuleSettings", "RuleSpec", "Setting", "get_rule", "get_spec", "register", "specs"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'sim.rules' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
