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
The scheduler decides when this is allowed (:class:`~sim.schedule.Scheduler`, ``skip_aux``); the values are those of
the full computation up to float rounding.

Shapes are per sample: ``in_shape`` is what the layer reads (the forwarded part of the layer below), ``out_shape`` is
its full output (aux included); ``read(a)`` keeps the forwarded part, ``embed(d)`` is its adjoint (zeros on aux).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sim.activation import Activation
from sim.errors import NonFiniteError, ShapeError, SingularLayerError


@dataclass(frozen=True)
class InverseFactors:
    """A square layer's weight prepared for repeated exact inversion within one step.

    Exactly one of ``lu`` (with ``pivots``) or ``inv`` is set: an LU factorisation (the fast exact route) or an
    explicit inverse (the reference implementation's cost, or a small conv kernel matrix applied to many patches).
    """

    lu: Tensor | None = None
    pivots: Tensor | None = None
    inv: Tensor | None = None

    def solve(self, rhs: Tensor) -> Tensor:
        """``M^{-1} rhs`` for ``rhs`` of shape ``[n, k]``."""
        if self.inv is not None:
            return self.inv @ rhs
        return torch.linalg.lu_solve(self.lu, self.pivots, rhs)

    def matrix(self) -> Tensor:
        """The explicit inverse ``M^{-1}`` ``[n, n]`` (computed from the LU factors when needed)."""
        return self.columns(None)

    def columns(self, k: int | None) -> Tensor:
        """The first ``k`` columns of ``M^{-1}`` ``[n, k]`` (all ``n`` for None): ``2 n^2 k`` flops from the LU
        factors, the part of the inverse that a message with zeros beyond its first ``k`` entries (a layer's aux
        units) passes through."""
        if self.inv is not None:
            return self.inv if k is None else self.inv[:, :k]
        n = self.lu.shape[-1]
        eye = torch.eye(n, n if k is None else k, dtype=self.lu.dtype, device=self.lu.device)
        return torch.linalg.lu_solve(self.lu, self.pivots, eye)


def max_condition(dtype: torch.dtype) -> float:
    """Condition number above which an inverse loses most of the digits GP's tiny nudges live in."""
    return 1e-2 / torch.finfo(dtype).eps


def condition_number(matrix: Tensor) -> float:
    """1-norm condition number ``||M||_1 ||M^{-1}||_1`` in float64 (inf if singular or non-finite).

    Only computed when the cheap pivot check flags a layer: an explicit inverse costs about one LU, far less than
    the SVD behind the 2-norm condition number.
    """
    m = matrix.detach().double()
    if not bool(torch.isfinite(m).all()):
        return math.inf
    inv, info = torch.linalg.inv_ex(m)
    if int(info) != 0 or not bool(torch.isfinite(inv).all()):
        return math.inf
    return float(torch.linalg.matrix_norm(m, ord=1) * torch.linalg.matrix_norm(inv, ord=1))


#: Where :func:`factorize` sends its conditioning check: ``None`` (check now, one host sync), a list (append the
#: on-device flag for the caller to check once per step), or :data:`_SKIP`. Set only through :func:`deferred_checks`.
_CHECK_SINK: ContextVar[list[Tensor] | object | None] = ContextVar("gaitsim_factorize_checks", default=None)
_SKIP = object()


@contextmanager
def deferred_checks(flags: list[Tensor] | None) -> Iterator[None]:
    """Within this block :func:`factorize` does not synchronise with the device to check a matrix's conditioning.

    With a list, it appends an on-device boolean flag (True: singular, non-finite or suspicious) to ``flags``; the
    caller checks all flags once and, if one is set, repeats the work with synchronous checks, which name the layer
    and its condition number. With ``None`` the check is skipped altogether (a scheduler that checks no numerics).
    This is how :class:`~sim.schedule.Scheduler` keeps a step free of host-device synchronisation on a GPU.
    """
    token = _CHECK_SINK.set(_SKIP if flags is None else flags)
    try:
        yield
    finally:
        _CHECK_SINK.reset(token)


def factorize(matrix: Tensor, *, layer: str, method: str = "lu", check: bool = True) -> InverseFactors:
    """Prepare a square matrix ``[n, n]`` for exact inversion, refusing singular or badly conditioned ones.

    The check is cheap when all is well (the LU pivots bound the conditioning); only a suspicious matrix pays for the
    full condition number, which then goes into the error message with the layer's name. The cheap part is computed
    on the matrix's device and read back with one host sync, or deferred (see :func:`deferred_checks`).
    """
    if method == "inv":
        inv, info = torch.linalg.inv_ex(matrix)
        factors = InverseFactors(inv=inv)
    elif method == "lu":
        lu, pivots, info = torch.linalg.lu_factor_ex(matrix)
        factors = InverseFactors(lu=lu, pivots=pivots)
    else:
        raise ValueError(f"unknown inverse method {method!r}; use 'lu' or 'inv'")
    sink = _CHECK_SINK.get()
    if check and sink is not _SKIP:
        if factors.lu is not None:
            # cond(M) >= max|u_ii| / min|u_ii| (roughly), so tiny pivots flag trouble cheaply; flag 100x early
            # because the pivot ratio can underestimate the condition number. NaN pivots compare False: caught by
            # the isfinite test.
            low, high = torch.aminmax(factors.lu.diagonal().abs())
            ratio = low / high
            flag = (info != 0) | ~torch.isfinite(ratio) | (ratio < 1e2 / max_condition(matrix.dtype))
        else:
            flag = (info != 0) | ~torch.isfinite(factors.inv).all()
        if sink is not None:
            sink.append(flag)
            return factors
        if bool(flag):
            cond = condition_number(matrix)
            if not math.isfinite(cond) or cond > max_condition(matrix.dtype):
                raise SingularLayerError(
                    f"layer {layer!r}: its square weight matrix ({matrix.shape[0]}x{matrix.shape[1]}) is singular or "
                    f"badly conditioned (condition number {cond:.3g}, limit {max_condition(matrix.dtype):.3g} for "
                    f"{matrix.dtype}); its inverse would drown GP's messages. Raise the orthogonality regulariser "
                    "(ortho_lambda), lower the learning rate, or use float64."
                )
    return factors


class Layer(nn.Module):
    """Base class of all layers; subclasses implement the message methods listed in the module docstring."""

    #: activation applied after the affine map
    activation: Activation
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

    def forms_inverse_columns(self, k: int, batch: int) -> bool:
        """Whether :meth:`inverse` sends a message of ``k`` units (channels) and ``batch`` samples through the first
        ``k`` columns of the inverse, formed from the LU factors (``2 n^2 k`` flops), rather than solving for the
        zero-padded batch. The one place this is decided: the benchmark's FLOP count asks it too."""
        raise NotImplementedError

    def factorize(self, method: str = "lu", check: bool = True) -> InverseFactors:
        """Factorise this layer's square matrix for this step's inverse messages."""
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
