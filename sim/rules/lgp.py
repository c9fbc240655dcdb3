"""Normalized GP with a learned inverse ``lgp`` (Dalm et al. 2023, section 6, the proposed next step: no public code
has it): GP's message (REFERENCE.md section 2, difference form) with the exact ``W_l^{-1}`` replaced by a learned
``V_l`` ``[n_in, n_out]``:

    gamma_l = eta sqrt(N_l) / ||d_l||,   m_{l-1} = m_l / gamma_l,   v = f^{-1}(a + gamma D^2 d) - f^{-1}(a),
    d_{l-1} = V_l v,

with ``V_l`` trained on the local difference reconstruction loss ``sum ||V (f^{-1}(h~) - f^{-1}(h)) - xi||^2`` of
input noise ``xi`` (:mod:`sim.rules.learned`, ``drl``; its minimiser is ``W^{-1}``). With ``V = W^{-1}`` it is ``gp``
to float tolerance (tested). Square layers as for GP (``inverts``: the network builds them square with aux units, so
``lgp`` and ``gp`` run the same networks and ``V`` has an exact target); difference form only, no factorisation.
Recorded: ``feedback_angle`` (degrees between ``V`` and ``W^{-1}``) and ``reconstruction_loss``.
"""

from __future__ import annotations

import math

from torch import Tensor

from sim.layers.base import Layer
from sim.linalg import Check
from sim.message import Message
from sim.rules.base import register
from sim.rules.gait import compiled_nudge, nudge
from sim.rules.gp import NormalizedGP
from sim.rules.learned import LearnedInverse
from sim.step_options import DEFAULT_STEP, StepOptions


@register
class LearnedInverseGP(LearnedInverse, NormalizedGP):
    name = "lgp"
    loss_kind = "drl"
    factorizes = False  # square like GP, but no factorisation: V replaces W^-1

    def skips_aux(self) -> bool:
        return True  # difference form only: the aux units' d is zero (see sim.layers.base)

    def top_message(self, a: Tensor, e: Tensor) -> Message:
        return Message.from_error(e)

    def message_down(self, layer: Layer, a_in: Tensor, a: Tensor, msg: Message, *, check: Check = True,
                     options: StepOptions = DEFAULT_STEP) -> Message:
        gamma = self.gamma(msg.d, math.prod(layer.out_shape))
        g = gamma.reshape(gamma.shape + (1,) * (a.dim() - 1))
        step = compiled_nudge() if options.compile_nudge else nudge
        v = step(layer.activation, a, msg.d, g)
        d_in = self.invert_difference(layer, v)
        return Message(d=d_in, m=msg.m / gamma)
