"""The persistent input pipeline (sim.data.loader): the batches are iterate_batches' (any worker count, resumed or
not), the workers live across epochs, the sampler's shards cover every sample once per epoch, and a run builds one
DataLoader per split. Data: a small ImageNet-style folder of real JPEGs written here (tests.helpers)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import sim.data.dataset as dataset_module
import sim.data.loader as loader_module
from sim.archive import open_run
from sim.data import DataSpec, TensorImageDataset, iterate_batches, load_split
from sim.data.loader import EpochBatchSampler, SplitLoader
from sim.errors import DataError
from sim.run import run
from tests.helpers import write_jpeg_folder

BATCH = 5


@pytest.fixture(scope="module")
def jpeg_root(tmp_path_factory):
    """3 classes x (8 train + 2 val) digits as 32 px RGB JPEGs: 24 train images, 5 batches of 5 (the last 4)."""
    return write_jpeg_folder(tmp_path_factory.mktemp("jpeg"), classes=3, train=8, val=2, size=32)


def folder_split(root, split="train", **spec):
    return load_split(DataSpec("imagenet_folder", path=str(root), image_size=16, normalize="imagenet", **spec), split)


def assert_same_batches(got, want):
    assert len(got) == len(want)
    for (xa, ya), (xb, yb) in zip(got, want, strict=True):
        assert xa.dtype == torch.float32 and xa.shape[1:] == (3, 16, 16)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.parametrize("workers", [0, 2])
def test_the_persistent_loader_gives_iterate_batches_batches(jpeg_root, workers):
    train = folder_split(jpeg_root)
    split = SplitLoader(train, EpochBatchSampler(len(train), BATCH, seed=3), num_workers=workers)
    first = split.loader
    for epoch in (1, 2):
        assert_same_batches(list(split.epoch(epoch)), list(iterate_batches(train, BATCH, seed=3, epoch=epoch)))
    # a run resumed at batch k sees the rest of the epoch, as an uninterrupted run does
    assert_same_batches(list(split.epoch(2, start_batch=3)),
                        list(iterate_batches(train, BATCH, seed=3, epoch=2))[3:])
    # an abandoned pass (a failed step) leaves nothing behind for the next one
    next(split.epoch(1))
    assert_same_batches(list(split.epoch(2)), list(iterate_batches(train, BATCH, seed=3, epoch=2)))
    assert split.loader is first  # one DataLoader for every pass
    if workers:
        pids = [w.pid for w in split.loader._iterator._workers]
        list(split.epoch(3))
        assert [w.pid for w in split.loader._iterator._workers] == pids  # the same processes: kept alive
        assert all(w.is_alive() for w in split.loader._iterator._workers)


@pytest.mark.parametrize("normalize", ["imagenet", "unit"])
def test_decoding_gives_torchvision_values_bit_for_bit(jpeg_root, normalize):
    from torchvision import transforms

    from sim.data import IMAGENET_MEAN, IMAGENET_STD

    train = load_split(DataSpec("imagenet_folder", path=str(jpeg_root), image_size=20, normalize=normalize), "train")
    steps = [transforms.Resize(20), transforms.CenterCrop(20), transforms.ToTensor()]
    if normalize == "imagenet":
        steps.append(transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD))
    reference = transforms.Compose(steps)
    for path, _ in train.samples[::3]:
        x = train.decode(path)
        assert x.dtype == torch.float32 and x.shape == (3, 20, 20) and x.is_contiguous()
        assert torch.equal(x, reference(train._loader(path)))


def test_fixed_index_batches_and_bad_ones(jpeg_root):
    train = folder_split(jpeg_root)
    split = SplitLoader(train, EpochBatchSampler(len(train), BATCH, seed=0))
    index = [torch.tensor([4, 0, 23]), torch.tensor([7])]
    got = list(split.over(index))
    assert [y.tolist() for _, y in got] == [[train.samples[i][1] for i in b.tolist()] for b in index]
    assert torch.equal(got[0][0][1], train[0][0])
    with pytest.raises(DataError, match="outside 0..23"):
        split.over([torch.tensor([24])])


def test_undecodable_files_are_skipped_once_through_the_persistent_loader(tmp_path):
    root = write_jpeg_folder(tmp_path, classes=2, train=4, val=1, size=16)
    bad = root / "train" / "n00000001" / "broken.JPEG"
    bad.write_bytes(b"\xff\xd8\xff not a JPEG")
    train = folder_split(root, on_bad_image="skip")
    split = SplitLoader(train, EpochBatchSampler(len(train), 3, seed=1), num_workers=0)
    skipped = [p for p, _ in train.samples].index(str(bad))
    for epoch in (1, 2):
        labels = torch.cat([y for _, y in split.epoch(epoch)]).tolist()
        want = [train.samples[i][1] for i in torch.cat(split.sampler.batches).tolist() if i != skipped]
        assert labels == want and len(labels) == len(train) - 1
    assert train.skipped == [str(bad)]


def test_in_memory_data_keep_their_gather_path():
    x = torch.arange(23, dtype=torch.float32).reshape(23, 1, 1, 1).repeat(1, 1, 2, 2)
    ds = TensorImageDataset(x, torch.arange(23) % 3, classes=3)
    split = SplitLoader(ds, EpochBatchSampler(23, 4, seed=2), num_workers=2)
    assert split.loader is None and split.num_workers == 0  # no DataLoader, no workers
    got, want = list(split.epoch(5, start_batch=1)), list(iterate_batches(ds, 4, seed=2, epoch=5, start_batch=1))
    for (xa, ya), (xb, yb) in zip(got, want, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    xd, _ = next(SplitLoader(ds, EpochBatchSampler(23, 4, seed=2), dtype=torch.float64).epoch(1))
    assert xd.dtype == torch.float64


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("drop_last", [False, True])
def test_the_sharded_sampler_covers_each_sample_once_per_epoch(world_size, drop_last):
    n, batch = 23, 6
    samplers = [EpochBatchSampler(n, batch, seed=9, drop_last=drop_last, shard=(r, world_size))
                for r in range(world_size)]
    whole = EpochBatchSampler(n, batch, seed=9, drop_last=drop_last)
    orders = []
    for epoch in (1, 2):
        whole.set_epoch(epoch)
        for s in samplers:
            s.set_epoch(epoch)
        assert all(len(s) == len(whole) for s in samplers)
        seen = []
        for k, global_batch in enumerate(whole):
            parts = [list(s)[k] for s in samplers]
            assert [i for p in parts for i in p] == global_batch  # contiguous parts, in rank order
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
            seen += global_batch
        kept = n // batch * batch if drop_last else n
        assert len(seen) == kept and len(set(seen)) == kept  # every (kept) sample exactly once
        if not drop_last:
            assert sorted(seen) == list(range(n))
        orders.append(seen)
    assert orders[0] != orders[1]  # a new order each epoch


def test_bad_sampler_and_loader_settings():
    with pytest.raises(DataError, match="rank 3 is not below the world size 3"):
        EpochBatchSampler(10, 2, seed=0, shard=(3, 3))
    with pytest.raises(DataError, match="batch_size"):
        EpochBatchSampler(10, 0, seed=0)
    ds = TensorImageDataset(torch.zeros(4, 1, 1, 1), torch.zeros(4, dtype=torch.int64), classes=1)
    with pytest.raises(DataError, match="num_workers"):
        SplitLoader(ds, EpochBatchSampler(4, 2, seed=0), num_workers=-1)
    with pytest.raises(DataError, match="sampler is for 5 samples but the dataset has 4"):
        SplitLoader(ds, EpochBatchSampler(5, 2, seed=0))


def _folder_run(tiny_config, root, out, workers):
    doc = tiny_config(
        network={"preset": None, "input_shape": [3, 16, 16], "classes": 3, "layers": [{"width": 12}]}, rules="bp",
        data={"kind": "imagenet_folder", "path": str(root), "image_size": 16, "normalize": "imagenet"},
        train={"epochs": 2, "batch_size": BATCH, "eval_batch_size": 7, "num_workers": workers},
        record={"angle_every": 2, "probe_size": 4, "probe_epochs": [0, 2]})
    return open_run(run(doc, out, progress=False))


def test_a_run_builds_one_loader_per_split_and_workers_change_no_number(jpeg_root, tmp_path, tiny_config,
                                                                        monkeypatch, one_thread):
    built = []

    class Counting(DataLoader):
        def __init__(self, *args, **kwargs):
            built.append(kwargs.get("num_workers", 0))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(loader_module, "DataLoader", Counting)
    monkeypatch.setattr(dataset_module, "DataLoader", Counting)  # the one-off passes, which a run must not use
    serial = _folder_run(tiny_config, jpeg_root, tmp_path / "w0.zarr", 0)
    assert built == [0, 0]  # train and test, once for the whole run (two epochs, evaluations and the probe)
    parallel = _folder_run(tiny_config, jpeg_root, tmp_path / "w2.zarr", 2)
    assert built == [0, 0, 2, 2]
    assert serial.sizes["step"] == 2 * 5 and int(serial.batch_size.sum()) == 2 * 24
    for name in serial.data_vars:
        if name != "epoch_wall_s":
            a, b = serial[name].values, parallel[name].values
            assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), name
