"""Conv layers (REFERENCE.md section 4) past their oracles (tests/oracles/test_conv.py): patch coverage, the dense
layer on a conv map, noise floors, every pair of rules mixing across conv/conv and conv/dense boundaries, the
scheduler's regulariser, presets, and bad shapes and too-small images refused with messages that say what to do.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sim import ConfigError, Network, NoiseFloor, RuleSettings, Scheduler, ShapeError, compare, preset, regularizer
from sim.activation import LEAKY_RELU, LINEAR
from sim.layers import BUILDERS, Conv, Dense
from sim.network import LayerSpec, NetworkConfig
from sim.presets import IMAGENET_CONVS, conv_feature_map, conv_stack
from sim.rules import RULES
from sim.step_options import StepOptions
from tests.helpers import F64, conv_batch, gen, rel, small_imagenet, square_conv


@pytest.mark.parametrize(("k", "s", "h", "values"), [
    (3, 2, 16, {1, 2, 4}), (3, 2, 7, {1, 2, 4}), (3, 2, 17, {1, 2, 4}),
    (5, 2, 15, {4, 6, 9}), (3, 1, 9, {4, 6, 9}), (3, 1, 10, {4, 6, 9}),
    # k5 s2 on an even size: SAME pads 1 before and 2 after, so the first row lies in a single patch.
    (5, 2, 16, {1, 2, 3, 4, 6, 9}),
])
def test_patch_coverage(k, s, h, values):
    layer = square_conv(2, k, s, h, h)
    n_x = layer.coverage[0, 0]
    assert set(n_x.flatten().tolist()) == values
    # Independent count: fold the ones of every patch of the padded map, then crop the padding.
    pt, pb = layer.pad_h
    ho = math.ceil(h / s)
    ones = torch.ones(1, k * k, ho * ho, dtype=F64)
    folded = F.fold(ones, output_size=(h + pt + pb, h + pt + pb), kernel_size=k, stride=s)[0, 0]
    assert torch.equal(folded[pt: pt + h, pt: pt + h], n_x)


def test_dense_on_conv_map_flatten_boundary():
    """The dense output reads a (C, H, W) map: its messages come back in that shape, both directions."""
    layer = Dense("output", (4, 3, 3), 10, square=True, activation=LINEAR, dtype=F64, generator=gen(10))
    x = torch.randn(2, 4, 3, 3, generator=gen(11), dtype=F64, requires_grad=True)
    z = layer(x)
    assert z.shape == (2, 36)
    v = torch.randn(z.shape, generator=gen(12), dtype=F64)
    (gx,) = torch.autograd.grad((z * v).sum(), x)
    with torch.no_grad():
        factors = layer.factorize()
        assert layer.transpose(v).shape == x.shape
        assert torch.allclose(layer.transpose(v), gx, atol=1e-12)
        assert torch.allclose(layer.inverse(v, factors), gx, atol=1e-10)  # orthogonal: inverse = transpose
        assert rel(layer.inverse_target(z, factors, x), x) < 1e-12


def test_noise_floors_on_conv_layers():
    """Activity noise enters conv pre-activations ``[B, D, H', W']`` and BP's reference replays it; message noise
    reaches every conv layer's difference."""
    net = small_imagenet("bp")
    x, y = conv_batch(net)
    corr = compare(Scheduler(net, noise=NoiseFloor(activity_std=0.1)), x, y)
    assert all(n is not None and n.shape[1:] == layer.out_shape
               for n, layer in zip(corr.result.forward.noise, net.layers, strict=True))
    for upd, ref in zip(corr.updates, corr.reference, strict=True):
        assert torch.allclose(upd["weight"], ref["weight"], rtol=1e-10, atol=1e-12)
    gp = small_imagenet("gp", dtype="float32")
    result = Scheduler(gp, noise=NoiseFloor(message_std=1e-3, activity_std=1e-3)).train_step(*conv_batch(gp))
    assert math.isfinite(result.loss.item())


TINY_CONVS = ((3, 2, 4), (3, 1, 4), (3, 2, 8))  # 3x12x12 -> 4x6x6 -> 4x6x6 -> 8x3x3 (72 features) -> dense


@pytest.mark.parametrize("upper", sorted(RULES))
@pytest.mark.parametrize("lower", sorted(RULES))
def test_every_pair_of_rules_mixes_across_conv_and_dense_boundaries(lower, upper):
    for rules in ((lower, lower, upper, upper),   # boundary between conv2 and conv3
                  (lower, lower, lower, upper)):  # boundary between conv3 and the dense output
        net = Network(conv_stack((3, 12, 12), TINY_CONVS, 10, rules=rules, settings={}, dtype="float64",
                                 device="cpu", seed=1))
        x, y = conv_batch(net, seed=2)
        full = Scheduler(net, options=StepOptions(skip_aux=False)).compute(x, y)
        sched = Scheduler(net)
        result = sched.train_step(x, y)
        assert math.isfinite(result.loss.item())
        for i, (layer, msg, upd) in enumerate(zip(net.layers, result.messages, result.updates, strict=True)):
            # a layer that skips its aux units receives (and computes) its forwarded units only
            width = layer.width if sched.narrow[i] else layer.out_shape[0]
            assert msg.d.shape[1:] == (width, *layer.out_shape[1:])
            assert full.messages[i].d.shape[1:] == layer.out_shape
            assert upd["weight"].shape == layer.weight.shape
            assert bool(torch.isfinite(upd["weight"]).all())
            torch.testing.assert_close(upd["weight"], full.updates[i]["weight"], rtol=1e-9, atol=1e-12)
            torch.testing.assert_close(upd["bias"], full.updates[i]["bias"], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("arithmetic", ["difference", "target"])
def test_mixed_rules_train(arithmetic):
    rules = ("fa", "fa", "bp", "bp", "vgp", "gp", "gp", "gp")  # FA below, BP in the middle, GP on top
    settings = {"gp": RuleSettings(arithmetic=arithmetic, ortho_lambda=1.0),
                "vgp": RuleSettings(arithmetic=arithmetic, ortho_lambda=1.0)}
    net = small_imagenet(rules, settings=settings, dtype="float32")
    sched = Scheduler(net)
    before = net.weights()
    for step in range(3):
        x, y = conv_batch(net, n=8, seed=step)
        result = sched.train_step(x, y)
        assert math.isfinite(result.loss.item())
    after = net.weights()
    assert all(not torch.equal(before[n], after[n]) for n in net.names)


def test_scheduler_adds_conv_regulariser_gradient():
    lam = 1.0
    net = small_imagenet("gp", settings={"gp": RuleSettings(ortho_lambda=lam)})
    with torch.no_grad():
        for layer in net.layers:
            layer.weight.add_(0.01 * torch.randn(layer.weight.shape, generator=gen(13), dtype=F64))
    sched = Scheduler(net)
    x, y = conv_batch(net)
    result = sched.compute(x, y)
    conv = net["conv3"]
    m = conv.square_matrix().detach().clone()
    sched.apply(result)
    expected = result.updates[2]["weight"] + regularizer.gradient(m, lam).reshape(conv.weight.shape)
    assert torch.allclose(conv.weight.grad, expected, rtol=1e-12, atol=1e-12)


# ----- presets -------------------------------------------------------------------------------------------------------
def test_imagenet_conv_shapes_at_224():
    convs_gp = ["gp"] * 7
    config = preset("imagenet_conv", (*convs_gp, "bp"), classes=10)  # a small plain output keeps the build cheap
    assert [(s.kernel, s.stride, s.width) for s in config.layers] == list(IMAGENET_CONVS)
    assert conv_feature_map((3, 224, 224), IMAGENET_CONVS) == (192, 4, 4)  # 3072 features (REFERENCE section 5)
    net = Network(config)
    assert [layer.out_shape[0] for layer in net.layers[:-1]] == [24, 216, 600, 432, 432, 864, 864]
    assert net.layers[-1].in_shape == (192, 4, 4)
    assert not net.layers[0].square and all(layer.square for layer in net.layers[1:-1])


def test_width_mult_scales_filters():
    config = preset("imagenet_conv", "bp", width_mult=0.3)
    assert [s.width for s in config.layers] == [max(1, round(f * 0.3)) for _, _, f in IMAGENET_CONVS]
    assert [s.width for s in preset("imagenet_conv", "bp", width_mult=0.001).layers] == [1] * 7
    with pytest.raises(ConfigError, match="width_mult"):
        preset("imagenet_conv", "bp", width_mult=0)


def test_cifar10_conv_preset():
    net = Network(preset("cifar10_conv", "gp", dtype="float64", width_mult=0.25))
    assert net.layers[-1].in_shape == (16, 4, 4) and net.layers[-1].out_shape == (256,)
    x, y = conv_batch(net)
    corr = compare(Scheduler(net), x, y)
    assert max(corr.angle_deg) < 0.05, corr.angle_deg
    with pytest.raises(ConfigError, match="cannot hold 2000 classes"):
        preset("cifar10_conv", "gp", classes=2000)
    Network(preset("cifar10_conv", "bp", classes=2000, width_mult=0.125))  # a plain output holds any number


def test_presets_accept_one_rule_per_layer():
    rules = ("bp", "fa", "gp", "vgp", "gp", "fa", "bp", "gp")
    net = Network(preset("imagenet_conv", rules, image_size=65, width_mult=0.25, classes=10))
    assert net.rule_names == list(rules)
    assert [layer.square for layer in net.layers] == [False, False, True, True, True, False, False, True]
    with pytest.raises(ConfigError, match="rules"):
        preset("imagenet_conv", ("bp", "gp"))


# ----- refusals ------------------------------------------------------------------------------------------------------
def test_too_small_image_refused_with_smallest_size():
    with pytest.raises(ConfigError, match="smallest image_size that works is 65") as info:
        preset("imagenet_conv", "gp", image_size=64, classes=200)
    assert "192 x 1 x 1 = 192 features" in str(info.value)
    preset("imagenet_conv", "gp", image_size=65, classes=200)  # 192 x 2 x 2 = 768 features
    with pytest.raises(ConfigError, match="smallest image_size that works is 257"):  # 48 x 5 x 5 = 1200 >= 1000
        preset("imagenet_conv", "gp", image_size=100, classes=1000, width_mult=0.25)
    preset("imagenet_conv", "bp", image_size=64, classes=200)  # a plain output layer has no such limit
    for bad in (0, -3, 31.5):
        with pytest.raises(ConfigError, match="image_size"):
            preset("imagenet_conv", "bp", image_size=bad)


def test_stride_larger_than_kernel_refused_for_square_layers():
    with pytest.raises(ShapeError, match="stride 4 exceeds kernel 3"):
        Conv("conv2", (4, 16, 16), 4, 3, 4, square=True, activation=LEAKY_RELU)
    config = conv_stack((3, 16, 16), ((3, 2, 4), (2, 3, 4)), 10, rules="gp")
    with pytest.raises(ShapeError, match="conv2.*stride 3 exceeds kernel 2"):
        Network(config)
    Network(conv_stack((3, 16, 16), ((3, 2, 4), (2, 3, 4)), 10, rules="bp"))  # never inverted: allowed


def test_too_many_filters_refused_for_square_layers():
    with pytest.raises(ShapeError, match="D = 18 output channels and can forward at most 18"):
        Conv("conv2", (2, 8, 8), 20, 3, 1, square=True, activation=LEAKY_RELU)


def test_wrong_input_channels_refused():
    net = small_imagenet("gp")
    x = torch.randn(2, 1, 65, 65, dtype=F64)
    with pytest.raises(ShapeError, match="reads inputs of shape"):
        net(x)
    with pytest.raises(ShapeError, match="inputs of shape"):
        Scheduler(net).compute(x, torch.zeros(2, dtype=torch.long))
    conv2 = net["conv2"]
    with pytest.raises(ShapeError, match="conv2"):
        conv2.check_input(torch.randn(2, 5, *conv2.in_shape[1:], dtype=F64))
    # A conv layer above a dense layer has no channels to read.
    with pytest.raises(ShapeError, match="conv layers below dense layers"):
        Network(NetworkConfig(input_shape=(3, 8, 8), classes=10, rules="bp",
                              layers=(LayerSpec(16), LayerSpec(4, "conv", 3, 1))))


def test_wrong_kernel_refused():
    net = small_imagenet("gp")
    conv2 = net["conv2"]
    with pytest.raises(ShapeError, match="conv2"):
        net.set_weights({"conv2": torch.zeros(50, *conv2.weight.shape[1:], dtype=F64)})
    with pytest.raises(ShapeError, match="expected"):
        conv2.feedback(torch.zeros(1, *conv2.out_shape, dtype=F64), torch.zeros(3, 3, 3, 3, dtype=F64))
    conv2.weight = torch.nn.Parameter(torch.zeros(50, *conv2.weight.shape[1:], dtype=F64))
    with pytest.raises(ShapeError, match="D = C k k = 54"):
        conv2.square_matrix()
    with pytest.raises(ShapeError, match="expected"):
        conv2(torch.zeros(1, *conv2.in_shape, dtype=F64))


def test_conv_spec_needs_kernel_and_stride():
    with pytest.raises(ConfigError, match="kernel and stride"):
        Network(NetworkConfig(input_shape=(3, 8, 8), classes=10, layers=(LayerSpec(4, "conv"),)))
    assert "conv" in BUILDERS


def test_target_inverse_needs_forward_input():
    layer = square_conv(2, 3, 1, 5, 5)
    with pytest.raises(ShapeError, match="a_in"):
        layer.inverse_target(torch.zeros(1, *layer.out_shape, dtype=F64), layer.factorize())
