"""The ``python -m sim`` / ``gaitsim`` command line: one subcommand per module in :mod:`sim.commands`.

Each subcommand module defines ``help`` (one line), ``add_arguments(parser)`` and ``main(args) -> int``; the
dispatcher turns every :class:`~sim.errors.GaitsimError` into a one-line ``error: ...`` on stderr and exit status 2,
so bad input never ends in a traceback. An error marked ``reported_elsewhere`` (every process of a data-parallel run
raised it, and rank 0 prints it: :mod:`sim.distributed`) ends with status 2 and prints nothing.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from sim.errors import GaitsimError

#: subcommand name -> module implementing it
COMMANDS = {
    "angles": "sim.commands.angles",
    "run": "sim.commands.run",
    "bench": "sim.commands.bench",
    "lease": "sim.commands.lease",
    "status": "sim.commands.status",
}


def build_parser() -> argparse.ArgumentParser:
    from sim import __version__

    parser = argparse.ArgumentParser(prog="gaitsim", description="Simulator for local learning rules (BP, FA, GP).")
    parser.add_argument("--version", action="version", version=f"gaitsim {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)  # a missing module is an error, not an absent command
        p = sub.add_parser(name, help=module.help, description=module.help)
        module.add_arguments(p)
        p.set_defaults(_main=module.main)
    return parser


def _say(exc: BaseException, line: str) -> None:
    if not getattr(exc, "reported_elsewhere", False):
        print(line, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._main(args) or 0)
    except GaitsimError as exc:
        _say(exc, f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # a path the operating system refuses (too long, not permitted, ...): named, one line
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        what = exc.strerror or str(exc) or type(exc).__name__
        _say(exc, f"error: {what}{where}"[:1000])
        return 2
    except (MemoryError, RecursionError) as exc:  # a size or depth no check foresaw: still one line, not a traceback
        _say(exc, f"error: {type(exc).__name__}: {str(exc)[:300] or 'out of memory'}; lower the sizes asked for")
        return 2
    except RuntimeError as exc:
        if type(exc).__name__ != "OutOfMemoryError" and "allocate" not in str(exc):
            raise
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        _say(exc, f"error: out of memory ({first}); lower the batch size or the network's widths")
        return 2


if __name__ == "__main__":
    sys.exit(main())
