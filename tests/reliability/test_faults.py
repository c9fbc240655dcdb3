"""Fault injection (docs/reliability.md): a run killed anywhere resumes to the archive an uninterrupted run writes;
torn checkpoints and archive chunks are detected, named and passed over; a full disk or read-only folder loses
nothing written before; NaN/Inf anywhere in a step stops the run with step, layer and quantity named (or retries
with a lower learning rate). The one place for these: a SIGKILLed CLI run resumes too, and the run store's and
checkpoint's own write errors are here with the run's."""

from __future__ import annotations

import copy
import errno
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import sim.schedule
from sim import checkpoint as ckpt_io
from sim import faults
from sim.archive import ArchiveError, open_run, read_attrs
from sim.cli import main as cli
from sim.errors import NonFiniteError, SingularLayerError
from sim.layers.base import Layer
from sim.message import Message
from sim.rules.base import Rule
from sim.rules.gait import GaitProp
from sim.run import run
from tests.conftest import TINY
from tests.faultinject import (
    append_garbage,
    archive_differences,
    flip_byte,
    leftovers,
    run_cli,
    truncate,
)
from tests.helpers import add_epoch, assert_same_archive, checkpoint_at, make_archive, write_config

pytestmark = pytest.mark.usefixtures("one_thread")

#: 3 epochs of 10 steps, a checkpoint after each, probes at epochs 0, 1 and 3, every rule kind, activity noise (so
#: the noise generator's state must survive too): about a second per run
DOC = copy.deepcopy(TINY)
DOC.update(rules=["fa", "gp", "gp", "gp"], data={"kind": "digits", "size": 320},
           train={"epochs": 3, "batch_size": 32, "seed": 0}, noise={"activity_std": 1e-3},
           record={"checkpoint_every": 1, "probe_epochs": [0, 1, 3], "angle_every": 3, "probe_size": 8})
STEPS = 10  # per epoch


def doc(**train) -> dict:
    d = copy.deepcopy(DOC)
    d["train"].update(train)
    return d


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The config file, an uninterrupted reference run of it, and how often it hits each fault site."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("faults")
    cfg = tmp / "run.yaml"
    cfg.write_text(yaml.safe_dump(DOC))
    faults.arm(None, count=True)
    try:
        ref = run(cfg, tmp / "reference.zarr", progress=False)
        counts = faults.counts()
    finally:
        faults.arm(None)
        torch.set_num_threads(threads)
    return cfg, ref, counts


@pytest.fixture
def armed():
    """Arm a fault plan in this process (``armed('site:n:enospc')``); disarmed afterwards."""
    yield faults.arm
    faults.arm(None)


def assert_same(reference: Path, store: Path) -> None:
    assert archive_differences(reference, store) == []
    assert leftovers(store) == []


# ----- the hooks ----------------------------------------------------------------------------------------------------
def test_fault_plans_parse_and_cost_nothing_unarmed(monkeypatch):
    assert faults.parse("archive.append:3,checkpoint.write:1:enospc") == {
        "archive.append": (3, "kill"), "checkpoint.write": (1, "enospc")}
    for bad in ("archive.append", "archive.append:0", "nowhere:1", "train.step:1:explode", "train.step:x"):
        with pytest.raises(ValueError, match="GAITSIM_FAULT"):
            faults.parse(bad)
    assert faults.parse("") is None and faults.parse(None) is None
    faults.arm(None)
    # unarmed, a hit neither reads the environment nor counts: the variable was read once, at import
    monkeypatch.setattr(os, "environ", None)
    t0 = time.perf_counter()
    for _ in range(100_000):
        faults.hit("train.step")
    assert time.perf_counter() - t0 < 1.0 and faults.counts() == {}
    monkeypatch.undo()
    faults.arm("train.step:2:eio")
    try:
        faults.hit("train.step")
        with pytest.raises(OSError, match=r"Input/output error \(injected by GAITSIM_FAULT at train.step:2\)"):
            faults.hit("train.step")
        faults.hit("train.step")  # only the n-th hit
    finally:
        faults.arm(None)


def test_every_site_is_reached(setup, tmp_path):
    cfg, ref, counts = setup
    resume_only = {"archive.truncate", "archive.remove"}
    assert set(counts) == set(faults.SITES) - resume_only, "a fault site the harness never reaches"
    assert counts["train.step"] == 3 * STEPS and counts["checkpoint.write"] == 3


# ----- 1. kill anywhere ---------------------------------------------------------------------------------------------
def _sample(counts: dict[str, int], rng: random.Random) -> list[str]:
    """Kill points ``site:n``: every hit of the rare sites, a sample of the frequent ones."""
    points = []
    for site, n in sorted(counts.items()):
        hits = list(range(1, n + 1))
        chosen = hits if n <= 6 else sorted(rng.sample(hits, max(5, n // 8)))
        points += [f"{site}:{k}" for k in chosen]
    return points


@pytest.mark.slow
def test_kill_anywhere_then_resume_gives_the_uninterrupted_archive(setup, tmp_path):
    """SIGKILL a CLI run at every fault site (a sample of the frequent ones), at random moments, twice in a row (the
    second kill inside the resume), and during --overwrite; each time, --resume must end with the reference
    archive, and a store must never read as complete before it is."""
    cfg, ref, counts = setup
    rng = random.Random(20240607)
    base = ["run", str(cfg), "--quiet", "--out"]
    out_log = tmp_path / "children.log"

    t0 = time.perf_counter()
    assert run_cli([*base, str(tmp_path / "timing.zarr")], output=out_log) == 0
    full = time.perf_counter() - t0

    scenarios: list[tuple[str, list[dict]]] = []
    for point in _sample(counts, rng):
        scenarios.append((point, [{"fault": point}]))
    for _ in range(12):
        delay = round(rng.uniform(0.02, 0.95 * full), 3)
        scenarios.append((f"timer {delay} s", [{"kill_after": delay}]))
    # a second kill while resuming: while truncating, appending, checkpointing, stepping, or at a random moment
    for first, second in [("train.epoch:2", "archive.truncate:1"), ("train.epoch:2", "archive.truncate:9"),
                          ("archive.append:50", "checkpoint.rotate:1"), ("checkpoint.manifest:3", "archive.append:3"),
                          ("train.epoch:2", "train.step:4"), ("checkpoint.write:2", "checkpoint.write:1")]:
        scenarios.append((f"{first} then {second}", [{"fault": first}, {"fault": second, "resume": True}]))
    for _ in range(3):
        delay = round(rng.uniform(0.02, 0.6 * full), 3)
        scenarios.append((f"train.step:15 then timer {delay} s",
                          [{"fault": "train.step:15"}, {"kill_after": delay, "resume": True}]))

    kills = survived = 0
    failures = []
    for i, (name, attempts) in enumerate(scenarios):
        store = tmp_path / f"s{i}.zarr"
        killed_here = 0
        for attempt in attempts:
            argv = [*base, str(store), *(["--resume"] if attempt.get("resume") else [])]
            code = run_cli(argv, fault=attempt.get("fault"), kill_after=attempt.get("kill_after"), output=out_log)
            if code == -9:
                killed_here += 1
            elif code != 0:
                failures.append(f"{name}: exit status {code} (see {out_log})")
            attrs = read_attrs(store)
            if attrs and attrs.get("complete") and archive_differences(ref, store):
                failures.append(f"{name}: the store reads as complete but differs from the reference")
        if not killed_here:
            continue  # a timer that fired after the run had finished
        kills += killed_here
        code = run_cli([*base, str(store), "--resume"], output=out_log)
        diffs = archive_differences(ref, store) if code == 0 else [f"--resume exited with {code}"]
        diffs += [f"left behind: {p}" for p in leftovers(store)]
        if diffs:
            failures.append(f"{name}: {diffs}")
        else:
            survived += killed_here
        shutil.rmtree(store, ignore_errors=True)

    # --overwrite killed after the old store was renamed aside, and while the new one is created
    for fault in ("archive.remove:1", "archive.create:5"):
        store = tmp_path / f"overwrite_{fault.split(':')[0]}.zarr"
        assert run_cli([*base, str(store)], output=out_log) == 0
        if run_cli([*base, str(store), "--overwrite"], fault=fault, output=out_log) == -9:
            kills += 1
            attrs = read_attrs(store)
            assert not (attrs and attrs.get("complete")), f"{fault}: a half-replaced store reads as complete"
            if run_cli([*base, str(store), "--resume"], output=out_log) == 0 and not archive_differences(ref, store) \
                    and not leftovers(store):
                survived += 1
            else:
                failures.append(f"--overwrite killed at {fault}: not recovered")

    print(f"\nkill anywhere: {kills} kill points tried, {survived} survived ({len(scenarios) + 2} scenarios)")
    assert not failures, "\n".join(failures)
    assert kills >= 50 and survived == kills


@pytest.mark.slow  # a real process killed from outside; the fast tier resumes after a crash in tests/run/test_store.py
def test_sigkill_mid_epoch_then_resume(tmp_path, tiny_config):
    """A real crash: SIGKILL a CLI run in the middle of an epoch, resume it, compare with an uninterrupted run."""
    doc = tiny_config(rules="gp", train={"epochs": 3, "batch_size": 16},
                      record={"probe_epochs": [0, 3], "angle_every": 25})
    cfg_path = write_config(tmp_path / "kill.yaml", doc)
    store, log = tmp_path / "killed.zarr", tmp_path / "killed.zarr.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "sim", "run", str(cfg_path), "--out", str(store), "--quiet"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not (m := re.search(r"epoch 1/3: .*\| ([0-9.]+) s", log.read_text() if log.exists() else "")):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.01)
        time.sleep(float(m.group(1)) / 3)  # about a third into epoch 2 (epoch 1 is committed and checkpointed)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    prefix = open_run(store)
    assert prefix.attrs["complete"] is False, "the run finished before it was killed"
    reference = run(cfg_path, tmp_path / "ref.zarr", progress=False)
    assert cli(["run", str(cfg_path), "--out", str(store), "--quiet", "--resume"]) == 0
    assert_same_archive(reference, store)


@pytest.mark.slow
def test_a_real_cli_process_killed_by_the_environment_variable(setup, tmp_path):
    """The documented way: ``GAITSIM_FAULT=... python -m sim run ...`` in a fresh interpreter."""
    cfg, ref, _ = setup
    store = tmp_path / "env.zarr"
    env = {**os.environ, "GAITSIM_FAULT": "checkpoint.rotate:2", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "sim", "run", str(cfg), "--out", str(store), "--quiet"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    state = ckpt_io.load(store)  # rotated (last.pt became prev.pt), the new one not yet renamed into place
    assert not ckpt_io.checkpoint_path(store).exists() and state.path == ckpt_io.previous_path(store)
    assert state.epochs_done == 2 and open_run(store).attrs["complete"] is False  # (the 1st save has no rotation)
    assert cli(["run", str(cfg), "--out", str(store), "--quiet", "--resume"]) == 0
    assert_same(ref, store)


# ----- 2. torn files ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def interrupted(setup, tmp_path_factory):
    """A store whose run stopped in epoch 3: last.pt after epoch 2, prev.pt after epoch 1, epochs 1-2 committed."""
    cfg = setup[0]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    store = tmp_path_factory.mktemp("interrupted") / "run.zarr"
    original = sim.schedule.Scheduler.compute

    def compute(self, x, y):
        if self.step_count == 2 * STEPS + 5:
            raise KeyboardInterrupt
        return original(self, x, y)

    sim.schedule.Scheduler.compute = compute
    try:
        with pytest.raises(KeyboardInterrupt):
            run(cfg, store, progress=False)
    finally:
        sim.schedule.Scheduler.compute = original
        torch.set_num_threads(threads)
    assert ckpt_io.load(store).epochs_done == 2
    assert ckpt_io.previous_path(store).is_file()
    return store


def _unlink(path: Path) -> None:
    path.unlink()


def _garbage_json(path: Path) -> None:
    path.write_text('{"checkpoints": [{"sha256": ')


# (case, file inside the store, damage, outcome): 'fallback' resumes from prev.pt, 'resume' from last.pt (with a
# warning), 'error' stops naming the file. Every damaged file must be named in the warning or the error.
TORN = [
    ("last.pt half written", "_checkpoints/last.pt", truncate, "fallback"),
    ("last.pt empty", "_checkpoints/last.pt", lambda p: truncate(p, 0.0), "fallback"),
    ("last.pt bit rot", "_checkpoints/last.pt", flip_byte, "fallback"),
    ("last.pt bit rot in the zip directory", "_checkpoints/last.pt", lambda p: flip_byte(p, 0.999), "fallback"),
    ("last.pt with bytes appended", "_checkpoints/last.pt", append_garbage, "fallback"),
    ("manifest unreadable", "_checkpoints/manifest.json", _garbage_json, "resume"),
    ("loss chunk of epoch 2 half written", "loss/c/1", truncate, "fallback"),
    ("loss chunk of epoch 2 bit rot", "loss/c/1", flip_byte, "fallback"),
    ("angle chunk of epoch 2 deleted", "angle/c/1/0", _unlink, "fallback"),
    ("step_epoch chunk of epoch 2 emptied", "step_epoch/c/1", lambda p: truncate(p, 0.0), "fallback"),
    ("probe record 1 deleted", "activity_dense2/c/1/0/0", _unlink, "error"),
    ("loss chunk of epoch 1 bit rot", "loss/c/0", flip_byte, "error"),
    ("epoch metrics chunk half written", "test_top1/c/0", truncate, "error"),
    ("ortho_error chunk deleted", "ortho_error/c/0/0", _unlink, "error"),
    ("probe target of epoch 0 bit rot", "target_output/c/0/0/0", flip_byte, "error"),
    ("probe labels bit rot", "probe_label/c/0", flip_byte, "error"),
    ("layer names bit rot", "layer/c/0", flip_byte, "error"),
    ("array metadata half written", "loss/zarr.json", truncate, "error"),
]
FAST_TORN = {"last.pt half written", "loss chunk of epoch 2 half written", "loss chunk of epoch 1 bit rot"}


@pytest.mark.parametrize("case, target, damage, outcome", [
    pytest.param(*row, marks=() if row[0] in FAST_TORN else pytest.mark.slow, id=row[0]) for row in TORN])
def test_torn_files_are_detected_named_and_passed_over(setup, interrupted, tmp_path, capsys, case, target, damage,
                                                      outcome):
    cfg, ref, _ = setup
    store = tmp_path / "run.zarr"
    shutil.copytree(interrupted, store)
    damaged = store / target
    assert damaged.is_file(), f"no file {target} in the store"
    damage(damaged)
    code = cli(["run", str(cfg), "--out", str(store), "--resume"])
    err = capsys.readouterr().err
    if outcome == "error":
        assert code == 2 and "error: " in err, err
        assert str(damaged) in err and "--overwrite" in err, err
        assert read_attrs(store)["complete"] is False  # never passed off as complete
        return
    assert code == 0, err
    log = Path(str(store) + ".log").read_text()
    assert str(damaged) in err and str(damaged) in log, "the damaged file is not named"
    if outcome == "fallback":
        assert f"resuming from {ckpt_io.previous_path(store)} instead (step {STEPS})" in log
    assert_same(ref, store)


def test_both_checkpoints_damaged_is_an_error_naming_both(setup, interrupted, tmp_path, capsys):
    cfg = setup[0]
    store = tmp_path / "run.zarr"
    shutil.copytree(interrupted, store)
    truncate(ckpt_io.checkpoint_path(store))
    flip_byte(ckpt_io.previous_path(store))
    assert cli(["run", str(cfg), "--out", str(store), "--quiet", "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"cannot resume {store}: no intact checkpoint" in err and "--overwrite" in err
    assert str(ckpt_io.checkpoint_path(store)) in err and str(ckpt_io.previous_path(store)) in err
    # the store is left as it was for the user to decide; --overwrite starts over
    assert cli(["run", str(cfg), "--out", str(store), "--quiet", "--overwrite"]) == 0


def test_without_a_manifest_checkpoints_load_unverified(setup, interrupted, tmp_path, capsys):
    cfg, ref, _ = setup
    store = tmp_path / "run.zarr"
    shutil.copytree(interrupted, store)
    ckpt_io.manifest_path(store).unlink()  # e.g. a store written before checksums existed
    assert cli(["run", str(cfg), "--out", str(store), "--resume"]) == 0
    assert "has no checksum" in capsys.readouterr().err
    assert_same(ref, store)


def test_rows_after_the_checkpoint_are_cut_whatever_their_state(setup, interrupted, tmp_path):
    """A torn chunk beyond what the checkpoint keeps (a half-done append) is dropped, not an error, and a zarr temp
    file left by a kill is removed."""
    cfg, ref, _ = setup
    store = tmp_path / "run.zarr"
    shutil.copytree(interrupted, store)
    (store / "loss" / "c" / "2").write_bytes(b"half a chunk")
    (store / "loss" / "c" / "0.0123abcd.partial").write_bytes(b"temp")
    run(cfg, store, resume=True, progress=False)
    assert_same(ref, store)


@pytest.mark.slow
def test_a_complete_store_that_is_damaged_is_not_passed_off_as_complete(setup, tmp_path, capsys):
    cfg, ref, _ = setup
    store = tmp_path / "run.zarr"
    shutil.copytree(ref, store)
    assert cli(["run", str(cfg), "--out", str(store), "--quiet", "--resume"]) == 0  # intact: nothing to do
    flip_byte(store / "loss" / "c" / "1")
    assert cli(["run", str(cfg), "--out", str(store), "--quiet", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "is marked complete but its archive is damaged" in err and str(store / "loss" / "c" / "1") in err


# ----- 3. disk full, read-only folders ------------------------------------------------------------------------------
def _appends_before_epoch(counts: dict[str, int], epoch: int) -> int:
    """Archive appends of a run of DOC before epoch ``epoch``'s first: 10 probe appends at creation, 16 per epoch
    (with the rules' feedback_angle and reconstruction_loss), 10 more for a probed epoch."""
    per_epoch = [16 + (10 if e in DOC["record"]["probe_epochs"] else 0) for e in range(1, 4)]
    assert 10 + sum(per_epoch) == counts["archive.append"]
    return 10 + sum(per_epoch[: epoch - 1])


@pytest.mark.parametrize("fault, failed, prefix_epochs, checkpoint_epochs", [
    ("checkpoint.write:2:enospc", "write the checkpoint {ckpt}: No space left on device", 2, 1),
    ("checkpoint.manifest:3:enospc", "write the checkpoint {ckpt}: No space left on device", 3, 2),
    ("archive.append:APPEND:enospc", "write 'step' to the run store {store}: No space left on device", 1, 1),
    ("archive.commit:4:erofs", "write to the run store {store}: Read-only file system", 2, 1),
    ("archive.create:3:erofs", "create the run store {store}: Read-only file system", None, None),
])
def test_failed_writes_name_what_and_where_and_lose_nothing(setup, tmp_path, capsys, armed, fault, failed,
                                                           prefix_epochs, checkpoint_epochs):
    cfg, ref, counts = setup
    store = tmp_path / "run.zarr"
    armed(fault.replace("APPEND", str(_appends_before_epoch(counts, 2) + 1)))
    assert cli(["run", str(cfg), "--out", str(store), "--quiet"]) == 2
    faults.arm(None)
    err = capsys.readouterr().err
    expected = "error: cannot " + failed.format(ckpt=ckpt_io.checkpoint_path(store), store=store)
    assert err.startswith(expected), err
    assert "--resume" in err
    if prefix_epochs is not None:
        prefix = open_run(store)  # the committed prefix reads, is consistent, and is not complete
        assert prefix.attrs["complete"] is False and prefix.sizes["epoch"] == prefix_epochs
        assert prefix.sizes["step"] == prefix_epochs * STEPS and np.isfinite(prefix.loss.values).all()
        assert ckpt_io.load(store).epochs_done == checkpoint_epochs
    assert leftovers(store) == []
    if fault.startswith("checkpoint.write"):  # no temp file left, and the failed write did not rotate last.pt aside
        assert sorted(p.name for p in ckpt_io.checkpoint_path(store).parent.iterdir()) == \
            [ckpt_io.FILENAME, ckpt_io.MANIFEST]
    assert cli(["run", str(cfg), "--out", str(store), "--quiet", "--resume"]) == 0
    assert_same(ref, store)


def test_a_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    ckpt_io.save(tmp_path, checkpoint_at(1))

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(ArchiveError, match=r"cannot write the checkpoint .*last\.pt: No space left on device"):
        ckpt_io.save(tmp_path, checkpoint_at(2))
    monkeypatch.undo()
    assert ckpt_io.load(tmp_path).step == 1
    assert sorted(p.name for p in ckpt_io.checkpoint_path(tmp_path).parent.iterdir()) == \
        [ckpt_io.FILENAME, ckpt_io.MANIFEST]  # no temp file left, no rotation


def test_a_full_disk_while_appending_names_the_store(tmp_path, monkeypatch):
    import zarr.storage._local as local

    archive = make_archive(tmp_path / "a.zarr")
    add_epoch(archive, 1)
    archive.commit()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(local, "_put", full)
    with pytest.raises(ArchiveError, match=r"cannot write '.*' to the run store .*a\.zarr: No space left on device"):
        add_epoch(archive, 2)
    monkeypatch.undo()
    assert open_run(tmp_path / "a.zarr").sizes["epoch"] == 1  # the committed prefix is still readable


@pytest.mark.parametrize("blocked", ["file-in-the-way", "read-only"])
def test_an_unwritable_output_folder_is_one_error_line(setup, tmp_path, capsys, blocked):
    """A folder the store cannot be created in: a file where the folder should be, or a read-only folder (not as
    root, for whom chmod does not stop writes; the injected EROFS case above covers it)."""
    if blocked == "read-only" and os.geteuid() == 0:
        pytest.skip("running as root, for whom chmod does not stop writes; the injected EROFS cases above cover it")
    cfg = setup[0]
    folder = tmp_path / "out"
    if blocked == "file-in-the-way":
        folder.write_text("")
        reason = ""
    else:
        folder.mkdir()
        folder.chmod(0o555)
        reason = ": Permission denied"
    try:
        assert cli(["run", str(cfg), "--out", str(folder / "run.zarr"), "--quiet",
                    "--log", str(tmp_path / "run.log")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: cannot create the run store {folder / 'run.zarr'}{reason}"), err
    finally:
        if blocked == "read-only":
            folder.chmod(0o755)
    # a path that is a file, or nothing, is not read as a store
    assert read_attrs(folder) is None and read_attrs(tmp_path / "nothing") is None


# ----- 4. numerical faults ------------------------------------------------------------------------------------------
BAD_STEP = STEPS + 4  # in epoch 2, after the first checkpoint


@pytest.fixture
def from_step(monkeypatch):
    """``from_step(k)``: a flag that turns true once the scheduler has taken ``k`` steps (training steps only)."""

    def make(k: int):
        state = {"on": False}
        original = sim.schedule.Scheduler.apply

        def apply(self, result):
            original(self, result)
            if self.step_count >= k:
                state["on"] = True

        monkeypatch.setattr(sim.schedule.Scheduler, "apply", apply)
        return state

    return make


def _nan_activity(monkeypatch, flag):
    original = Layer.forward

    def forward(self, a_in, noise=None, units=None):
        a = original(self, a_in, noise, units)
        return a * torch.nan if flag["on"] and self.name == "dense2" else a

    monkeypatch.setattr(Layer, "forward", forward)


def _nan_target(monkeypatch, flag):
    original = GaitProp.message_down

    def message_down(self, layer, a_in, a, msg, **kwargs):
        down = original(self, layer, a_in, a, msg, **kwargs)
        return Message(down.d * torch.nan, down.m) if flag["on"] and layer.name == "dense3" else down

    monkeypatch.setattr(GaitProp, "message_down", message_down)


def _inf_update(monkeypatch, flag):
    original = Rule.plasticity

    def plasticity(self, layer, a_in, a, msg):
        upd = original(self, layer, a_in, a, msg)
        if flag["on"] and layer.name == "dense2":
            upd = {**upd, "weight": upd["weight"] + torch.inf}
        return upd

    monkeypatch.setattr(Rule, "plasticity", plasticity)


def _nan_loss(monkeypatch, flag):
    original = sim.schedule.output_error

    def output_error(net, a_out, y, narrow=False):
        e, loss = original(net, a_out, y, narrow)
        return e, loss * torch.nan if flag["on"] else loss

    monkeypatch.setattr(sim.schedule, "output_error", output_error)


@pytest.mark.parametrize("inject, layer, quantity", [
    (_nan_activity, "dense2", "activity"),
    (_nan_target, "dense2", "target difference (message from above)"),
    (_inf_update, "dense2", "weight update"),
    (_nan_loss, "output", "loss"),
], ids=["activity", "target", "update", "loss"])
def test_non_finite_values_stop_with_step_layer_and_quantity(setup, tmp_path, monkeypatch, from_step, capsys,
                                                            inject, layer, quantity):
    cfg, ref, _ = setup
    store = tmp_path / "run.zarr"
    with monkeypatch.context() as m:
        inject(m, from_step(BAD_STEP))
        assert cli(["run", str(cfg), "--out", str(store), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: non-finite") and f"step {BAD_STEP}" in err
    assert f"{quantity} of layer {layer!r}" in err or f"{quantity} in layer {layer!r}" in err or \
        (quantity == "loss" and f"layer {layer!r}, loss" in err), err
    # the prefix up to the failing step is committed, the state before it checkpointed, nothing non-finite kept
    prefix = open_run(store)
    assert prefix.attrs["complete"] is False and prefix.sizes["step"] == BAD_STEP
    assert np.isfinite(prefix.loss.values).all()
    state = ckpt_io.load(store)
    assert (state.reason, state.step, state.epochs_done, state.batches_done) == ("failure", BAD_STEP, 1, 4)
    assert all(torch.isfinite(v).all() for v in state.network.values() if v.is_floating_point())
    raw = torch.load(ckpt_io.checkpoint_path(store), weights_only=True)  # tensors and primitives only
    assert raw["step"] == BAD_STEP
    if quantity == "activity":  # the failure checkpoint is a true resume point
        run(cfg, store, resume=True, progress=False)
        assert_same(ref, store)


def test_a_singular_layer_is_named_before_its_inverse_poisons_the_run(setup, tmp_path, monkeypatch):
    cfg = setup[0]
    original = sim.schedule.Scheduler.apply

    def apply(self, result):
        original(self, result)
        if self.step_count == BAD_STEP:  # two equal rows: dense3's matrix becomes singular
            with torch.no_grad():
                self.net.layers[2].weight[5] = self.net.layers[2].weight[6]

    monkeypatch.setattr(sim.schedule.Scheduler, "apply", apply)
    store = tmp_path / "run.zarr"
    with pytest.raises(SingularLayerError, match=rf"layer 'dense3'.*condition number.*stopped at step {BAD_STEP}"):
        run(cfg, store, progress=False)
    prefix = open_run(store)
    assert prefix.sizes["step"] == BAD_STEP and np.isfinite(prefix.loss.values).all()
    assert all(torch.isfinite(v).all() for v in ckpt_io.load(store).network.values() if v.is_floating_point())


def test_retry_goes_back_to_the_last_checkpoint_with_a_lower_learning_rate(setup, tmp_path):
    diverging = doc(on_nonfinite="retry", retry_lr_factor=1e-3, max_retries=2)
    diverging.update(network={"preset": "digits_deep"}, rules="bp", settings={"bp": {"lr": 1e6}}, noise={})
    store = run(diverging, tmp_path / "retry.zarr", progress=False)
    ds = open_run(store)
    retries = json.loads(ds.attrs["retries"])
    assert ds.attrs["complete"] is True and len(retries) == 1 and retries[0]["from_step"] == 0
    assert "non-finite" in retries[0]["error"] and np.isfinite(ds.loss.values).all()
    assert ds.sizes["step"] == 3 * STEPS and list(ds.epoch.values) == [1, 2, 3]
    final = ckpt_io.load(store)
    assert [g["lr"] for g in final.scheduler["optimizer"]["param_groups"]] == pytest.approx([1e3] * 7)
    assert len(final.retries) == 1
    log = Path(str(store) + ".log").read_text()
    assert "Retry 1/2: back to step 0" in log
    # out of retries: stops like on_nonfinite: stop, saying so
    hopeless = copy.deepcopy(diverging)
    hopeless["train"].update(retry_lr_factor=0.9, max_retries=2)
    with pytest.raises(NonFiniteError, match=r"after 2 retries with lower learning rates"):
        run(hopeless, tmp_path / "hopeless.zarr", progress=False)


def test_a_killed_retrying_run_resumes_to_the_same_archive(tmp_path, monkeypatch):
    diverging = doc(on_nonfinite="retry", retry_lr_factor=1e-3, max_retries=2)
    diverging.update(network={"preset": "digits_deep"}, rules="bp", settings={"bp": {"lr": 1e6}}, noise={})
    ref = run(diverging, tmp_path / "ref.zarr", progress=False)
    original = sim.schedule.Scheduler.compute

    def compute(self, x, y):  # a crash in epoch 2, after the retry (at step 1) and the first checkpoint
        if self.step_count == STEPS + 3:
            raise KeyboardInterrupt
        return original(self, x, y)

    store = tmp_path / "run.zarr"
    with monkeypatch.context() as m:
        m.setattr(sim.schedule.Scheduler, "compute", compute)
        with pytest.raises(KeyboardInterrupt):
            run(diverging, store, progress=False)
    assert len(ckpt_io.load(store).retries) == 1
    run(diverging, store, resume=True, progress=False)
    assert_same(ref, store)


def test_disk_full_inside_the_failure_handling_still_names_the_write(setup, tmp_path, armed, monkeypatch, from_step):
    """A NaN, and then the failure checkpoint cannot be written: the disk error wins, naming the checkpoint."""
    cfg = setup[0]
    _nan_loss(monkeypatch, from_step(BAD_STEP))
    armed("checkpoint.write:2:enospc")
    store = tmp_path / "run.zarr"
    with pytest.raises(ArchiveError, match=r"cannot write the checkpoint .*last\.pt: No space left on device"):
        run(cfg, store, progress=False)
    assert ckpt_io.load(store).epochs_done == 1 and open_run(store).sizes["step"] == BAD_STEP
