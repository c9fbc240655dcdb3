"""Snakemake adapter of rules figures, figure_noise_map and figure_mixing: draw a study's figures from all of its
stores (analysis.figures), with the study's description; each named output is the figure of that name (its
suffix: the format).

CLI twin: ``python -m analysis results/<study>`` draws every figure that applies, and the table.
"""

import sys
from pathlib import Path

snakemake = globals()["snakemake"]  # injected by Snakemake's script directive
sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1]))  # this repo's analysis/, even in a conda env

import matplotlib  # noqa: E402

matplotlib.use("Agg")
from analysis import FIGURES, load_study, save  # noqa: E402

with open(snakemake.log[0], "w", encoding="utf-8") as log:
    sys.stderr = log
    study = snakemake.config["studies"][snakemake.wildcards.study]
    ds = load_study(snakemake.input.stores, description=study.get("description"))
    for name, path in snakemake.output.items():
        save(FIGURES[name](ds), path)
        print(f"wrote {path} from {len(snakemake.input.stores)} stores", file=log)
