"""The reproduction report's numbers (analysis/reproduction.py): one row per run group with its angles per layer,
the regulariser controls as test-accuracy differences, the per-layer figures, and a clear error without stores."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pytest

from analysis import load_study
from analysis.reproduction import (
    angle_and_orthogonality,
    main,
    orthogonality_markdown,
    regulariser_alone_markdown,
    regulariser_control,
    rows,
)
from tests.analysis.stores import write_run

DEEP = {"network": {"preset": "cifar10_deep"}, "data": {"kind": "npz"}, "train": {"epochs": 2}}
# final test accuracy (= every hidden layer's angle, in the fake stores) of each run group
CODES = {("cifar10_deep", "bp"): 0.50, ("cifar10_deep", "fa"): 0.30, ("cifar10_deep", "gp"): 0.45,
         ("cifar10_deep_ortho", "bp"): 0.46, ("cifar10_deep_ortho", "fa"): 0.28,
         ("cifar10_deep_noortho", "gp"): 0.49}


@pytest.fixture()
def results(tmp_path):
    root = tmp_path / "results"
    for (experiment, rule), code in CODES.items():
        write_run(root / "reproduce" / experiment / f"rule~{rule}" / "seed~0" / "run.zarr", {**DEEP, "rules": rule},
                  code=code, layers=3)
    return root


def test_rows_and_the_regulariser_control(results):
    table = rows(load_study(results / "reproduce"))
    assert len(table) == len(CODES)
    for (experiment, rule), code in CODES.items():
        row = table[(table.experiment == experiment) & (table.rule == rule)].iloc[0]
        assert row.test == pytest.approx(code) and row.epochs == 2
        assert row.angle_all == pytest.approx(code) and row["last:dense3"] == pytest.approx(code)
        assert "last:output" not in table.columns  # the output's angle is 0 by construction, not a result
    control = regulariser_control(table).splitlines()[-1]
    # GP - BP, GP without regulariser - BP, BP with - BP, FA with - FA, in points
    assert control.split("|")[2:6] == [" -5.0 pt ", " -1.0 pt ", " -4.0 pt ", " -2.0 pt "]


def test_main_writes_the_numbers_and_a_figure_per_network(results, tmp_path):
    out = tmp_path / "report"
    assert main([str(results), "--out", str(out)]) == 0
    text = (out / "numbers.md").read_text()
    assert "## Study reproduce" in text and "| gp · cifar10_deep_noortho | 2 |" in text
    image = matplotlib.image.imread(out / "figures" / "layers_cifar10_deep.png")
    assert image.shape[0] > 100 and image.std() > 0


def test_the_angle_against_the_orthogonality_of_the_layers_above(tmp_path):
    # one GP run: dense1 (not square: NaN error), dense2, dense3, output; 2 epochs of 2 recorded steps
    error = np.array([[np.nan, 0.1, 0.2, 0.01], [np.nan, 0.3, 0.4, 0.02]])
    angle = np.array([[6.0, 4.0, 1.0, 0.0], [8.0, 6.0, 1.0, 0.0], [20.0, 9.0, 2.0, 0.0], [30.0, 11.0, 2.0, 0.0]])
    study = tmp_path / "reproduce"
    write_run(study / "cifar10_deep" / "rule~gp" / "seed~0" / "run.zarr", {**DEEP, "rules": "gp"}, code=0.4,
              layers=3, angle=angle, ortho_error=error)
    write_run(study / "cifar10_deep" / "rule~bp" / "seed~0" / "run.zarr", {**DEEP, "rules": "bp"}, code=0.5,
              layers=3, ortho_error=error)
    points = angle_and_orthogonality(load_study(study))
    assert set(points.rule) == {"gp"}  # BP's angle is 0 by definition: not a point of the relation
    got = {(r.layer, r.epoch, "angle"): r.angle for r in points.itertuples()}
    got.update({(r.layer, r.epoch, "above"): r.error_above for r in points.itertuples()})
    # each layer: the mean of its epoch's recorded angles, and the summed error of every square layer above it
    want = {("dense1", 1): (7.0, 0.31), ("dense2", 1): (5.0, 0.21), ("dense3", 1): (1.0, 0.01),
            ("dense1", 2): (25.0, 0.72), ("dense2", 2): (10.0, 0.42), ("dense3", 2): (2.0, 0.02)}
    assert got == pytest.approx({**{(*k, "angle"): a for k, (a, _) in want.items()},
                                 **{(*k, "above"): e for k, (_, e) in want.items()}})
    row = orthogonality_markdown(points).splitlines()[-1].split("|")
    # last epoch: mean error above 0.3867, mean angle 12.33; the angle rises with the error above: rank correlation 1
    assert [c.strip() for c in row[2:6]] == ["gp · cifar10_deep", "0.3867", "12.33", "1.00"]
    assert main([str(tmp_path), "--out", str(tmp_path / "report")]) == 0
    numbers = (tmp_path / "report" / "numbers.md").read_text()
    assert "### GP's angle and the orthogonality of the layers above" in numbers
    image = matplotlib.image.imread(tmp_path / "report" / "figures" / "orthogonality_cifar10_deep.png")
    assert image.shape[0] > 100 and image.std() > 0


def test_the_regulariser_alone_table(tmp_path):
    """GP under the regulariser alone starts from the no-regulariser run's weights: per layer, the angle at step 0,
    in epoch 1 and in the last epoch, beside the error above at the start (the source's last epoch) and after each."""
    study = tmp_path / "reproduce"
    source_error = np.array([[np.nan, 0.1, 0.2, 0.05], [np.nan, 0.3, 0.4, 0.1]])
    source_angle = np.array([[5.0, 4.0, 1.0, 0.0], [5.0, 4.0, 1.0, 0.0], [40.0, 30.0, 5.0, 0.0],
                             [50.0, 30.0, 5.0, 0.0]])
    write_run(study / "cifar10_deep_noortho" / "rule~gp" / "seed~0" / "run.zarr", {**DEEP, "rules": "gp"}, code=0.46,
              layers=3, angle=source_angle, ortho_error=source_error)
    error = np.array([[np.nan, 0.01, 0.02, 0.001], [np.nan, 0.001, 0.002, 0.0001]])
    angle = np.array([[48.0, 29.0, 5.0, 0.0], [2.0, 1.0, 0.5, 0.0], [0.2, 0.1, 0.05, 0.0], [0.2, 0.1, 0.05, 0.0]])
    write_run(study / "cifar10_deep_regalone" / "rule~gp" / "seed~0" / "run.zarr", {**DEEP, "rules": "gp"},
              code=0.1, layers=3, angle=angle, ortho_error=error)
    ds = load_study(study)
    table = regulariser_alone_markdown(ds, angle_and_orthogonality(ds))
    rows_ = {r.split("|")[2].strip(): [c.strip() for c in r.split("|")[3:9]] for r in table.splitlines()[2:]}
    # dense1: step 0 48; epoch 1 mean (48 + 2) / 2; last epoch 0.2; error above (dense2 + dense3 + output): the
    # source's last epoch 0.3 + 0.4 + 0.1, then 0.031 and 0.0031
    assert rows_ == {"dense1": ["48.00", "25.000", "0.2000", "0.8000", "0.03100", "0.00310"],
                     "dense2": ["29.00", "15.000", "0.1000", "0.5000", "0.02100", "0.00210"],
                     "dense3": ["5.00", "2.750", "0.0500", "0.1000", "0.00100", "0.00010"]}
    assert regulariser_alone_markdown(ds, angle_and_orthogonality(ds)[:0]) == ""  # no points: no table
    assert main([str(tmp_path), "--out", str(tmp_path / "report")]) == 0
    assert "### The regulariser alone" in (tmp_path / "report" / "numbers.md").read_text()


def test_no_reproduce_study_is_a_clear_error(tmp_path, capsys):
    assert main([str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "has none of reproduce/, reproduce_imagenet_sample/" in capsys.readouterr().err
    assert main([str(tmp_path), "--out", str(tmp_path / "o"), "--study", "zoo"]) == 2
    assert "has none of zoo/" in capsys.readouterr().err


def test_each_sweep_point_gets_its_own_rows_and_figures(tmp_path):
    """A study with sweep points (e.g. zoo_cifar10 with an lr sweep): one table and one figure per point, named by
    it; before, the points' figures were written to one file, each over the last."""
    study = tmp_path / "sweep"
    for eta, code in (("1e-07", 0.4), ("0.001", 0.3)):
        for rule in ("bp", "gp"):
            write_run(study / "cifar10_deep" / f"eta~{eta}" / f"rule~{rule}" / "seed~0" / "run.zarr",
                      {**DEEP, "rules": rule}, code=code if rule == "gp" else 0.5, layers=3)
    assert main([str(tmp_path), "--out", str(tmp_path / "report"), "--study", "sweep"]) == 0
    figures = sorted(p.name for p in (tmp_path / "report" / "figures").glob("layers_*.png"))
    assert figures == ["layers_cifar10_deep_eta=0.001.png", "layers_cifar10_deep_eta=1e-07.png"]
    numbers = (tmp_path / "report" / "numbers.md").read_text()
    assert "### cifar10_deep on npz, eta=1e-07" in numbers and "### cifar10_deep on npz, eta=0.001" in numbers
    table = rows(load_study(study))
    assert sorted(zip(table.network, table.rule, table.test.round(2))) == [
        ("cifar10_deep on npz, eta=0.001", "bp", 0.5), ("cifar10_deep on npz, eta=0.001", "gp", 0.3),
        ("cifar10_deep on npz, eta=1e-07", "bp", 0.5), ("cifar10_deep on npz, eta=1e-07", "gp", 0.4)]


def test_a_rules_variants_in_one_panel_get_distinct_colours():
    """GP and its four controls share a panel: five lines of one rule, five colours."""
    from analysis.figures import _shade

    shades = [_shade("#6a3d9a", k) for k in range(6)]
    assert len(set(shades)) == 6 and shades[0] == "#6a3d9a"
