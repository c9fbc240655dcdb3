"""Analysis of gaitsim studies: load a study's run stores, draw its figures, tabulate its results.

    from analysis import load_study, FIGURES, applicable, results_table
    ds = load_study("results/quick")              # xarray.Dataset with experiment, rule, seed dims
    for name in applicable(ds):
        FIGURES[name](ds).savefig(f"{name}.png")
    print(results_table(ds))

The workflow's figure and table rules call these functions (workflow/scripts/); the notebook
``analysis/notebooks/study.ipynb`` redraws everything from a study folder. Nothing here imports torch.
"""

from __future__ import annotations

from analysis.figures import FIGURES, accuracy, angle_per_layer, angle_per_step, applicable, mixing, noise_map, save
from analysis.load import (
    DamagedStoreError,
    DamagedStoreWarning,
    IncompleteStoreError,
    find_stores,
    load_study,
    open_run,
    parse_store_path,
)
from analysis.table import results_table, to_markdown, write

__all__ = [
    "FIGURES", "DamagedStoreError", "DamagedStoreWarning", "IncompleteStoreError", "accuracy", "angle_per_layer",
    "angle_per_step", "applicable", "find_stores", "load_study", "mixing", "noise_map", "open_run",
    "parse_store_path", "results_table", "save", "to_markdown", "write",
]
