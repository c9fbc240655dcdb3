"""A learned inverse of one dense layer, trained on a local reconstruction loss: the state shared by ``dtp`` and
``lgp`` (issue 13; docs/rules.md).

The feedback mapping of layer ``l`` (``W`` ``[n_out, n_in]``, bias ``b``, activation ``f``) is

    g(h) = V f^{-1}(h) + c,          V [n_in, n_out],  c [n_in],

the layer's own inverse form: ``f^{-1}`` is the layer's (known, exact) activation inverse and only the linear part
is learned, so ``g`` can equal the exact inverse (``V = W^{-1}``, ``c = -W^{-1} b``) and the difference
``g(a + d) - g(a) = V (f^{-1}(a + d) - f^{-1}(a))`` is computed without cancellation
(:meth:`~sim.activation.Activation.inverse_difference`), whatever the size of ``d`` (a GP layer above sends
differences ~eta). ``V`` starts orthogonal (float64 draw from the feedback generator, like FA's ``B``), ``c`` at 0.

**Reconstruction loss** (batch-summed), with input noise ``xi ~ N(0, s^2)`` (``s`` = ``reconstruction_std``),
``h = f(W a_in + b)`` and ``h~ = f(W (a_in + xi) + b)`` (the layer's own forward pass on its own input):

* ``dtp`` (Lee et al. 2015, eq. 13): ``L = sum ||g(h~) - (a_in + xi)||^2``;
* ``drl`` (Meulemans et al. 2020's difference reconstruction loss, restricted to one layer, so it stays local):
  ``L = sum ||g(h~) - g(h) - xi||^2 = sum ||V (f^{-1}(h~) - f^{-1}(h)) - xi||^2`` (``c`` drops out; ``lgp``'s loss).

Both are least squares in ``(V, c)``: with the residual ``R`` ``[B, n_in]`` and ``r`` ``[B, n_out]`` the vector
``V`` multiplies, ``dL/dV = 2 R^T r`` and ``dL/dc = 2 sum_b R``, computed in closed form (no autograd) and returned by
:meth:`~sim.rules.base.Rule.feedback_plasticity`, so they land in ``.grad`` of the rule's own Adam group (learning
rate ``feedback_lr``). The noise is a pure function of a per-layer seed and the number of optimiser steps so far
(buffers ``seed`` and ``draws``, advanced in ``after_step``, as ``brsf`` does), so every call within one step draws
the same noise and a resumed run draws the same noise as an uninterrupted one.

**Recorded** (:meth:`state_metrics`): ``reconstruction_loss``, the mean over samples and input units of ``R^2`` at
the last step (a buffer, checkpointed with the rest); ``feedback_angle``, degrees between ``V`` and ``W^+``
(``W^{-1}`` for a square layer, the pseudo-inverse otherwise: the minimiser of the noise term of both losses).

Dense layers only: a conv layer's inverse is a transposed convolution (REFERENCE.md section 4), not a learned dense
map; such a layer is refused with the fix.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from sim.errors import ShapeError
from sim.layers.base import Layer
from sim.rules.base import Rule, RuleSettings


class LearnedInverse(Rule):
    """Base of the rules with a learned inverse ``g(h) = V f^{-1}(h) + c`` (module docstring)."""

    #: the reconstruction loss (``'dtp'`` or ``'drl'``); ``None``: read the ``reconstruction`` setting
    loss_kind: str | None = None

    def __init__(self, layer: Layer, settings: RuleSettings, generator: torch.Generator | None = None) -> None:
        super().__init__(layer, settings, generator)
        w = layer.weight
        if w.dim() != 2:
            raise ShapeError(f"layer {layer.name!r} ({type(layer).__name__}): rule {self.name!r} learns a dense "
                             "inverse and takes dense layers only; give this layer another rule "
                             "(e.g. gp inverts conv layers exactly)")
        n_out, n_in = w.shape
        init = torch.empty((n_in, n_out), dtype=torch.float64)
        nn.init.orthogonal_(init, gain=1.0, generator=generator)
        self.inverse_weight = nn.Parameter(init.to(dtype=w.dtype, device=w.device))
        self.inverse_bias = nn.Parameter(torch.zeros(n_in, dtype=w.dtype, device=w.device))
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device="cpu").item())
        self.register_buffer("seed", torch.tensor(seed, dtype=torch.int64, device=w.device))
        self.register_buffer("draws", torch.zeros((), dtype=torch.int64, device=w.device))
        self.register_buffer("last_reconstruction_loss", torch.tensor(math.nan, dtype=torch.float64, device=w.device))

    @property
    def reconstruction(self) -> str:
        return self.loss_kind or self.settings.reconstruction

    def feedback_lr(self) -> float:
        return self.settings.feedback_lr

    # ----- the mapping ------------------------------------------------------------------------------------------------
    def invert_difference(self, v: Tensor) -> Tensor:
        """``V v`` for a pre-activation difference ``v`` ``[B, k]`` (``k <= n_out``: the first ``k`` units, the rest
        zero, as :meth:`~sim.layers.base.Layer.inverse`) -> ``[B, n_in]``."""
        return v @ self.inverse_weight.detach()[:, : v.shape[1]].T

    def difference(self, layer: Layer, a: Tensor, d: Tensor) -> Tensor:
        """``g(a + d) - g(a) = V (f^{-1}(a + d) - f^{-1}(a))`` ``[B, n_out] -> [B, *in_shape]``,
        without cancellation."""
        v = layer.activation.inverse_difference(a, d)
        return self.invert_difference(v).reshape(a.shape[0], *layer.in_shape)

    # ----- the reconstruction loss --------------------------------------------------------------------------------
    def noise(self, a_in: Tensor) -> Tensor:
        """This step's input noise ``xi`` ``[B, *in_shape]``: a pure function of ``(seed, draws)``."""
        gen = torch.Generator(device=a_in.device).manual_seed(int(self.seed) + int(self.draws))
        return torch.randn(a_in.shape, generator=gen, dtype=a_in.dtype, device=a_in.device) \
            * self.settings.reconstruction_std

    @torch.no_grad()
    def residual(self, layer: Layer, a_in: Tensor) -> tuple[Tensor, Tensor]:
        """``(R, r)``: the reconstruction residual ``[B, n_in]`` and what ``V`` multiplies ``[B, n_out]``."""
        xi = self.noise(a_in)
        act = layer.activation
        h, h_noisy = layer(a_in), layer(a_in + xi)
        batch = a_in.shape[0]
        V = self.inverse_weight.detach()
        if self.reconstruction == "drl":
            r = act.inverse_difference(h, h_noisy - h)
            return r @ V.T - xi.reshape(batch, -1), r
        r = act.inverse(h_noisy)
        return r @ V.T + self.inverse_bias.detach() - (a_in + xi).reshape(batch, -1), r

    def feedback_plasticity(self, layer: Layer, a_in: Tensor, a: Tensor, msg, update: dict[str, Tensor]
                            ) -> dict[str, Tensor]:
        """The reconstruction loss's gradient ``{'inverse_weight': 2 R^T r, 'inverse_bias': 2 sum R}`` (zero for
        ``c`` under ``drl``, where it drops out); records the loss for :meth:`state_metrics`."""
        R, r = self.residual(layer, a_in)
        self.last_reconstruction_loss.copy_(R.pow(2).mean())
        grad_c = 2 * R.sum(0) if self.reconstruction == "dtp" else torch.zeros_like(self.inverse_bias)
        return {"inverse_weight": 2 * R.T @ r, "inverse_bias": grad_c}

    @torch.no_grad()
    def after_step(self, layer: Layer) -> None:
        """Next step's noise is a new draw."""
        self.draws += 1

    @torch.no_grad()
    def state_metrics(self, layer: Layer) -> dict[str, float]:
        from sim.correspondence import angle_deg

        w = layer.weight.detach().double()
        target = torch.linalg.inv(w) if w.shape[0] == w.shape[1] else torch.linalg.pinv(w)
        return {"feedback_angle": angle_deg(self.inverse_weight, target),
                "reconstruction_loss": float(self.last_reconstruction_loss)}
