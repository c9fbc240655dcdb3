"""The Snakemake workflow as smoke tests (docs/workflow.md): lint, one dry run of the default study, the profiles,
a bad run config stopped by check_configs before any job, and a full run of the tiny CI study (config/test.yaml)
with its stores, figures, table, notebook and report; the reproduce study's dry run on GPUs and its digits variant run
end to end. What the studies expand into (every study, sweeps, mixing,
dataset paths, errors naming the key, the figures that apply) is tested without Snakemake in tests/test_study.py.

Every invocation runs in a temporary working directory (``--directory``), so nothing lands in the repository and
concurrent test runs do not share Snakemake's lock.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import matplotlib.image
import pytest

REPO = Path(__file__).resolve().parents[2]
SNAKEFILE = REPO / "Snakefile"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.skipif(importlib.util.find_spec("snakemake") is None, reason="snakemake is not installed")


def snakemake(workdir: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run snakemake with this repository's Snakefile in ``workdir``; stdout and stderr together in ``.stdout``."""
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")}
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(workdir), *args]
    return subprocess.run(cmd, capture_output=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout, env=env)


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a (dry) run: rule name -> jobs."""
    lines = output.split("Job stats:", 1)[1].splitlines()
    counts = {}
    for line in lines[3:]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    return counts


def config(name: str) -> str:
    return str(REPO / "config" / f"{name}.yaml")


# ----- dry runs ---------------------------------------------------------------------------------------------------
def test_default_target_dry_run(tmp_path):
    out = snakemake(tmp_path, "-n")
    assert out.returncode == 0, out.stdout
    counts = job_counts(out.stdout)
    assert counts == {"check_configs": 1, "run_config": 16, "run": 16, "figures": 1, "table": 1, "all": 1,
                      "total": 36}
    for path in ("results/quick/digits_deep/rule~vgp/seed~1/run.zarr", "results/quick/figures/angle_layers.png",
                 "results/quick/table.md", "results/quick/table.csv"):
        assert path in out.stdout
    assert not (tmp_path / "results").exists()


def test_lint_is_clean(tmp_path):
    out = snakemake(tmp_path, "--lint")
    assert out.returncode == 0, out.stdout
    assert "Congratulations, your workflow is in a good condition" in out.stdout
    assert "Lints for" not in out.stdout


@pytest.mark.slow
def test_slurm_profile_dry_run(tmp_path):
    profile = REPO / "workflow" / "profiles" / "slurm"
    out = snakemake(tmp_path, "-n", "--workflow-profile", str(profile))
    assert out.returncode == 0, out.stdout
    assert f"workflow specific profile {profile}" in out.stdout
    assert job_counts(out.stdout)["run"] == 16
    train_resources = [line for line in out.stdout.splitlines() if "runtime=4320" in line]
    assert len(train_resources) == 16 and all("gpu=1" in r and "cpus_per_gpu=8" in r for r in train_resources)


@pytest.mark.slow
def test_default_profile_dry_run(tmp_path):
    out = snakemake(tmp_path, "-n", "--workflow-profile", str(REPO / "workflow" / "profiles" / "default"))
    assert out.returncode == 0, out.stdout
    assert out.stdout.count("resources: tmpdir=/tmp, gpu=1") == 16


# ----- bad input ----------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_bad_run_config_stops_before_any_job(tmp_path):
    """Beyond the schema (the run schema is tests/test_study.py's): found by the study's check_configs job, the one
    place a workflow validates its runs, before any training job or run config file."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("study: bad\nstudies:\n  bad:\n    experiments:\n      e:\n"
                   "        run: configs/digits_shallow_{rule}.yaml\n        rules: [bp, gp]\n"
                   "        set: {record: {probe_epochs: [9]}}\n")
    out = snakemake(tmp_path, "--cores", "1", "--configfile", str(bad))
    assert out.returncode != 0
    assert "2 of 2 run configs are invalid" in out.stdout, out.stdout
    assert "record.probe_epochs: epoch(s) [9] come after the last epoch (train.epochs = 5)" in out.stdout
    assert not list(tmp_path.rglob("*.zarr*")) and not list(tmp_path.rglob("run.log"))
    assert not list(tmp_path.rglob("config.yaml"))


# ----- the tiny study, run for real -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """config/test.yaml run from scratch: the digits shallow net, bp and gp, two seeds, 1 epoch on 200 samples."""
    workdir = tmp_path_factory.mktemp("workflow")
    out = snakemake(workdir, "--cores", "2", "--configfile", config("test"))
    assert out.returncode == 0, out.stdout
    return workdir


def open_store(path: Path):
    import xarray as xr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return xr.open_zarr(path)


@pytest.mark.slow
def test_tiny_run_writes_every_store(tiny_run):
    from sim.config import load_config

    results = tiny_run / "results" / "test"
    for rule in ("bp", "gp"):
        for seed in (0, 1):
            folder = results / "digits_shallow" / f"rule~{rule}" / f"seed~{seed}"
            ds = open_store(folder / "run.zarr")
            assert ds.attrs["complete"] is True
            cfg = json.loads(ds.attrs["config"])
            assert cfg["rules"] == rule and cfg["train"]["seed"] == seed and cfg["train"]["epochs"] == 1
            assert cfg["data"]["size"] == 200 and cfg["name"] == f"test/digits_shallow/rule~{rule}/seed~{seed}"
            assert ds.sizes["epoch"] == 1 and ds.sizes["step"] == 7 and set(ds.rule.values) == {rule}
            assert not (folder / "run.zarr.partial").exists()
            assert load_config(folder / "config.yaml").to_json() == json.dumps(cfg, sort_keys=True)
            log = tiny_run / "logs" / "test" / "digits_shallow" / f"rule~{rule}" / f"seed~{seed}" / "run.log"
            assert "is complete" in log.read_text()


@pytest.mark.slow
def test_tiny_run_figures_and_table(tiny_run):
    results = tiny_run / "results" / "test"
    for name in ("angle_layers", "angle_steps", "accuracy"):
        png = results / "figures" / f"{name}.png"
        assert png.read_bytes()[:8] == PNG_SIGNATURE
        assert matplotlib.image.imread(png).ndim == 3
    rows = (results / "table.csv").read_text().splitlines()
    assert rows[0].startswith("experiment,rule,seeds,diverged,unfinished,epochs,metric,train_acc_mean")
    assert [r.split(",")[:6] for r in rows[1:]] == [["digits_shallow", rule, "2", "0", "0", "1"]
                                                    for rule in ("bp", "gp")]
    md = (results / "table.md").read_text()
    assert "| digits_shallow | bp | 2 | 1 | top1 |" in md and "| digits_shallow | gp | 2 | 1 | top1 |" in md


@pytest.mark.slow
def test_tiny_run_is_up_to_date_and_reports(tiny_run):
    out = snakemake(tiny_run, "-n", "--configfile", config("test"))
    assert out.returncode == 0 and "Nothing to be done" in out.stdout, out.stdout
    out = snakemake(tiny_run, "--configfile", config("test"), "--report", str(tiny_run / "report.html"))
    assert out.returncode == 0, out.stdout
    assert (tiny_run / "report.html").stat().st_size > 10_000


@pytest.mark.slow
def test_notebook_executes_on_the_tiny_run(tiny_run, monkeypatch):
    import nbclient
    import nbformat

    monkeypatch.setenv("GAITSIM_STUDY", str(tiny_run / "results" / "test"))
    notebook = REPO / "analysis" / "notebooks" / "study.ipynb"
    nb = nbformat.read(notebook, as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(notebook.parent)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.data]
    assert len(images) == 3
    assert any("digits_shallow" in o.data.get("text/markdown", "") for o in outputs if "data" in o)


@pytest.mark.slow
def test_diverging_run_fails_or_is_kept(tmp_path):
    """A run that dies mid-training (an exploding learning rate: NaN) fails its job and leaves no run.zarr, only its
    prefix as run.zarr.partial (complete = false), which the analysis refuses. With the study's on_diverge: keep the
    rerun resumes it, publishes it flagged as diverged, and the figures and table count it."""
    from analysis import IncompleteStoreError, load_study

    cfg = tmp_path / "nan.yaml"
    cfg.write_text("study: nan\nstudies:\n  nan:\n    set:\n      data: {size: 200}\n      train: {epochs: 2}\n"
                   "      settings: {bp: {lr: 1.0e+30}}\n      record: {checkpoint_every: 0, probe_epochs: [0, 2]}\n"
                   "    experiments:\n      e: {run: configs/digits_shallow_bp.yaml, rules: [bp]}\n")
    out = snakemake(tmp_path, "--cores", "1", "--configfile", str(cfg))
    assert out.returncode != 0
    folder = tmp_path / "results" / "nan" / "e" / "rule~bp" / "seed~0"
    assert not (folder / "run.zarr").exists()
    partial = folder / "run.zarr.partial"
    assert open_store(partial).attrs["complete"] is False
    log = (tmp_path / "logs" / "nan" / "e" / "rule~bp" / "seed~0" / "run.log").read_text()
    assert "non-finite" in log
    with pytest.raises(IncompleteStoreError):
        load_study([partial])

    out = snakemake(tmp_path, "--cores", "1", "--configfile", str(cfg), "--config",
                    "studies={nan: {on_diverge: keep}}")
    assert out.returncode == 0, out.stdout
    store = open_store(folder / "run.zarr")
    assert store.attrs["complete"] is False and "non-finite" in store.attrs["diverged"]
    assert not partial.exists()
    assert load_study([folder / "run.zarr"]).diverged.item() == 1.0
    rows = (tmp_path / "results" / "nan" / "table.csv").read_text().splitlines()
    assert rows[1].startswith("e,bp,1,1,")


# ----- the reproduce study (issue 15): the paper's grid and its controls ----------------------------------------------
def test_reproduce_study_dry_run_at_200_epochs_on_gpus(tmp_path):
    out = snakemake(tmp_path, "-n", "--configfile", config("reproduce"), "--config", "device=cuda",
                    "cifar10={kind: npz, path: /data/cifar10_npz}", "--resources", "gpu=4")
    assert out.returncode == 0, out.stdout
    assert job_counts(out.stdout) == {"check_configs": 1, "run_config": 22, "run": 22, "figures": 1, "table": 1,
                                      "all": 1, "total": 48}
    assert "results/reproduce/cifar10_deep_f32target/rule~gp/seed~0/run.zarr" in out.stdout


@pytest.mark.slow
def test_reproduce_grid_on_digits_runs_end_to_end(tmp_path):
    """The short CI variant: the same 22-run grid on the embedded digits, 1 epoch on 200 samples; the
    regulariser-alone runs start from the weights their no-regulariser runs ended with."""
    small = tmp_path / "small.yaml"
    small.write_text("studies:\n  reproduce_digits:\n    set:\n      data: {size: 200}\n"
                     "      record: {angle_every: 3, probe_size: 16, checkpoint_every: 0}\n")
    out = snakemake(tmp_path, "--cores", "2", "--configfile", config("reproduce"), str(small), "--config",
                    "study=reproduce_digits", "epochs=1", "device=cpu")
    assert out.returncode == 0, out.stdout
    study = tmp_path / "results" / "reproduce_digits"
    stores = sorted(study.glob("*/rule~*/seed~0/run.zarr"))
    assert len(stores) == 22
    source = study / "digits_deep_noortho" / "rule~gp" / "seed~0" / "run.zarr"
    alone = open_store(study / "digits_deep_regalone" / "rule~gp" / "seed~0" / "run.zarr")
    assert json.loads(alone.attrs["init_from"])["path"] == str(source.relative_to(tmp_path))
    assert json.loads(alone.attrs["config"])["train"]["task_updates"] is False
    ds = open_store(study / "digits_deep_f32target" / "rule~gp" / "seed~0" / "run.zarr")
    assert ds.attrs["complete"] and ds.sizes["epoch"] >= 1
    assert (study / "figures" / "angle_layers.png").read_bytes()[:8] == PNG_SIGNATURE
    table = (study / "table.md").read_text()
    assert "digits_deep_ortho" in table and "digits_shallow_f32diff" in table
