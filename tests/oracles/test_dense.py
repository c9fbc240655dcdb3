"""Oracle tests: every rule against autograd, float64 and the exact inverse (REFERENCE.md sections 2-3, 7)."""

from __future__ import annotations

import functools

import pytest
import torch

from sim import Scheduler, angle_deg, bp_reference, compare, regularizer
from sim.activation import LEAKY_RELU
from tests.helpers import batch, build, perturb


@pytest.mark.parametrize("net_name", ["cifar10_shallow", "digits_deep"])
def test_bp_rule_equals_autograd(net_name):
    net = build(net_name, "bp")
    perturb(net, 0.1)
    x, y = batch(net, 16)
    result = Scheduler(net).compute(x, y)
    reference = bp_reference(net, x, y)
    for upd, ref in zip(result.updates, reference):
        torch.testing.assert_close(upd["weight"], ref["weight"], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(upd["bias"], ref["bias"], rtol=1e-10, atol=1e-12)


def test_fa_with_feedback_equal_to_forward_weights_is_bp():
    # REFERENCE.md convention: e_{l-1} = B_l^T (D e_l) with B of W's shape, so B = W is BP's W^T message
    # (the "B_l = W_l^T" in the convention where the feedback matrix multiplies from the left).
    net = build("cifar10_deep", "fa")
    perturb(net, 0.1)
    with torch.no_grad():
        for layer, rule in zip(net.layers, net.rules):
            rule.feedback_weight.copy_(layer.weight)
    x, y = batch(net, 16)
    corr = compare(Scheduler(net), x, y)
    for upd, ref in zip(corr.updates, corr.reference):
        torch.testing.assert_close(upd["weight"], ref["weight"], rtol=1e-10, atol=1e-12)


def test_fa_with_random_feedback_departs_from_bp_below_the_output():
    net = build("cifar10_shallow", "fa")
    x, y = batch(net, 32)
    angles = compare(Scheduler(net), x, y).angle_deg
    assert angles[-1] < 1e-6  # the output layer learns from the true error
    assert all(a > 45 for a in angles[:-1])  # every layer below hears it through B


@pytest.mark.parametrize("rule", ["gp", "vgp"])
def test_gp_with_orthogonal_weights_matches_bp(rule):
    # Exactly orthogonal weights (the init), float64, small nudges: GP's update is BP's in direction and scale.
    net = build("cifar10_deep", rule)
    x, y = batch(net, 32)
    corr = compare(Scheduler(net), x, y)
    for name, a, r in zip(corr.layers, corr.angle_deg, corr.norm_ratio):
        assert a < 0.01, (name, a)
        assert abs(r - 1) < 1e-3, (name, r)


def test_gp_difference_form_float32_agrees_with_float64():
    net64 = build("cifar10_deep", "gp", dtype="float64")
    perturb(net64, 0.02)
    net32 = build("cifar10_deep", "gp", dtype="float32")
    net32.set_weights(net64.weights(), net64.biases())
    x, y = batch(net64, 32)
    up64 = Scheduler(net64).compute(x, y).updates
    up32 = Scheduler(net32).compute(x.float(), y).updates
    for layer, u32, u64 in zip(net64.names, up32, up64):
        assert angle_deg(u32["weight"], u64["weight"]) < 0.05, layer


@functools.cache
def _angles(arithmetic: str, dtype: str, rule: str = "gp") -> tuple[float, ...]:
    """Per-layer angles to BP on the deep net, orthogonal init plus a small perturbation (the reference table)."""
    net = build("cifar10_deep", rule, dtype=dtype, arithmetic=arithmetic)
    perturb(net, 0.02)
    x, y = batch(net, 32)
    return tuple(compare(Scheduler(net), x, y).angle_deg)


def test_target_form_collapses_in_float32_but_not_in_float64():
    # REFERENCE.md section 2's table: normalized GP in target form reaches ~90 degrees in every hidden layer of the
    # deep net in float32; in float64 it equals the difference form.
    diff64 = _angles("difference", "float64")
    target64 = _angles("target", "float64")
    target32 = _angles("target", "float32")
    diff32 = _angles("difference", "float32")
    assert all(a > 45 for a in target32[:-1]), target32
    assert all(abs(a - b) < 0.1 for a, b in zip(target64, diff64)), (target64, diff64)
    assert all(abs(a - b) < 0.1 for a, b in zip(diff32, diff64)), (diff32, diff64)
    assert all(a < 10 for a in diff64)


def test_vanilla_gp_target_form_collapses_in_deep_float64():
    # gamma^depth offsets vanish below float64 precision in the lowest layers (the paper's deep vGP failure).
    target64 = _angles("target", "float64", rule="vgp")
    diff64 = _angles("difference", "float64", rule="vgp")
    assert max(target64[:2]) > 45, target64
    assert max(diff64) < 10, diff64


@pytest.mark.parametrize("rule", ["gp", "vgp", "fa"])
def test_output_layer_update_equals_bp_exactly(rule):
    net = build("cifar10_shallow", rule)
    perturb(net, 0.05)
    x, y = batch(net, 16)
    corr = compare(Scheduler(net), x, y)
    torch.testing.assert_close(corr.updates[-1]["weight"], corr.reference[-1]["weight"], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(corr.updates[-1]["bias"], corr.reference[-1]["bias"], rtol=1e-12, atol=1e-14)


def test_dense_inverse_reconstructs_the_input():
    net = build("cifar10_shallow", "gp")
    perturb(net, 0.3)
    layer = net.layers[1]
    x = torch.randn(8, 1024, dtype=torch.float64)
    a = layer(x)
    for method in ("lu", "inv"):
        rec = layer.inverse_target(layer.activation.inverse(a), layer.factorize(method))
        assert ((rec - x).norm() / x.norm()).item() < 1e-6


def test_inverse_difference_has_no_cancellation():
    # v = f^{-1}(a + u) - f^{-1}(a) for a nudge far below float32 resolution of a: the plain form loses it all.
    a = torch.tensor([1.0, -2.0, 3e-8, -3e-8], dtype=torch.float32)
    u = torch.tensor([1e-9, -1e-9, -1e-7, 1e-7], dtype=torch.float32)
    v = LEAKY_RELU.inverse_difference(a, u)
    exact = LEAKY_RELU.inverse(a.double() + u.double()) - LEAKY_RELU.inverse(a.double())
    torch.testing.assert_close(v.double(), exact, rtol=1e-6, atol=0)
    naive = LEAKY_RELU.inverse(a + u) - LEAKY_RELU.inverse(a)
    assert naive[0] == 0  # what target form loses


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_activation_formulas_equal_the_textbook_where_forms_bit_for_bit(dtype):
    # sim.activation avoids torch.where (a scalar loop on CPU); its sign/clamp/blend formulas must pick exactly the
    # values of the piecewise definitions, on zeros, on both pieces across 33 decades, and where the nudge crosses
    # the kink (about a quarter of the entries here)
    g = torch.Generator().manual_seed(7)
    n = 4096
    a = torch.randn(n, generator=g, dtype=dtype) * torch.logspace(-30, 3, n, dtype=dtype)
    a[:50], a[50:100] = 0.0, -0.0
    u = torch.randn(n, generator=g, dtype=dtype) * torch.logspace(3, -30, n, dtype=dtype)
    s = LEAKY_RELU.negative_slope
    one = torch.ones((), dtype=dtype)
    derivative = torch.where(a > 0, one, one * s)
    inverse = torch.where(a > 0, a, a / s)
    moved = a + u
    crossed = torch.where(moved > 0, moved, moved / s) - inverse
    difference = torch.where((a > 0) == (moved > 0), u / derivative, crossed)
    assert ((a > 0) != (moved > 0)).sum() > n // 8
    assert torch.equal(LEAKY_RELU.derivative(a), derivative)
    assert torch.equal(LEAKY_RELU.inverse(a), inverse)
    assert torch.equal(LEAKY_RELU.inverse_difference(a, u), difference)


@pytest.mark.parametrize("n", [64, 600])  # 600: W W^T from the upper block triangle (regularizer.gram)
def test_regulariser_gradient_equals_autograd(n):
    g = torch.Generator().manual_seed(n)
    w = (torch.eye(n, dtype=torch.float64) + 0.1 * torch.randn(n, n, generator=g, dtype=torch.float64) / n**0.5)
    w.requires_grad_(True)
    r = regularizer.penalty(w, 3.0)
    (auto,) = torch.autograd.grad(r, w)
    torch.testing.assert_close(regularizer.gradient(w.detach(), 3.0), auto, rtol=1e-12, atol=1e-10)
    # penalty itself against the textbook formula (autograd of penalty went through gram's block products)
    textbook = 3.0 * ((w @ w.T - torch.eye(n, dtype=torch.float64)) ** 2).sum()
    torch.testing.assert_close(r, textbook, rtol=1e-12, atol=1e-12)


def test_regulariser_alone_keeps_orthogonal_weights_and_drives_others_toward_it():
    net = build("digits_deep", "gp")
    perturb(net, 0.3)
    from sim import regularizer as reg
    before = [reg.ortho_error(layer.square_matrix()) for layer in net.layers if layer.square]
    sched = Scheduler(net)
    x, y = batch(net, 8)
    for _ in range(20):
        result = sched.compute(x, y)
        for upd in result.updates:  # regulariser only: zero the task updates
            for v in upd.values():
                v.zero_()
        sched.apply(result)
    after = [reg.ortho_error(layer.square_matrix()) for layer in net.layers if layer.square]
    assert all(b2 < b1 for b1, b2 in zip(before, after)), (before, after)
