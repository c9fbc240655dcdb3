"""Snakemake adapter of rule check_configs: validate every run config of a study, once per workflow and completely
(sim.study.check_runs: the run schema, then what a schema cannot see), and write them resolved.

Every problem is reported, each with its run folder, before any training job of the study starts. CLI twin:
``python -m sim run <folder>/config.yaml ...`` refuses the same configs with the same messages.
"""

import json
import sys
from pathlib import Path

snakemake = globals()["snakemake"]  # injected by Snakemake's script directive
sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1]))  # this repo's sim/, even in a bare conda env
from sim.errors import ConfigError  # noqa: E402
from sim.study import check_runs  # noqa: E402

with open(snakemake.log[0], "w", encoding="utf-8") as log:
    try:
        resolved = check_runs(snakemake.params.runs)
    except ConfigError as exc:
        print(exc, file=log)
        sys.exit(str(exc))  # to the terminal too: Snakemake shows the script's stderr
    Path(snakemake.output[0]).write_text(json.dumps(resolved, indent=1, sort_keys=True), encoding="utf-8")
    print(f"checked {len(resolved)} run configs", file=log)
