"""GPU leases in a shared lock folder (issue 14, part 5): planted links and files are refused, never followed or
written; one GPU named by index and by UUID is one device; a lock file deleted while held is noticed; a nested lease
is refused at once instead of after its timeout."""

from __future__ import annotations

import argparse
import os
import stat
import sys
import time

import pytest

import sim.gpu as gpu
from sim.gpu import GpuLeaseError, GpuLeaseTimeout, lease_gpu


@pytest.fixture
def pool_env(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", gpu.POOL_ENV, gpu.LOCK_DIR_ENV, gpu.HELD_ENV)}
    env[gpu.POOL_ENV] = "0"
    env[gpu.LOCK_DIR_ENV] = str(tmp_path / "locks")
    return env


@pytest.fixture
def fake_smi(tmp_path, monkeypatch):
    """An nvidia-smi listing two GPUs with their UUIDs."""
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-aaaa-1111)'\n"
                    "echo 'GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-bbbb-2222)'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")


def test_symlink_at_the_lock_path_is_refused_and_its_target_untouched(pool_env, tmp_path):
    folder = tmp_path / "locks"
    folder.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (folder / "gpu-0.lock").symlink_to(victim)
    with pytest.raises(GpuLeaseError, match="symbolic link; refused, not followed"):
        lease_gpu(timeout=0, env=pool_env, set_env=False)
    assert victim.read_text() == "precious\n"
    dangling = folder / "gpu-0.lock"
    dangling.unlink()
    dangling.symlink_to(tmp_path / "created-by-the-link")  # a dangling link must not create its target either
    with pytest.raises(GpuLeaseError, match="symbolic link"):
        lease_gpu(timeout=0, env=pool_env, set_env=False)
    assert not (tmp_path / "created-by-the-link").exists()


def test_hard_link_and_fifo_at_the_lock_path_are_refused(pool_env, tmp_path):
    folder = tmp_path / "locks"
    folder.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    os.link(victim, folder / "gpu-0.lock")
    with pytest.raises(GpuLeaseError, match="2 hard links"):
        lease_gpu(timeout=0, env=pool_env, set_env=False)
    assert victim.read_text() == "precious\n"
    (folder / "gpu-0.lock").unlink()
    os.mkfifo(folder / "gpu-0.lock")
    with pytest.raises(GpuLeaseError, match="not a regular file"):
        lease_gpu(timeout=0, env=pool_env, set_env=False)


def test_a_folder_others_may_write_without_sticky_bit_is_refused(pool_env, tmp_path):
    folder = tmp_path / "locks"
    folder.mkdir()
    os.chmod(folder, 0o777)
    with pytest.raises(GpuLeaseError, match="no sticky bit"):
        lease_gpu(timeout=0, env=pool_env, set_env=False)
    os.chmod(folder, 0o1777)
    with lease_gpu(timeout=0, env=pool_env, set_env=False) as lease:
        assert lease.device == "cuda:0"
        st = os.lstat(lease.lock_path)
        assert stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid()


def test_index_and_uuid_name_one_gpu(pool_env, fake_smi):
    by_index = {**pool_env, gpu.POOL_ENV: "0"}
    by_uuid = {**pool_env, gpu.POOL_ENV: "GPU-aaaa-1111"}
    by_prefix = {**pool_env, gpu.POOL_ENV: "GPU-aaaa"}
    with lease_gpu(timeout=0, env=by_index, set_env=False) as first:
        assert first.physical_id == "0" and first.key == "GPU-aaaa-1111"
        for env in (by_uuid, by_prefix):
            with pytest.raises(GpuLeaseTimeout):
                lease_gpu(timeout=0, env=env, set_env=False)
    with lease_gpu(timeout=0, env=by_uuid, set_env=False) as second:  # free again
        assert second.physical_id == "GPU-aaaa-1111"
    assert gpu.canonical_ids(["1", "GPU-bbbb", "7", "GPU-x"]) == ["GPU-bbbb-2222", "GPU-bbbb-2222", "7", "GPU-x"]
    # a pool that names one GPU twice holds it once
    both = {**pool_env, gpu.POOL_ENV: "0,GPU-aaaa-1111"}
    with lease_gpu(timeout=0, env=both, set_env=False):
        with pytest.raises(GpuLeaseTimeout, match="all 2 GPU"):
            lease_gpu(timeout=0, env=both, set_env=False)


def test_lock_file_deleted_while_held_is_noticed_and_taken_again(pool_env):
    with lease_gpu(timeout=0, env=pool_env, set_env=False) as lease:
        assert lease.verify() is None
        lease.lock_path.unlink()
        msg = lease.verify()
        assert "deleted or replaced while leased; re-created and locked it again" in msg
        with pytest.raises(GpuLeaseTimeout):  # the new file is locked: the GPU is not handed out twice
            lease_gpu(timeout=0, env=pool_env, set_env=False)
        # deleted again and taken by someone else before the holder noticed: said so
        lease.lock_path.unlink()
        other = lease_gpu(timeout=0, env=pool_env, set_env=False)
        try:
            assert "another process has locked the new one" in lease.verify()
        finally:
            other.release()


def test_nested_lease_is_refused_at_once(pool_env, monkeypatch):
    for key in (gpu.POOL_ENV, gpu.LOCK_DIR_ENV, "CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", gpu.HELD_ENV):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv(gpu.POOL_ENV, "0,1")
    monkeypatch.setenv(gpu.LOCK_DIR_ENV, pool_env[gpu.LOCK_DIR_ENV])
    with lease_gpu(timeout=0) as lease:
        assert os.environ[gpu.HELD_ENV] == f"{os.getpid()}:{lease.physical_id}"
        t0 = time.monotonic()
        with pytest.raises(GpuLeaseError, match="already holds a lease"):
            lease_gpu(timeout=60)
        assert time.monotonic() - t0 < 5
    assert gpu.HELD_ENV not in os.environ
    # a child of a holder (the marker names a live process): refused at once
    child_env = {**pool_env, gpu.HELD_ENV: f"{os.getppid()}:3"}
    with pytest.raises(GpuLeaseError, match="runs under a GPU lease already"):
        lease_gpu(timeout=60, env=child_env, set_env=False)
    stale = {**pool_env, gpu.HELD_ENV: "999999999:3"}  # its holder is gone: ignored
    with lease_gpu(timeout=0, env=stale, set_env=False) as again:
        assert again.device == "cuda:0"


def test_nested_lease_command_fails_at_once(pool_env, monkeypatch, capfd):
    from sim.commands import lease as lease_cmd

    for key in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", gpu.HELD_ENV):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv(gpu.POOL_ENV, "5")
    monkeypatch.setenv(gpu.LOCK_DIR_ENV, pool_env[gpu.LOCK_DIR_ENV])
    inner = [sys.executable, "-m", "sim", "lease", "--timeout", "60", "--", sys.executable, "-c", "pass"]
    args = argparse.Namespace(timeout=0.0, require_gpu=False, fallback_cpu=False, status=False, gpus=1,
                              cmd=["--", *inner])
    t0 = time.monotonic()
    monkeypatch.setenv("PYTHONPATH", os.getcwd())
    assert lease_cmd.main(args) == 2
    assert time.monotonic() - t0 < 30
    err = capfd.readouterr().err
    assert "error: this process runs under a GPU lease already (GPU 5" in err
    assert "Traceback" not in err
