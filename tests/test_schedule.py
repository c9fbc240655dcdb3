"""The fast paths compute what the reference paths compute (docs/performance.md).

* GP with LU factors in float32 (the fast path) against the exact reference (explicit inverse, float64): the same
  angles to BP within 0.05 degrees per layer and the same updates, on every preset, dense and conv;
* the three numerics-check modes give bit-identical steps, the deferred ones raise the same errors, and the
  non-checking and per-step modes read nothing back from the device but the one flag;
* skipping the aux units of difference-form GP layers (``StepOptions(skip_aux=True)``, the default) changes nothing
  but rounding, and is not done where the aux units are read (target form, message noise);
* the in-place regulariser equals the textbook formula bit for bit; ``ortho_every`` and fused Adam do what they say.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from sim import Network, NoiseFloor, NonFiniteError, Scheduler, ShapeError, SingularLayerError, compare, preset
from sim import regularizer as reg
from sim.correspondence import angle_deg
from sim.linalg import factorize
from sim.step_options import StepOptions
from tests.helpers import batch, perturb

#: one torch thread: the small steps here are faster single-threaded on a shared 2-core box (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")

#: every preset, sized to run in well under a second per step (conv nets thinned, small images)
PRESET_CASES = {
    "digits_shallow": {},
    "digits_deep": {},
    "cifar10_shallow": {},
    "cifar10_deep": {},
    "cifar10_conv": {"width_mult": 0.25},
    "imagenet_conv": {"image_size": 64, "width_mult": 0.25, "classes": 10},
}

#: the 1024-wide CIFAR-10 dense nets take 5-20 s per case here; the digits dense nets run the same dense code fast
SLOW_PRESETS = ("cifar10_shallow", "cifar10_deep")
PRESET_PARAMS = [pytest.param(name, marks=[pytest.mark.slow] if name in SLOW_PRESETS else []) for name in PRESET_CASES]

_NETS: dict = {}


def _net(name: str, rule: str, dtype: str, **changes) -> Network:
    """A float64 build of ``name`` with orthogonal init plus a 0.3 perturbation (cached), cast to ``dtype``, with
    ``changes`` applied to the rule's settings."""
    if (name, rule) not in _NETS:
        net = Network(preset(name, rule, dtype="float64", **PRESET_CASES[name]))
        perturb(net, 0.3)
        _NETS[(name, rule)] = net
    net = copy.deepcopy(_NETS[(name, rule)]).to({"float32": torch.float32, "float64": torch.float64}[dtype])
    for r in net.rules:
        r.settings = replace(r.settings, **changes)
    return net


@pytest.mark.parametrize("rule", ["gp", "vgp"])
@pytest.mark.parametrize("name", PRESET_PARAMS)
def test_fast_gp_matches_the_exact_inverse_in_float64(name, rule):
    if rule == "vgp" and name not in ("digits_deep", "cifar10_conv"):
        pytest.skip("vanilla GP: one dense and one conv net suffice")
    exact_net = _net(name, rule, "float64", inverse="inv")
    x, y = batch(exact_net, 6)
    exact = compare(Scheduler(exact_net), x, y)
    fast_net = _net(name, rule, "float32", inverse="lu")
    fast = compare(Scheduler(fast_net), x.float(), y)
    lu64 = compare(Scheduler(_net(name, rule, "float64", inverse="lu")), x, y)
    for i, layer in enumerate(exact.layers):
        assert abs(fast.angle_deg[i] - exact.angle_deg[i]) < 0.05, (layer, fast.angle_deg, exact.angle_deg)
        for k in ("weight", "bias"):
            ref, got = exact.updates[i][k], fast.updates[i][k]
            if torch.linalg.vector_norm(ref) > 0:
                assert angle_deg(got, ref) < 0.05, (layer, k)
                ratio = torch.linalg.vector_norm(got.double()) / torch.linalg.vector_norm(ref)
                assert abs(ratio.item() - 1) < 1e-3, (layer, k, ratio)
            # LU and explicit inverse in float64: the same numbers to ~1e-9
            torch.testing.assert_close(lu64.updates[i][k], ref, rtol=1e-8, atol=1e-9 * ref.abs().max().item())
    # the angles are not trivially zero: the perturbation makes GP depart from BP below the output
    assert max(exact.angle_deg[:-1]) > 0.1


@pytest.mark.parametrize("name", PRESET_PARAMS)
def test_skipping_aux_units_changes_nothing_but_rounding(name):
    net = _net(name, "gp", "float64")
    x, y = batch(net, 6)
    full = Scheduler(net, options=StepOptions(skip_aux=False)).compute(x, y)
    sched = Scheduler(net)
    fast = sched.compute(x, y)
    has_aux = [layer.square and layer.width < layer.out_shape[0] for layer in net.layers]
    assert sched.narrow == has_aux and any(has_aux)  # every preset's GP output layer at least has aux units
    for i, layer in enumerate(net.layers):
        d_full, d = full.messages[i].d, fast.messages[i].d
        k = d.shape[1]
        assert k == (layer.width if has_aux[i] else layer.out_shape[0])
        assert fast.forward.outputs[i].shape == d.shape
        # what is skipped is exactly zero in the full computation: the aux units' d and their update rows
        assert not d_full[:, k:].any()
        assert not full.updates[i]["weight"][k:].any() and not fast.updates[i]["weight"][k:].any()
        torch.testing.assert_close(fast.forward.outputs[i], full.forward.outputs[i][:, :k], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(d, d_full[:, :k], rtol=1e-9, atol=1e-9 * d_full.abs().max().item())
        torch.testing.assert_close(fast.messages[i].m, full.messages[i].m, rtol=1e-9, atol=0)
        for key in ("weight", "bias"):
            ref = full.updates[i][key]
            torch.testing.assert_close(fast.updates[i][key], ref, rtol=1e-9, atol=1e-9 * ref.abs().max().item())


def test_aux_units_are_computed_where_they_are_read():
    net = _net("cifar10_conv", "gp", "float32")
    has_aux = [layer.square and layer.width < layer.out_shape[0] for layer in net.layers]
    # the target form materialises t = a + d on every unit, aux included
    target = _net("cifar10_conv", "gp", "float32", arithmetic="target")
    assert not any(Scheduler(target).narrow)
    # message noise gives the aux units a non-zero d
    stds = tuple(0.1 if i == 2 else 0.0 for i in range(len(net.layers)))
    noisy = Scheduler(net, noise=NoiseFloor(message_std=stds))
    assert noisy.narrow == [a and i != 2 for i, a in enumerate(has_aux)] and has_aux[2]
    x, y = batch(net, 4)
    assert noisy.compute(x, y).messages[2].d.shape[1:] == net.layers[2].out_shape
    assert not any(Scheduler(net, options=StepOptions(skip_aux=False)).narrow)
    # decided at every step from the rules' current settings
    sched = Scheduler(net)
    assert sched.narrow == has_aux
    for rule in net.rules:
        rule.settings = replace(rule.settings, arithmetic="target")
    assert not any(sched.narrow)
    assert sched.compute(x, y).messages[2].d.shape[1:] == net.layers[2].out_shape


@pytest.mark.parametrize("mode", ["step", "off", False])
def test_numerics_modes_compute_bit_identical_steps(mode):
    nets = [_net("digits_deep", "gp", "float32") for _ in range(2)]
    x, y = batch(nets[0], 8)
    ref, got = Scheduler(nets[0]), Scheduler(nets[1], options=StepOptions(check_numerics=mode))
    for _ in range(3):
        a, b = ref.train_step(x, y), got.train_step(x, y)
        for ua, ub in zip(a.updates, b.updates):
            assert all(torch.equal(ua[k], ub[k]) for k in ua)
    for la, lb in zip(nets[0].layers, nets[1].layers):
        assert torch.equal(la.weight, lb.weight)


def test_numerics_mode_is_validated():
    with pytest.raises(Exception, match="check_numerics must be"):
        StepOptions(check_numerics="sometimes")
    with pytest.raises(Exception, match="options must be a StepOptions"):
        Scheduler(_net("digits_shallow", "bp", "float32"), options={"check_numerics": "off"})


def _raised(make_net, x, y, mode):
    try:
        Scheduler(make_net(), options=StepOptions(check_numerics=mode)).compute(x, y)
    except (NonFiniteError, ShapeError, SingularLayerError) as exc:
        return type(exc), str(exc)
    return None


def test_step_mode_raises_what_tensor_mode_raises():
    net = _net("digits_deep", "gp", "float32")
    x, y = batch(net, 4)
    x_nan = x.clone()
    x_nan[1, 0, 2, 3] = float("nan")

    def singular():
        n = _net("digits_deep", "gp", "float32")
        with torch.no_grad():
            n.layers[3].weight[5] = n.layers[3].weight[6]
        return n

    def inf_bias():
        n = _net("digits_deep", "gp", "float32")
        with torch.no_grad():
            n.layers[4].bias[0] = float("inf")
        return n

    same = lambda: _net("digits_deep", "gp", "float32")  # noqa: E731
    for make, xb, yb, kind in ((same, x_nan, y, NonFiniteError), (same, x, y + 10, ShapeError),
                               (singular, x, y, SingularLayerError), (inf_bias, x, y, NonFiniteError)):
        want = _raised(make, xb, yb, "tensor")
        assert want is not None and want[0] is kind
        assert _raised(make, xb, yb, "step") == want


def test_step_mode_repeats_a_flagged_step_with_the_same_noise():
    from sim import NoiseFloor

    nets = [_net("digits_shallow", "gp", "float32") for _ in range(2)]
    x, y = batch(nets[0], 4)
    noise = NoiseFloor(message_std=1e-3, activity_std=1e-2)
    ref, got = Scheduler(nets[0], noise=noise, seed=3), Scheduler(nets[1], noise=noise, seed=3,
                                                            options=StepOptions(check_numerics="step"))
    calls = []
    original = got._compute

    def false_alarm(xb, yb, check, part=None):  # as if a checksum had overflowed: the flag is set, nothing is wrong
        calls.append(check if check is True else "flags")
        result = original(xb, yb, check, part)
        if isinstance(check, list):
            check.append(torch.tensor(True))
        return result

    got._compute = false_alarm
    a, b = ref.compute(x, y), got.compute(x, y)
    assert calls == ["flags", True]
    for ua, ub in zip(a.updates, b.updates):
        assert all(torch.equal(ua[k], ub[k]) for k in ua)
    assert torch.equal(ref.generator.get_state(), got.generator.get_state())


class _Reads:
    """Counts tensor -> Python conversions (each one a host-device sync on a GPU) while active."""

    NAMES = ("__bool__", "item", "__float__", "__int__", "__index__", "tolist")

    def __init__(self, monkeypatch):
        self.count = 0
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)

            def counted(t, *args, _original=original, **kwargs):
                self.count += 1
                return _original(t, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)


@pytest.mark.parametrize(("name", "mode", "reads"), [
    ("digits_deep", "off", 0), ("digits_deep", "step", 1), ("cifar10_conv", "off", 0), ("cifar10_conv", "step", 1),
])
def test_a_step_reads_nothing_back_from_the_device(monkeypatch, name, mode, reads):
    net = _net(name, "gp", "float32")
    x, y = batch(net, 4)
    sched = Scheduler(net, options=StepOptions(check_numerics=mode))
    sched.train_step(x, y)  # Adam's first step creates its state
    counter = _Reads(monkeypatch)
    sched.train_step(x, y)
    assert counter.count == reads


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_regulariser_gradient_is_the_formula_bit_for_bit(dtype):
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(200, 200, generator=g, dtype=torch.float64) / 14).to(dtype)
    textbook = (4 * 100.0) * ((w @ w.transpose(0, 1) - torch.eye(200, dtype=dtype)) @ w)
    assert torch.equal(reg.gradient(w, 100.0), textbook)
    upd = torch.randn(200, 200, generator=g, dtype=torch.float64).to(dtype)
    assert torch.equal(reg.gradient(w, 100.0).add_(upd), upd + textbook)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_symmetric_gram_is_the_matmul_up_to_rounding(dtype):
    n = reg.SYMMETRIC_MIN + 88  # uneven blocks
    g = torch.Generator().manual_seed(1)
    w = (torch.randn(n, n, generator=g, dtype=torch.float64) / n**0.5).to(dtype)
    full = w @ w.transpose(0, 1)
    tol = {torch.float32: 1e-5, torch.float64: 1e-13}[dtype]
    torch.testing.assert_close(reg.gram(w), full, rtol=tol, atol=tol)
    textbook = (4 * 100.0) * ((full - torch.eye(n, dtype=dtype)) @ w)
    torch.testing.assert_close(reg.gradient(w, 100.0), textbook, rtol=tol, atol=tol * textbook.abs().max().item())
    # the flop count the benchmark uses is what the matmuls do
    with FlopCounterMode(display=False) as counter:
        reg.gradient(w, 100.0)
    assert counter.get_total_flops() == reg.gradient_flops(n) < 4 * n**3
    # the benchmark's reference-cost mode: one full matmul, as the authors computed it
    assert torch.equal(reg.gram(w, symmetric=False), full)
    with FlopCounterMode(display=False) as counter:
        reg.gradient(w, 100.0, symmetric=False)
    assert counter.get_total_flops() == reg.gradient_flops(n, symmetric=False) == 4 * n**3


def test_ortho_every_applies_k_times_the_regulariser_every_k_steps():
    net = _net("digits_shallow", "gp", "float32")
    x, y = batch(net, 4)
    sched = Scheduler(net, options=StepOptions(ortho_every=3))
    lam = net.rules[1].settings.ortho_lambda
    for step in range(4):
        w = net.layers[1].weight.detach().clone()
        result = sched.compute(x, y)
        raw = result.updates[1]["weight"].clone()
        sched.apply(result)  # leaves .grad (raw update + regulariser) in place after the Adam step
        expected = raw + reg.gradient(w, 3 * lam) if step % 3 == 0 else raw
        torch.testing.assert_close(net.layers[1].weight.grad, expected)
    with pytest.raises(Exception, match="ortho_every"):
        StepOptions(ortho_every=0)


def test_fused_adam_is_adam():
    nets = [_net("digits_deep", "gp", "float32") for _ in range(2)]
    x, y = batch(nets[0], 8)
    fused, loop = Scheduler(nets[0]), Scheduler(nets[1], options=StepOptions(fused_adam=False))
    for _ in range(3):
        fused.train_step(x, y)
        loop.train_step(x, y)
    for a, b in zip(nets[0].layers, nets[1].layers):
        torch.testing.assert_close(a.weight, b.weight, rtol=1e-5, atol=1e-6)


def test_deferred_factorize_checks_collect_a_flag_and_skip_when_asked():
    q, _ = torch.linalg.qr(torch.randn(64, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    singular = q.clone()
    singular[3] = 0  # exactly singular: both methods report it
    nearly = q.clone()
    nearly[3] = nearly[4]  # singular up to rounding: the LU pivots give it away
    cases = [("lu", q, False), ("lu", singular, True), ("lu", nearly, True), ("inv", q, False), ("inv", singular, True)]
    flags: list = []
    for method, m, _ in cases:
        factorize(m, layer="m", method=method, check=flags)  # no error: the flag says it
    assert [bool(f) for f in flags] == [bad for _, _, bad in cases]
    for method, m, _ in cases:
        factorize(m, layer="m", method=method, check=False)
    for method, m, bad in cases:
        if bad:
            with pytest.raises(SingularLayerError, match="layer 'm'"):
                factorize(m, layer="m", method=method)


@pytest.mark.slow
def test_compiled_nudge_gives_the_eager_values():
    nets = [_net("digits_shallow", "gp", "float32") for _ in range(2)]
    x, y = batch(nets[0], 8)
    eager = Scheduler(nets[0]).compute(x, y)
    compiled = Scheduler(nets[1], options=StepOptions(compile_nudge=True)).compute(x, y)
    for ua, ub in zip(eager.updates, compiled.updates):
        assert all(torch.equal(ua[k], ub[k]) for k in ua)
