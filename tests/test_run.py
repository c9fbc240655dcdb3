"""Training runs end to end on the embedded digits: the CLI, the archive's documented layout, determinism, resume
after a crash or a SIGKILL, refusals, and failures (NaN, full disk, missing data)."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import sim.schedule
from sim import checkpoint as ckpt_io
from sim.archive import ArchiveError, open_run
from sim.cli import main as cli
from sim.config import load_config
from sim.errors import ConfigError, NonFiniteError
from sim.rules import RULES
from sim.run import run

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "runs.md"


def write_config(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def documented_variables() -> dict[str, tuple[str, tuple[str, ...], str, str]]:
    """``name -> (section, dims, dtype, units)`` of every row of the tables in docs/runs.md that lists a variable."""
    rows = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"\|\s*`([a-z_0-9<>]+)`\s*\|\s*\(([^)]*)\)\s*\|\s*([^|]*)\|\s*([^|]*)\|", line)
        if m:
            name, dims, dtype, units = m.groups()
            rows[name] = (tuple(d.strip() for d in dims.split(",")), dtype.strip(), units.strip())
    return rows


def data_vars(ds, skip=("epoch_wall_s",)):
    return {k: ds[k].values for k in list(ds.data_vars) + list(ds.coords) if k not in skip}


def assert_same_archive(a: Path, b: Path) -> None:
    da, db = open_run(a), open_run(b)
    va, vb = data_vars(da), data_vars(db)
    assert set(va) == set(vb)
    for k in va:
        assert va[k].dtype == vb[k].dtype, k
        assert np.array_equal(va[k], vb[k], equal_nan=va[k].dtype.kind == "f"), k
    times = {"start_time", "end_time", "device"}
    assert {k: v for k, v in da.attrs.items() if k not in times} == \
           {k: v for k, v in db.attrs.items() if k not in times}


# ----- the CLI, every rule ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", sorted(RULES))
def test_cli_run_writes_every_documented_variable(tmp_path, tiny_config, capsys, rule):
    cfg_path = write_config(tmp_path / f"digits_{rule}.yaml", tiny_config(rules=rule))
    store = tmp_path / "run.zarr"
    assert cli(["run", str(cfg_path), "--out", str(store), "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(store)
    ds = open_run(store)
    cfg = load_config(cfg_path)
    layers = list(ds.layer.values)
    assert layers == ["dense1", "dense2", "dense3", "output"]
    assert list(ds.rule.values) == [rule] * 4

    # every documented variable, with the documented dims, dtype and units
    docs = documented_variables()
    assert docs, "no variable table found in docs/runs.md"
    for name, (dims, dtype, units) in docs.items():
        expanded = [(name.replace("<layer>", n), n) for n in layers] if "<layer>" in name else [(name, None)]
        for var, layer in expanded:
            assert var in ds.variables, f"{var} is documented but missing"
            want = []
            for d in dims:
                want += [f"unit_{layer}"] if d == "unit..." else [d]
            assert list(ds[var].dims) == want, var
            kind = ds[var].dtype.kind
            if dtype == "string":
                assert kind in "OUT", var
            else:
                assert ds[var].dtype == np.dtype(cfg.train.dtype if dtype == "train.dtype" else dtype), var
            assert ds[var].attrs.get("units", "") == units, var
    undocumented = {v for v in ds.variables if not any(re.fullmatch(n.replace("<layer>", "[a-z0-9]+"), v)
                                                       for n in docs)}
    assert not undocumented - {f"unit_{n}" for n in layers}

    steps = 2 * 45  # 1437 digits in batches of 32
    assert ds.sizes["step"] == steps and list(ds.step.values) == list(range(steps))
    assert list(ds.epoch.values) == [1, 2] and list(ds.probe_epoch.values) == [0, 2]
    assert list(ds.probe_step.values) == [0, steps]
    assert (ds.step_epoch.values == np.repeat([1, 2], 45)).all()
    assert int(ds.batch_size.sum()) == 2 * 1437
    measured = ~np.isnan(ds.angle.values).all(axis=1)
    assert (np.flatnonzero(measured) == np.arange(0, steps, 7)).all()
    assert np.isfinite(ds.loss.values).all() and (ds.loss.values > 0).all()
    assert ds.sizes["sample"] == 8 and (ds.probe_label.values == ds.probe_label.values).all()
    act, tgt = ds.activity_dense2.values, ds.target_dense2.values
    assert act.shape == tgt.shape == (2, 8, ds.sizes["unit_dense2"])
    assert not np.array_equal(act, tgt)
    square = ds.square.values
    assert list(square) == ([False, True, True, True] if RULES[rule].inverts else [False] * 4)
    # ortho_error is recorded for every layer whose weight matrix is square, under any rule (128 -> 128 under bp too)
    square_weight = np.array([False, True, True, bool(RULES[rule].inverts)])
    assert np.isnan(ds.ortho_error.values[:, ~square_weight]).all()
    assert np.isfinite(ds.ortho_error.values[:, square_weight]).all()
    for m in ("train_top1", "train_top5", "test_top1", "test_top5"):
        assert ((ds[m] >= 0) & (ds[m] <= 1)).all()
    assert (ds.test_top5 >= ds.test_top1).all()
    # docs/runs.md's recipe for the per-epoch table and the mean angle per layer
    per_epoch = ds[["train_top1", "train_top5", "train_loss", "test_top1", "test_top5", "test_loss",
                    "epoch_wall_s"]].to_dataframe()
    assert list(per_epoch.index) == [1, 2] and (per_epoch["epoch_wall_s"] > 0).all()
    mean_angle = ds.angle.dropna("step", how="all").mean("step").to_series()
    assert list(mean_angle.index) == layers and np.isfinite(mean_angle.values).all()
    if rule in ("bp", "gp", "vgp"):
        assert float(ds.test_top1[-1]) > 0.2, "no better than chance on 10 classes"
    # GP's output-layer angle is 0 by construction; BP's every angle is ~0
    if rule in ("gp", "fa"):
        assert np.nanmax(ds.angle.sel(layer="output").values) < 1e-3
    if rule == "bp":
        assert np.nanmax(ds.angle.values) < 1e-2

    attrs = ds.attrs
    assert attrs["complete"] is True
    assert load_config(json.loads(attrs["config"])) == cfg
    for key in ("gaitsim_version", "git_commit", "torch_version", "device", "dtype", "start_time", "end_time"):
        assert attrs[key], key
    assert attrs["device"] == "cpu" and attrs["dtype"] == "float32"
    # the log file sits beside the store
    log = Path(str(store) + ".log").read_text()
    assert "epoch 2/2" in log and "complete" in log
    # a probe chunk is one layer at one probe epoch
    assert ds.activity_dense1.encoding["chunks"] == (1, 8, ds.sizes["unit_dense1"])


# ----- determinism and refusals -------------------------------------------------------------------------------------
SMALL = {"kind": "digits", "size": 320}  # 10 steps of 32 per epoch


def test_identical_runs_give_identical_archives(tmp_path, tiny_config):
    doc = tiny_config(rules="gp", noise={"message_std": 1e-9, "activity_std": 1e-3}, data=SMALL)
    a = run(doc, tmp_path / "a.zarr", progress=False)
    b = run(doc, tmp_path / "b.zarr", progress=False)
    assert_same_archive(a, b)
    other = run(tiny_config(rules="gp", train={"seed": 1}, data=SMALL), tmp_path / "c.zarr", progress=False)
    assert not np.array_equal(open_run(a).loss.values, open_run(other).loss.values)


def test_an_existing_store_is_refused_without_a_flag(tmp_path, tiny_config, capsys):
    doc = tiny_config(train={"epochs": 1}, record={"probe_epochs": [0, 1]}, data=SMALL)
    cfg_path = write_config(tmp_path / "c.yaml", doc)
    store = tmp_path / "run.zarr"
    assert cli(["run", str(cfg_path), "--out", str(store), "--quiet"]) == 0
    capsys.readouterr()
    assert cli(["run", str(cfg_path), "--out", str(store), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "already exists" in err and "--resume" in err and "--overwrite" in err
    # a complete store is left alone by --resume
    stamp = (store / "zarr.json").stat().st_mtime_ns
    assert cli(["run", str(cfg_path), "--out", str(store), "--quiet", "--resume"]) == 0
    assert (store / "zarr.json").stat().st_mtime_ns == stamp
    # --overwrite replaces it
    assert cli(["run", str(cfg_path), "--out", str(store), "--quiet", "--overwrite"]) == 0
    assert open_run(store).attrs["complete"] is True
    # resuming with another config is refused, naming the difference
    changed = write_config(tmp_path / "d.yaml", tiny_config(train={"epochs": 1, "seed": 5}, data=SMALL,
                                                            record={"probe_epochs": [0, 1]}))
    assert cli(["run", str(changed), "--out", str(store), "--quiet", "--resume"]) == 2
    assert "train.seed: 0 -> 5" in capsys.readouterr().err
    # a folder that is not a run store is never deleted
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("...")
    assert cli(["run", str(cfg_path), "--out", str(precious), "--quiet", "--overwrite"]) == 2
    assert "not a gaitsim run store" in capsys.readouterr().err
    assert (precious / "thesis.tex").exists()


# ----- resume -------------------------------------------------------------------------------------------------------
def _interrupt_at(monkeypatch, step: int) -> None:
    """Make the scheduler raise KeyboardInterrupt when it reaches ``step`` (a crash in the middle of an epoch)."""
    original = sim.schedule.Scheduler.compute

    def compute(self, x, y):
        if self.step_count == step:
            raise KeyboardInterrupt
        return original(self, x, y)

    monkeypatch.setattr(sim.schedule.Scheduler, "compute", compute)


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path, tiny_config, monkeypatch):
    # 4 epochs, checkpoints after epochs 2 and 4: a crash in epoch 4 leaves epoch 3 in the archive but not in the
    # checkpoint, so resuming must cut the archive back and rewrite epoch 3.
    doc = tiny_config(rules=["fa", "gp", "gp", "gp"], train={"epochs": 4}, data=SMALL,
                      record={"checkpoint_every": 2, "probe_epochs": [0, 1, 3, 4], "angle_every": 3},
                      noise={"activity_std": 1e-3})
    reference = run(doc, tmp_path / "ref.zarr", progress=False)
    store = tmp_path / "run.zarr"
    with monkeypatch.context() as m:
        _interrupt_at(m, 3 * 10 + 4)
        with pytest.raises(KeyboardInterrupt):
            run(doc, store, progress=False)
    prefix = open_run(store)
    assert prefix.attrs["complete"] is False
    assert prefix.sizes["epoch"] == 3 and prefix.sizes["step"] == 3 * 10 and list(prefix.probe_epoch) == [0, 1, 3]
    assert ckpt_io.load(store).epochs_done == 2
    run(doc, store, resume=True, progress=False)
    assert_same_archive(reference, store)
    assert "resuming" in Path(str(store) + ".log").read_text()


def test_sigkill_mid_epoch_then_resume(tmp_path, tiny_config):
    """A real crash: SIGKILL a CLI run in the middle of an epoch, resume it, compare with an uninterrupted run."""
    doc = tiny_config(rules="gp", train={"epochs": 3, "batch_size": 16},
                      record={"probe_epochs": [0, 3], "angle_every": 25})
    cfg_path = write_config(tmp_path / "kill.yaml", doc)
    store, log = tmp_path / "killed.zarr", tmp_path / "killed.zarr.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "sim", "run", str(cfg_path), "--out", str(store), "--quiet"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not (m := re.search(r"epoch 1/3: .*\| ([0-9.]+) s", log.read_text() if log.exists() else "")):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.01)
        time.sleep(float(m.group(1)) / 3)  # about a third into epoch 2 (epoch 1 is committed and checkpointed)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    prefix = open_run(store)
    assert prefix.attrs["complete"] is False, "the run finished before it was killed"
    reference = run(cfg_path, tmp_path / "ref.zarr", progress=False)
    assert cli(["run", str(cfg_path), "--out", str(store), "--quiet", "--resume"]) == 0
    assert_same_archive(reference, store)


# ----- failures -----------------------------------------------------------------------------------------------------
def test_nan_stops_with_step_and_layer_and_keeps_prefix_and_checkpoint(tmp_path, tiny_config, monkeypatch, capsys):
    doc = tiny_config(rules="gp", data=SMALL, record={"angle_every": 4})
    cfg_path = write_config(tmp_path / "nan.yaml", doc)
    store = tmp_path / "nan.zarr"
    bad_step = 10 + 5
    original = sim.schedule.forward_phase

    calls = []

    def forward_phase(net, x, noise=None, narrow=None):  # dense2 emits NaN at one step (only the scheduler's calls)
        fp = original(net, x, noise, narrow)
        calls.append(len(calls))
        if len(calls) == bad_step + 1:
            fp.outputs[1] = fp.outputs[1] * torch.nan
            fp.inputs[2] = net.layers[1].read(fp.outputs[1])
        return fp

    with monkeypatch.context() as m:
        m.setattr(sim.schedule, "forward_phase", forward_phase)
        assert cli(["run", str(cfg_path), "--out", str(store), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: non-finite") and f"step {bad_step}" in err and "layer '" in err
    prefix = open_run(store)
    assert prefix.attrs["complete"] is False
    assert prefix.sizes["step"] == bad_step and prefix.sizes["epoch"] == 1
    assert np.isfinite(prefix.loss.values).all()
    state = ckpt_io.load(store)
    assert (state.reason, state.step, state.epochs_done, state.batches_done) == ("failure", bad_step, 1, 5)
    assert all(torch.isfinite(v).all() for v in state.network.values() if v.is_floating_point())
    raw = torch.load(ckpt_io.checkpoint_path(store), weights_only=True)  # tensors and primitives only
    assert raw["step"] == bad_step
    # the failure checkpoint is a mid-epoch resume point: without the fault the run ends as if nothing happened
    run(cfg_path, store, resume=True, progress=False)
    assert_same_archive(run(cfg_path, tmp_path / "ref.zarr", progress=False), store)


def test_huge_learning_rate_diverges_with_a_named_step(tmp_path, tiny_config):
    doc = tiny_config(network={"preset": "digits_deep"}, rules="bp", settings={"bp": {"lr": 1e10}}, data=SMALL)
    # the loss is where the check fires; the message traces it back to the first layer whose activity overflowed
    with pytest.raises(NonFiniteError, match=r"non-finite loss at step \d+.*traced back to the activity of layer "
                                             r"'dense\d'") as info:
        run(doc, tmp_path / "div.zarr", progress=False)
    assert info.value.step is not None and info.value.layer.startswith("dense")
    assert info.value.quantity == "activity"
    assert open_run(tmp_path / "div.zarr").sizes["step"] == info.value.step


def test_full_disk_names_the_path_and_keeps_the_last_checkpoint(tmp_path, tiny_config, monkeypatch, capsys):
    doc = tiny_config(train={"epochs": 3}, data=SMALL)
    cfg_path = write_config(tmp_path / "disk.yaml", doc)
    store = tmp_path / "disk.zarr"
    real_save = torch.save
    saves = []

    def save(obj, f, *args, **kwargs):
        saves.append(obj.get("epochs_done"))
        if len(saves) == 2:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    assert cli(["run", str(cfg_path), "--out", str(store), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and str(ckpt_io.checkpoint_path(store)) in err
    assert ckpt_io.load(store).epochs_done == 1  # the earlier checkpoint is intact
    # no temp file left, and the failed write did not rotate last.pt into prev.pt
    assert sorted(p.name for p in ckpt_io.checkpoint_path(store).parent.iterdir()) == ["last.pt", "manifest.json"]
    monkeypatch.undo()
    run(cfg_path, store, resume=True, progress=False)
    assert open_run(store).attrs["complete"] is True


def test_unwritable_output_folder_is_a_clear_error(tmp_path, tiny_config, capsys):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    cfg_path = write_config(tmp_path / "c.yaml", tiny_config())
    assert cli(["run", str(cfg_path), "--out", str(blocker / "run.zarr"), "--quiet",
                "--log", str(tmp_path / "run.log")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot create the run store") and str(blocker / "run.zarr") in err


def test_missing_data_says_how_to_get_it(tmp_path, tiny_config, capsys):
    doc = tiny_config(data={"kind": "npz", "path": str(tmp_path / "nope")})
    cfg_path = write_config(tmp_path / "c.yaml", doc)
    store = tmp_path / "run.zarr"
    assert cli(["run", str(cfg_path), "--out", str(store), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "does not exist" in err and str(tmp_path / "nope") in err
    assert not store.exists()


def test_imagenet_config_without_a_path_stops_before_any_work(tmp_path, capsys):
    store = tmp_path / "in.zarr"
    assert cli(["run", str(ROOT / "configs/imagenet_conv_gp.yaml"), "--out", str(store), "--quiet"]) == 2
    assert "data.path is not set" in capsys.readouterr().err
    assert not store.exists() and not Path(str(store) + ".log").exists()


def test_data_and_network_must_agree(tmp_path, tiny_config):
    doc = tiny_config(network={"preset": "digits_shallow", "classes": 12})
    with pytest.raises(ConfigError, match=r"10 classes but the network has 12.*network\.classes: 10"):
        run(doc, tmp_path / "x.zarr", progress=False)
    assert not (tmp_path / "x.zarr").exists()


def test_archive_errors_are_gaitsim_errors():
    assert issubclass(ArchiveError, OSError)


def test_without_checks_a_nan_is_caught_when_the_epoch_is_flushed(tmp_path, tiny_config):
    doc = tiny_config(network={"preset": "digits_deep"}, rules="bp", settings={"bp": {"lr": 1e10}}, data=SMALL,
                      train={"step": {"check_numerics": False}}, record={"angle_every": 0, "probe_size": 0})
    with pytest.raises(NonFiniteError, match=r"non-finite loss at step \d+ in layer 'output'.*check_numerics"):
        run(doc, tmp_path / "x.zarr", progress=False)
    ds = open_run(tmp_path / "x.zarr")
    assert ds.sizes["step"] == 10 and not np.isfinite(ds.loss.values).all()
    assert "sample" not in ds.dims and np.isnan(ds.angle.values).all()


def test_options_without_angles_or_probe(tmp_path, tiny_config):
    doc = tiny_config(rules="fa", data=SMALL, train={"epochs": 1, "drop_last": True, "batch_size": 48},
                      record={"angle_every": 0, "probe_size": 0, "checkpoint_every": 0, "probe_epochs": [1]})
    ds = open_run(run(doc, tmp_path / "x.zarr", progress=False))
    assert ds.sizes["step"] == 320 // 48 and (ds.batch_size == 48).all()
    assert np.isnan(ds.angle.values).all() and ds.attrs["complete"] is True
    assert ckpt_io.load(tmp_path / "x.zarr").reason == "final"


def test_an_empty_output_folder_counts_as_no_store(tmp_path, tiny_config):
    (tmp_path / "x.zarr").mkdir()
    doc = tiny_config(data=SMALL, train={"epochs": 1}, record={"probe_epochs": [1]})
    assert open_run(run(doc, tmp_path / "x.zarr", progress=False)).attrs["complete"] is True
