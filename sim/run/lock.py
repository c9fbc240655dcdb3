"""One writer per run store: an exclusive OS lock held for a run's whole life (docs/reliability.md).

A run takes ``fcntl.flock(LOCK_EX | LOCK_NB)`` on the lock file ``.<name>.lock`` beside its store before it looks at
what is at the output path, and keeps it until it returns, after publishing. The lock belongs to the open file, so
the OS releases it when the process ends in any way (``SIGKILL`` included): a killed run never leaves a stale lock,
and the lock file itself is never deleted (deleting a held lock file would let a second writer lock a new file of the
same name). A second writer (a fresh run, ``--resume``, ``--overwrite``, a workflow job) is refused at once with a
:class:`~sim.errors.ConfigError` naming the holder (pid, host, start time, command) that the holder wrote into the
file. One lock covers ``STORE`` and ``STORE.partial`` (the lock of ``X.partial`` is the lock of ``X``), so a published
run and a run on its working store exclude each other. Readers (analysis, status) never take the lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from sim.archive import ArchiveError
from sim.errors import ConfigError

PARTIAL = ".partial"


def lock_path(out: Path | str) -> Path:
    """The lock file of the run store ``out`` (and of ``out.partial``): ``.<name>.lock`` beside it."""
    out = Path(out)
    name = out.name[: -len(PARTIAL)] if out.name.endswith(PARTIAL) and out.name != PARTIAL else out.name
    return out.with_name(f".{name}.lock")


def holder(path: Path | str, wait: float = 1.0) -> str:
    """Who holds the lock file ``path``, as its holder wrote it ('an unknown process' if it cannot be read).

    A holder writes its name just after it takes the lock: a second writer that arrives in between waits up to
    ``wait`` seconds for the name to appear."""
    deadline = time.monotonic() + wait
    while True:
        try:
            info = json.loads(Path(path).read_text(encoding="utf-8"))
            return (f"pid {info['pid']} on host {info['host']}, started {info['start_time']} "
                    f"({info.get('command', '?')})")
        except (OSError, ValueError, KeyError, TypeError):
            if time.monotonic() >= deadline:
                return "an unknown process (it has not written its name yet)"
            time.sleep(0.05)


@contextlib.contextmanager
def hold(out: Path | str) -> Iterator[Path]:
    """Hold the exclusive lock of the run store ``out`` for the block; yields the lock file's path.

    Raises:
        ConfigError: another process holds it (named, with what to do).
        ArchiveError: the lock file cannot be created (e.g. a read-only folder).
    """
    path = lock_path(out)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise ArchiveError(f"cannot create the run store {out}: its lock file {path} cannot be created "
                           f"({exc.strerror or exc}); check that the folder is writable") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise ArchiveError(f"cannot lock {path} (the lock of the run store {out}): "
                                   f"{exc.strerror or exc}") from exc
            raise ConfigError(f"the run store {out} is in use: another run writes it, held by {holder(path)} "
                              f"(lock file {path}). Wait for that run to end or stop it, then continue with "
                              "--resume; or write this run to another --out.") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "start_time": datetime.now(UTC).isoformat(timespec="seconds"),
                "command": " ".join(sys.argv)[:300]}
        with contextlib.suppress(OSError):  # the holder's name is a courtesy; a full disk must not stop the lock
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock; the file stays (see the module docstring)
