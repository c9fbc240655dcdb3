"""``train.init_from``: a run starts from another run store's trained weights (its newest intact checkpoint), and
everything that cannot be started from is refused before any store is touched."""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
import torch
import xarray as xr

from sim.errors import ConfigError
from sim.run import run


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A finished 2-epoch GP run on the digits (float64), and its config: trained once for the module's tests,
    which only read it (the one that passes it as its own output is refused before touching it)."""
    from tests.conftest import TINY

    cfg = copy.deepcopy(TINY)
    cfg["train"] = {"epochs": 2, "batch_size": 32, "seed": 0, "dtype": "float64"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run(cfg, tmp_path_factory.mktemp("source") / "source.zarr", progress=False), cfg
    finally:
        torch.set_num_threads(threads)


def test_a_run_starts_from_the_source_weights(tmp_path, tiny_config, source):
    """The probe batch (the same samples: same seed) seen by the new run before its first step is the one the
    source saw after its last epoch, bit for bit; the store records where its weights came from."""
    src, _ = source
    cfg = tiny_config(train={"epochs": 1, "batch_size": 32, "seed": 0, "dtype": "float64", "init_from": str(src)},
                      record={"angle_every": 7, "probe_size": 8, "probe_epochs": [0, 1], "checkpoint_every": 1})
    out = run(cfg, tmp_path / "continued.zarr", progress=False)
    with xr.open_zarr(src) as a, xr.open_zarr(out) as b:
        for layer in ("dense1", "dense2", "dense3", "output"):
            np.testing.assert_array_equal(b[f"activity_{layer}"].sel(probe_epoch=0).values,
                                          a[f"activity_{layer}"].sel(probe_epoch=2).values)
        taken = json.loads(b.attrs["init_from"])
        steps = a.sizes["step"]
    assert taken == {"path": str(src), "step": steps, "epochs_done": 2, "name": taken["name"]} and taken["name"]


def test_without_it_the_run_starts_from_the_initialisation(tmp_path, tiny_config, source):
    """The control of the test above: the same run without init_from does not see the source's activities."""
    src, _ = source
    cfg = tiny_config(train={"epochs": 1, "batch_size": 32, "seed": 0, "dtype": "float64"},
                      record={"angle_every": 7, "probe_size": 8, "probe_epochs": [0, 1], "checkpoint_every": 1})
    out = run(cfg, tmp_path / "fresh.zarr", progress=False)
    with xr.open_zarr(src) as a, xr.open_zarr(out) as b:
        assert not np.array_equal(b.activity_dense1.sel(probe_epoch=0).values,
                                  a.activity_dense1.sel(probe_epoch=2).values)
        assert "init_from" not in b.attrs


def _with_init_from(tiny_config, path, **network):
    doc = tiny_config(train={"epochs": 1, "batch_size": 32, "seed": 0, "dtype": "float64", "init_from": str(path)},
                      record={"angle_every": 7, "probe_size": 8, "probe_epochs": [0, 1], "checkpoint_every": 1})
    if network:
        doc["network"] = network
    return doc


def test_what_cannot_be_started_from_is_refused(tmp_path, tiny_config, source):
    src, _ = source
    out = tmp_path / "out.zarr"
    with pytest.raises(ConfigError, match=r"train\.init_from: .*missing\.zarr does not exist"):
        run(_with_init_from(tiny_config, tmp_path / "missing.zarr"), out, progress=False)
    with pytest.raises(ConfigError, match=r"train\.init_from: a{200} cannot be looked up \(File name too long\)"):
        run(_with_init_from(tiny_config, "a" * 5000), out, progress=False)
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.txt").write_text("not a store")
    with pytest.raises(ConfigError, match=r"train\.init_from: .*folder is not a gaitsim run store"):
        run(_with_init_from(tiny_config, tmp_path / "folder"), out, progress=False)
    bare = tmp_path / "bare.zarr"
    shutil.copytree(src, bare)
    shutil.rmtree(bare / "_checkpoints")
    with pytest.raises(ConfigError, match=r"train\.init_from: .*bare\.zarr holds no checkpoint"):
        run(_with_init_from(tiny_config, bare), out, progress=False)
    with pytest.raises(ConfigError, match=r"do not fit this network \(layers 0=dense1, .* 6=output\): "
                                          r"layers\.4\.weight is missing from it"):
        run(_with_init_from(tiny_config, src, preset="digits_deep"), out, progress=False)
    assert not out.exists()  # refused before the store was made


def test_its_own_store_is_refused_and_kept(tmp_path, tiny_config, source):
    src, cfg = source
    before = sorted(p.name for p in src.iterdir())
    with pytest.raises(ConfigError, match=r"train\.init_from: .*the store this run writes"):
        run(_with_init_from(tiny_config, src), src, overwrite=True, progress=False)
    assert sorted(p.name for p in src.iterdir()) == before
    with xr.open_zarr(src) as ds:
        assert ds.attrs["complete"] is True
