"""Changing a run config by dotted keys: the one place for the workflow's ``set``/sweep merging and the command
line's ``--set KEY=VALUE`` (docs/runs.md); imports neither torch nor the simulator.

    set_key({"train": {"epochs": 5}}, "settings.gp.eta", 1e-5)   # {"train": {...}, "settings": {"gp": {"eta": 1e-5}}}
    apply_overrides(doc, ["train.epochs=3", "settings.gp.eta=1e-5"])

A ``--set`` value is read as YAML with the run configs' own loader (:class:`sim.config.schema._Loader`: ``3`` is an
int, ``1e-5`` a float, ``float64`` a string, ``[fa, gp]`` a list), and the changed document is validated exactly
like a file, so an unknown key, a bad value or a bad type gives the message the same key in the file gives.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from typing import Any

import yaml

from sim.config.schema import _Loader
from sim.errors import ConfigError

#: a dotted run config key as ``--set`` takes it
KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def deep_merge(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` merged in: mappings merge key by key, everything else replaces."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def set_key(doc: dict, dotted: str, value: Any) -> dict:
    """``doc`` with the dotted key (e.g. ``settings.gp.eta``) set to ``value``."""
    head, *rest = dotted.split(".")
    return deep_merge(doc, {head: value} if not rest else {head: set_key({}, ".".join(rest), value)})


def parse_assignment(text: str) -> tuple[str, Any]:
    """``'train.epochs=3'`` -> ``('train.epochs', 3)``: the key checked for shape, the value read as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not KEY.match(key):
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE with a dotted run config key, e.g. "
                          "--set train.epochs=3 or --set settings.gp.eta=1e-5")
    try:
        value = yaml.load(raw, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML: {exc}", key=key) from None
    return key, value


def apply_overrides(doc: dict, assignments: Iterable[str]) -> dict:
    """``doc`` with every ``KEY=VALUE`` of ``assignments`` set, in order (a later one wins)."""
    for text in assignments:
        doc = set_key(doc, *parse_assignment(text))
    return doc
