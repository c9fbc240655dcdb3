"""Kolen-Pollack ``kp`` (Kolen & Pollack 1994; Akrout, Wilson, Humphreys, Lillicrap & Tweed 2019, "Deep learning
without weight transport", NeurIPS): FA's message ``e_{l-1} = B_l^T (D_l e_l)`` through a *learned* feedback weight
``B_l`` of ``W_l``'s shape (Akrout's ``B_l`` is its transpose), updated with the same local update as ``W_l``, plus a
decay on both:

    dW_l = 2 (D_l e_l) a_{l-1}^T,     dB_l = dW_l,     W <- W - step(dW) - lr decay W,   B <- B - step(dB) - lr decay B

``dB_l`` is built from ``delta_l = 2 D_l e_l`` and ``a_{l-1}``, quantities at the two ends of the feedback synapse,
so it is local. ``B`` is a parameter of the rule (in the network's ``state_dict``: checkpoints and exact resume hold
it), with its own Adam group of the rule's lr, betas and eps; the decay is Adam's decoupled weight decay on both
groups (``settings.kp.decay``; reference 5.0, reasoned in :mod:`sim.rules.catalog`: with 0, ``B - W`` never
changes). Adam is elementwise and both start from zero moments, so the two get the same step
from the same update and ``B - W`` shrinks by ``(1 - lr decay)`` per step: ``B -> W``. With ``B`` initialised to W
the updates equal BP's at every step (tested). ``B`` starts orthogonal from the feedback generator, like FA's.

The orthogonality regulariser (``ortho_lambda``), where given, acts on W only.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sim.layers.base import Layer
from sim.linalg import Check, orthogonal
from sim.message import Message
from sim.rules.base import Rule, RuleSettings, register
from sim.step_options import DEFAULT_STEP, BatchPart, StepOptions


@register
class KolenPollack(Rule):
    name = "kp"

    def __init__(self, layer: Layer, settings: RuleSettings, generator: torch.Generator | None = None) -> None:
        super().__init__(layer, settings, generator)
        self.feedback_weight = nn.Parameter(orthogonal(layer.weight.shape, layer.weight, generator))

    def message_down(self, layer: Layer, a_in: Tensor, a: Tensor, msg: Message, *, check: Check = True,
                     options: StepOptions = DEFAULT_STEP) -> Message:
        delta = layer.activation.derivative(a) * msg.error
        return Message.from_error(layer.feedback(delta, self.feedback_weight.detach()))

    def feedback_plasticity(self, layer: Layer, a_in: Tensor, a: Tensor, msg: Message,
                            update: dict[str, Tensor], *, part: BatchPart | None = None) -> dict[str, Tensor]:
        """``dB = dW``: the layer's own raw weight update (a fresh tensor, so the two grads never alias); it draws
        nothing, so ``part`` changes nothing."""
        return {"feedback_weight": update["weight"].clone()}

    def state_metrics(self, layer: Layer) -> dict[str, float]:
        from sim.correspondence import angle_deg

        return {"feedback_angle": angle_deg(self.feedback_weight, layer.weight)}
