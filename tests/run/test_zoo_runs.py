"""Zoo rules in real runs (issue 13): learned feedback recorded per epoch and layer in the archive, and a run with
learned state (kp) or redrawn feedback (brsf) resumed after a crash equals an uninterrupted one, bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import sim.schedule
from sim.archive import open_run
from sim.run import run

SMALL = {"kind": "digits", "size": 320}  # 10 steps of 32 per epoch


def _same(a: Path, b: Path) -> None:
    da, db = open_run(a), open_run(b)
    assert set(da.data_vars) == set(db.data_vars)
    for k in da.data_vars:
        if k == "epoch_wall_s":
            continue
        va, vb = da[k].values, db[k].values
        assert np.array_equal(va, vb, equal_nan=va.dtype.kind == "f"), k


def test_a_kp_run_records_its_feedback_angle_falling(tmp_path, tiny_config, one_thread):
    doc = tiny_config(rules=["kp", "kp", "kp", "bp"], settings={"kp": {"lr": 3e-3, "decay": 2.0}},
                      train={"epochs": 3}, data=SMALL,
                      record={"angle_every": 5, "probe_size": 0, "probe_epochs": [3]})
    ds = open_run(run(doc, tmp_path / "kp.zarr", progress=False))
    angle = ds.feedback_angle.values  # [epoch, layer]
    assert np.isnan(angle[:, 3]).all() and np.isfinite(angle[:, :3]).all()
    assert (np.diff(angle[:, :3], axis=0) < 0).all(), angle
    assert np.isnan(ds.reconstruction_loss.values).all()


def test_dtp_and_lgp_runs_record_finite_reconstruction_loss_and_feedback_angle(tmp_path, tiny_config, one_thread):
    doc = tiny_config(rules=["dtp", "lgp", "lgp", "bp"], settings={"dtp": {"feedback_lr": 1e-2},
                                                                   "lgp": {"feedback_lr": 1e-2}},
                      train={"epochs": 3}, data=SMALL,
                      record={"angle_every": 5, "probe_size": 0, "probe_epochs": [3]})
    ds = open_run(run(doc, tmp_path / "learned.zarr", progress=False))
    angle, loss = ds.feedback_angle.values, ds.reconstruction_loss.values  # [epoch, layer]
    assert np.isfinite(angle[:, :3]).all() and np.isfinite(loss[:, :3]).all(), (angle, loss)
    assert np.isnan(angle[:, 3]).all() and np.isnan(loss[:, 3]).all()
    assert (loss[-1, 1:3] < loss[0, 1:3]).all() and (angle[-1, 1:3] < angle[0, 1:3]).all(), (angle, loss)


@pytest.mark.parametrize("rules", [["kp", "kp", "fa", "kp"], ["brsf", "dfa", "usf", "frsf"],
                                   ["dtp", "lgp", "lgp", "dtp"]])
def test_resume_with_learned_or_redrawn_feedback_equals_an_uninterrupted_run(tmp_path, tiny_config, monkeypatch,
                                                                             one_thread, rules):
    settings = {r: {"lr": 1e-3} for r in set(rules)}
    if "kp" in settings:
        settings["kp"]["decay"] = 0.5
    for learned in {"dtp", "lgp"} & set(settings):
        settings[learned]["feedback_lr"] = 1e-2
    doc = tiny_config(rules=rules, settings=settings, train={"epochs": 3}, data=SMALL,
                      record={"checkpoint_every": 1, "probe_epochs": [0, 3], "angle_every": 3})
    reference = run(doc, tmp_path / "ref.zarr", progress=False)
    store = tmp_path / "run.zarr"
    original = sim.schedule.Scheduler.compute

    def compute(self, x, y):
        if self.step_count == 2 * 10 + 4:
            raise KeyboardInterrupt
        return original(self, x, y)

    with monkeypatch.context() as m:
        m.setattr(sim.schedule.Scheduler, "compute", compute)
        with pytest.raises(KeyboardInterrupt):
            run(doc, store, progress=False)
    run(doc, store, resume=True, progress=False)
    _same(reference, store)
