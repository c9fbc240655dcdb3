"""The run store (sim/archive/) without training: growth, commits as the only visible state, truncation, old
layouts. (The checkpoint: tests/test_checkpoint.py; write errors and torn files: tests/reliability/.)"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr

from sim import checkpoint as ckpt_io
from sim.archive import ArchiveError, Lengths, RunArchive, open_run
from tests.helpers import add_epoch
from tests.helpers import make_archive as make


def test_a_new_store_opens_with_xarray_and_every_growing_dim_empty(tmp_path):
    make(tmp_path / "a.zarr")
    ds = open_run(tmp_path / "a.zarr")
    assert ds.sizes["step"] == ds.sizes["epoch"] == ds.sizes["probe_epoch"] == 0
    assert list(ds.layer.values) == ["dense1", "conv2", "output"]
    assert list(ds.rule.values) == ["fa", "gp", "gp"] and list(ds.square.values) == [False, True, True]
    assert ds.activity_conv2.dims == ("probe_epoch", "sample", "channel_conv2", "row_conv2", "col_conv2")
    assert ds.attrs["complete"] is False and ds.attrs["name"] == "t"


def test_appends_are_visible_only_after_a_commit(tmp_path):
    archive = make(tmp_path / "a.zarr")
    add_epoch(archive, 1)
    archive.commit()
    add_epoch(archive, 2)  # "crash" before the commit: readers still see epoch 1, consistently
    ds = open_run(tmp_path / "a.zarr")
    assert (ds.sizes["step"], ds.sizes["epoch"], ds.sizes["probe_epoch"]) == (4, 1, 1)
    assert float(ds.train_top1[0]) == 0.1 and (ds.angle.values == 1).all()
    archive.commit(complete=True)
    ds = open_run(tmp_path / "a.zarr")
    assert list(ds.step.values) == list(range(8)) and list(ds.step_epoch.values) == [1] * 4 + [2] * 4
    assert list(ds.probe_step.values) == [4, 8]
    np.testing.assert_array_equal(ds.target_dense1.values[1] - ds.activity_dense1.values[1], 0.5)
    assert ds.activity_dense1.dtype == np.float32 and ds.target_dense1.dtype == np.float64
    assert ds.attrs["complete"] is True
    assert ds.loss.attrs["units"] == "nat" and ds.angle.attrs["units"] == "degree"


def test_truncate_cuts_every_dim_back_and_rows_are_rewritten(tmp_path):
    archive = make(tmp_path / "a.zarr")
    for e in (1, 2, 3):
        add_epoch(archive, e)
    archive.commit()
    reopened = RunArchive.open(tmp_path / "a.zarr")
    assert reopened.lengths == Lengths(12, 3, 3)
    reopened.truncate(Lengths(4, 1, 1))
    ds = open_run(tmp_path / "a.zarr")
    assert (ds.sizes["step"], ds.sizes["epoch"], ds.sizes["probe_epoch"]) == (4, 1, 1)
    add_epoch(reopened, 2)
    reopened.commit()
    ds = open_run(tmp_path / "a.zarr")
    assert list(ds.epoch.values) == [1, 2] and (ds.angle.values[4:] == 2).all()
    with pytest.raises(ArchiveError, match="fewer than the checkpoint"):
        reopened.truncate(Lengths(100, 2, 2))


def test_steps_must_be_appended_in_order(tmp_path):
    archive = make(tmp_path / "a.zarr")
    with pytest.raises(ArchiveError, match="appending steps from 3"):
        archive.append_steps(first_step=3, epoch=1, loss=np.ones(1), batch_size=np.ones(1), angle=np.ones((1, 3)))


def test_a_store_without_probe_has_no_activity_variables(tmp_path):
    make(tmp_path / "a.zarr", probe=0)
    ds = open_run(tmp_path / "a.zarr")
    assert "sample" not in ds.dims and not [v for v in ds.data_vars if v.startswith(("activity_", "target_"))]


def test_plain_xarray_reads_a_store_with_its_checkpoint_folder(tmp_path):
    archive = make(tmp_path / "a.zarr")
    add_epoch(archive, 1)
    archive.commit()
    (tmp_path / "a.zarr" / ckpt_io.FOLDER).mkdir()
    (tmp_path / "a.zarr" / ckpt_io.FOLDER / ckpt_io.FILENAME).write_bytes(b"x")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for consolidated in (None, False):
            assert xr.open_zarr(tmp_path / "a.zarr", consolidated=consolidated).sizes["step"] == 4


def old_store(path):
    """A store as gaitsim wrote it before "checkpoint" meant only resume state: probe records along ``checkpoint``
    (coordinate ``checkpoint_step``), samples along ``probe``."""
    ds = xr.Dataset({"loss": ("step", np.ones(4)), "probe_label": ("probe", np.arange(3)),
                     "activity_output": (("checkpoint", "probe", "unit_output"), np.zeros((2, 3, 5)))},
                    coords={"step": np.arange(4), "epoch": [1], "layer": ["output"], "checkpoint": [0, 1],
                            "checkpoint_step": ("checkpoint", [0, 4]), "probe": np.arange(3)},
                    attrs={"complete": True})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.to_zarr(path, mode="w", consolidated=True, zarr_format=3)
    return path


def test_an_old_store_reads_with_the_new_names_and_is_not_resumed(tmp_path):
    store = old_store(tmp_path / "old.zarr")
    ds = open_run(store)
    assert ds.activity_output.dims == ("probe_epoch", "sample", "unit_output")
    assert list(ds.probe_epoch.values) == [0, 1] and list(ds.probe_step.values) == [0, 4]
    assert ds.probe_label.dims == ("sample",) and "checkpoint" not in ds.variables
    archive = RunArchive.open(store)  # it opens (a complete store is verified, then left as it is) ...
    assert archive.lengths == Lengths(4, 1, 2)
    with pytest.raises(ArchiveError, match=r"old\.zarr was written by an older gaitsim .*over with --overwrite"):
        archive.truncate(Lengths(4, 1, 1))  # ... but is not continued
