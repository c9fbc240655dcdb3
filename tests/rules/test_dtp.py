"""The learned-inverse machinery of ``dtp`` (issue 13): the feedback mapping has its own optimiser group at
``feedback_lr``; only an applied step records its reconstruction loss; the noise is redrawn every step; conv layers
learn their ``V`` too (``lgp`` as well). The oracles of dtp's feedback form (Lee et al.'s ``g(h) = s_{l-1}(V h + c)``:
exact targets, differences, the reconstruction loss, learning) are in test_dtp_lee.py."""

from __future__ import annotations

import math

import pytest
import torch

from sim import Network, NetworkConfig, Scheduler
from sim.data import load_split
from sim.data.spec import DataSpec
from sim.metrics import state_metrics
from sim.network import LayerSpec
from sim.rules import RuleSettings


def dtp_net(rules=("dtp",) * 4, *, reconstruction="dtp", feedback_lr=1e-2, dtype="float64", seed=0) -> Network:
    settings = {"dtp": RuleSettings(lr=1e-3, feedback_lr=feedback_lr, reconstruction=reconstruction)}
    return Network(NetworkConfig(input_shape=(1, 8, 8), classes=10, layers=tuple(LayerSpec(w) for w in (32, 32, 32)),
                                 rules=tuple(rules), settings=settings, dtype=dtype, seed=seed))


def digits_batch(n=128, dtype=torch.float64):
    data = load_split(DataSpec(kind="digits"), "train")
    return data.x[:n].to(dtype), data.y[:n]


def set_exact_inverse(net: Network, i: int) -> None:
    """``g_i = exact inverse of layer i``: ``V = Q^T = W^{-1}``, ``c = -W^{-1} b``."""
    layer, rule = net.layers[i], net.rules[i]
    with torch.no_grad():
        inv = torch.linalg.inv(layer.weight)
        rule.inverse_weight.copy_(inv.T)
        rule.inverse_bias.copy_(-inv @ layer.bias)


def test_the_feedback_mapping_has_its_own_optimiser_group_at_feedback_lr():
    net = dtp_net(feedback_lr=3e-3)
    sched = Scheduler(net)
    groups = {g["name"]: g for g in sched.optimizer.param_groups}
    assert [g["lr"] for n, g in groups.items() if n.endswith(".feedback")] == [3e-3] * 4
    assert [groups[n]["lr"] for n in net.names] == [1e-3] * 4
    assert {f"rules.{i}.{p}" for i in range(4) for p in ("inverse_weight", "inverse_bias", "seed", "draws")} \
        <= set(net.state_dict())


def test_only_an_applied_step_records_its_reconstruction_loss():
    x, y = digits_batch(32)
    net = dtp_net()
    sched = Scheduler(net)
    sched.compute(x, y)  # an angle measurement or a probe: no step
    assert all(math.isnan(v) for v in state_metrics(net)["reconstruction_loss"])
    sched.train_step(x, y)
    recorded = state_metrics(net)["reconstruction_loss"]
    sched.compute(x[:16], y[:16])
    assert (state_metrics(net)["reconstruction_loss"] == recorded).all()


def test_the_noise_is_redrawn_every_step_and_fixed_within_one():
    x, y = digits_batch(32)
    net = dtp_net()
    rule, layer = net.rules[1], net.layers[1]
    a_in = Scheduler(net).compute(x, y).forward.inputs[1]
    assert torch.equal(rule.noise(a_in), rule.noise(a_in))
    before = rule.noise(a_in)
    rule.after_step(layer)
    assert not torch.equal(before, rule.noise(a_in))


@pytest.mark.parametrize("rule", ["dtp", "lgp"])
def test_conv_layers_learn_their_inverse_too(rule):
    """On a square conv layer, Q's patch matrix with the exact per-patch inverse gives GP's conv inverse message."""
    x, y = digits_batch(32)
    cfg = NetworkConfig(input_shape=(1, 8, 8), classes=10,
                        layers=(LayerSpec(4, kind="conv", kernel=3, stride=2),
                                LayerSpec(8, kind="conv", kernel=3, stride=1, square=True)),
                        rules=("bp", rule, "bp"), settings={rule: RuleSettings(lr=1e-3, feedback_lr=1e-2)},
                        dtype="float64")
    net = Network(cfg)
    layer, lrule = net.layers[1], net.rules[1]
    assert layer.square
    sched = Scheduler(net)
    first = None
    for _ in range(30):
        sched.train_step(x, y)
        first = first if first is not None else state_metrics(net)["reconstruction_loss"][1]
    assert state_metrics(net)["reconstruction_loss"][1] < first
    m = layer.square_matrix()
    with torch.no_grad():
        lrule.inverse_weight.copy_(torch.linalg.inv(m).T.reshape(layer.weight.shape))
    assert lrule.state_metrics(layer)["feedback_angle"] < 1e-6
    v = torch.randn((4, *layer.out_shape), dtype=torch.float64)
    torch.testing.assert_close(lrule.invert_difference(layer, v), layer.inverse(v, layer.factorize()))
