"""What a run store holds: its dims, per-epoch variables, layer descriptions and row counts (docs/runs.md)."""

from __future__ import annotations

import re
from dataclasses import dataclass

#: rows per chunk along ``epoch`` and ``probe_epoch`` (coordinates); a step chunk holds one epoch's steps
EPOCH_CHUNK = 64

#: the growing dims, in the order of :class:`Lengths`
GROWING = ("step", "epoch", "probe_epoch")

#: old name -> name, for stores written before "checkpoint" came to mean only resumable state
OLD_NAMES = {"checkpoint": "probe_epoch", "checkpoint_step": "probe_step", "probe": "sample"}

#: what a layer name must look like to become part of variable and dim names (no path separators, no dots)
SAFE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")

#: per-epoch scalar variables: name -> (units, long_name, description)
EPOCH_METRICS: dict[str, tuple[str, str, str]] = {
    "train_top1": ("1", "train top-1 accuracy",
                   "top-1 accuracy on the train split after the epoch (fraction of samples; the whole split, or the "
                   "fixed subset of train.eval_train_subset samples: attribute train_eval_samples)"),
    "train_top5": ("1", "train top-5 accuracy",
                   "top-5 accuracy (top-min(5, classes)) on the train split (or its subset) after the epoch"),
    "test_top1": ("1", "test top-1 accuracy",
                  "top-1 accuracy on the whole test split after the epoch (fraction of samples)"),
    "test_top5": ("1", "test top-5 accuracy",
                  "top-5 accuracy (top-min(5, classes)) on the whole test split after the epoch"),
    "train_loss": ("nat", "train loss",
                   "mean cross-entropy per sample on the train split (or its subset) after the epoch"),
    "test_loss": ("nat", "test loss", "mean cross-entropy per sample on the whole test split after the epoch"),
    "epoch_wall_s": ("s", "epoch wall time", "wall-clock time of the epoch: training steps, evaluation and recording"),
}

#: per-epoch, per-layer records of the rules' learned (or fixed) feedback (sim.rules.registry.STATE_METRICS):
#: name -> description; NaN where a layer's rule reports none
STATE_DESCRIPTIONS: dict[str, str] = {
    "feedback_angle": "angle between each layer's feedback weight B (learned: kp; fixed: fa, usf, brsf, frsf) and its "
                      "forward weight W after the epoch, in degrees (B -> W for Kolen-Pollack); NaN for other rules",
    "reconstruction_loss": "local reconstruction loss of a learned feedback mapping (learned inverses) after the "
                           "epoch; "
                           "NaN for rules without one",
}



@dataclass(frozen=True)
class LayerInfo:
    """What the archive needs to know about one layer."""

    name: str
    """Layer name (``dense1`` ... ``output``)."""
    rule: str
    """Rule name."""
    square: bool
    """Whether the layer is square (has an orthogonality error)."""
    out_shape: tuple[int, ...]
    """Per-sample full output shape, aux units included."""

    @property
    def unit_dims(self) -> tuple[str, ...]:
        """Dim names of one sample's activity: ``unit_<name>`` (dense) or ``channel/row/col_<name>`` (conv)."""
        if len(self.out_shape) == 1:
            return (f"unit_{self.name}",)
        if len(self.out_shape) == 3:
            return (f"channel_{self.name}", f"row_{self.name}", f"col_{self.name}")
        return tuple(f"unit{i}_{self.name}" for i in range(len(self.out_shape)))


@dataclass(frozen=True)
class Lengths:
    """How many rows the store holds along each growing dim."""

    steps: int
    epochs: int
    probes: int
    """Probe records (rows along ``probe_epoch``)."""


