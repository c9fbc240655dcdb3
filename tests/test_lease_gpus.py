"""Several GPUs leased together for one data-parallel run (sim.gpu.lease_gpus, ``python -m sim lease --gpus N``):
all or none, each locked as one GPU is, a SLURM allocation used as it is, and the command's environment."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sim import gpu
from sim.gpu import GpuLeaseError, GpuLeaseTimeout, lease_gpu, lease_gpus, lease_status

from .test_gpu import pool_env  # noqa: F401 - the fixture: a simulated pool of four GPUs, a private lock folder


def held(env) -> set[str]:
    return {device for device, pid in lease_status(env) if pid is not None}


def test_gpus_are_leased_together_and_given_back(pool_env):  # noqa: F811
    with lease_gpus(2, timeout=0, env=pool_env) as first:
        assert first.device == "cuda" and first.source == "pool" and len(set(first.ids)) == 2
        assert first.env == {"CUDA_VISIBLE_DEVICES": ",".join(first.ids)} and len(first.fds) == 2
        assert held(pool_env) == set(first.ids)
        with lease_gpus(2, timeout=0, env=pool_env) as second:
            assert set(second.ids) == {"0", "1", "2", "3"} - set(first.ids)
            with pytest.raises(GpuLeaseTimeout, match="2 of the 4 GPU\\(s\\) of the pool .* were never free together"):
                lease_gpus(2, timeout=0, env=pool_env)
        assert held(pool_env) == set(first.ids)
    assert held(pool_env) == set()


def test_all_or_none(pool_env):  # noqa: F811
    """Three GPUs taken one by one: a job asking for two takes none, and the free one stays free for others."""
    singles = [lease_gpu(timeout=0, env=pool_env, set_env=False) for _ in range(3)]
    try:
        with pytest.raises(GpuLeaseTimeout):
            lease_gpus(2, timeout=0.2, poll=0.05, env=pool_env)
        assert len(held(pool_env)) == 3
        singles.pop().release()
        with lease_gpus(2, timeout=0, env=pool_env) as two:
            assert len(two.ids) == 2
        fallback = lease_gpus(3, timeout=0, env=pool_env, fallback_cpu=True)
        assert (fallback.device, fallback.ids, fallback.fds) == ("cpu", [], ())
    finally:
        for lease in singles:
            lease.release()


def test_more_gpus_than_the_pool_or_the_allocation_are_refused(pool_env):  # noqa: F811
    with pytest.raises(GpuLeaseError, match="the run asks for 8 GPUs but the pool has 4"):
        lease_gpus(8, timeout=0, env=pool_env)
    cluster = {**pool_env, "SLURM_JOB_ID": "42", "CUDA_VISIBLE_DEVICES": "0,1,2"}
    lease = lease_gpus(2, env=cluster)
    assert (lease.ids, lease.source, lease.fds, lease.device) == (["0", "1"], "cluster", (), "cuda")
    with pytest.raises(GpuLeaseError, match="SLURM job was given 3 GPU\\(s\\).*asks for 8.*sbatch --gpus=8"):
        lease_gpus(8, env=cluster)
    none = {**pool_env, gpu.POOL_ENV: ""}
    assert lease_gpus(2, env=none).device == "cpu"
    with pytest.raises(GpuLeaseError, match="no GPU to lease \\(2 asked for\\)"):
        lease_gpus(2, env=none, require_gpu=True)
    with pytest.raises(GpuLeaseError, match="positive integer"):
        lease_gpus(0, env=pool_env)


def test_the_command_sees_its_gpus(pool_env):  # noqa: F811
    show = ("import json, os; print(json.dumps({k: os.environ.get(k) "
            "for k in ('GAITSIM_DEVICE', 'CUDA_VISIBLE_DEVICES')}))")
    done = subprocess.run([sys.executable, "-m", "sim", "lease", "--gpus", "3", "--timeout", "0", "--",
                           sys.executable, "-c", show], env=pool_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["GAITSIM_DEVICE"] == "cuda" and len(seen["CUDA_VISIBLE_DEVICES"].split(",")) == 3
    assert done.stderr.startswith("lease: cuda (gpu ") and held(pool_env) == set()
    done = subprocess.run([sys.executable, "-m", "sim", "lease", "--gpus", "0", "--", "true"], env=pool_env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr == "error: --gpus must be a positive number of GPUs, got 0\n"
