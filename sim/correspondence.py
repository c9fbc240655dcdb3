"""How far each layer's update is from backprop's (REFERENCE.md section 7).

For a batch, the raw update ``dW_l`` of every layer (before regulariser and Adam) is compared with BP's
``dCE/dW_l`` computed by ``torch.autograd`` on the same network (for GP: the square network itself, whose aux units
do not touch the loss) with the same weights, batch and activity noise. The angle between the flattened weight
tensors, in degrees, is the correspondence measure; the output layer's is 0 by construction for GP and FA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from sim.network import Network
from sim.schedule import Scheduler, StepResult, forward_phase


def angle_deg(a: Tensor, b: Tensor) -> float:
    """Angle between two tensors, flattened, in degrees, computed in float64.

    Uses ``2 atan2(|u - v|, |u + v|)`` on the unit vectors, which stays accurate for tiny angles where
    ``acos`` of a cosine near 1 does not. Returns NaN if either tensor is zero.
    """
    u = a.detach().reshape(-1).double()
    v = b.detach().reshape(-1).double()
    nu, nv = torch.linalg.vector_norm(u), torch.linalg.vector_norm(v)
    if nu == 0 or nv == 0:
        return math.nan
    u, v = u / nu, v / nv
    return math.degrees(2 * math.atan2(torch.linalg.vector_norm(u - v).item(), torch.linalg.vector_norm(u + v).item()))


def bp_reference(net: Network, x: Tensor, y: Tensor, activity_noise: list[Tensor | None] | None = None
                 ) -> list[dict[str, Tensor]]:
    """``dCE/dW_l`` and ``dCE/db_l`` by autograd (batch-summed cross-entropy), per layer, same dict layout as the
    rules' updates. Does not touch the parameters' ``.grad``."""
    params = [p for layer in net.layers for p in (layer.weight, layer.bias)]
    with torch.enable_grad():
        fp = forward_phase(net, x, activity_noise)
        logits = net.layers[-1].read(fp.outputs[-1])
        loss = torch.nn.functional.cross_entropy(logits, y.long(), reduction="sum")
        grads = torch.autograd.grad(loss, params)
    return [{"weight": grads[2 * i], "bias": grads[2 * i + 1]} for i in range(len(net.layers))]


@dataclass
class Correspondence:
    """Raw updates, the BP reference and their per-layer angles on one batch.

    Attributes:
        layers: layer names, bottom to top.
        rules: rule name per layer.
        updates: raw update per layer (``{'weight', 'bias'}``).
        reference: BP's gradient per layer, same layout.
        angle_deg: angle between ``updates[l]['weight']`` and ``reference[l]['weight']`` in degrees.
        norm_ratio: ``||dW_l|| / ||dCE/dW_l||``.
        step: the step the comparison was made at.
    """

    layers: list[str]
    rules: list[str]
    updates: list[dict[str, Tensor]]
    reference: list[dict[str, Tensor]]
    angle_deg: list[float]
    norm_ratio: list[float]
    step: int
    result: StepResult | None = None


def compare(scheduler: Scheduler, x: Tensor, y: Tensor, result: StepResult | None = None) -> Correspondence:
    """Compute (or take) one step's raw updates and compare them with BP's on the same batch and noise.

    The weights are not changed; pass ``result`` to reuse a step already computed by ``scheduler.compute``. In a
    data-parallel step (``scheduler.parallel``; ``x`` is this process's part of the batch) BP's gradient is summed
    over the processes as the updates are, so both are the global batch's.
    """
    net = scheduler.net
    if result is None:
        result = scheduler.compute(x, y)
    reference = bp_reference(net, x, y, result.forward.noise)
    if scheduler.parallel is not None:
        scheduler.parallel.sum_([g for ref in reference for g in ref.values()], "summing BP's reference gradient")
    angles, ratios = [], []
    for upd, ref in zip(result.updates, reference):
        angles.append(angle_deg(upd["weight"], ref["weight"]))
        nr = torch.linalg.vector_norm(ref["weight"].double()).item()
        ratios.append(torch.linalg.vector_norm(upd["weight"].double()).item() / nr if nr > 0 else math.nan)
    return Correspondence(layers=net.names, rules=net.rule_names, updates=result.updates, reference=reference,
                          angle_deg=angles, norm_ratio=ratios, step=scheduler.step_count, result=result)
