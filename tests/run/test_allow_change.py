"""After a run stops on divergence, the documented recovery continues it from its last checkpoint with a lower
learning rate: ``--resume --allow-change settings.RULE.lr`` (issue 14, part 7). Only listed keys may differ, every
change is recorded in the store's attribute ``changes``, and a finite but exploded loss is warned about."""

from __future__ import annotations

import json

import pytest
import torch
import xarray as xr

import sim.faults
import sim.schedule
from sim.cli import main as sim_main
from sim.errors import ConfigError, NonFiniteError
from sim.layers.base import Layer
from sim.run import run

BAD_LR = 5.0


@pytest.fixture
def diverged(tmp_path, tiny_config, one_thread, monkeypatch):
    """A bp run that diverges at step 3 because its lr is too high (a NaN in dense1's activity whenever a step runs
    with an lr above 1, from step 3 on: the state before the failing step is finite, as in a real blow-up caught
    by check_numerics), and the config that recovers it (lr 1e-3)."""
    original_step, original_forward = sim.schedule.Scheduler.train_step, Layer.forward
    state = {"high": False}

    def train_step(self, x, y):
        state["high"] = self.step_count >= 3 and self.optimizer.param_groups[0]["lr"] > 1
        return original_step(self, x, y)

    def forward(self, a_in, noise=None, units=None):
        a = original_forward(self, a_in, noise, units)
        return a * torch.nan if state["high"] and self.name == "dense1" else a

    monkeypatch.setattr(sim.schedule.Scheduler, "train_step", train_step)
    monkeypatch.setattr(Layer, "forward", forward)
    record = {"angle_every": 0}
    bad = tiny_config(rules="bp", settings={"bp": {"lr": BAD_LR}}, train={"epochs": 2, "seed": 0}, record=record)
    out = tmp_path / "run.zarr"
    with pytest.raises(NonFiniteError, match="dense1"):
        run(bad, out, progress=False)
    good = tiny_config(rules="bp", settings={"bp": {"lr": 1.0e-3}}, train={"epochs": 2, "seed": 0}, record=record)
    return out, bad, good


def test_resume_with_a_lower_lr_needs_allow_change_and_is_recorded(diverged):
    out, _, good = diverged
    with pytest.raises(ConfigError, match=r"settings\.bp\.lr: 5\.0 -> 0\.001.*--allow-change settings\.bp\.lr"):
        run(good, out, resume=True, progress=False)
    run(good, out, resume=True, progress=False, allow_change=("settings.bp.lr",))
    with xr.open_zarr(out) as ds:
        attrs = dict(ds.attrs)
        assert bool((ds.loss.notnull()).all())
    assert attrs["complete"] is True
    changes = json.loads(attrs["changes"])
    assert len(changes) == 1 and changes[0]["key"] == "settings.bp.lr"
    assert changes[0]["old"] == BAD_LR and changes[0]["new"] == 1e-3 and changes[0]["step"] == 3
    assert json.loads(attrs["config"])["settings"]["bp"]["lr"] == 1e-3
    log = out.with_name("run.zarr.log").read_text()
    assert "resuming at step 3 with settings.bp.lr changed from 5.0 to 0.001 (--allow-change" in log
    run(good, out, resume=True, progress=False)  # the store now carries the new config: a plain resume is fine


def test_allow_change_through_the_cli(diverged, tmp_path, capsys):
    out, _, good = diverged
    cfg = tmp_path / "configs" / "run.yaml"  # the name, 'run', is the file's stem, as the dict's default
    cfg.parent.mkdir()
    cfg.write_text(json.dumps(good))
    assert sim_main(["run", str(cfg), "--out", str(out), "--resume", "--allow-change", "settings.*.lr",
                     "--quiet"]) == 0, capsys.readouterr().err
    with xr.open_zarr(out) as ds:
        assert ds.attrs["complete"] is True and "changes" in ds.attrs


def test_only_listed_keys_may_differ(diverged, tiny_config):
    out, _, good = diverged
    with pytest.raises(ConfigError, match="--allow-change train.seed: only settings"):
        run(good, out, resume=True, progress=False, allow_change=("train.seed",))
    other = tiny_config(rules="bp", settings={"bp": {"lr": 1.0e-3}}, train={"epochs": 2, "seed": 3})
    with pytest.raises(ConfigError, match=r"train\.seed: 0 -> 3\); resume with the same config or pass --overwrite"):
        run(other, out, resume=True, progress=False, allow_change=("settings.bp.lr",))
    with pytest.raises(ConfigError, match="only applies with --resume"):
        run(good, out.with_name("fresh.zarr"), progress=False, allow_change=("settings.bp.lr",))


def test_exploding_loss_is_warned_about(tmp_path, tiny_config, one_thread):
    """A finite loss that blows up (bp at lr 1e3) is named with the rule and its lr in the log; the run goes on."""
    cfg = tiny_config(rules="bp", settings={"bp": {"lr": 1.0e3}}, train={"epochs": 2, "seed": 0},
                      record={"angle_every": 0, "probe_epochs": []})
    out = tmp_path / "run.zarr"
    try:
        run(cfg, out, progress=False)
    except NonFiniteError:  # the loss may overflow to inf on some platforms; the warning came first if it exploded
        pass
    log = out.with_name("run.zarr.log").read_text()
    assert "the training loss exploded" in log and "bp lr 1000" in log, log[-2000:]


def test_a_changed_lr_reaches_the_rules_own_parameters(tmp_path, tiny_config, one_thread, monkeypatch):
    """kp's feedback matrices B learn at the rule's lr: a resume with another lr sets it for B's Adam group too."""
    record = {"angle_every": 0, "checkpoint_every": 1, "probe_epochs": [0]}
    out = tmp_path / "run.zarr"
    original = sim.schedule.Scheduler.train_step
    epochs = []
    monkeypatch.setattr(sim.faults, "hit", lambda site: epochs.append(site) if site == "train.epoch" else None)

    def stopped_in_epoch_2(self, x, y):  # epoch 1 recorded and checkpointed: stop at epoch 2's first step
        if epochs:
            raise KeyboardInterrupt
        return original(self, x, y)

    first = tiny_config(rules="kp", settings={"kp": {"lr": 1e-2}}, train={"epochs": 2}, record=record)
    monkeypatch.setattr(sim.schedule.Scheduler, "train_step", stopped_in_epoch_2)
    with pytest.raises(BaseException):
        run(first, out, progress=False)
    lrs = []

    def train_step(self, x, y):
        lrs.append({g["name"]: g["lr"] for g in self.optimizer.param_groups})
        return original(self, x, y)

    monkeypatch.setattr(sim.schedule.Scheduler, "train_step", train_step)
    run(tiny_config(rules="kp", settings={"kp": {"lr": 1e-3}}, train={"epochs": 2}, record=record), out,
        resume=True, progress=False, allow_change=("settings.kp.lr",))
    assert lrs and any(name.endswith(".feedback") for name in lrs[0])
    assert all(lr == 1e-3 for step in lrs for lr in step.values()), lrs[0]
