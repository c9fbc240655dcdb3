"""Snakemake adapter of rule table: the study's results table as Markdown and CSV (analysis.table).

CLI twin: ``python -m analysis results/<study>`` writes it with the figures.
"""

import sys
from pathlib import Path

snakemake = globals()["snakemake"]  # injected by Snakemake's script directive
sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1]))  # this repo's analysis/, even in a conda env

from analysis import load_study, write  # noqa: E402

with open(snakemake.log[0], "w", encoding="utf-8") as log:
    sys.stderr = log
    study = snakemake.config["studies"][snakemake.wildcards.study]
    ds = load_study(snakemake.input.stores, description=study.get("description"))
    table = write(ds, snakemake.output.markdown, snakemake.output.csv)
    print(table.to_string(), file=log)
