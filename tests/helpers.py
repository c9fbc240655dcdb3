"""Small builders shared by the tests (no fixtures with hidden state)."""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import yaml

from sim import Network, Scheduler, get_rule, preset
from sim import checkpoint as ckpt_io
from sim.archive import EPOCH_METRICS, LayerInfo, Lengths, RunArchive, open_run


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
