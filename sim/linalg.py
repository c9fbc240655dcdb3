"""Linear algebra of the square layers: exact inversion prepared once per step, and its conditioning checks
(REFERENCE.md sections 2 and 4).

GP's messages need ``W^{-1}`` applied to many vectors each step. :func:`factorize` prepares the square matrix
``M`` ``[n, n]`` once: an LU factorisation ``P M = L U`` (``2/3 n^3`` flops; solves ``2 n^2`` per vector) or an explicit
inverse (the reference implementation's cost). It refuses a singular or badly conditioned ``M`` cheaply: the LU
pivots bound the conditioning, ``cond(M) >= max|u_ii| / min|u_ii|``, and only a suspicious matrix pays for the full
1-norm condition number ``||M||_1 ||M^{-1}||_1`` (:func:`condition_number`), which then names the layer in a
:class:`~sim.errors.SingularLayerError`. The limit is :func:`max_condition`: beyond it the inverse loses most of the
digits GP's tiny nudges live in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from sim.errors import SingularLayerError


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


#: what :func:`factorize` (and the scheduler's phases) take as ``check``: True (check now and raise, one host sync),
#: False (check nothing), or a list that collects one on-device flag per check (True: non-finite or suspicious), for
#: the caller to read once per step and, if one is set, repeat the work with ``check=True``, which names the culprit
Check = bool | list[Tensor]


def factorize(matrix: Tensor, *, layer: str, method: str = "lu", check: Check = True) -> InverseFactors:
    """Prepare a square matrix ``[n, n]`` for exact inversion, refusing singular or badly conditioned ones.

    The check is cheap when all is well (the LU pivots bound the conditioning); only a suspicious matrix pays for the
    full condition number, which then goes into the error message with the layer's name. The cheap part is computed
    on the matrix's device and, with ``check=True``, read back with one host sync; with a list it is appended there as
    an on-device flag (no sync: how :class:`~sim.schedule.Scheduler` keeps a step free of host-device syncs on a
    GPU); with ``False`` it is skipped (see :data:`Check`).
    """
    if method == "inv":
        inv, info = torch.linalg.inv_ex(matrix)
        factors = InverseFactors(inv=inv)
    elif method == "lu":
        lu, pivots, info = torch.linalg.lu_factor_ex(matrix)
        factors = InverseFactors(lu=lu, pivots=pivots)
    else:
        raise ValueError(f"unknown inverse method {method!r}; use 'lu' or 'inv'")
    if check is True or isinstance(check, list):
        if factors.lu is not None:
            # cond(M) >= max|u_ii| / min|u_ii| (roughly), so tiny pivots flag trouble cheaply; flag 100x early
            # because the pivot ratio can underestimate the condition number. NaN pivots compare False: caught by
            # the isfinite test.
            low, high = torch.aminmax(factors.lu.diagonal().abs())
            ratio = low / high
            flag = (info != 0) | ~torch.isfinite(ratio) | (ratio < 1e2 / max_condition(matrix.dtype))
        else:
            flag = (info != 0) | ~torch.isfinite(factors.inv).all()
        if isinstance(check, list):
            check.append(flag)
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


def orthogonal(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    """An orthogonal matrix (gain 1) of ``shape`` ``[rows, cols]``, drawn in float64 from ``generator`` (the same
    draw whatever the network's dtype), in ``like``'s dtype and on its device: the initial forward weights and the
    fixed or learned feedback weights of every rule."""
    init = torch.empty(shape, dtype=torch.float64)
    torch.nn.init.orthogonal_(init, gain=1.0, generator=generator)
    return init.to(dtype=like.dtype, device=like.device)
