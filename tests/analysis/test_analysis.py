"""The analysis package on synthetic run stores that follow the archive contract (docs/runs.md): path parsing,
load_study (dims, sweep coordinates, outer joins, refusing incomplete stores), every figure, the results table and
the command-line twin. No training: the stores are written with xarray in milliseconds.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import xarray as xr

from analysis import (
    FIGURES,
    IncompleteStoreError,
    applicable,
    load_study,
    parse_store_path,
    results_table,
    save,
    to_markdown,
)
from analysis.__main__ import main as analysis_main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_store(path: Path, *, rule: str = "gp", layers: int = 3, epochs: int = 2, steps_per_epoch: int = 4,
                angle: float = 1.0, acc: float = 0.5, kind: str = "digits", complete: bool = True,
                layer_rules: list[str] | None = None, diverged: str | None = None, old_layout: bool = False) -> Path:
    """A run store with the archive's dims, coordinates, variables and attributes (docs/runs.md); ``old_layout``:
    the probe records' names before "checkpoint" meant only resume state (sim.archive.OLD_NAMES)."""
    names = [f"dense{i + 1}" for i in range(layers)] + ["output"]
    n_steps = epochs * steps_per_epoch
    rng = np.random.default_rng(abs(hash((str(path), angle))) % 2**32)
    angles = np.full((n_steps, len(names)), np.nan)
    angles[::2] = angle + 0.1 * rng.standard_normal((len(angles[::2]), len(names)))
    angles[:, -1] = 0.0 if rule != "bp" else angles[:, -1]
    rules = layer_rules or [rule] * len(names)
    epoch_acc = np.linspace(acc / 2, acc, epochs)
    ds = xr.Dataset(
        {
            "angle": (("step", "layer"), angles, {"units": "degree"}),
            "loss": ("step", np.linspace(2.3, 1.0, n_steps)),
            "batch_size": ("step", np.full(n_steps, 32)),
            "train_top1": ("epoch", epoch_acc + 0.05), "train_top5": ("epoch", np.minimum(1, epoch_acc + 0.3)),
            "test_top1": ("epoch", epoch_acc), "test_top5": ("epoch", np.minimum(1, epoch_acc + 0.25)),
            "train_loss": ("epoch", np.linspace(2, 1, epochs)), "test_loss": ("epoch", np.linspace(2.1, 1.1, epochs)),
            "ortho_error": (("epoch", "layer"), np.full((epochs, len(names)), 0.01)),
            "epoch_wall_s": ("epoch", np.ones(epochs)),
            "probe_label": ("sample", np.arange(4)),
            "activity_output": (("probe_epoch", "sample", "unit_output"), np.zeros((2, 4, 10))),
        },
        coords={
            "step": np.arange(n_steps), "step_epoch": ("step", np.repeat(np.arange(1, epochs + 1), steps_per_epoch)),
            "epoch": np.arange(1, epochs + 1), "layer": names, "rule": ("layer", rules),
            "square": ("layer", [r in ("gp", "vgp") for r in rules]), "probe_epoch": [0, epochs],
            "probe_step": ("probe_epoch", [0, n_steps]), "sample": np.arange(4),
        },
        attrs={"name": str(path), "config": json.dumps({"data": {"kind": kind}, "rules": rule}),
               "complete": complete, **({"diverged": diverged} if diverged else {})},
    )
    if old_layout:
        ds = ds.rename({"probe_epoch": "checkpoint", "probe_step": "checkpoint_step", "sample": "probe"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.to_zarr(path, mode="w", consolidated=True)
    return path


def run_path(root: Path, study: str, experiment: str, rule: str, seed: int) -> Path:
    return root / study / experiment / f"rule~{rule}" / f"seed~{seed}" / "run.zarr"


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory) -> Path:
    """Two experiments of different depths and lengths, three rules (one missing in one experiment), two seeds.
    Shared by the tests of this module: read only."""
    root = tmp_path_factory.mktemp("results")
    for exp, layers, epochs in (("shallow", 3, 2), ("deep", 6, 3)):
        for rule, angle in (("bp", 1e-6), ("fa", 80.0), ("gp", 1.0)):
            if exp == "shallow" and rule == "fa":
                continue
            for seed in (0, 1):
                write_store(run_path(root, "quick", exp, rule, seed), rule=rule, layers=layers, epochs=epochs,
                            angle=angle, acc=0.8 + 0.05 * seed)
    return root / "quick"


@pytest.fixture(scope="module")
def noise_study(tmp_path_factory) -> Path:
    """A 2 x 2 noise-floor sweep (message_std x eta) of vgp and gp, one seed."""
    root = tmp_path_factory.mktemp("results")
    for std in (0.0, 1e-4):
        for eta in (1e-7, 1e-3):
            for rule in ("vgp", "gp"):
                write_store(run_path(root, "noise", f"deep/message_std~{std!r}/eta~{eta!r}", rule, 0), rule=rule,
                            layers=2, epochs=1, angle=90 * min(1, std / eta), acc=0.9 - 0.5 * min(1, std / eta))
    return root / "noise"


def check_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


# ----- paths ----------------------------------------------------------------------------------------------------------
def test_parse_store_path():
    run = parse_store_path("results/quick/digits_deep/rule~gp/seed~1/run.zarr")
    assert (run.study, run.experiment, run.group, run.rule, run.seed, run.params) == \
        ("quick", "digits_deep", "digits_deep", "gp", 1, {})
    run = parse_store_path("/abs/results/noise/deep/message_std~0.0001/eta~1e-07/rule~vgp/seed~0/run.zarr")
    assert run.study == "noise" and run.experiment == "deep/message_std~0.0001/eta~1e-07"
    assert run.params == {"message_std": 1e-4, "eta": 1e-7}
    run = parse_store_path("results/mixing/deep/split~3/rule~fa+gp/seed~2/run.zarr")
    assert (run.rule, run.params, run.seed) == ("fa+gp", {"split": 3}, 2)
    run = parse_store_path("results/arith/deep/arithmetic~target/dtype~float64/rule~gp/seed~0/run.zarr")
    assert run.params == {"arithmetic": "target", "dtype": "float64"}
    for bad in ("results/quick/deep/run.zarr", "results/quick/deep/rule~gp/run.zarr", "rule~gp/seed~0/run.zarr"):
        with pytest.raises(ValueError):
            parse_store_path(bad)


# ----- loading --------------------------------------------------------------------------------------------------------
def test_load_study_dims_and_outer_join(quick_study):
    ds = load_study(quick_study)
    assert ds.attrs["study"] == "quick"
    assert list(ds.rule.values) == ["bp", "fa", "gp"]                     # registry order
    assert list(ds.seed.values) == [0, 1]
    assert list(ds.experiment.values) == ["deep", "shallow"]
    assert list(ds.layer.values) == [f"dense{i}" for i in range(1, 7)] + ["output"]  # union, in network order
    assert ds.angle.dims == ("experiment", "rule", "seed", "step", "layer")
    assert ds.sizes["epoch"] == 3 and ds.sizes["step"] == 12                # the longest run
    shallow = ds.sel(experiment="shallow", rule="gp", seed=0)
    assert np.isnan(shallow.test_top1.sel(epoch=3)) and np.isfinite(shallow.test_top1.sel(epoch=2))
    assert np.isnan(shallow.angle.sel(layer="dense5")).all()               # layers it does not have
    assert np.isnan(ds.test_top1.sel(experiment="shallow", rule="fa")).all()  # no such runs
    assert list(ds.data_kind.values) == ["digits", "digits"] and list(ds.metric.values) == ["top1", "top1"]
    assert "activity_output" not in ds and "config" in ds
    assert ds.layer_rule.sel(experiment="deep", rule="fa", seed=0, layer="dense1").item() == "fa"


def test_load_study_from_a_list_of_stores(quick_study):
    stores = sorted(quick_study.rglob("run.zarr"))[:3]
    ds = load_study(stores)
    assert int(np.isfinite(ds.test_top1.isel(epoch=0)).sum()) == 3


def test_incomplete_stores_are_refused(tmp_path):
    write_store(run_path(tmp_path, "quick", "deep", "gp", 0), epochs=1)
    bad = write_store(run_path(tmp_path, "quick", "deep", "gp", 2), epochs=1, complete=False)
    with pytest.raises(IncompleteStoreError, match="not complete"):
        load_study(tmp_path / "quick")
    with pytest.warns(UserWarning, match="not complete"):
        ds = load_study(tmp_path / "quick", on_incomplete="skip")
    assert list(ds.seed.values) == [0]
    with pytest.raises(IncompleteStoreError, match=str(bad.parent.name)):
        load_study([bad])


def test_diverged_stores_are_results(tmp_path):
    """A store the workflow published as diverged (on_diverge: keep) is loaded with its prefix and flagged."""
    write_store(run_path(tmp_path, "noise", "deep/message_std~0.0/eta~1e-07", "gp", 0), epochs=2)
    write_store(run_path(tmp_path, "noise", "deep/message_std~0.01/eta~1e-07", "gp", 0), epochs=1, complete=False,
                diverged="non-finite message multiplier in layer 'dense1' at step 3")
    write_store(run_path(tmp_path, "noise", "deep/message_std~0.0/eta~1e-03", "gp", 0), epochs=2)
    write_store(run_path(tmp_path, "noise", "deep/message_std~0.01/eta~1e-03", "gp", 0), epochs=2)
    ds = load_study(tmp_path / "noise")
    assert ds.diverged.sel(rule="gp", seed=0).values.ravel().tolist() == [0.0, 0.0, 1.0, 0.0]
    table = results_table(ds)
    assert table.diverged.tolist() == [0, 0, 1, 0] and table.seeds.tolist() == [1, 1, 1, 1]
    assert "| 1 (1 diverged) |" in to_markdown(table)
    check_png(save(FIGURES["noise_map"](ds), tmp_path / "noise_map.png"))
    with pytest.raises(IncompleteStoreError, match="diverged"):
        load_study(tmp_path / "noise", on_diverged="raise")


def test_a_study_reads_stores_of_the_old_probe_layout(tmp_path):
    """A study keeps no probe records, so a store written before the rename (dims ``checkpoint``, ``probe``) loads
    like a new one."""
    old = write_store(run_path(tmp_path, "s", "deep", "gp", 0), old_layout=True)
    new = write_store(run_path(tmp_path, "s", "deep", "gp", 1))
    ds = load_study([old, new])
    assert dict(ds.sizes) == {"experiment": 1, "rule": 1, "seed": 2, "step": 8, "layer": 4, "epoch": 2}
    assert ds.angle.sel(seed=0).notnull().any() and ds.angle.sel(seed=1).notnull().any()


def test_load_study_refuses_mixed_studies_and_empty_folders(quick_study, tmp_path):
    other = write_store(run_path(tmp_path, "other", "deep", "gp", 0), epochs=1)
    with pytest.raises(ValueError, match="several studies"):
        load_study([other, *quick_study.rglob("run.zarr")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no run stores"):
        load_study(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        load_study(tmp_path / "missing")


def test_sweep_coordinates(noise_study):
    ds = load_study(noise_study)
    assert (ds.sizes["experiment"], ds.sizes["message_std"], ds.sizes["eta"]) == (1, 2, 2)   # sweeps are dims
    assert ds.message_std.dtype.kind == "f" and list(ds.message_std.values) == [0.0, 1e-4]
    assert list(ds.eta.values) == [1e-7, 1e-3]
    assert list(ds.experiment.values) == ["deep"]
    assert applicable(ds) == ["angle_layers", "angle_steps", "accuracy", "noise_map"]


# ----- figures and table ----------------------------------------------------------------------------------------------
def test_standard_figures_are_valid_pngs(quick_study, tmp_path):
    ds = load_study(quick_study)
    assert applicable(ds) == ["angle_layers", "angle_steps", "accuracy"]
    for name in applicable(ds):
        check_png(save(FIGURES[name](ds), tmp_path / "figs" / f"{name}.png"))


def test_noise_map_figure(noise_study, tmp_path):
    ds = load_study(noise_study)
    check_png(save(FIGURES["noise_map"](ds), tmp_path / "noise_map.png"))
    with pytest.raises(ValueError, match="message_std"):
        FIGURES["noise_map"](ds.drop_vars("message_std"))


def test_mixing_figure(tmp_path):
    for split in range(4):
        rules = ["fa"] * split + ["gp"] * (3 - split)
        for seed in (0, 1):
            write_store(run_path(tmp_path, "mixing", f"deep/split~{split}", "fa+gp", seed), rule="fa+gp", layers=2,
                        epochs=1, angle=10.0 * split, layer_rules=rules)
    ds = load_study(tmp_path / "mixing")
    assert list(ds.split.values) == [0, 1, 2, 3] and ds.split.dtype.kind == "i"
    assert applicable(ds)[-1] == "mixing"
    check_png(save(FIGURES["mixing"](ds), tmp_path / "mixing.png"))


def test_results_table(quick_study):
    ds = load_study(quick_study)
    table = results_table(ds)
    assert list(zip(table.experiment, table.rule)) == [("deep", "bp"), ("deep", "fa"), ("deep", "gp"),
                                                        ("shallow", "bp"), ("shallow", "gp")]
    deep_gp = table[(table.experiment == "deep") & (table.rule == "gp")].iloc[0]
    assert deep_gp.seeds == 2 and deep_gp.epochs == 3 and deep_gp.metric == "top1"
    assert deep_gp.test_acc_mean == pytest.approx((0.8 + 0.85) / 2)
    assert deep_gp.test_acc_std == pytest.approx(np.std([0.8, 0.85], ddof=1))
    assert table[table.experiment == "shallow"].epochs.tolist() == [2, 2]    # its own last epoch, not the padding
    assert 0.5 < deep_gp.angle_mean_deg < 1.5
    md = to_markdown(table, title="Study quick")
    assert md.count("\n| deep |") == 3 and "0.825 ± 0.035" in md


def test_imagenet_reports_top5(tmp_path):
    for rule in ("bp", "gp"):
        write_store(run_path(tmp_path, "paper", "imagenet_conv", rule, 0), rule=rule, kind="imagenet_folder", acc=0.4)
    ds = load_study(tmp_path / "paper")
    assert ds.metric.item() == "top5"
    table = results_table(ds)
    assert set(table.metric) == {"top5"} and table.test_acc_mean.iloc[0] == pytest.approx(0.4 + 0.25)
    fig = FIGURES["accuracy"](ds)
    assert fig.axes[0].get_ylabel() == "top5 accuracy"


def test_command_line_twin(quick_study, tmp_path, capsys):
    out = tmp_path / "out"
    assert analysis_main([str(quick_study), "--out", str(out)]) == 0
    for name in ("angle_layers", "angle_steps", "accuracy"):
        check_png(out / "figures" / f"{name}.png")
    assert (out / "table.md").read_text().startswith("## Study quick")
    assert (out / "table.csv").read_text().splitlines()[0].startswith("experiment,rule,seeds")
    assert analysis_main([str(tmp_path / "missing")]) == 2
    assert "error:" in capsys.readouterr().err
