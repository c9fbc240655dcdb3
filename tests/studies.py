"""Workflow configs for the study-compiler tests, built as Snakemake builds them (torch-free, like sim.study):
config/config.yaml, then each ``--configfile`` merged over it, then ``--config`` overrides, validated by
workflow/schemas/config.schema.yaml with its defaults filled in."""

from __future__ import annotations

from pathlib import Path

from sim.config.schema import read_yaml
from sim.study import deep_merge

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def workflow_config(*files: str, **overrides) -> dict:
    """The workflow config of ``snakemake --configfile config/<file>.yaml ... --config key=value ...``."""
    from snakemake.utils import validate

    config = read_yaml(REPO / "config" / "config.yaml")
    for name in files:
        config = deep_merge(config, read_yaml(REPO / "config" / f"{name}.yaml"))
    config = deep_merge(config, overrides)
    validate(config, str(SCHEMA))
    return config


def bad_study(experiment: dict, **study) -> dict:
    """A workflow config with the one study 'bad' of one experiment 'e' on the shallow digits net."""
    exp = {"run": "configs/digits_shallow_{rule}.yaml", "rules": ["bp", "gp"], **experiment}
    return workflow_config(study="bad", studies={"bad": {**study, "experiments": {"e": exp}}})
