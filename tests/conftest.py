"""Fixtures for the run tests (test_config, test_run, test_archive): a tiny run config on the embedded digits, and
one torch thread (the tiny nets are far faster single-threaded on a shared 2-core box, and two runs compared for
bitwise equality must use the same thread count)."""

from __future__ import annotations

import copy

import pytest
import torch

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
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
