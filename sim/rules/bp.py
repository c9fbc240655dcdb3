"""Backprop as a local message: ``e_{l-1} = W_l^T (D_l e_l)`` (REFERENCE.md section 3).

Each layer sends its own transposed weight's message, so the updates equal autograd's gradient of the batch-summed
cross-entropy (tested against ``torch.autograd``).
"""

from __future__ import annotations

from torch import Tensor

from sim.layers.base import Layer
from sim.linalg import Check
from sim.message import Message
from sim.rules.base import Rule, register
from sim.step_options import DEFAULT_STEP, StepOptions


@register
class Backprop(Rule):
    name = "bp"

    def message_down(self, layer: Layer, a_in: Tensor, a: Tensor, msg: Message, *, check: Check = True,
                     options: StepOptions = DEFAULT_STEP) -> Message:
        return Message.from_error(layer.transpose(layer.activation.derivative(a) * msg.error))
