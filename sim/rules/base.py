"""The plasticity-rule interface and the one registry of rules (REFERENCE.md sections 2, 6).

A rule is attached to one layer. It decides two things, from local quantities only:

* ``message_down``: the message about the layer's input that it sends to the layer below;
* ``plasticity``: the layer's raw update (the gradient of its local loss ``m ||t - a||^2``).

The update is the same formula for every rule: with the message's error ``e = -m d`` and ``D = f'(z)``,
``delta = 2 D e`` and ``dW = delta^T a_in``. What differs between rules is only how the message below is made, so
``plasticity`` lives here and the rule files implement ``message_down``.

Rules are looked up by name in :data:`RULES`, a view of the torch-free registry (:mod:`sim.rules.registry`: the
built-in catalogue and the ``gaitsim.rules`` entry points) that imports each implementation on first use; the config
schema enumerates the registry, and a new rule is one new file plus its spec (docs/rules.md).

Beyond the layer-to-layer message, a rule may use two more things, both explicit here:

* **the broadcast channel** (``direct = True``): the scheduler hands the output error ``e = 1/2 dCE/da_L`` to every
  layer whose rule asks for it, and such a layer's received message is :meth:`Rule.direct_message` instead of the
  layer above's message (DFA). It is the only non-local signal in a step.
* **learned state**: ``nn.Parameter`` s the rule owns (a learned feedback weight, a learned inverse). They live in the
  network's ``state_dict`` (rules are submodules), so checkpoints hold them; the scheduler gives them their own Adam
  group (the rule's lr, betas, eps and ``decay``), and :meth:`Rule.feedback_plasticity` writes their local update,
  from the layer's own input, output and received message, as it does for the layer. :meth:`Rule.state_metrics`
  reports how far the learned state is from what it learns (the run archive records it per epoch and layer).
  A rule with a learned inverse trained on a local reconstruction loss (DTP, a learned-inverse GP) fits the same
  hooks: its parameters, its update from ``(a_in, a)`` and its ``reconstruction_loss`` metric.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import ClassVar

import torch
from torch import Tensor, nn

from sim.errors import ConfigError
from sim.layers.base import Layer
from sim.linalg import Check
from sim.message import Message
from sim.rules.registry import (
    ARITHMETICS,
    INVERSE_METHODS,
    STATE_METRICS,
    RuleSettings,
    RuleSpec,
    get_spec,
    load_class,
    specs,
)
from sim.step_options import DEFAULT_STEP, BatchPart, StepOptions

__all__ = ["ARITHMETICS", "INVERSE_METHODS", "RULES", "STATE_METRICS", "Rule", "RuleSettings", "get_rule", "register"]


class Rule(nn.Module):
    """A plasticity rule bound to one layer. Subclasses set ``name`` and implement :meth:`message_down`."""

    name: ClassVar[str]
    #: the layer must be square (invertible) under this rule
    inverts: ClassVar[bool] = False
    #: the rule inverts its layer exactly (factorises ``W``; reads ``arithmetic`` and ``inverse``): GP, vGP, not lgp
    factorizes: ClassVar[bool] = False
    #: this rule's layer receives the output error through the broadcast channel (:meth:`direct_message`)
    direct: ClassVar[bool] = False
    #: CIFAR-10 reference settings (REFERENCE.md section 6); set from the rule's spec by :func:`get_rule`
    defaults: ClassVar[RuleSettings] = RuleSettings()
    #: the registry's spec of this rule; set by :func:`get_rule`
    spec: ClassVar[RuleSpec]

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

    def direct_message(self, layer: Layer, a: Tensor, e: Tensor) -> Message:
        """Direct rules (``direct = True``): the message about this layer's output ``a`` ``[B, *out_shape]`` made
        from the broadcast output error ``e`` ``[B, n_out]`` (the only non-local signal of a step)."""
        raise NotImplementedError

    def plasticity(self, layer: Layer, a_in: Tensor, a: Tensor, msg: Message) -> dict[str, Tensor]:
        """Raw update (gradient of the local loss): ``delta = 2 D (-m d)``, then the layer's local gradients."""
        delta = 2 * layer.activation.derivative(a) * msg.error
        return layer.local_gradients(a_in, delta)

    # ----- learned state ------------------------------------------------------------------------------------------
    def feedback_plasticity(self, layer: Layer, a_in: Tensor, a: Tensor, msg: Message,
                            update: dict[str, Tensor], *, part: BatchPart | None = None) -> dict[str, Tensor]:
        """Raw updates of the rule's own parameters, by parameter name (``named_parameters``), from the layer's input,
        output, received message and its raw ``update``: local quantities only. Rules without learned state: ``{}``.

        Like the layer's update, they are sums over the batch's samples, so a data-parallel step sums them over the
        processes. ``part`` (given only in a data-parallel step): ``a_in`` and ``a`` are these rows of the global
        batch; a rule that draws random numbers per sample draws them for the whole batch and keeps these rows
        (:meth:`~sim.step_options.BatchPart.randn`), so its updates are the single-process step's."""
        return {}

    def batch_sums(self) -> list[Tensor]:
        """Tensors the computed (not yet applied) step left in the rule that are sums over the batch's samples, e.g.
        a learned inverse's share of its reconstruction loss: a data-parallel step sums them over the processes, in
        place, as it sums the updates. Default: none."""
        return []

    def feedback_lr(self) -> float:
        """Learning rate of the Adam group of the rule's own parameters: the rule's ``lr`` unless the rule reads a
        separate one (the learned inverses' ``feedback_lr``)."""
        return self.settings.lr

    def after_step(self, layer: Layer) -> None:
        """Called by the scheduler once after every optimiser step (e.g. ``brsf`` redraws its magnitudes here)."""

    def state_metrics(self, layer: Layer) -> dict[str, float]:
        """How far the learned state is from its aim, e.g. ``feedback_angle`` (degrees between a learned feedback
        weight and the weight it learns) or ``reconstruction_loss``; names in
        :data:`~sim.rules.registry.STATE_METRICS`."""
        return {}


class _Registry(Mapping):
    """Every registered rule's class by name, imported on first access (:mod:`sim.rules.registry`)."""

    def __getitem__(self, name: str) -> type[Rule]:
        if name not in specs():
            raise KeyError(name)
        return get_rule(name)

    def __iter__(self) -> Iterator[str]:
        return iter(specs())

    def __len__(self) -> int:
        return len(specs())


#: the rules by name (a read-only view of the registry)
RULES: Mapping[str, type[Rule]] = _Registry()


def register(cls: type[Rule]) -> type[Rule]:
    """Class decorator of a rule implementation: checks that the registry knows ``cls.name`` (its spec is in
    :mod:`sim.rules.catalog` or an entry point) and that the spec points at this class."""
    spec = get_spec(cls.name)
    if spec.impl != f"{cls.__module__}:{cls.__qualname__}":
        raise ConfigError(f"rule {cls.name!r}: its spec names {spec.impl!r}, not {cls.__module__}:{cls.__qualname__}")
    return cls


def get_rule(name: str) -> type[Rule]:
    """The rule class called ``name``, imported from its spec; an unknown name lists the registered ones."""
    spec = get_spec(name)
    cls = load_class(spec)
    if not (isinstance(cls, type) and issubclass(cls, Rule)) or getattr(cls, "name", None) != name:
        raise ConfigError(f"rule {name!r}: {spec.impl} is not a sim.rules.base.Rule subclass with name = {name!r}")
    if cls.__dict__.get("spec") is not spec:
        cls.spec = spec
        cls.defaults = spec.resolve()
    return cls

