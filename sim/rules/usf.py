"""Uniform sign-concordant feedback ``usf`` (Liao, Leibo & Poggio 2016; BioTorch's ``usf``):
``B_l = s sign(W_l)`` with the fixed Xavier scale ``s = sqrt(2 / (fan_in + fan_out))``, and FA's message
``e_{l-1} = B_l^T (D_l e_l)`` (:mod:`sim.rules.sign`).
"""

from __future__ import annotations

from sim.layers.base import Layer
from sim.rules.base import register
from sim.rules.sign import SignFeedback, xavier_std


@register
class UniformSignFeedback(SignFeedback):
    name = "usf"

    def magnitudes(self, layer: Layer) -> float:
        return xavier_std(layer.weight)
