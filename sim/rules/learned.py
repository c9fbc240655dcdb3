"""A learned inverse of one layer, trained on a local reconstruction loss: the state shared by ``dtp`` and
``lgp`` (issue 13; docs/rules.md).

Both learn ``V = Q^T`` ``[n_in, n_out]`` and ``c`` ``[*in_shape]``; they differ in where the nonlinearity sits.
``dtp`` uses Lee et al.'s ``g(h) = s_{l-1}(V h + c)`` with the receiving layer's activation (:mod:`sim.rules.dtp`
overrides :meth:`LearnedInverse.difference` and :meth:`LearnedInverse.reconstruction_residual`). What follows is
this module's own form, ``lgp``'s (GP's exact inverse with ``V`` learned): the feedback mapping of layer ``l``
(``W`` ``[n_out, n_in]``, bias ``b``, activation ``f``) is

    g(h) = V f^{-1}(h) + c,          V = Q^T [n_in, n_out],  c [*in_shape],

with ``Q`` a parameter of ``W``'s shape applied as FA applies its ``B`` (:meth:`~sim.layers.base.Layer.feedback`:
``Q^T v`` for a dense layer, the transposed convolution with kernel ``Q`` for a conv layer, every patch
reconstructed as ``Q_mat^T v_p`` and overlapping patches summed, as GP's conv inverse does),

the layer's own inverse form: ``f^{-1}`` is the layer's (known, exact) activation inverse and only the linear part
is learned, so ``g`` can equal the exact inverse (``V = W^{-1}``, ``c = -W^{-1} b``) and the difference
``g(a + d) - g(a) = V (f^{-1}(a + d) - f^{-1}(a))`` is computed without cancellation
(:meth:`~sim.activation.Activation.inverse_difference`), whatever the size of ``d`` (a GP layer above sends
differences ~eta). ``Q`` starts orthogonal (float64 draw from the feedback generator, like FA's ``B``), ``c`` at 0.

**Reconstruction loss** (batch-summed), with input noise ``xi ~ N(0, s^2)`` (``s`` = ``reconstruction_std``),
``h = f(W a_in + b)`` and ``h~ = f(W (a_in + xi) + b)`` (the layer's own forward pass on its own input):

* ``dtp`` (Lee et al. 2015, eq. 13): ``L = sum ||g(h~) - (a_in + xi)||^2`` (with dtp's own ``g``);
* ``drl`` (Meulemans et al. 2020's difference reconstruction loss, restricted to one layer, so it stays local):
  ``L = sum ||g(h~) - g(h) - xi||^2``, in this module's form ``sum ||V (f^{-1}(h~) - f^{-1}(h)) - xi||^2`` (``c``
  drops out; ``lgp``'s loss).

In this module's form both are least squares in ``(Q, c)`` (dense: ``dL/dV = 2 R^T r``, ``dL/dc = 2 sum_b R`` with
the residual ``R`` and ``r`` what ``V`` multiplies); the gradient is taken by autograd through
:meth:`~sim.layers.base.Layer.feedback` on detached copies (so one code path serves dense and conv layers) and
returned by :meth:`~sim.rules.base.Rule.feedback_plasticity`, so they land in ``.grad`` of the rule's own Adam group
(learning rate ``feedback_lr``). The noise is a pure function of a per-layer seed and the number of optimiser steps
so far (buffers ``seed`` and ``draws``, advanced in ``after_step``, as ``brsf`` does), so every call within one step
draws the same noise and a resumed run draws the same noise as an uninterrupted one.

**Recorded** (:meth:`state_metrics`): ``reconstruction_loss``, the mean over samples and input units of ``R^2`` at
the last step (a buffer, checkpointed with the rest); ``feedback_angle``, degrees between ``V`` and ``W^+``
(``W^{-1}`` for a square layer, the pseudo-inverse otherwise: the minimiser of the noise term of both losses in this
module's form; for a conv layer, between ``Q_mat^T`` and ``M^+`` of the patch matrix, the per-patch inverse GP uses).
In dtp's form, with activations on both sides, ``W^+`` is the exact minimiser only for linear ones: there the angle
says how far ``V`` is from the linear inverse.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from sim.layers.base import Layer
from sim.linalg import orthogonal
from sim.rules.base import Rule, RuleSettings
from sim.step_options import BatchPart, randn


class LearnedInverse(Rule):
    """Base of the rules with a learned feedback mapping ``(Q, c)``; its own form ``g(h) = Q^T f^{-1}(h) + c``
    (module docstring; ``dtp`` overrides it)."""

    #: the reconstruction loss (``'dtp'`` or ``'drl'``); ``None``: read the ``reconstruction`` setting
    loss_kind: str | None = None

    def __init__(self, layer: Layer, settings: RuleSettings, generator: torch.Generator | None = None) -> None:
        super().__init__(layer, settings, generator)
        w = layer.weight
        self.inverse_weight = nn.Parameter(orthogonal(w.shape, w, generator))
        self.inverse_bias = nn.Parameter(torch.zeros(layer.in_shape, dtype=w.dtype, device=w.device))
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device="cpu").item())
        self.register_buffer("seed", torch.tensor(seed, dtype=torch.int64, device=w.device))
        self.register_buffer("draws", torch.zeros((), dtype=torch.int64, device=w.device))
        self.register_buffer("last_reconstruction_loss", torch.tensor(math.nan, dtype=torch.float64, device=w.device))
        self._pending_loss: Tensor | None = None

    @property
    def reconstruction(self) -> str:
        return self.loss_kind or self.settings.reconstruction

    def feedback_lr(self) -> float:
        return self.settings.feedback_lr

    # ----- the mapping ------------------------------------------------------------------------------------------------
    def invert_difference(self, layer: Layer, v: Tensor) -> Tensor:
        """``V v`` for a pre-activation difference ``v`` ``[B, *out_shape]`` -> ``[B, *in_shape]``; ``v`` with fewer
        units (channels) than the output stands for ``v`` zero on the aux units (:meth:`Layer.embed`)."""
        return layer.feedback(layer.embed(v), self.inverse_weight.detach())

    def difference(self, layer: Layer, a: Tensor, d: Tensor) -> Tensor:
        """``g(a + d) - g(a) = V (f^{-1}(a + d) - f^{-1}(a))`` ``[B, *out_shape] -> [B, *in_shape]``, without
        cancellation."""
        return self.invert_difference(layer, layer.activation.inverse_difference(a, d))

    # ----- the reconstruction loss --------------------------------------------------------------------------------
    def noise(self, a_in: Tensor, part: BatchPart | None = None) -> Tensor:
        """This step's input noise ``xi`` ``[B, *in_shape]``: a pure function of ``(seed, draws)``; with ``part``
        (a data-parallel step) the part's rows of the global batch's noise."""
        gen = torch.Generator(device=a_in.device).manual_seed(int(self.seed) + int(self.draws))
        return randn(a_in.shape, generator=gen, dtype=a_in.dtype, device=a_in.device, part=part) \
            * self.settings.reconstruction_std

    def reconstruction_residual(self, layer: Layer, a_in: Tensor, xi: Tensor, q: Tensor, c: Tensor) -> Tensor:
        """The residual ``R`` ``[B, *in_shape]`` of the reconstruction loss, differentiable in ``(q, c)`` (the
        mapping's parameters, passed in as leaves): ``dtp``: ``g(h~) - (a_in + xi)``, ``drl``: ``g(h~) - g(h) - xi``,
        here with this module's ``g(h) = V f^{-1}(h) + c`` (``dtp`` overrides it with Lee's form)."""
        act = layer.activation
        with torch.no_grad():
            h, h_noisy = layer(a_in), layer(a_in + xi)
            if self.reconstruction == "drl":
                r, target = act.inverse_difference(h, h_noisy - h), xi
            else:
                r, target = act.inverse(h_noisy), a_in + xi
        out = layer.feedback(r, q)
        return (out + c if self.reconstruction == "dtp" else out) - target

    def reconstruction_gradients(self, layer: Layer, a_in: Tensor, part: BatchPart | None = None
                                 ) -> tuple[Tensor, dict[str, Tensor]]:
        """``(loss, grads)``: the mean of ``R^2`` (a 0-dim tensor) and the gradient of ``sum R^2`` by parameter name.

        With ``part`` (``a_in`` holds these rows of a global batch), ``loss`` is this part's share of the global
        batch's mean, ``sum R^2 / (total x units)``, so the shares summed over the processes are the mean."""
        xi = self.noise(a_in, part)
        with torch.enable_grad():
            q = self.inverse_weight.detach().requires_grad_(True)
            c = self.inverse_bias.detach().requires_grad_(True)
            residual = self.reconstruction_residual(layer, a_in, xi, q, c)
            loss = residual.pow(2).sum()
            grad_q, grad_c = torch.autograd.grad(loss, (q, c), allow_unused=True)
        grad_c = torch.zeros_like(self.inverse_bias) if grad_c is None else grad_c
        squares = residual.detach().pow(2)
        share = squares.mean() if part is None else squares.sum() / (part.total * math.prod(squares.shape[1:]))
        return share, {"inverse_weight": grad_q, "inverse_bias": grad_c}

    def feedback_plasticity(self, layer: Layer, a_in: Tensor, a: Tensor, msg, update: dict[str, Tensor], *,
                            part: BatchPart | None = None) -> dict[str, Tensor]:
        """The reconstruction loss's gradient ``{'inverse_weight', 'inverse_bias'}`` (zero for ``c`` under ``drl``,
        where it drops out); its loss is recorded for :meth:`state_metrics` when the step is applied."""
        loss, grads = self.reconstruction_gradients(layer, a_in, part)
        self._pending_loss = loss  # recorded only if this step is applied (after_step): a compute-only call (an
        return grads               # angle measurement, a probe) leaves the recorded state untouched

    def batch_sums(self) -> list[Tensor]:
        """The pending reconstruction loss: in a data-parallel step each process's share of the global mean."""
        return [] if self._pending_loss is None else [self._pending_loss]

    @torch.no_grad()
    def after_step(self, layer: Layer) -> None:
        """The applied step's reconstruction loss becomes the recorded one; next step's noise is a new draw."""
        if self._pending_loss is not None:
            self.last_reconstruction_loss.copy_(self._pending_loss)
            self._pending_loss = None
        self.draws += 1

    @torch.no_grad()
    def state_metrics(self, layer: Layer) -> dict[str, float]:
        from sim.correspondence import angle_deg

        w = layer.weight.detach().double().reshape(layer.weight.shape[0], -1)  # dense W, or conv's patch matrix
        target = torch.linalg.inv(w) if w.shape[0] == w.shape[1] else torch.linalg.pinv(w)
        q = self.inverse_weight.detach().reshape(w.shape)
        return {"feedback_angle": angle_deg(q.T, target),
                "reconstruction_loss": float(self.last_reconstruction_loss)}
