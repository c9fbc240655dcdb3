"""Dense layers: the non-square first layer, square hidden layers with aux units, and the output layer.

``z = W a_in + b``, ``a = f(z)`` (REFERENCE.md section 1). The input is flattened, so a dense layer can sit on top of
a conv stack (the flatten boundary): messages about its input come back in the input's own shape.

A square layer has ``W`` of shape ``[n, n]`` with ``n`` = the flattened input size; its first ``width`` outputs are
forwarded and the rest are aux units, kept because the exact inverse needs the full output. A non-square layer has
``W`` of shape ``[width, n]`` and no aux units.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from sim.activation import Activation
from sim.errors import ShapeError
from sim.layers.base import Layer
from sim.linalg import InverseFactors, orthogonal


class Dense(Layer):
    """A fully connected layer.

    Args:
        name: the layer's name in messages, archives and errors.
        in_shape: per-sample input shape, e.g. ``(3072,)`` or ``(3, 32, 32)`` (flattened internally).
        width: units forwarded to the next layer (the logits for the output layer).
        square: build ``W`` as ``n x n`` (invertible, ``n - width`` aux units) instead of ``width x n``.
        activation: leaky ReLU for hidden layers, linear for the output.
        generator: seeds the orthogonal initialisation (gain 1); biases start at zero.
    """

    def __init__(self, name: str, in_shape: tuple[int, ...], width: int, *, square: bool, activation: Activation,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                 generator: torch.Generator | None = None) -> None:
        super().__init__(name)
        n_in = math.prod(in_shape)
        if width < 1:
            raise ShapeError(f"layer {name!r}: width must be at least 1, got {width}")
        if square and width > n_in:
            raise ShapeError(
                f"layer {name!r}: a square (invertible) layer reading {n_in} units can forward at most {n_in}, "
                f"but width {width} was asked; the widths do not chain. Make this layer no wider than the one below "
                "or give it a non-inverting rule (bp, fa)."
            )
        self.in_shape = tuple(in_shape)
        self.width = width
        self.square = square
        self.activation = activation
        n_out = n_in if square else width
        self.out_shape = (n_out,)
        self.weight = nn.Parameter(torch.empty(n_out, n_in, dtype=dtype, device=device))
        self.bias = nn.Parameter(torch.zeros(n_out, dtype=dtype, device=device))
        with torch.no_grad():
            self.weight.copy_(orthogonal((n_out, n_in), self.weight, generator))

    def extra_repr(self) -> str:
        kind = "square" if self.square else "plain"
        return f"{self.name}: {math.prod(self.in_shape)} -> {self.out_shape[0]} ({kind}, forwards {self.width}), " \
               f"{self.activation.name}"

    # ----- forward ------------------------------------------------------------------------------------------------
    def preactivation(self, a_in: Tensor, units: int | None = None) -> Tensor:
        """``z = W a_in + b``: ``[B, *in_shape] -> [B, n_out]``, aux units included (``[B, units]``: the first
        ``units`` rows of ``W`` only)."""
        w, b = (self.weight, self.bias) if units is None else (self.weight[:units], self.bias[:units])
        return torch.nn.functional.linear(a_in.reshape(a_in.shape[0], -1), w, b)

    def _unflatten(self, g: Tensor) -> Tensor:
        return g.reshape(g.shape[0], *self.in_shape)

    # ----- top-down messages --------------------------------------------------------------------------------------
    def transpose(self, delta: Tensor) -> Tensor:
        """BP's message ``W^T delta``: ``[B, n_out] -> [B, *in_shape]``."""
        return self._unflatten(delta @ self.weight)

    def feedback(self, delta: Tensor, feedback_weight: Tensor) -> Tensor:
        """FA's message ``B^T delta`` through a fixed matrix of W's shape: ``[B, n_out] -> [B, *in_shape]``."""
        return self._unflatten(delta @ feedback_weight)

    def square_matrix(self) -> Tensor:
        return self.weight

    def inverse(self, v: Tensor, factors: InverseFactors) -> Tensor:
        """Difference form: ``W^{-1} v`` for a pre-activation difference ``v`` ``[B, n] -> [B, *in_shape]``.

        ``v`` ``[B, k]`` with ``k < n`` stands for ``v`` padded with zeros on the aux units; only the first ``k``
        columns of ``W^{-1}`` then matter (:meth:`forms_inverse_columns`).
        """
        k = v.shape[1]
        if self.forms_inverse_columns(k, v.shape[0]):
            return self._unflatten(v @ factors.columns(k).transpose(0, 1))
        return self._unflatten(factors.solve(self.embed(v).transpose(0, 1)).transpose(0, 1))

    def forms_inverse_columns(self, k: int, batch: int) -> bool:
        """Only for a message narrower than the layer (aux units skipped) and when forming its ``k`` columns
        (``2 n^2 k`` flops) is cheaper than solving for the padded batch (``2 n^2 B``), as for the output layer's few
        logits."""
        return k < min(self.out_shape[0], batch)

    def inverse_target(self, y: Tensor, factors: InverseFactors, a_in: Tensor | None = None) -> Tensor:
        """Target form: ``W^{-1}(y - b)`` for a pre-activation target ``y`` ``[B, n] -> [B, *in_shape]``.

        ``a_in`` (the forward input) is not needed by a dense layer; conv layers use it for the overlap correction.
        """
        return self.inverse(y - self.bias, factors)

    # ----- plasticity ---------------------------------------------------------------------------------------------
    def local_gradients(self, a_in: Tensor, delta: Tensor) -> dict[str, Tensor]:
        """Local-loss gradient from ``delta = dLoss/dz`` ``[B, n_out]``: ``dW = delta^T a_in``, ``db = sum delta``
        (``[n_out, n_in]``, ``[n_out]``). A ``delta`` of the first ``k`` units only gives zero rows beyond ``k``."""
        return self.pad_rows({"weight": delta.transpose(0, 1) @ a_in.reshape(a_in.shape[0], -1),
                              "bias": delta.sum(0)})
