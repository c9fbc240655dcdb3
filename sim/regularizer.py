"""The orthogonality regulariser on square layers (REFERENCE.md section 2, step 4).

``R = lambda sum_ij ((W W^T - I)_ij)^2`` with gradient ``4 lambda (W W^T - I) W``; conv kernels enter as their
``D x D`` patch matrices. It keeps ``W^{-1}`` close to ``W^T``, which is what makes GP's updates match BP's.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def gram_residual(w: Tensor) -> Tensor:
    """``W W^T - I`` for a square ``w`` ``[n, n]``."""
    gram = w @ w.transpose(0, 1)
    return gram - torch.eye(w.shape[0], dtype=w.dtype, device=w.device)


def penalty(w: Tensor, lam: float) -> Tensor:
    """``R = lambda ||W W^T - I||_F^2`` (a scalar tensor)."""
    return lam * gram_residual(w).square().sum()


def gradient(w: Tensor, lam: float) -> Tensor:
    """``dR/dW = 4 lambda (W W^T - I) W`` ``[n, n]``."""
    return (4 * lam) * (gram_residual(w) @ w)


def ortho_error(w: Tensor) -> float:
    """``||W W^T - I||_F / sqrt(n)``: the RMS departure from orthogonality, per row."""
    return float(torch.linalg.matrix_norm(gram_residual(w)).item() / math.sqrt(w.shape[0]))
