"""Errors of a run store: any failed read or write, and a store whose rows do not match their checksums."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from sim.errors import GaitsimError


class ArchiveError(GaitsimError, OSError):
    """The run store (or a checkpoint) could not be written or read: full disk, read-only folder, damaged store.
    The message names the path."""


class DamagedStoreError(ArchiveError):
    """A run store whose rows do not match the checksums written with them (a chunk missing, undecodable or
    changed): never to be read as a result. :attr:`problems` names each damaged chunk file and its array."""

    def __init__(self, path: Path | str, problems: list[str]) -> None:
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"the run store {path} is damaged:\n{lines}\nIts results cannot be trusted: run it again "
                         "(--overwrite) or restore it from a backup.")
        self.path = Path(path)
        self.problems = problems


@contextlib.contextmanager
def io_errors(path: Path | str, what: str) -> Iterator[None]:
    """Turn an ``OSError`` raised inside the block into an :class:`ArchiveError` naming ``path``."""
    try:
        yield
    except ArchiveError:
        raise
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ArchiveError(f"cannot {what} {path}: {reason}; check that the folder is writable and the disk has "
                           "space (the earlier checkpoints and the store's last commit are left intact: continue "
                           "with --resume once fixed)") from exc
