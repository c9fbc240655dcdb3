"""Feedback alignment: ``e_{l-1} = B_l^T (D_l e_l)`` with a fixed random ``B_l`` of ``W_l``'s shape
(REFERENCE.md section 6). ``B_l`` is orthogonal (gain 1), drawn from the feedback generator, which is seeded
independently of every forward weight. With ``B_l = W_l`` the rule is BP (tested).
"""

from __future__ import annotations

import torch
from torch import Tensor

from sim.layers.base import Layer
from sim.linalg import Check, orthogonal
from sim.message import Message
from sim.rules.base import Rule, RuleSettings, register
from sim.step_options import DEFAULT_STEP, StepOptions


@register
class FeedbackAlignment(Rule):
    name = "fa"

    def __init__(self, layer: Layer, settings: RuleSettings, generator: torch.Generator | None = None) -> None:
        super().__init__(layer, settings, generator)
        # A buffer, not a parameter: it travels with the layer's device and checkpoints but is never trained.
        self.register_buffer("feedback_weight", orthogonal(layer.weight.shape, layer.weight, generator))

    def message_down(self, layer: Layer, a_in: Tensor, a: Tensor, msg: Message, *, check: Check = True,
                     options: StepOptions = DEFAULT_STEP) -> Message:
        delta = layer.activation.derivative(a) * msg.error
        return Message.from_error(layer.feedback(delta, self.feedback_weight))

    def state_metrics(self, layer: Layer) -> dict[str, float]:
        from sim.correspondence import angle_deg

        return {"feedback_angle": angle_deg(self.feedback_weight, layer.weight)}
