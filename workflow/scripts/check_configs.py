"""Snakemake adapter of rule check_configs: check every run config of a study with sim.config.load_config, the
command line's own loader (schema, then rules per layer, probe epochs, preset options), and write them resolved.

Every problem is reported, each with its run folder, before any training job of the study starts. CLI twin:
``python -m sim run <folder>/config.yaml ...`` refuses the same configs with the same messages.
"""

import json
import sys
from pathlib import Path

snakemake = globals()["snakemake"]  # injected by Snakemake's script directive
sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1]))  # this repo's sim/, even in a bare conda env
from sim.config import load_config  # noqa: E402
from sim.errors import ConfigError  # noqa: E402

with open(snakemake.log[0], "w", encoding="utf-8") as log:
    resolved, problems = {}, []
    for folder, doc in snakemake.params.runs.items():
        try:
            resolved[folder] = load_config(dict(doc)).to_dict()
        except ConfigError as exc:
            problems.append(f"{folder}/config.yaml: {exc}".replace("config: ", "", 1))
    if problems:
        message = f"{len(problems)} of {len(snakemake.params.runs)} run configs are invalid:\n" + "\n".join(
            f"  - {p}" for p in problems)
        print(message, file=log)
        sys.exit(message)  # to the terminal too: Snakemake shows the script's stderr
    Path(snakemake.output[0]).write_text(json.dumps(resolved, indent=1, sort_keys=True), encoding="utf-8")
    print(f"checked {len(resolved)} run configs", file=log)
