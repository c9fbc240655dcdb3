"""One writer per store (docs/reliability.md, "One writer per store"; issue 14 part 1): real concurrent processes."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import yaml

from sim.errors import ConfigError
from sim.run import lock
from tests.faultinject import _child, archive_differences, context, run_cli


def _config(tmp_path: Path, tiny_config, **changes) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(tiny_config(**changes)))
    return str(path)


def _start(argv: list[str], output: Path):
    proc = context().Process(target=_child, args=(list(argv), None, str(output)))
    proc.start()
    return proc


def _wait_training(store: Path, log: Path, proc, timeout: float = 120) -> None:
    """Wait until the run ``proc`` has committed its first epoch (it holds the lock and trains)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if log.is_file() and "epoch 1/" in log.read_text(errors="replace"):
            return
        assert proc.is_alive(), "the first run ended before it trained"
        time.sleep(0.05)
    raise TimeoutError("the first run did not start training")


def _kill(proc) -> None:
    if proc.is_alive():
        os.kill(proc.pid, signal.SIGKILL)
    proc.join(30)


@pytest.mark.slow  # fast siblings: the lock refuses --resume/--overwrite of a training run, a killed holder frees it
def test_two_fresh_runs_at_once_one_is_refused_the_other_is_intact(tmp_path, tiny_config):
    cfg = _config(tmp_path, tiny_config)
    lone = tmp_path / "lone.zarr"
    assert run_cli(["run", cfg, "--out", str(lone), "--quiet"]) == 0
    out = tmp_path / "run.zarr"
    argv = ["run", cfg, "--out", str(out), "--quiet"]
    procs = [_start(argv, tmp_path / f"out{i}.txt") for i in range(2)]
    for p in procs:
        p.join(300)
    codes = sorted(p.exitcode for p in procs)
    assert codes == [0, 2], codes
    texts = [(tmp_path / f"out{i}.txt").read_text() for i in range(2)]
    refused = next(t for t in texts if "in use" in t)
    assert "Traceback" not in "".join(texts)
    assert "pid " in refused and "host" in refused and "--resume" in refused
    assert archive_differences(lone, out) == []


def test_two_resumes_of_a_killed_run_at_once_one_is_refused(tmp_path, tiny_config):
    cfg = _config(tmp_path, tiny_config)
    lone = tmp_path / "lone.zarr"
    assert run_cli(["run", cfg, "--out", str(lone), "--quiet"]) == 0
    out = tmp_path / "run.zarr"
    assert run_cli(["run", cfg, "--out", str(out), "--quiet"], fault="train.epoch:2") == -signal.SIGKILL
    argv = ["run", cfg, "--out", str(out), "--resume", "--quiet"]
    procs = [_start(argv, tmp_path / f"out{i}.txt") for i in range(2)]
    for p in procs:
        p.join(300)
    assert sorted(p.exitcode for p in procs) == [0, 2]
    assert "in use" in "".join((tmp_path / f"out{i}.txt").read_text() for i in range(2))
    assert archive_differences(lone, out) == []


@pytest.mark.parametrize("flag", ["--resume", "--overwrite"])
def test_second_writer_is_refused_while_a_run_trains(tmp_path, tiny_config, flag):
    cfg = _config(tmp_path, tiny_config, train={"epochs": 400})
    out = tmp_path / "run.zarr"
    first = _start(["run", cfg, "--out", str(out), "--quiet"], tmp_path / "first.txt")
    try:
        _wait_training(out, tmp_path / "run.zarr.log", first)
        t0 = time.monotonic()
        code = run_cli(["run", cfg, "--out", str(out), flag, "--quiet"], output=tmp_path / "second.txt")
        text = (tmp_path / "second.txt").read_text()
        assert code == 2, text
        assert time.monotonic() - t0 < 60  # refused at once, not after waiting for the lock
        assert f"pid {first.pid}" in text and "in use" in text and "Traceback" not in text
        assert first.is_alive()  # the holder trains on, its store untouched
    finally:
        _kill(first)


def test_published_run_and_its_partial_store_share_one_lock(tmp_path, tiny_config):
    cfg = _config(tmp_path, tiny_config, train={"epochs": 400})
    out = tmp_path / "run.zarr"
    first = _start(["run", cfg, "--out", str(out), "--publish", "--quiet"], tmp_path / "first.txt")
    try:
        _wait_training(out, tmp_path / "run.zarr.log", first)
        code = run_cli(["run", cfg, "--out", str(out) + ".partial", "--resume", "--quiet"],
                       output=tmp_path / "second.txt")
        assert code == 2 and "in use" in (tmp_path / "second.txt").read_text()
    finally:
        _kill(first)


def test_a_killed_holder_leaves_no_stale_lock(tmp_path, tiny_config):
    cfg = _config(tmp_path, tiny_config, train={"epochs": 400})
    out = tmp_path / "run.zarr"
    first = _start(["run", cfg, "--out", str(out), "--quiet"], tmp_path / "first.txt")
    _wait_training(out, tmp_path / "run.zarr.log", first)
    with pytest.raises(ConfigError, match="in use"), lock.hold(out):
        pass
    _kill(first)
    assert first.exitcode == -signal.SIGKILL
    assert lock.lock_path(out).exists()  # the file stays; the lock went with the process
    with lock.hold(out):
        pass


def test_readers_do_not_take_the_lock(tmp_path, tiny_config):
    from sim.archive import open_run

    cfg = _config(tmp_path, tiny_config)
    out = tmp_path / "run.zarr"
    assert run_cli(["run", cfg, "--out", str(out), "--quiet"]) == 0
    with lock.hold(out):
        assert int(open_run(out).sizes["epoch"]) == 2


def test_lock_path_of_store_and_partial():
    assert lock.lock_path("a/run.zarr") == Path("a/.run.zarr.lock")
    assert lock.lock_path("a/run.zarr.partial") == Path("a/.run.zarr.lock")
