"""Sweeps as dims: the shipped noise, arithmetic and mixing studies, expanded by sim.study.expand and written as
tiny stores, load into one Dataset whose sweep parameters are dims, and selecting a run by its values gives that
run (its config and its recorded values); rule mixtures are selectable by their lower and upper rules."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from analysis import load_study, results_table, sweep_dims
from analysis.load import parse_store_path
from sim.study import expand
from tests.analysis.stores import REPO, workflow_config, write_run, write_study


def study(tmp_path, name):
    runs = expand(workflow_config(name), REPO, validate=False)
    codes = write_study(tmp_path, runs)
    return runs, codes, load_study(tmp_path / "results" / name)


def labels(run) -> dict:
    """The run's coordinates in the study Dataset, from its folder."""
    parsed = parse_store_path(f"{run.store}")
    return {"experiment": parsed.group, **parsed.params, "rule": run.label, "seed": run.seed}


def test_the_noise_study_is_a_message_std_by_eta_grid(tmp_path):
    runs, codes, ds = study(tmp_path, "noise")
    assert sweep_dims(ds) == ["message_std", "eta"]
    assert dict(ds.diverged.sizes) == {"experiment": 1, "message_std": 4, "eta": 4, "rule": 2, "seed": 1}
    assert list(ds.message_std.values) == [0.0, 1e-6, 1e-4, 1e-2] and list(ds.eta.values) == [1e-7, 1e-5, 1e-3, 1e-1]
    assert list(ds.rule.values) == ["vgp", "gp"]                                # registry order
    a = ds.angle.sel(eta=1e-5, message_std=0)                                   # the example
    assert a.dims == ("experiment", "rule", "seed", "step", "layer")
    for run in runs:                                                            # every run, selected by value
        at = labels(run)
        assert ds.test_top1.sel(at).isel(epoch=-1).item() == pytest.approx(codes[run.folder])
        config = json.loads(ds.config.sel(at).item())
        assert config["name"] == run.config["name"]
        path = {"gp": "eta", "vgp": "gamma"}[run.label]
        assert config["settings"][run.label][path] == at["eta"]
        assert config["noise"]["message_std"] == at["message_std"]
    assert ds.angle.sel(message_std=1e-4, eta=1e-3, rule="gp", layer="dense1").mean().item() == pytest.approx(
        codes["results/noise/digits_deep/message_std~0.0001/eta~0.001/rule~gp/seed~0"])


def test_the_arithmetic_study_is_a_form_by_dtype_grid(tmp_path):
    runs, codes, ds = study(tmp_path, "arithmetic")
    assert sweep_dims(ds) == ["arithmetic", "dtype"]
    assert list(ds.arithmetic.values) == ["difference", "target"] and list(ds.dtype.values) == ["float32", "float64"]
    assert dict(ds.diverged.sizes) == {"experiment": 1, "arithmetic": 2, "dtype": 2, "rule": 2, "seed": 2}
    for run in runs:
        at = labels(run)
        assert ds.test_top1.sel(at).isel(epoch=-1).item() == pytest.approx(codes[run.folder])
        config = json.loads(ds.config.sel(at).item())
        assert config["train"]["dtype"] == at["dtype"]
        assert config["settings"][run.label]["arithmetic"] == at["arithmetic"]
    target64 = ds.test_top1.sel(arithmetic="target", dtype="float64", rule="vgp").isel(epoch=-1)
    assert target64.dims == ("experiment", "seed") and np.isfinite(target64).all()
    table = results_table(ds)
    assert list(table.columns[:4]) == ["experiment", "arithmetic", "dtype", "rule"] and len(table) == 8


def test_the_mixing_study_selects_mixtures_by_their_rules(tmp_path):
    runs, codes, ds = study(tmp_path, "mixing")
    assert sweep_dims(ds) == ["split"] and list(ds.split.values) == list(range(8))
    assert list(ds.rule.values) == ["fa+gp"]
    assert ds.below.sel(rule="fa+gp").item() == "fa" and ds.above.sel(rule="fa+gp").item() == "gp"
    fa_below = ds.sel(rule=ds.below == "fa", split=3)
    assert list(fa_below.rule.values) == ["fa+gp"]
    assert list(fa_below.layer_rule.sel(seed=0).values.ravel()[:4]) == ["fa", "fa", "fa", "gp"]
    run = next(r for r in runs if r.folder.endswith("split~3/rule~fa+gp/seed~1"))
    assert fa_below.test_top1.sel(seed=1).isel(epoch=-1).item() == pytest.approx(codes[run.folder])
    assert ds.sel(rule=ds.above == "fa").sizes["rule"] == 0


def test_experiments_without_a_sweep_sit_at_the_missing_label(tmp_path):
    """A study whose second experiment does not sweep eta: its runs sit at eta = NaN, selectable there."""
    config = {"network": {"preset": "digits_deep"}, "rules": "gp", "data": {"kind": "digits"},
              "train": {"epochs": 2}}
    root = tmp_path / "results" / "s"
    for eta, code in ((1e-5, 0.1), (1e-3, 0.2)):
        write_run(root / f"sweep/eta~{eta!r}/rule~gp/seed~0/run.zarr", config, code=code)
    write_run(root / "plain/rule~bp/seed~0/run.zarr", {**config, "rules": "bp"}, code=0.3)
    ds = load_study(root)
    assert list(ds.experiment.values) == ["plain", "sweep"]
    assert ds.eta.values[:2].tolist() == [1e-5, 1e-3] and np.isnan(ds.eta.values[2])
    assert ds.test_top1.sel(experiment="plain", eta=np.nan, rule="bp", seed=0).isel(epoch=-1).item() == 0.3
    assert ds.test_top1.sel(experiment="sweep", eta=1e-3, rule="gp", seed=0).isel(epoch=-1).item() == 0.2
    assert list(ds.network.values) == ["digits_deep", "digits_deep"]


def test_the_study_dataset_labels_itself(tmp_path):
    runs = expand(workflow_config("noise"), REPO, validate=False)
    write_study(tmp_path, runs[:4])
    ds = load_study(tmp_path / "results" / "noise", description="the noise floor")
    assert ds.attrs["study"] == "noise" and ds.attrs["description"] == "the noise floor"
    for name in ("experiment", "message_std", "eta", "rule", "seed", "below", "above", "network", "data_kind",
                 "config", "diverged", "unfinished", "epochs_total", "layer_rule"):
        assert {"long_name", "units"} <= set(ds[name].attrs), name


def test_analysis_does_not_import_torch():
    code = ("import sys, analysis, analysis.figures, analysis.table, analysis.style\n"
            "analysis.style.registered_rules()\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
