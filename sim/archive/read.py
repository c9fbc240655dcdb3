"""Reading a run store without writing to it: its attributes, its codecs checked (nothing loaded is executed), its
rows verified against the checksums of its last commit, and the xarray Dataset of it (:func:`open_run`)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import zarr

from sim.archive.codecs import check_codecs
from sim.archive.errors import ArchiveError, DamagedStoreError
from sim.archive.layout import OLD_NAMES
from sim.archive.writer import DIGESTS_ATTR, RunArchive, _quiet_zarr


def read_attrs(path: Path | str) -> dict[str, Any] | None:
    """The root attributes of the zarr store at ``path``, or None if ``path`` holds no zarr group."""
    path = Path(path)
    if not (path / "zarr.json").is_file():
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception:  # noqa: BLE001 - anything unreadable is "not a run store"
        return None


def verify_store(path: Path | str) -> list[str] | None:
    """Check every committed row of the run store at ``path`` against the digests of its last commit (the root
    attribute :data:`DIGESTS_ATTR`); read-only, takes no lock. Returns one line per damaged chunk
    (``'<chunk file> (<array>): <what is wrong>'``, empty if intact), or None for a store written before the digests
    were kept in its attributes (it cannot be checked without its checkpoints)."""
    path = Path(path)
    try:
        with _quiet_zarr():
            group = zarr.open_group(str(path), mode="r")
            digests = group.attrs.get(DIGESTS_ATTR)
            if not isinstance(digests, dict):
                return None
            archive = RunArchive(path, group)
    except ArchiveError as exc:
        return [str(exc)]
    except Exception as exc:  # noqa: BLE001 - damaged metadata shows up as many kinds of errors
        return [f"{path / 'zarr.json'} (metadata): not readable ({type(exc).__name__}: {exc})"]
    return archive.verify(archive.lengths, digests)


def open_run(path: Path | str, *, verify: bool = True):
    """The run's ``xarray.Dataset`` (lazy), as of its last commit: ``xr.open_zarr(path)`` with zarr's note that
    consolidated metadata is not yet part of the v3 spec silenced. A store of the old layout comes with its probe
    records' dims and coordinates renamed (:data:`OLD_NAMES`).

    ``verify`` (default): first check every committed row against the checksums written with it
    (:func:`verify_store`, one read of the store) and raise :class:`DamagedStoreError` naming each damaged chunk and
    array, so that a missing chunk is never read as zarr's fill values; ``verify=False`` skips the check (faster)."""
    import xarray as xr

    check_codecs(path)
    if verify:
        problems = verify_store(path)
        if problems:
            raise DamagedStoreError(path, problems)
    with _quiet_zarr():
        ds = xr.open_zarr(str(path))
    ds.attrs.pop(DIGESTS_ATTR, None)
    if "checkpoint" in ds.dims:
        ds = ds.rename({old: new for old, new in OLD_NAMES.items() if old in ds.variables or old in ds.dims})
    return ds
