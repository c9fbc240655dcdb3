"""The run store's lifecycle (sim/run/store.py, docs/runs.md): ``--publish`` writes ``STORE.partial`` and renames
it into place once complete, resumes a partial of the same config and replaces one of another; ``--on-diverge
keep`` makes a stopped run a result; the device of ``python -m sim lease -- python -m sim run`` is the leased one;
an existing store is refused without a flag, left alone by ``--resume`` once complete, replaced by ``--overwrite``;
a crashed run resumes to the archive of an uninterrupted one. (Kills, torn files, full disks: tests/reliability/.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

import sim.schedule
from sim import checkpoint as ckpt_io
from sim import gpu
from sim.archive import open_run, read_attrs
from sim.cli import main as cli
from sim.errors import ConfigError, NonFiniteError
from sim.run import run
from sim.run import store as run_store
from tests.helpers import assert_same_archive, write_config

pytestmark = pytest.mark.usefixtures("one_thread")


def diverging(tiny_config) -> dict:
    """A run whose first step with an exploding learning rate ends in a NaN loss."""
    return tiny_config(rules="bp", settings={"bp": {"lr": 1.0e30}}, train={"epochs": 2})


def interrupted(doc: dict, store: Path, at_step: int, **kw) -> None:
    """``run(doc, store, **kw)`` stopped by Ctrl-C before step ``at_step``."""
    original = sim.schedule.Scheduler.compute

    def compute(self, x, y):
        if self.step_count == at_step:
            raise KeyboardInterrupt
        return original(self, x, y)

    with mock.patch.object(sim.schedule.Scheduler, "compute", compute), pytest.raises(KeyboardInterrupt):
        run(doc, store, progress=False, **kw)


def test_publish_renames_the_complete_partial_into_place(tmp_path, tiny_config, monkeypatch):
    doc = tiny_config()
    store, partial = tmp_path / "run.zarr", tmp_path / "run.zarr.partial"
    seen = []
    original = run_store.publish

    def publish(src, out):
        seen.append((src, read_attrs(src)["complete"], out.exists()))
        return original(src, out)

    monkeypatch.setattr(run_store, "publish", publish)
    assert run(doc, store, publish=True, progress=False) == store
    assert seen == [(partial, True, False)]
    assert read_attrs(store)["complete"] is True and not partial.exists()
    assert f"published {partial} as {store}" in (tmp_path / "run.zarr.log").read_text()
    assert_same_archive(run(doc, tmp_path / "plain.zarr", progress=False), store)  # publishing changes nothing
    # a published store is a result: refused without --resume or --overwrite, kept with --resume
    with pytest.raises(ConfigError, match="already exists"):
        run(doc, store, publish=True, progress=False)
    assert run(doc, store, publish=True, resume=True, progress=False) == store and not partial.exists()
    # --overwrite runs again into the partial and replaces the store when the new one is complete
    assert run(doc, store, publish=True, overwrite=True, progress=False) == store
    assert read_attrs(store)["complete"] is True and not partial.exists()


def test_a_failed_published_run_leaves_no_store(tmp_path, tiny_config):
    store, partial = tmp_path / "run.zarr", tmp_path / "run.zarr.partial"
    with pytest.raises(NonFiniteError, match="non-finite"):
        run(diverging(tiny_config), store, publish=True, progress=False)
    assert not store.exists()
    attrs = read_attrs(partial)
    assert attrs["complete"] is False and "diverged" not in attrs


def test_publish_resumes_a_partial_of_the_same_config_and_replaces_another(tmp_path, tiny_config):
    doc = tiny_config(train={"epochs": 3})
    reference = run(doc, tmp_path / "reference.zarr", progress=False)
    steps_per_epoch = open_run(reference).sizes["step"] // 3
    store, partial, log = tmp_path / "run.zarr", tmp_path / "run.zarr.partial", tmp_path / "run.zarr.log"
    interrupted(doc, store, steps_per_epoch + 5, publish=True)  # in epoch 2, after epoch 1's checkpoint
    assert partial.exists() and not store.exists()
    run(doc, store, publish=True, progress=False)
    assert "resuming" in log.read_text() and not partial.exists()
    assert_same_archive(reference, store)

    other = tmp_path / "other.zarr"
    interrupted(doc, other, steps_per_epoch + 5, publish=True)
    changed = tiny_config(train={"epochs": 3, "seed": 5})
    run(changed, other, publish=True, progress=False)
    assert f"replacing {other}.partial" in (tmp_path / "other.zarr.log").read_text()
    assert '"seed": 5' in read_attrs(other)["config"]


def test_on_diverge_keep_through_the_cli(tmp_path, tiny_config, capsys):
    cfg_path = write_config(tmp_path / "nan.yaml", diverging(tiny_config))
    store = tmp_path / "run.zarr"
    assert cli(["run", str(cfg_path), "--out", str(store), "--publish", "--on-diverge", "keep", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(store)
    attrs = read_attrs(store)
    assert attrs["complete"] is False and "non-finite" in attrs["diverged"]
    assert not (tmp_path / "run.zarr.partial").exists()
    assert open_run(store).sizes["epoch"] == 0
    # the default, fail: one error line, exit status 2, nothing published
    failed = tmp_path / "failed.zarr"
    assert cli(["run", str(cfg_path), "--out", str(failed), "--publish", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "non-finite" in err and not failed.exists()
    assert "diverged" not in read_attrs(tmp_path / "failed.zarr.partial")
    # a published diverged run is a result: --resume leaves it as it is
    assert cli(["run", str(cfg_path), "--out", str(store), "--publish", "--on-diverge", "keep", "--resume"]) == 0
    assert "published as a diverged run; nothing to do" in capsys.readouterr().err
    # keep without --publish flags the store in place
    plain = tmp_path / "plain.zarr"
    assert cli(["run", str(cfg_path), "--out", str(plain), "--on-diverge", "keep", "--quiet"]) == 0
    assert "non-finite" in read_attrs(plain)["diverged"]
    # an unfinished store written without --publish is not taken for a published one
    unfinished = tmp_path / "unfinished.zarr"
    assert cli(["run", str(cfg_path), "--out", str(unfinished), "--quiet"]) == 2
    assert cli(["run", str(cfg_path), "--out", str(unfinished), "--publish", "--resume", "--quiet"]) == 2
    assert "not published (written without --publish)" in capsys.readouterr().err


def lease_env(tmp_path: Path) -> dict[str, str]:
    """No GPU in the pool (the lease falls back to the CPU), a private lock folder, one thread."""
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", "GAITSIM_DEVICE")}
    return {**env, gpu.POOL_ENV: "", gpu.LOCK_DIR_ENV: str(tmp_path / "locks"), "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1"}


@pytest.mark.slow  # fast sibling: GAITSIM_DEVICE is read (an invalid value is one error line)
def test_a_run_under_lease_trains_on_the_leased_device(tmp_path, tiny_config):
    # the config asks for cuda; the lease (no GPU here: the CPU) decides, through GAITSIM_DEVICE
    doc = tiny_config(train={"epochs": 1, "device": "cuda"}, record={"probe_epochs": [0]})
    cfg_path = write_config(tmp_path / "run.yaml", doc)
    store = tmp_path / "run.zarr"
    proc = subprocess.run([sys.executable, "-m", "sim", "lease", "--", sys.executable, "-m", "sim", "run",
                           str(cfg_path), "--out", str(store), "--quiet"], env=lease_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "lease: cpu" in proc.stderr
    attrs = read_attrs(store)
    assert attrs["device"] == "cpu" and '"device": "cpu"' in attrs["config"]


def test_an_invalid_gaitsim_device_is_one_error_line(tmp_path, tiny_config, monkeypatch, capsys):
    cfg_path = write_config(tmp_path / "run.yaml", tiny_config(train={"epochs": 1}, record={"probe_epochs": [0]}))
    store = tmp_path / "run.zarr"
    monkeypatch.setenv("GAITSIM_DEVICE", "gpu0")
    assert cli(["run", str(cfg_path), "--out", str(store), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: GAITSIM_DEVICE='gpu0' is not a device") and len(err.splitlines()) == 1, err
    assert not store.exists()
    assert cli(["run", str(cfg_path), "--out", str(store), "--quiet", "--device", "cpu"]) == 0  # --device wins


# ----- an existing store: refused, resumed, overwritten ------------------------------------------------------------
SMALL = {"kind": "digits", "size": 320}  # 10 steps of 32 per epoch


def test_an_existing_store_is_refused_without_a_flag(tmp_path, tiny_config, capsys):
    doc = tiny_config(train={"epochs": 1}, record={"probe_epochs": [0, 1]}, data=SMALL)
    cfg_path = write_config(tmp_path / "c.yaml", doc)
    store = tmp_path / "run.zarr"
    assert cli(["run", str(cfg_path), "--out", str(store), "--quiet"]) == 0
    capsys.readouterr()
    assert cli(["run", str(cfg_path), "--out", str(store), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "already exists" in err and "--resume" in err and "--overwrite" in err
    # a complete store is left alone by --resume
    stamp = (store / "zarr.json").stat().st_mtime_ns
    assert cli(["run", str(cfg_path), "--out", str(store), "--quiet", "--resume"]) == 0
    assert (store / "zarr.json").stat().st_mtime_ns == stamp
    # --overwrite replaces it
    assert cli(["run", str(cfg_path), "--out", str(store), "--quiet", "--overwrite"]) == 0
    assert open_run(store).attrs["complete"] is True
    # resuming with another config is refused, naming the difference
    changed = write_config(tmp_path / "d.yaml", tiny_config(train={"epochs": 1, "seed": 5}, data=SMALL,
                                                            record={"probe_epochs": [0, 1]}))
    assert cli(["run", str(changed), "--out", str(store), "--quiet", "--resume"]) == 2
    assert "train.seed: 0 -> 5" in capsys.readouterr().err
    # a folder that is not a run store is never deleted
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("...")
    assert cli(["run", str(cfg_path), "--out", str(precious), "--quiet", "--overwrite"]) == 2
    assert "not a gaitsim run store" in capsys.readouterr().err
    assert (precious / "thesis.tex").exists()


# ----- resume -------------------------------------------------------------------------------------------------------
def _interrupt_at(monkeypatch, step: int) -> None:
    """Make the scheduler raise KeyboardInterrupt when it reaches ``step`` (a crash in the middle of an epoch)."""
    original = sim.schedule.Scheduler.compute

    def compute(self, x, y):
        if self.step_count == step:
            raise KeyboardInterrupt
        return original(self, x, y)

    monkeypatch.setattr(sim.schedule.Scheduler, "compute", compute)


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path, tiny_config, monkeypatch):
    # 4 epochs, checkpoints after epochs 2 and 4: a crash in epoch 4 leaves epoch 3 in the archive but not in the
    # checkpoint, so resuming must cut the archive back and rewrite epoch 3.
    doc = tiny_config(rules=["fa", "gp", "gp", "gp"], train={"epochs": 4}, data=SMALL,
                      record={"checkpoint_every": 2, "probe_epochs": [0, 1, 3, 4], "angle_every": 3},
                      noise={"activity_std": 1e-3})
    reference = run(doc, tmp_path / "ref.zarr", progress=False)
    store = tmp_path / "run.zarr"
    with monkeypatch.context() as m:
        _interrupt_at(m, 3 * 10 + 4)
        with pytest.raises(KeyboardInterrupt):
            run(doc, store, progress=False)
    prefix = open_run(store)
    assert prefix.attrs["complete"] is False
    assert prefix.sizes["epoch"] == 3 and prefix.sizes["step"] == 3 * 10 and list(prefix.probe_epoch) == [0, 1, 3]
    assert ckpt_io.load(store).epochs_done == 2
    run(doc, store, resume=True, progress=False)
    assert_same_archive(reference, store)
    assert "resuming" in Path(str(store) + ".log").read_text()


def test_an_empty_output_folder_counts_as_no_store(tmp_path, tiny_config):
    (tmp_path / "x.zarr").mkdir()
    doc = tiny_config(data=SMALL, train={"epochs": 1}, record={"probe_epochs": [1]})
    assert open_run(run(doc, tmp_path / "x.zarr", progress=False)).attrs["complete"] is True


def test_a_store_written_before_a_key_existed_resumes_at_its_old_value(tiny_config):
    """A config stored before ``train.task_updates`` existed ran with the task updates: it is the same run as one
    that leaves the key at true, and a different run from one that sets it false."""
    from sim.config import load_config

    cfg = load_config(tiny_config())
    stored = json.loads(cfg.to_json())
    del stored["train"]["task_updates"]
    assert run_store.config_changes(json.dumps(stored), cfg) == {}
    alone = load_config(tiny_config(train={"epochs": 2, "batch_size": 32, "seed": 0, "task_updates": False}))
    assert run_store.config_changes(json.dumps(stored), alone) == {"train.task_updates": (True, False)}
