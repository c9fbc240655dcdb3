"""``python -m sim bench --data``: a row per worker count with the input pipeline's, the fed step's and the step's
images/s and which one limits, on a small folder of real JPEGs (no timings are asserted); bad options are named."""

from __future__ import annotations

import json

import pytest

from sim.cli import main
from tests.helpers import write_config, write_jpeg_folder

pytestmark = pytest.mark.usefixtures("one_thread")

#: cifar10_shallow reads 3 x 32 x 32 images of 10 classes: the digits as 32 px JPEGs
FAST = ["--net", "cifar10_shallow", "--rules", "bp", "--batch", "8", "--steps", "2", "--repeats", "1", "--warmup", "1",
        "--threads", "1"]
KEYS = {"workers", "input_images_per_s", "step_images_per_s", "compute_images_per_s", "limit", "batch", "samples",
        "data_kind", "data_path", "image_shape", "input_repeats", "step_repeats", "config", "device", "load_start",
        "load_end"}


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    return write_jpeg_folder(tmp_path_factory.mktemp("jpeg"), classes=10, train=3, val=1, size=32)


def test_bench_data_prints_a_row_per_worker_count(jpegs, capsys):
    assert main(["bench", "--data", "--data-path", str(jpegs), "--workers", "0,2", *FAST, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["workers"] for r in rows] == [0, 2]
    for r in rows:
        assert KEYS <= set(r)
        assert r["input_images_per_s"] > 0 and r["step_images_per_s"] > 0 and r["compute_images_per_s"] > 0
        assert r["limit"] == ("input" if r["input_images_per_s"] < r["compute_images_per_s"] else "compute")
        assert r["samples"] == 30 and r["image_shape"] == [3, 32, 32] and r["batch"] == 8
        assert [images for images, _ in r["input_repeats"]] == [16]  # two batches of 8 per repeat
        assert r["config"]["data"] == {**r["config"]["data"], "kind": "imagenet_folder", "path": str(jpegs),
                                       "image_size": 32, "normalize": "imagenet"}

    assert main(["bench", "--data", "--data-path", str(jpegs), "--workers", "0,1", *FAST]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["workers", "input", "img/s", "step", "img/s", "compute", "img/s", "limit"]
    assert [line.split()[0] for line in lines[2:4]] == ["0", "1"]
    assert "0 workers: the " in out and "1 workers: the " in out and "limits" in out


def test_bench_data_reads_a_run_configs_in_memory_data(tiny_config, tmp_path, capsys):
    path = write_config(tmp_path / "digits.yaml", tiny_config(rules="bp"))
    assert main(["bench", "--data", "--config", str(path), "--steps", "2", "--repeats", "1", "--warmup", "0",
                 "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["workers"] == 0 and row["data_kind"] == "digits" and row["batch"] == 32
    assert main(["bench", "--data", "--config", str(path), "--workers", "0,1"]) == 2
    assert "held in memory" in capsys.readouterr().err


@pytest.mark.parametrize("args, words", [
    (["--workers", "0,2"], "--workers applies to the input-pipeline benchmark only; add --data"),
    (["--data-path", "x"], "--data-path applies to the input-pipeline benchmark only; add --data"),
    (["--data"], "--data needs data: give --data-path"),
    (["--data", "--data-path", "x", "--rules", "bp,gp"], "give one rule with --rules, got bp,gp"),
    (["--data", "--data-path", "x", "--reference-cost"], "--reference-cost does not apply to --data"),
    (["--data", "--data-path", "x", "--tf32", "on"], "--tf32 does not apply to --data"),
    (["--data", "--data-path", "x", "--workers", "a,b"], "--workers 'a,b': give comma-separated worker counts"),
    (["--data", "--data-path", "x", "--workers", "1,1"], "--workers must list distinct counts"),
    (["--data", "--data-path", "x", "--workers", "-1"], "--workers: -1 is not a worker count"),
])
def test_bad_bench_data_options_are_named(capsys, args, words):
    assert main(["bench", "--net", "digits_shallow", *args]) == 2
    assert words in capsys.readouterr().err


def test_data_that_does_not_fit_the_network_says_what_to_set(jpegs, capsys):
    assert main(["bench", "--data", "--data-path", str(jpegs), *FAST, "--classes", "7"]) == 2
    err = capsys.readouterr().err
    assert "has 10 classes but the network has 7" in err and "--classes" in err
