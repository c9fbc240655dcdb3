"""Normalized GP (Dalm et al. 2023): per-sample ``gamma_l = eta sqrt(N_l) / ||t_l - a_l||_2``, which fixes the
per-unit RMS of each layer's nudge at ``eta`` whatever the depth (REFERENCE.md section 2; the authors' code form,
not eq. 5's squared norm). A sample whose difference is exactly zero gets ``gamma = 1``: its nudge is zero anyway,
and its multiplier is left unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sim.rules.base import register
from sim.rules.gait import GaitProp, per_sample_norm


@register
class NormalizedGP(GaitProp):
    name = "gp"

    def gamma(self, d: Tensor, n_units: int) -> Tensor:
        norm = per_sample_norm(d)
        scale = self.settings.eta * math.sqrt(n_units)
        return torch.where(norm > 0, scale / norm, torch.ones_like(norm))
