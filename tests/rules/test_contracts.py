"""Contracts over the rule registry: any rule assignment composes, noise floors are seeded, nothing is hidden state."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from sim import RULES, Message, NoiseFloor, Scheduler, compare
from tests.helpers import batch, build

PAIRS = list(itertools.product(sorted(RULES), repeat=2))


#: the deep nets: the 128-wide digits one in the fast tier, the paper's 1024-wide CIFAR-10 one (3-30 s a pair) slow
DEEP_NETS = [pytest.param("digits_deep", id="digits"),
             pytest.param("cifar10_deep", id="cifar10", marks=pytest.mark.slow)]


@pytest.mark.parametrize("net_name", DEEP_NETS)
@pytest.mark.parametrize(("lower", "upper"), PAIRS, ids=[f"{a}-below-{b}" for a, b in PAIRS])
def test_every_ordered_pair_of_rules_trains_on_the_deep_net(lower, upper, net_name):
    # Rules `lower` and `upper` meet at the boundary between dense3 and dense4 of the deep net.
    rules = [lower] * 3 + [upper] * 4
    net = build(net_name, rules, dtype="float32")
    sched = Scheduler(net)
    x, y = batch(net, 16)
    losses = [sched.train_step(x, y).loss.item() for _ in range(3)]
    assert all(math.isfinite(v) for v in losses)
    corr = compare(sched, x, y)
    assert corr.layers == net.names and corr.rules == rules
    assert len(corr.angle_deg) == 7 and all(math.isfinite(a) for a in corr.angle_deg)
    assert corr.angle_deg[-1] < 1e-3  # every rule's output-layer update is BP's


def test_message_currency_round_trips():
    e = torch.randn(4, 7, dtype=torch.float64)
    torch.testing.assert_close(Message.from_error(e).error, e)
    msg = Message(d=torch.randn(4, 7, dtype=torch.float64) * 1e-9, m=torch.full((4,), 1e9, dtype=torch.float64))
    torch.testing.assert_close(msg.error, -msg.d * 1e9)


def test_compute_leaves_weights_and_optimizer_untouched():
    net = build("digits_deep", "gp", dtype="float32")
    before = net.weights()
    sched = Scheduler(net)
    x, y = batch(net, 8)
    first = sched.compute(x, y)
    second = sched.compute(x, y)
    for name, w in net.weights().items():
        assert torch.equal(w, before[name])
    for a, b in zip(first.updates, second.updates):  # no hidden state: the same call gives the same answer
        assert torch.equal(a["weight"], b["weight"])
    assert sched.step_count == 0


def _run(noise: NoiseFloor | None, seed: int = 0, steps: int = 3):
    net = build("digits_deep", "gp", dtype="float32")
    sched = Scheduler(net, noise=noise, seed=seed)
    x, y = batch(net, 8)
    for _ in range(steps):
        sched.train_step(x, y)
    return net.weights()


def test_zero_noise_is_bitwise_identical_to_no_noise():
    plain = _run(None)
    zero = _run(NoiseFloor(message_std=0.0, activity_std=(0.0,) * 7))
    for k in plain:
        assert torch.equal(plain[k], zero[k])


@pytest.mark.parametrize("field", ["message_std", "activity_std"])
def test_nonzero_noise_is_reproducible_and_seeded(field):
    noise = NoiseFloor(**{field: 1e-3})
    a, b, c = _run(noise, seed=5), _run(noise, seed=5), _run(noise, seed=6)
    plain = _run(None)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert any(not torch.equal(a[k], plain[k]) for k in a)


def test_message_noise_floor_drowns_gp_correspondence():
    # A floor far above GP's nudges (eta = 1e-7) destroys the lower layers' correspondence; BP's errors survive it.
    x_net = build("digits_deep", "gp")
    x, y = batch(x_net, 32)
    clean = compare(Scheduler(build("digits_deep", "gp")), x, y).angle_deg
    noisy = compare(Scheduler(build("digits_deep", "gp"), noise=NoiseFloor(message_std=1e-4)), x, y).angle_deg
    assert max(clean) < 0.01
    assert noisy[0] > 45


def test_activity_noise_is_replayed_by_the_bp_reference():
    net = build("digits_deep", "bp")
    x, y = batch(net, 16)
    corr = compare(Scheduler(net, noise=NoiseFloor(activity_std=0.05)), x, y)
    assert corr.result.forward.noise[0] is not None
    assert max(corr.angle_deg) < 1e-9  # BP under the same noisy forward pass is still exactly BP


def test_network_moves_between_dtypes_and_refuses_mixed_batches():
    net = build("digits_shallow", "gp", dtype="float32")
    assert all(p.dtype == torch.float32 for p in net.parameters())
    x, y = batch(net, 4)
    Scheduler(net).compute(x, y)


MESSAGES = ("transpose", "feedback", "inverse", "inverse_target", "local_gradients")


def test_the_layer_interface_is_declared_on_layer_and_implemented_by_every_kind():
    import inspect

    from sim.errors import ShapeError
    from sim.layers import Conv, Dense, Layer

    for kind in (Dense, Conv):
        for name in MESSAGES:
            assert getattr(kind, name) is not getattr(Layer, name), (kind.__name__, name)
            # the kinds keep the declared signature (same parameters, in order)
            assert list(inspect.signature(getattr(kind, name)).parameters) == \
                list(inspect.signature(getattr(Layer, name)).parameters), (kind.__name__, name)
        for name in MESSAGES:
            assert getattr(Layer, name).__doc__ and "[B, " in getattr(Layer, name).__doc__, name

    class Pool(Layer):
        """A layer kind that implements none of the messages."""

    layer = Pool("pool1")
    t = torch.zeros(1, 2)
    for name, args in (("transpose", (t,)), ("feedback", (t, t)), ("inverse", (t, None)),
                       ("inverse_target", (t, None)), ("local_gradients", (t, t))):
        with pytest.raises(ShapeError, match=rf"layer 'pool1' \(Pool\) does not implement {name}"):
            getattr(layer, name)(*args)


def test_a_step_reads_no_process_wide_switch():
    """Every option of a step is a StepOptions field: no ContextVar or module global in sim/ changes a step."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "sim"
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if "ContextVar" in p.read_text() or (p.name != "faults.py" and "\n    global " in p.read_text())]
    assert offenders == []
