"""Pointwise nonlinearities and their exact inverses (REFERENCE.md sections 1-2).

Hidden layers use the leaky ReLU ``f(z) = z if z > 0 else 0.1 z``; the output layer is linear. GP needs three things
from an activation besides ``f``: its derivative ``D = f'(z)``, its inverse ``f^{-1}``, and the *difference*
``f^{-1}(a + u) - f^{-1}(a)`` computed without subtracting two large numbers, which is what makes the difference
form of GP exact in float32.

Every function works on tensors of any shape, elementwise.
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
        """``D = f'(z)`` read off the activity ``a = f(z)`` (same sign as z). At ``z = 0`` it takes the negative
        slope, as torch's autograd does, so the BP rule and autograd agree bit for bit."""
        if self.is_linear:
            return torch.ones_like(a)
        one = torch.ones((), dtype=a.dtype, device=a.device)
        return torch.where(a > 0, one, one * self.negative_slope)

    def inverse(self, a: Tensor) -> Tensor:
        """``f^{-1}(a)``: divides negative entries by the slope."""
        if self.is_linear:
            return a
        return torch.where(a > 0, a, a / self.negative_slope)

    def inverse_difference(self, a: Tensor, u: Tensor) -> Tensor:
        """``v = f^{-1}(a + u) - f^{-1}(a)`` without cancellation.

        Where ``a`` and ``a + u`` lie on the same linear piece, ``v = u / f'(a)`` exactly; only where the nudge crosses
        the kink are both terms evaluated (then ``u`` is at least as large as ``|a|``, so nothing is lost).
        """
        if self.is_linear:
            return u
        moved = a + u
        same_piece = (a > 0) == (moved > 0)
        plain = u / self.derivative(a)
        crossed = self.inverse(moved) - self.inverse(a)
        return torch.where(same_piece, plain, crossed)


LEAKY_RELU = Activation("leaky_relu", NEGATIVE_SLOPE)
LINEAR = Activation("linear", 1.0)
