"""``gaitsim status`` (sim.status, docs/workflow.md): a study with one finished run, one running (a live writer in
another process), one failed (its writer killed) and one not started, each shown as what it is; status reads only.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from sim.cli import main
from sim.status import study_status

REPO = Path(__file__).resolve().parents[1]
RUNS = {"e/rule~bp/seed~0": "done", "e/rule~gp/seed~0": "running", "e/rule~fa/seed~0": "failed",
        "e/rule~vgp/seed~0": "not started"}


def run_config(rule: str, epochs: int) -> dict:
    doc = yaml.safe_load((REPO / "configs" / f"digits_shallow_{rule}.yaml").read_text())
    doc["train"]["epochs"] = epochs
    doc["data"]["size"] = 320  # 10 steps of 32 per epoch
    doc["record"] = {"angle_every": 5, "probe_size": 8, "probe_epochs": [1], "checkpoint_every": 1}
    return doc


def tree_digest(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        h.update(str(p.relative_to(path)).encode())
        if p.is_file():
            st = p.stat()
            h.update(p.read_bytes() + f"{st.st_mtime_ns}".encode())
    return h.hexdigest()


def job(folder: Path, env: dict | None = None) -> subprocess.Popen:
    """The workflow's run job on ``folder/config.yaml``, in another process."""
    return subprocess.Popen(
        [sys.executable, "-m", "sim", "run", str(folder / "config.yaml"), "--out", str(folder / "run.zarr"),
         "--publish", "--quiet"], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_status_of_a_study_with_every_state(tmp_path, capsys):
    from sim.run import run

    study = tmp_path / "results" / "s"
    configs = {run_: run_config(run_.split("~")[1].split("/")[0], 200 if "gp/" in run_ and "vgp" not in run_
                                else 2) for run_ in RUNS}
    study.mkdir(parents=True)
    (study / "run_configs.json").write_text(json.dumps({f"results/s/{k}": v for k, v in configs.items()}))
    for name, doc in configs.items():
        (study / name).mkdir(parents=True)
        (study / name / "config.yaml").write_text(yaml.safe_dump(doc))

    run(configs["e/rule~bp/seed~0"], study / "e/rule~bp/seed~0/run.zarr", publish=True, progress=False)
    # failed: killed (SIGKILL, nothing cleaned up) after its first epoch's commit
    failed = job(study / "e/rule~fa/seed~0", {"GAITSIM_FAULT": "train.epoch:1"})
    running = job(study / "e/rule~gp/seed~0")
    try:
        assert failed.wait(timeout=240) == -signal.SIGKILL, failed.stderr.read()
        partial = study / "e/rule~gp/seed~0/run.zarr.partial"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # until the running job has committed an epoch
            rows = {r.run: r for r in study_status(study)}
            if rows["e/rule~gp/seed~0"].epoch >= 1:
                break
            assert running.poll() is None, running.stderr.read()
            time.sleep(0.5)
        done_before = tree_digest(study / "e/rule~bp/seed~0/run.zarr")
        failed_before = tree_digest(study / "e/rule~fa/seed~0/run.zarr.partial")

        assert main(["status", str(study)]) == 0
        table = capsys.readouterr().out
        assert main(["status", str(study), "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert running.poll() is None, "the live writer must still be running"
        assert partial.is_dir()
    finally:
        running.kill()
        running.wait()

    rows = {r["run"]: r for r in doc["runs"]}
    assert {k: r["state"] for k, r in rows.items()} == RUNS, table
    done, live, dead, new = (rows[k] for k in RUNS)
    assert (done["epoch"], done["epochs"], done["left_s"]) == (2, 2, 0.0)
    assert 0 < done["test_top1"] <= 1 and done["angle"] is not None and done["elapsed_s"] > 0
    assert live["epochs"] == 200 and 1 <= live["epoch"] < 200 and live["left_s"] > 0 and live["elapsed_s"] > 0
    assert live["test_top1"] is not None and live["angle"] is not None
    assert (dead["epoch"], dead["epochs"], dead["left_s"]) == (1, 2, None)
    assert (new["epoch"], new["epochs"], new["test_top1"]) == (0, 2, None)
    # the table: a summary, then one line per run with its state
    lines = table.splitlines()
    assert lines[0] == f"{study}: 4 runs: 1 done, 1 running, 1 failed, 1 not started"
    for run_, state in RUNS.items():
        assert any(line.split()[:2] == [run_, *state.split()[:1]] for line in lines[2:]), (run_, table)
    assert " 2/2 " in lines[2 + list(sorted(RUNS)).index("e/rule~bp/seed~0")]
    # status only reads: the finished and the failed store are untouched (files and times)
    assert tree_digest(study / "e/rule~bp/seed~0/run.zarr") == done_before
    assert tree_digest(study / "e/rule~fa/seed~0/run.zarr.partial") == failed_before


def test_not_started_runs_from_the_workflow_config(tmp_path, monkeypatch, capsys):
    """Without run_configs.json the expected runs come from expanding the workflow config (here: the quick study
    of this repository, nothing trained yet)."""
    monkeypatch.chdir(REPO)
    study = tmp_path / "results" / "quick"
    study.mkdir(parents=True)
    rows = study_status(study, [REPO / "config" / "config.yaml"])
    assert len(rows) == 16 and {r.state for r in rows} == {"not started"}
    assert rows[0].run == "digits_deep/rule~bp/seed~0" and rows[0].epochs == 5


def test_status_imports_no_torch():
    code = ("import sys; from sim.cli import main; main(['status', 'nowhere'])")
    out = subprocess.run([sys.executable, "-c", code + "\n"], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    check = subprocess.run([sys.executable, "-c", "import sys, sim.status, sim.commands.status; "
                            "print('torch' in sys.modules)"], capture_output=True,
                           text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert check.stdout.strip() == "False", check.stderr
    assert "nowhere is not a folder" in out.stderr


def test_a_store_caught_mid_creation_is_starting(tmp_path):
    """A partial store without its root zarr.json yet (or with one being replaced) is read as starting, not as an
    error; an empty run.zarr folder is not started; one that holds something else is unreadable."""
    study = tmp_path / "results" / "s"
    (study / "e/rule~gp/seed~0/run.zarr.partial").mkdir(parents=True)
    (study / "e/rule~bp/seed~0/run.zarr.partial").mkdir(parents=True)
    (study / "e/rule~bp/seed~0/run.zarr.partial/zarr.json").write_text('{"zarr_format": 3, "node_ty')  # torn
    (study / "e/rule~gp/seed~0/run.zarr").mkdir()  # an empty folder beside the partial store does not hide it
    (study / "e/rule~fa/seed~0/run.zarr").mkdir(parents=True)
    (study / "e/rule~vgp/seed~0/run.zarr").mkdir(parents=True)
    (study / "e/rule~vgp/seed~0/run.zarr/notes.txt").write_text("not a store")
    rows = {r.run: r.state for r in study_status(study)}
    assert rows == {"e/rule~bp/seed~0": "starting", "e/rule~gp/seed~0": "starting", "e/rule~fa/seed~0": "not started",
                    "e/rule~vgp/seed~0": "unreadable"}
