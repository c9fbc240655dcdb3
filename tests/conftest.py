"""Shared fixtures: a tiny run config on the embedded digits, and one torch thread (the tiny nets are far faster
single-threaded on a shared 2-core box, and two runs compared for bitwise equality must use the same thread count).

Thread rule (docs/testing.md): under pytest-xdist (``-n auto``, the default in pyproject.toml) every worker runs
torch with WORKER_THREADS thread(s), and children it starts inherit ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` = the
same, so N workers use N cores instead of N x cores threads. A serial run (``-n 0``) keeps torch's default. Tests
that compare results bitwise still ask for ``one_thread`` explicitly, whatever the worker count."""

from __future__ import annotations

import copy
import os

import pytest
import torch

#: torch threads per pytest-xdist worker: the workers are the parallelism, each one runs single-threaded
WORKER_THREADS = 1


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER") is not None:
        torch.set_num_threads(WORKER_THREADS)
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(WORKER_THREADS)

#: a run that trains the shallow digits net for 2 epochs in about a second
TINY = {
    "network": {"preset": "digits_shallow"},
    "rules": "gp",
    "settings": {r: {"lr": 1.0e-3} for r in ("bp", "fa", "gp", "vgp")},
    "data": {"kind": "digits"},
    "train": {"epochs": 2, "batch_size": 32, "seed": 0},
    "record": {"angle_every": 7, "probe_size": 8, "probe_epochs": [0, 2], "checkpoint_every": 1},
}


@pytest.fixture
def tiny_config():
    """A factory of tiny run-config dicts: ``tiny_config(rules='bp', train={'epochs': 3})`` (sections merged)."""

    def make(**changes) -> dict:
        cfg = copy.deepcopy(TINY)
        for key, value in changes.items():
            if isinstance(value, dict) and isinstance(cfg.get(key), dict):
                cfg[key] = {**cfg[key], **value}
            else:
                cfg[key] = value
        return cfg

    return make


@pytest.fixture
def one_thread():
    """Run the test with exactly one torch thread (bitwise comparisons; restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
