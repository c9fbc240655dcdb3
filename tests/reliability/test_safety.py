"""Safe loading and confined outputs (docs/reliability.md), and the bad-input table (docs/bad_input.md): a checkpoint
that would run code is refused without running it; YAML cannot construct Python objects; nothing in ``sim/`` evals,
execs or unpickles freely; every file a run writes stays inside the store or beside it; every row of the bad-input
table is what a real run prints today."""

from __future__ import annotations

import ast
import copy
import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import sim
from sim import checkpoint as ckpt_io
from sim.archive import ArchiveError, LayerInfo, RunArchive, open_run
from sim.config import load_config
from sim.errors import ConfigError
from sim.run import run
from tests import faultinject
from tests.conftest import TINY

pytestmark = pytest.mark.usefixtures("one_thread")

SIM = Path(sim.__file__).resolve().parent
SMALL = copy.deepcopy(TINY)
SMALL.update(data={"kind": "digits", "size": 320}, train={"epochs": 2, "batch_size": 32, "seed": 0})


class _RunsCode:
    """Pickles to a call of ``os.system``: what a booby-trapped checkpoint would hold."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ----- checkpoints ---------------------------------------------------------------------------------------------------
def _plant(store: Path, payload) -> Path:
    """Write ``payload`` as the store's last.pt and list its checksum in the manifest, so that only
    ``weights_only=True`` stands between the file and the unpickler."""
    path = ckpt_io.checkpoint_path(store)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    manifest = ckpt_io.manifest_path(store)
    doc = json.loads(manifest.read_text()) if manifest.exists() else {"format": 2, "checkpoints": []}
    doc["checkpoints"].insert(0, {"sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    manifest.write_text(json.dumps(doc))
    return path


def test_a_checkpoint_that_would_run_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = _plant(tmp_path, {"format": 2, "payload": _RunsCode(marker)})
    with pytest.raises(ArchiveError) as info:
        ckpt_io.load(tmp_path)
    msg = str(info.value)
    assert str(path) in msg and "refused, not unpickled" in msg and "posix.system" in msg
    assert not marker.exists()
    # the same file in a run store: the run passes over it (naming it) for the previous checkpoint, and runs nothing
    store = tmp_path / "run.zarr"
    doc = copy.deepcopy(SMALL)
    doc["train"]["epochs"] = 3
    run(doc, store, progress=False)
    _plant(store, {"format": 2, "payload": _RunsCode(marker)})
    from sim.run.recovery import resume_point

    checkpoint, _ = resume_point(load_config(doc), store)
    assert checkpoint.path == ckpt_io.previous_path(store) and not marker.exists()


def test_checkpoints_hold_only_tensors_and_plain_values(tmp_path):
    store = run(SMALL, tmp_path / "run.zarr", progress=False)
    for path in (ckpt_io.checkpoint_path(store), ckpt_io.previous_path(store)):
        state = torch.load(path, weights_only=True)  # would raise on anything else
        assert state["format"] == ckpt_io.FORMAT and state["digests"]


# ----- YAML ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tag", [
    '!!python/object/apply:os.system ["touch {marker}"]',
    '!!python/object/new:os.system ["touch {marker}"]',
    "!!python/name:os.system",
    '!!python/object:tests.test_safety._RunsCode {{marker: "{marker}"}}',
    "!!python/module:os",
])
def test_yaml_cannot_construct_python_objects(tmp_path, tag):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(f"network: {{preset: digits_shallow}}\nrules: gp\ndata: {{kind: digits}}\n"
                    f"train: {tag.format(marker=marker)}\n")
    with pytest.raises(ConfigError, match=r"is not valid YAML: could not determine a constructor for the tag"):
        load_config(path)
    assert not marker.exists()


# ----- no eval, exec or free unpickling in the package ---------------------------------------------------------------
def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else (
                f"{f.value.id}.{f.attr}" if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else None)
            if name:
                yield name, node


def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value
    return None


SOURCES = sorted(SIM.rglob("*.py"))


def test_the_package_never_evals_execs_or_unpickles_freely():
    """Parsed, not grepped: comments and strings cannot trip it, and no call can hide behind formatting."""
    problems = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        where = path.relative_to(SIM.parent)
        for name, call in _calls(tree):
            at = f"{where}:{call.lineno}"
            if name in ("eval", "exec", "compile", "__import__", "os.system", "os.popen", "pickle.load",
                        "pickle.loads", "marshal.load", "marshal.loads", "yaml.unsafe_load", "yaml.full_load",
                        "shelve.open", "dill.load", "dill.loads"):
                problems.append(f"{at}: {name}()")
            elif name == "torch.load":
                value = _keyword(call, "weights_only")
                if not (isinstance(value, ast.Constant) and value.value is True):
                    problems.append(f"{at}: torch.load without weights_only=True")
            elif name == "np.load":
                value = _keyword(call, "allow_pickle")
                if not (isinstance(value, ast.Constant) and value.value is False):
                    problems.append(f"{at}: np.load without allow_pickle=False")
            elif name in ("yaml.load", "yaml.load_all"):
                loader = _keyword(call, "Loader")
                loader = ast.unparse(loader) if loader is not None else None
                if loader not in ("_Loader", "yaml.SafeLoader", "yaml.CSafeLoader"):
                    problems.append(f"{at}: {name} with Loader={loader}")
            elif name.startswith("subprocess.") and isinstance(_keyword(call, "shell"), ast.Constant) and \
                    _keyword(call, "shell").value:
                problems.append(f"{at}: {name}(shell=True)")
        # an Unpickler is allowed only as a subclass that decides which globals it resolves
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and any("Unpickler" in ast.unparse(b) for b in node.bases):
                if not any(isinstance(f, ast.FunctionDef) and f.name == "find_class" for f in node.body):
                    problems.append(f"{where}:{node.lineno}: {node.name} unpickles without find_class")
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "pickle.Unpickler":
                problems.append(f"{where}:{node.lineno}: a plain pickle.Unpickler")
    assert not problems, "\n".join(problems)


def test_the_yaml_loader_is_a_safe_loader():
    import yaml

    from sim.config import _Loader

    assert issubclass(_Loader, yaml.SafeLoader)


# ----- outputs stay where they were asked to go ----------------------------------------------------------------------
def _tree(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def test_every_file_a_run_writes_is_in_the_store_or_beside_it(tmp_path):
    out = tmp_path / "deep" / "runs"
    out.mkdir(parents=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    before = _tree(tmp_path)
    doc = copy.deepcopy(SMALL)
    doc["name"] = "paper/cifar/rule~gp/seed~1"  # workflow names hold slashes; they never become paths
    store = out / "run.zarr"
    run(doc, store, progress=False)
    run(doc, store, overwrite=True, progress=False)  # the old store is renamed aside and deleted, beside it
    new = _tree(tmp_path) - before
    beside = {Path(f"{store}.log"), store.with_name(f".{store.name}.lock")}  # the log, and the one-writer lock
    assert new and all(p == store or store in p.parents or p in beside for p in new), \
        sorted(p for p in new if store not in p.parents)
    assert not list(outside.iterdir())


@pytest.mark.parametrize("name", ["../../etc", "/abs/name", "a/../../b", "..", "line\nbreak", "tab\there", ""])
def test_run_names_that_could_be_taken_for_paths_are_refused(tiny_config, name):
    with pytest.raises(ConfigError, match="name"):
        load_config(tiny_config(name=name))


@pytest.mark.parametrize("layer", ["../evil", "dense1/../../x", "a b", "", "x" * 65, ".hidden", "1dense"])
def test_archive_names_from_layer_names_are_sanitised(tmp_path, layer):
    before = _tree(tmp_path)
    with pytest.raises(ArchiveError, match="layer name"):
        RunArchive.create(tmp_path / "a.zarr", layers=[LayerInfo(layer, "bp", False, (3,)),
                                                       LayerInfo("output", "bp", False, (2,))],
                          steps_per_epoch=1, probe_labels=np.arange(2), activity_dtype="float32", attrs={})
    assert _tree(tmp_path) == before  # refused before anything is written


def test_duplicate_layer_names_are_refused(tmp_path):
    with pytest.raises(ArchiveError, match="not unique"):
        RunArchive.create(tmp_path / "a.zarr", layers=[LayerInfo("d", "bp", False, (3,))] * 2, steps_per_epoch=1,
                          probe_labels=None, activity_dtype="float32", attrs={})


def test_overwrite_through_a_symlink_deletes_the_link_not_its_target(tmp_path):
    target = run(SMALL, tmp_path / "precious.zarr", progress=False)
    link = tmp_path / "link.zarr"
    link.symlink_to(target, target_is_directory=True)
    run(SMALL, link, overwrite=True, progress=False)
    assert not link.is_symlink() and link.is_dir()  # a new store where the link was
    assert open_run(target).attrs["complete"] is True  # the store it pointed to is untouched


# ----- the bad-input table ------------------------------------------------------------------------------------------
TABLE = faultinject.table_rows()
CASES = {case.id: case for case in faultinject.BAD_INPUTS}
_NUMBER = re.compile(r"\d+\.\d+e[+-]\d+")  # condition numbers: LAPACK builds differ in the last digits


def test_the_table_lists_every_bad_input_once():
    assert list(TABLE) == [case.id for case in faultinject.BAD_INPUTS], \
        "docs/bad_input.md is out of date: run python -m tests.faultinject"
    assert len(TABLE) >= 30


@pytest.mark.parametrize("case", [pytest.param(c, marks=[pytest.mark.slow] if c.runs else [], id=c.id)
                                  for c in faultinject.BAD_INPUTS])
def test_the_table_shows_what_a_real_run_prints(case, tmp_path):
    if case.id == "cli-no-cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    seen = faultinject.produce(case, tmp_path.resolve())
    documented = TABLE[case.id][1]
    assert _NUMBER.sub("N", seen) == _NUMBER.sub("N", documented), \
        f"docs/bad_input.md row {case.id} is out of date (run python -m tests.faultinject):\n{seen}"
    assert not (tmp_path / "pwned").exists()


def test_the_fault_sites_are_documented():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "reliability.md").read_text()
    from sim import faults

    for site in faults.SITES:
        assert f"`{site}`" in doc, site
