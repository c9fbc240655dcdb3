"""Vanilla GP (Ahmad et al. 2020): a constant ``gamma`` (1e-3) in every layer, so offsets shrink as ``gamma^depth``
and the target form collapses in deep nets (REFERENCE.md section 2)."""

from __future__ import annotations

from torch import Tensor

from sim.rules.base import register
from sim.rules.gait import GaitProp


@register
class VanillaGP(GaitProp):
    name = "vgp"

    def gamma(self, d: Tensor, n_units: int) -> Tensor:
        return d.new_full((d.shape[0],), self.settings.gamma)
