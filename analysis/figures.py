"""The study figures, drawn from the Dataset of :func:`analysis.load.load_study` (REFERENCE.md sections 7-8).

Each function takes the study Dataset and returns a :class:`matplotlib.figure.Figure` built with the object-oriented
API (no pyplot state; :func:`analysis.style.save` writes it as its suffix asks, no display needed):

* :func:`angle_per_layer`: per panel, each run group's angle to BP in every layer, mean +/- std over the recorded
  steps and seeds;
* :func:`angle_per_step`: per panel, each run group's angle to BP (mean over the layers below the output) at every
  recorded step, mean over seeds with the seed range shaded;
* :func:`accuracy`: per panel, train (dashed) and test (solid) accuracy per epoch, top-1 (top-5 for ImageNet);
* :func:`noise_map`: per experiment and rule, the mean angle over the message-noise std x eta grid of a noise-floor
  sweep, and the final test accuracy on the same grid;
* :func:`mixing`: the angle of every layer against the split depth of a rule-mixing study (one rule below, another
  above), and the final test accuracy against the split.

**Panels are networks, not experiments.** The three per-run figures draw one panel per network and data
(the coordinates ``network`` and ``data_kind``) and, in a sweep, per sweep point: runs of the same network on the
same data are compared in one panel whatever experiment they came from (bp/fa of one experiment next to gp and vgp
of others in their own arithmetic), labelled by rule, and by experiment where a panel holds several. An experiment
that does not sweep a parameter (its missing label) appears in every panel of that parameter's values, as a
reference. Every line and grid is picked from the Dataset by xarray selection (``.sel``, ``.stack``).

Each rule has one colour and marker in every figure (:mod:`analysis.style`, from the registry). A run that has not
finished (loaded with ``include_partial=True``) is drawn dotted and labelled with its progress, e.g.
``gp (unfinished, epoch 3/10)``, and its heatmap cells are prefixed ``~``: never mistaken for a result.

:func:`applicable` lists the figures a study's Dataset can draw (the sweep figures need their sweep dims).
"""

from __future__ import annotations

import itertools
import math
import textwrap
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import xarray as xr
from matplotlib.colors import to_hex, to_rgb
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator as _NullLocator

from analysis.load import MISSING_TEXT, sweep_dims
from analysis.style import UNFINISHED, rule_style, save
from sim.study import figures_for

__all__ = ["FIGURES", "accuracy", "angle_per_layer", "angle_per_step", "applicable", "final", "hidden_angle",
           "mixing", "noise_map", "panels", "runs_present", "save"]


def _grid(n: int, width: float = 4.2, height: float = 3.2, max_cols: int = 4) -> tuple[Figure, list]:
    cols = max(1, min(max_cols, n))
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width * cols, height * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def runs_present(ds: xr.Dataset) -> xr.DataArray:
    """Which runs exist (dims experiment, sweep dims, rule, seed): ``diverged`` is 0 or 1 for every loaded run."""
    if "diverged" in ds:
        return ds.diverged.notnull()
    return np.isfinite(ds.train_top1).any("epoch")


def _is_missing(value) -> bool:
    return value == MISSING_TEXT or (isinstance(value, float) and np.isnan(value))


def _fmt(value) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


# ----- panels and lines ---------------------------------------------------------------------------------------------
@dataclass
class Line:
    """One drawn series: the runs (over seeds) of one rule in one experiment at one sweep point."""

    rule: str
    experiment: str
    runs: xr.Dataset
    """The runs, selected from the study (dims seed, step, layer, epoch)."""
    label: str
    style: dict
    unfinished: bool


@dataclass
class Panel:
    """The runs of one network on one data set (at one sweep point, in a sweep)."""

    title: str
    runs: xr.Dataset
    """The study selected to this panel: its experiments and, per sweep dim, the point and the missing label."""
    lines: list[Line]

    @property
    def metric(self) -> str:
        return str(self.runs.metric.values.ravel()[0]) if "metric" in self.runs.coords else "top1"

    def layers(self) -> list[str]:
        """The layers the panel's networks have (the study's layer dim is the union over networks)."""
        has = self.runs.layer_rule.notnull().any([d for d in self.runs.layer_rule.dims if d != "layer"])
        return [str(layer) for layer in self.runs.layer.values if bool(has.sel(layer=layer))]


def _progress(runs: xr.Dataset) -> str:
    """'(unfinished, epoch 3/10)' for runs of which some are still being written: the least epochs reached."""
    unfinished = runs.unfinished.fillna(0) > 0
    done = np.isfinite(runs.test_top1).sum("epoch").where(unfinished)
    total = runs.epochs_total.where(unfinished).max()
    epochs = int(done.min()) if bool(unfinished.any()) else 0
    of = f"/{int(total)}" if np.isfinite(total) else ""
    seeds = f"{int(unfinished.sum())} of {runs.sizes['seed']} seeds, " if runs.sizes["seed"] > 1 else ""
    return f" (unfinished, {seeds}epoch {epochs}{of})"


def _shade(color: str, k: int) -> str:
    """The k-th variant of a rule's colour in one panel (k = 0: the colour itself): blended towards white for odd k
    and towards black for even k, a step further every second variant, so the five variants of a rule in the
    reproduce study's panels (GP and its four controls) get five distinct colours (blending towards white alone ran
    out after two)."""
    if k == 0:
        return to_hex(to_rgb(color))
    f = min(0.75, 0.3 * ((k + 1) // 2))
    target = 1.0 if k % 2 else 0.0
    return to_hex(tuple(c + (target - c) * f for c in to_rgb(color)))


def _lines(runs: xr.Dataset) -> list[Line]:
    """Every (rule, experiment, sweep labels) of ``runs`` that has runs, in rule order, then experiment order."""
    sweep = [d for d in sweep_dims(runs) if d in runs.dims]
    present = runs_present(runs).any("seed")
    stacked = present.stack(variant=("experiment", *sweep)).transpose("rule", "variant")
    lines: list[Line] = []
    for rule in runs.rule.values:
        mask = stacked.sel(rule=rule).values
        for k, i in enumerate(np.flatnonzero(mask)):
            where = {d: stacked.variant[d].values[i] for d in ("experiment", *sweep)}
            sel = runs.sel(rule=rule, **{d: [v] for d, v in where.items()}).squeeze(["experiment", *sweep])
            style = rule_style(str(rule))
            style["color"] = _shade(style["color"], k)
            unfinished = "unfinished" in sel and bool((sel.unfinished.fillna(0) > 0).any())
            lines.append(Line(str(rule), str(where["experiment"]), sel, str(rule), style, unfinished))
    several = len({line.experiment for line in lines}) > 1
    for line in lines:
        line.label = f"{line.rule} · {line.experiment}" if several else line.rule
        if line.unfinished:
            line.label += _progress(line.runs)
    return lines


def panels(ds: xr.Dataset) -> list[Panel]:
    """The panels of the per-run figures: one per network and data (and sweep point), in experiment order."""
    sweep = sweep_dims(ds)
    present = runs_present(ds)
    keys = list(dict.fromkeys(zip(ds.network.values.tolist(), ds.data_kind.values.tolist()))) \
        if "network" in ds.coords else [(None, None)]
    out: list[Panel] = []
    for network, kind in keys:
        exps = [str(e) for e in ds.experiment.values if network is None
                or (ds.network.sel(experiment=e).item(), ds.data_kind.sel(experiment=e).item()) == (network, kind)]
        group = present.sel(experiment=exps)
        facets: dict[str, list] = {}
        for d in sweep:
            used = group.any([x for x in group.dims if x != d])
            values = [v for v in ds[d].values.tolist() if bool(used.sel({d: v})) and not _is_missing(v)]
            missing = [v for v in ds[d].values.tolist() if _is_missing(v)]
            facets[d] = [[v, *missing] for v in values] or [missing]
        name = f"{network} on {kind}" if network else (kind or exps[0])
        for combo in itertools.product(*(facets[d] for d in sweep)):
            runs = ds.sel(experiment=exps, **dict(zip(sweep, combo)))
            lines = _lines(runs)
            if not lines:
                continue
            point = ", ".join(f"{d}={_fmt(labels[0])}" for d, labels in zip(sweep, combo)
                              if not _is_missing(labels[0]))
            out.append(Panel(f"{name}\n{point}" if point else name, runs, lines))
    return out


def _panel_figure(ds: xr.Dataset) -> tuple[Figure, list, list[Panel]]:
    ps = panels(ds)
    fig, axes = _grid(len(ps))
    return fig, axes, ps


# ----- reductions ---------------------------------------------------------------------------------------------------
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
    da = da.transpose(..., dim)
    values = da.values
    out = np.full(values.shape[:-1], np.nan)
    dims = [d for d in da.dims if d != dim]
    coords = {name: c for name, c in da.coords.items() if dim not in c.dims}
    if values.shape[-1]:
        finite = np.isfinite(values)
        has = finite.any(-1)
        last = values.shape[-1] - 1 - np.argmax(finite[..., ::-1], axis=-1)
        out[has] = np.take_along_axis(values, last[..., None], -1)[..., 0][has]
    return xr.DataArray(out, dims=dims, coords=coords, attrs=da.attrs)


def _suptitle(fig: Figure, ds: xr.Dataset, text: str) -> None:
    unfinished = int((ds.unfinished.fillna(0) > 0).sum()) if "unfinished" in ds else 0
    note = (f"\nPARTIAL: {unfinished} of {int(runs_present(ds).sum())} runs unfinished (dotted; values so far, "
            "not results)") if unfinished else ""
    # wrapped to the figure's width (about 10 characters an inch at the title's size): a one-panel figure is narrow
    title = textwrap.fill(f"{ds.attrs.get('study', 'study')}: {text}", width=max(30, int(fig.get_figwidth() * 10)))
    fig.suptitle(f"{title}{note}", color="#b00000" if unfinished else None)


def _line_kw(line: Line, ls: str = "-") -> dict:
    kw = {**line.style, "ls": ls, "label": line.label}
    if line.unfinished:
        kw.update(UNFINISHED, ls=UNFINISHED["ls"] if ls == "-" else "-.", markerfacecolor="none")
    return kw


def _finish(ax, panel: Panel, legend_title: str | None = "rule") -> None:
    # a network with options ('imagenet_conv(classes=200, image_size=96, ...) on npz') is wider than its panel
    width = max(30, int(ax.get_figure().get_figwidth() * 11 / max(1, len(ax.get_figure().axes))))
    ax.set_title("\n".join(textwrap.fill(line, width=width) for line in panel.title.splitlines()), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, title=legend_title, title_fontsize=7)


# ----- figures ------------------------------------------------------------------------------------------------------
def angle_per_layer(ds: xr.Dataset) -> Figure:
    """Per panel: each run group's angle to BP in every layer, mean +/- std over recorded steps and seeds."""
    fig, axes, ps = _panel_figure(ds)
    for ax, panel in zip(axes, ps):
        layers = panel.layers()
        x = np.arange(len(layers))
        for i, line in enumerate(panel.lines):
            a = line.runs.angle.sel(layer=layers).stack(sample=("seed", "step"))
            offset = (i - (len(panel.lines) - 1) / 2) * 0.08
            ax.errorbar(x + offset, a.mean("sample", skipna=True).values, yerr=a.std("sample", skipna=True).values,
                        ms=4, capsize=2, lw=1.2, **_line_kw(line))
        ax.set_xticks(x, layers, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel("angle to BP (deg)")
        _angle_axis(ax)
        _finish(ax, panel)
    _suptitle(fig, ds, "angle of each layer's update to BP (mean ± std over recorded steps and seeds)")
    return fig


def angle_per_step(ds: xr.Dataset) -> Figure:
    """Per panel: each run group's angle to BP (mean over hidden layers) at every recorded step."""
    fig, axes, ps = _panel_figure(ds)
    for ax, panel in zip(axes, ps):
        for line in panel.lines:
            a = hidden_angle(line.runs)
            a = a.sel(step=np.isfinite(a).any("seed"))
            if a.sizes["step"] == 0:
                continue
            ax.plot(a.step.values, a.mean("seed", skipna=True).values, lw=1.2,
                    markevery=max(1, a.sizes["step"] // 8), ms=3, **_line_kw(line))
            if a.sizes["seed"] > 1:
                ax.fill_between(a.step.values, a.min("seed", skipna=True).values, a.max("seed", skipna=True).values,
                                alpha=0.15, color=line.style["color"], lw=0)
        ax.set_xlabel("training step")
        ax.set_ylabel("angle to BP (deg)")
        _angle_axis(ax)
        _finish(ax, panel)
    _suptitle(fig, ds, "angle to BP per step (mean over hidden layers and seeds; shaded: seed range)")
    return fig


def accuracy(ds: xr.Dataset) -> Figure:
    """Per panel: train (dashed) and test (solid) accuracy per epoch, mean over seeds."""
    fig, axes, ps = _panel_figure(ds)
    for ax, panel in zip(axes, ps):
        metric = panel.metric
        for line in panel.lines:
            for split, ls in (("train", "--"), ("test", "-")):
                acc = line.runs[f"{split}_{metric}"]
                acc = acc.sel(epoch=np.isfinite(acc).any("seed"))
                kw = _line_kw(line, ls)
                kw["label"] = f"{kw['label']} {split}"
                ax.plot(acc.epoch.values, acc.mean("seed", skipna=True).values, lw=1.3,
                        ms=3 if acc.sizes["epoch"] < 12 else 0, **kw)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{metric} accuracy")
        ax.set_ylim(0, 1)
        _finish(ax, panel, legend_title=None)
    _suptitle(fig, ds, "accuracy per epoch (solid: test, dashed: train; mean over seeds)")
    return fig


def _heatmap(ax, grid: xr.DataArray, *, vmin, vmax, cmap: str, fmt: str, diverged: xr.DataArray | None = None,
             unfinished: xr.DataArray | None = None):
    """Draw a 2-d DataArray (rows: its first dim, columns: its second) with its values written in the cells."""
    rows, cols = (grid[d].values.tolist() for d in grid.dims)
    values = grid.values
    im = ax.imshow(values, origin="lower", aspect="auto", vmin=vmin, vmax=vmax, cmap=cmap)
    ax.set_xticks(range(len(cols)), [_fmt(c) for c in cols], fontsize=8)
    ax.set_yticks(range(len(rows)), [_fmt(r) for r in rows], fontsize=8)
    mid = (vmin + vmax) / 2
    div = diverged.values if diverged is not None else np.zeros(values.shape)
    unf = unfinished.values if unfinished is not None else np.zeros(values.shape)
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            text = ("~" if unf[i, j] > 0 else "") + format(v, fmt) + ("*" if div[i, j] > 0 else "")
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="white" if (v < mid) == (cmap == "viridis") else "black")
        elif div[i, j] > 0:
            ax.text(j, i, "diverged", ha="center", va="center", fontsize=7, color="#d62728")
    return im


def _valid(ds: xr.Dataset, dim: str) -> list:
    return [v for v in ds[dim].values.tolist() if not _is_missing(v)]


def _run_groups(ds: xr.Dataset, sweep: tuple[str, ...]) -> list[tuple[str, str]]:
    """(experiment, rule) pairs with runs at a sweep point of ``sweep`` (not at its missing labels)."""
    present = runs_present(ds).sel({d: _valid(ds, d) for d in sweep})
    has = present.any([d for d in present.dims if d not in ("experiment", "rule")])
    return [(str(e), str(r)) for e in ds.experiment.values for r in ds.rule.values
            if bool(has.sel(experiment=e, rule=r))]


def noise_map(ds: xr.Dataset, row: str = "message_std", col: str = "eta") -> Figure:
    """Per experiment and rule: mean angle to BP (hidden layers, recorded steps, seeds) and final test accuracy on
    the ``row`` x ``col`` grid of a noise-floor sweep (the sweep dims ``message_std`` and ``eta``; any further sweep
    dim is averaged over)."""
    for c in (row, col):
        if c not in ds.dims or c not in ds.coords:
            raise ValueError(f"noise_map needs the sweep dim {c!r}; this study sweeps {sweep_dims(ds) or 'nothing'}")
    sel = {row: _valid(ds, row), col: _valid(ds, col)}
    sub = ds.sel(sel)
    other = [d for d in sweep_dims(ds) if d not in (row, col)]
    angle = hidden_angle(sub).mean(("step", "seed", *other), skipna=True)
    acc = final(sub.test_top1).mean(("seed", *other), skipna=True)
    div = sub.diverged.fillna(0).sum(("seed", *other)) if "diverged" in sub else xr.zeros_like(acc)
    unf = sub.unfinished.fillna(0).sum(("seed", *other)) if "unfinished" in sub else xr.zeros_like(acc)
    groups = _run_groups(ds, (row, col))
    several = len({e for e, _ in groups}) > 1
    vmax = float(angle.max()) if np.isfinite(angle).any() else 1.0
    fig = Figure(figsize=(4.3 * max(1, len(groups)) + 1.0, 7.2), layout="constrained")
    axes = fig.subplots(2, max(1, len(groups)), squeeze=False)
    im_a = im_t = None
    for k, (exp, rule) in enumerate(groups):
        at = {"experiment": exp, "rule": rule}
        cell = {"diverged": div.sel(at).transpose(row, col), "unfinished": unf.sel(at).transpose(row, col)}
        im_a = _heatmap(axes[0, k], angle.sel(at).transpose(row, col), vmin=0.0, vmax=max(vmax, 1e-9),
                        cmap="viridis", fmt=".2g", **cell)
        im_t = _heatmap(axes[1, k], acc.sel(at).transpose(row, col), vmin=0.0, vmax=1.0, cmap="magma", fmt=".2f",
                        **cell)
        name = f"{rule} · {exp}" if several else rule
        axes[0, k].set_title(f"{name}: mean angle to BP (deg)", fontsize=10, color=rule_style(rule)["color"])
        axes[1, k].set_title(f"{name}: final test accuracy", fontsize=10, color=rule_style(rule)["color"])
        for ax in axes[:, k]:
            ax.set_xlabel(f"{col} (vgp: gamma)" if col == "eta" else col)
            ax.set_ylabel(row)
    if im_a is not None:
        fig.colorbar(im_a, ax=axes[0, :].tolist(), label="angle (deg)", shrink=0.9)
        fig.colorbar(im_t, ax=axes[1, :].tolist(), label="test accuracy", shrink=0.9)
    _suptitle(fig, ds, f"noise floor: {row} x {col} (*: a seed diverged, NaN/Inf; its steps until then count"
                       + ("; ~: unfinished" if bool((unf > 0).any()) else "") + ")")
    return fig


def mixing(ds: xr.Dataset, param: str = "split") -> Figure:
    """Angle of every layer against the split depth (one rule below the split, another above), and final test
    accuracy per split; one row per experiment and rule label (e.g. ``fa+gp``)."""
    if param not in ds.dims or param not in ds.coords:
        raise ValueError(f"mixing needs the sweep dim {param!r} (the number of layers below the split)")
    sub = ds.sel({param: _valid(ds, param)})
    other = [d for d in sweep_dims(ds) if d != param]
    groups = _run_groups(ds, (param,))
    fig = Figure(figsize=(11, 1.2 + 3.6 * max(1, len(groups))), layout="constrained")
    axes = fig.subplots(max(1, len(groups)), 2, squeeze=False, width_ratios=[1.6, 1])
    angle = sub.angle.mean(("step", "seed", *other), skipna=True)
    unfinished = sub.unfinished.fillna(0).sum(("seed", *other)) if "unfinished" in sub else None
    for k, (exp, rule) in enumerate(groups):
        at = {"experiment": exp, "rule": rule}
        grid = angle.sel(at).transpose(param, "layer")
        layers = [str(v) for v in grid.layer.values]
        vmax = float(grid.max()) if np.isfinite(grid).any() else 1.0
        ax = axes[k, 0]
        unf = None if unfinished is None else unfinished.sel(at).broadcast_like(grid).transpose(param, "layer")
        im = _heatmap(ax, grid, vmin=0.0, vmax=max(vmax, 1e-9), cmap="viridis", fmt=".2g", unfinished=unf)
        for i, split in enumerate(grid[param].values.tolist()):  # outline the layers below the split
            if split > 0:
                edge = min(split, len(layers)) - 0.5
                ax.plot([-0.5, edge], [i - 0.5, i - 0.5], color="white", lw=0.6)
                ax.plot([edge, edge], [i - 0.5, i + 0.5], color="white", lw=1.5)
        ax.set_xticklabels(layers, rotation=45, ha="right")
        ax.set_xlabel("layer")
        ax.set_ylabel(f"{param} (layers below the split)")
        below, above = str(ds.below.sel(rule=rule).item()), str(ds.above.sel(rule=rule).item())
        ax.set_title(f"{exp}, {below} below / {above} above: mean angle to BP per layer (deg); white line: split",
                     fontsize=9)
        fig.colorbar(im, ax=ax, label="angle (deg)", shrink=0.9)
        ax2 = axes[k, 1]
        for split_name, style in (("train", "--"), ("test", "-")):
            da = final(sub[f"{split_name}_top1"].sel(at))
            if other:
                da = da.mean(other, skipna=True)
            ax2.errorbar(da[param].values, da.mean("seed").values,
                         yerr=da.std("seed").values if da.sizes["seed"] > 1 else None, fmt=style, ms=4, capsize=2,
                         label=split_name, **{**rule_style(above), "zorder": 2})
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
    of its sweep dims): the three per-run figures always, the noise map when the study sweeps ``message_std`` and
    ``eta``, the mixing figure when it sweeps ``split``."""
    return figures_for(sweep_dims(ds))
