"""Small builders shared by the tests (no fixtures with hidden state)."""

from __future__ import annotations

import copy
import json
import math
import os
import pickle
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import xarray as xr
import yaml

from sim import Network, Scheduler, get_rule, preset
from sim import checkpoint as ckpt_io
from sim.activation import LINEAR
from sim.archive import EPOCH_METRICS, LayerInfo, Lengths, RunArchive, open_run
from sim.layers import Conv


def settings_for(rules, **changes) -> dict:
    """Reference settings of every named rule with ``changes`` applied (e.g. arithmetic='target')."""
    names = {rules} if isinstance(rules, str) else set(rules)
    return {r: replace(get_rule(r).defaults, **changes) for r in names}


def build(name: str, rules, *, dtype: str = "float64", seed: int = 0, **changes) -> Network:
    """A fresh network: a deep copy of a cached float64 build (orthogonal init of 1024-wide layers is slow on this
    CPU), cast to ``dtype``, with ``changes`` applied to every rule's settings. Init is done in float64 and cast
    in ``Network`` too, so this equals building the network directly."""
    key = (name, rules if isinstance(rules, str) else tuple(rules), seed)
    if key not in _CACHE:
        _CACHE[key] = Network(preset(name, rules, dtype="float64", seed=seed))
    net = copy.deepcopy(_CACHE[key]).to({"float32": torch.float32, "float64": torch.float64}[dtype])
    for rule in net.rules:
        rule.settings = replace(rule.settings, **changes)
    return net


_CACHE: dict = {}


def perturb(net: Network, scale: float, seed: int = 1) -> None:
    """Add ``scale / sqrt(fan_in)`` Gaussian noise to every weight (the reference table's 'small perturbation')."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in net.layers:
            w = layer.weight
            fan_in = math.prod(w.shape[1:])
            w.add_((torch.randn(w.shape, generator=g, dtype=torch.float64) * scale / math.sqrt(fan_in)).to(w.dtype))


def batch(net: Network, n: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, *net.config.input_shape), generator=g, dtype=torch.float64).to(net.dtype)
    y = torch.randint(0, net.classes, (n,), generator=g)
    return x, y


def scheduler(net: Network, **kw) -> Scheduler:
    return Scheduler(net, **kw)


def write_config(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def data_vars(ds, skip=("epoch_wall_s",)):
    return {k: ds[k].values for k in list(ds.data_vars) + list(ds.coords) if k not in skip}


def assert_same_archive(a: Path, b: Path) -> None:
    """Two run stores hold the same variables, values and attributes (wall times, device and timestamps aside)."""
    da, db = open_run(a), open_run(b)
    va, vb = data_vars(da), data_vars(db)
    assert set(va) == set(vb)
    for k in va:
        assert va[k].dtype == vb[k].dtype, k
        assert np.array_equal(va[k], vb[k], equal_nan=va[k].dtype.kind == "f"), k
    times = {"start_time", "end_time", "device"}
    assert {k: v for k, v in da.attrs.items() if k not in times} == \
           {k: v for k, v in db.attrs.items() if k not in times}


# ----- run stores and checkpoints without training (tests/test_archive.py, tests/reliability/) -----------------------
LAYERS = [LayerInfo("dense1", "fa", False, (6,)), LayerInfo("conv2", "gp", True, (4, 3, 3)),
          LayerInfo("output", "gp", True, (5,))]


def make_archive(path, probe=3) -> RunArchive:
    """A run store of LAYERS (a dense, a conv and an output layer) with 4 steps per epoch, no training behind it."""
    return RunArchive.create(path, layers=LAYERS, steps_per_epoch=4, activity_dtype="float32",
                             probe_labels=np.arange(probe) if probe else None, attrs={"config": "{}", "name": "t"})


def add_epoch(archive: RunArchive, epoch: int, steps: int = 4) -> None:
    """Append one epoch of made-up rows (steps, epoch metrics, a probe) to a ``make_archive`` store."""
    first = archive.lengths.steps
    archive.append_steps(first_step=first, epoch=epoch, loss=np.linspace(1, 2, steps), batch_size=np.full(steps, 8),
                         angle=np.full((steps, 3), float(epoch)))
    archive.append_epoch(epoch, {k: epoch / 10 for k in EPOCH_METRICS}, np.array([np.nan, 0.1, 0.2]))
    archive.append_probe(epoch, first + steps, [np.full((3, 6), epoch), np.full((3, 4, 3, 3), epoch),
                                                np.full((3, 5), epoch)],
                         [np.full((3, 6), epoch + 0.5), np.full((3, 4, 3, 3), epoch + 0.5), np.full((3, 5), epoch)])


def checkpoint_at(step: int) -> ckpt_io.Checkpoint:
    """A small checkpoint whose weights and generator state are those of ``step``."""
    return ckpt_io.Checkpoint(config_json="{}", epochs_done=step, batches_done=0, step=step,
                              lengths=Lengths(step, 1, 0), network={"w": torch.full((2, 2), float(step))},
                              scheduler={"generator": torch.Generator().manual_seed(step).get_state(), "step": step},
                              torch_rng=torch.get_rng_state(), numpy_rng=ckpt_io.numpy_rng_state())


# ----- conv layers and nets (tests/oracles/test_conv.py, tests/layers/test_conv.py) ---------------------------------
F64 = torch.float64

# (C, k, s, H, W): the REFERENCE section 4 cases, then every (kernel, stride) of the ImageNet net at odd and even
# sizes (and a non-square map), so every padding split (even/odd total) is exercised.
CASES = [
    (3, 3, 2, 16, 16), (4, 5, 2, 15, 15), (2, 3, 1, 9, 9), (3, 9, 4, 32, 32), (2, 3, 2, 7, 7),
    (3, 3, 2, 17, 17), (3, 3, 2, 8, 8), (4, 5, 2, 16, 16), (4, 5, 2, 9, 9), (2, 3, 1, 10, 10), (2, 3, 1, 7, 7),
    (3, 3, 2, 12, 9), (2, 5, 2, 7, 10),
]
CASE_IDS = [f"C{c}k{k}s{s}H{h}W{w}" for c, k, s, h, w in CASES]


def gen(seed: int = 0) -> torch.Generator:
    """A CPU generator seeded with ``seed``."""
    return torch.Generator().manual_seed(seed)


def square_conv(c: int, k: int, s: int, h: int, w: int, *, activation=LINEAR, perturb: float = 0.0,
                seed: int = 0) -> Conv:
    """A float64 square conv layer; ``perturb`` > 0 makes M non-orthogonal and the bias non-zero."""
    layer = Conv("conv", (c, h, w), max(1, c), k, s, square=True, activation=activation, dtype=F64,
                 generator=gen(seed))
    if perturb:
        g = gen(seed + 1)
        with torch.no_grad():
            layer.weight.add_(perturb * torch.randn(layer.weight.shape, generator=g, dtype=F64))
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=g, dtype=F64))
    return layer


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """The relative error ``|a - b| / |b|``."""
    return (torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b)).item()


def conv_batch(net: Network, n: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` float inputs of the net's input shape and integer labels, seeded."""
    g = gen(seed)
    x = torch.randn(n, *net.config.input_shape, generator=g, dtype=net.dtype)
    y = torch.randint(0, net.classes, (n,), generator=g)
    return x, y


def small_imagenet(rules, **kw) -> Network:
    """The ImageNet conv preset at 65x65 pixels, a quarter of the filters, 10 classes, float64 by default."""
    kw.setdefault("dtype", "float64")
    return Network(preset("imagenet_conv", rules, image_size=65, width_mult=0.25, classes=10, **kw))


# ----- crafted stores (nothing loaded may run: tests/reliability/test_loaded_code.py, tests.faultinject) -----------
class _Boom:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_store(path: Path) -> Path:
    ds = xr.Dataset({"loss": ("step", np.linspace(2.0, 1.0, 8)), "test_top1": ("epoch", [0.5, 0.6])},
                    coords={"step": np.arange(8), "epoch": [1, 2], "layer": ["dense1", "output"]},
                    attrs={"config": json.dumps({"data": {"kind": "digits"}, "rules": "gp"}), "complete": True})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.to_zarr(path, mode="w", consolidated=True)
    return path


def plant_pickle(store: Path, marker: Path) -> None:
    """Make ``loss`` decode through the pickle codec, with a chunk that runs ``touch marker`` when unpickled; in the
    array's ``zarr.json`` and in the consolidated copy that readers use."""
    codecs = [{"name": "numcodecs.pickle", "configuration": {"protocol": 5}}]
    meta = store / "loss" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["codecs"] = codecs
    meta.write_text(json.dumps(doc))
    root = json.loads((store / "zarr.json").read_text())
    root["consolidated_metadata"]["metadata"]["loss"]["codecs"] = codecs
    (store / "zarr.json").write_text(json.dumps(root))
    for chunk in (store / "loss" / "c").iterdir():
        chunk.write_bytes(pickle.dumps(_Boom(str(marker))))


# ----- a folder of real JPEGs (tests/data/test_loader.py, tests/test_bench_data.py) ----------------------------------
def write_jpeg_folder(root: Path, *, classes: int = 3, train: int = 8, val: int = 2, size: int = 32) -> Path:
    """An ImageNet-style folder ``root/{train,val}/<wnid>/*.JPEG`` of real JPEGs: scikit-learn's embedded digits
    (8x8, ink 0..16) scaled up to ``size`` x ``size`` RGB, digit ``c`` in class folder ``n0000000c`` (label c), the
    first ``train`` images of each digit in train and the next ``val`` in val. Returns ``root``."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for c in range(classes):
        members = np.flatnonzero(digits.target == c)[: train + val]
        for j, i in enumerate(members):
            split = "train" if j < train else "val"
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            gray = Image.fromarray((digits.images[i] * (255 / 16)).astype(np.uint8))
            gray.resize((size, size), Image.BILINEAR).convert("RGB").save(folder / f"img{j:03d}.JPEG", quality=90)
    return root
