"""Fixed random-magnitude sign-concordant feedback ``frsf`` (Liao, Leibo & Poggio 2016; BioTorch's ``frsf``):
``B_l = |M_l| sign(W_l)`` with ``|M_l|`` drawn once, at construction, from the feedback generator
(:func:`sim.rules.sign.random_magnitudes`), and FA's message ``e_{l-1} = B_l^T (D_l e_l)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sim.layers.base import Layer
from sim.rules.base import RuleSettings, register
from sim.rules.sign import SignFeedback, random_magnitudes


@register
class FixedRandomSignFeedback(SignFeedback):
    name = "frsf"

    def __init__(self, layer: Layer, settings: RuleSettings, generator: torch.Generator | None = None) -> None:
        super().__init__(layer, settings, generator)
        # a buffer: it travels with the network (device, dtype, checkpoints) and is never trained
        self.register_buffer("magnitude", random_magnitudes(layer.weight, generator))

    def magnitudes(self, layer: Layer) -> Tensor:
        return self.magnitude
