"""The numbers and figures of the reproduction report (docs/reproduction.md, issue 15) from the reproduce studies.

``python -m analysis.reproduction RESULTS --out docs/reproduction [--partial] [--study NAME ...]`` reads
``RESULTS/reproduce`` (the paper's CIFAR-10 grid and its controls) and ``RESULTS/reproduce_imagenet_sample`` (the
conv net on the ImageNet sample), whichever exist, or the studies named (e.g. ``--study zoo_cifar10``), and writes

- ``numbers.md``: per network, one row per run group (rule · experiment): epochs trained, final train and test
  accuracy (and test top-5), the angle to BP averaged over the hidden layers (all recorded steps, and the last
  epoch's), and each layer's angle in the last epoch; then the controls' answer to "is GP's gap to BP the
  regulariser?" (test accuracy differences after the last epoch);
- ``figures/layers_<network>.png``: each hidden layer's angle to BP over training, one panel per layer (the paper's
  per-layer figures), a line per run group, smoothed over one epoch of recorded steps;
- ``figures/orthogonality_<network>.png`` and a table in ``numbers.md``: for the GP-family runs (GP, vGP) the angle to
  BP of each hidden layer against the orthogonality error (``||W W^T - I||_F / sqrt(n)``, summed) of the layers
  above it, through which its target came, one point per layer and epoch: the evidence for the paper's "the gap
  comes from imperfect orthogonality" (REFERENCE.md section 8);
- a table in ``numbers.md`` for GP under the regulariser alone (``<net>_regalone``, started from ``<net>_noortho``'s
  weights): per hidden layer, the angle and the orthogonality error above it at the start, after the first epoch and
  after the last: the fourth claim's test.

The report's prose quotes these files; they are regenerated, never edited. Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from analysis.figures import Line, _angle_axis, _grid, _line_kw, final, panels

STUDIES = ("reproduce", "reproduce_imagenet_sample")
#: the rules whose angle to BP is set by how far the square weights are from orthogonal (REFERENCE.md section 3)
GP_FAMILY = ("gp", "vgp")


def _network(panel) -> str:
    """The panel's network and data, and its sweep point if the study has one: 'cifar10_deep on npz' or
    'digits_deep on digits, eta=1e-07' (its title, on one line): what tells panels, table rows and figures apart."""
    return ", ".join(panel.title.split("\n"))


def _short(network: str) -> str:
    """``network`` without its data: 'cifar10_deep', 'digits_deep, eta=1e-07'."""
    name, _, rest = network.partition(" on ")
    point = rest.partition(", ")[2]
    return f"{name}, {point}" if point else name


def _file_stem(network: str) -> str:
    """``network`` (of :func:`_network`) as a file-name part, the figures' names: the network and the sweep point,
    without the data ('cifar10_deep', 'digits_deep_eta=1e-07'), so no two panels of a study share a file."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", _short(network)).strip("_")


def _hidden(line: Line) -> list[str]:
    """The layers below the output that this run group's network has."""
    has = line.runs.layer_rule.notnull().any([d for d in line.runs.layer_rule.dims if d != "layer"])
    return [str(layer) for layer in line.runs.layer.values if str(layer) != "output" and bool(has.sel(layer=layer))]


def _last_epoch_steps(line: Line) -> xr.DataArray:
    """Boolean mask over ``step``: the recorded steps of the last epoch every seed of the group reached."""
    epochs = line.runs.step_epoch.max("step", skipna=True).min("seed", skipna=True)
    return (line.runs.step_epoch == epochs).any("seed")


def rows(ds: xr.Dataset) -> pd.DataFrame:
    """One row per run group of ``ds`` (a loaded study), in the figures' panel and line order."""
    out = []
    for panel in panels(ds):
        metric = panel.metric
        for line in panel.lines:
            runs = line.runs
            layers = _hidden(line)
            angle = runs.angle.sel(layer=layers)
            last = angle.where(_last_epoch_steps(line))
            row = {"network": _network(panel), "rule": line.rule, "experiment": line.experiment,
                   "epochs": int(np.isfinite(runs[f"test_{metric}"]).sum("epoch").min()),
                   "unfinished": bool(line.unfinished), "metric": metric,
                   "train": float(final(runs[f"train_{metric}"]).mean()),
                   "test": float(final(runs[f"test_{metric}"]).mean()),
                   "test_top5": float(final(runs["test_top5"]).mean()),
                   "angle_all": float(angle.mean(skipna=True)), "angle_last": float(last.mean(skipna=True))}
            for layer in layers:
                row[f"last:{layer}"] = float(last.sel(layer=layer).mean(skipna=True))
            out.append(row)
    return pd.DataFrame(out)


def _f(value: float, digits: int) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def rows_markdown(table: pd.DataFrame) -> str:
    """``table`` (of :func:`rows`) as one markdown table per network."""
    parts = []
    for network, group in table.groupby("network", sort=False):
        layers = [c for c in group.columns if c.startswith("last:") and group[c].notna().any()]
        metric = group.metric.iloc[0]
        head = (["rule · experiment", "epochs", f"train {metric}", f"test {metric}", "test top5", "angle (all)",
                 "angle (last epoch)"] + [c.split(":", 1)[1] for c in layers])
        lines = [f"### {network}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for _, r in group.iterrows():
            name = f"{r.rule} · {r.experiment}" + (" (unfinished)" if r.unfinished else "")
            cells = [name, str(r.epochs), _f(r.train, 3), _f(r.test, 3), _f(r.test_top5, 3), _f(r.angle_all, 2),
                     _f(r.angle_last, 2)]
            cells += [_f(r[c], 1) for c in layers]
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def regulariser_control(table: pd.DataFrame) -> str:
    """Test-accuracy differences that answer "is GP's gap to BP the regulariser?", per network, from the reproduce
    grid's experiments ``<net>`` (paper), ``<net>_ortho`` (BP/FA with GP's regulariser) and ``<net>_noortho``."""
    lines = ["| network | GP − BP | GP without regulariser − BP | BP with regulariser − BP "
             "| FA with regulariser − FA |", "|---|---:|---:|---:|---:|"]
    for network, g in table[table.experiment.str.startswith("cifar10")].groupby("network", sort=False):
        base = g.experiment.str.replace(r"_(ortho|noortho|f32target|f32diff|regalone)$", "", regex=True).iloc[0]

        def test(rule: str, experiment: str, g: pd.DataFrame = g) -> float:
            hit = g[(g.rule == rule) & (g.experiment == experiment)]
            return float(hit.test.iloc[0]) if len(hit) else np.nan

        bp, fa = test("bp", base), test("fa", base)
        cells = [test("gp", base) - bp, test("gp", f"{base}_noortho") - bp, test("bp", f"{base}_ortho") - bp,
                 test("fa", f"{base}_ortho") - fa]
        lines.append(f"| {network} | " + " | ".join(_f(100 * c, 1) + (" pt" if np.isfinite(c) else "")
                                                   for c in cells) + " |")
    return "\n".join(lines)


def angle_and_orthogonality(ds: xr.Dataset) -> pd.DataFrame:
    """One row per (run group of the GP family, hidden layer, epoch): the layer's angle to BP averaged over the
    epoch's recorded steps, and the orthogonality error of the layers above it after the epoch (the sum of
    ``||W W^T - I||_F / sqrt(n)`` over the square layers the layer's target is propagated through: its update equals
    BP's when they are all orthogonal, REFERENCE.md section 3); both averaged over seeds."""
    out = []
    for panel in panels(ds):
        for line in panel.lines:
            if line.rule not in GP_FAMILY:
                continue
            runs = line.runs
            order = [str(layer) for layer in runs.layer.values]
            errors = runs.ortho_error.mean("seed", skipna=True)
            for layer in _hidden(line):
                above = errors.sel(layer=order[order.index(layer) + 1:])
                path = above.sum("layer", min_count=1)
                angle = runs.angle.sel(layer=layer)
                for epoch in path.epoch.values:
                    a = float(angle.where(runs.step_epoch == epoch).mean("step", skipna=True)
                              .mean("seed", skipna=True))
                    e = float(path.sel(epoch=epoch))
                    if np.isfinite(a) and np.isfinite(e):
                        out.append({"network": _network(panel), "rule": line.rule,
                                    "experiment": line.experiment, "layer": layer, "epoch": int(epoch),
                                    "angle": a, "error_above": e})
    return pd.DataFrame(out, columns=["network", "rule", "experiment", "layer", "epoch", "angle", "error_above"])


def orthogonality_markdown(points: pd.DataFrame) -> str:
    """Per network and GP-family run group: the last epoch's orthogonality error above a hidden layer and its angle
    (means over the hidden layers), and the rank correlation of the two over every (layer, epoch) of the group."""
    lines = ["| network | rule · experiment | ortho error above a layer, last epoch | angle, last epoch "
             "| rank correlation (angle, error above) over layers x epochs |", "|---|---|---:|---:|---:|"]
    for (network, rule, experiment), g in points.groupby(["network", "rule", "experiment"], sort=False):
        last = g[g.epoch == g.epoch.max()]
        rho = g.angle.rank().corr(g.error_above.rank()) if len(g) > 2 else np.nan
        lines.append(f"| {network} | {rule} · {experiment} | {_f(last.error_above.mean(), 4)} "
                     f"| {_f(last.angle.mean(), 2)} | {_f(rho, 2)} |")
    return "\n".join(lines)


#: the reproduce study's experiment suffixes: GP under the regulariser alone, and the run it starts from
ALONE, SOURCE = "_regalone", "_noortho"


def regulariser_alone_markdown(ds: xr.Dataset, points: pd.DataFrame) -> str:
    """Per network, for GP under the regulariser alone (experiment ``<net>_regalone``, started from the weights of
    ``<net>_noortho``): each hidden layer's angle to BP at the first step (the source's trained weights), in the
    first epoch and in the last (epoch means), beside the orthogonality error of the layers above it at the start
    (the source's last epoch) and after the first and the last epoch. '' when the study has no such run."""
    lines = ["| network | layer | angle, step 0 | angle, epoch 1 | angle, last epoch | error above, start "
             "| after epoch 1 | after the last epoch |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for panel in panels(ds):
        network = _network(panel)
        for line in panel.lines:
            if not line.experiment.endswith(ALONE) or line.rule not in GP_FAMILY:
                continue
            source = line.experiment[:-len(ALONE)] + SOURCE
            here = points[(points.network == network) & (points.rule == line.rule)]
            alone, before = here[here.experiment == line.experiment], here[here.experiment == source]
            first = line.runs.angle.isel(step=0).mean("seed", skipna=True)
            for layer in _hidden(line):
                a = alone[alone.layer == layer].sort_values("epoch")
                b = before[before.layer == layer].sort_values("epoch")
                if a.empty:
                    continue
                start = float(b.error_above.iloc[-1]) if len(b) else np.nan
                lines.append(f"| {network} | {layer} | {_f(float(first.sel(layer=layer)), 2)} "
                             f"| {_f(a.angle.iloc[0], 3)} | {_f(a.angle.iloc[-1], 4)} | {_f(start, 4)} "
                             f"| {_f(a.error_above.iloc[0], 5)} | {_f(a.error_above.iloc[-1], 5)} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def orthogonality_figures(ds: xr.Dataset, points: pd.DataFrame):
    """Per network: the GP family's angle to BP against the orthogonality error of the layers above, a point per
    hidden layer and epoch, a colour per run group (log-log)."""
    import matplotlib.pyplot as plt

    figs = {}
    for panel in panels(ds):
        network = _network(panel)
        here = points[points.network == network]
        # a log-log plot has no place for 0 (an exactly orthogonal stack above, or an angle of 0): counted, not drawn
        drawn = here[(here.angle > 0) & (here.error_above > 0)]
        if drawn.empty:
            continue
        fig, ax = plt.subplots(figsize=(6.0, 4.2), layout="constrained")
        for line in panel.lines:
            g = drawn[(drawn.rule == line.rule) & (drawn.experiment == line.experiment)]
            if g.empty:
                continue
            kw = {"marker": "o", "alpha": 0.8, **_line_kw(line), "ls": "none", "ms": 3.5}
            ax.plot(g.error_above, g.angle, **kw)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("orthogonality error of the layers above, sum of ||W W^T - I||_F / sqrt(n)")
        ax.set_ylabel("angle to BP, epoch mean (deg)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, title="rule · experiment", title_fontsize=7)
        hidden = f"; {len(here) - len(drawn)} at 0 not drawn" if len(drawn) < len(here) else ""
        title = textwrap.fill(f"{_short(network)}: GP's angle to BP against orthogonality", width=70)
        ax.set_title(f"{title}\n(a point per hidden layer and epoch{hidden})", fontsize=9)
        figs[_file_stem(network)] = fig
    return figs


def layers_over_training(ds: xr.Dataset, smooth: int = 0):
    """Per network panel of ``ds``: one figure with a panel per hidden layer, each run group's angle to BP over
    training steps (mean over seeds; a centred rolling mean over ``smooth`` recorded steps, default one epoch's)."""
    figs = {}
    for panel in panels(ds):
        layers = list(dict.fromkeys(layer for line in panel.lines for layer in _hidden(line)))
        fig, axes = _grid(len(layers), width=3.6, height=2.8)
        for ax, layer in zip(axes, layers):
            for line in panel.lines:
                if layer not in _hidden(line):
                    continue
                a = line.runs.angle.sel(layer=layer).mean("seed", skipna=True)
                a = a.sel(step=np.isfinite(a))
                if a.sizes["step"] == 0:
                    continue
                per_epoch = int(a.sizes["step"] / max(1, np.nanmax(line.runs.step_epoch.values)))
                window = smooth or max(1, per_epoch)
                a = a.rolling(step=window, center=True, min_periods=1).mean()
                ax.plot(a.step.values, a.values, lw=1.1, ms=3 if a.sizes["step"] < 5 else 0, **_line_kw(line))
            ax.set_title(layer, fontsize=9)
            ax.set_xlabel("training step")
            ax.set_ylabel("angle to BP (deg)")
            _angle_axis(ax)
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=min(4, len(labels)), fontsize=7, frameon=False)
        fig.suptitle(f"{_network(panel)}: angle to BP per layer over training "
                     "(rolling mean over one epoch of recorded steps)", fontsize=10)
        figs[_file_stem(_network(panel))] = fig
    return figs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.reproduction", description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path, help="the workflow's results folder (holding reproduce/ and "
                   "reproduce_imagenet_sample/)")
    p.add_argument("--out", type=Path, required=True, help="output folder, e.g. docs/reproduction")
    p.add_argument("--partial", action="store_true", help="include runs still being written (marked unfinished)")
    p.add_argument("--study", action="append", help=f"a study folder under RESULTS to tabulate (repeatable; "
                   f"default: {', '.join(STUDIES)}), e.g. zoo_cifar10")
    args = p.parse_args(argv)
    studies = tuple(args.study or STUDIES)

    import matplotlib

    matplotlib.use("Agg")
    from analysis import load_study, save
    from sim.errors import GaitsimError

    found = [s for s in studies if (args.results / s).is_dir()]
    if not found:
        print(f"error: {args.results} has none of {', '.join(f'{s}/' for s in studies)}; run the studies first "
              "(docs/reproduction.md has the commands)", file=sys.stderr)
        return 2
    sections, figures = [], args.out / "figures"
    for study in found:
        try:
            ds = load_study(args.results / study, include_partial=args.partial,
                            on_incomplete="skip" if not args.partial else "raise")
        except GaitsimError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        table = rows(ds)
        sections.append(f"## Study {study}\n\n{rows_markdown(table)}")
        if study == "reproduce":
            sections.append("### Is GP's gap to BP the regulariser? (test accuracy differences, last epoch)\n\n"
                            + regulariser_control(table))
        points = angle_and_orthogonality(ds)
        if not points.empty:
            sections.append("### GP's angle and the orthogonality of the layers above\n\n"
                            + orthogonality_markdown(points))
            alone = regulariser_alone_markdown(ds, points)
            if alone:
                sections.append("### The regulariser alone, from GP trained without it (angles: degrees; error "
                                "above: summed ||W W^T - I||_F / sqrt(n) of the layers above)\n\n" + alone)
        for network, fig in layers_over_training(ds).items():
            save(fig, figures / f"layers_{network}.png")
        for network, fig in orthogonality_figures(ds, points).items():
            save(fig, figures / f"orthogonality_{network}.png")
    args.out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python -m analysis.reproduction", str(args.results), "--out", str(args.out),
                        *(["--partial"] if args.partial else []), *(f"--study {s}" for s in args.study or ())])
    header = (f"# Numbers of {', '.join(found)}\n\nGenerated by `{command}`; do not edit. Angles in "
              "degrees: mean over the hidden layers (the output's is 0 by construction for FA and GP) and over "
              "the recorded steps (all, or the last epoch's); accuracies after the last epoch trained, mean over "
              "seeds.\n\n")
    (args.out / "numbers.md").write_text(header + "\n\n".join(sections) + "\n")
    print(f"wrote {args.out / 'numbers.md'} and the figures in {figures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
