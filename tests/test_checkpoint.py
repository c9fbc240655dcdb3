"""The checkpoint (sim/checkpoint.py) without training: a round trip loads weights only and restores the RNG states,
old checkpoints load, a damaged one is a clear error. (Failed writes and torn checkpoints: tests/reliability/.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sim import checkpoint as ckpt_io
from sim.archive import ArchiveError, Lengths
from tests.helpers import checkpoint_at as _checkpoint


def test_a_checkpoint_written_before_the_rename_loads_its_lengths():
    state = _checkpoint(3).to_state()
    state["lengths"] = {"steps": 3, "epochs": 1, "checkpoints": 2}
    assert ckpt_io.Checkpoint.from_state(state).lengths == Lengths(steps=3, epochs=1, probes=2)


def test_checkpoint_round_trip_loads_weights_only(tmp_path):
    np.random.seed(3)
    state = _checkpoint(7)
    ckpt_io.save(tmp_path, state)
    expected = np.random.rand(3)
    back = ckpt_io.load(tmp_path)
    assert back.step == 7 and back.lengths == Lengths(7, 1, 0) and torch.equal(back.network["w"], state.network["w"])
    ckpt_io.set_numpy_rng_state(back.numpy_rng)
    np.testing.assert_array_equal(np.random.rand(3), expected)
    torch.load(ckpt_io.checkpoint_path(tmp_path), weights_only=True)
    assert ckpt_io.load(tmp_path / "elsewhere") is None


def test_a_damaged_checkpoint_is_a_clear_error(tmp_path):
    path = ckpt_io.checkpoint_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ArchiveError, match="unreadable"):
        ckpt_io.load(tmp_path)
