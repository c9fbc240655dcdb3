"""What a run measures besides the angles (docs/runs.md): accuracy and loss on a whole split, orthogonality of the
layers with a square weight matrix, and the probe batch's activities and targets.

* accuracy: the fraction of samples whose label is the arg-max logit (top-1) or among the ``min(5, classes)``
  largest (top-5), weighted by samples over every evaluation batch;
* loss: mean cross-entropy per sample, in nats (the training loss is the batch sum, REFERENCE.md section 6);
* learned state: each rule's :meth:`~sim.rules.base.Rule.state_metrics` (angle of a feedback weight to the
  forward weight, a reconstruction loss);
* orthogonality error: ``||W W^T - I||_F / sqrt(n)`` of each square layer (:func:`sim.regularizer.ortho_error`);
* probe: each layer's full output ``a_l`` (aux units included) and its target ``t_l = a_l + d_l`` on a fixed batch,
  from the scheduler's forward and message phases without noise and without touching the weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from sim import regularizer
from sim.network import Network
from sim.rules.registry import STATE_METRICS
from sim.schedule import forward_phase, message_phase


@dataclass(frozen=True)
class SplitMetrics:
    """Accuracy and loss of a network on one split."""

    top1: float
    """Fraction of samples whose label has the largest logit."""
    top5: float
    """Fraction of samples whose label is among the ``min(5, classes)`` largest logits."""
    loss: float
    """Mean cross-entropy per sample (nats)."""
    samples: int
    """Samples evaluated."""


@torch.no_grad()
def evaluate(net: Network, batches, *, top: int = 5, reduce: Callable[[list[Tensor]], None] | None = None
             ) -> SplitMetrics:
    """Evaluate ``net(x)`` on an iterable of ``(x, y)`` batches (cast and moved to the network's dtype/device).

    Counts accumulate on the device and are read once at the end (one host sync per split). ``reduce``: sums
    ``[correct top-1, correct top-k, summed loss, samples]`` (float64, in place) over the processes of a
    data-parallel run, each of which evaluated its part of every batch (a part may be empty), before they are read:
    the counts are exact, the summed loss equal up to the order of float additions.
    """
    k = min(top, net.classes)
    dev, dtype = net.device, net.dtype
    correct1 = torch.zeros((), dtype=torch.int64, device=dev)
    correctk = torch.zeros((), dtype=torch.int64, device=dev)
    loss = torch.zeros((), dtype=torch.float64, device=dev)
    n = 0
    for x, y in batches:
        if y.shape[0] == 0:  # no part of a batch for this process (nothing to add; layers refuse empty input)
            continue
        x = x.to(device=dev, dtype=dtype, non_blocking=True)
        y = y.to(device=dev, non_blocking=True)
        logits = net(x)
        hits = logits.topk(k, dim=1).indices == y[:, None]
        correct1 += hits[:, 0].sum()
        correctk += hits.any(dim=1).sum()
        loss += torch.nn.functional.cross_entropy(logits, y, reduction="sum").double()
        n += int(y.shape[0])
    if reduce is not None:
        totals = torch.stack([correct1.double(), correctk.double(), loss, loss.new_tensor(float(n))])
        reduce([totals])
        hits1, hitsk, summed, count = totals.tolist()  # exact: counts below 2^53
        n = int(count)
        if n == 0:
            return SplitMetrics(math.nan, math.nan, math.nan, 0)
        return SplitMetrics(top1=hits1 / n, top5=hitsk / n, loss=summed / n, samples=n)
    if n == 0:
        return SplitMetrics(math.nan, math.nan, math.nan, 0)
    return SplitMetrics(top1=correct1.item() / n, top5=correctk.item() / n, loss=loss.item() / n, samples=n)


@torch.no_grad()
def ortho_errors(net: Network) -> np.ndarray:
    """``||W W^T - I||_F / sqrt(n)`` per layer ``[L]`` (float64) of every layer whose weight matrix is square, under
    any rule (:meth:`~sim.layers.base.Layer.square_weight`); NaN for the others."""
    matrices = [layer.square_weight() for layer in net.layers]
    return np.array([regularizer.ortho_error(m) if m is not None else math.nan for m in matrices], dtype=np.float64)


@torch.no_grad()
def state_metrics(net: Network) -> dict[str, np.ndarray]:
    """What every rule's learned or fixed feedback reports (:meth:`~sim.rules.base.Rule.state_metrics`), per name of
    :data:`~sim.rules.registry.STATE_METRICS`: ``[L]`` float64, NaN where a layer's rule reports none."""
    out = {name: np.full(len(net.layers), math.nan) for name in STATE_METRICS}
    for i, (layer, rule) in enumerate(zip(net.layers, net.rules)):
        for name, value in rule.state_metrics(layer).items():
            out[name][i] = value
    return out


@torch.no_grad()
def probe(net: Network, x: Tensor, y: Tensor, *, step: int | None = None, check: bool = True
          ) -> tuple[list[Tensor], list[Tensor]]:
    """Activities and targets of every layer on one batch, computed without noise and without any update.

    Returns ``(activities, targets)``: ``activities[l]`` is layer l's full output ``[B, *out_shape_l]`` in the
    network's dtype; ``targets[l]`` is ``t_l = a_l + d_l`` (:meth:`StepResult.targets`) evaluated in float64, so that
    ``targets[l] - activities[l]`` recovers the difference message ``d_l`` even where it lies below float32's
    resolution of ``a_l`` (normalized GP's ``d`` is ~eta relative to ``a``).
    """
    fp = forward_phase(net, x)
    messages, _ = message_phase(net, fp, y, None, None, check, step)
    targets = [m.target(a.double()) for a, m in zip(fp.outputs, messages)]  # Message.target: a + d, here in float64
    return fp.outputs, targets
