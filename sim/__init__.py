"""gaitsim: a reference simulator for local, biologically plausible learning rules (GAIT-prop and friends).

The Python API in one place::

    from sim import preset, Network, Scheduler, compare
    net = Network(preset("cifar10_deep", rule="gp"))
    sched = Scheduler(net)
    corr = compare(sched, x, y)          # raw updates, BP reference, angles; weights untouched
    sched.train_step(x, y)               # one training step
"""

from __future__ import annotations

from sim.correspondence import Correspondence, angle_deg, bp_reference, compare
from sim.errors import ConfigError, DataError, GaitsimError, NonFiniteError, ShapeError, SingularLayerError
from sim.message import Message
from sim.network import LayerSpec, Network, NetworkConfig
from sim.presets import PRESETS, preset
from sim.rules import RULES, RuleSettings, get_rule
from sim.schedule import NoiseFloor, Scheduler, StepResult

__version__ = "0.1.0"

__all__ = [
    "PRESETS", "RULES", "ConfigError", "Correspondence", "DataError", "GaitsimError", "LayerSpec", "Message",
    "Network", "NetworkConfig", "NoiseFloor", "NonFiniteError", "RuleSettings", "Scheduler", "ShapeError",
    "SingularLayerError", "StepResult", "angle_deg", "bp_reference", "compare", "get_rule", "preset",
]
