"""Conv layers: the non-square first conv layer and square (invertible) conv layers with aux channels
(REFERENCE.md section 4, the paper's Algorithm 2).

A square conv layer reading ``C`` channels with a ``k x k`` kernel has ``D = C k k`` output channels: its weight
``[D, C, k, k]`` is a ``D x D`` matrix ``M`` acting on every flattened input patch. The patch-vector order is
``(channel, row, column)``, the natural flatten of a ``[C, k, k]`` kernel slice, so ``M = weight.reshape(D, D)``
everywhere (forward kernel, inverse, regulariser). Only the first ``filters`` output channels are forwarded; the rest
are aux channels. A non-square (first) layer has ``filters`` output channels and is never inverted.

Forward (``preactivation``; :class:`Layer` adds any activity noise to ``z`` and applies ``f``): TF-style SAME
padding (total ``max((ceil(H/s) - 1) s + k - H, 0)``, ``total // 2`` on top/left, the odd pixel at the
bottom/right), a stride-``s`` convolution, bias; output size ``ceil(H/s)``.

Messages about the input (``[B, C, H, W]``), all transposed convolutions with the padding cropped back:

* ``transpose(delta)``: BP's input gradient, kernel ``W``;
* ``feedback(delta, B)``: FA's, kernel ``B`` (W's shape);
* ``inverse(v)``: GP's difference form, kernel ``(M^{-1})^T`` reshaped, i.e. every patch is reconstructed as
  ``M^{-1} v_p`` and overlapping reconstructions are **summed** (no correction: the differences add up);
  with orthogonal ``M`` this is exactly ``transpose(v)``;
* ``inverse_target(y, a_in)``: GP's target form, the same transposed convolution of ``y - b``, minus
  ``(n_x - 1) a_in`` where ``n_x`` counts the patches covering each input pixel (position dependent: border pixels
  are covered by fewer patches), so the forward input is reconstructed exactly once and every patch's error kept.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sim.activation import Activation
from sim.errors import ShapeError
from sim.layers.base import Layer
from sim.linalg import InverseFactors, orthogonal


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF-style SAME padding of one spatial axis: ``(before, after)``, the odd pixel after."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def conv_out_size(size: int, stride: int) -> int:
    """Output size of one spatial axis under SAME padding: ``ceil(size / stride)``."""
    return math.ceil(size / stride)


class Conv(Layer):
    """A 2-D convolution with SAME padding, bias and activation.

    Args:
        name: the layer's name in messages, archives and errors.
        in_shape: per-sample input shape ``(C, H, W)``.
        filters: channels forwarded to the next layer.
        kernel: kernel size ``k`` (``k x k``).
        stride: stride ``s`` (both axes).
        square: build ``D = C k k`` output channels (invertible, ``D - filters`` aux channels) instead of ``filters``.
        activation: leaky ReLU for hidden layers.
        generator: seeds the orthogonal initialisation (gain 1) of the ``[out, C k k]`` matrix; biases start at zero.
    """

    def __init__(self, name: str, in_shape: tuple[int, ...], filters: int, kernel: int, stride: int, *,
                 square: bool, activation: Activation, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu", generator: torch.Generator | None = None) -> None:
        super().__init__(name)
        if len(in_shape) != 3:
            raise ShapeError(
                f"layer {name!r}: a conv layer reads [channels, height, width] maps, but its input has shape "
                f"{list(in_shape)}; put conv layers below dense layers, never above them."
            )
        if min(in_shape) < 1:
            raise ShapeError(f"layer {name!r}: input shape {list(in_shape)} has an empty axis")
        for what, value in (("filters", filters), ("kernel", kernel), ("stride", stride)):
            if not isinstance(value, int) or value < 1:
                raise ShapeError(f"layer {name!r}: {what} must be a positive integer, got {value!r}")
        c_in, h, w = (int(v) for v in in_shape)
        d = c_in * kernel * kernel
        if square and stride > kernel:
            raise ShapeError(
                f"layer {name!r}: stride {stride} exceeds kernel {kernel}, so some input pixels lie in no patch and "
                "a square conv layer cannot be inverted; use stride <= kernel or give this layer a non-inverting "
                "rule (bp, fa)."
            )
        if square and filters > d:
            raise ShapeError(
                f"layer {name!r}: a square conv layer reading {c_in} channels with a {kernel}x{kernel} kernel has "
                f"D = {d} output channels and can forward at most {d}, but {filters} filters were asked; use fewer "
                "filters, a larger kernel, or a non-inverting rule (bp, fa)."
            )
        self.in_shape = (c_in, h, w)
        self.width = filters
        self.kernel = kernel
        self.stride = stride
        self.square = square
        self.activation = activation
        self.patch_size = d
        n_out = d if square else filters
        self.pad_h = same_padding(h, kernel, stride)
        self.pad_w = same_padding(w, kernel, stride)
        self.out_shape = (n_out, conv_out_size(h, stride), conv_out_size(w, stride))
        self.weight = nn.Parameter(torch.empty(n_out, c_in, kernel, kernel, dtype=dtype, device=device))
        self.bias = nn.Parameter(torch.zeros(n_out, dtype=dtype, device=device))
        with torch.no_grad():
            self.weight.copy_(orthogonal((n_out, d), self.weight, generator).reshape(self.weight.shape))
        # n_x depends only on shapes: computed once, moves and casts with the module, never saved.
        self.register_buffer("coverage", self._coverage(dtype, device), persistent=False)

    def extra_repr(self) -> str:
        kind = "square" if self.square else "plain"
        c, h, w = self.in_shape
        return (f"{self.name}: {c}x{h}x{w} -> {'x'.join(map(str, self.out_shape))}, k{self.kernel} s{self.stride} "
                f"({kind}, forwards {self.width}), {self.activation.name}")

    # ----- shapes -------------------------------------------------------------------------------------------------
    @property
    def kernel_shape(self) -> tuple[int, int, int, int]:
        """The weight's shape ``[out, C, k, k]``."""
        return (self.out_shape[0], self.in_shape[0], self.kernel, self.kernel)

    def check_kernel(self, weight: Tensor | None = None) -> None:
        """Refuse a kernel (the layer's own or a feedback kernel) whose shape is not ``[out, C, k, k]``."""
        w = self.weight if weight is None else weight
        if tuple(w.shape) != self.kernel_shape:
            raise ShapeError(
                f"layer {self.name!r}: kernel of shape {list(w.shape)}, expected {list(self.kernel_shape)} "
                f"({'D = C k k = ' + str(self.patch_size) + ' output channels' if self.square else 'filters'} "
                f"x {self.in_shape[0]} input channels x {self.kernel} x {self.kernel}); load a kernel of that shape."
            )

    def _pad(self, x: Tensor) -> Tensor:
        return F.pad(x, (*self.pad_w, *self.pad_h))

    def _transposed(self, g: Tensor, kernel: Tensor) -> Tensor:
        """``conv_transpose(g; kernel)`` over the padded input, cropped back: ``[B, out, H', W'] -> [B, C, H, W]``.

        Every output position scatters ``kernel^T g_p`` onto its patch; overlaps add up and padded pixels are dropped.
        """
        _, h, w = self.in_shape
        ho, wo = self.out_shape[1:]
        # Rows the padded input has beyond the last patch (only when stride > kernel); output_padding < stride there.
        extra_h = h + sum(self.pad_h) - ((ho - 1) * self.stride + self.kernel)
        extra_w = w + sum(self.pad_w) - ((wo - 1) * self.stride + self.kernel)
        full = F.conv_transpose2d(g, kernel, stride=self.stride, output_padding=(extra_h, extra_w))
        return full[:, :, self.pad_h[0]: self.pad_h[0] + h, self.pad_w[0]: self.pad_w[0] + w]

    def _coverage(self, dtype: torch.dtype, device: torch.device | str) -> Tensor:
        """``n_x`` ``[1, 1, H, W]``: how many patches cover each input pixel."""
        ones = torch.ones(1, 1, *self.out_shape[1:], dtype=dtype, device=device)
        kernel = torch.ones(1, 1, self.kernel, self.kernel, dtype=dtype, device=device)
        return self._transposed(ones, kernel)

    # ----- forward ------------------------------------------------------------------------------------------------
    def preactivation(self, a_in: Tensor, units: int | None = None) -> Tensor:
        """``z = conv(pad(a_in); W) + b``: ``[B, C, H, W] -> [B, out, ceil(H/s), ceil(W/s)]``, aux channels included,
        or only the first ``units`` channels (``forward(a_in, noise)`` of :class:`Layer` adds the noise and applies
        the activation)."""
        self.check_kernel()
        w, b = (self.weight, self.bias) if units is None else (self.weight[:units], self.bias[:units])
        return F.conv2d(self._pad(a_in), w, b, stride=self.stride)

    # ----- top-down messages --------------------------------------------------------------------------------------
    def transpose(self, delta: Tensor) -> Tensor:
        """BP's message, the input gradient ``conv_transpose(delta; W)``: ``[B, *out_shape] -> [B, C, H, W]``."""
        return self._transposed(delta, self.weight)

    def feedback(self, delta: Tensor, feedback_weight: Tensor) -> Tensor:
        """FA's message ``conv_transpose(delta; B)`` through a fixed kernel of W's shape:
        ``[B, *out_shape] -> [B, C, H, W]``."""
        self.check_kernel(feedback_weight)
        return self._transposed(delta, feedback_weight)

    def square_matrix(self) -> Tensor:
        """``M = weight.reshape(D, D)``: rows are output channels, columns the patch vector (channel, row, column)."""
        if not self.square:
            raise ShapeError(f"layer {self.name!r} is not square and has no square matrix")
        self.check_kernel()
        return self.weight.reshape(self.patch_size, self.patch_size)

    def _inverse_kernel(self, factors: InverseFactors, channels: int | None = None) -> Tensor:
        # conv_transpose with kernel K sends v_p to K^T v_p on each patch; K = (M^{-1})^T gives M^{-1} v_p. A message
        # of the first k channels (zeros on the aux channels) needs only the first k columns of M^{-1}.
        cols = factors.columns(channels)
        return cols.transpose(0, 1).reshape(cols.shape[1], *self.kernel_shape[1:])

    def inverse(self, v: Tensor, factors: InverseFactors) -> Tensor:
        """Difference form: ``conv_transpose(v; M^{-1})``, overlapping patch reconstructions summed, no correction:
        ``[B, D, H', W'] -> [B, C, H, W]``. A ``v`` of ``k < D`` channels stands for ``v`` padded with zeros on the
        aux channels and goes through the first ``k`` columns of ``M^{-1}`` only (``k / D`` of the work)."""
        return self._transposed(v, self._inverse_kernel(factors, v.shape[1]))

    def forms_inverse_columns(self, k: int, batch: int) -> bool:
        """Always: the transposed convolution needs the inverse's columns as its kernel, all ``D`` of them when the
        aux channels are computed."""
        return True

    def inverse_target(self, y: Tensor, factors: InverseFactors, a_in: Tensor | None = None) -> Tensor:
        """Target form: ``conv_transpose(y - b; M^{-1}) - (n_x - 1) a_in`` for a pre-activation target ``y``
        ``[B, D, H', W'] -> [B, C, H, W]``; ``a_in`` ``[B, C, H, W]`` is the layer's forward input (required)."""
        if a_in is None:
            raise ShapeError(
                f"layer {self.name!r}: the target-form inverse of a conv layer needs the forward input a_in "
                "(to remove the overlap of the summed patch reconstructions); pass a_in."
            )
        summed = self._transposed(y - self.bias.reshape(1, -1, 1, 1), self._inverse_kernel(factors))
        return summed - (self.coverage - 1) * a_in

    # ----- plasticity ---------------------------------------------------------------------------------------------
    def local_gradients(self, a_in: Tensor, delta: Tensor) -> dict[str, Tensor]:
        """Gradient of the local loss from ``delta = dLoss/dz`` ``[B, *out_shape]``: the kernel gradient
        ``sum_{b,p} delta_p patch_p^T`` ``[out, C, k, k]`` and ``db = sum delta`` ``[out]``. A ``delta`` of the first
        ``k`` channels only gives zero kernel rows beyond ``k``."""
        shape = (delta.shape[1], *self.kernel_shape[1:])
        dw = torch.nn.grad.conv2d_weight(self._pad(a_in), shape, delta, stride=self.stride)
        return self.pad_rows({"weight": dw, "bias": delta.sum((0, 2, 3))})
