"""Kolen-Pollack with its *reference* settings (``sim/rules/catalog.py``): the decay is what makes ``B -> W``.

Both weights get the same Adam step from the same update, so ``B - W`` shrinks by exactly ``(1 - lr decay)`` per
step (Akrout et al. 2019, sec. 3); with ``decay = 0`` it would keep its initial value and ``B`` would never converge.
"""

from __future__ import annotations

import torch

from sim import Network, NetworkConfig, Scheduler
from sim.data import load_split
from sim.data.spec import DataSpec
from sim.network import LayerSpec
from sim.rules import RuleSettings, get_rule


def kp_net(settings: RuleSettings) -> Network:
    return Network(NetworkConfig(input_shape=(1, 8, 8), classes=10, layers=(LayerSpec(32), LayerSpec(32)),
                                 rules="kp", settings={"kp": settings}, dtype="float64", seed=0))


def train(net: Network, steps: int) -> list[torch.Tensor]:
    """``steps`` Adam steps on digits mini-batches of 64; returns ``B - W`` per layer before training."""
    data = load_split(DataSpec(kind="digits"), "train")
    x, y = data.x[:256].double(), data.y[:256]
    start = [(r.feedback_weight - layer.weight).detach().clone() for layer, r in zip(net.layers, net.rules)]
    sched = Scheduler(net)
    for step in range(steps):
        part = slice((step % 4) * 64, (step % 4 + 1) * 64)
        sched.train_step(x[part], y[part])
    return start


def test_the_reference_decay_is_positive():
    assert get_rule("kp").defaults.decay > 0, "with decay 0, B - W never changes and B never converges to W"


def test_with_the_reference_settings_b_minus_w_shrinks_by_the_decay_factor_every_step():
    ref = get_rule("kp").defaults
    net, steps = kp_net(ref), 60
    start = train(net, steps)
    factor = (1 - ref.lr * ref.decay) ** steps
    assert factor < 1
    for layer, rule, s in zip(net.layers, net.rules, start):
        torch.testing.assert_close(rule.feedback_weight - layer.weight, factor * s, rtol=1e-9, atol=1e-12)


def test_with_the_reference_decay_the_feedback_angle_falls_and_without_it_does_not_as_fast():
    """At the reference decay (and an lr raised so that a few hundred steps do what the reference run's thousands
    do), the angle between B and W falls in every layer, and further than with decay 0."""
    ref = get_rule("kp").defaults
    fast = RuleSettings(lr=2e-3, betas=ref.betas, eps=ref.eps, decay=ref.decay)
    angles = {}
    for decay in (ref.decay, 0.0):
        net = kp_net(RuleSettings(lr=fast.lr, betas=fast.betas, eps=fast.eps, decay=decay))
        first = [r.state_metrics(layer)["feedback_angle"] for layer, r in zip(net.layers, net.rules)]
        train(net, 150)
        angles[decay] = [r.state_metrics(layer)["feedback_angle"] for layer, r in zip(net.layers, net.rules)]
    assert all(a > 80 for a in first), first  # B starts random: ~90 degrees from W
    assert all(a < 0.5 * f for a, f in zip(angles[ref.decay], first)), (first, angles)
    assert all(a < b for a, b in zip(angles[ref.decay], angles[0.0])), angles
