"""The study figures, drawn from the Dataset of :func:`analysis.load.load_study` (REFERENCE.md sections 7-8).

Each function takes the study Dataset and returns a :class:`matplotlib.figure.Figure` built with the object-oriented
API (no pyplot state; :func:`save` writes it through the Agg canvas, so no display is needed):

* :func:`angle_per_layer`: per experiment, each rule's angle to BP in every layer, mean +/- std over the recorded
  steps and seeds;
* :func:`angle_per_step`: per experiment, each rule's angle to BP (mean over the layers below the output) at every
  recorded step, mean over seeds with the seed range shaded;
* :func:`accuracy`: per experiment, train (dashed) and test (solid) accuracy per epoch, top-1 (top-5 for ImageNet);
* :func:`noise_map`: per rule, the mean angle over the message-noise std x eta grid of a noise-floor sweep, and the
  final test accuracy on the same grid;
* :func:`mixing`: the angle of every layer against the split depth of a rule-mixing study (FA below, GP above), and
  the final test accuracy against the split.

:func:`applicable` lists the figures a study's Dataset can draw (the sweep figures need their sweep coordinates).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator as _NullLocator

from sim.study import figures_for

RULE_COLORS = {"bp": "#222222", "fa": "#e07b00", "vgp": "#8a4fbf", "gp": "#1f77b4"}
#: vGP and GP often coincide: draw vGP dashed with square markers, on top, so that both stay visible
RULE_LINES = {"vgp": ((0, (4, 2)), "s")}
_EXTRA_COLORS = ("#2ca02c", "#d62728", "#17becf", "#bcbd22", "#7f7f7f")


def rule_color(rule: str, index: int = 0) -> str:
    return RULE_COLORS.get(rule, _EXTRA_COLORS[index % len(_EXTRA_COLORS)])


def _grid(n: int, width: float = 4.2, height: float = 3.2, max_cols: int = 4) -> tuple[Figure, list]:
    cols = max(1, min(max_cols, n))
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width * cols, height * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _panels(ds: xr.Dataset) -> tuple[Figure, list, list[str], list[str]]:
    """One panel per experiment of a study dataset: the figure, its axes, the experiments and the rules."""
    exps = [str(e) for e in ds.experiment.values]
    fig, axes = _grid(len(exps))
    return fig, axes, exps, [str(r) for r in ds.rule.values]


def runs_present(ds: xr.Dataset) -> xr.DataArray:
    """Which (experiment, rule, seed) runs exist: ``diverged`` is 0 or 1 for every loaded run, NaN elsewhere."""
    if "diverged" in ds:
        return ds.diverged.notnull()
    return np.isfinite(ds.train_top1).any("epoch")


def _has_run(ds: xr.Dataset, experiment: str, rule: str) -> bool:
    return bool(runs_present(ds).sel(experiment=experiment, rule=rule).any())


def _rules_present(ds: xr.Dataset) -> list[str]:
    present = runs_present(ds).any(("experiment", "seed"))
    return [str(r) for r in ds.rule.values if bool(present.sel(rule=r))]


def _layers(ds: xr.Dataset, experiment: str) -> list[str]:
    """The layers the experiment's network has (the study's layer dim is the union over experiments)."""
    rules = ds.layer_rule.sel(experiment=experiment)
    return [str(layer) for layer in ds.layer.values
            if any(isinstance(v, str) for v in np.ravel(rules.sel(layer=layer).values))]


def _angle_axis(ax) -> None:
    """Angles span ~1e-6 deg (BP against itself: rounding) to ~90 deg (FA): linear below 0.1 deg, log above."""
    ax.set_yscale("symlog", linthresh=0.1, linscale=0.5)
    top = max(100.0, ax.get_ylim()[1])
    ax.set_ylim(0, top)
    ticks = [t for t in (0, 0.1, 0.3, 1, 3, 10, 30, 90, 180) if t <= top]
    ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
    ax.yaxis.set_minor_locator(_NullLocator())


def hidden_angle(ds: xr.Dataset) -> xr.DataArray:
    """The angle to BP averaged over the layers below the output (the output's is 0 by construction for FA/GP)."""
    hidden = [str(layer) for layer in ds.layer.values if str(layer) != "output"]
    return ds.angle.sel(layer=hidden).mean("layer", skipna=True)


def final(da: xr.DataArray, dim: str = "epoch") -> xr.DataArray:
    """The last finite value along ``dim`` of every run (runs of different lengths are NaN-padded)."""
    values = da.transpose(..., dim).values
    out = np.full(values.shape[:-1], np.nan)
    dims = [d for d in da.transpose(..., dim).dims if d != dim]
    if values.shape[-1] == 0:
        return xr.DataArray(out, dims=dims, coords={d: da[d] for d in dims})
    finite = np.isfinite(values)
    has = finite.any(-1)
    last = values.shape[-1] - 1 - np.argmax(finite[..., ::-1], axis=-1)
    out[has] = np.take_along_axis(values, last[..., None], -1)[..., 0][has]
    return xr.DataArray(out, dims=dims, coords={d: da[d] for d in dims})


def metric_of(ds: xr.Dataset, experiment: str) -> str:
    return str(ds.metric.sel(experiment=experiment).values) if "metric" in ds.coords else "top1"


def _title(ds: xr.Dataset, experiment: str) -> str:
    return f"{experiment} ({ds.data_kind.sel(experiment=experiment).values})" if "data_kind" in ds.coords \
        else experiment


def _suptitle(fig: Figure, ds: xr.Dataset, text: str) -> None:
    fig.suptitle(f"{ds.attrs.get('study', 'study')}: {text}")


# ----- figures ------------------------------------------------------------------------------------------------------
def angle_per_layer(ds: xr.Dataset) -> Figure:
    """Per experiment: each rule's angle to BP in every layer, mean +/- std over recorded steps and seeds."""
    fig, axes, exps, rules = _panels(ds)
    for ax, exp in zip(axes, exps):
        layers = _layers(ds, exp)
        x = np.arange(len(layers))
        present = [r for r in rules if _has_run(ds, exp, r)]
        for i, rule in enumerate(present):
            a = ds.angle.sel(experiment=exp, rule=rule, layer=layers).stack(sample=("seed", "step"))
            mean = a.mean("sample", skipna=True).values
            std = a.std("sample", skipna=True).values
            offset = (i - (len(present) - 1) / 2) * 0.08
            style, marker = RULE_LINES.get(rule, ("-", "o"))
            ax.errorbar(x + offset, mean, yerr=std, marker=marker, ms=4, capsize=2, lw=1.2, label=rule, ls=style,
                        color=rule_color(rule, i), zorder=3 if rule in RULE_LINES else 2)
        ax.set_xticks(x, layers, rotation=45, ha="right", fontsize=8)
        _finish_angle_axes(ax, ds, exp)
    _suptitle(fig, ds, "angle of each layer's update to BP (mean ± std over recorded steps and seeds)")
    return fig


def _finish_angle_axes(ax, ds: xr.Dataset, exp: str) -> None:
    """Label, scale, title, grid and legend of one experiment's angle panel."""
    ax.set_ylabel("angle to BP (deg)")
    _angle_axis(ax)
    ax.set_title(_title(ds, exp), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="rule", title_fontsize=8)


def angle_per_step(ds: xr.Dataset) -> Figure:
    """Per experiment: each rule's angle to BP (mean over hidden layers) at every recorded step."""
    fig, axes, exps, rules = _panels(ds)
    angle = hidden_angle(ds)
    for ax, exp in zip(axes, exps):
        for i, rule in enumerate(r for r in rules if _has_run(ds, exp, r)):
            a = angle.sel(experiment=exp, rule=rule)
            measured = np.isfinite(a).any("seed")
            a = a.sel(step=measured)
            if a.sizes["step"] == 0:
                continue
            steps = a.step.values
            ax.plot(steps, a.mean("seed", skipna=True).values, lw=1.2, label=rule, color=rule_color(rule, i),
                    ls=RULE_LINES.get(rule, ("-", "o"))[0], zorder=3 if rule in RULE_LINES else 2)
            if a.sizes["seed"] > 1:
                ax.fill_between(steps, a.min("seed", skipna=True).values, a.max("seed", skipna=True).values,
                                alpha=0.2, color=rule_color(rule, i), lw=0)
        ax.set_xlabel("training step")
        _finish_angle_axes(ax, ds, exp)
    _suptitle(fig, ds, "angle to BP per step (mean over hidden layers and seeds; shaded: seed range)")
    return fig


def accuracy(ds: xr.Dataset) -> Figure:
    """Per experiment: train (dashed) and test (solid) accuracy per epoch, mean over seeds."""
    fig, axes, exps, rules = _panels(ds)
    for ax, exp in zip(axes, exps):
        metric = metric_of(ds, exp)
        for i, rule in enumerate(r for r in rules if _has_run(ds, exp, r)):
            color = rule_color(rule, i)
            for split, style in (("train", "--"), ("test", "-")):
                acc = ds[f"{split}_{metric}"].sel(experiment=exp, rule=rule)
                acc = acc.sel(epoch=np.isfinite(acc).any("seed"))
                ax.plot(acc.epoch.values, acc.mean("seed", skipna=True).values, style, color=color, lw=1.3,
                        marker="o" if acc.sizes["epoch"] < 12 else None, ms=3,
                        label=f"{rule} {split}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{metric} accuracy")
        ax.set_ylim(0, 1)
        ax.set_title(_title(ds, exp), fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    _suptitle(fig, ds, "accuracy per epoch (solid: test, dashed: train; mean over seeds)")
    return fig


def _heatmap(ax, values: np.ndarray, rows, cols, *, vmin, vmax, cmap: str, fmt: str,
             diverged: np.ndarray | None = None):
    im = ax.imshow(values, origin="lower", aspect="auto", vmin=vmin, vmax=vmax, cmap=cmap)
    ax.set_xticks(range(len(cols)), [f"{c:g}" if isinstance(c, (int, float)) else str(c) for c in cols],
                  fontsize=8)
    ax.set_yticks(range(len(rows)), [f"{r:g}" if isinstance(r, (int, float)) else str(r) for r in rows],
                  fontsize=8)
    finite = values[np.isfinite(values)]
    mid = (vmin + vmax) / 2 if finite.size else 0
    for (i, j), v in np.ndenumerate(values):
        div = diverged is not None and diverged[i, j] > 0
        if np.isfinite(v):
            ax.text(j, i, format(v, fmt) + ("*" if div else ""), ha="center", va="center", fontsize=7,
                    color="white" if (v < mid) == (cmap == "viridis") else "black")
        elif div:
            ax.text(j, i, "diverged", ha="center", va="center", fontsize=7, color="#d62728")
    return im


def noise_map(ds: xr.Dataset, row: str = "message_std", col: str = "eta") -> Figure:
    """Per rule: mean angle to BP (hidden layers, recorded steps, seeds) and final test accuracy on the
    ``row`` x ``col`` grid of a noise-floor sweep (the experiment coordinates ``message_std`` and ``eta``)."""
    for c in (row, col):
        if c not in ds.coords:
            raise ValueError(f"noise_map needs the sweep coordinate {c!r}; this study has "
                             f"{[k for k in ds.coords if ds[k].dims == ('experiment',)]}")
    rows = sorted(set(ds[row].values.tolist()))
    cols = sorted(set(ds[col].values.tolist()))
    rules = _rules_present(ds)
    angle = hidden_angle(ds).mean(("step", "seed"), skipna=True)
    acc = final(ds.test_top1).mean("seed", skipna=True)
    div = ds.diverged.fillna(0).sum("seed") if "diverged" in ds else xr.zeros_like(acc)
    grids = {}
    for rule in rules:
        a, t, d = (np.full((len(rows), len(cols)), np.nan) for _ in range(3))
        for exp in ds.experiment.values:
            i = rows.index(ds[row].sel(experiment=exp).item())
            j = cols.index(ds[col].sel(experiment=exp).item())
            a[i, j] = angle.sel(experiment=exp, rule=rule).item()
            t[i, j] = acc.sel(experiment=exp, rule=rule).item()
            d[i, j] = div.sel(experiment=exp, rule=rule).item()
        grids[rule] = (a, t, d)
    finite = np.concatenate([g[0][np.isfinite(g[0])] for g in grids.values()] or [np.zeros(0)])
    vmax = float(finite.max()) if finite.size else 1.0
    fig = Figure(figsize=(4.3 * max(1, len(rules)) + 1.0, 7.2), layout="constrained")
    axes = fig.subplots(2, max(1, len(rules)), squeeze=False)
    for k, rule in enumerate(rules):
        a, t, d = grids[rule]
        im_a = _heatmap(axes[0, k], a, rows, cols, vmin=0.0, vmax=max(vmax, 1e-9), cmap="viridis", fmt=".2g",
                        diverged=d)
        im_t = _heatmap(axes[1, k], t, rows, cols, vmin=0.0, vmax=1.0, cmap="magma", fmt=".2f", diverged=d)
        axes[0, k].set_title(f"{rule}: mean angle to BP (deg)", fontsize=10)
        axes[1, k].set_title(f"{rule}: final test accuracy", fontsize=10)
        for ax in axes[:, k]:
            ax.set_xlabel(f"{col} (vgp: gamma)" if col == "eta" else col)
            ax.set_ylabel(row)
    if rules:
        fig.colorbar(im_a, ax=axes[0, :].tolist(), label="angle (deg)", shrink=0.9)
        fig.colorbar(im_t, ax=axes[1, :].tolist(), label="test accuracy", shrink=0.9)
    _suptitle(fig, ds, f"noise floor: {row} x {col} (*: a seed diverged, NaN/Inf; its steps until then count)")
    return fig


def mixing(ds: xr.Dataset, param: str = "split") -> Figure:
    """Angle of every layer against the split depth (FA below, GP above), and final test accuracy per split."""
    if param not in ds.coords:
        raise ValueError(f"mixing needs the sweep coordinate {param!r} (the number of layers below the split)")
    rules = _rules_present(ds)
    exps = sorted(ds.experiment.values.tolist(), key=lambda e: ds[param].sel(experiment=e).item())
    splits = [ds[param].sel(experiment=e).item() for e in exps]
    layers = [str(layer) for layer in ds.layer.values]
    fig = Figure(figsize=(11, 1.2 + 3.6 * len(rules)), layout="constrained")
    axes = fig.subplots(max(1, len(rules)), 2, squeeze=False, width_ratios=[1.6, 1])
    for k, rule in enumerate(rules):
        angle = ds.angle.sel(rule=rule, experiment=exps).mean(("step", "seed"), skipna=True)
        values = angle.transpose("experiment", "layer").values
        vmax = float(np.nanmax(values)) if np.isfinite(values).any() else 1.0
        ax = axes[k, 0]
        im = _heatmap(ax, values, splits, layers, vmin=0.0, vmax=max(vmax, 1e-9), cmap="viridis", fmt=".2g")
        for i, split in enumerate(splits):  # outline the layers below the split (the lower rule's)
            if split > 0:
                edge = min(split, len(layers)) - 0.5
                ax.plot([-0.5, edge], [i - 0.5, i - 0.5], color="white", lw=0.6)
                ax.plot([edge, edge], [i - 0.5, i + 0.5], color="white", lw=1.5)
        ax.set_xticklabels(layers, rotation=45, ha="right")
        ax.set_xlabel("layer")
        ax.set_ylabel(f"{param} (layers below the split)")
        ax.set_title(f"{rule}: mean angle to BP per layer (deg); white line: split", fontsize=10)
        fig.colorbar(im, ax=ax, label="angle (deg)", shrink=0.9)
        acc = final(ds.test_top1.sel(rule=rule, experiment=exps))
        tr = final(ds.train_top1.sel(rule=rule, experiment=exps))
        ax2 = axes[k, 1]
        for da, style, label in ((tr, "--", "train"), (acc, "-", "test")):
            ax2.errorbar(splits, da.mean("seed").values, yerr=da.std("seed").values if da.sizes["seed"] > 1
                         else None, fmt=style, marker="o", ms=4, capsize=2, label=label, color="#1f77b4")
        ax2.set_xlabel(f"{param} (layers below the split)")
        ax2.set_ylabel("final top1 accuracy")
        ax2.set_ylim(0, 1)
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=8)
        ax2.set_title(f"{rule}: final accuracy per split", fontsize=10)
    _suptitle(fig, ds, "rule mixing: lower layers by one rule, upper layers by another")
    return fig


FIGURES: dict[str, Callable[[xr.Dataset], Figure]] = {
    "angle_layers": angle_per_layer,
    "angle_steps": angle_per_step,
    "accuracy": accuracy,
    "noise_map": noise_map,
    "mixing": mixing,
}


def applicable(ds: xr.Dataset) -> list[str]:
    """The figures that apply to a loaded study, decided by the workflow's own rule (:func:`sim.study.figures_for`
    of its sweep coordinates): the three per-experiment figures always, the noise map when the study sweeps
    ``message_std`` and ``eta``, the mixing figure when it sweeps ``split``."""
    return figures_for(str(c) for c in ds.coords)


def save(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write ``fig`` as a PNG (through the Agg canvas; no display needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    return path
