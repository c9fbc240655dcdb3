"""Training runs end to end on the embedded digits: the CLI, the archive's documented layout, determinism,
refusals, divergence and missing data. (The store's lifecycle: tests/run/test_store.py; NaN stopping, full disk,
unwritable output, kills: tests/reliability/.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from sim import checkpoint as ckpt_io
from sim.archive import ArchiveError, open_run
from sim.cli import main as cli
from sim.config import load_config
from sim.errors import ConfigError, NonFiniteError
from sim.rules import RULES
from sim.run import run
from tests.helpers import assert_same_archive, write_config

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "runs.md"


def documented_variables() -> dict[str, tuple[str, tuple[str, ...], str, str]]:
    """``name -> (section, dims, dtype, units)`` of every row of the tables in docs/runs.md that lists a variable."""
    rows = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"\|\s*`([a-z_0-9<>]+)`\s*\|\s*\(([^)]*)\)\s*\|\s*([^|]*)\|\s*([^|]*)\|", line)
        if m:
            name, dims, dtype, units = m.groups()
            rows[name] = (tuple(d.strip() for d in dims.split(",")), dtype.strip(), units.strip())
    return rows


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


# ----- failures -----------------------------------------------------------------------------------------------------
def test_huge_learning_rate_diverges_with_a_named_step(tmp_path, tiny_config):
    doc = tiny_config(network={"preset": "digits_deep"}, rules="bp", settings={"bp": {"lr": 1e10}}, data=SMALL)
    # the loss is where the check fires; the message traces it back to the first layer whose activity overflowed
    with pytest.raises(NonFiniteError, match=r"non-finite loss at step \d+.*traced back to the activity of layer "
                                             r"'dense\d'") as info:
        run(doc, tmp_path / "div.zarr", progress=False)
    assert info.value.step is not None and info.value.layer.startswith("dense")
    assert info.value.quantity == "activity"
    assert open_run(tmp_path / "div.zarr").sizes["step"] == info.value.step


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
