"""FLOPs of one training step, counted from the layer shapes (the package docstring lists the terms), and what the
count leaves out.
"""

from __future__ import annotations

import math

from sim import regularizer
from sim.network import Network


def step_flops(net: Network, batch: int, ortho_every: int = 1, narrow: list[bool] | None = None,
               symmetric_gram: bool = True) -> dict[str, float]:
    """FLOPs of one training step by part: ``forward``, ``messages``, ``weight_grads``, ``factorization``,
    ``regularizer`` and ``total`` (see the module docstring for the formulas). ``narrow[l]``: layer l runs on its
    forwarded units only (:attr:`Scheduler.narrow <sim.schedule.Scheduler>`); ``ortho_every`` and
    ``symmetric_gram``: the step's options (:class:`~sim.step_options.StepOptions`)."""
    parts = dict.fromkeys(("forward", "messages", "weight_grads", "factorization", "regularizer"), 0.0)
    narrow = narrow or [False] * len(net.layers)
    last = len(net.layers) - 1
    for i, (layer, rule, skip) in enumerate(zip(net.layers, net.rules, narrow)):
        positions = math.prod(layer.out_shape[1:])  # 1 for dense, H' W' for conv
        rows = layer.width if skip else layer.out_shape[0]  # output units (channels) computed
        macs = rows * layer.weight[0].numel() * positions * batch
        parts["forward"] += 2 * macs
        parts["weight_grads"] += 2 * macs
        if rule.direct and i < last:  # the broadcast channel: e_l = B_l e, B_l [n_l, n_out]
            parts["messages"] += 2 * batch * math.prod(layer.out_shape) * net.classes
        if i > 0 and not net.rules[i - 1].direct:  # a direct layer below hears the broadcast, not this layer
            n = layer.square_matrix().shape[0] if layer.square else 0
            # GP's message either solves for the (zero-padded) batch or goes through `rows` columns of the inverse
            solved = rule.factorizes and not layer.forms_inverse_columns(rows, batch)
            parts["messages"] += 2 * batch * n * n if solved else 2 * macs
            if rule.factorizes:
                parts["factorization"] += 2 * n**3 if rule.settings.inverse == "inv" else 2 / 3 * n**3
                if rule.settings.inverse != "inv" and not solved:
                    parts["factorization"] += 2 * n**2 * rows  # columns of M^{-1} from the LU factors
        matrix = layer.square_weight() if rule.settings.ortho_lambda > 0 else None  # any rule's square weight
        if matrix is not None:
            parts["regularizer"] += regularizer.gradient_flops(matrix.shape[0], symmetric_gram) / ortho_every
    parts["total"] = sum(parts.values())
    return parts




def learned_state_rules(net: Network) -> list[str]:
    """The rules of ``net`` that own learned state (parameters of their own), whose plasticity the FLOP count leaves
    out."""
    return sorted({rule.name for rule in net.rules if any(True for _ in rule.parameters())})




def uncounted(net: Network) -> list[str]:
    """What the case's FLOP count leaves out (the ``flop_uncounted`` of a JSON row; see the module docstring)."""
    out = ["elementwise work (activations, nudges, sign feedback, Adam, decay)"]
    learned = learned_state_rules(net)
    if learned:
        out.append(f"the plasticity of the learned state of {', '.join(learned)} (Rule.feedback_plasticity)")
    return out
