"""Pointwise nonlinearities and their exact inverses (REFERENCE.md sections 1-2).

Hidden layers use the leaky ReLU ``f(z) = z if z > 0 else 0.1 z``; the output layer is linear. GP needs three things
from an activation besides ``f``: its derivative ``D = f'(z)``, its inverse ``f^{-1}``, and the *difference*
``f^{-1}(a + u) - f^{-1}(a)`` computed without subtracting two large numbers, which is what makes the difference
form of GP exact in float32. DTP needs the forward counterpart, ``f(u + delta) - f(u)``, likewise without
cancellation.

Every function works on tensors of any shape, elementwise. None uses ``torch.where`` or a boolean mask: on a CPU
those run a scalar loop, 10-15x slower than the vectorised ``sign``, ``clamp`` and arithmetic used instead, and GP
calls them on every layer of every step. Each formula gives exactly the values of the textbook ``where`` form (tested
bit for bit), up to the sign of a zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

NEGATIVE_SLOPE = 0.1


@dataclass(frozen=True)
class Activation:
    """A piecewise-linear, strictly increasing activation: slope 1 for positive input, ``negative_slope`` below 0.

    ``negative_slope = 1`` is the identity (the linear output layer).
    """

    name: str
    negative_slope: float

    @property
    def is_linear(self) -> bool:
        return self.negative_slope == 1.0

    def __call__(self, z: Tensor) -> Tensor:
        if self.is_linear:
            return z
        return torch.nn.functional.leaky_relu(z, self.negative_slope)

    def derivative(self, a: Tensor) -> Tensor:
        """``D = f'(z)`` read off the activity ``a = f(z)`` (same sign as z): 1 where ``a > 0``, else the negative
        slope (also at ``z = 0``, as torch's autograd does, so the BP rule and autograd agree bit for bit).

        ``sign(a)`` is 1, 0 or -1; raising it to at least the slope gives 1 or the slope exactly. A NaN activity
        gives a NaN derivative (the numerics checks then name the layer) rather than a plausible slope.
        """
        if self.is_linear:
            return torch.ones_like(a)
        return a.sign().clamp_min(self.negative_slope)

    def inverse(self, a: Tensor) -> Tensor:
        """``f^{-1}(a)``: divides negative entries by the slope (``max(a, 0) + min(a, 0) / slope``: one of the two
        terms is an exact zero)."""
        if self.is_linear:
            return a
        return a.clamp_min(0) + a.clamp_max(0) / self.negative_slope

    def inverse_difference(self, a: Tensor, u: Tensor) -> Tensor:
        """``v = f^{-1}(a + u) - f^{-1}(a)`` without cancellation.

        Where ``a`` and ``a + u`` lie on the same linear piece, ``v = u / f'(a)`` exactly; only where the nudge crosses
        the kink are both terms evaluated (then ``u`` is at least as large as ``|a|``, so nothing is lost). The two
        cases are blended with a 0/1 weight, ``plain * (1 - w) + crossed * w``, which picks either value exactly.
        """
        if self.is_linear:
            return u
        moved = a + u
        plain = u / self.derivative(a)
        crossed = self.inverse(moved) - self.inverse(a)
        # w = 1 where exactly one of a, a + u is positive: |[a > 0] - [a + u > 0]| with [x > 0] = max(sign(x), 0)
        w = (a.sign().clamp_min_(0) - moved.sign().clamp_min_(0)).abs_()
        return torch.addcmul(plain * (1 - w), crossed, w)

    def forward_difference(self, u: Tensor, delta: Tensor) -> Tensor:
        """``f(u + delta) - f(u)`` without cancellation (difference target propagation's message through a
        receiving layer's activation, :mod:`sim.rules.dtp`).

        Where ``u`` and ``u + delta`` lie on the same linear piece the difference is ``f'(u) delta`` exactly; only
        where the step crosses the kink are both terms evaluated (then ``|delta| >= |u|``, so nothing is lost).
        The same 0/1 blend as :meth:`inverse_difference`.
        """
        if self.is_linear:
            return delta
        moved = u + delta
        plain = delta * self.derivative(u)  # sign(u) = sign(f(u)): the slope on u's piece
        crossed = self(moved) - self(u)
        w = (u.sign().clamp_min_(0) - moved.sign().clamp_min_(0)).abs_()
        return torch.addcmul(plain * (1 - w), crossed, w)


LEAKY_RELU = Activation("leaky_relu", NEGATIVE_SLOPE)
LINEAR = Activation("linear", 1.0)
