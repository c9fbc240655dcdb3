"""``python -m sim run CONFIG --out STORE``: train one run and write its zarr archive (docs/runs.md).

The command line of :func:`sim.run.run`, which the workflow's ``run`` job calls with the same arguments; a job is::

    python -m sim lease -- python -m sim run CONFIG --out STORE --publish --on-diverge {fail,keep} --quiet --log LOG

Science settings come from the config (``--set KEY=VALUE`` changes one key of it, validated as the file is);
runtime settings (device, output, log, resume) from the command line. The device is ``--device``, else
``GAITSIM_DEVICE`` (set by ``python -m sim lease``), else the config's ``train.device``.
For fault injection in tests, ``GAITSIM_FAULT`` (docs/reliability.md) makes a run crash or fail a write at a named
moment.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import sys
from collections.abc import Iterator

help = "train one run from a YAML config and write its zarr archive"

#: the variable ``python -m sim lease`` sets to the leased device (``cuda:0`` or ``cpu``)
DEVICE_ENV = "GAITSIM_DEVICE"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="run config (YAML), e.g. configs/digits_deep_gp.yaml; see docs/runs.md")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="change one key of the config, e.g. --set train.epochs=3 --set settings.gp.eta=1e-5 (the value "
                   "is read as YAML; repeatable, a later one wins); checked exactly as the same key in the file")
    p.add_argument("--out", required=True, metavar="STORE",
                   help="zarr store to write, a folder such as results/digits_deep_gp.zarr")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue STORE from its newest intact checkpoint (damaged files are named and passed "
                      "over); a complete store is checked and left as it is")
    mode.add_argument("--overwrite", action="store_true", help="replace an existing run store")
    p.add_argument("--publish", action="store_true",
                   help="write STORE.partial and rename it to STORE once complete, so a failed run leaves no STORE; "
                   "a STORE.partial with the same config is resumed, one with another config replaced (what a "
                   "workflow job does)")
    p.add_argument("--on-diverge", choices=("fail", "keep"), default="fail",
                   help="a run that stops at a NaN/Inf or a singular layer: fail (exit status 2, the default) or keep "
                   "(its prefix is a result with the attribute 'diverged', published with --publish; exit status 0)")
    p.add_argument("--allow-change", metavar="KEY[,KEY...]", action="append", default=[],
                   help="with --resume: let these config keys differ from the store's (only settings.RULE.lr, "
                   "train.on_nonfinite, train.max_retries, train.retry_lr_factor; e.g. settings.gp.lr to continue a "
                   "diverged run from its last checkpoint with a lower learning rate); recorded in the store's "
                   "attribute 'changes'")
    p.add_argument("--device", metavar="DEVICE",
                   help=f"cpu, cuda or cuda:N; default: ${DEVICE_ENV} if set (`python -m sim lease` sets it to the "
                   "leased GPU), else the config's train.device")
    # --log-file: the spelling torchrun passes on (its own parser takes a bare --log for one of its --log-* options)
    p.add_argument("--log", "--log-file", metavar="FILE", dest="log",
                   help="log file (default: STORE.log beside the store); under torchrun write --log-file")
    p.add_argument("--quiet", action="store_true", help="no progress bar or epoch lines on stderr (the log file "
                   "still gets everything)")


#: signals that end a run like Ctrl-C does (SIGINT is Python's KeyboardInterrupt already)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


#: modules whose code must not be interrupted: zarr's I/O runs on a loop thread that the main thread waits for, and
#: an exception raised in that wait leaves the loop's task to fail at interpreter exit with a traceback on stderr;
#: torch's zip writer calls the file's ``write`` from C++ and turns an exception raised there into a short write
#: ("unexpected pos"), so a stop during a checkpoint would end as a failed write instead of a clean stop
_IO_MODULES = ("zarr", "numcodecs", "asyncio", "concurrent.futures", "sim.checkpoint", "torch.serialization")


def _in_io(frame) -> bool:
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith(_IO_MODULES):
            return True
        frame = frame.f_back
    return False


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """While the block runs, SIGTERM and SIGHUP raise :class:`~sim.errors.Stopped` (a KeyboardInterrupt), so the run
    unwinds as on Ctrl-C (the log's last line names the signal) instead of dying silently. A signal that arrives
    while the store or a checkpoint is being read or written is raised when that I/O call returns (checked every
    50 ms through SIGALRM), never inside it."""
    from sim.errors import Stopped

    pending: list[int] = []

    def stop(signum, frame):
        if _in_io(frame):
            pending[:] = [signum]
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            return
        raise Stopped(signum)

    def again(_signum, frame):
        if pending:
            stop(pending[0], frame)

    try:
        before = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
        before[signal.SIGALRM] = signal.signal(signal.SIGALRM, again)
    except ValueError:  # not the main thread: leave the signals alone
        yield
        return
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for s, handler in before.items():
            signal.signal(s, handler)


def main(args: argparse.Namespace) -> int:
    from sim.errors import Stopped

    try:
        with stop_on_signals():
            return _main(args)
    except Stopped as exc:
        from sim.distributed import launch_or_single

        launch = launch_or_single()
        if launch.rank != 0:  # a data-parallel run: the launcher stopped every process, and rank 0 says so
            return 128 + exc.signum
        again = shlex.join(["python", "-m", "sim", "run", args.config, "--out", args.out, "--resume",
                            *(["--publish"] if args.publish else []), *(["--log", args.log] if args.log else [])])
        if launch.world > 1:
            again = f"the same {launch.launcher} command with --resume (with any number of processes), e.g. {again}"
        print(f"error: the run was stopped by {exc.signame} (terminated or pre-empted); everything up to its last "
              f"checkpoint is kept in {args.out}. Continue it with: {again}", file=sys.stderr)
        return 128 + exc.signum


def _main(args: argparse.Namespace) -> int:
    from sim.config import load_config
    from sim.distributed import launch_or_single, same_on_every_process
    from sim.errors import ConfigError
    from sim.run import run

    with same_on_every_process():  # every process of a data-parallel launch reads the same: rank 0 reports it
        cfg = load_config(args.config, overrides=args.overrides)
        device = args.device
        if device is None and os.environ.get(DEVICE_ENV):
            device = os.environ[DEVICE_ENV]
            try:
                cfg = cfg.with_device(device)
            except ConfigError as exc:
                raise ConfigError(f"{DEVICE_ENV}={device!r} is not a device this run can use ({exc}); unset it or "
                                  "pass --device") from None
    out = run(cfg, args.out, resume=args.resume, overwrite=args.overwrite, device=device, progress=not args.quiet,
              log_file=args.log, publish=args.publish, on_diverge=args.on_diverge,
              allow_change=tuple(k.strip() for a in args.allow_change for k in a.split(",") if k.strip()))
    if launch_or_single().rank == 0:  # one line for the whole run, also from a data-parallel one
        print(out)
    return 0

