"""gaitsim: a reference simulator for local, biologically plausible learning rules (GAIT-prop and friends).

The Python API in one place::

    from sim import preset, Network, Scheduler, compare
    net = Network(preset("cifar10_deep", rule="gp"))
    sched = Scheduler(net)
    corr = compare(sched, x, y)          # raw updates, BP reference, angles; weights untouched
    sched.train_step(x, y)               # one training step

The names are imported on first use (PEP 562 ``__getattr__``): ``import sim`` alone does not import torch, so the
torch-free parts (:mod:`sim.config.schema`, :mod:`sim.study`, :mod:`sim.errors`) load in milliseconds, e.g. in the
Snakemake workflow, which builds its DAG without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sim.errors import ConfigError, DataError, GaitsimError, NonFiniteError, ShapeError, SingularLayerError

if TYPE_CHECKING:
    from sim.correspondence import Correspondence, angle_deg, bp_reference, compare
    from sim.message import Message
    from sim.network import LayerSpec, Network, NetworkConfig
    from sim.presets import PRESETS, preset
    from sim.rules import RULES, RuleSettings, get_rule
    from sim.schedule import NoiseFloor, Scheduler, StepResult

__version__ = "0.1.0"

#: name -> the module that defines it (imported on first use)
_LAZY = {
    **dict.fromkeys(["Correspondence", "angle_deg", "bp_reference", "compare"], "sim.correspondence"),
    "Message": "sim.message",
    **dict.fromkeys(["LayerSpec", "Network", "NetworkConfig"], "sim.network"),
    **dict.fromkeys(["PRESETS", "preset"], "sim.presets"),
    **dict.fromkeys(["RULES", "RuleSettings", "get_rule"], "sim.rules"),
    **dict.fromkeys(["NoiseFloor", "Scheduler", "StepResult"], "sim.schedule"),
}

__all__ = [
    "PRESETS", "RULES", "ConfigError", "Correspondence", "DataError", "GaitsimError", "LayerSpec", "Message",
    "Network", "NetworkConfig", "NoiseFloor", "NonFiniteError", "RuleSettings", "Scheduler", "ShapeError",
    "SingularLayerError", "StepResult", "angle_deg", "bp_reference", "compare", "get_rule", "preset",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'sim' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
