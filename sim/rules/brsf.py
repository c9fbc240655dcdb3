"""Batchwise random-magnitude sign-concordant feedback ``brsf`` (Liao, Leibo & Poggio 2016; BioTorch's ``brsf``):
``B_l = |M_l| sign(W_l)`` with ``|M_l|`` redrawn after every update of ``W_l`` (every batch), and FA's message
``e_{l-1} = B_l^T (D_l e_l)``.

The draw is a pure function of a per-layer seed, the number of updates so far, ``draws`` (a buffer, so it is in
the network's ``state_dict`` and a resumed run draws the same magnitudes), and the device type (it is drawn where
the weights live, in their dtype: a redraw every step must not wait on the host): every message of one step (the update,
an angle measurement, a probe) sees the same ``M``, and the scheduler's :meth:`~sim.rules.base.Rule.after_step`
hook advances it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sim.layers.base import Layer
from sim.rules.base import RuleSettings, register
from sim.rules.sign import SignFeedback, redrawn_magnitudes


@register
class BatchRandomSignFeedback(SignFeedback):
    name = "brsf"

    def __init__(self, layer: Layer, settings: RuleSettings, generator: torch.Generator | None = None) -> None:
        super().__init__(layer, settings, generator)
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device="cpu").item())
        self.register_buffer("seed", torch.tensor(seed, dtype=torch.int64, device=layer.weight.device))
        self.register_buffer("draws", torch.zeros((), dtype=torch.int64, device=layer.weight.device))
        self.register_buffer("magnitude", self._draw(layer, seed, 0))

    def _draw(self, layer: Layer, seed: int, draws: int) -> Tensor:
        device = layer.weight.device
        if device.type == "meta":  # a shape-only network (config validation): no values, and no generator there
            return torch.empty_like(layer.weight)
        if getattr(self, "_generator", None) is None or self._generator.device != device:
            self._generator = torch.Generator(device=device)  # reseeded per draw: not state, resumes exactly
        return redrawn_magnitudes(layer.weight, self._generator.manual_seed(seed + draws))

    def magnitudes(self, layer: Layer) -> Tensor:
        return self.magnitude

    @torch.no_grad()
    def after_step(self, layer: Layer) -> None:
        """Redraw ``|M|`` after the update of W (BioTorch: 'redrawn after each update of W')."""
        self.draws += 1
        self.magnitude.copy_(self._draw(layer, int(self.seed), int(self.draws)))
