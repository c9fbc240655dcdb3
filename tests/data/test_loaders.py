"""Tests of sim.data: every loader on tiny data written here (offline, CPU, no shared/ folder needed).

Images are deliberately non-square (H != W) where the format allows, so a reshape in place of a transpose, or a
swapped axis, changes the shape or moves the known red block and fails the test.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from torch.utils.data import TensorDataset

import sim.data.dataset as dataset_module
from sim.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    KINDS,
    LOADERS,
    DataSpec,
    ImageFolderDataset,
    TensorImageDataset,
    count_batches,
    epoch_order,
    iterate_batches,
    load_split,
)
from sim.data.digits import split_indices
from sim.errors import DataError, GaitsimError

RED = (255, 0, 0)


def unnormalize(x: torch.Tensor) -> torch.Tensor:
    """Undo normalize='imagenet' on ``[..., 3, H, W]``: back to pixels in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return x * std + mean


def assert_red(pixel: torch.Tensor) -> None:
    """``pixel [3]`` in [0, 1] is red: channel 0 high, channels 1 and 2 low."""
    assert pixel[0] > 0.85 and pixel[1] < 0.15 and pixel[2] < 0.15, pixel


# ---------------------------------------------------------------------------------------------------------- spec


def test_every_kind_has_a_loader():
    assert tuple(LOADERS) == KINDS


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"kind": "cifar"}, "unknown data kind"),
        ({"kind": "digits", "normalize": "zscore"}, "normalize"),
        ({"kind": "digits", "on_bad_image": "ignore"}, "on_bad_image"),
        ({"kind": "npz"}, "needs a path"),
        ({"kind": "random", "classes": 3}, "input_shape"),
        ({"kind": "random", "classes": 3, "input_shape": (3, 0, 4)}, "input_shape"),
        ({"kind": "digits", "image_size": -1}, "image_size"),
    ],
)
def test_spec_refuses_bad_settings(kwargs, word):
    with pytest.raises(DataError, match=word):
        DataSpec(**kwargs)


def test_spec_stores_input_shape_as_tuple_and_errors_are_value_errors():
    assert DataSpec("random", classes=2, input_shape=[1, 2, 3]).input_shape == (1, 2, 3)
    assert issubclass(DataError, GaitsimError) and issubclass(DataError, ValueError)
    with pytest.raises(DataError, match="split"):
        load_split(DataSpec("digits"), "val")


# ----------------------------------------------------------------------------------------------------------- npz


def write_npz_folder(folder: Path, h: int = 4, w: int = 6) -> dict[str, np.ndarray]:
    """Shards train_2 (3 images), train_10 (2 images) and test.npz (2 images); image 0 has a red pixel at (1, 2)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(7, h, w, 3), dtype=np.uint8)
    x[0, 1, 2] = RED
    y = np.array([4, 0, 2, 1, 3, 7, 5], dtype=np.int64)
    # Natural order puts train_2 before train_10 (plain string sorting would not).
    np.savez(folder / "train_2.npz", x=x[:3], y=y[:3].astype(np.uint8))
    np.savez(folder / "train_10.npz", x=x[3:5], y=y[3:5].astype(np.uint16))
    np.savez(folder / "test.npz", x=x[5:], y=y[5:])
    return {"x": x, "y": y}


def test_npz_shapes_channel_order_labels_and_shard_order(tmp_path):
    truth = write_npz_folder(tmp_path)
    train = load_split(DataSpec("npz", path=str(tmp_path)), "train")
    assert isinstance(train, TensorImageDataset)
    assert len(train) == 5 and train.input_shape == (3, 4, 6)
    assert train.classes == 8  # max label over both splits (test holds 7) + 1, so the splits agree
    x, y = train[0]
    assert x.dtype == torch.float32 and x.shape == (3, 4, 6) and isinstance(y, int)
    assert x[:, 1, 2].tolist() == [1.0, 0.0, 0.0]  # the red pixel stays red and in place
    expected = torch.from_numpy(truth["x"][:5]).permute(0, 3, 1, 2).float() / 255
    assert torch.equal(train.x, expected)
    assert train.y.tolist() == truth["y"][:5].tolist()
    test = load_split(DataSpec("npz", path=str(tmp_path)), "test")
    assert test.y.tolist() == [7, 5] and test.classes == 8


def test_npz_grayscale_cap_resize_and_imagenet_normalisation(tmp_path):
    gray = np.zeros((3, 5, 5), dtype=np.uint8)
    gray[1] = 200
    np.savez(tmp_path / "train_00.npz", x=gray, y=np.array([0, 1, 2]))
    ds = load_split(DataSpec("npz", path=str(tmp_path), size=2), "train")
    assert ds.input_shape == (1, 5, 5) and len(ds) == 2 and ds.classes == 3
    with pytest.raises(DataError, match="RGB"):
        load_split(DataSpec("npz", path=str(tmp_path), normalize="imagenet"), "train")

    rgb_dir = tmp_path / "rgb"
    write_npz_folder(rgb_dir, h=8, w=8)
    x = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    x[0, :, :4] = RED  # left half red
    np.savez(rgb_dir / "test.npz", x=x, y=np.array([0, 1]))
    ds = load_split(DataSpec("npz", path=str(rgb_dir), image_size=4, normalize="imagenet"), "test")
    assert ds.input_shape == (3, 4, 4) and ds.x.dtype == torch.float32
    assert_red(unnormalize(ds.x[0])[:, 2, 0])
    assert unnormalize(ds.x[0])[:, 2, 3].abs().max() < 1e-5  # the black right half stays black


def test_npz_classes_setting_is_checked(tmp_path):
    write_npz_folder(tmp_path)
    assert load_split(DataSpec("npz", path=str(tmp_path), classes=10), "train").classes == 10
    with pytest.raises(DataError, match="label 4 is outside 0..2"):
        load_split(DataSpec("npz", path=str(tmp_path), classes=3), "train")
    with pytest.raises(DataError, match="input_shape"):
        load_split(DataSpec("npz", path=str(tmp_path), input_shape=(3, 6, 4)), "train")


def test_npz_missing_and_empty_folders(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="does not exist") as info:
        load_split(DataSpec("npz", path=str(missing)), "train")
    assert str(missing) in str(info.value) and "shared/data" not in str(info.value)  # no development machine folder
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"no train shards.*notes\.txt.*train_\*\.npz"):
        load_split(DataSpec("npz", path=str(tmp_path)), "train")


@pytest.mark.parametrize(
    "arrays, word",
    [
        ({"x": np.zeros((2, 4, 4, 3), np.float32), "y": np.zeros(2, int)}, "'x' must be uint8"),
        ({"x": np.zeros((2, 3, 4, 4), np.uint8), "y": np.zeros(2, int)}, "channels-first"),
        ({"x": np.zeros((2, 4, 4, 3), np.uint8)}, "missing key 'y'"),
        ({"x": np.zeros((2, 4, 4, 3), np.uint8), "y": np.zeros(3, int)}, "3 labels in 'y' but 2 images"),
        ({"x": np.zeros((2, 4, 4, 3), np.uint8), "y": np.zeros(2, np.float32)}, "'y' must be integer"),
        ({"x": np.zeros((2, 4, 4, 3), np.uint8), "y": np.array([0, -1])}, "negative label"),
    ],
)
def test_npz_bad_shards_name_file_and_problem(tmp_path, arrays, word):
    np.savez(tmp_path / "train_00.npz", **arrays)
    with pytest.raises(DataError, match=word) as info:
        load_split(DataSpec("npz", path=str(tmp_path)), "train")
    assert "train_00.npz" in str(info.value)


def test_npz_unreadable_mixed_and_duplicated_shards(tmp_path):
    (tmp_path / "train_00.npz").write_bytes(b"not a zip file")
    with pytest.raises(DataError, match="train_00.npz: cannot read"):
        load_split(DataSpec("npz", path=str(tmp_path)), "train")
    np.savez(tmp_path / "train_00.npz", x=np.zeros((1, 4, 4, 3), np.uint8), y=np.zeros(1, int))
    np.savez(tmp_path / "train_01.npz", x=np.zeros((1, 5, 5, 3), np.uint8), y=np.zeros(1, int))
    with pytest.raises(DataError, match="train_01.npz: images are"):
        load_split(DataSpec("npz", path=str(tmp_path)), "train")
    np.savez(tmp_path / "test.npz", x=np.zeros((1, 4, 4, 3), np.uint8), y=np.zeros(1, int))
    np.savez(tmp_path / "test_00.npz", x=np.zeros((1, 4, 4, 3), np.uint8), y=np.zeros(1, int))
    with pytest.raises(DataError, match="both test.npz and 1 test_"):
        load_split(DataSpec("npz", path=str(tmp_path)), "test")


# ------------------------------------------------------------------------------------------------ imagenet folder


def write_image_folder(root: Path) -> dict[str, Path]:
    """train/{bee, ant, cat} and val/{ant, cat} of 32x24 PNG and JPEG images; train/ant/red.png is half red."""
    files = {}
    rng = np.random.default_rng(1)
    for split, classes in (("train", ("bee", "ant", "cat")), ("val", ("cat", "ant"))):  # created unsorted
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for j, ext in enumerate(("png", "JPEG")):
                pixels = rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
                path = folder / f"img{j}.{ext}"
                Image.fromarray(pixels).save(path)
    red = np.zeros((24, 32, 3), dtype=np.uint8)
    red[:, :16] = RED  # left half red, right half black
    for split, ext in (("train", "png"), ("val", "jpg")):
        files[f"red_{split}"] = root / split / "ant" / f"red.{ext}"
        Image.fromarray(red).save(files[f"red_{split}"], quality=95)
    files["bad"] = root / "train" / "bee" / "broken.JPEG"
    files["bad"].write_bytes(b"\xff\xd8\xff this is not really a JPEG")
    return files


def test_image_folder_shapes_labels_and_red_channel(tmp_path):
    files = write_image_folder(tmp_path)
    spec = DataSpec("imagenet_folder", path=str(tmp_path), image_size=16, normalize="imagenet")
    train = load_split(spec, "train")
    assert isinstance(train, ImageFolderDataset)
    assert train.class_names == ["ant", "bee", "cat"] and train.classes == 3
    assert train.input_shape == (3, 16, 16) and len(train) == 8
    for path, label in train.samples:
        assert train.class_names[label] == Path(path).parent.name
    index = [p for p, _ in train.samples].index(str(files["red_train"]))
    x, y = train[index]
    assert x.dtype == torch.float32 and x.shape == (3, 16, 16) and y == 0
    # Resize(16) scales 32x24 to 21x16, CenterCrop(16) cuts 2-3 columns each side: column 3 is red, 12 black.
    assert_red(unnormalize(x)[:, 8, 3])
    assert unnormalize(x)[:, 8, 12].max() < 0.1

    # val lacks 'bee', but keeps the train indices: ant 0, cat 2.
    val = load_split(spec, "test")
    assert val.class_names == ["ant", "bee", "cat"]
    assert sorted({label for _, label in val.samples}) == [0, 2]
    x, y = val[[p for p, _ in val.samples].index(str(files["red_val"]))]
    assert y == 0
    assert_red(unnormalize(x)[:, 8, 3])


def test_image_folder_corrupt_file_error_mode_names_it(tmp_path):
    files = write_image_folder(tmp_path)
    train = load_split(DataSpec("imagenet_folder", path=str(tmp_path), image_size=8), "train")
    with pytest.raises(DataError, match="broken.JPEG.*on_bad_image='skip'"):
        list(iterate_batches(train, 4, seed=0, epoch=0))
    with pytest.raises(DataError, match="broken.JPEG"):
        train[[p for p, _ in train.samples].index(str(files["bad"]))]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_image_folder_skip_mode_counts_and_keeps_labels(tmp_path, num_workers):
    files = write_image_folder(tmp_path)
    spec = DataSpec("imagenet_folder", path=str(tmp_path), image_size=8, on_bad_image="skip")
    train = load_split(spec, "train")
    bad = [p for p, _ in train.samples].index(str(files["bad"]))
    for epoch in range(2):  # a file that fails again next epoch is listed once
        order = epoch_order(len(train), seed=3, epoch=epoch).tolist()
        batches = list(iterate_batches(train, 3, seed=3, epoch=epoch, num_workers=num_workers))
        labels = torch.cat([y for _, y in batches]).tolist()
        assert labels == [train.samples[i][1] for i in order if i != bad]
        assert all(x.shape[1:] == (3, 8, 8) and x.dtype == torch.float32 for x, _ in batches)
    assert train.skipped == [str(files["bad"])]


def test_image_folder_workers_give_the_same_batches(tmp_path):
    write_image_folder(tmp_path)
    (tmp_path / "train" / "bee" / "broken.JPEG").unlink()
    train = load_split(DataSpec("imagenet_folder", path=str(tmp_path), image_size=8), "train")
    serial = list(iterate_batches(train, 3, seed=1, epoch=4, start_batch=1))
    parallel = list(iterate_batches(train, 3, seed=1, epoch=4, start_batch=1, num_workers=2))
    assert len(serial) == 2
    for (xa, ya), (xb, yb) in zip(serial, parallel, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_image_folder_layout_errors(tmp_path):
    with pytest.raises(DataError, match="needs image_size"):
        load_split(DataSpec("imagenet_folder", path=str(tmp_path)), "train")
    with pytest.raises(DataError, match=r"train is missing.*<root>/train/<wnid>"):
        load_split(DataSpec("imagenet_folder", path=str(tmp_path), image_size=8), "train")
    (tmp_path / "val").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(DataError, match="no class sub-folders. It holds image files directly"):
        load_split(DataSpec("imagenet_folder", path=str(tmp_path), image_size=8), "test")
    (tmp_path / "train" / "ant").mkdir(parents=True)
    with pytest.raises(DataError, match="ant"):
        load_split(DataSpec("imagenet_folder", path=str(tmp_path), image_size=8), "train")


def test_image_folder_val_class_unknown_to_train(tmp_path):
    write_image_folder(tmp_path)
    (tmp_path / "val" / "dog").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "val" / "dog" / "a.png")
    with pytest.raises(DataError, match="dog"):
        load_split(DataSpec("imagenet_folder", path=str(tmp_path), image_size=8), "test")


# ---------------------------------------------------------------------------------------- downsampled ImageNet


def downsampled_batch(n: int, side: int, labels: list[int]) -> dict:
    """A batch in the release format: channels-first rows [n, 3*side*side], 1-based labels; image 0 has a red
    pixel at (row 1, column 2) and is black elsewhere."""
    data = np.random.default_rng(n).integers(0, 256, size=(n, 3 * side * side), dtype=np.uint8)
    data[0] = 0
    data[0, 0 * side * side + 1 * side + 2] = 255  # red plane first, then green, then blue
    return {"data": data, "labels": labels, "mean": np.zeros(3 * side * side)}


def test_downsampled_pickles_labels_and_red_pixel(tmp_path):
    for k, labels in ((1, [1, 3, 1000]), (2, [2, 5])):
        with open(tmp_path / f"train_data_batch_{k}", "wb") as handle:
            pickle.dump(downsampled_batch(len(labels), 4, labels), handle, protocol=2)
    with open(tmp_path / "val_data", "wb") as handle:
        pickle.dump(downsampled_batch(2, 4, [7, 8]), handle)  # default protocol 5
    train = load_split(DataSpec("imagenet_downsampled", path=str(tmp_path)), "train")
    assert train.input_shape == (3, 4, 4) and train.classes == 1000 and len(train) == 5
    assert train.y.tolist() == [0, 2, 999, 1, 4]  # 1-based labels made 0-based, batches in order
    x, _ = train[0]
    assert x[:, 1, 2].tolist() == [1.0, 0.0, 0.0] and x.sum() == 1.0
    test = load_split(DataSpec("imagenet_downsampled", path=str(tmp_path)), "test")
    assert test.y.tolist() == [6, 7] and test.x[0, :, 1, 2].tolist() == [1.0, 0.0, 0.0]


def test_downsampled_npz_variant_and_size_inference(tmp_path):
    batch = downsampled_batch(3, 8, [1, 2, 3])
    np.savez(tmp_path / "val_data.npz", data=batch["data"], labels=np.array(batch["labels"]))
    test = load_split(DataSpec("imagenet_downsampled", path=str(tmp_path)), "test")
    assert test.input_shape == (3, 8, 8) and test.y.tolist() == [0, 1, 2]
    assert test.x[0, :, 1, 2].tolist() == [1.0, 0.0, 0.0]


class _Exploit:
    def __reduce__(self):
        return os.system, ("touch pwned",)


def test_downsampled_refuses_code_in_pickles(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "val_data", "wb") as handle:
        pickle.dump({"data": _Exploit(), "labels": [1]}, handle)
    with pytest.raises(DataError, match="val_data: cannot read.*refusing to load global"):
        load_split(DataSpec("imagenet_downsampled", path=str(tmp_path)), "test")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    "batch, word",
    [
        ({"data": np.zeros((2, 50), np.uint8), "labels": [1, 2]}, "not 3\\*R\\*R"),
        ({"data": np.zeros((2, 48), np.uint8), "labels": [0, 2]}, "numbers classes from 1"),
        ({"data": np.zeros((2, 48), np.uint8), "labels": [1]}, "1 labels for 2 images"),
        ({"data": np.zeros((2, 48), np.uint8)}, "missing key 'labels'"),
    ],
)
def test_downsampled_bad_batches(tmp_path, batch, word):
    with open(tmp_path / "val_data", "wb") as handle:
        pickle.dump(batch, handle)
    with pytest.raises(DataError, match=word):
        load_split(DataSpec("imagenet_downsampled", path=str(tmp_path)), "test")
    with pytest.raises(DataError, match="no train batches"):
        load_split(DataSpec("imagenet_downsampled", path=str(tmp_path)), "train")


# ------------------------------------------------------------------------------------------ cifar10 (torchvision)


def test_cifar10_missing_copy_says_what_to_do(tmp_path):
    with pytest.raises(DataError, match="download=True.*kind='npz'"):
        load_split(DataSpec("cifar10", path=str(tmp_path)), "train")


def test_cifar10_converts_torchvision_arrays(tmp_path, monkeypatch):
    # Fake batches in the python release format; the md5 check is switched off because they are not the real ones.
    import torchvision.datasets.cifar as cifar_module
    from torchvision.datasets import CIFAR10

    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(cifar_module, "check_integrity", lambda path, md5=None: os.path.isfile(path))
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    data = np.zeros((2, 3072), np.uint8)
    data[1, 0 * 1024 + 5 * 32 + 7] = 255  # image 1: red pixel at row 5, column 7
    with open(folder / "test_batch", "wb") as handle:
        pickle.dump({"data": data, "labels": [3, 8]}, handle)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": [str(i) for i in range(10)]}, handle)
    test = load_split(DataSpec("cifar10", path=str(tmp_path)), "test")
    assert test.input_shape == (3, 32, 32) and test.classes == 10 and test.y.tolist() == [3, 8]
    assert test.x[1, :, 5, 7].tolist() == [1.0, 0.0, 0.0] and test.x.sum() == 1.0


# ------------------------------------------------------------------------------------------------ digits, random


def test_digits_split_is_fixed_disjoint_and_in_range():
    train = load_split(DataSpec("digits"), "train")
    test = load_split(DataSpec("digits"), "test", seed=5)
    assert (len(train), len(test)) == (1437, 360)
    assert train.input_shape == (1, 8, 8) and train.classes == test.classes == 10
    assert float(train.x.min()) == 0.0 and float(train.x.max()) == 1.0 and train.x.dtype == torch.float32
    assert torch.bincount(test.y).tolist() == [36] * 10
    labels = np.asarray(load_digits().target)
    index = split_indices(labels)
    assert not set(index["train"]) & set(index["test"])
    assert len(set(index["train"]) | set(index["test"])) == 1797
    again = load_split(DataSpec("digits"), "test")
    assert torch.equal(again.x, test.x) and torch.equal(again.y, test.y)


def test_random_is_seeded_and_splits_differ():
    spec = DataSpec("random", classes=4, input_shape=(2, 3, 5), size=10)
    a, b = load_split(spec, "train", seed=1), load_split(spec, "train", seed=1)
    test = load_split(spec, "test", seed=1)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, test.x)
    assert a.input_shape == (2, 3, 5) and len(a) == 10 and int(a.y.max()) < 4
    assert 0 <= float(a.x.min()) and float(a.x.max()) < 1
    assert len(load_split(DataSpec("random", classes=2, input_shape=(1, 2, 2)), "test")) == 256


# ------------------------------------------------------------------------------------------------ iterate_batches


@pytest.fixture
def indexed():
    """23 samples whose pixel value and label are both the sample index."""
    x = torch.arange(23, dtype=torch.float32).view(23, 1, 1, 1).expand(23, 1, 2, 2).contiguous()
    return TensorImageDataset(x, torch.arange(23), classes=23)


def ids(batches) -> list[list[int]]:
    return [y.tolist() for _, y in batches]


def test_batches_deterministic_per_seed_and_epoch(indexed):
    first = ids(iterate_batches(indexed, 5, seed=7, epoch=2))
    assert first == ids(iterate_batches(indexed, 5, seed=7, epoch=2))
    assert first != ids(iterate_batches(indexed, 5, seed=7, epoch=3))
    assert first != ids(iterate_batches(indexed, 5, seed=8, epoch=2))
    assert [len(b) for b in first] == [5, 5, 5, 5, 3]
    assert sorted(sum(first, [])) == list(range(23))  # every sample exactly once
    for x, y in iterate_batches(indexed, 5, seed=7, epoch=2):
        assert x.shape == (len(y), 1, 2, 2) and x.dtype == torch.float32 and y.dtype == torch.int64
        assert torch.equal(x[:, 0, 0, 0], y.float())  # images travel with their labels


def test_batches_resume_gives_the_tail(indexed):
    full = list(iterate_batches(indexed, 4, seed=0, epoch=5))
    for start in range(len(full) + 1):
        tail = list(iterate_batches(indexed, 4, seed=0, epoch=5, start_batch=start))
        assert len(tail) == len(full) - start
        for (xa, ya), (xb, yb) in zip(full[start:], tail, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    with pytest.raises(DataError, match="start_batch 7"):
        list(iterate_batches(indexed, 4, seed=0, epoch=5, start_batch=7))


def test_batches_drop_last_no_shuffle_and_counts(indexed):
    assert count_batches(indexed, 5, drop_last=False) == 5 and count_batches(indexed, 5, drop_last=True) == 4
    kept = ids(iterate_batches(indexed, 5, seed=0, epoch=0, drop_last=True))
    assert len(kept) == 4 and all(len(b) == 5 for b in kept)
    assert sum(ids(iterate_batches(indexed, 5, seed=0, epoch=0, shuffle=False)), []) == list(range(23))
    with pytest.raises(DataError, match="batch_size"):
        count_batches(indexed, 0)
    with pytest.raises(DataError, match="seed"):
        list(iterate_batches(indexed, 5, seed=-1, epoch=0))


def test_batches_from_a_plain_dataset_follow_the_same_order(indexed):
    plain = TensorDataset(indexed.x, indexed.y)
    assert ids(iterate_batches(plain, 6, seed=2, epoch=1)) == ids(iterate_batches(indexed, 6, seed=2, epoch=1))


def test_uint8_storage_gives_the_same_batches(tmp_path, monkeypatch):
    write_npz_folder(tmp_path)
    spec = DataSpec("npz", path=str(tmp_path), normalize="imagenet")
    as_float = load_split(spec, "train")
    monkeypatch.setattr(dataset_module, "FLOAT_COPY_LIMIT_BYTES", 0)
    as_bytes = load_split(spec, "train")
    assert as_bytes.x.dtype == torch.uint8 and as_float.x.dtype == torch.float32
    assert torch.equal(as_bytes[2][0], as_float[2][0])
    for (xa, ya), (xb, yb) in zip(
        iterate_batches(as_float, 2, seed=0, epoch=0),
        iterate_batches(as_bytes.to("cpu"), 2, seed=0, epoch=0),
        strict=True,
    ):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
