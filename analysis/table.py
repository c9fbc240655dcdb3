"""The results table of a study: final train and test accuracy per experiment and rule, mean and spread over seeds.

One row per (experiment, rule) that has runs: the number of seeds (and of those that diverged) and epochs, the
accuracy the study reports (top-1; top-5 for ImageNet), the train and test accuracy after the last epoch (mean and
sample std over seeds; the std is empty for one seed), and the mean angle to BP over the hidden layers and every
recorded step (degrees). :func:`to_markdown` renders it for the report and the README, :func:`write` writes
``table.md`` and ``table.csv``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from analysis.figures import final, hidden_angle, runs_present

COLUMNS = ("experiment", "rule", "seeds", "diverged", "epochs", "metric", "train_acc_mean", "train_acc_std",
           "test_acc_mean", "test_acc_std", "angle_mean_deg", "angle_std_deg")


def _std(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(np.std(values, ddof=1)) if values.size > 1 else float("nan")


def _mean(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else float("nan")


def results_table(ds: xr.Dataset) -> pd.DataFrame:
    """One row per (experiment, rule) with runs; columns :data:`COLUMNS`."""
    angle = hidden_angle(ds)
    present = runs_present(ds)
    diverged = ds.diverged.fillna(0) if "diverged" in ds else xr.zeros_like(present, dtype=float)
    rows = []
    for exp in ds.experiment.values:
        metric = str(ds.metric.sel(experiment=exp).values) if "metric" in ds.coords else "top1"
        train = final(ds[f"train_{metric}"].sel(experiment=exp))
        test = final(ds[f"test_{metric}"].sel(experiment=exp))
        for rule in ds.rule.values:
            tr, te = train.sel(rule=rule).values, test.sel(rule=rule).values
            seeds = int(present.sel(experiment=exp, rule=rule).sum())
            if seeds == 0:
                continue
            n_diverged = int(diverged.sel(experiment=exp, rule=rule).sum())
            epochs = ds.test_top1.sel(experiment=exp, rule=rule)
            n_epochs = int(np.isfinite(epochs).any("seed").sum())
            run_angle = angle.sel(experiment=exp, rule=rule).mean("step", skipna=True).values
            rows.append({
                "experiment": str(exp), "rule": str(rule), "seeds": seeds, "diverged": n_diverged,
                "epochs": n_epochs, "metric": metric,
                "train_acc_mean": _mean(tr), "train_acc_std": _std(tr),
                "test_acc_mean": _mean(te), "test_acc_std": _std(te),
                "angle_mean_deg": _mean(run_angle), "angle_std_deg": _std(run_angle),
            })
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _pm(mean: float, std: float, digits: int) -> str:
    if not np.isfinite(mean):
        return "-"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if np.isfinite(std) else "")


def to_markdown(table: pd.DataFrame, title: str | None = None) -> str:
    """The table as GitHub Markdown: accuracy and angle as mean ± std over seeds."""
    head = "| experiment | rule | seeds | epochs | metric | train accuracy | test accuracy | angle to BP (deg) |"
    lines = [f"## {title}", ""] if title else []
    lines += [head, "|---|---|---:|---:|---|---:|---:|---:|"]
    for r in table.itertuples(index=False):
        seeds = f"{r.seeds} ({r.diverged} diverged)" if r.diverged else f"{r.seeds}"
        lines.append(f"| {r.experiment} | {r.rule} | {seeds} | {r.epochs} | {r.metric} | "
                     f"{_pm(r.train_acc_mean, r.train_acc_std, 3)} | {_pm(r.test_acc_mean, r.test_acc_std, 3)} | "
                     f"{_pm(r.angle_mean_deg, r.angle_std_deg, 2)} |")
    lines += ["", "Accuracy after the last epoch, mean ± sample std over seeds; angle: mean over hidden layers and "
              "recorded steps, ± std over seeds. A diverged seed (stopped at a NaN/Inf) counts with what it recorded "
              "until then."]
    return "\n".join(lines) + "\n"


def write(ds: xr.Dataset, markdown: str | Path, csv: str | Path) -> pd.DataFrame:
    """Write the study's table as Markdown and CSV; returns it."""
    table = results_table(ds)
    for path in (markdown, csv):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(markdown).write_text(to_markdown(table, title=f"Study {ds.attrs.get('study', '')}".strip()),
                              encoding="utf-8")
    table.to_csv(csv, index=False, float_format="%.6g")
    return table
