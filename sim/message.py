"""The one message currency that crosses layer boundaries (REFERENCE.md sections 2-3).

A top-down message about a layer's activity ``a`` (shape ``[B, *unit_shape]``) is the pair

* ``d``: the *difference* ``t - a`` between the layer's target and its activity, same shape as ``a``;
* ``m``: a per-sample multiplier, shape ``[B]``.

Every rule speaks this currency. GP produces ``(d, m)`` directly (``d`` is tiny, ``m = prod 1/gamma`` is large, and
their product stays O(error)). BP and FA think in errors ``e = dLoss/da / 2``; the two views meet in exactly one
place, :meth:`Message.error` and :meth:`Message.from_error`:

    e = -m * d            (and back: d = -e, m = 1)

so a layer's local loss ``m ||t - a||^2`` has gradient ``-2 m d = 2 e`` whatever rule produced the message, and any
assignment of rules to adjacent layers composes.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class Message:
    """A top-down message about one layer's activity.

    Attributes:
        d: target minus activity, ``[B, *unit_shape]``.
        m: per-sample multiplier of the local loss, ``[B]``.
    """

    d: Tensor
    m: Tensor

    def _m_broadcast(self) -> Tensor:
        return self.m.reshape(self.m.shape + (1,) * (self.d.dim() - 1))

    @property
    def error(self) -> Tensor:
        """``e = -m d``, the BP-currency error (half the loss gradient with respect to the activity)."""
        return -self._m_broadcast() * self.d

    @staticmethod
    def from_error(e: Tensor) -> Message:
        """Wrap a BP-currency error ``e`` as ``(d = -e, m = 1)``."""
        return Message(d=-e, m=e.new_ones(e.shape[0]))

    def target(self, a: Tensor) -> Tensor:
        """Materialise the target ``t = a + d`` (recording, target-form arithmetic)."""
        return a + self.d
