"""``python -m sim run CONFIG --set KEY=VALUE`` (sim.config.overrides, docs/runs.md): a change reaches the run, and
its problems read exactly as the same key in the file; ``--version``; the provenance every store carries."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from sim.archive import read_attrs
from sim.cli import main
from sim.config import load_config
from sim.config.overrides import apply_overrides, parse_assignment, set_key
from sim.errors import ConfigError
from sim.rules.registry import specs

REPO = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((REPO / "configs" / "digits_shallow_gp.yaml").read_text())


def cli_error(tmp_path: Path, monkeypatch, capsys, folder: str, doc: dict, *flags: str) -> str:
    """stderr of ``gaitsim run run.yaml --out x.zarr FLAGS`` with ``doc`` as run.yaml in ``tmp_path/folder``."""
    where = tmp_path / folder
    where.mkdir()
    (where / "run.yaml").write_text(yaml.safe_dump(doc))
    monkeypatch.chdir(where)
    assert main(["run", "run.yaml", "--out", "x.zarr", "--quiet", *flags]) == 2
    assert not (where / "x.zarr").exists()
    return capsys.readouterr().err


@pytest.mark.parametrize(("assignment", "expected"), [
    ("train.epoch=3", "error: run.yaml: train: unknown key 'epoch' (did you mean 'epochs'?)\n"),      # unknown key
    ("settings.gp.lr=-1", "error: run.yaml: settings.gp.lr: -1 is less than or equal to the minimum of 0\n"),  # value
    ("train.epochs=2.5", "error: run.yaml: train.epochs: 2.5 is not of type 'integer'\n"),             # type
    ("train.epochs=three", "error: run.yaml: train.epochs: 'three' is not of type 'integer'\n"),        # type
    ("rules=gpp", f"error: run.yaml: rules: 'gpp' is not one of {sorted(specs())} (did you mean 'gp'?)\n"),
])
def test_set_errors_are_the_files(tmp_path, monkeypatch, capsys, assignment, expected):
    key, value = parse_assignment(assignment)
    from_flag = cli_error(tmp_path, monkeypatch, capsys, "flag", BASE, "--set", assignment)
    from_file = cli_error(tmp_path, monkeypatch, capsys, "file", set_key(BASE, key, value))
    assert from_flag == from_file == expected


def test_set_values_are_yaml_with_the_config_loader():
    doc = apply_overrides(BASE, ["train.epochs=3", "settings.gp.eta=1e-5", "train.dtype=float64",
                                 "rules=[fa, fa, gp, gp]", "train.epochs=2"])
    assert doc["train"]["epochs"] == 2 and doc["train"]["dtype"] == "float64"
    assert doc["settings"]["gp"] == {"lr": 1.0e-3, "eta": 1.0e-5}  # YAML 1.2 float, merged beside lr
    assert doc["rules"] == ["fa", "fa", "gp", "gp"]
    cfg = load_config(REPO / "configs" / "digits_shallow_gp.yaml", overrides=["settings.gp.eta=1e-5"])
    assert cfg.settings["gp"].eta == 1.0e-5 and cfg.name == "digits_shallow_gp"


@pytest.mark.parametrize("bad", ["train.epochs", "=3", "train..epochs=3", "train.epochs=[1"])
def test_malformed_set_is_an_error(bad, tmp_path, monkeypatch, capsys):
    with pytest.raises(ConfigError, match="--set"):
        parse_assignment(bad)
    err = cli_error(tmp_path, monkeypatch, capsys, "x", BASE, "--set", bad)
    assert err.startswith(f"error: --set {bad!r}") and err.count("\n") >= 1


def test_version(capsys):
    import sim

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"gaitsim {sim.__version__}\n"


def test_set_reaches_the_run_and_the_store_has_provenance(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(BASE))
    assert main(["run", "run.yaml", "--out", "x.zarr", "--quiet", "--set", "train.epochs=1",
                 "--set", "data.size=320", "--set", "record.probe_epochs=[1]"]) == 0
    attrs = read_attrs(tmp_path / "x.zarr")
    config = json.loads(attrs["config"])
    assert config["train"]["epochs"] == 1 and config["data"]["size"] == 320
    assert attrs["config_sha256"] == hashlib.sha256(attrs["config"].encode()).hexdigest()
    assert attrs["gaitsim_version"] and attrs["git_commit"]
    assert isinstance(attrs["writer_pid"], int) and attrs["writer_host"]
