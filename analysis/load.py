"""Open the run stores of a study as one ``xarray.Dataset`` with ``experiment``, ``rule`` and ``seed`` dims.

The workflow writes one zarr store per run at ``results/<study>/<experiment>/rule~<rule>/seed~<seed>/run.zarr``
(docs/workflow.md); a sweep point's experiment carries its parameters as further ``key~value`` folders, e.g.
``results/noise/deep/message_std~0.01/eta~1e-05/rule~gp/seed~0/run.zarr``. :func:`load_study` parses those path
parts, opens every store with :func:`sim.archive.open_run` (``xarray.open_zarr``; docs/runs.md: the archive
contract), refuses stores whose ``complete`` attribute is not true (a crashed or killed run leaves a readable prefix
that must not pass as a result), and outer-joins them: runs with fewer steps or epochs are padded with NaN. A store
the workflow published as *diverged* (its run stopped at a NaN/Inf: a final outcome of a sweep, attribute
``diverged``) is kept and flagged.

    ds = load_study("results/quick")
    ds.angle.sel(experiment="deep", rule="gp").mean("seed")      # (step, layer)
    ds.test_top1.isel(epoch=-1)                                   # (experiment, rule, seed)

Per-experiment coordinates: ``group`` (the experiment's first path part), every sweep parameter (``message_std``,
``eta``, ``split``, ``dtype``, ...: numbers where they parse), ``data_kind`` (from the run config) and ``metric``
('top5' for ImageNet data, else 'top1': the accuracy the figures and the table report). Per-run variables besides
the archive's: ``layer_rule`` (the rule of each layer, which differs between runs of a mixing study), ``config``
(the resolved run config, JSON) and ``diverged`` (1 for a diverged run, 0 for a complete one, NaN where there is no
run: also the mask of which runs exist). Attributes: ``study``.

Nothing here imports torch: analysis runs where the simulator does not.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from sim.archive import open_run
from sim.rules.registry import specs

#: archive variables a study keeps (per-step, per-epoch and per-layer records; not the probe activities)
VARIABLES = ("angle", "loss", "train_top1", "train_top5", "test_top1", "test_top5", "train_loss", "test_loss",
             "ortho_error", "epoch_wall_s")
#: order of the rule dim: the registry's rules first, in its order (the built-in catalogue: bp, fa, vgp, gp, then the
#: zoo; then plugins), anything else (mixtures like 'fa+gp') after, by name
RULE_ORDER = tuple(specs())
STORE_NAME = "run.zarr"


class IncompleteStoreError(ValueError):
    """A run store whose ``complete`` attribute is not true (still running, crashed or killed)."""


@dataclass(frozen=True)
class RunPath:
    """What a store's path says about the run."""

    path: Path
    study: str
    experiment: str
    """The path between the study folder and ``rule~``: the group, then any ``key~value`` sweep parts."""
    group: str
    rule: str
    seed: int
    params: dict[str, Any] = field(default_factory=dict)
    """Sweep parameters from the experiment's ``key~value`` parts, numbers parsed."""


def parse_value(text: str) -> Any:
    """``'3'`` -> 3, ``'1e-05'`` -> 1e-05, anything else stays a string."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _kv(part: str) -> tuple[str, str] | None:
    if "~" not in part:
        return None
    key, _, value = part.partition("~")
    return (key, value) if key and value else None


def parse_store_path(path: str | Path) -> RunPath:
    """Parse ``.../<study>/<group>[/<key>~<value>...]/rule~<rule>/seed~<seed>/run.zarr``."""
    path = Path(path)
    parts = path.parts
    try:
        i = max(k for k, part in enumerate(parts) if part.startswith("rule~"))
    except ValueError:
        raise ValueError(f"{path}: not a study run store (no rule~<rule> folder in its path)") from None
    seed_part = _kv(parts[i + 1]) if i + 1 < len(parts) else None
    if seed_part is None or seed_part[0] != "seed" or not seed_part[1].isdigit():
        raise ValueError(f"{path}: expected .../rule~<rule>/seed~<n>/{STORE_NAME}")
    g = i - 1
    params: dict[str, Any] = {}
    while g >= 0 and _kv(parts[g]) is not None:
        key, value = _kv(parts[g])
        params[key] = parse_value(value)
        g -= 1
    if g < 1:
        raise ValueError(f"{path}: expected <study>/<experiment>/ before rule~")
    return RunPath(path=path, study=parts[g - 1], experiment="/".join(parts[g:i]), group=parts[g],
                   rule=_kv(parts[i])[1], seed=int(seed_part[1]), params=dict(reversed(list(params.items()))))


def find_stores(root: str | Path) -> list[Path]:
    """Every ``run.zarr`` below ``root`` (a study folder) that sits in a ``rule~.../seed~...`` folder, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such study folder (expected results/<study>)")
    stores = [p for p in root.rglob(STORE_NAME) if p.parent.name.startswith("seed~")
              and p.parent.parent.name.startswith("rule~")]
    return sorted(stores)


def _layer_key(name: str) -> tuple:
    m = re.fullmatch(r"(.*?)(\d+)", name)
    stem, num = (m.group(1), int(m.group(2))) if m else (name, -1)
    return (name == "output", stem, num)


def _rule_key(name: str) -> tuple:
    return (RULE_ORDER.index(name), "") if name in RULE_ORDER else (len(RULE_ORDER), name)


def _run_dataset(run: RunPath, on_incomplete: str, on_diverged: str) -> xr.Dataset | None:
    ds = open_run(run.path)
    diverged = ds.attrs.get("diverged")
    if diverged and ds.attrs.get("complete") is not True and on_diverged == "raise":
        raise IncompleteStoreError(f"{run.path}: the run diverged ({diverged})")
    if ds.attrs.get("complete") is not True and not diverged:
        msg = (f"{run.path}: the run store is not complete (attribute complete = {ds.attrs.get('complete')!r}); "
               "it is still running, or it crashed or was killed. Rerun its job (snakemake reruns it) or delete it.")
        if on_incomplete == "skip":
            warnings.warn(msg, stacklevel=3)
            return None
        raise IncompleteStoreError(msg)
    keep = [v for v in VARIABLES if v in ds.data_vars]
    out = ds[keep].reset_coords(drop=False)
    extra = [c for c in ("rule", "square", "step_epoch") if c in out.variables]
    out = out.rename({c: f"layer_{c}" if c != "step_epoch" else c for c in extra})
    drop = [c for c in out.coords if c not in ("step", "epoch", "layer")]
    out = out.drop_vars(drop).load()
    config = ds.attrs.get("config", "{}")
    out["config"] = xr.DataArray(config)
    out["diverged"] = xr.DataArray(1.0 if diverged and ds.attrs.get("complete") is not True else 0.0,
                                   attrs={"description": "1: the run stopped at a NaN/Inf or a singular layer "
                                                         "(attribute diverged); 0: it completed; NaN: no such run"})
    if "layer" in out.coords:
        out = out.assign_coords(layer=out.layer.values.astype(object))
    if "layer_rule" in out:
        out["layer_rule"] = out.layer_rule.astype(object)
    return out.expand_dims(experiment=[run.experiment], rule=[run.rule], seed=[run.seed])


def _data_kind(config_json: str) -> str:
    try:
        return str(json.loads(config_json).get("data", {}).get("kind", ""))
    except (ValueError, AttributeError):
        return ""


def load_study(source: str | Path | Sequence[str | Path], *, on_incomplete: str = "raise",
               on_diverged: str = "keep") -> xr.Dataset:
    """Open every run store of one study into one Dataset with ``experiment``, ``rule`` and ``seed`` dims.

    Args:
        source: a study folder (``results/<study>``; every ``run.zarr`` below it) or a list of store paths.
        on_incomplete: 'raise' (default): an incomplete store is an :class:`IncompleteStoreError`; 'skip': leave it
            out with a warning (for a look at a study while it runs).
        on_diverged: 'keep' (default): a store the workflow published as diverged (attribute ``diverged``: the run
            stopped at a NaN/Inf or a singular layer, a final outcome of a study with ``on_diverge: keep``) is loaded
            with what it recorded up to then, and flagged in the variable ``diverged``; 'raise': refuse it.

    Raises:
        IncompleteStoreError: a store's ``complete`` attribute is not true (with ``on_incomplete='raise'``).
        ValueError: no stores, a path that does not parse, stores of several studies, or one run given twice.
    """
    if on_incomplete not in ("raise", "skip"):
        raise ValueError("on_incomplete must be 'raise' or 'skip'")
    if on_diverged not in ("keep", "raise"):
        raise ValueError("on_diverged must be 'keep' or 'raise'")
    paths = find_stores(source) if isinstance(source, (str, Path)) else [Path(p) for p in source]
    if not paths:
        raise ValueError(f"no run stores ({STORE_NAME}) found in {source}")
    runs = [parse_store_path(p) for p in paths]
    studies = sorted({r.study for r in runs})
    if len(studies) > 1:
        raise ValueError(f"stores of several studies ({', '.join(studies)}); load one study folder at a time")
    seen: dict[tuple, Path] = {}
    for r in runs:
        key = (r.experiment, r.rule, r.seed)
        if key in seen:
            raise ValueError(f"run {key} given twice: {seen[key]} and {r.path}")
        seen[key] = r.path
    parts = [d for d in (_run_dataset(r, on_incomplete, on_diverged) for r in runs) if d is not None]
    if not parts:
        raise ValueError(f"no complete run stores in {source}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        ds = xr.merge(parts, join="outer", compat="no_conflicts", combine_attrs="drop_conflicts")
    ds = _canonical_order(ds)
    ds = _experiment_coords(ds, [r for r in runs])
    ds.attrs = {"study": studies[0]}
    return ds


def _canonical_order(ds: xr.Dataset) -> xr.Dataset:
    order = {}
    if "layer" in ds.dims:
        order["layer"] = sorted(ds.layer.values.tolist(), key=_layer_key)
    order["rule"] = sorted(ds.rule.values.tolist(), key=_rule_key)
    order["seed"] = sorted(ds.seed.values.tolist())
    return ds.reindex(order)


def _experiment_coords(ds: xr.Dataset, runs: Iterable[RunPath]) -> xr.Dataset:
    by_exp: dict[str, RunPath] = {}
    for r in runs:
        by_exp.setdefault(r.experiment, r)
    exps = ds.experiment.values.tolist()
    # experiments ordered by group, then by their sweep values (numerically where they are numbers)
    def exp_key(name: str) -> tuple:
        r = by_exp[name]
        return (r.group, tuple((k, (0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v)))
                               for k, v in r.params.items()))
    ds = ds.reindex(experiment=sorted(exps, key=exp_key))
    exps = ds.experiment.values.tolist()
    coords: dict[str, Any] = {"group": ("experiment", np.array([by_exp[e].group for e in exps], dtype=object))}
    keys = list(dict.fromkeys(k for e in exps for k in by_exp[e].params))
    for key in keys:
        values = [by_exp[e].params.get(key) for e in exps]
        if all(isinstance(v, (int, float)) or v is None for v in values):
            arr = np.array([np.nan if v is None else v for v in values])
            if all(isinstance(v, int) for v in values):
                arr = arr.astype(np.int64)
        else:
            arr = np.array(["" if v is None else str(v) for v in values], dtype=object)
        coords[key] = ("experiment", arr)
    kinds = []
    for e in exps:
        cfgs = [c for c in np.ravel(ds.config.sel(experiment=e).values) if isinstance(c, str) and c]
        kinds.append(_data_kind(cfgs[0]) if cfgs else "")
    coords["data_kind"] = ("experiment", np.array(kinds, dtype=object))
    coords["metric"] = ("experiment", np.array(["top5" if k.startswith("imagenet") else "top1" for k in kinds],
                                                dtype=object))
    return ds.assign_coords(coords)
