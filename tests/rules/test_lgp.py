"""Oracles of GP with a learned inverse ``lgp`` (issue 13): with ``V = W^{-1}`` it is ``gp`` to float tolerance
(messages and updates, over several steps); trained from a random ``V`` its ``feedback_angle`` to ``W^{-1}`` falls
and its angle to BP is reported per layer."""

from __future__ import annotations

import math

import torch

from sim import Network, NetworkConfig, Scheduler, compare
from sim.data import load_split
from sim.data.spec import DataSpec
from sim.metrics import state_metrics
from sim.network import LayerSpec
from sim.rules import RuleSettings


def net_of(rule, *, feedback_lr=1e-2, dtype="float64", seed=0) -> Network:
    settings = {"gp": RuleSettings(lr=1e-3, ortho_lambda=1.0),
                "lgp": RuleSettings(lr=1e-3, ortho_lambda=1.0, feedback_lr=feedback_lr)}
    return Network(NetworkConfig(input_shape=(1, 8, 8), classes=10, layers=tuple(LayerSpec(w) for w in (32, 32, 32)),
                                 rules=(rule,) * 4, settings={rule: settings[rule]}, dtype=dtype, seed=seed))


def digits_batch(n=128, dtype=torch.float64):
    data = load_split(DataSpec(kind="digits"), "train")
    return data.x[:n].to(dtype), data.y[:n]


def set_exact_inverses(net: Network) -> None:
    with torch.no_grad():
        for layer, rule in zip(net.layers, net.rules):
            if layer.square:
                rule.inverse_weight.copy_(torch.linalg.inv(layer.weight).T)


def test_lgp_with_the_exact_inverse_equals_gp_at_every_step():
    x, y = digits_batch(64)
    gp, lgp = net_of("gp"), net_of("lgp")
    assert [tuple(a.weight.shape) for a in gp.layers] == [tuple(b.weight.shape) for b in lgp.layers]
    assert lgp.layers[-1].square and lgp.layers[-1].width < lgp.layers[-1].out_shape[0]  # aux units, as GP's
    s_gp, s_lgp = Scheduler(gp), Scheduler(lgp)
    for _ in range(3):
        for a, b in zip(gp.layers, lgp.layers):
            torch.testing.assert_close(b.weight, a.weight, rtol=1e-9, atol=1e-12)
        set_exact_inverses(lgp)
        r_gp, r_lgp = s_gp.compute(x, y), s_lgp.compute(x, y)
        for ma, mb in zip(r_gp.messages, r_lgp.messages):
            torch.testing.assert_close(mb.m, ma.m, rtol=1e-9, atol=0)
            torch.testing.assert_close(mb.d, ma.d, rtol=1e-8, atol=1e-12 * ma.d.abs().max().item())
        for ua, ub in zip(r_gp.updates, r_lgp.updates):
            for k in ua:
                torch.testing.assert_close(ub[k], ua[k], rtol=1e-8, atol=1e-10 * ua[k].abs().max().item())
        s_gp.apply(r_gp)
        s_lgp.apply(r_lgp)
    # the angle to BP agrees too
    set_exact_inverses(lgp)
    a_gp, a_lgp = compare(s_gp, x, y).angle_deg, compare(s_lgp, x, y).angle_deg
    assert max(abs(p - q) for p, q in zip(a_gp, a_lgp)) < 1e-6, (a_gp, a_lgp)


def test_trained_lgp_learns_its_inverse_and_reports_its_angle_to_bp_per_layer():
    x, y = digits_batch(256)
    net = net_of("lgp", feedback_lr=1e-2)
    sched = Scheduler(net)
    first = state_metrics(net)["feedback_angle"]
    assert (first[1:] > 60).all(), first  # a random orthogonal V is far from W^-1
    angles_bp = [compare(sched, x[:128], y[:128]).angle_deg]
    losses = []
    for step in range(120):
        sched.train_step(x[(step % 4) * 64:(step % 4 + 1) * 64], y[(step % 4) * 64:(step % 4 + 1) * 64])
        if step in (0, 119):
            losses.append(state_metrics(net)["reconstruction_loss"])
    last = state_metrics(net)["feedback_angle"]
    assert (last[1:] < 0.5 * first[1:]).all(), (first, last)  # the square layers' V -> W^-1
    assert (losses[-1][1:] < 0.2 * losses[0][1:]).all(), losses
    angles_bp.append(compare(sched, x[:128], y[:128]).angle_deg)
    assert all(math.isfinite(a) for a in angles_bp[-1]) and angles_bp[-1][-1] < 1e-6
    # with a learned inverse close to W^-1 the hidden layers' updates come close to BP's (GP's are ~1 degree)
    assert sum(angles_bp[-1][:-1]) / 3 < sum(angles_bp[0][:-1]) / 3, angles_bp
