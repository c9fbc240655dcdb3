"""The results table of a study: final train and test accuracy per experiment, sweep point and rule, over seeds.

One row per (experiment, sweep point, rule) that has runs, in the Dataset's order (one column per sweep dim after
``experiment``; none for a study without a sweep): the number of seeds (and of those that diverged, and of those
unfinished: loaded with ``include_partial=True``, their values are not results) and epochs, the
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
from analysis.load import sweep_dims

#: the columns of every study's table; the sweep dims come between experiment and rule
COLUMNS = ("experiment", "rule", "seeds", "diverged", "unfinished", "epochs", "metric", "train_acc_mean",
           "train_acc_std", "test_acc_mean", "test_acc_std", "angle_mean_deg", "angle_std_deg")


def _std(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(np.std(values, ddof=1)) if values.size > 1 else float("nan")


def _mean(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else float("nan")


def results_table(ds: xr.Dataset) -> pd.DataFrame:
    """One row per (experiment, sweep point, rule) with runs; columns :data:`COLUMNS`, sweep dims after
    ``experiment``."""
    sweep = sweep_dims(ds)
    run_dims = ["experiment", *sweep, "rule"]
    present = runs_present(ds)
    zero = xr.zeros_like(present, dtype=float)
    metric = ds.metric.broadcast_like(present.isel(seed=0, drop=True)) if "metric" in ds.coords else None
    per_metric = {m: (final(ds[f"train_{m}"]), final(ds[f"test_{m}"])) for m in ("top1", "top5")}
    columns = {
        "seeds": present.sum("seed"),
        "diverged": (ds.diverged.fillna(0) if "diverged" in ds else zero).sum("seed"),
        "unfinished": (ds.unfinished.fillna(0) if "unfinished" in ds else zero).sum("seed"),
        "epochs": np.isfinite(ds.test_top1).any("seed").sum("epoch"),
        "angle": hidden_angle(ds).mean("step", skipna=True),
    }
    stacked = {k: v.stack(row=run_dims) for k, v in columns.items()}
    rows = []
    for i in range(stacked["seeds"].sizes["row"]):
        seeds = int(stacked["seeds"].values[i])
        if seeds == 0:
            continue
        at = {d: stacked["seeds"].row[d].values[i] for d in run_dims}
        m = str(metric.sel(at).item()) if metric is not None else "top1"
        tr = per_metric[m][0].sel(at).values
        te = per_metric[m][1].sel(at).values
        angle = stacked["angle"].isel(row=i).values
        rows.append({
            "experiment": str(at["experiment"]), **{d: at[d] for d in sweep}, "rule": str(at["rule"]),
            "seeds": seeds, "diverged": int(stacked["diverged"].values[i]),
            "unfinished": int(stacked["unfinished"].values[i]), "epochs": int(stacked["epochs"].values[i]),
            "metric": m, "train_acc_mean": _mean(tr), "train_acc_std": _std(tr),
            "test_acc_mean": _mean(te), "test_acc_std": _std(te),
            "angle_mean_deg": _mean(angle), "angle_std_deg": _std(angle),
        })
    return pd.DataFrame(rows, columns=["experiment", *sweep, *COLUMNS[1:]])


def _pm(mean: float, std: float, digits: int) -> str:
    if not np.isfinite(mean):
        return "-"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if np.isfinite(std) else "")


def to_markdown(table: pd.DataFrame, title: str | None = None, description: str | None = None) -> str:
    """The table as GitHub Markdown: accuracy and angle as mean ± std over seeds; the sweep dims as columns after
    ``experiment``; rows with unfinished runs say so in the seeds column (their values are not results)."""
    sweep = [c for c in table.columns if c not in COLUMNS]
    head = ["experiment", *sweep, "rule", "seeds", "epochs", "metric", "train accuracy", "test accuracy",
            "angle to BP (deg)"]
    lines = [f"## {title}", ""] if title else []
    lines += [description, ""] if description else []
    lines += ["| " + " | ".join(head) + " |", "|---|" + "---|" * len(sweep) + "---|---:|---:|---|---:|---:|---:|"]
    for r in table.itertuples(index=False):
        notes = [f"{n} {what}" for n, what in ((r.diverged, "diverged"), (r.unfinished, "UNFINISHED")) if n]
        seeds = f"{r.seeds} ({', '.join(notes)})" if notes else f"{r.seeds}"
        point = "".join(f" {getattr(r, c)} |" for c in sweep)
        lines.append(f"| {r.experiment} |{point} {r.rule} | {seeds} | {r.epochs} | {r.metric} | "
                     f"{_pm(r.train_acc_mean, r.train_acc_std, 3)} | {_pm(r.test_acc_mean, r.test_acc_std, 3)} | "
                     f"{_pm(r.angle_mean_deg, r.angle_std_deg, 2)} |")
    lines += ["", "Accuracy after the last epoch, mean ± sample std over seeds; angle: mean over hidden layers and "
              "recorded steps, ± std over seeds. A diverged seed (stopped at a NaN/Inf) counts with what it recorded "
              "until then."]
    if table.unfinished.sum():
        lines += ["", f"**Partial:** {int(table.unfinished.sum())} runs are UNFINISHED: their values are what they "
                  "recorded so far, not results."]
    return "\n".join(lines) + "\n"


def write(ds: xr.Dataset, markdown: str | Path, csv: str | Path) -> pd.DataFrame:
    """Write the study's table as Markdown and CSV; returns it."""
    table = results_table(ds)
    for path in (markdown, csv):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    text = to_markdown(table, title=f"Study {ds.attrs.get('study', '')}".strip(),
                       description=ds.attrs.get("description") or None)
    Path(markdown).write_text(text, encoding="utf-8")
    table.to_csv(csv, index=False, float_format="%.6g")
    return table
