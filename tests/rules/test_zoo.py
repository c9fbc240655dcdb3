"""Oracles and contracts of the rule zoo (issue 13): DFA, the sign-symmetry rules, Kolen-Pollack; every pair of rules
in adjacent layers; exact resume of learned state."""

from __future__ import annotations

import copy
import io
import itertools
import math

import pytest
import torch

from sim import Network, NetworkConfig, Scheduler, compare
from sim.activation import LINEAR
from sim.correspondence import angle_deg
from sim.data import load_split
from sim.data.spec import DataSpec
from sim.metrics import state_metrics
from sim.network import LayerSpec
from sim.rules import RULES, RuleSettings


def dense_net(rules, widths=(32, 32, 32), *, dtype="float64", settings=None, seed=0, classes=10) -> Network:
    return Network(NetworkConfig(input_shape=(1, 8, 8), classes=classes, layers=tuple(LayerSpec(w) for w in widths),
                                 rules=tuple(rules), settings=settings or {}, dtype=dtype, seed=seed))


def digits_batch(n=128, dtype=torch.float64):
    data = load_split(DataSpec(kind="digits"), "train")
    return data.x[:n].to(dtype), data.y[:n]


# ----- DFA ----------------------------------------------------------------------------------------------------------
def test_dfa_with_one_hidden_layer_sends_fas_message_for_the_same_b():
    x, y = digits_batch(64)
    fa = dense_net(["fa", "fa"], widths=(32,))
    dfa = dense_net(["dfa", "fa"], widths=(32,))
    with torch.no_grad():
        dfa.rules[0].broadcast_weight.copy_(fa.rules[1].feedback_weight.T)  # B_1 [32, 10] = B_out^T
    assert torch.equal(dfa.layers[0].weight, fa.layers[0].weight)  # same forward weights (seeded apart)
    r_fa, r_dfa = Scheduler(fa).compute(x, y), Scheduler(dfa).compute(x, y)
    torch.testing.assert_close(r_dfa.messages[0].error, r_fa.messages[0].error, rtol=1e-12, atol=1e-15)
    for a, b in zip(r_dfa.updates, r_fa.updates):
        torch.testing.assert_close(a["weight"], b["weight"], rtol=1e-12, atol=1e-15)


def test_dfa_in_a_linear_network_with_b_the_product_of_transposed_weights_above_equals_bp():
    x, y = digits_batch(64)
    net = dense_net(["dfa"] * 4)
    for layer in net.layers[:-1]:
        layer.activation = LINEAR
    with torch.no_grad():
        for i in range(len(net.layers) - 1):
            above = net.layers[-1].weight
            for layer in reversed(net.layers[i + 1:-1]):
                above = above @ layer.weight  # W_L ... W_{l+1}: [classes, n_l]
            net.rules[i].broadcast_weight.copy_(above.T)
    sched = Scheduler(net)
    for _ in range(3):
        corr = compare(sched, x, y)
        assert max(corr.angle_deg) < 1e-6, corr.angle_deg
        for upd, ref in zip(corr.updates, corr.reference):
            torch.testing.assert_close(upd["weight"], ref["weight"], rtol=1e-9, atol=1e-12)
        assert all(abs(r - 1) < 1e-9 for r in corr.norm_ratio), corr.norm_ratio
        sched.train_step(x, y)
        # keep B_l the product of the (updated) weights above: the oracle holds at every step
        with torch.no_grad():
            for i in range(len(net.layers) - 1):
                above = net.layers[-1].weight
                for layer in reversed(net.layers[i + 1:-1]):
                    above = above @ layer.weight
                net.rules[i].broadcast_weight.copy_(above.T)


def test_the_broadcast_channel_reaches_only_direct_layers():
    """A DFA layer's message does not depend on the layers between it and the output (only e does)."""
    x, y = digits_batch(32)
    net = dense_net(["dfa", "bp", "dfa", "bp"])
    r = Scheduler(net).compute(x, y)
    e = 0.5 * (torch.softmax(r.logits, 1) - torch.nn.functional.one_hot(y, 10).double())
    torch.testing.assert_close(r.messages[0].error, e @ net.rules[0].broadcast_weight.T)
    torch.testing.assert_close(r.messages[2].error, e @ net.rules[2].broadcast_weight.T)


# ----- sign symmetry ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", ["usf", "brsf", "frsf"])
def test_sign_feedback_has_the_forward_signs_at_every_step_and_aligns_with_bp(rule):
    x, y = digits_batch(128)
    net = dense_net([rule] * 4, settings={rule: RuleSettings(lr=1e-3, betas=(0.9, 0.99), eps=1e-4)})
    sched = Scheduler(net)
    before = [copy.deepcopy(getattr(r, "magnitude", None)) for r in net.rules]
    for _ in range(5):
        for layer, r in zip(net.layers, net.rules):
            assert torch.equal(torch.sign(r.feedback_weight(layer)), torch.sign(layer.weight))
        sched.train_step(x, y)
        after = [getattr(r, "magnitude", None) for r in net.rules]
        if rule == "brsf":
            assert all(not torch.equal(a, b) for a, b in zip(before, after))  # redrawn every batch
        elif rule == "frsf":
            assert all(torch.equal(a, b) for a, b in zip(before, after))  # fixed
        before = [copy.deepcopy(m) for m in after]
    angles = compare(sched, x, y).angle_deg
    assert sum(angles[:-1]) / len(angles[:-1]) < 90, angles
    assert all(0 <= a < 90 for a in state_metrics(net)["feedback_angle"])


# ----- Kolen-Pollack ------------------------------------------------------------------------------------------------
def kp_net(decay=0.0, lr=1e-3, **kw) -> Network:
    return dense_net(["kp"] * 4, settings={"kp": RuleSettings(lr=lr, betas=(0.9, 0.999), eps=1e-8, decay=decay)},
                     **kw)


@pytest.mark.parametrize("decay", [0.0, 0.5])
def test_kp_with_b_initialised_to_w_equals_bp_at_every_step(decay):
    x, y = digits_batch(64)
    net = kp_net(decay)
    with torch.no_grad():
        for layer, rule in zip(net.layers, net.rules):
            rule.feedback_weight.copy_(layer.weight)
    sched = Scheduler(net)
    for _ in range(5):
        corr = compare(sched, x, y)
        assert max(corr.angle_deg) < 1e-6 and all(abs(r - 1) < 1e-9 for r in corr.norm_ratio), corr.angle_deg
        sched.train_step(x, y)
        for layer, rule in zip(net.layers, net.rules):
            assert torch.equal(rule.feedback_weight, layer.weight)  # same update, same Adam step: B stays W


def test_kp_learns_its_feedback_from_a_random_start():
    x, y = digits_batch(256)
    net = kp_net(decay=2.0, lr=3e-3)
    sched = Scheduler(net)
    first = state_metrics(net)["feedback_angle"]
    assert (first[:-1] > 80).all()
    trace = []
    for step in range(150):
        sched.train_step(x[(step % 4) * 64:(step % 4 + 1) * 64], y[(step % 4) * 64:(step % 4 + 1) * 64])
        if step % 50 == 49:
            trace.append(state_metrics(net)["feedback_angle"])
    for a, b in itertools.pairwise([first, *trace]):
        assert (b < a).all(), trace  # falls at every record, in every layer
    assert (trace[-1] < 0.5 * first).all(), trace
    # and the hidden layers' updates come closer to BP's than FA's would
    assert sum(compare(sched, x, y).angle_deg[:-1]) / 3 < 60


def test_kp_feedback_is_a_parameter_with_its_own_optimiser_group():
    net = kp_net(decay=0.1)
    sched = Scheduler(net)
    names = [g["name"] for g in sched.optimizer.param_groups]
    assert names == [*net.names, *[f"{n}.feedback" for n in net.names]]
    for g in sched.optimizer.param_groups:
        assert g["weight_decay"] == 0.1 and g["lr"] == 1e-3
    assert {f"rules.{i}.feedback_weight" for i in range(4)} <= set(net.state_dict())


@pytest.mark.parametrize("rule", ["kp", "brsf", "dtp", "lgp"])
def test_resume_of_learned_state_is_bit_identical(rule):
    x, y = digits_batch(96)
    settings = {rule: RuleSettings(lr=1e-3, decay=0.1) if rule == "kp" else RuleSettings(lr=1e-3, feedback_lr=1e-2)}
    net = dense_net([rule] * 4, dtype="float32", settings=settings)
    sched = Scheduler(net)
    for _ in range(3):
        sched.train_step(x[:64].float(), y[:64])
    buf = io.BytesIO()
    torch.save({"net": net.state_dict(), "sched": sched.state_dict()}, buf)
    for _ in range(4):
        sched.train_step(x[32:].float(), y[32:])
    buf.seek(0)
    state = torch.load(buf, weights_only=False)
    fresh = dense_net([rule] * 4, dtype="float32", settings=settings, seed=1)  # other init: all must come back
    fresh.load_state_dict(state["net"])
    sched2 = Scheduler(fresh)
    sched2.load_state_dict(state["sched"])
    for _ in range(4):
        sched2.train_step(x[32:].float(), y[32:])
    a, b = net.state_dict(), fresh.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ----- every pair of rules in adjacent layers --------------------------------------------------------------------
PAIRS = list(itertools.product(sorted(RULES), repeat=2))


@pytest.mark.parametrize(("lower", "upper"), PAIRS, ids=[f"{a}-below-{b}" for a, b in PAIRS])
def test_every_pair_of_rules_composes_and_a_bp_layer_above_any_rule_is_exact(lower, upper):
    net = dense_net(["bp", lower, upper, "bp"], dtype="float64")
    sched = Scheduler(net)
    x, y = digits_batch(32)
    for _ in range(2):
        assert math.isfinite(sched.train_step(x, y).loss.item())
    corr = compare(sched, x, y)
    assert all(math.isfinite(a) for a in corr.angle_deg)
    assert corr.angle_deg[-1] < 1e-6
    if upper == "bp":
        assert corr.angle_deg[2] < 1e-6, corr.angle_deg


def test_a_layer_that_cannot_take_an_inverting_rule_says_how_to_fix_the_network():
    from sim import ShapeError

    with pytest.raises(ShapeError, match="no wider than the one below or give it a non-inverting rule"):
        dense_net(["bp", "gp", "bp"], widths=(16, 32))
    assert angle_deg(torch.ones(3), torch.ones(3)) == 0
