"""The orthogonality regulariser on square layers (REFERENCE.md section 2, step 4).

``R = lambda sum_ij ((W W^T - I)_ij)^2`` with gradient ``4 lambda (W W^T - I) W``; conv kernels enter as their
``D x D`` patch matrices. It keeps ``W^{-1}`` close to ``W^T``, which is what makes GP's updates match BP's.

``symmetric`` (``StepOptions.symmetric_gram``) chooses how ``W W^T`` is formed: from its upper block triangle
(default) or, as the authors' implementation does, with one full matmul (the benchmark's reference-cost mode). The
values are the same up to rounding.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: ``W W^T`` of an ``n x n`` weight with ``n`` at least this is built from the upper block triangle (see
#: :func:`gram`); below it one matmul is faster than several small ones
SYMMETRIC_MIN = 512
#: row blocks of the symmetric product: (k + 1) / 2k of a full matmul's flops (62.5% for 4), in matmuls large enough
#: to run at full speed
SYMMETRIC_BLOCKS = 4


def gram(w: Tensor, symmetric: bool = True) -> Tensor:
    """``W W^T`` ``[n, n]`` for ``w`` ``[n, n]``, a fresh tensor.

    The product is symmetric, so for large ``n`` only the block rows' upper parts are multiplied
    (``G[i, i:] = W_i W[i:]^T`` for ``SYMMETRIC_BLOCKS`` row blocks ``W_i``) and the lower blocks are mirrored: a
    symmetric rank-k update (BLAS ``syrk``), which torch does not expose, at the cost of a few large matmuls. Each entry
    is the same dot product as in ``w @ w.T`` (rounded as the matmul kernel rounds it). ``symmetric=False``: always
    the one full matmul (``2 n^3``).
    """
    n = w.shape[0]
    if not _symmetric(n, symmetric):
        return w @ w.transpose(0, 1)
    g = torch.empty((n, n), dtype=w.dtype, device=w.device)
    edges = _block_edges(n)
    for lo, hi in zip(edges[:-1], edges[1:]):
        g[lo:hi, lo:] = w[lo:hi] @ w[lo:].transpose(0, 1)
        g[hi:, lo:hi] = g[lo:hi, hi:].transpose(0, 1)
    return g


def _symmetric(n: int, symmetric: bool) -> bool:
    return symmetric and n >= SYMMETRIC_MIN


def _block_edges(n: int) -> list[int]:
    return [round(i * n / SYMMETRIC_BLOCKS) for i in range(SYMMETRIC_BLOCKS + 1)]


def gradient_flops(n: int, symmetric: bool = True) -> int:
    """Matmul flops of :func:`gradient` for an ``n x n`` weight: :func:`gram`'s products plus ``2 n^3``."""
    if not _symmetric(n, symmetric):
        return 4 * n**3
    edges = _block_edges(n)
    return sum(2 * (hi - lo) * (n - lo) * n for lo, hi in zip(edges[:-1], edges[1:])) + 2 * n**3


def gram_residual(w: Tensor, symmetric: bool = True) -> Tensor:
    """``W W^T - I`` for a square ``w`` ``[n, n]``.

    The identity is subtracted in place on the diagonal: the same values as ``gram - eye`` (off-diagonal entries
    minus 0 are exact) without building an ``n x n`` identity and a second ``n x n`` result every step.
    """
    g = gram(w, symmetric)
    g.diagonal().sub_(1)
    return g


def penalty(w: Tensor, lam: float) -> Tensor:
    """``R = lambda ||W W^T - I||_F^2`` (a scalar tensor)."""
    return lam * gram_residual(w).square().sum()


def gradient(w: Tensor, lam: float, symmetric: bool = True) -> Tensor:
    """``dR/dW = 4 lambda (W W^T - I) W`` ``[n, n]``, a fresh tensor the caller may modify in place.

    Two ``n x n`` products: ``W W^T`` (:func:`gram`, ``1.25 n^3`` flops for large ``n`` when ``symmetric``) and a full
    ``2 n^3`` matmul; the scaling is done in place on the product, so no further ``n x n`` temporary is made.
    """
    return torch.mm(gram_residual(w, symmetric), w).mul_(4 * lam)


def ortho_error(w: Tensor) -> float:
    """``||W W^T - I||_F / sqrt(n)``: the RMS departure from orthogonality, per row."""
    return float(torch.linalg.matrix_norm(gram_residual(w)).item() / math.sqrt(w.shape[0]))
