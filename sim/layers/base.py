"""What every layer offers: its local messages (REFERENCE.md sections 1-4).

A layer is an independent ``nn.Module`` on one device. It sees only its own input ``a_in``, its own output ``a`` and
the message it receives; the scheduler owns the activation cache and passes these in, so a layer holds no hidden
per-step state. Messages:

* ``forward(a_in, noise=None, units=None) -> a = f(z + noise)``: full output, aux units included,
  ``[B, *out_shape]``, or only the first ``units`` units/channels (subclasses implement the affine
  ``preactivation(a_in, units) -> z``);
* ``transpose(delta) -> W^T delta``: BP's message about the input;
* ``feedback(delta, B) -> B^T delta``: FA's message through a fixed feedback weight of W's shape;
* ``inverse(v, factors) -> W^{-1} v`` and ``inverse_target(y, factors) -> W^{-1}(y - b)``: GP's messages in
  difference and target form (square layers only);
* ``local_gradients(a_in, delta)``: the layer's own parameter update from ``delta = dLocalLoss/dz``.

**Skipping aux units.** In GP's difference form a square layer's aux units receive ``d = 0`` (their target is their
own activity), so their nudge, their ``delta`` and their weight rows' update are exactly zero, and only the first
``width`` columns of ``W^{-1}`` carry anything down. A layer can therefore run forward with ``units=width``, take a
message ``v`` ``[B, width, ...]`` in :meth:`inverse` (which then applies only those columns of the inverse), and
return full-shape updates whose aux rows are zeros from :meth:`local_gradients` given a ``delta`` of ``width`` rows.
The scheduler decides when this is allowed (:class:`~sim.schedule.Scheduler`, ``StepOptions.skip_aux``); the values
are those of the full computation up to float rounding.

The message methods are declared on :class:`Layer`; a layer kind that cannot send one (e.g. a future pooling layer
without an inverse) leaves it to the base class, which raises a :class:`~sim.errors.ShapeError` naming the layer,
its kind and the message. The linear algebra behind the inverses lives in :mod:`sim.linalg`.

**The input's activation.** ``input_activation`` is the activation the layer's input already went through: the
layer below's ``activation`` (leaky ReLU below a hidden layer), :data:`~sim.activation.LINEAR` for the first layer
(the network input). It is a fixed property of the connection, set once by :class:`~sim.network.Network` when it
stacks the layers (a layer built on its own keeps the default, ``LINEAR``), not per-step state: a rule whose feedback
produces the input's activity itself, such as ``dtp``'s ``g(h) = s(V h + c)`` (Lee et al. 2015), reads it from its own
layer, so no rule looks at a neighbour.

Shapes are per sample: ``in_shape`` is what the layer reads (the forwarded part of the layer below), ``out_shape`` is
its full output (aux included); ``read(a)`` keeps the forwarded part, ``embed(d)`` is its adjoint (zeros on aux).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sim.activation import LINEAR, Activation
from sim.errors import NonFiniteError, ShapeError
from sim.linalg import Check, InverseFactors, factorize


class Layer(nn.Module):
    """Base class of all layers; subclasses implement the message methods listed in the module docstring."""

    #: activation applied after the affine map
    activation: Activation
    #: activation the layer's input went through (the layer below's; LINEAR for the network input); set by Network
    input_activation: Activation = LINEAR
    #: True when the weight is square (invertible) and the layer may carry aux units
    square: bool
    #: per-sample shape the layer reads, e.g. ``(1024,)`` or ``(C, H, W)``
    in_shape: tuple[int, ...]
    #: per-sample shape of the full output, aux units included
    out_shape: tuple[int, ...]
    #: units (dense) or channels (conv) forwarded to the next layer
    width: int

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    # ----- shapes -------------------------------------------------------------------------------------------------
    @property
    def read_shape(self) -> tuple[int, ...]:
        """Per-sample shape of the forwarded part of the output."""
        return (self.width, *self.out_shape[1:])

    def read(self, a: Tensor) -> Tensor:
        """The forwarded part of the output ``[B, *out_shape] -> [B, *read_shape]`` (first ``width`` units)."""
        return a[:, : self.width]

    def embed(self, d: Tensor) -> Tensor:
        """Adjoint of :meth:`read`: a message about the forwarded part, zero on aux units (target = own activity)."""
        if d.shape[1] == self.out_shape[0]:
            return d
        pad = d.new_zeros((d.shape[0], self.out_shape[0] - d.shape[1], *d.shape[2:]))
        return torch.cat([d, pad], dim=1)

    def check_input(self, a_in: Tensor) -> None:
        """Refuse an input of the wrong shape, dtype or device with a message instead of a torch traceback."""
        w = self.weight
        if tuple(a_in.shape[1:]) != tuple(self.in_shape):
            raise ShapeError(
                f"layer {self.name!r} reads inputs of shape [B, {', '.join(map(str, self.in_shape))}], "
                f"got {list(a_in.shape)}; check the layer widths and the data's image shape."
            )
        if a_in.dtype != w.dtype:
            raise ShapeError(
                f"layer {self.name!r} holds {w.dtype} weights but got a {a_in.dtype} input; cast the input "
                f"(x.to({w.dtype})) or build the network with dtype={str(a_in.dtype).removeprefix('torch.')}."
            )
        if a_in.device != w.device:
            raise ShapeError(
                f"layer {self.name!r} lives on {w.device} but got an input on {a_in.device}; move the batch with "
                f"x.to('{w.device}')."
            )

    # ----- forward ------------------------------------------------------------------------------------------------
    def preactivation(self, a_in: Tensor, units: int | None = None) -> Tensor:
        """The affine map ``z`` ``[B, *in_shape] -> [B, *out_shape]`` (only the first ``units`` output units or
        channels if given)."""
        raise NotImplementedError

    def forward(self, a_in: Tensor, noise: Tensor | None = None, units: int | None = None) -> Tensor:
        """``a = f(z + noise)`` ``[B, *in_shape] -> [B, *out_shape]``, aux units included, or ``[B, units, ...]``
        when ``units`` is given (``noise`` is then still the full ``[B, *out_shape]`` draw, so the noise stream does
        not depend on what is computed).

        Activity noise enters the membrane potential ``z``, so ``f'`` read off ``a`` and ``f^{-1}(a)`` stay those of
        the noisy neuron and BP, FA and GP all see one consistent forward pass.
        """
        z = self.preactivation(a_in, units)
        if noise is not None:
            z = z + (noise if units is None else noise[:, :units])
        return self.activation(z)

    # ----- top-down messages (declared here, implemented by every layer kind) --------------------------------------
    def _unsupported(self, message: str) -> ShapeError:
        return ShapeError(f"layer {self.name!r} ({type(self).__name__}) does not implement {message}; give this "
                          "layer a rule that does not need it, or implement it in its layer kind")

    def transpose(self, delta: Tensor) -> Tensor:
        """BP's message about the input, ``W^T delta``: ``delta = dLoss/dz`` ``[B, *out_shape]`` ->
        ``[B, *in_shape]``."""
        raise self._unsupported("transpose (BP's message W^T delta)")

    def feedback(self, delta: Tensor, feedback_weight: Tensor) -> Tensor:
        """FA's message ``B^T delta`` through a fixed feedback weight of the weight's shape: ``delta``
        ``[B, *out_shape]`` -> ``[B, *in_shape]``."""
        raise self._unsupported("feedback (FA's message B^T delta)")

    def inverse(self, v: Tensor, factors: InverseFactors) -> Tensor:
        """GP's difference-form message ``W^{-1} v`` for a pre-activation difference ``v`` ``[B, *out_shape]`` ->
        ``[B, *in_shape]`` (square layers). ``v`` ``[B, k, ...]`` with ``k`` below ``out_shape[0]`` stands for ``v``
        padded with zeros on the aux units (*Skipping aux units*). ``factors``: this step's :meth:`factorize`."""
        raise self._unsupported("inverse (GP's difference-form message W^-1 v)")

    def inverse_target(self, y: Tensor, factors: InverseFactors, a_in: Tensor | None = None) -> Tensor:
        """GP's target-form message ``W^{-1}(y - b)`` for a pre-activation target ``y`` ``[B, *out_shape]`` ->
        ``[B, *in_shape]`` (square layers); ``a_in`` ``[B, *in_shape]`` is the forward input, which a layer whose
        patches overlap (conv) needs to count each input once."""
        raise self._unsupported("inverse_target (GP's target-form message W^-1 (y - b))")

    # ----- plasticity ---------------------------------------------------------------------------------------------
    def local_gradients(self, a_in: Tensor, delta: Tensor) -> dict[str, Tensor]:
        """The layer's own update from its input ``a_in`` ``[B, *in_shape]`` and ``delta = dLocalLoss/dz``
        ``[B, *out_shape]`` (or its first ``k`` units): ``{'weight': [*weight.shape], 'bias': [out_shape[0]]}``,
        full parameter shapes (zero rows beyond ``k``, :meth:`pad_rows`)."""
        raise self._unsupported("local_gradients (the weight and bias update)")

    def pad_rows(self, grads: dict[str, Tensor]) -> dict[str, Tensor]:
        """Embed updates of the first ``k`` output rows (``weight`` ``[k, ...]``, ``bias`` ``[k]``) into the full
        parameter shapes with zeros for the aux rows (see *Skipping aux units*); full-shape updates pass through."""
        n = self.out_shape[0]
        k = grads["bias"].shape[0]
        if k == n:
            return grads
        weight = grads["weight"].new_zeros((n, *grads["weight"].shape[1:]))
        weight[:k] = grads["weight"]
        bias = grads["bias"].new_zeros(n)
        bias[:k] = grads["bias"]
        return {"weight": weight, "bias": bias}

    # ----- the square matrix --------------------------------------------------------------------------------------
    def square_matrix(self) -> Tensor:
        """The weight as an ``n x n`` matrix (square layers only), the object of inversion and the regulariser."""
        raise NotImplementedError

    def square_weight(self) -> Tensor | None:
        """The weight as an ``n x n`` matrix wherever it is square, whether or not the layer is built invertible
        (a 1024 -> 1024 layer under BP or FA too), else None: what the orthogonality regulariser and the
        ``ortho_error`` record act on, under any rule (issue 15). A square layer's is :meth:`square_matrix`."""
        if self.square:
            return self.square_matrix()
        w = self.weight.reshape(self.weight.shape[0], -1)
        return w if w.shape[0] == w.shape[1] else None

    def forms_inverse_columns(self, k: int, batch: int) -> bool:
        """Whether :meth:`inverse` sends a message of ``k`` units (channels) and ``batch`` samples through the first
        ``k`` columns of the inverse, formed from the LU factors (``2 n^2 k`` flops), rather than solving for the
        zero-padded batch. The one place this is decided: the benchmark's FLOP count asks it too."""
        raise NotImplementedError

    def factorize(self, method: str = "lu", check: Check = True) -> InverseFactors:
        """Factorise this layer's square matrix ``[n, n]`` for this step's inverse messages
        (:func:`sim.linalg.factorize`; ``check``: see :data:`sim.linalg.Check`)."""
        if not self.square:
            raise ShapeError(f"layer {self.name!r} is not square and cannot be inverted")
        return factorize(self.square_matrix().detach(), layer=self.name, method=method, check=check)

    def check_finite(self, tensor: Tensor, quantity: str, step: int | None = None) -> None:
        """Raise :class:`NonFiniteError` naming this layer, the quantity and the step if ``tensor`` has NaN/Inf."""
        if not bool(torch.isfinite(tensor).all()):
            where = f" at step {step}" if step is not None else ""
            raise NonFiniteError(
                f"non-finite {quantity} in layer {self.name!r}{where}; lower the learning rate, check the input "
                "data for NaN/Inf, or raise ortho_lambda.",
                step=step, layer=self.name, quantity=quantity,
            )
