"""The ``python -m sim angles`` command: JSON contract, data folders, presets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sim import cli as cli_module
from sim.cli import main as cli


def test_angles_json_is_one_object_on_stdout():
    out = subprocess.run([sys.executable, "-m", "sim", "angles", "--net", "digits_deep", "--rule", "gp",
                          "--batch", "16", "--json"], capture_output=True, text=True, check=True).stdout
    obj = json.loads(out)
    assert set(obj) == {"layers", "angle_deg"}
    assert obj["layers"] == ["dense1", "dense2", "dense3", "dense4", "dense5", "dense6", "output"]
    assert len(obj["angle_deg"]) == 7 and max(obj["angle_deg"]) < 0.05  # float32, exactly orthogonal init


def test_angles_reads_npz_shards_and_mixed_rules(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for k in range(2):
        np.savez(tmp_path / f"train_{k:02d}.npz", x=rng.integers(0, 256, (20, 8, 8), dtype=np.uint8),
                 y=rng.integers(0, 10, 20).astype(np.uint8))
    assert cli(["angles", "--net", "digits_shallow", "--rule", "fa,gp,gp,gp", "--data", str(tmp_path),
                "--batch", "24", "--json", "--perturb", "0.05", "--dtype", "float64"]) == 0
    obj = json.loads(capsys.readouterr().out)
    angles = obj["angle_deg"]
    assert max(angles) < 20  # fa in the first layer learns from GP's message; its B is never used
    assert cli(["angles", "--net", "digits_shallow", "--rule", "vgp", "--arithmetic", "target",
                "--batch", "8"]) == 0
    assert "angle_deg" in capsys.readouterr().out


def test_angles_takes_the_class_count_from_the_data_for_conv_presets(tmp_path, capsys):
    # 3 classes of 16x16 RGB images: the square GP output of a shrunken imagenet_conv must be sized for 3 logits,
    # not the preset's default 1000 (which would not fit).
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "train_00.npz", x=rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8),
             y=np.arange(12, dtype=np.uint8) % 3)
    assert cli(["angles", "--net", "imagenet_conv", "--image-size", "16", "--width-mult", "0.25", "--rule", "gp",
                "--data", str(tmp_path), "--batch", "6", "--json", "--dtype", "float64"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["layers"][-1] == "output" and len(obj["layers"]) == 8
    assert max(obj["angle_deg"]) < 0.05


def test_a_subcommand_whose_module_is_missing_is_an_error_not_an_absent_command(monkeypatch):
    monkeypatch.setitem(cli_module.COMMANDS, "gone", "sim.commands.gone")
    with pytest.raises(ModuleNotFoundError, match="sim.commands.gone"):
        cli_module.build_parser()


def test_angles_builds_its_case_from_a_run_config(tmp_path, capsys):
    import yaml

    from sim.config import load_config

    doc = load_config(Path(__file__).resolve().parents[1] / "configs" / "digits_shallow_vgp.yaml").to_dict()
    doc["train"]["step"] = {"check_numerics": "step", "skip_aux": False}
    path = tmp_path / "vgp.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert cli(["angles", "--config", str(path), "--batch", "16", "--json"]) == 0
    from_config = json.loads(capsys.readouterr().out)
    assert len(from_config["layers"]) == 4
    # the same case from flags: the same numbers (skip_aux and the check mode change nothing but rounding)
    assert cli(["angles", "--net", "digits_shallow", "--rule", "vgp", "--batch", "16", "--json"]) == 0
    from_flags = json.loads(capsys.readouterr().out)
    assert from_flags["layers"] == from_config["layers"]
    assert from_flags["angle_deg"] == pytest.approx(from_config["angle_deg"], abs=1e-3)
    assert cli(["angles", "--batch", "4"]) == 2
    assert "give --net and --rule, or a run config with --config" in capsys.readouterr().err


def test_angles_at_the_trained_weights_of_a_run(tmp_path, capsys, tiny_config):
    """``train.init_from`` in the config: the angles at another run's trained weights. GP trained without its
    regulariser leaves orthogonality, and its angles to BP there are far from the orthogonal start's rounding."""
    import yaml

    from sim.run import run

    doc = tiny_config(settings={"gp": {"lr": 1e-2, "ortho_lambda": 0}}, train={"epochs": 2, "batch_size": 32,
                                                                                "seed": 0, "dtype": "float64"})
    store = run(doc, tmp_path / "trained.zarr", progress=False)
    doc["train"]["init_from"] = str(store)
    path = tmp_path / "at_trained.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert cli(["angles", "--config", str(path), "--batch", "16", "--json"]) == 0
    trained = json.loads(capsys.readouterr().out)["angle_deg"]
    del doc["train"]["init_from"]
    path.write_text(yaml.safe_dump(doc))
    assert cli(["angles", "--config", str(path), "--batch", "16", "--json"]) == 0
    start = json.loads(capsys.readouterr().out)["angle_deg"]
    assert max(start) < 1e-6 and max(trained[:-1]) > 1.0
