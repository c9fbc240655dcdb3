"""SIGTERM and SIGHUP end a run with a message and a log line saying what happened and how to resume (issue 14,
part 7); the command it prints continues the run to completion."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sim import checkpoint as ckpt_io

ROOT = Path(__file__).resolve().parents[2]
CONFIG = """\
network: {preset: digits_shallow}
rules: bp
data: {kind: digits}
train: {epochs: 10, batch_size: 64, seed: 0}
record: {angle_every: 0, probe_size: 4, probe_epochs: [], checkpoint_every: 1}
"""


def env() -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k not in ("GAITSIM_DEVICE", "GAITSIM_FAULT")},
            "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.mark.timeout(300)
# SIGHUP in the fast tier (the message and the log line); SIGTERM, which also runs the printed command to the end, slow
@pytest.mark.parametrize("sig", [pytest.param(signal.SIGTERM, marks=pytest.mark.slow), signal.SIGHUP],
                         ids=["SIGTERM", "SIGHUP"])
def test_signal_stops_the_run_with_a_message_and_a_log_line(tmp_path, sig):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(CONFIG)
    out, log = tmp_path / "run.zarr", tmp_path / "run.zarr.log"
    proc = subprocess.Popen([sys.executable, "-m", "sim", "run", str(cfg), "--out", str(out), "--quiet"],
                            cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    # after epoch 1's checkpoint is on disk (its log line comes first): the resume then continues from it
    while not (log.exists() and "epoch 1/10" in log.read_text() and ckpt_io.manifest_path(out).exists()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.1)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    name = signal.Signals(sig).name
    assert proc.returncode == 128 + sig, stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: the run was stopped by {name}"), stderr
    assert "--resume" in lines[0]
    last = log.read_text().strip().splitlines()[-1]
    assert f"stopped by {name}; continue with --resume from the last checkpoint" in last
    if sig == signal.SIGTERM:  # the printed command continues the run to the end
        command = lines[0].split("Continue it with: ", 1)[1]
        done = subprocess.run(command, shell=True, cwd=tmp_path, env=env(), capture_output=True, text=True,
                              timeout=240)
        assert done.returncode == 0, done.stderr
        assert "resuming" in log.read_text() and "is complete" in log.read_text()
