"""Oracles of difference target propagation ``dtp`` (issue 13): the reconstruction loss falls; with ``g_l`` set to
the exact inverse of an invertible layer the difference-corrected target is the exact one; the feedback mapping has
its own optimiser group at ``feedback_lr``; a conv layer is refused with the fix."""

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


@pytest.mark.parametrize("reconstruction", ["dtp", "drl"])
def test_the_reconstruction_loss_falls(reconstruction):
    x, y = digits_batch(256)
    net = dtp_net(reconstruction=reconstruction)
    sched = Scheduler(net)
    trace = []
    for step in range(120):
        sched.train_step(x[(step % 4) * 64:(step % 4 + 1) * 64], y[(step % 4) * 64:(step % 4 + 1) * 64])
        if step % 40 in (0, 39):
            trace.append(state_metrics(net)["reconstruction_loss"])
    first, last = trace[0], trace[-1]
    assert (last < first).all(), trace
    # the square layers (32 -> 32) can reconstruct their input fully; the others keep the floor of what they drop
    assert (last[1:3] < 0.2 * first[1:3]).all(), trace
    # and the learned V comes closer to W^+ in every layer
    assert (state_metrics(net)["feedback_angle"] < 80).all(), state_metrics(net)["feedback_angle"]


@pytest.mark.parametrize("reconstruction", ["dtp", "drl"])
def test_with_g_the_exact_inverse_the_difference_corrected_target_is_the_exact_one(reconstruction):
    x, y = digits_batch(64)
    net = dtp_net(reconstruction=reconstruction)
    for i in (1, 2):  # the two square hidden layers (32 -> 32)
        set_exact_inverse(net, i)
    r = Scheduler(net).compute(x, y)
    fp = r.forward
    for i in (1, 2):
        layer, a, a_in = net.layers[i], fp.outputs[i], fp.inputs[i]
        t = r.messages[i].target(a)  # t_i = a_i + d_i
        exact = torch.linalg.solve(layer.weight, (layer.activation.inverse(t) - layer.bias).T).T  # W^-1 (f^-1(t) - b)
        t_below = r.messages[i - 1].target(a_in)
        torch.testing.assert_close(t_below, exact, rtol=1e-10, atol=1e-12)
        assert torch.equal(r.messages[i - 1].m, r.messages[i].m)  # the multiplier passes through
        # the exact inverse reconstructs perfectly: its loss is zero to float tolerance
        loss, grads = net.rules[i].reconstruction_gradients(layer, a_in)
        assert loss < 1e-24 and grads["inverse_weight"].abs().max() < 1e-10
        assert net.rules[i].state_metrics(layer)["feedback_angle"] < 1e-6


def test_below_a_gp_layer_the_difference_survives_gps_tiny_differences():
    """GP above sends d ~ eta with a large m; the difference form g(a + d) - g(a) keeps it in float32 too."""
    x, y = digits_batch(64, torch.float32)
    net = dtp_net(("bp", "dtp", "gp", "bp"), dtype="float32")
    set_exact_inverse(net, 1)
    r = Scheduler(net).compute(x, y)
    layer, a, msg = net.layers[1], r.forward.outputs[1], r.messages[1]
    v = layer.activation.inverse_difference(a.double(), msg.d.double())
    exact = torch.linalg.solve(layer.weight.double(), v.T).T
    torch.testing.assert_close(r.messages[0].d.double(), exact, rtol=1e-4, atol=1e-4 * exact.abs().max().item())
    assert r.messages[0].d.abs().max() > 0


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
