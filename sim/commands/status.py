"""``python -m sim status [results/<study> ...]`` (``gaitsim status``): one line per run of a study, read from its
stores without disturbing their writers (:mod:`sim.status`, docs/workflow.md)::

    gaitsim status                           # every study under ./results
    gaitsim status results/noise --configfile config/noise.yaml
    watch -n 10 gaitsim status results/quick
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

help = "show every run of a study: done / running / failed / not started, epoch, accuracy, angle, time left"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("studies", nargs="*", metavar="STUDY", type=Path,
                   help="study folders, e.g. results/quick (default: every study under ./results)")
    p.add_argument("--configfile", action="append", default=[], metavar="FILE",
                   help="workflow config(s) defining the study, to list the runs not started yet when the study "
                   "has no run_configs.json (default: config/config.yaml and the config/*.yaml that defines it)")
    p.add_argument("--json", action="store_true", help="one JSON object per study instead of the table")


def main(args: argparse.Namespace) -> int:
    from sim.errors import ConfigError
    from sim.status import find_studies, format_table, study_status

    studies = args.studies or find_studies()
    if not studies:
        raise ConfigError("no study folders found under ./results; give one, e.g. `gaitsim status results/quick`")
    for study in studies:
        if not study.is_dir():
            raise ConfigError(f"{study} is not a folder; give a study folder such as results/quick")
        if study.resolve() == Path(study.resolve().anchor):
            raise ConfigError(f"{study} is the filesystem root, not a study folder; give one such as results/quick")
    try:
        for i, study in enumerate(studies):
            rows = study_status(study, args.configfile)
            if args.json:
                print(json.dumps({"study": str(study), "runs": [asdict(r) for r in rows]}), flush=True)
            else:
                print(("\n" if i else "") + format_table(study, rows), flush=True)
    except BrokenPipeError:  # `gaitsim status | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
