"""``python -m analysis STUDY_DIR [--out DIR] [--figure NAME ...] [--format FMT] [--partial]``: a study's figures
and table.

The command-line twin of the workflow's figure and table rules (same functions): loads every complete run store
below ``STUDY_DIR`` (e.g. ``results/quick``), draws each figure that applies (or those named) as
``DIR/figures/<name>.<FMT>`` (png, pdf or svg) and writes ``DIR/table.md`` and ``DIR/table.csv`` (DIR defaults to
STUDY_DIR).

``--partial`` draws what a running study has recorded so far: the ``run.zarr.partial`` stores of running jobs (and
incomplete stores) are loaded too, drawn dotted with their progress in the label (``gp (unfinished, epoch 3/10)``)
and counted as UNFINISHED in the table; DIR then defaults to ``STUDY_DIR/partial``, so that nothing is mistaken for
the workflow's results.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from analysis.figures import FIGURES
    from analysis.style import FORMATS

    p = argparse.ArgumentParser(prog="python -m analysis", description=__doc__.splitlines()[0])
    p.add_argument("study", type=Path, help="study folder, e.g. results/quick")
    p.add_argument("--out", type=Path, help="output folder (default: the study folder; STUDY/partial with --partial)")
    p.add_argument("--figure", action="append", choices=sorted(FIGURES), help="draw only this figure (repeatable)")
    p.add_argument("--format", choices=FORMATS, default="png", help="figure file format (default: png)")
    p.add_argument("--description", help="the study's description, for the table (the workflow passes the config's)")
    p.add_argument("--partial", action="store_true",
                   help="also draw the runs still being written (run.zarr.partial), marked unfinished")
    p.add_argument("--skip-incomplete", action="store_true",
                   help="leave out stores that are not complete (default: refuse them)")
    p.add_argument("--no-verify", action="store_true",
                   help="do not check the stores against the checksums their runs wrote (faster; a damaged store is "
                   "then read as it is). By default a damaged store is named and left out")
    args = p.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    from analysis import DamagedStoreWarning, applicable, load_study, save, write

    out = args.out or (args.study / "partial" if args.partial else args.study)
    import warnings

    from sim.errors import GaitsimError

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DamagedStoreWarning)
            ds = load_study(args.study, on_incomplete="skip" if args.skip_incomplete else "raise",
                            include_partial=args.partial, description=args.description, verify=not args.no_verify)
    except (ValueError, OSError, GaitsimError) as exc:  # a damaged or crafted store (ArchiveError) included
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for w in caught:  # damaged (and, with --skip-incomplete, incomplete) stores left out: one warning each
        print(f"warning: {w.message}", file=sys.stderr)
    if args.partial:
        unfinished = int((ds.unfinished.fillna(0) > 0).sum())
        print(f"{unfinished} of {int(ds.diverged.notnull().sum())} runs loaded are unfinished")
    for name in args.figure or applicable(ds):
        print(save(FIGURES[name](ds), out / "figures" / f"{name}.{args.format}"))
    write(ds, out / "table.md", out / "table.csv")
    print(out / "table.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
