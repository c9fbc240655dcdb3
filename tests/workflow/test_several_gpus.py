"""A study that gives a run several GPUs, as Snakemake sees it (docs/workflow.md, "Several GPUs"): the dry run shows
the torchrun command of rule run_parallel with its resources (gpu=N leased together), the other runs stay rule
run's, the SLURM profile's settings reach the job, and with device cpu there is no run_parallel job."""

from __future__ import annotations

import pytest
import yaml

from sim.archive import open_run

from .test_snakemake import REPO, job_counts, snakemake

STUDY = {
    "study": "gpus", "device": "cuda",
    "studies": {"gpus": {"on_diverge": "keep", "experiments": {
        "big": {"run": "configs/digits_shallow_{rule}.yaml", "rules": ["gp"], "gpus": 4,
                "sweep": {"eta": {"path": "settings.gp.eta", "values": [1.0e-7, 1.0e-5]}}},
        "small": {"run": "configs/digits_shallow_{rule}.yaml", "rules": ["bp"]},
    }}},
}


def write(tmp_path) -> str:
    path = tmp_path / "gpus.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    return str(path)


def test_dry_run_shows_the_torchrun_command(tmp_path):
    out = snakemake(tmp_path, "-n", "-p", "--configfile", write(tmp_path), "--resources", "gpu=4")
    assert out.returncode == 0, out.stdout
    counts = job_counts(out.stdout)
    assert counts["run_parallel"] == 2 and counts["run"] == 1, counts  # big: 2 sweep points; small: 1 GPU
    store = "results/gpus/big/eta~1e-07/rule~gp/seed~0/run.zarr"
    command = (f"python -m sim lease --gpus 4 --timeout 86400 --require-gpu -- python -m torch.distributed.run "
               f"--standalone --nproc-per-node 4 -m sim run 'results/gpus/big/eta~1e-07/rule~gp/seed~0/config.yaml' "
               f"--out '{store}' --publish --on-diverge keep --quiet "
               "--log-file 'logs/gpus/big/eta~1e-07/rule~gp/seed~0/run.log'")
    assert command in out.stdout
    job = out.stdout.split("rule run_parallel:", 1)[1].split("\n\n", 1)[0]
    assert "gpu=4" in job and "on_diverge=keep" in job and "lease=--timeout 86400 --require-gpu" in job
    assert "output: results/gpus/small/rule~bp/seed~0/run.zarr" in out.stdout.split("rule run:", 1)[1]


def test_slurm_profile_gives_the_job_one_node(tmp_path):
    profile = REPO / "workflow" / "profiles" / "slurm"
    out = snakemake(tmp_path, "-n", "--workflow-profile", str(profile), "--configfile", write(tmp_path))
    assert out.returncode == 0, out.stdout
    job = out.stdout.split("rule run_parallel:", 1)[1].split("\n\n", 1)[0]
    for resource in ("gpu=4", "nodes=1", "cpus_per_gpu=8", "runtime=4320"):
        assert resource in job, job


def test_on_the_cpu_every_run_is_one_process(tmp_path):
    out = snakemake(tmp_path, "-n", "--configfile", write(tmp_path), "--config", "device=cpu")
    assert out.returncode == 0, out.stdout
    assert "run_parallel" not in job_counts(out.stdout) and job_counts(out.stdout)["run"] == 3
    assert "studies.gpus.experiments.big.gpus: 4 applies with device cuda or auto" in out.stdout


@pytest.mark.slow
def test_a_two_process_run_job_publishes_its_store(tmp_path, monkeypatch):
    """The run_parallel job for real, with device auto and no GPU in the pool: the lease falls back to the CPU,
    torchrun starts two processes (gloo), and the store is published with world_size 2 and the log where the
    workflow wants it."""
    study = {"study": "two", "device": "auto", "studies": {"two": {"experiments": {"e": {
        "run": "configs/digits_shallow_{rule}.yaml", "rules": ["gp"], "gpus": 2,
        "set": {"train": {"epochs": 1}, "data": {"size": 200}, "record": {"probe_epochs": [1]}}}}}}}
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(study))
    monkeypatch.setenv("GAITSIM_GPU_POOL", "")  # no GPU, whatever the machine has
    out = snakemake(tmp_path, "--cores", "2", "--configfile", str(path), "--resources", "gpu=2",
                    "--config", "gpu_lease_timeout=0")
    assert out.returncode == 0, out.stdout
    store = tmp_path / "results" / "two" / "e" / "rule~gp" / "seed~0" / "run.zarr"
    attrs = open_run(store).attrs
    assert attrs["complete"] is True and attrs["world_size"] == 2
    log = (tmp_path / "logs" / "two" / "e" / "rule~gp" / "seed~0" / "run.log").read_text()
    assert "on cpu x 2 processes" in log and "is complete" in log
