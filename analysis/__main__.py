"""``python -m analysis STUDY_DIR [--out DIR] [--figure NAME ...]``: the figures and table of a study.

The command-line twin of the workflow's figure and table rules (same functions): loads every complete run store
below ``STUDY_DIR`` (e.g. ``results/quick``), draws each figure that applies (or those named) as
``DIR/figures/<name>.png`` and writes ``DIR/table.md`` and ``DIR/table.csv`` (DIR defaults to STUDY_DIR).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from analysis.figures import FIGURES

    p = argparse.ArgumentParser(prog="python -m analysis", description=__doc__.splitlines()[0])
    p.add_argument("study", type=Path, help="study folder, e.g. results/quick")
    p.add_argument("--out", type=Path, help="output folder (default: the study folder)")
    p.add_argument("--figure", action="append", choices=sorted(FIGURES), help="draw only this figure (repeatable)")
    p.add_argument("--skip-incomplete", action="store_true",
                   help="leave out stores that are not complete (default: refuse them)")
    args = p.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    from analysis import applicable, load_study, save, write
    from sim.errors import GaitsimError

    out = args.out or args.study
    try:
        ds = load_study(args.study, on_incomplete="skip" if args.skip_incomplete else "raise")
    except (ValueError, OSError, GaitsimError) as exc:  # a damaged or crafted store (ArchiveError) included
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name in args.figure or applicable(ds):
        print(save(FIGURES[name](ds), out / "figures" / f"{name}.png"))
    write(ds, out / "table.md", out / "table.csv")
    print(out / "table.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
