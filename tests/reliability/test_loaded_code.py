"""Nothing loaded is executed (issue 14, part 5): a run store whose metadata names a codec that could run code
(zarr v3 ``numcodecs.pickle``, zarr v2 object codecs) is refused by ``python -m analysis`` and by a resume before a
chunk is decoded, whatever the installed numcodecs would allow; the dependency floors close the library-side holes."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from packaging.requirements import Requirement
from packaging.version import Version

from sim.archive import ArchiveError, RunArchive, check_codecs, open_run
from tests.helpers import plant_pickle, write_store

ROOT = Path(__file__).resolve().parents[2]


def test_crafted_store_is_refused_by_analysis_and_nothing_runs(tmp_path):
    store = write_store(tmp_path / "results" / "quick" / "deep" / "rule~gp" / "seed~0" / "run.zarr")
    marker = tmp_path / "pwned"
    plant_pickle(store, marker)
    # as if the installed numcodecs still unpickled (numcodecs < 0.15.2, 0.16.0-0.16.5, 0.17.0)
    env = {**os.environ, "NUMCODECS_ALLOW_UNSAFE_PICKLE_DECODE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "analysis", str(tmp_path / "results" / "quick")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "codec 'numcodecs.pickle'" in errors[0] and "refused before anything is decoded" \
        in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not marker.exists()
    with pytest.raises(ArchiveError, match="numcodecs.pickle"):
        open_run(store)
    with pytest.raises(ArchiveError, match="numcodecs.pickle"):  # a --resume opens the store this way
        RunArchive.open(store)
    assert not marker.exists()


def test_zarr_v2_metadata_is_refused(tmp_path):
    store = tmp_path / "v2.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        xr.Dataset({"x": ("i", np.arange(3))}).to_zarr(store, mode="w", zarr_format=2, consolidated=True)
    with pytest.raises(ArchiveError, match="zarr v2 metadata"):
        check_codecs(store)


def test_a_store_we_write_passes(tmp_path):
    check_codecs(write_store(tmp_path / "ok.zarr"))


def test_dependency_floors_close_the_known_holes():
    """numcodecs unpickles chunks only when asked from 0.15.2 / 0.16.6 / 0.17.1 (GHSA-jqc8-qjfv-5m6r); torch's
    ``weights_only=True`` is sound from 2.6 (CVE-2025-32434); the installed versions satisfy the floors."""
    from importlib.metadata import version

    deps = {Requirement(d).name: Requirement(d) for d in
            tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    for name, bad, good in (("torch", "2.5.1", "2.6.0"), ("numcodecs", "0.15.1", "0.16.6"),
                            ("numcodecs", "0.17.0", "0.17.1"), ("numcodecs", "0.16.5", "0.16.6"),
                            ("zarr", "3.0.10", "3.1.6")):
        spec = deps[name].specifier
        assert Version(bad) not in spec and Version(good) in spec, (name, str(spec))
    assert Version("2.14.1") in deps["torch"].specifier and Version("2.14.2") not in deps["torch"].specifier
    for name in ("torch", "numcodecs", "zarr"):
        installed = Version(version(name).split("+")[0])
        assert installed in deps[name].specifier, (name, installed)
