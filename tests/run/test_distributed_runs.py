"""Data-parallel runs end to end (slow; docs/runs.md, "Several GPUs"): two processes on the CPU (gloo) against one.

* every registered rule, on the digits net and on a small conv net, update by update: the raw updates Adam gets
  at each step (learned feedback included), the loss, BP's reference, and the network and Adam state after;
* ``torchrun --nproc-per-node 2 -m sim run`` writes the archive the single-process run writes (to float
  tolerance), for a digits and a conv network whose layers together use every built-in rule;
* a killed process stops the run with one ``error:`` line and no traceback from gaitsim; ``--resume`` with one
  process, or with two, ends with the uninterrupted run's archive.

The measured differences are printed (``pytest -s``): docs/runs.md quotes them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from sim.archive import open_run
from sim.rules.registry import specs
from sim.run import run

from . import distributed_worker as worker
from .test_distributed import worst_difference

pytestmark = pytest.mark.slow

#: float64 steps: the sum over two parts differs from the sum over the batch only in the order of additions
TOLERANCE = {"float64": 1e-9, "float32": 1e-4}
PRESETS = {"digits": ("digits_shallow", {}), "conv": ("cifar10_conv", {"width_mult": 0.125})}


@pytest.mark.parametrize("network", ["digits", "conv"])
def test_every_rule_steps_as_one_process_does(network, tmp_path, one_thread):
    """Two processes, each on its part of every batch (25 = 13 + 12, and a short last batch of 9 = 5 + 4), with
    activity and message noise: every step's summed raw updates equal the single-process step's, for every rule."""
    net, options = PRESETS[network]
    cases = [worker.case(rule, net, rule, **options) for rule in specs()]
    cases += [worker.case("gp skip_aux", net, "gp", noise=(0.0, 0.0), **options),
              worker.case("gp step-checks", net, "gp", options={"check_numerics": "step"}, **options)]
    if network == "digits":
        cases += [worker.case(f"{rule} float32", net, rule, dtype="float32", **options) for rule in specs()]
    parallel = worker.spawn(worker.all_cases, (cases,), str(tmp_path / "out"))[0]
    worst = {}
    for c in cases:
        worst[c["name"]] = worst_difference(worker.steps(c), parallel[c["name"]])
    print(f"\n{network}: max relative difference of the updates, 1 vs 2 processes:\n"
          + "\n".join(f"  {name:20s} {value:.2e}" for name, value in worst.items()))
    for c in cases:
        assert worst[c["name"]] < TOLERANCE[c["dtype"]], (c["name"], worst[c["name"]])


# ----- the command line ---------------------------------------------------------------------------------------------
DIGITS = {"network": {"preset": "digits_deep"}, "rules": ["dfa", "kp", "dtp", "brsf", "usf", "lgp", "gp"],
          "data": {"kind": "digits", "size": 200}}
CONV = {"network": {"preset": "cifar10_conv", "width_mult": 0.125}, "rules": ["frsf", "vgp", "fa", "bp", "dtp", "gp"],
        "data": {"kind": "random", "input_shape": [3, 32, 32], "classes": 10, "size": 90}}


def config(tmp_path: Path, base: dict, **train) -> Path:
    rules = [base["rules"]] if isinstance(base["rules"], str) else base["rules"]
    doc = {**base, "settings": {r: {"lr": 1.0e-3} for r in set(rules)},
           "noise": {"activity_std": 0.01, "message_std": 0.001},
           "train": {"epochs": 2, "batch_size": 25, "seed": 1, "dtype": "float64", "eval_batch_size": 32, **train},
           "record": {"angle_every": 3, "probe_size": 8, "probe_epochs": [0, 2], "checkpoint_every": 1}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def env(**more) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **more}


def torchrun(cfg: Path, out: Path, *extra: str, nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), "-m",
           "sim", "run", str(cfg), "--out", str(out), "--quiet", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=600)


def assert_close_archives(a: Path, b: Path, rtol: float = 1e-9) -> dict[str, float]:
    """Two run stores hold the same variables: integers and labels equal, floats to ``rtol`` of each variable's
    largest value (angles at least to 1e-6 degrees), NaN where the other has NaN; the same attributes but for the
    process and time. Returns the largest relative difference per float variable."""
    da, db = open_run(a), open_run(b)
    assert set(da.data_vars) == set(db.data_vars) and set(da.coords) == set(db.coords)
    diffs = {}
    for k in [*da.data_vars, *da.coords]:
        if k == "epoch_wall_s":
            continue
        va, vb = da[k].values, db[k].values
        assert va.shape == vb.shape and va.dtype == vb.dtype, k
        if va.dtype.kind != "f":
            assert np.array_equal(va, vb), k
            continue
        assert np.array_equal(np.isnan(va), np.isnan(vb)), k
        fin = ~np.isnan(va)
        if not fin.any():
            continue
        scale, diff = np.abs(va[fin]).max(), np.abs(va[fin] - vb[fin]).max()
        diffs[k] = float(diff / scale) if scale else float(diff)
        assert diff <= (max(1e-6, rtol * scale) if k == "angle" else rtol * scale), (k, diffs[k])
    skip = {"start_time", "end_time", "device", "writer_pid", "writer_host", "world_size"}
    assert {k: v for k, v in da.attrs.items() if k not in skip} == {k: v for k, v in db.attrs.items() if k not in skip}
    return diffs


@pytest.mark.parametrize("network", ["digits", "conv"])
def test_torchrun_writes_the_single_process_archive(network, tmp_path, one_thread):
    """``torchrun --nproc-per-node 2 -m sim run`` (every built-in rule in one of the two networks, noise on, a short
    last batch, the angles, the probe, the sharded evaluation) against ``python -m sim run``."""
    cfg = config(tmp_path, DIGITS if network == "digits" else CONV)
    single, double = tmp_path / "one.zarr", tmp_path / "two.zarr"
    run(cfg, single, progress=False)
    done = torchrun(cfg, double)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(double)  # rank 0 alone prints the store
    diffs = assert_close_archives(single, double)
    attrs = open_run(double).attrs
    assert attrs["world_size"] == 2 and open_run(single).attrs["world_size"] == 1
    print(f"\n{network} archive, max relative difference 1 vs 2 processes: "
          + ", ".join(f"{k} {v:.1e}" for k, v in sorted(diffs.items()) if v))


# ----- a killed process ---------------------------------------------------------------------------------------------
LONG = {"network": {"preset": "digits_shallow"}, "rules": "gp", "data": {"kind": "digits", "size": 320}}


def launch(cfg: Path, out: Path, fault_rank: int, fault: str) -> list[subprocess.CompletedProcess]:
    """Two processes started by hand, as srun starts its tasks (each with the launch variables), the one of rank
    ``fault_rank`` with ``GAITSIM_FAULT=fault``."""
    port = str(worker.free_port())
    procs = []
    for rank in range(2):
        variables = {"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
                     "MASTER_PORT": port, **({"GAITSIM_FAULT": fault} if rank == fault_rank else {})}
        procs.append(subprocess.Popen([sys.executable, "-m", "sim", "run", str(cfg), "--out", str(out), "--quiet"],
                                      env=env(**variables), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    out_err = [p.communicate(timeout=600) for p in procs]
    return [subprocess.CompletedProcess(p.args, p.returncode, o, e) for p, (o, e) in zip(procs, out_err)]


def killed_mid_epoch_2(out: Path) -> None:
    """The store of a run killed in its second epoch: readable, incomplete, epoch 1 committed and checkpointed."""
    ds = open_run(out)
    assert ds.attrs["complete"] is False and ds.sizes["epoch"] == 1 and ds.attrs["world_size"] == 2
    manifest = json.loads((out / "_checkpoints" / "manifest.json").read_text())
    assert manifest["checkpoints"][0]["epochs_done"] == 1


def test_a_killed_process_stops_the_run_and_resume_continues_with_one_or_two(tmp_path, one_thread):
    """Rank 1 SIGKILLed in epoch 2 (its 15th step): rank 0 stops with one error line naming what happened and
    --resume; one process resumes the store to the uninterrupted run's archive. Then rank 0 killed instead: rank 1
    stops silently (status 2), and torchrun with two processes resumes it to the same archive."""
    cfg = config(tmp_path, LONG, epochs=3, batch_size=32)
    reference = tmp_path / "reference.zarr"
    run(cfg, reference, progress=False)

    out = tmp_path / "a.zarr"
    rank0, rank1 = launch(cfg, out, fault_rank=1, fault="train.step:15")
    assert rank1.returncode == -signal.SIGKILL
    lines = rank0.stderr.strip().splitlines()
    assert rank0.returncode == 2 and len(lines) == 1, rank0.stderr
    assert lines[0].startswith("error: process 0 of 2 lost contact with the other processes of the data-parallel run")
    # the backend's reason, in its words (gloo says "Connection closed by peer" or "Connection reset by peer", or
    # times out, depending on when the socket closes): present, short, without its C++ source location
    reason = re.search(r"\((.+)\): one of them stopped or was killed", lines[0])
    assert reason and reason.group(1).strip() and ".cc:" not in reason.group(1), lines[0]
    assert "--resume" in lines[0] and "Traceback" not in rank0.stderr
    killed_mid_epoch_2(out)
    run(cfg, out, resume=True, progress=False)  # one process continues what two started
    assert_close_archives(reference, out)
    assert open_run(out).attrs["world_size"] == 1

    out = tmp_path / "b.zarr"
    rank0, rank1 = launch(cfg, out, fault_rank=0, fault="train.step:15")
    assert rank0.returncode == -signal.SIGKILL
    assert rank1.returncode == 2 and rank1.stderr == "" and rank1.stdout == ""  # rank 0 (or the launcher) reports
    killed_mid_epoch_2(out)
    done = torchrun(cfg, out, "--resume")
    assert done.returncode == 0, done.stderr
    assert_close_archives(reference, out)


def test_torchrun_stops_every_process_when_one_is_killed(tmp_path, one_thread):
    """Under torchrun: a worker SIGKILLed from outside once the first checkpoint is written. gaitsim prints at most one
    error line (rank 0's: the lost contact, or the SIGTERM torchrun then sends it) and no traceback; torchrun reports
    the failed worker; the store resumes with two processes to the uninterrupted run."""
    cfg = config(tmp_path, LONG, epochs=12, batch_size=32)
    out = tmp_path / "c.zarr"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "sim", "run",
           str(cfg), "--out", str(out), "--quiet"]
    agent = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    checkpoint = out / "_checkpoints" / "last.pt"
    while not checkpoint.exists() and agent.poll() is None:
        time.sleep(0.05)
    rank1 = next(pid for pid in _children(agent.pid) if _environ(pid).get("RANK") == "1")
    os.kill(rank1, signal.SIGKILL)
    _, stderr = agent.communicate(timeout=600)
    assert agent.returncode != 0
    ours = [line for line in stderr.splitlines() if line.startswith("error:")]
    # rank 0 notices the lost worker ("lost contact"), or torchrun's SIGTERM reaches it first ("stopped by SIGTERM",
    # the resume command): either way one line (or none), never a traceback of ours
    assert len(ours) <= 1 and all("lost contact" in line or "stopped by SIGTERM" in line for line in ours), stderr
    assert "ChildFailedError" in stderr  # torchrun's own report of the killed worker
    assert "sim/" not in "".join(line for line in stderr.splitlines() if line.startswith("  File"))
    assert open_run(out).attrs["complete"] is False
    done = torchrun(cfg, out, "--resume")
    assert done.returncode == 0, done.stderr
    reference = tmp_path / "reference.zarr"
    run(cfg, reference, progress=False)
    assert_close_archives(reference, out)


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


# ----- failures every process meets ---------------------------------------------------------------------------------
def test_a_bad_config_is_reported_once(tmp_path):
    cfg = config(tmp_path, LONG)
    done = torchrun(cfg, tmp_path / "x.zarr", "--set", "settings.gp.lrr=1")
    ours = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode != 0 and ours == [f"error: {cfg}: settings.gp: unknown key 'lrr' (did you mean 'lr'?)"]
    assert not (tmp_path / "x.zarr").exists()


def test_a_non_finite_step_stops_or_retries_every_process(tmp_path, one_thread):
    """fa at lr 1e8 in float32: the batch loss of step 2 overflows (each process's half of it does not). Stopped:
    one error line, naming the step as one process does, and the same prefix and failure checkpoint. With
    ``on_nonfinite: retry`` every process goes back to rank 0's checkpoint at a lower lr and the run completes as
    the single-process run does."""
    base = {**LONG, "rules": "fa", "data": {"kind": "digits"}}
    cfg = config(tmp_path, base, dtype="float32", batch_size=32, seed=0)
    doc = yaml.safe_load(cfg.read_text())
    doc["settings"], doc["noise"] = {"fa": {"lr": 1.0e8}}, {"activity_std": 0.0, "message_std": 0.0}
    cfg.write_text(yaml.safe_dump(doc))
    single, double = tmp_path / "one.zarr", tmp_path / "two.zarr"
    with pytest.raises(Exception, match="non-finite loss at step 2") as expected:
        run(cfg, single, progress=False)
    done = torchrun(cfg, double)
    ours = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode != 0 and ours == [f"error: {str(expected.value).replace(str(single), str(double))}"]
    assert_close_archives(single, double, rtol=1e-6)
    assert (double / "_checkpoints" / "last.pt").exists()

    doc["train"].update(on_nonfinite="retry", retry_lr_factor=1.0e-11)  # back to step 0 at lr 1e-3
    cfg.write_text(yaml.safe_dump(doc))
    run(cfg, single, overwrite=True, progress=False)
    done = torchrun(cfg, double, "--overwrite")
    assert done.returncode == 0, done.stderr
    assert_close_archives(single, double, rtol=1e-5)  # float32
    retries = json.loads(open_run(double).attrs["retries"])
    assert [r["step"] for r in retries] == [2] and retries == json.loads(open_run(single).attrs["retries"])
