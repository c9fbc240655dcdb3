"""Conv layer oracles (REFERENCE.md section 4), the conv half of the oracles-first rule:

* the target-form inverse reconstructs the forward input exactly (every kernel/stride/padding of the nets, odd and
  even sizes, border pixels included);
* with orthogonal M the difference-form inverse is BP's input gradient (autograd);
* BP on conv nets equals autograd, FA with B = W equals BP, GP with orthogonal weights and small eta equals BP;
* the regulariser's gradient on a conv kernel equals autograd's.
"""

from __future__ import annotations

import pytest
import torch

from sim import Network, RuleSettings, Scheduler, compare, preset, regularizer
from sim.activation import LINEAR
from sim.layers import Conv
from sim.network import LayerSpec, NetworkConfig
from tests.helpers import CASE_IDS, CASES, F64, conv_batch, gen, rel, small_imagenet, square_conv


# ----- exact inversion ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["lu", "inv"])
@pytest.mark.parametrize(("c", "k", "s", "h", "w"), CASES, ids=CASE_IDS)
def test_target_inverse_reconstructs_input(c, k, s, h, w, method):
    layer = square_conv(c, k, s, h, w, perturb=0.1)
    x = torch.randn(3, c, h, w, generator=gen(2), dtype=F64)
    with torch.no_grad():
        z = layer.preactivation(x)
        rec = layer.inverse_target(z, layer.factorize(method), x)
    assert rec.shape == x.shape
    assert rel(rec, x) < 1e-6
    assert rel(rec, x) < 1e-10  # measured 1e-15 .. 3e-12 (k9 s4, D = 243)
    # Border pixels (covered by the fewest patches, partly by padding) are reconstructed too.
    for border in (rec[..., 0, :] - x[..., 0, :], rec[..., -1, :] - x[..., -1, :],
                   rec[..., :, 0] - x[..., :, 0], rec[..., :, -1] - x[..., :, -1]):
        assert border.abs().max().item() < 1e-9


@pytest.mark.parametrize(("c", "k", "s", "h", "w"), CASES, ids=CASE_IDS)
def test_target_form_minus_activity_equals_difference_form(c, k, s, h, w):
    layer = square_conv(c, k, s, h, w, perturb=0.1)
    x = torch.randn(2, c, h, w, generator=gen(3), dtype=F64)
    factors = layer.factorize("lu")
    with torch.no_grad():
        z = layer.preactivation(x)
        v = 1e-3 * torch.randn(z.shape, generator=gen(4), dtype=F64)
        d_target = layer.inverse_target(z + v, factors, x) - x
        d_difference = layer.inverse(v, factors)
    assert rel(d_target, d_difference) < 1e-9


# ----- messages against autograd -------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["lu", "inv"])
@pytest.mark.parametrize(("c", "k", "s", "h", "w"), CASES, ids=CASE_IDS)
def test_difference_inverse_of_orthogonal_is_bp_input_gradient(c, k, s, h, w, method):
    layer = square_conv(c, k, s, h, w)  # exactly orthogonal M as initialised (float64)
    m = layer.square_matrix().detach()
    assert torch.allclose(m @ m.T, torch.eye(m.shape[0], dtype=F64), atol=1e-12)
    x = torch.randn(2, c, h, w, generator=gen(5), dtype=F64, requires_grad=True)
    v = torch.randn(2, *layer.out_shape, generator=gen(6), dtype=F64)
    (grad_x,) = torch.autograd.grad((layer(x) * v).sum(), x)
    with torch.no_grad():
        inv = layer.inverse(v, layer.factorize(method))
        tr = layer.transpose(v)
    assert inv.shape == tr.shape == x.shape
    assert rel(tr, grad_x) < 1e-12
    assert rel(inv, grad_x) < 1e-10
    assert rel(inv, tr) < 1e-10


@pytest.mark.parametrize(("c", "k", "s", "h", "w", "square"), [
    *[(*case, True) for case in CASES],
    (3, 9, 4, 33, 30, False), (3, 2, 3, 13, 11, False), (3, 1, 2, 8, 9, False),  # first layers, stride may > kernel
])
def test_transpose_feedback_local_gradients_match_autograd(c, k, s, h, w, square):
    layer = Conv("conv", (c, h, w), 5 if not square else c, k, s, square=square, activation=LINEAR, dtype=F64,
                 generator=gen(7))
    x = torch.randn(2, c, h, w, generator=gen(8), dtype=F64, requires_grad=True)
    delta = torch.randn(2, *layer.out_shape, generator=gen(9), dtype=F64)
    gx, gw, gb = torch.autograd.grad((layer(x) * delta).sum(), (x, layer.weight, layer.bias))
    with torch.no_grad():
        assert torch.allclose(layer.transpose(delta), gx, rtol=1e-12, atol=1e-12)
        assert torch.allclose(layer.feedback(delta, layer.weight), gx, rtol=1e-12, atol=1e-12)
        grads = layer.local_gradients(x.detach(), delta)
    assert torch.allclose(grads["weight"], gw, rtol=1e-10, atol=1e-10)
    assert torch.allclose(grads["bias"], gb, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("arithmetic", "method"), [("difference", "lu"), ("target", "lu"), ("difference", "inv")])
def test_gp_matches_bp_on_orthogonal_conv_net(arithmetic, method):
    settings = {"gp": RuleSettings(eta=1e-7, arithmetic=arithmetic, inverse=method)}
    net = small_imagenet("gp", settings=settings)
    assert all(layer.square for layer in net.layers[1:])
    x, y = conv_batch(net)
    corr = compare(Scheduler(net), x, y)
    assert max(corr.angle_deg) < 0.05, corr.angle_deg
    for ratio in corr.norm_ratio:
        assert abs(ratio - 1) < 1e-3


def test_fa_with_feedback_equal_to_weights_is_bp():
    net = small_imagenet("fa")
    with torch.no_grad():
        for layer, rule in zip(net.layers, net.rules, strict=True):
            rule.feedback_weight.copy_(layer.weight)
    x, y = conv_batch(net)
    corr = compare(Scheduler(net), x, y)
    assert max(corr.angle_deg) < 1e-5, corr.angle_deg
    for upd, ref in zip(corr.updates, corr.reference, strict=True):
        assert torch.allclose(upd["weight"], ref["weight"], rtol=1e-9, atol=1e-12)
        assert torch.allclose(upd["bias"], ref["bias"], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["imagenet", "cifar10", "odd_first_layer"])
def test_bp_rule_equals_autograd(name):
    if name == "imagenet":
        net = small_imagenet("bp")
    elif name == "cifar10":
        net = Network(preset("cifar10_conv", "bp", width_mult=0.25, dtype="float64"))
    else:  # a first layer whose stride exceeds its kernel, on a non-square odd image
        net = Network(NetworkConfig(input_shape=(2, 13, 11), classes=5, rules="bp", dtype="float64",
                                    layers=(LayerSpec(6, "conv", 2, 3), LayerSpec(4, "conv", 3, 1))))
    x, y = conv_batch(net)
    corr = compare(Scheduler(net), x, y)
    for upd, ref in zip(corr.updates, corr.reference, strict=True):
        assert torch.allclose(upd["weight"], ref["weight"], rtol=1e-10, atol=1e-12)
        assert torch.allclose(upd["bias"], ref["bias"], rtol=1e-10, atol=1e-12)


def test_regulariser_on_conv_kernel_equals_autograd():
    layer = square_conv(3, 3, 2, 8, 8, perturb=0.05)
    lam = 0.7
    w = layer.weight.detach().clone().requires_grad_(True)
    d = layer.patch_size
    (auto,) = torch.autograd.grad(regularizer.penalty(w.reshape(d, d), lam), w)
    m = layer.square_matrix().detach()
    assert torch.allclose(m, w.detach().reshape(d, d))
    manual = regularizer.gradient(m, lam).reshape(layer.weight.shape)
    assert torch.allclose(manual, auto, rtol=1e-12, atol=1e-12)
