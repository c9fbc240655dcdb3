"""Tiny run stores for the analysis tests: a store per run of a study, written with xarray in milliseconds in the
archive's layout (docs/runs.md), with values that name the run they belong to (so a test can check that selecting
by value gives the right run)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import xarray as xr

REPO = Path(__file__).resolve().parents[2]


def workflow_config(*files: str) -> dict:
    """The workflow config of ``snakemake --configfile config/<file>.yaml ...`` (no schema validation)."""
    from sim.config.schema import read_yaml
    from sim.study import deep_merge

    config = read_yaml(REPO / "config" / "config.yaml")
    for name in files:
        config = deep_merge(config, read_yaml(REPO / "config" / f"{name}.yaml"))
    return config


def write_run(path: Path, config: dict, *, code: float, layers: int = 2, epochs: int | None = None,
              complete: bool = True, steps_per_epoch: int = 2, angle: np.ndarray | None = None,
              ortho_error: np.ndarray | None = None) -> Path:
    """A store at ``path`` for the run ``config``: ``test_top1`` ends at ``code``, ``angle`` is ``code`` in every
    hidden layer (or the ``[step, layer]`` array given), ``ortho_error`` 0 (or the ``[epoch, layer]`` array given);
    one layer per rule of a rule list, else ``layers`` hidden layers and the output; ``epochs`` recorded (default:
    the config's train.epochs), ``complete`` as given."""
    rules = config.get("rules", "gp")
    layers = len(rules) - 1 if isinstance(rules, list) else layers
    names = [f"dense{i + 1}" for i in range(layers)] + ["output"]
    rules = rules if isinstance(rules, list) else [rules] * len(names)
    rules = (rules + [rules[-1]] * len(names))[:len(names)]
    epochs = config.get("train", {}).get("epochs", 2) if epochs is None else epochs
    steps = epochs * steps_per_epoch
    if angle is None:
        angle = np.full((steps, len(names)), float(code))
        angle[:, -1] = 0.0
    if ortho_error is None:
        ortho_error = np.zeros((epochs, len(names)))
    ds = xr.Dataset(
        {"angle": (("step", "layer"), angle), "loss": ("step", np.ones(steps)),
         "train_top1": ("epoch", np.linspace(code / 2, code, epochs)),
         "test_top1": ("epoch", np.linspace(code / 2, code, epochs)),
         "train_top5": ("epoch", np.ones(epochs)), "test_top5": ("epoch", np.ones(epochs)),
         "train_loss": ("epoch", np.ones(epochs)), "test_loss": ("epoch", np.ones(epochs)),
         "ortho_error": (("epoch", "layer"), ortho_error),
         "epoch_wall_s": ("epoch", np.ones(epochs))},
        coords={"step": np.arange(steps), "step_epoch": ("step", np.repeat(np.arange(1, epochs + 1),
                                                                            steps_per_epoch)),
                "epoch": np.arange(1, epochs + 1), "layer": names, "rule": ("layer", rules),
                "square": ("layer", [False] * len(names))},
        attrs={"name": config.get("name", str(path)), "config": json.dumps(config), "complete": complete},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.to_zarr(path, mode="w", consolidated=True)
    return path


def write_study(root: Path, runs) -> dict[str, float]:
    """A store for every :class:`sim.study.Run` below ``root`` (as the workflow lays them out); returns each run's
    code by folder: 0.01, 0.02, ... in expansion order."""
    codes = {}
    for i, run in enumerate(runs):
        codes[run.folder] = round(0.01 * (i + 1), 4)
        write_run(root / run.store, run.config, code=codes[run.folder])
    return codes
