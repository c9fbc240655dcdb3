"""Analysis of gaitsim studies: load a study's run stores, draw its figures, tabulate its results.

    from analysis import load_study, FIGURES, applicable, results_table, save
    ds = load_study("results/noise")              # xarray.Dataset: experiment, sweep dims, rule, seed dims
    ds.angle.sel(eta=1e-5, message_std=0.0)      # a sweep point, selected by value
    for name in applicable(ds):
        save(FIGURES[name](ds), f"{name}.pdf")    # png, pdf or svg, as the suffix asks
    print(results_table(ds))

``load_study(folder, include_partial=True)`` also loads the runs still being written, marked unfinished in every
figure and in the table. The workflow's figure and table rules call these functions (workflow/scripts/); the
notebook ``analysis/notebooks/study.ipynb`` redraws everything from a study folder. Nothing here imports torch.
"""

from __future__ import annotations

from analysis.figures import (
    FIGURES,
    accuracy,
    angle_per_layer,
    angle_per_step,
    applicable,
    mixing,
    noise_map,
    panels,
)
from analysis.load import (
    DamagedStoreError,
    DamagedStoreWarning,
    IncompleteStoreError,
    find_stores,
    load_study,
    open_run,
    parse_store_path,
    sweep_dims,
)
from analysis.style import rule_color, rule_style, save
from analysis.table import results_table, to_markdown, write

__all__ = [
    "FIGURES", "DamagedStoreError", "DamagedStoreWarning", "IncompleteStoreError", "accuracy", "angle_per_layer",
    "angle_per_step", "applicable", "find_stores", "load_study", "mixing", "noise_map", "open_run", "panels",
    "parse_store_path", "results_table", "rule_color", "rule_style", "save", "sweep_dims", "to_markdown", "write",
]
