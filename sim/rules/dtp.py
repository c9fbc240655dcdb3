"""Difference target propagation ``dtp`` (Lee, Zhang, Fischer & Bengio 2015, "Difference Target Propagation",
ECML-PKDD; the ``drl`` loss: Meulemans, Carzaniga, Suykens, Sacramento & Grewe 2020, "A theoretical framework for
target propagation", NeurIPS).

Targets travel down through a learned feedback mapping ``g_l`` with the difference correction

    t_{l-1} = a_{l-1} + g_l(t_l) - g_l(a_l),

which in the message currency (:mod:`sim.message`) is ``d_{l-1} = g_l(a_l + d_l) - g_l(a_l)`` and ``m_{l-1} = m_l``:
the multiplier passes through, so a DTP layer below a GP layer (tiny ``d``, large ``m``) keeps GP's scale. ``g_l`` is
:mod:`sim.rules.learned`'s ``V f^{-1}(h) + c``, trained on the reconstruction loss chosen by ``reconstruction``
(``dtp``: Lee's, ``drl``: the one-layer difference reconstruction loss), so with ``V = W^{-1}`` the target is GP's
exact one, ``W^{-1}(f^{-1}(t_l) - b)`` (tested). The layer's own update is every rule's, the gradient of
``m ||t - a||^2``. Works on any dense or conv layer (``V = Q^T``, ``Q`` of ``W``'s shape); the layer need not be
square.
"""

from __future__ import annotations

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

    def message_down(self, layer: Layer, a_in: Tensor, a: Tensor, msg: Message, *, check: Check = True,
                     options: StepOptions = DEFAULT_STEP) -> Message:
        return Message(d=self.difference(layer, a, msg.d), m=msg.m)
