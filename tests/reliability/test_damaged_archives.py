"""Damaged archives are never read as results (docs/reliability.md; issue 14 part 2): every reader that calls a store
a result checks the checksums its run wrote; a damaged store is named with its damaged array and left out."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest

from analysis import DamagedStoreError, DamagedStoreWarning, load_study
from sim.archive import DIGESTS_ATTR, ArchiveError, open_run, read_attrs, verify_store
from sim.cli import main as sim_main
from sim.run import run
from tests.faultinject import truncate


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """A study of two tiny complete runs (seeds 0 and 1), made once; tests damage copies of it."""
    import copy

    from tests.conftest import TINY

    root = tmp_path_factory.mktemp("study") / "quick"
    for seed in (0, 1):
        doc = copy.deepcopy(TINY)
        doc["train"]["seed"] = seed
        run(doc, root / "deep" / "rule~gp" / f"seed~{seed}" / "run.zarr", progress=False)
    return root


@pytest.fixture
def copy_of(study, tmp_path) -> Path:
    dst = tmp_path / "quick"
    shutil.copytree(study, dst)
    return dst


def _store(root: Path, seed: int) -> Path:
    return root / "deep" / "rule~gp" / f"seed~{seed}" / "run.zarr"


DAMAGE = {
    "chunk deleted": lambda p: p.unlink(),
    "chunk truncated": lambda p: truncate(p, 0.5),
    # decodes fine, holds other values: the same chunk of the other seed's run
    "chunk overwritten": lambda p: shutil.copyfile(str(p).replace("seed~0", "seed~1"), p),
}


def test_an_intact_store_verifies_and_keeps_its_digests_out_of_the_dataset(study):
    store = _store(study, 0)
    assert verify_store(store) == []
    assert DIGESTS_ATTR in read_attrs(store)
    assert DIGESTS_ATTR not in open_run(store).attrs


@pytest.mark.parametrize(("chunk", "damage"), [
    (chunk, damage) for chunk in ("test_top1/c/0", "loss/c/1", "layer/c/0") for damage in sorted(DAMAGE)
    if not (chunk == "layer/c/0" and damage == "chunk overwritten")])  # the layer names are the same in both runs
def test_a_damaged_store_is_named_and_left_out_the_rest_of_the_study_loads(copy_of, damage, chunk):
    DAMAGE[damage](_store(copy_of, 0) / chunk)
    name = chunk.split("/")[0]
    with pytest.raises(DamagedStoreError, match=name) as info:
        open_run(_store(copy_of, 0))
    assert str(_store(copy_of, 0)) in str(info.value)
    with pytest.warns(DamagedStoreWarning, match=f"(?s){_store(copy_of, 0)}.*{name}"):
        ds = load_study(copy_of)
    assert ds.seed.values.tolist() == [1]  # never padded with fill values: the damaged run is not there at all
    assert ds.attrs["damaged"] == [str(_store(copy_of, 0))]
    assert int(ds.sizes["epoch"]) == 2 and not ds.test_top1.isnull().any()
    with pytest.raises(DamagedStoreError, match=name):
        load_study(copy_of, on_damaged="raise")


def test_verify_false_is_the_escape(copy_of):
    (_store(copy_of, 0) / "test_top1" / "c" / "0").unlink()
    ds = open_run(_store(copy_of, 0), verify=False)  # read as it is: the missing chunk is zarr's fill value
    assert ds.test_top1.isnull().all()


def test_a_truncated_chunk_read_unverified_is_still_no_codec_traceback(copy_of):
    truncate(_store(copy_of, 0) / "loss" / "c" / "0", 0.5)
    with pytest.warns(DamagedStoreWarning, match="loss|cannot be decoded"):
        ds = load_study(copy_of, verify=False)
    assert ds.seed.values.tolist() == [1]


def test_analysis_cli_names_the_damaged_store_and_draws_the_rest(copy_of, tmp_path, capsys):
    from analysis.__main__ import main

    truncate(_store(copy_of, 0) / "test_top1" / "c" / "0", 0.3)
    assert main([str(copy_of), "--out", str(tmp_path / "out"), "--figure", "accuracy"]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "damaged" in err and "test_top1" in err and "Traceback" not in err
    table = (tmp_path / "out" / "table.md").read_text()
    assert "seed" in table or "gp" in table


def test_analysis_cli_all_damaged_is_one_error_line(copy_of, tmp_path, capsys):
    from analysis.__main__ import main

    for seed in (0, 1):
        (_store(copy_of, seed) / "test_top1" / "c" / "0").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([str(copy_of), "--out", str(tmp_path / "out")]) == 2
    assert "error: no complete, intact run stores" in capsys.readouterr().err


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_resume_of_a_complete_store_without_checkpoints_checks_the_archive(copy_of, tmp_path, capsys, damage):
    import yaml

    from tests.conftest import TINY

    store = _store(copy_of, 0)
    shutil.rmtree(store / "_checkpoints")
    DAMAGE[damage](store / "test_top1" / "c" / "0")
    with pytest.raises(ArchiveError, match="(?s)marked complete but its archive is damaged.*test_top1"):
        run(TINY, store, resume=True, progress=False)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    assert sim_main(["run", str(cfg), "--out", str(store), "--resume", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "already complete" not in err and "damaged" in err and "test_top1" in err


def test_resume_of_an_intact_complete_store_without_checkpoints_is_done(copy_of, capsys):
    from tests.conftest import TINY

    store = _store(copy_of, 0)
    shutil.rmtree(store / "_checkpoints")
    run(TINY, store, resume=True)
    assert "already complete" in capsys.readouterr().err
