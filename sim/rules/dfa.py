"""Direct feedback alignment ``dfa`` (Nokland 2016, "Direct feedback alignment provides learning in deep neural
networks", NeurIPS): every hidden layer ``l`` receives the output error through its own fixed random matrix
``B_l`` ``[n_l, n_out]``, not the message of the layer above:

    e_l = B_l e,      e = 1/2 (softmax(a_L) - onehot(y))   (the logit units, ``n_out`` = classes)

then the usual local update ``dW_l = 2 (D_l e_l) a_{l-1}^T``. The output error reaches the layer through the
scheduler's **broadcast channel** (``direct = True``, :meth:`~sim.rules.base.Rule.direct_message`), the only
non-local signal of a step. ``B_l`` is orthogonal (gain 1; orthonormal columns), drawn from the feedback generator
like FA's. Conv layers take ``n_l`` = every unit of their output map.

With one hidden layer and ``B_1 = B_out^T`` of FA's output layer, DFA's message equals FA's; in a linear network with
``B_l = W_{l+1}^T ... W_L^T`` its updates equal BP's (both tested). At the output layer a ``dfa`` rule receives the
output error itself. A DFA layer asked for a message about its input by a layer below that does not take the
broadcast (mixed rules) sends BP's ``W^T (D e_l)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sim.layers.base import Layer
from sim.linalg import Check, orthogonal
from sim.message import Message
from sim.rules.base import Rule, RuleSettings, register
from sim.step_options import DEFAULT_STEP, StepOptions


@register
class DirectFeedbackAlignment(Rule):
    name = "dfa"
    direct = True

    def __init__(self, layer: Layer, settings: RuleSettings, generator: torch.Generator | None = None,
                 classes: int | None = None) -> None:
        super().__init__(layer, settings, generator)
        n = math.prod(layer.out_shape)
        shape = (n, classes if classes is not None else layer.width)
        self.register_buffer("broadcast_weight", orthogonal(shape, layer.weight, generator))

    def direct_message(self, layer: Layer, a: Tensor, e: Tensor) -> Message:
        """``e_l = B_l e``: ``e`` ``[B, n_out]`` -> ``[B, *out_shape]``."""
        if e.shape[1] != self.broadcast_weight.shape[1]:
            raise ValueError(f"layer {layer.name!r}: dfa's B is [{self.broadcast_weight.shape[0]}, "
                             f"{self.broadcast_weight.shape[1]}] but the output error has {e.shape[1]} units")
        return Message.from_error((e @ self.broadcast_weight.transpose(0, 1)).reshape(e.shape[0], *layer.out_shape))

    def message_down(self, layer: Layer, a_in: Tensor, a: Tensor, msg: Message, *, check: Check = True,
                     options: StepOptions = DEFAULT_STEP) -> Message:
        return Message.from_error(layer.transpose(layer.activation.derivative(a) * msg.error))
