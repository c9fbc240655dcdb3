"""Sign-concordant feedback, the machinery shared by ``usf``, ``brsf`` and ``frsf`` (Liao, Leibo & Poggio 2016, "How
important is weight symmetry in backpropagation?", AAAI; the three variants as BioTorch defines them, Sanfiz &
Akrout 2021).

The message is FA's, ``e_{l-1} = B_l^T (D_l e_l)``, through a feedback weight of ``W_l``'s shape whose signs are
those of the *current* forward weight and whose magnitudes carry no information about it:

    B_l = M_l * sign(W_l)

``M_l`` is what the variants differ in (a subclass defines :meth:`SignFeedback.magnitudes`). Only the signs of W
travel to the feedback pathway; ``B`` is made from them at every message, so its signs equal W's at every step.
Random magnitudes are ``|N(0, s^2)|`` with Xavier's ``s = sqrt(2 / (fan_in + fan_out))``, the scale of ``usf``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from sim.layers.base import Layer
from sim.linalg import Check
from sim.message import Message
from sim.rules.base import Rule, RuleSettings
from sim.step_options import DEFAULT_STEP, StepOptions


def xavier_std(weight: Tensor) -> float:
    """``sqrt(2 / (fan_in + fan_out))`` of a dense ``[out, in]`` or conv ``[out, in, k, k]`` weight."""
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(weight)
    return math.sqrt(2.0 / (fan_in + fan_out))


def random_magnitudes(weight: Tensor, generator: torch.Generator | None) -> Tensor:
    """``|N(0, s^2)|`` of ``weight``'s shape, dtype and device (drawn in float64 on the CPU from ``generator``, the
    network's, so a network's fixed feedback is the same on every device)."""
    m = torch.randn(weight.shape, generator=generator, dtype=torch.float64).abs_().mul_(xavier_std(weight))
    return m.to(dtype=weight.dtype, device=weight.device)


def redrawn_magnitudes(weight: Tensor, generator: torch.Generator) -> Tensor:
    """``|N(0, s^2)|`` of ``weight``'s shape drawn where and as it lives (``generator`` on ``weight``'s device), for
    magnitudes redrawn every step: a float64 CPU draw and a host-to-device copy cost 3.5x a BP step on the deep
    CIFAR-10 net (bench, CPU), and would stall a GPU on the host every step."""
    m = torch.randn(weight.shape, generator=generator, dtype=weight.dtype, device=weight.device)
    return m.abs_().mul_(xavier_std(weight))


class SignFeedback(Rule):
    """Base of the sign-symmetry rules: the feedback is ``magnitudes() * sign(W)``."""

    def __init__(self, layer: Layer, settings: RuleSettings, generator: torch.Generator | None = None) -> None:
        super().__init__(layer, settings, generator)

    def magnitudes(self, layer: Layer) -> Tensor | float:
        """``M_l``: a tensor of W's shape, or one number."""
        raise NotImplementedError

    def feedback_weight(self, layer: Layer) -> Tensor:
        """``B = M * sign(W)`` ``[*weight.shape]`` for the current weights."""
        return self.magnitudes(layer) * torch.sign(layer.weight.detach())

    def message_down(self, layer: Layer, a_in: Tensor, a: Tensor, msg: Message, *, check: Check = True,
                     options: StepOptions = DEFAULT_STEP) -> Message:
        delta = layer.activation.derivative(a) * msg.error
        return Message.from_error(layer.feedback(delta, self.feedback_weight(layer)))

    def state_metrics(self, layer: Layer) -> dict[str, float]:
        from sim.correspondence import angle_deg

        return {"feedback_angle": angle_deg(self.feedback_weight(layer), layer.weight)}
