"""GPU leasing (sim.gpu) with a simulated pool of devices: distinct devices for concurrent processes, leases freed
by the kernel when a holder is SIGKILLed, the CPU without a pool, CUDA_VISIBLE_DEVICES and SLURM allocations
respected, and the command-line twin.

The holder processes load ``sim.gpu`` under a stub ``sim`` package (no ``sim/__init__``, so no torch import): a
lease needs nothing but the standard library, and each holder starts in a fraction of a second.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

import sim.gpu as gpu
from sim.gpu import GpuLeaseError, GpuLeaseTimeout, gpu_pool, lease_gpu, lease_status

SIM_DIR = str(Path(gpu.__file__).resolve().parent)

HOLDER = textwrap.dedent(f"""
    import os, sys, time, types
    pkg = types.ModuleType("sim"); pkg.__path__ = [{SIM_DIR!r}]; sys.modules["sim"] = pkg
    from sim.gpu import lease_gpu
    lease = lease_gpu(timeout=float(sys.argv[1]), poll=0.05)
    print(lease.device, lease.physical_id, os.environ.get("CUDA_VISIBLE_DEVICES"), flush=True)
    while not os.path.exists(sys.argv[2]):
        time.sleep(0.02)
""")


@pytest.fixture
def pool_env(tmp_path) -> dict[str, str]:
    """An environment with a simulated pool of four GPUs and a private lock folder (no SLURM, no CUDA settings)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", gpu.POOL_ENV, gpu.LOCK_DIR_ENV)}
    env[gpu.POOL_ENV] = "0,1,2,3"
    env[gpu.LOCK_DIR_ENV] = str(tmp_path / "locks")
    return env


def start_holder(env: dict[str, str], release: Path, timeout: float = 30.0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(timeout), str(release)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def first_line(proc: subprocess.Popen) -> list[str]:
    line = proc.stdout.readline().split()
    assert line, f"holder printed nothing; stderr: {proc.stderr.read()}"
    return line


def test_concurrent_processes_get_distinct_gpus(pool_env, tmp_path):
    release = tmp_path / "release"
    holders = [start_holder(pool_env, release) for _ in range(4)]
    try:
        leases = [first_line(p) for p in holders]
        assert {lease[0] for lease in leases} == {"cuda:0"}          # each sees its GPU alone, as cuda:0
        assert sorted(lease[1] for lease in leases) == ["0", "1", "2", "3"]
        assert all(lease[1] == lease[2] for lease in leases)          # CUDA_VISIBLE_DEVICES = the leased GPU
        # a fifth process finds every GPU leased
        fifth = subprocess.run([sys.executable, "-c", HOLDER, "0", str(release)], env=pool_env,
                               capture_output=True, text=True, timeout=60)
        assert fifth.returncode != 0 and "stayed leased" in fifth.stderr
        held = dict(lease_status(pool_env))
        assert set(held) == {"0", "1", "2", "3"} and all(pid is not None for pid in held.values())
    finally:
        release.touch()
        for p in holders:
            p.wait(timeout=30)
    assert all(pid is None for _, pid in lease_status(pool_env))


def test_sigkilled_holder_frees_its_gpu(pool_env, tmp_path):
    env = {**pool_env, gpu.POOL_ENV: "7"}
    holder = start_holder(env, tmp_path / "never")
    try:
        assert first_line(holder)[1] == "7"
        with pytest.raises(GpuLeaseTimeout, match="stayed leased"):
            lease_gpu(timeout=0, env=env, set_env=False)
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
    with lease_gpu(timeout=5, poll=0.05, env=env, set_env=False) as lease:  # the kernel dropped the lock
        assert (lease.device, lease.physical_id, lease.source) == ("cuda:0", "7", "pool")


def test_waits_for_a_gpu_to_be_released(pool_env):
    env = {**pool_env, gpu.POOL_ENV: "5"}
    first = lease_gpu(timeout=0, env=env, set_env=False)
    with pytest.raises(GpuLeaseTimeout):
        lease_gpu(timeout=0.2, poll=0.05, env=env, set_env=False)
    first.release()
    first.release()  # idempotent
    with lease_gpu(timeout=0, env=env, set_env=False) as again:
        assert again.physical_id == "5"
    fallback = lease_gpu(timeout=0, env=env, set_env=False, fallback_cpu=True)  # free again after the with
    assert fallback.device == "cuda:0"
    with lease_gpu(timeout=0.1, poll=0.05, env=env, set_env=False, fallback_cpu=True) as cpu:
        assert (cpu.device, cpu.physical_id) == ("cpu", None)
    fallback.release()


def test_no_pool_means_cpu(pool_env, monkeypatch):
    env = {**pool_env, gpu.POOL_ENV: ""}
    lease = lease_gpu(env=env, set_env=False)
    assert (lease.device, lease.physical_id, lease.source, lease.lock_path) == ("cpu", None, "cpu", None)
    with pytest.raises(GpuLeaseError, match="no GPU"):
        lease_gpu(env=env, set_env=False, require_gpu=True)
    # no pool variable, no CUDA_VISIBLE_DEVICES, no nvidia-smi on PATH
    monkeypatch.setattr(gpu.shutil, "which", lambda name: None)
    bare = {k: v for k, v in env.items() if k != gpu.POOL_ENV}
    assert gpu_pool(bare) == []
    assert lease_gpu(env=bare, set_env=False).device == "cpu"
    for hidden in ("", "-1"):  # CUDA's own "no GPU" settings
        assert lease_gpu(env={**bare, "CUDA_VISIBLE_DEVICES": hidden}, set_env=False).device == "cpu"


def test_pool_from_nvidia_smi(pool_env, tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-aaaa)'\n"
                    "echo 'GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-bbbb)'\n"
                    "echo '  MIG 1g.10gb     Device  0: (UUID: MIG-cccc)'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    env = {k: v for k, v in pool_env.items() if k != gpu.POOL_ENV}
    assert gpu_pool(env) == ["0", "1"]


def test_existing_cuda_visible_devices_restricts_the_pool(pool_env):
    env = {k: v for k, v in pool_env.items() if k != gpu.POOL_ENV}
    env["CUDA_VISIBLE_DEVICES"] = "2,3"
    a = lease_gpu(timeout=0, env=env, set_env=False)
    b = lease_gpu(timeout=0, env=env, set_env=False)
    try:
        assert sorted([a.physical_id, b.physical_id]) == ["2", "3"]
        assert a.env == {"CUDA_VISIBLE_DEVICES": a.physical_id}
        with pytest.raises(GpuLeaseTimeout):
            lease_gpu(timeout=0, env=env, set_env=False)
    finally:
        a.release()
        b.release()


def test_slurm_allocation_is_used_as_is(pool_env):
    env = {**pool_env, "SLURM_JOB_ID": "1234", "CUDA_VISIBLE_DEVICES": "3"}
    lease = lease_gpu(timeout=0, env=env, set_env=False)
    assert (lease.device, lease.physical_id, lease.source, lease.lock_path) == ("cuda:0", "3", "cluster", None)
    again = lease_gpu(timeout=0, env=env, set_env=False)  # nothing locked: the allocation is the job's alone
    assert again.physical_id == "3"
    assert not Path(pool_env[gpu.LOCK_DIR_ENV]).exists()


def test_lease_sets_cuda_visible_devices_of_the_process(pool_env, monkeypatch):
    for key in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv(gpu.POOL_ENV, "4,6")
    monkeypatch.setenv(gpu.LOCK_DIR_ENV, pool_env[gpu.LOCK_DIR_ENV])
    with lease_gpu(timeout=0) as lease:
        assert os.environ["CUDA_VISIBLE_DEVICES"] == lease.physical_id
        assert lease.physical_id in ("4", "6")
        assert lease.lock_path.parent == Path(pool_env[gpu.LOCK_DIR_ENV])


def test_refused_once_cuda_is_initialised(pool_env, monkeypatch):
    fake_torch = types.SimpleNamespace(cuda=types.SimpleNamespace(is_initialized=lambda: True))
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    with pytest.raises(GpuLeaseError, match="already initialised"):
        lease_gpu(timeout=0, env=pool_env)


def test_lock_dir_defaults(monkeypatch):
    assert gpu.lock_dir({gpu.LOCK_DIR_ENV: "/x/locks"}) == Path("/x/locks")
    assert gpu.lock_dir({"XDG_RUNTIME_DIR": "/run/user/7"}) == Path("/run/user/7/gaitsim-gpu-locks")
    assert gpu.lock_dir({}) == Path("/tmp/gaitsim-gpu-locks")


def test_lease_command_runs_a_child_on_the_leased_gpu(pool_env, monkeypatch, capfd):
    from sim.commands import lease as lease_cmd

    for key in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv(gpu.POOL_ENV, "9")
    monkeypatch.setenv(gpu.LOCK_DIR_ENV, pool_env[gpu.LOCK_DIR_ENV])
    child = "import os; print('child', os.environ['CUDA_VISIBLE_DEVICES'], os.environ['GAITSIM_DEVICE'])"
    args = argparse.Namespace(timeout=0.0, require_gpu=False, fallback_cpu=False, status=False, gpus=1,
                              cmd=["--", sys.executable, "-c", child])
    assert lease_cmd.main(args) == 0
    assert "child 9 cuda:0" in capfd.readouterr().out
    assert "CUDA_VISIBLE_DEVICES" not in os.environ  # the parent's environment is untouched
    args.cmd = ["--", sys.executable, "-c", "raise SystemExit(3)"]
    assert lease_cmd.main(args) == 3
    args.status, args.cmd = True, []
    assert lease_cmd.main(args) == 0
    assert "gpu 9: free" in capfd.readouterr().out
