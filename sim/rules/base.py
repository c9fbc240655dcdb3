"""The plasticity-rule interface and the one registry of rules (REFERENCE.md sections 2, 6).

A rule is attached to one layer. It decides two things, from local quantities only:

* ``message_down``: the message about the layer's input that it sends to the layer below;
* ``plasticity``: the layer's raw update (the gradient of its local loss ``m ||t - a||^2``).

The update is the same formula for every rule: with the message's error ``e = -m d`` and ``D = f'(z)``,
``delta = 2 D e`` and ``dW = delta^T a_in``. What differs between rules is only how the message below is made, so
``plasticity`` lives here and the rule files implement ``message_down``.

Rules are looked up by name in :data:`RULES`; the config schema enumerates it, and a new rule is one new file that
decorates its class with :func:`register`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from sim.errors import ConfigError
from sim.layers.base import Layer
from sim.linalg import Check
from sim.message import Message
from sim.step_options import DEFAULT_STEP, StepOptions

ARITHMETICS = ("difference", "target")
INVERSE_METHODS = ("lu", "inv")


@dataclass(frozen=True)
class RuleSettings:
    """Optimiser and rule hyper-parameters for the layers that use one rule (REFERENCE.md section 6)."""

    lr: float = 1.9e-5
    """Adam learning rate."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam (beta1, beta2)."""
    eps: float = 1e-6
    """Adam epsilon."""
    ortho_lambda: float = 0.0
    """Weight of the orthogonality regulariser ``lambda ||W W^T - I||_F^2`` on square layers (batch-summed loss)."""
    gamma: float = 1e-3
    """Vanilla GP: the constant incremental-target step."""
    eta: float = 1e-7
    """Normalized GP: per-unit RMS of the nudge, ``gamma = eta sqrt(N) / ||t - a||`` per sample."""
    arithmetic: str = "difference"
    """GP arithmetic: 'difference' (exact in float32) or 'target' (the paper's eq. 4)."""
    inverse: str = "lu"
    """How square layers are inverted: 'lu' (factorise and solve; fast, exact) or 'inv' (explicit inverse each
    step, the reference implementation's cost)."""

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if not self.eps > 0:
            raise ConfigError(f"eps must be positive, got {self.eps}")
        if not self.ortho_lambda >= 0:
            raise ConfigError(f"ortho_lambda must be >= 0, got {self.ortho_lambda}")
        if not self.gamma > 0:
            raise ConfigError(f"gamma must be positive, got {self.gamma}")
        if not self.eta > 0:
            raise ConfigError(f"eta must be positive, got {self.eta}")
        if self.arithmetic not in ARITHMETICS:
            raise ConfigError(f"arithmetic must be one of {ARITHMETICS}, got {self.arithmetic!r}")
        if self.inverse not in INVERSE_METHODS:
            raise ConfigError(f"inverse must be one of {INVERSE_METHODS}, got {self.inverse!r}")


class Rule(nn.Module):
    """A plasticity rule bound to one layer. Subclasses set ``name`` and implement :meth:`message_down`."""

    name: ClassVar[str]
    #: the layer must be square (invertible) under this rule
    inverts: ClassVar[bool] = False
    #: CIFAR-10 reference settings (REFERENCE.md section 6)
    defaults: ClassVar[RuleSettings] = RuleSettings()

    def __init__(self, layer: Layer, settings: RuleSettings, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.settings = settings

    def extra_repr(self) -> str:
        return self.name

    def top_message(self, a: Tensor, e: Tensor) -> Message:
        """The output layer's message from the output error ``e = 1/2 dCE/da`` ``[B, n_out]`` (0 on aux units)."""
        return Message.from_error(e)

    def skips_aux(self) -> bool:
        """Whether this rule's messages and update are unchanged when the layer's aux units are not computed (they
        receive ``d = 0``); the scheduler then runs the layer on its forwarded units only. See :mod:`sim.layers.base`.
        """
        return False

    def message_down(self, layer: Layer, a_in: Tensor, a: Tensor, msg: Message, *, check: Check = True,
                     options: StepOptions = DEFAULT_STEP) -> Message:
        """The message about ``a_in`` ``[B, *in_shape]`` given this layer's output ``a`` and received ``msg``.

        ``check``: the step's numerics check for what the rule computes besides its message (GP's factorisation,
        :data:`sim.linalg.Check`); ``options``: the step's options (:class:`~sim.step_options.StepOptions`), read by
        the rules they concern (GP: ``compile_nudge``)."""
        raise NotImplementedError

    def plasticity(self, layer: Layer, a_in: Tensor, a: Tensor, msg: Message) -> dict[str, Tensor]:
        """Raw update (gradient of the local loss): ``delta = 2 D (-m d)``, then the layer's local gradients."""
        delta = 2 * layer.activation.derivative(a) * msg.error
        return layer.local_gradients(a_in, delta)


RULES: dict[str, type[Rule]] = {}


def register(cls: type[Rule]) -> type[Rule]:
    """Class decorator adding a rule to :data:`RULES` under ``cls.name``."""
    if cls.name in RULES:
        raise ValueError(f"rule {cls.name!r} registered twice")
    RULES[cls.name] = cls
    return cls


def get_rule(name: str) -> type[Rule]:
    """The rule class called ``name``; an unknown name lists the registered ones."""
    try:
        return RULES[name]
    except KeyError:
        raise ConfigError(f"unknown rule {name!r}; registered rules: {', '.join(sorted(RULES))}") from None

