"""A checkpoint that passes its checksum can still be wrong (docs/reliability.md; issue 14 part 3): its structure is
checked against the run before it is used; one that does not fit is passed over like a torn one."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from sim import checkpoint as ckpt_io
from sim import faults
from sim.archive import ArchiveError
from sim.run import run
from tests.conftest import TINY
from tests.faultinject import archive_differences

DOC = copy.deepcopy(TINY)
DOC["train"]["epochs"] = 4


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return run(DOC, tmp_path_factory.mktemp("ref") / "ref.zarr", progress=False)


@pytest.fixture(scope="module")
def killed(tmp_path_factory) -> Path:
    """A store stopped after epoch 3's commit, before its checkpoint: last.pt after epoch 2, prev.pt after 1."""
    torch.set_num_threads(1)
    store = tmp_path_factory.mktemp("killed") / "run.zarr"
    faults.arm("train.epoch:3:eio")
    try:
        with pytest.raises(OSError):
            run(DOC, store, progress=False)
    finally:
        faults.arm(None)
    assert ckpt_io.checkpoint_path(store).is_file() and ckpt_io.previous_path(store).is_file()
    return store


def _plant(path: Path, state) -> None:
    """Write ``state`` to the checkpoint file ``path`` and list its checksum in the manifest (it passes the check)."""
    torch.save(state, path)
    manifest = path.parent / ckpt_io.MANIFEST
    doc = json.loads(manifest.read_text())
    doc["checkpoints"].insert(0, {"sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    manifest.write_text(json.dumps(doc))


def _first_key(d: dict) -> str:
    return next(iter(d))


def _set(state, *keys, value):
    for k in keys[:-1]:
        state = state[k]
    state[keys[-1]] = value


MISFITS = {
    "network tensor of another shape": lambda s: _set(s, "network", _first_key(s["network"]),
                                                      value=torch.zeros(3, 3, dtype=torch.float64)),
    "network tensor of another dtype": lambda s: _set(s, "network", _first_key(s["network"]),
                                                      value=s["network"][_first_key(s["network"])].to(torch.float16)),
    "network tensor missing": lambda s: s["network"].pop(_first_key(s["network"])),
    "network not a mapping": lambda s: _set(s, "network", value=[1, 2]),
    "adam moment of another shape": lambda s: _set(s, "scheduler", "optimizer", "state", 0, "exp_avg",
                                                   value=torch.zeros(7)),
    "optimizer without groups": lambda s: s["scheduler"]["optimizer"].pop("param_groups"),
    "noise generator state of another size": lambda s: _set(s, "scheduler", "generator",
                                                            value=torch.zeros(10, dtype=torch.uint8)),
    "torch rng state of another size": lambda s: _set(s, "torch_rng", value=torch.zeros(5, dtype=torch.uint8)),
    "torch rng state not a tensor": lambda s: _set(s, "torch_rng", value="seed"),
    "numpy rng keys of another size": lambda s: _set(s, "numpy_rng", "keys", value=torch.zeros(3, dtype=torch.int64)),
    "numpy rng not a mapping": lambda s: _set(s, "numpy_rng", value=7),
    "required key missing": lambda s: s.pop("lengths"),
    "lengths not a mapping": lambda s: _set(s, "lengths", value=[1, 2, 3]),
    "position beyond the run": lambda s: _set(s, "epochs_done", value=10**6),
    "step counter that disagrees": lambda s: _set(s, "scheduler", "step", value=-3),
    "digests of the wrong form": lambda s: _set(s, "digests", value={"loss": [["a"]]}),
}


def _load_state(path: Path) -> dict:
    return torch.load(path, weights_only=True)


#: one misfit per part of a checkpoint (network, optimizer, RNG, position, keys) in the fast tier; the rest are slow
FAST_MISFITS = {"network tensor of another shape", "adam moment of another shape", "torch rng state not a tensor",
                "position beyond the run", "required key missing"}


@pytest.mark.parametrize("misfit", [pytest.param(m, marks=() if m in FAST_MISFITS else pytest.mark.slow)
                                    for m in sorted(MISFITS)])
def test_a_checkpoint_that_does_not_fit_is_passed_over_for_the_previous(killed, reference, tmp_path, misfit,
                                                                        one_thread):
    store = tmp_path / "run.zarr"
    shutil.copytree(killed, store)
    last = ckpt_io.checkpoint_path(store)
    state = _load_state(last)
    MISFITS[misfit](state)
    _plant(last, state)
    run(DOC, store, resume=True, progress=False)
    warned = (tmp_path / "run.zarr.log").read_text()  # the run's log (logger sim.run does not propagate)
    assert str(last) in warned and ("does not fit" in warned or "not a gaitsim checkpoint" in warned)
    assert "resuming from" in warned and str(ckpt_io.previous_path(store)) in warned
    assert archive_differences(reference, store) == []


@pytest.mark.parametrize("payload", [torch.zeros(3), {"format": 2}, [1, 2, 3], {"format": 2, "network": "x"}])
def test_a_payload_that_is_not_a_checkpoint_and_none_usable_is_the_torn_file_error(killed, tmp_path, payload):
    store = tmp_path / "run.zarr"
    shutil.copytree(killed, store)
    _plant(ckpt_io.checkpoint_path(store), payload)
    prev = _load_state(ckpt_io.previous_path(store))
    MISFITS["network tensor of another shape"](prev)
    _plant(ckpt_io.previous_path(store), prev)
    with pytest.raises(ArchiveError) as info:
        run(DOC, store, resume=True, progress=False)
    msg = str(info.value)
    assert "no intact checkpoint to continue from" in msg and "--overwrite" in msg
    assert str(ckpt_io.checkpoint_path(store)) in msg and str(ckpt_io.previous_path(store)) in msg


def test_cli_says_the_same_without_a_traceback(killed, tmp_path, capsys):
    import yaml

    from sim.cli import main

    store = tmp_path / "run.zarr"
    shutil.copytree(killed, store)
    for path in (ckpt_io.checkpoint_path(store), ckpt_io.previous_path(store)):
        state = _load_state(path)
        MISFITS["adam moment of another shape"](state)
        _plant(path, state)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(DOC))
    assert main(["run", str(cfg), "--out", str(store), "--resume", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot resume") and "does not fit this run" in err and "Traceback" not in err
