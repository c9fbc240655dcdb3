"""Open the run stores of a study as one ``xarray.Dataset``: experiment, sweep parameters, rule and seed are dims.

The workflow writes one zarr store per run at ``results/<study>/<experiment>/rule~<rule>/seed~<seed>/run.zarr``
(docs/workflow.md); a sweep point adds its parameters as ``key~value`` folders, e.g.
``results/noise/digits_deep/message_std~0.01/eta~1e-05/rule~gp/seed~0/run.zarr``. :func:`load_study` parses those
path parts, opens every store with :func:`sim.archive.open_run` (docs/runs.md: the archive contract), checks each
finished one against the checksums its run wrote (a damaged store is named with its damaged chunks and arrays and
left out, never read as zarr's fill values) and outer-joins them into one Dataset with dims ``experiment`` (the
experiment's name), one dim per sweep parameter (in path order, values sorted, numbers where they parse), ``rule``
and ``seed``, then the archive's ``step``, ``layer`` and ``epoch``; runs with fewer steps or epochs, and points of
the grid that have no run, are NaN. So a sweep is selected by value:

    ds = load_study("results/noise")
    ds.angle.sel(eta=1e-5, message_std=0.0)                       # (experiment, rule, seed, step, layer)
    ds.test_top1.sel(rule="gp").isel(epoch=-1)                     # (experiment, message_std, eta, seed)
    mix = load_study("results/mixing")
    mix.sel(rule=mix.below == "fa", split=3)                       # rule mixtures by their lower/upper rule

An experiment that does not sweep a parameter another experiment of the study sweeps sits at that dim's *missing*
label (NaN for numbers, '' for text). A rule label is a rule name or ``<below>+<above>`` (a mixture, sim.study);
the ``rule`` dim has the coordinates ``below`` and ``above`` (both the rule itself for a plain rule), so
``ds.sel(rule=ds.below == "fa")`` picks every run with FA in its lowest layers. (They are not indexes: a second
index along ``rule`` would make ``ds.stack(...)`` over ``rule`` fail.)

Stores whose ``complete`` attribute is not true (a crashed or killed run leaves a readable prefix that must not pass
as a result) are refused; a store the workflow published as *diverged* (its run stopped at a NaN/Inf: a final
outcome of a sweep, attribute ``diverged``) is kept and flagged. With ``include_partial=True`` the runs still being
written (``run.zarr.partial`` stores, and incomplete ``run.zarr`` stores) are loaded with what they recorded so far
and flagged ``unfinished``: the figures mark them, the table counts them (for a look at a study while it runs).

Per-experiment coordinates: ``network`` (the preset and its options, or a hash of an explicit stack), ``data_kind``
(from the run config) and ``metric`` ('top5' for ImageNet data, else 'top1': the accuracy the figures and the table
report); the figures group runs by ``network`` and ``data_kind``. Per-run variables besides the archive's:
``layer_rule`` (the rule of each layer, which differs between the runs of a mixing study), ``config`` (the resolved
run config, JSON), ``diverged`` (1 for a diverged run, 0 otherwise, NaN where there is no run: also the mask of which
runs exist), ``unfinished`` (1 for a run still being written, 0 for a finished one) and ``epochs_total`` (the
epochs its config asks for). Attributes: ``study``, ``description`` (given to :func:`load_study`: the workflow passes
the study's ``description``), ``include_partial``. Every variable and coordinate has ``long_name`` and ``units``.

Nothing here imports torch: analysis runs where the simulator does not.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from analysis.style import rule_key
from sim.archive import DamagedStoreError, check_codecs, open_run, read_attrs

#: archive variables a study keeps (per-step, per-epoch and per-layer records; not the probe activities)
VARIABLES = ("angle", "loss", "train_top1", "train_top5", "test_top1", "test_top5", "train_loss", "test_loss",
             "ortho_error", "epoch_wall_s")
STORE_NAME = "run.zarr"
#: the name of a store its run is still writing (sim.run publishes it as STORE_NAME once complete)
PARTIAL_NAME = f"{STORE_NAME}.partial"
#: where a run's sweep dim has no value: the experiment does not sweep that parameter
MISSING_NUMBER, MISSING_TEXT = np.nan, ""

#: CF attributes of what the study Dataset adds to the archive's variables
ATTRS: dict[str, dict[str, str]] = {
    "experiment": {"long_name": "experiment", "units": "1"},
    "rule": {"long_name": "rule (or <below>+<above> mixture)", "units": "1"},
    "below": {"long_name": "rule of the lowest layers", "units": "1"},
    "above": {"long_name": "rule of the upper layers", "units": "1"},
    "seed": {"long_name": "seed", "units": "1"},
    "network": {"long_name": "network", "units": "1"},
    "data_kind": {"long_name": "data", "units": "1"},
    "metric": {"long_name": "accuracy reported", "units": "1"},
    "layer_rule": {"long_name": "rule of the layer", "units": "1"},
    "layer_square": {"long_name": "square layer", "units": "1"},
    "config": {"long_name": "resolved run config (JSON)", "units": "1"},
    "diverged": {"long_name": "diverged", "units": "1",
                 "description": "1: the run stopped at a NaN/Inf or a singular layer (attribute diverged); "
                                "0: it did not; NaN: no such run"},
    "unfinished": {"long_name": "unfinished", "units": "1",
                   "description": "1: the run is still being written (a partial or incomplete store, loaded with "
                                  "include_partial=True): its values are not results; 0: finished; NaN: no such run"},
    "epochs_total": {"long_name": "epochs asked for", "units": "epoch",
                     "description": "train.epochs of the run's config"},
}


class IncompleteStoreError(ValueError):
    """A run store whose ``complete`` attribute is not true (still running, crashed or killed)."""


class DamagedStoreWarning(UserWarning):
    """A damaged run store was left out of a study (:func:`load_study` with ``on_damaged='skip'``)."""


@dataclass(frozen=True)
class RunPath:
    """What a store's path says about the run."""

    path: Path
    study: str
    experiment: str
    """The path between the study folder and ``rule~``: the group, then any ``key~value`` sweep parts."""
    group: str
    """The experiment's name (the first path part below the study)."""
    rule: str
    seed: int
    params: dict[str, Any] = field(default_factory=dict)
    """Sweep parameters from the experiment's ``key~value`` parts, numbers parsed."""

    @property
    def partial(self) -> bool:
        """Whether the path is a store its run is still writing (``run.zarr.partial``)."""
        return self.path.name.endswith(".partial")


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
    """Parse ``.../<study>/<group>[/<key>~<value>...]/rule~<rule>/seed~<seed>/run.zarr`` (or ``run.zarr.partial``)."""
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


def _prefer_complete(paths: Sequence[Path]) -> list[Path]:
    """Drop a ``run.zarr.partial`` whose folder also holds a ``run.zarr`` (the run was published meanwhile)."""
    have = {p.parent for p in paths if p.name == STORE_NAME}
    return [p for p in paths if p.name == STORE_NAME or p.parent not in have]


def find_stores(root: str | Path, *, include_partial: bool = False) -> list[Path]:
    """Every ``run.zarr`` below ``root`` (a study folder) that sits in a ``rule~.../seed~...`` folder, sorted; with
    ``include_partial`` also every ``run.zarr.partial`` of a run not yet published."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such study folder (expected results/<study>)")
    names = (STORE_NAME, PARTIAL_NAME) if include_partial else (STORE_NAME,)
    stores = [p for name in names for p in root.rglob(name) if p.parent.name.startswith("seed~")
              and p.parent.parent.name.startswith("rule~")]
    return sorted(_prefer_complete(stores))


def _layer_key(name: str) -> tuple:
    m = re.fullmatch(r"(.*?)(\d+)", name)
    stem, num = (m.group(1), int(m.group(2))) if m else (name, -1)
    return (name == "output", stem, num)


def _config(text: str) -> dict:
    try:
        doc = json.loads(text)
    except (TypeError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _run_dataset(run: RunPath, labels: dict[str, Any], on_incomplete: str, on_diverged: str,
                 include_partial: bool, verify: bool) -> xr.Dataset | None:
    if (run.path / "zarr.json").is_file():
        check_codecs(run.path)  # a store that names a codec no run writes is refused before anything is decoded
    attrs = read_attrs(run.path)  # the attributes first: an incomplete store is refused without reading its arrays
    if attrs is None and include_partial and run.path.name != STORE_NAME:
        warnings.warn(f"{run.path}: left out, not readable yet (no zarr.json)", stacklevel=3)
        return None
    attrs = attrs or {}
    complete = attrs.get("complete") is True
    diverged = bool(attrs.get("diverged")) and not complete
    if diverged and on_diverged == "raise":
        raise IncompleteStoreError(f"{run.path}: the run diverged ({attrs['diverged']})")
    unfinished = not complete and not diverged
    if unfinished and not include_partial:
        msg = (f"{run.path}: the run store is not complete (attribute complete = {attrs.get('complete')!r}); "
               "it is still running, or it crashed or was killed. Rerun its job (snakemake reruns it) or delete it "
               "(load_study(..., include_partial=True) shows what it recorded so far, marked unfinished).")
        if on_incomplete == "skip":
            warnings.warn(msg, stacklevel=3)
            return None
        raise IncompleteStoreError(msg)
    try:
        # A run still being written is not checked against its checksums (its writer may be between two commits);
        # it is marked unfinished and never passes for a result.
        ds = open_run(run.path, verify=verify and not unfinished)
        keep = [v for v in VARIABLES if v in ds.data_vars]
        out = ds[keep].reset_coords(drop=False)
        extra = [c for c in ("rule", "square", "step_epoch") if c in out.variables]
        out = out.rename({c: f"layer_{c}" if c != "step_epoch" else c for c in extra})
        drop = [c for c in out.coords if c not in ("step", "epoch", "layer")]
        out = out.drop_vars(drop).load()
    except DamagedStoreError:
        raise
    except Exception as exc:  # noqa: BLE001 - a torn chunk fails in the codec (zstd, blosc, ...), whichever it is
        if unfinished:
            warnings.warn(f"{run.path}: left out, not readable yet ({type(exc).__name__}: {exc})", stacklevel=3)
            return None
        raise DamagedStoreError(run.path, [f"{run.path}: a chunk cannot be decoded ({type(exc).__name__}: "
                                           f"{exc})"]) from None
    config = ds.attrs.get("config", "{}")
    epochs = _config(config).get("train", {}).get("epochs")
    out["config"] = xr.DataArray(config)
    out["diverged"] = xr.DataArray(1.0 if diverged else 0.0)
    out["unfinished"] = xr.DataArray(1.0 if unfinished else 0.0)
    out["epochs_total"] = xr.DataArray(float(epochs) if isinstance(epochs, (int, float)) else np.nan)
    if "layer" in out.coords:
        out = out.assign_coords(layer=out.layer.values.astype(object))
    if "layer_rule" in out:
        out["layer_rule"] = out.layer_rule.astype(object)
    return out.expand_dims({"experiment": [run.group], **{k: [v] for k, v in labels.items()}, "rule": [run.rule],
                            "seed": [run.seed]})


def _sweep_kinds(runs: Sequence[RunPath]) -> dict[str, bool]:
    """Every sweep parameter of the study (in path order) and whether all its values are numbers."""
    kinds: dict[str, bool] = {}
    for r in runs:
        for key, value in r.params.items():
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            kinds[key] = kinds.get(key, True) and number
    return kinds


def _labels(run: RunPath, kinds: dict[str, bool]) -> dict[str, Any]:
    """The run's label on every sweep dim: its value, or the missing label where its experiment does not sweep it."""
    out = {}
    for key, number in kinds.items():
        value = run.params.get(key)
        if value is None:
            out[key] = MISSING_NUMBER if number else MISSING_TEXT
        else:
            out[key] = value if number else str(value)
    return out


def load_study(source: str | Path | Sequence[str | Path], *, on_incomplete: str = "raise",
               on_diverged: str = "keep", include_partial: bool = False, description: str | None = None,
               on_damaged: str = "skip", verify: bool = True) -> xr.Dataset:
    """Open every run store of one study into one Dataset (module docstring: dims, coordinates, variables).

    Args:
        source: a study folder (``results/<study>``; every ``run.zarr`` below it) or a list of store paths.
        on_incomplete: 'raise' (default): an incomplete store is an :class:`IncompleteStoreError`; 'skip': leave it
            out with a warning.
        on_diverged: 'keep' (default): a store the workflow published as diverged (attribute ``diverged``: the run
            stopped at a NaN/Inf or a singular layer, a final outcome of a study with ``on_diverge: keep``) is loaded
            with what it recorded up to then, and flagged in the variable ``diverged``; 'raise': refuse it.
        include_partial: also load the runs still being written (``run.zarr.partial`` stores of running jobs, and
            incomplete stores) with what they recorded so far, flagged in the variable ``unfinished`` (the figures
            draw them dotted, labelled with their progress). Default False: finished runs only.
        description: what the study asks (the workflow config's ``studies.<study>.description``): ``attrs``.
        on_damaged: 'skip' (default): a store whose rows do not match the checksums the run wrote (a chunk missing,
            undecodable or changed) is left out with a warning naming it and each damaged chunk and array, and
            listed in the attribute ``damaged``; the rest of the study loads. 'raise': a :class:`DamagedStoreError`.
        verify: check every finished store against its checksums before reading it (default; one read of each
            store). ``False`` skips the check for speed: a missing chunk then reads as NaN (zarr's fill value).

    Raises:
        IncompleteStoreError: a store's ``complete`` attribute is not true (with ``on_incomplete='raise'`` and
            ``include_partial=False``).
        DamagedStoreError: a store is damaged (with ``on_damaged='raise'``).
        ValueError: no stores, a path that does not parse, stores of several studies, or one run given twice.
    """
    if on_incomplete not in ("raise", "skip"):
        raise ValueError("on_incomplete must be 'raise' or 'skip'")
    if on_diverged not in ("keep", "raise"):
        raise ValueError("on_diverged must be 'keep' or 'raise'")
    if on_damaged not in ("skip", "raise"):
        raise ValueError("on_damaged must be 'skip' or 'raise'")
    if isinstance(source, (str, Path)):
        paths = find_stores(source, include_partial=include_partial)
    else:
        paths = _prefer_complete([Path(p) for p in source])
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
    kinds = _sweep_kinds(runs)
    parts, damaged = [], []
    for r in runs:
        try:
            part = _run_dataset(r, _labels(r, kinds), on_incomplete, on_diverged, include_partial, verify)
        except DamagedStoreError as exc:
            if on_damaged == "raise":
                raise
            warnings.warn(f"{exc} Left out of the study.", DamagedStoreWarning, stacklevel=2)
            damaged.append(str(r.path))
            continue
        if part is not None:
            parts.append(part)
    if not parts:
        raise ValueError(f"no complete, intact run stores in {source}" + (f" (damaged: {', '.join(damaged)})"
                                                                            if damaged else ""))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        ds = xr.merge(parts, join="outer", compat="no_conflicts", combine_attrs="drop_conflicts")
    ds = _canonical_order(ds, list(kinds))
    ds = _coordinates(ds)
    ds.attrs = {"study": studies[0], "description": " ".join((description or "").split()),
                "include_partial": int(include_partial), **({"damaged": damaged} if damaged else {})}
    return ds


def _sweep_order(values: list, number: bool) -> list:
    """Sweep labels sorted (numerically where they are numbers), the missing label last."""
    if number:
        return sorted(v for v in values if not np.isnan(v)) + [v for v in values if np.isnan(v)][:1]
    return sorted(v for v in values if v != MISSING_TEXT) + [v for v in values if v == MISSING_TEXT][:1]


def _canonical_order(ds: xr.Dataset, sweep: list[str]) -> xr.Dataset:
    order: dict[str, list] = {"experiment": sorted(ds.experiment.values.tolist())}
    for key in sweep:
        values = ds[key].values.tolist()
        order[key] = _sweep_order(values, ds[key].dtype.kind in "fiu")
    if "layer" in ds.dims:
        order["layer"] = sorted(ds.layer.values.tolist(), key=_layer_key)
    order["rule"] = sorted(ds.rule.values.tolist(), key=rule_key)
    order["seed"] = sorted(ds.seed.values.tolist())
    ds = ds.reindex(order)
    run_dims = ["experiment", *sweep, "rule", "seed"]
    return ds.transpose(*run_dims, ...)


def sweep_dims(ds: xr.Dataset) -> list[str]:
    """The sweep parameters of a study Dataset: its run dims between ``experiment`` and ``rule``."""
    dims = list(ds.diverged.dims) if "diverged" in ds else list(ds.dims)
    return [d for d in dims if d not in ("experiment", "rule", "seed", "step", "epoch", "layer")]


def _network(config: dict) -> str:
    """The network's name: its preset with the options given, or a short hash of an explicit stack."""
    net = config.get("network") or {}
    if net.get("preset"):
        options = ", ".join(f"{k}={v}" for k, v in sorted(net.items()) if k != "preset" and v is not None)
        return f"{net['preset']}({options})" if options else str(net["preset"])
    if not net:
        return ""
    return "stack " + hashlib.sha256(json.dumps(net, sort_keys=True).encode()).hexdigest()[:8]


def _coordinates(ds: xr.Dataset) -> xr.Dataset:
    """Per-experiment ``network``, ``data_kind`` and ``metric`` (from the experiment's first run config); ``below``
    and ``above`` of every rule label; CF attributes on everything the study adds."""
    networks, kinds = [], []
    for e in ds.experiment.values:
        cfgs = [_config(c) for c in np.ravel(ds.config.sel(experiment=e).values) if isinstance(c, str) and c]
        cfg = next((c for c in cfgs if c), {})
        networks.append(_network(cfg))
        kinds.append(str((cfg.get("data") or {}).get("kind", "")))
    labels = [str(r) for r in ds.rule.values]
    ds = ds.assign_coords(
        network=("experiment", np.array(networks, dtype=object)),
        data_kind=("experiment", np.array(kinds, dtype=object)),
        metric=("experiment", np.array(["top5" if k.startswith("imagenet") else "top1" for k in kinds],
                                       dtype=object)),
        below=("rule", np.array([r.partition("+")[0] for r in labels], dtype=object)),
        above=("rule", np.array([r.partition("+")[2] or r for r in labels], dtype=object)),
    )
    for name in sweep_dims(ds):
        ds[name].attrs.update({"long_name": name, "units": "1", "description": "sweep parameter"})
    for name, attrs in ATTRS.items():
        if name in ds.variables:
            ds[name].attrs.update(attrs)
    return ds
