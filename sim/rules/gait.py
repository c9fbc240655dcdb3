"""Gradient-adjusted incremental target propagation: the machinery shared by vanilla and normalized GP
(REFERENCE.md section 2).

Given the received message ``(d_l, m_l)`` about a square layer's output ``a_l`` (``[B, *out_shape]``, aux included),
the message about its input is made with the layer's exact inverse:

* ``gamma_l`` per sample (the subclass decides: a constant, or ``eta sqrt(N_l) / ||d_l||``);
* ``m_{l-1} = m_l / gamma_l``;
* difference form: ``u = gamma D^2 d``, ``v = f^{-1}(a + u) - f^{-1}(a)`` without cancellation,
  ``d_{l-1} = W^{-1} v``;
* target form (eq. 4): ``t = a + d``, ``eps = gamma D^2``,
  ``t_{l-1} = W^{-1}(f^{-1}((1 - eps) a + eps t) - b)``, and ``d_{l-1} = t_{l-1} - a_{l-1}`` by subtraction, which
  loses ``d`` to cancellation in float32: that is the paper's arithmetic, kept to reproduce it.

In exact arithmetic both forms are equal; linearised, ``m_{l-1} d_{l-1} = W^{-1} D m_l d_l``, BP's recursion when W is
orthogonal (section 3).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from sim.activation import Activation
from sim.layers.base import Layer
from sim.linalg import Check
from sim.message import Message
from sim.rules.base import Rule
from sim.step_options import DEFAULT_STEP, StepOptions


class GaitProp(Rule):
    """Base of the GP rules; subclasses define :meth:`gamma`."""

    inverts = True
    factorizes = True

    def gamma(self, d: Tensor, n_units: int) -> Tensor:
        """Per-sample step ``[B]`` for a difference ``d`` ``[B, *out_shape]`` about a layer of ``n_units`` units
        (aux included; ``d`` may hold only the forwarded units when the aux part is zero and skipped)."""
        raise NotImplementedError

    def skips_aux(self) -> bool:
        """Difference form never reads a layer's aux activities: their ``d`` is zero, and so are their nudge,
        ``delta`` and update (see :mod:`sim.layers.base`). The target form materialises ``t = a + d`` on every unit."""
        return self.settings.arithmetic == "difference"

    def top_message(self, a: Tensor, e: Tensor) -> Message:
        if self.settings.arithmetic == "target":
            # The paper materialises the output target t_L = a_L - e and subtracts a_L again.
            return Message(d=(a - e) - a, m=e.new_ones(e.shape[0]))
        return Message.from_error(e)

    def message_down(self, layer: Layer, a_in: Tensor, a: Tensor, msg: Message, *, check: Check = True,
                     options: StepOptions = DEFAULT_STEP) -> Message:
        factors = layer.factorize(self.settings.inverse, check)
        gamma = self.gamma(msg.d, math.prod(layer.out_shape))
        g = gamma.reshape(gamma.shape + (1,) * (a.dim() - 1))
        if self.settings.arithmetic == "target":
            d2 = layer.activation.derivative(a) ** 2
            t = msg.target(a)
            eps = g * d2
            t_in = layer.inverse_target(layer.activation.inverse((1 - eps) * a + eps * t), factors, a_in)
            d_in = t_in - a_in
        else:
            step = compiled_nudge() if options.compile_nudge else nudge
            d_in = layer.inverse(step(layer.activation, a, msg.d, g), factors)
        return Message(d=d_in, m=msg.m / gamma)


def nudge(activation: Activation, a: Tensor, d: Tensor, g: Tensor) -> Tensor:
    """Difference form: ``v = f^{-1}(a + u) - f^{-1}(a)`` for the nudge ``u = gamma D^2 d``
    (``a``, ``d`` ``[B, *out_shape]``, ``g`` = gamma broadcastable, ``[B, 1, ...]``)."""
    u = g * (activation.derivative(a) ** 2) * d
    return activation.inverse_difference(a, u)


@functools.cache
def compiled_nudge():
    """:func:`nudge` through ``torch.compile``: its ~27 elementwise passes fused into one kernel
    (``StepOptions.compile_nudge``). Built once per process (a constant, not a switch: the eager :func:`nudge` stays
    what every step without the option calls); compiled at its first call, once per activation shape.

    Off by default: compiling takes about a minute on a 2-core CPU and saves ~1.5-2 ms per 1024-wide layer at batch
    256 there, about 2% of a GP step (docs/performance.md); on a GPU, where each pass is a kernel launch, measure it
    (``python -m sim bench --compile``). Inductor keeps the division by the slope, so the values are those of the
    eager code (tested, ``-m slow``).
    """
    return torch.compile(nudge, dynamic=False)


def per_sample_norm(d: Tensor) -> Tensor:
    """``||d_b||_2`` for each sample ``[B, ...] -> [B]``."""
    return torch.linalg.vector_norm(d.reshape(d.shape[0], -1), dim=1)
