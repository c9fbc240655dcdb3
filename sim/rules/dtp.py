"""Difference target propagation ``dtp`` (Lee, Zhang, Fischer & Bengio 2015, "Difference Target Propagation",
ECML-PKDD, eqs. 10-13; the ``drl`` loss: Meulemans, Carzaniga, Suykens, Sacramento & Grewe 2020, "A theoretical
framework for target propagation", NeurIPS, section 3).

Targets travel down through a learned feedback mapping ``g_l`` with the difference correction

    t_{l-1} = a_{l-1} + g_l(t_l) - g_l(a_l),        g_l(h) = s_{l-1}(V h + c),

Lee et al.'s form: ``V = Q^T`` (applied with :meth:`~sim.layers.base.Layer.feedback`, as FA applies its ``B``: dense
or conv) and ``c`` of the layer's input shape are learned, and ``s_{l-1}`` is the activation of the RECEIVING layer,
the one whose activity ``a_{l-1}`` the target replaces (``layer.input_activation``, set when the network is built:
leaky ReLU above a hidden layer, identity for the network input). The nonlinearity sits on the receiving side as in
every published DTP code (Lee et al.'s; Meulemans et al. 2020's DTP; scalingDTP). In the message currency
(:mod:`sim.message`):

    u = V a_l + c,    d_{l-1} = g(a_l + d_l) - g(a_l) = s_{l-1}(u + V d_l) - s_{l-1}(u),    m_{l-1} = m_l,

the difference computed without cancellation (:meth:`~sim.activation.Activation.forward_difference`: ``s'(u) V d``
where ``u`` and ``u + V d`` share a linear piece), so a DTP layer below a GP layer (``d ~ 1e-7``, large ``m``) keeps
GP's scale. With linear activations and ``V = W^{-1}``, ``c = -W^{-1} b`` the target is the exact
``W^{-1}(t_l - b)`` (tested). (The other form, ``V f_l^{-1}(h) + c`` with the layer's own ``f_l``, multiplies the
negative units' differences by 1/0.1 per layer, and a deep leaky-ReLU net does not learn with it; ``lgp`` keeps that
form, GP's exact inverse.)

**Reconstruction loss** (batch-summed; ``xi ~ N(0, s^2)`` drawn as in :mod:`sim.rules.learned`, ``h = f_l(W a_in +
b)``, ``h~ = f_l(W (a_in + xi) + b)``):

* ``dtp`` (Lee et al. eq. 13): ``L = sum ||g(h~) - (a_in + xi)||^2``;
* ``drl`` (Meulemans et al. 2020, restricted to one layer): ``L = sum ||g(h~) - g(h) - xi||^2``.

The layer's own update is every rule's, the gradient of ``m ||t - a||^2``. Any dense or conv layer, square or not.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sim.layers.base import Layer
from sim.linalg import Check
from sim.message import Message
from sim.rules.base import register
from sim.rules.learned import LearnedInverse
from sim.step_options import DEFAULT_STEP, StepOptions


@register
class DifferenceTargetProp(LearnedInverse):
    name = "dtp"

    def mapping_input(self, layer: Layer, h: Tensor, q: Tensor, c: Tensor) -> Tensor:
        """``u = V h + c`` ``[B, *out_shape] -> [B, *in_shape]``, the argument of ``s_{l-1}``."""
        return layer.feedback(layer.embed(h), q) + c

    def difference(self, layer: Layer, a: Tensor, d: Tensor) -> Tensor:
        """``g(a + d) - g(a) = s(u + V d) - s(u)``, ``u = V a + c``, without cancellation."""
        q, c = self.inverse_weight.detach(), self.inverse_bias.detach()
        u = self.mapping_input(layer, a, q, c)
        return layer.input_activation.forward_difference(u, self.invert_difference(layer, d))

    def reconstruction_residual(self, layer: Layer, a_in: Tensor, xi: Tensor, q: Tensor, c: Tensor) -> Tensor:
        s = layer.input_activation
        with torch.no_grad():
            h_noisy = layer(a_in + xi)
        g_noisy = s(self.mapping_input(layer, h_noisy, q, c))
        if self.reconstruction == "drl":
            with torch.no_grad():
                h = layer(a_in)
            return g_noisy - s(self.mapping_input(layer, h, q, c)) - xi
        return g_noisy - (a_in + xi)

    def message_down(self, layer: Layer, a_in: Tensor, a: Tensor, msg: Message, *, check: Check = True,
                     options: StepOptions = DEFAULT_STEP) -> Message:
        return Message(d=self.difference(layer, a, msg.d), m=msg.m)
