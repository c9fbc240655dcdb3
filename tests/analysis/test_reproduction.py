"""The reproduction report's numbers (analysis/reproduction.py): one row per run group with its angles per layer,
the regulariser controls as test-accuracy differences, the per-layer figures, and a clear error without stores."""

from __future__ import annotations

import matplotlib.image
import pytest

from analysis import load_study
from analysis.reproduction import main, regulariser_control, rows
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


def test_no_reproduce_study_is_a_clear_error(tmp_path, capsys):
    assert main([str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "has none of reproduce/, reproduce_imagenet_sample/" in capsys.readouterr().err
    assert main([str(tmp_path), "--out", str(tmp_path / "o"), "--study", "zoo"]) == 2
    assert "has none of zoo/" in capsys.readouterr().err
