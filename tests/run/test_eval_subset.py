"""``train.eval_train_subset``: the train accuracy and loss recorded each epoch cover a fixed subset of the train
split (the same every epoch, chosen by the seed), training is unchanged, bad values are refused with the key named,
and the archive says how many samples were evaluated."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sim.archive import open_run
from sim.config import load_config
from sim.data import epoch_order
from sim.errors import ConfigError
from sim.run import run
from sim.run.data import eval_train_indices
from tests.helpers import write_config

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {"kind": "digits", "size": 320}  # 10 steps of 32 per epoch


def test_the_subset_is_fixed_by_the_seed_sorted_and_refused_when_too_large():
    assert torch.equal(eval_train_indices(10, None, seed=4), torch.arange(10))
    a = eval_train_indices(1000, 50, seed=4)
    assert a.shape == (50,) and a.dtype == torch.int64
    assert torch.equal(a, eval_train_indices(1000, 50, seed=4))  # the same every epoch and on resume
    assert torch.equal(a, a.sort().values) and len(set(a.tolist())) == 50
    assert set(a.tolist()) == set(epoch_order(1000, seed=4, epoch=0)[:50].tolist())  # epoch 0's order: no run's
    assert not torch.equal(a, eval_train_indices(1000, 50, seed=5))
    assert torch.equal(eval_train_indices(10, 10, seed=4), torch.arange(10))
    with pytest.raises(ConfigError, match=r"train.eval_train_subset: 11 is more than the 10 samples of the train "
                                          r"split; give at most 10, or null") as info:
        eval_train_indices(10, 11, seed=0)
    assert info.value.key == "train.eval_train_subset"


@pytest.mark.parametrize("value, words", [(0, "less than the minimum of 1"), (-5, "less than the minimum of 1"),
                                          ("all", "is not of type"), (2.5, "is not of type")])
def test_bad_values_are_refused_with_the_key(tiny_config, value, words):
    with pytest.raises(ConfigError, match=f"train.eval_train_subset: .*{words}") as info:
        load_config(tiny_config(train={"eval_train_subset": value}))
    assert info.value.key == "train.eval_train_subset"


def test_the_default_is_the_whole_split_and_the_value_is_archived_in_the_config(tiny_config):
    assert load_config(tiny_config()).train.eval_train_subset is None
    cfg = load_config(tiny_config(train={"eval_train_subset": 100}))
    assert cfg.train.eval_train_subset == 100 and cfg.to_dict()["train"]["eval_train_subset"] == 100
    assert load_config(cfg.to_dict()) == cfg


def test_a_subset_changes_only_the_recorded_train_metrics(tmp_path, tiny_config):
    whole = open_run(run(tiny_config(data=SMALL), tmp_path / "whole.zarr", progress=False))
    doc = tiny_config(data=SMALL, train={"eval_train_subset": 50})
    part = open_run(run(doc, tmp_path / "part.zarr", progress=False))
    assert whole.attrs["train_eval_samples"] == 320 and part.attrs["train_eval_samples"] == 50
    assert json.loads(part.attrs["config"])["train"]["eval_train_subset"] == 50
    # training is the same: every step, angle, test metric and probe record
    for name in whole.data_vars:
        if not name.startswith("train_") and name != "epoch_wall_s":
            a, b = whole[name].values, part[name].values
            assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), name
    # the train accuracies count samples of the subset: multiples of 1/50 (of 1/320 for the whole split)
    for ds, n in ((whole, 320), (part, 50)):
        hits = ds.train_top1.values * n
        assert np.allclose(hits, np.round(hits), atol=1e-9)
    assert not np.array_equal(whole.train_loss.values, part.train_loss.values)


def test_a_subset_larger_than_the_split_stops_the_run_before_the_store_is_written(tmp_path, tiny_config, capsys):
    from sim.cli import main

    path = write_config(tmp_path / "big.yaml", tiny_config(data=SMALL, train={"eval_train_subset": 5000}))
    assert main(["run", str(path), "--out", str(tmp_path / "run.zarr"), "--quiet"]) == 2
    assert "train.eval_train_subset: 5000 is more than the 320 samples of the train split" in capsys.readouterr().err
    assert not (tmp_path / "run.zarr").exists()


def test_the_evaluation_batches_cover_the_subset_and_their_shards_make_them_up(tiny_config):
    from sim.config import build_network
    from sim.run.data import evaluation_batches, load_data

    cfg = load_config(tiny_config(data=SMALL, train={"eval_train_subset": 50, "eval_batch_size": 16}))
    data = load_data(cfg, build_network(cfg))
    whole = list(evaluation_batches(data, "train", 16))
    assert [len(y) for _, y in whole] == [16, 16, 16, 2]
    x_all = torch.cat([x for x, _ in whole])
    assert torch.equal(x_all, data.train.x[data.eval_train])  # the subset, in index order
    parts = [list(evaluation_batches(data, "train", 16, shard=(r, 3))) for r in range(3)]
    for k, (x, y) in enumerate(whole):
        assert torch.equal(torch.cat([p[k][0] for p in parts]), x)
        assert torch.equal(torch.cat([p[k][1] for p in parts]), y)
    assert sum(len(y) for _, y in evaluation_batches(data, "test", 16)) == len(data.test)
