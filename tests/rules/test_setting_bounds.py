"""A rule setting's bounds are declared once (``sim.rules.registry.SETTINGS``) and checked the same way whether the
setting comes from a config file or from ``RuleSettings(...)`` in Python; non-finite numbers are refused both ways."""

from __future__ import annotations

import math

import pytest

from sim.config import load_config
from sim.errors import ConfigError
from sim.rules.registry import FIELDS, SETTINGS, RuleSettings, specs

# per setting: values its schema refuses
BAD = {"lr": [0.0, -1e-3, math.inf], "eps": [0.0, math.nan], "betas": [(0.9, 1.0), (-0.1, 0.9), (0.9,)],
       "ortho_lambda": [-1.0, math.inf], "gamma": [0.0], "eta": [0.0, -math.inf], "arithmetic": ["exact"],
       "inverse": ["qr"], "decay": [-0.1], "feedback_lr": [0.0], "reconstruction_std": [0.0],
       "reconstruction": ["mse"]}


def test_every_setting_has_bad_values_here():
    assert set(BAD) == set(FIELDS) == set(SETTINGS)


def _reader(name: str) -> str:
    return next(rule for rule, spec in specs().items() if name in spec.declared())


@pytest.mark.parametrize(("name", "value"), [(n, v) for n, vs in BAD.items() for v in vs])
def test_a_bad_value_is_refused_from_python_and_from_a_config(name, value):
    with pytest.raises(ConfigError, match=f"^{name}: "):
        RuleSettings(**{name: value})
    rule = _reader(name)
    doc = {"network": {"preset": "digits_shallow"}, "rules": rule, "data": {"kind": "digits"}, "train": {"epochs": 1},
           "settings": {rule: {name: list(value) if isinstance(value, tuple) else value}}}
    with pytest.raises(ConfigError, match=f"settings.{rule}.{name}"):
        load_config(doc)


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_every_rules_default_is_within_its_bounds(name):
    for spec in specs().values():
        if name in spec.declared():
            spec.resolve()  # raises if a reference value breaks its own bounds
    RuleSettings()
