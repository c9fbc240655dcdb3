"""The "regulariser alone" control (``train.task_updates: false``; REFERENCE.md section 8, fourth claim): every step
computes the rules' raw updates (the angles to BP are measured from them) but applies only the orthogonality
regulariser's gradient. Oracle: autograd's gradient of ``lambda ||W W^T - I||_F^2`` through an independent Adam."""

from __future__ import annotations

import copy

import pytest
import torch
import xarray as xr

from sim import Scheduler
from sim.errors import ConfigError
from sim.run import run
from tests.helpers import batch, build, perturb


def _reference_step(matrix: torch.Tensor, lam: float, settings, steps: int) -> torch.Tensor:
    """``steps`` Adam steps (torch's for-loop Adam, the rule's lr, betas and eps) on the penalty alone, its gradient
    by autograd: the weight matrix the regulariser-alone run must reach."""
    w = torch.nn.Parameter(matrix.detach().clone())
    opt = torch.optim.Adam([w], lr=settings.lr, betas=tuple(settings.betas), eps=settings.eps, foreach=False)
    eye = torch.eye(w.shape[0], dtype=w.dtype)
    for _ in range(steps):
        opt.zero_grad()
        (lam * ((w @ w.T - eye) ** 2).sum()).backward()
        opt.step()
    return w.detach()


def test_only_the_regulariser_moves_the_weights():
    net = build("digits_shallow", "gp", lr=1e-3)
    perturb(net, 0.3)  # away from orthogonal: the regulariser's gradient is far from 0
    before = copy.deepcopy(net.state_dict())
    sched = Scheduler(net, task_updates=False)
    x, y = batch(net, 32)
    steps = 3
    for _ in range(steps):
        result = sched.train_step(x, y)
    after = net.state_dict()
    moved = 0
    for layer, rule in zip(net.layers, net.rules):
        key = f"layers.{net.names.index(layer.name)}"
        # the biases and the unregularised layers (dense1, 128 x 64) keep their values bit for bit
        assert torch.equal(after[f"{key}.bias"], before[f"{key}.bias"]), layer.name
        if layer.square_weight() is None:
            assert torch.equal(after[f"{key}.weight"], before[f"{key}.weight"]), layer.name
            continue
        expected = _reference_step(before[f"{key}.weight"], rule.settings.ortho_lambda, rule.settings, steps)
        torch.testing.assert_close(after[f"{key}.weight"], expected, rtol=0, atol=1e-12)
        moved += 1
    assert moved == 3  # dense2, dense3, output
    # the raw updates are still computed (what the angles to BP are measured from); they were not applied
    assert all(float(u["weight"].abs().sum()) > 0 for u in result.updates)


def test_the_task_updates_are_what_it_leaves_out():
    """Same start, same batches: the full step minus the regulariser-alone step is the rules' own contribution,
    so a run with task updates must differ where a regulariser-alone run does not move at all (dense1)."""
    x, y = batch(build("digits_shallow", "gp"), 32)
    full, alone = build("digits_shallow", "gp", lr=1e-3), build("digits_shallow", "gp", lr=1e-3)
    Scheduler(full).train_step(x, y)
    Scheduler(alone, task_updates=False).train_step(x, y)
    start = build("digits_shallow", "gp")
    assert not torch.equal(full.layers[0].weight, start.layers[0].weight)
    assert torch.equal(alone.layers[0].weight, start.layers[0].weight)


def test_nothing_to_regularise_is_refused():
    with pytest.raises(ConfigError, match=r"train\.task_updates: false .* no layer is regularised .*ortho_lambda"):
        Scheduler(build("digits_shallow", "bp"), task_updates=False)  # BP: ortho_lambda 0 everywhere
    with pytest.raises(ConfigError, match=r"train\.task_updates: false .* no layer is regularised"):
        Scheduler(build("digits_shallow", "gp", ortho_lambda=0.0), task_updates=False)


def test_a_weight_decay_beside_it_is_refused():
    net = build("digits_shallow", ["kp", "gp", "gp", "gp"])  # kp's decay would move dense1 too
    with pytest.raises(ConfigError, match=r"rule\(s\) kp also set a weight decay.*settings\.kp\.decay: 0"):
        Scheduler(net, task_updates=False)


def _angles_and_accuracy(tmp_path, tiny_config, task_updates: bool):
    cfg = tiny_config(settings={"gp": {"lr": 1e-3}}, train={"epochs": 2, "batch_size": 32, "seed": 0,
                                                              "dtype": "float64", "task_updates": task_updates})
    out = run(cfg, tmp_path / f"task_updates={task_updates}.zarr", progress=False)
    with xr.open_zarr(out) as ds:
        angles = ds.angle.sel(layer=["dense1", "dense2", "dense3"]).dropna("step", how="all").values
        return angles, ds.test_top1.values, float(ds.ortho_error.isel(epoch=-1).max())  # after the last epoch


def test_from_orthogonal_weights_the_angles_stay_near_0(tmp_path, tiny_config):
    """The paper's claim itself: from the orthogonal initialisation, with no task updates, GP's angles to BP stay
    near 0 (here: far below those of the same run with its task updates), and the accuracy never changes.

    Not exactly 0: the regulariser's gradient is 0 only on the orthogonal manifold, and Adam (eps 1e-6) turns the
    rounding-level gradient of step 0 into a step of ``lr * g / eps``, which the penalty's curvature (``8 lambda``)
    amplifies until Adam's normalisation caps the steps at about ``lr``: the weights settle in an orbit about
    ``lr`` from orthogonal, and the angles with them."""
    alone, alone_top1, alone_error = _angles_and_accuracy(tmp_path, tiny_config, False)
    full, _, full_error = _angles_and_accuracy(tmp_path, tiny_config, True)
    assert alone.shape[0] >= 4  # steps 0, 7, 14, ... of 2 epochs of 45
    assert float(abs(alone[0]).max()) < 1e-9  # step 0: the exact orthogonal start
    assert float(abs(alone[-1]).max()) < float(abs(full[-1]).min()) / 20
    assert alone_error < full_error / 20
    assert alone_top1[0] == alone_top1[-1]  # the task is not learned
