"""The scheduler: forward phase, top-down message phase, plasticity phase, regulariser, optimiser step
(REFERENCE.md section 2).

Each phase is a function of the network, the batch and what earlier phases returned; the scheduler owns the
activation cache (:class:`ForwardPass`) and hands each layer only its own input, output and received message.
Optional **noise floors** add Gaussian noise of a per-layer std to the top-down messages (to the difference
``d = t - a`` every layer receives, the output layer's included) and, separately, to the forward activities, drawn
from the scheduler's seeded generator. A std of 0 draws nothing, so it is bitwise identical to no noise.

Updates land in ``.grad`` (raw update plus the regulariser's gradient), so one ``torch.optim.Adam`` with a parameter
group per layer (its rule's lr, betas, eps) serves every rule; a rule with learned state (Kolen-Pollack's feedback
weight) gets one more group for its own parameters, whose raw updates (:func:`feedback_phase`) land in ``.grad`` too.
A layer whose rule is direct (DFA) hears the output error through the **broadcast channel** (:func:`message_phase`),
the one non-local signal of a step.

What a step computes and how is one frozen value, :class:`~sim.step_options.StepOptions` (``Scheduler(net,
options=...)``, a run's ``train.step``), passed down explicitly to the phases, rules and layers: no process-wide switch
changes a step.

**Data-parallel steps** (:mod:`sim.distributed`): a scheduler given the processes of a run (``parallel``) computes
the local phases on its part of the global batch (``part``, a :class:`~sim.step_options.BatchPart`; per-sample noise
is drawn for the whole batch and cut to the part) and then sums the raw updates and the loss over the processes, so
:meth:`Scheduler.compute` returns the step on the global batch and :meth:`Scheduler.apply` takes it unchanged. A layer
still sees only its own input, output and message: the sum is the scheduler's, after the local phases.

Numerics checks come in three modes (``StepOptions.check_numerics``): ``'tensor'`` (``True``) checks every message
and update as it is made and stops at the first NaN/Inf with its layer named (one host-device sync per tensor);
``'step'`` accumulates one on-device flag per step, reads it once at the end of :meth:`Scheduler.compute` and, if it is
set, repeats the step (same noise) with per-tensor checks, which raise the same error as ``'tensor'``; ``'off'``
(``False``) checks nothing and never synchronises with the device inside a step. See docs/performance.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from sim import regularizer
from sim.errors import ConfigError, NonFiniteError, ShapeError
from sim.linalg import Check
from sim.message import Message
from sim.network import Network, seed_streams
from sim.step_options import DEFAULT_STEP, NUMERICS_CHECKS, BatchPart, StepOptions, randn

if TYPE_CHECKING:
    from sim.distributed import Group

__all__ = ["NUMERICS_CHECKS", "Check", "ForwardPass", "NoiseFloor", "Scheduler", "StepOptions", "StepResult",
           "feedback_phase", "forward_phase", "message_phase", "output_error", "plasticity_phase"]


@dataclass(frozen=True)
class NoiseFloor:
    """Gaussian noise stds, one number for every layer or one per layer (bottom to top)."""

    message_std: float | tuple[float, ...] = 0.0
    """Std of the noise added to the top-down difference message each layer receives."""
    activity_std: float | tuple[float, ...] = 0.0
    """Std of the noise added to each layer's forward activity, entering through the pre-activation
    (``a = f(z + noise)``, aux units included) so every rule sees one consistent noisy neuron."""

    def per_layer(self, which: str, depth: int) -> tuple[float, ...]:
        value = getattr(self, which)
        stds = (float(value),) * depth if isinstance(value, (int, float)) else tuple(float(v) for v in value)
        if len(stds) != depth:
            raise ConfigError(f"noise.{which}: {len(stds)} values for a network of {depth} layers; give one or {depth}")
        if not all(s >= 0 for s in stds):
            raise ConfigError(f"noise.{which}: stds must be >= 0, got {stds}")
        return stds


@dataclass
class ForwardPass:
    """The activation cache of one batch.

    Attributes:
        inputs: ``inputs[l]`` is what layer l read, ``[B, *in_shape_l]``.
        outputs: ``outputs[l]`` is layer l's full output, ``[B, *out_shape_l]``, aux units (and noise) included;
            where ``narrow[l]`` only its forwarded units, ``[B, width_l, ...]`` (aux units skipped).
        noise: the activity noise added to layer l's pre-activation (None where none), full shape, so a BP
            reference can replay it.
        narrow: ``narrow[l]``: layer l ran on its forwarded units only (see :attr:`Scheduler.narrow`).
    """

    inputs: list[Tensor]
    outputs: list[Tensor]
    noise: list[Tensor | None]
    narrow: list[bool]


@dataclass
class StepResult:
    """Everything one step computed before touching the weights.

    Attributes:
        loss: batch-summed cross-entropy (scalar).
        logits: ``[B, classes]``.
        forward: the activation cache.
        messages: ``messages[l]`` is the message layer l received (noise included); shaped like ``forward.outputs[l]``
            (forwarded units only where the layer skipped its aux units, whose ``d`` is zero).
        updates: ``updates[l]`` is layer l's raw update ``{'weight': ..., 'bias': ...}``, before regulariser and Adam.
        feedback_updates: ``feedback_updates[l]``: raw updates of layer l's rule's own parameters (a learned feedback
            weight), by parameter name; ``{}`` for rules without learned state.

    In a data-parallel step (:attr:`Scheduler.parallel`), ``loss``, ``updates`` and ``feedback_updates`` are sums over
    the processes (the global batch's), while ``logits``, ``forward`` and ``messages`` are this process's part.
    """

    loss: Tensor
    logits: Tensor
    forward: ForwardPass
    messages: list[Message]
    updates: list[dict[str, Tensor]]
    feedback_updates: list[dict[str, Tensor]] = field(default_factory=list)
    part: BatchPart | None = None
    """The rows of the global batch this process computed (a data-parallel step); None: the whole batch."""

    @property
    def batch_size(self) -> int:
        """Samples in the batch the step is on: the global batch's in a data-parallel step."""
        return self.logits.shape[0] if self.part is None else self.part.total

    def targets(self) -> list[Tensor]:
        """Materialised targets ``t_l = a_l + d_l`` ``[B, *out_shape_l]`` for every layer."""
        return [m.target(a) for m, a in zip(self.messages, self.forward.outputs)]


def _gaussian(like: Tensor, std: float, generator: torch.Generator, part: BatchPart | None = None) -> Tensor:
    """Noise of ``like``'s shape; with ``part`` the part's rows of the whole batch's draw (a data-parallel step)."""
    return std * randn(like.shape, generator=generator, dtype=like.dtype, device=like.device, part=part)


def _check_finite(layer, tensor: Tensor, quantity: str, step: int | None, check: Check) -> None:
    if isinstance(check, list):
        # NaN/Inf anywhere makes the sum non-finite; a finite overflow only sends the step down the checked path
        check.append(~torch.isfinite(tensor.sum()))
    elif check:
        layer.check_finite(tensor, quantity, step)


def _loss_error(net: Network, step: int | None) -> NonFiniteError:
    return NonFiniteError(f"non-finite loss at step {step}; lower the learning rate or check the inputs", step=step,
                          layer=net.layers[-1].name, quantity="loss")


def forward_phase(net: Network, x: Tensor, activity_noise: list[Tensor | None] | None = None,
                  narrow: list[bool] | None = None) -> ForwardPass:
    """Run every layer bottom-up, adding the given activity noise to each pre-activation (tensor or None).

    ``narrow[l]``: compute only layer l's forwarded units (its aux units are skipped; default: none skipped).
    """
    inputs, outputs = [], []
    noise = activity_noise or [None] * len(net.layers)
    narrow = list(narrow) if narrow is not None else [False] * len(net.layers)
    h = x
    for layer, n, skip in zip(net.layers, noise, narrow):
        layer.check_input(h)
        a = layer(h, n, layer.width if skip else None)
        inputs.append(h)
        outputs.append(a)
        h = layer.read(a)
    return ForwardPass(inputs, outputs, list(noise), narrow)


def output_error(net: Network, a_out: Tensor, y: Tensor, narrow: bool = False) -> tuple[Tensor, Tensor]:
    """``e = 1/2 (softmax(logits) - onehot(y))`` on the logit units, 0 on aux units ``[B, n_out]`` (``narrow``: the
    logit units only, ``[B, classes]``), and the batch-summed cross-entropy."""
    out = net.layers[-1]
    logits = out.read(a_out)
    loss = torch.nn.functional.cross_entropy(logits, y, reduction="sum")
    e = 0.5 * (torch.softmax(logits, dim=1) - torch.nn.functional.one_hot(y, net.classes).to(logits.dtype))
    return (e if narrow else out.embed(e)), loss


def message_phase(net: Network, fp: ForwardPass, y: Tensor, message_std: tuple[float, ...] | None = None,
                  generator: torch.Generator | None = None, check: Check = True, step: int | None = None,
                  options: StepOptions = DEFAULT_STEP, part: BatchPart | None = None) -> tuple[list[Message], Tensor]:
    """Top-down: the output error, then each layer's rule makes the message for the layer below.

    **The broadcast channel**: a layer whose rule is direct (``rule.direct``, e.g. DFA) receives instead
    ``rule.direct_message(layer, a, e)`` of the output error ``e`` on the logit units ``[B, classes]``, and the layer
    above it sends it nothing. This is the only non-local signal of a step.

    Returns ``(messages, loss)`` with ``messages[l]`` the message layer l received. ``check``: see
    :data:`sim.linalg.Check` (it reaches the rules too: GP's factorisation checks the conditioning through it);
    ``options``: the step's options, passed to every rule. ``part``: the rows of the global batch this call computes
    (a data-parallel step): the message noise is drawn for the whole batch and cut to them.
    A layer that ran narrow (``fp.narrow``) receives its message about the forwarded units only: the zeros the aux
    units would get are not materialised.
    """
    layers, rules = net.layers, net.rules
    narrow = fp.narrow
    e, loss = output_error(net, fp.outputs[-1], y, narrow[-1])
    if isinstance(check, list):
        check.append(~torch.isfinite(loss))
    elif check and not bool(torch.isfinite(loss)):
        raise _loss_error(net, step)
    msg = rules[-1].top_message(fp.outputs[-1], e)
    broadcast = layers[-1].read(e)  # the broadcast channel's signal: the output error on the logit units
    messages: list[Message | None] = [None] * len(layers)
    for i in range(len(layers) - 1, -1, -1):
        if msg is None:  # layer i's rule takes the output error directly (the broadcast channel)
            msg = rules[i].direct_message(layers[i], fp.outputs[i], broadcast)
            _check_finite(layers[i], msg.d, "direct message (broadcast output error)", step, check)
        if message_std is not None and message_std[i] > 0:
            msg = Message(msg.d + _gaussian(msg.d, message_std[i], generator, part), msg.m)
        messages[i] = msg
        if i == 0:
            break
        if rules[i - 1].direct:
            msg = None  # the layer below hears the broadcast, not this layer
            continue
        down = rules[i].message_down(layers[i], fp.inputs[i], fp.outputs[i], msg, check=check, options=options)
        _check_finite(layers[i - 1], down.d, "target difference (message from above)", step, check)
        _check_finite(layers[i - 1], down.m, "message multiplier", step, check)
        msg = Message(down.d if narrow[i - 1] else layers[i - 1].embed(down.d), down.m)
    return messages, loss


def plasticity_phase(net: Network, fp: ForwardPass, messages: list[Message], check: Check = True,
                     step: int | None = None) -> list[dict[str, Tensor]]:
    """Every layer's raw update from its own input, output and received message (``check``: see :data:`Check`)."""
    updates = []
    for layer, rule, a_in, a, msg in zip(net.layers, net.rules, fp.inputs, fp.outputs, messages):
        upd = rule.plasticity(layer, a_in, a, msg)
        for k, v in upd.items():
            _check_finite(layer, v, f"{k} update", step, check)
        updates.append(upd)
    return updates


def feedback_phase(net: Network, fp: ForwardPass, messages: list[Message], updates: list[dict[str, Tensor]],
                   check: Check = True, step: int | None = None, part: BatchPart | None = None
                   ) -> list[dict[str, Tensor]]:
    """Raw updates of every rule's own parameters (learned feedback), from the layer's own input, output, received
    message and raw update (:meth:`~sim.rules.base.Rule.feedback_plasticity`); ``{}`` for rules without state.
    ``part`` (a data-parallel step) reaches the rules as ``part=``, for the per-sample noise they draw."""
    # passed only when set, so a plugin rule written before data-parallel runs keeps working in one process
    extra = {} if part is None else {"part": part}
    out = []
    for layer, rule, a_in, a, msg, upd in zip(net.layers, net.rules, fp.inputs, fp.outputs, messages, updates):
        fb = rule.feedback_plasticity(layer, a_in, a, msg, upd, **extra)
        for k, v in fb.items():
            _check_finite(layer, v, f"feedback {k} update", step, check)
        out.append(fb)
    return out


def _check_regulariser_alone(net: Network) -> None:
    """Refuse a "regulariser alone" run (``task_updates=False``) in which the regulariser would move nothing, or in
    which a rule's weight decay would move the weights beside it."""
    decaying = sorted({rule.name for rule in net.rules if rule.settings.decay > 0})
    if decaying:
        raise ConfigError(f"train.task_updates: false applies the orthogonality regulariser alone, but rule(s) "
                          f"{', '.join(decaying)} also set a weight decay, which would move the weights too; set "
                          f"settings.{decaying[0]}.decay: 0 for this control", key="train.task_updates")
    if not any(rule.settings.ortho_lambda > 0 and layer.square_weight() is not None
               for layer, rule in zip(net.layers, net.rules)):
        raise ConfigError("train.task_updates: false applies the orthogonality regulariser alone, but no layer is "
                          "regularised (ortho_lambda > 0 on a layer whose weight matrix is square), so no weight "
                          "would ever change; give the rule of a square layer an ortho_lambda, e.g. "
                          "settings.gp.ortho_lambda: 100", key="train.task_updates")


class Scheduler:
    """Orchestrates the phases of training a :class:`Network` and owns its optimiser and noise generator.

    Args:
        net: the network.
        noise: noise floors (default: none).
        seed: seeds the noise generator.
        options: what a step computes and how (:class:`~sim.step_options.StepOptions`: numerics checks, aux
            skipping, regulariser interval, fused Adam, the ``W W^T`` form, the compiled nudge); default: the
            reference step with per-tensor numerics checks. Kept as :attr:`options`.
        parallel: the processes of a data-parallel run (:class:`sim.distributed.Group`); each step's raw updates
            and loss are then summed over them (:meth:`compute`). None (or one process): the single-process step.
    """

    def __init__(self, net: Network, noise: NoiseFloor | None = None, seed: int = 0,
                 options: StepOptions = DEFAULT_STEP, parallel: Group | None = None, task_updates: bool = True
                 ) -> None:
        if not isinstance(options, StepOptions):
            raise ConfigError(f"options must be a StepOptions, got {type(options).__name__}; build one with "
                              "sim.step_options.StepOptions(check_numerics=..., skip_aux=..., ...)")
        if not task_updates:
            _check_regulariser_alone(net)
        self.net = net
        #: False: only the orthogonality regulariser's gradient is applied (the "regulariser alone" control)
        self.task_updates = task_updates
        self.noise = noise or NoiseFloor()
        #: what a step computes and how (frozen)
        self.options = options
        #: the processes whose parts of each batch a step sums (None: this process computes the whole batch)
        self.parallel = parallel if parallel is not None and parallel.world > 1 else None
        depth = len(net.layers)
        self.message_std = self.noise.per_layer("message_std", depth)
        self.activity_std = self.noise.per_layer("activity_std", depth)
        self.generator = torch.Generator(device=net.device).manual_seed(seed_streams(seed, 3)[2])
        groups = []
        for layer, rule in zip(net.layers, net.rules):
            s = rule.settings
            groups.append({"params": [layer.weight, layer.bias], "lr": s.lr, "betas": tuple(s.betas), "eps": s.eps,
                           "name": layer.name})
        # learned state: one group per rule that owns parameters, after every layer's group, with the rule's
        # settings; a rule's decay is decoupled weight decay on its layer's group and its own (Kolen-Pollack)
        for layer, rule, group in zip(net.layers, net.rules, list(groups)):
            s = rule.settings
            own = list(rule.parameters())
            if own:
                groups.append({"params": own, "lr": rule.feedback_lr(), "betas": tuple(s.betas), "eps": s.eps,
                               "name": f"{layer.name}.feedback"})
            if s.decay > 0:
                group["weight_decay"] = s.decay
                if own:
                    groups[-1]["weight_decay"] = s.decay
        #: each group's learning rate as configured (a retry scales them all)
        self.base_lrs = [g["lr"] for g in groups]
        decoupled = {"decoupled_weight_decay": True} if any("weight_decay" in g for g in groups) else {}
        self.optimizer = (torch.optim.Adam(groups, fused=True, **decoupled) if options.fused_adam
                          else torch.optim.Adam(groups, **decoupled))
        self.step_count = 0

    @property
    def numerics(self) -> str:
        """The numerics-check mode: 'tensor', 'step' or 'off' (``options.check_numerics``)."""
        return self.options.check_numerics

    @property
    def check_numerics(self) -> bool:
        """Whether steps check for NaN/Inf at all (:attr:`numerics` is not 'off')."""
        return self.options.checks

    @property
    def narrow(self) -> list[bool]:
        """``narrow[l]``: layer l runs on its forwarded units only (``options.skip_aux``): its rule says so (GP/vGP in
        difference form, :meth:`~sim.rules.base.Rule.skips_aux`) and it gets no message noise (which would make its
        aux units' ``d`` non-zero). Its aux units then receive ``d = 0``, so their activities are never read, their
        nudge, ``delta`` and update rows are zero, and only the first ``width`` columns of ``W^{-1}`` carry anything
        down. Read from the rules' current settings at every step, so a rule switched to the target form afterwards
        computes its aux units again."""
        skip = self.options.skip_aux
        return [skip and layer.square and layer.width < layer.out_shape[0] and rule.skips_aux() and std == 0
                for layer, rule, std in zip(self.net.layers, self.net.rules, self.message_std)]

    # ----- inputs -------------------------------------------------------------------------------------------------
    def _check_batch(self, x: Tensor, y: Tensor, check: Check = True) -> tuple[Tensor, Tensor]:
        net = self.net
        if not isinstance(x, Tensor) or not isinstance(y, Tensor):
            raise ShapeError("x and y must be torch tensors")
        if tuple(x.shape[1:]) != tuple(net.config.input_shape):
            raise ShapeError(f"inputs of shape [B, {', '.join(map(str, net.config.input_shape))}] expected, got "
                             f"{list(x.shape)}; check the dataset's image size against the network's input_shape")
        if y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise ShapeError(f"labels must be a vector of {x.shape[0]} class indices, got shape {list(y.shape)}")
        if y.dtype.is_floating_point or y.dtype == torch.bool:
            raise ShapeError(f"labels must be integer class indices, got {y.dtype}")
        if x.device != net.device or y.device != net.device:
            raise ShapeError(f"the network lives on {net.device} but the batch is on {x.device}/{y.device}; "
                             f"move it with .to('{net.device}')")
        if x.dtype != net.dtype:
            raise ShapeError(f"the network is {net.dtype} but the batch is {x.dtype}; cast it with .to({net.dtype})")
        if isinstance(check, list):
            # deferred: flag bad inputs and labels, and keep the step itself valid (out-of-range labels would stop
            # one_hot, or trip a device-side assert on a GPU); a set flag repeats the step with the checks below
            check.append(~torch.isfinite(x.sum()))
            check.append(((y < 0) | (y >= net.classes)).any())
            y = y.clamp(0, net.classes - 1)
        elif check:
            if not bool(torch.isfinite(x).all()):
                raise NonFiniteError(f"non-finite values in the input batch at step {self.step_count}",
                                     step=self.step_count, layer=net.names[0], quantity="input")
            if bool((y < 0).any()) or bool((y >= net.classes).any()):
                raise ShapeError(f"labels must lie in 0..{net.classes - 1}, got {int(y.min())}..{int(y.max())}")
        return x, y.long()

    def draw_activity_noise(self, x: Tensor, part: BatchPart | None = None) -> list[Tensor | None]:
        """Pre-draw the activity noise of one batch (None where the std is 0), so BP references can replay it;
        ``part``: ``x`` is these rows of a global batch, whose noise is drawn and cut to them."""
        if not any(s > 0 for s in self.activity_std):
            return [None] * len(self.net.layers)
        out, batch = [], x.shape[0]
        for layer, std in zip(self.net.layers, self.activity_std):
            like = torch.empty((batch, *layer.out_shape), dtype=self.net.dtype, device=self.net.device)
            out.append(_gaussian(like, std, self.generator, part) if std > 0 else None)
        return out

    # ----- one step -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def compute(self, x: Tensor, y: Tensor, part: BatchPart | None = None) -> StepResult:
        """Forward, message and plasticity phases on one batch; the weights are not touched.

        With :attr:`parallel` (a data-parallel step) ``x`` and ``y`` are this process's part of the global batch:
        the processes tell each other their parts' sizes (:meth:`sim.distributed.Group.part_of`), every process
        computes its part, and the raw updates (learned feedback included) and the loss of the result are the sums
        over the processes: the step on the global batch. A failure on any process (a NaN/Inf, a singular layer,
        any error) is raised on every process (:meth:`sim.distributed.Group.agree`). ``part`` without
        :attr:`parallel`: compute only these rows of a batch, drawing its noise as the whole batch would (what
        each process of a data-parallel step does; the parts' updates sum to the batch's)."""
        if self.parallel is None:
            return self._local(x, y, part)
        part = self.parallel.part_of(x.shape[0], f"step {self.step_count}")
        with self.parallel.agree(f"computing step {self.step_count}"):
            result = self._local(x, y, part)
        result = self.parallel.reduce_step(self.net, result)
        if self.check_numerics:
            self._check_sums(result)
        return result

    def _check_sums(self, result: StepResult) -> None:
        """Stop where the single-process step stops when only the sum over the processes is non-finite (the
        parts' float sums are finite, the batch's overflows): the loss first, then each layer's updates, as the
        phases check them. The same sums, so the same error, on every process. One host sync; the tensors one by
        one only when something is off."""
        net, step = self.net, self.step_count
        named = [(layer, f"{k} update", v) for layer, upd in zip(net.layers, result.updates) for k, v in upd.items()]
        named += [(layer, f"feedback {k} update", v) for layer, fb in zip(net.layers, result.feedback_updates)
                  for k, v in fb.items()]
        if bool(torch.isfinite(torch.stack([result.loss.double(), *(v.double().sum() for _, _, v in named)])).all()):
            return
        if not bool(torch.isfinite(result.loss)):
            raise _loss_error(net, step)
        for layer, quantity, v in named:
            layer.check_finite(v, quantity, step)

    def _local(self, x: Tensor, y: Tensor, part: BatchPart | None) -> StepResult:
        if self.numerics != "step":
            return self._compute(x, y, self.numerics == "tensor", part)
        state = self.generator.get_state()
        flags: list[Tensor] = []
        result = self._compute(x, y, flags, part)
        if bool(torch.stack(flags).any()):  # the step's one host-device sync
            # Something is non-finite (or a layer looks singular): repeat the step, same noise, checking each tensor
            # as it is made, which stops at the first culprit with its name (or, after a false alarm from a finite
            # overflow of a checksum, returns the same result).
            self.generator.set_state(state)
            result = self._compute(x, y, True, part)
        return result

    def _compute(self, x: Tensor, y: Tensor, check: Check, part: BatchPart | None = None) -> StepResult:
        x, y = self._check_batch(x, y, check)
        fp = forward_phase(self.net, x, self.draw_activity_noise(x, part), self.narrow)
        # check also reaches GP's factorisation: its conditioning check is synchronous (True), collected with the
        # step's flags (list) or skipped (False)
        messages, loss = message_phase(self.net, fp, y, self.message_std, self.generator, check, self.step_count,
                                       self.options, part)
        updates = plasticity_phase(self.net, fp, messages, check, self.step_count)
        feedback = feedback_phase(self.net, fp, messages, updates, check, self.step_count, part)
        logits = self.net.layers[-1].read(fp.outputs[-1])
        return StepResult(loss=loss, logits=logits, forward=fp, messages=messages, updates=updates,
                          feedback_updates=feedback, part=part)

    @torch.no_grad()
    def apply(self, result: StepResult) -> None:
        """Write raw update + regulariser gradient into ``.grad`` and take the Adam step; without
        :attr:`task_updates`, the regulariser gradient alone (nothing for the biases, the unregularised layers and
        the rules' own parameters)."""
        every, task = self.options.ortho_every, self.task_updates
        for layer, rule, upd in zip(self.net.layers, self.net.rules, result.updates):
            # without task updates a parameter gets no gradient at all (None, not zeros): Adam then leaves it and
            # its moments alone, where a zero gradient would still move it by the decaying momentum
            grad_w = upd["weight"] if task else None
            lam = rule.settings.ortho_lambda
            # every layer whose weight matrix is square, under any rule (square_weight: None where it is not)
            matrix = layer.square_weight() if lam > 0 and self.step_count % every == 0 else None
            if matrix is not None:
                reg = regularizer.gradient(matrix, lam * every, self.options.symmetric_gram)
                reg = reg.reshape(upd["weight"].shape)
                # added into the fresh regulariser tensor (a + b == b + a bit for bit): the raw update in
                # ``result`` stays untouched and no third weight-sized tensor is allocated
                grad_w = reg if grad_w is None else reg.add_(grad_w)
            layer.weight.grad = grad_w
            layer.bias.grad = upd["bias"] if task else None
        for rule, fb in zip(self.net.rules, result.feedback_updates):
            for name, grad in fb.items():
                rule.get_parameter(name).grad = grad if task else None
        self.optimizer.step()
        for layer, rule in zip(self.net.layers, self.net.rules):
            rule.after_step(layer)
        self.step_count += 1

    def train_step(self, x: Tensor, y: Tensor) -> StepResult:
        """One full training step; returns what it computed (loss, logits, cache, messages, raw updates)."""
        result = self.compute(x, y)
        self.apply(result)
        return result

    # ----- state --------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Optimiser state, noise generator state and step counter (the network's weights are ``net.state_dict``)."""
        return {"optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(),
                "step": self.step_count}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.step_count = int(state["step"])
