"""The run's log: the ``sim.run`` logger, written to a file (``STORE.log`` by default) and, with a progress bar,
to stderr through ``tqdm.write`` so that epoch lines do not break the bar."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from sim.archive import io_errors
from sim.errors import GaitsimError, Stopped

log = logging.getLogger("sim.run")


def default_log_path(out: Path | str) -> Path:
    """The log file of the run store ``out`` when none is given: ``<out>.log`` beside the store (it survives a
    deleted or overwritten store, and Snakemake's removal of a failed job's output)."""
    out = Path(out)
    return out.with_name(out.name + ".log")


class TqdmHandler(logging.Handler):
    """Writes log lines to stderr through ``tqdm.write`` so they do not break the progress bar. The error that ends
    a run goes to the log file only: the command line prints it (once) itself."""

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "final", False):
            return
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never kill a run
            self.handleError(record)


class LogFileHandler(logging.FileHandler):
    """A ``FileHandler`` that keeps the first failure to write the log file (a full disk) instead of printing a
    traceback per line: :func:`logging_to` reports it once, as one line, when the run ends."""

    failure: OSError | None = None

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        exc = sys.exc_info()[1]
        if self.failure is None:
            self.failure = exc if isinstance(exc, OSError) else OSError(str(exc))

    def close(self) -> None:
        try:
            super().close()
        except OSError as exc:  # the buffered tail cannot be flushed (a full disk)
            if self.failure is None:
                self.failure = exc
            with contextlib.suppress(OSError):
                if self.stream is not None:
                    self.stream.close()
            self.stream = None


@contextlib.contextmanager
def logging_to(path: Path, *, append: bool, to_stderr: bool) -> Iterator[None]:
    """Log ``sim.run`` to ``path`` (appended to, or started afresh) and, if ``to_stderr``, to stderr, for the
    duration of the block; the error that ends the block is logged as the file's last line and re-raised."""
    with io_errors(path, "write the log file"):
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = LogFileHandler(path, mode="a" if append else "w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handlers: list[logging.Handler] = [handler]
    if to_stderr:
        console = TqdmHandler()
        console.setFormatter(logging.Formatter("%(message)s"))
        handlers.append(console)
    log.setLevel(logging.INFO)
    log.propagate = False
    for h in handlers:
        log.addHandler(h)
    try:
        yield
    except GaitsimError as exc:
        log.error(f"error: {exc}", extra={"final": True})
        raise
    except KeyboardInterrupt as exc:
        what = f"stopped by {exc.signame}" if isinstance(exc, Stopped) else "interrupted"
        log.error(f"{what}; continue with --resume from the last checkpoint", extra={"final": True})
        raise
    except Exception:
        log.exception("unexpected error", extra={"final": True})
        raise
    finally:
        for h in handlers:
            log.removeHandler(h)
            h.close()
        if handler.failure is not None:
            # the run's own outcome stands (its store is intact, or its error is being raised): a log file that
            # could not be written is said once, never as a traceback
            print(f"warning: cannot write the log file {path}: {handler.failure.strerror or handler.failure}; the "
                  "log is incomplete", file=sys.stderr)


@contextlib.contextmanager
def silenced() -> Iterator[None]:
    """The ``sim.run`` logger of a data-parallel run's processes other than rank 0, for the duration of the block:
    nothing goes anywhere (rank 0 logs the run), not even the warnings Python would print to stderr for a logger
    without handlers."""
    handler = logging.NullHandler()
    before = log.propagate
    log.propagate = False
    log.addHandler(handler)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.propagate = before
