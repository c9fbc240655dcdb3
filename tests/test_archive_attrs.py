"""Self-labelling data (CF conventions): every variable and coordinate of a run store carries ``long_name`` and
``units``, so xarray's own plots label their axes; the study Dataset keeps them and adds its own."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from sim.archive import EPOCH_METRICS, LayerInfo, RunArchive, open_run

LAYERS = [LayerInfo("dense1", "fa", False, (6,)), LayerInfo("conv2", "gp", True, (4, 3, 3)),
          LayerInfo("output", "gp", True, (5,))]


def make_store(path):
    archive = RunArchive.create(path, layers=LAYERS, steps_per_epoch=2, activity_dtype="float32",
                                probe_labels=np.arange(3), attrs={"config": "{}", "name": "t"})
    for epoch in (1, 2):
        first = archive.lengths.steps
        archive.append_steps(first_step=first, epoch=epoch, loss=np.ones(2), batch_size=np.full(2, 8),
                             angle=np.full((2, 3), float(epoch)))
        archive.append_epoch(epoch, {k: epoch / 10 for k in EPOCH_METRICS}, np.array([np.nan, 0.1, 0.2]))
        archive.append_probe(epoch, first + 2, [np.zeros((3, 6)), np.zeros((3, 4, 3, 3)), np.zeros((3, 5))],
                             [np.zeros((3, 6)), np.zeros((3, 4, 3, 3)), np.zeros((3, 5))])
    archive.commit(complete=True)
    return path


def test_every_variable_and_coordinate_of_a_run_store_has_long_name_and_units(tmp_path):
    ds = open_run(make_store(tmp_path / "run.zarr"))
    names = [*ds.data_vars, *ds.coords]
    assert {"angle", "test_top1", "activity_conv2", "target_output", "probe_label", "step", "epoch", "layer", "rule",
            "square", "step_epoch", "probe_epoch", "probe_step", "sample"} <= set(names)
    missing = {name: sorted({"long_name", "units"} - set(ds[name].attrs)) for name in names}
    assert {name: m for name, m in missing.items() if m} == {}
    assert ds.angle.attrs["units"] == "degree" and ds.test_top1.attrs["long_name"] == "test top-1 accuracy"
    assert ds.epoch_wall_s.dtype.kind == "f"          # units "s" are not decoded into timedeltas


def test_xarray_plots_label_themselves(tmp_path):
    ds = open_run(make_store(tmp_path / "run.zarr"))
    ax = Figure().subplots()
    ds.test_top1.plot(ax=ax)
    assert ax.get_xlabel() == "epoch [epoch]" and ax.get_ylabel() == "test top-1 accuracy [1]"
    ax = Figure().subplots()
    ds.angle.sel(layer="dense1").plot(ax=ax)
    assert ax.get_ylabel() == "angle to BP [degree]" and ax.get_xlabel() == "training step [step]"
