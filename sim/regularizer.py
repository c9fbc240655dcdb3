"""The orthogonality regulariser on square layers (REFERENCE.md section 2, step 4).

``R = lambda sum_ij ((W W^T - I)_ij)^2`` with gradient ``4 lambda (W W^T - I) W``; conv kernels enter as their
``D x D`` patch matrices. It keeps ``W^{-1}`` close to ``W^T``, which is what makes GP's updates match BP's.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def gram_residual(w: Tensor) -> Tensor:
    """``W W^T - I`` for a square ``w`` ``[n, n]``.

    The identity is subtracted in place on the diagonal: the same values as ``gram - eye`` (off-diagonal entries
    minus 0 are exact) without building an ``n x n`` identity and a second ``n x n`` result every step.
    """
    gram = w @ w.transpose(0, 1)
    gram.diagonal().sub_(1)
    return gram


def penalty(w: Tensor, lam: float) -> Tensor:
    """``R = lambda ||W W^T - I||_F^2`` (a scalar tensor)."""
    return lam * gram_residual(w).square().sum()


def gradient(w: Tensor, lam: float) -> Tensor:
    """``dR/dW = 4 lambda (W W^T - I) W`` ``[n, n]``, a fresh tensor the caller may modify in place.

    Two ``n x n`` matmuls, ``4 n^3`` flops (a symmetric rank-k product for ``W W^T`` would make it ``3 n^3``, but
    torch exposes none); the scaling is done in place on the product, so no further ``n x n`` temporary is made.
    """
    return torch.mm(gram_residual(w), w).mul_(4 * lam)


def ortho_error(w: Tensor) -> float:
    """``||W W^T - I||_F / sqrt(n)``: the RMS departure from orthogonality, per row."""
    return float(torch.linalg.matrix_norm(gram_residual(w)).item() / math.sqrt(w.shape[0]))
