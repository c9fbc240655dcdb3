"""A running study drawn from what it has recorded: a ``run.zarr.partial`` store that a writer (the real archive,
:class:`sim.archive.RunArchive`) is still growing loads as of its last commit, marked unfinished, and never by
default."""

from __future__ import annotations

import json

import numpy as np

from analysis import FIGURES, load_study
from sim.archive import EPOCH_METRICS, LayerInfo, RunArchive
from tests.analysis.stores import write_run

CONFIG = {"network": {"preset": "digits_shallow"}, "rules": "gp", "data": {"kind": "digits"}, "train": {"epochs": 4}}


def add_epoch(archive: RunArchive, epoch: int) -> None:
    first = archive.lengths.steps
    archive.append_steps(first_step=first, epoch=epoch, loss=np.ones(2), batch_size=np.full(2, 8),
                         angle=np.full((2, 2), 3.0))
    archive.append_epoch(epoch, {k: 0.1 * epoch for k in EPOCH_METRICS}, np.array([np.nan, 0.1]))


def test_a_store_being_written_loads_as_of_its_last_commit(tmp_path):
    root = tmp_path / "results" / "live"
    write_run(root / "e/rule~bp/seed~0/run.zarr", {**CONFIG, "rules": "bp"}, code=0.9)
    partial = root / "e/rule~gp/seed~0/run.zarr.partial"
    partial.parent.mkdir(parents=True)
    archive = RunArchive.create(partial, layers=[LayerInfo("dense1", "gp", True, (4,)),
                                                 LayerInfo("output", "gp", True, (3,))],
                                steps_per_epoch=2, probe_labels=None, activity_dtype="float32",
                                attrs={"config": json.dumps(CONFIG), "name": "live/e/rule~gp/seed~0"})
    add_epoch(archive, 1)
    archive.commit()
    add_epoch(archive, 2)                               # written, not yet committed: invisible to readers

    assert list(load_study(root).rule.values) == ["bp"]  # by default the running job is not there at all
    ds = load_study(root, include_partial=True)
    gp = ds.sel(experiment="e", rule="gp", seed=0)
    assert gp.unfinished.item() == 1 and gp.epochs_total.item() == 4
    assert int(np.isfinite(gp.test_top1).sum()) == 1 and gp.test_top1.sel(epoch=1).item() == 0.1
    fig = FIGURES["accuracy"](ds)
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert "gp (unfinished, epoch 1/4) test" in labels and "bp test" in labels

    archive.commit()                                    # the writer goes on; the next look sees epoch 2
    gp = load_study(root, include_partial=True).sel(experiment="e", rule="gp", seed=0)
    assert int(np.isfinite(gp.test_top1).sum()) == 2
    add_epoch(archive, 3)
    add_epoch(archive, 4)
    archive.commit(complete=True)                       # complete, but not yet renamed: still partial by name,
    gp = load_study(root, include_partial=True).sel(experiment="e", rule="gp", seed=0)
    assert gp.unfinished.item() == 0                    #   finished by its attribute
