"""The rule registry's torch-free half: what each rule is called, where its code lives and which settings it reads.

A rule is known by a :class:`RuleSpec`: its name, the ``module:Class`` of its implementation (imported only when a
network is built), a one-line summary and the settings it reads, each with a default and bounds. The specs, not the
classes, are what the config schema enumerates (:func:`sim.config.schema.load_schema` builds the rule-name enum and
one settings object per rule from :func:`specs`), so the schema, the workflow's checks and ``import sim.study`` never
import torch.

Where the specs come from:

* the built-in rules: :mod:`sim.rules.catalog` (one entry per file in ``sim/rules/``);
* every installed package that declares an entry point in the group ``gaitsim.rules`` (``importlib.metadata``)
  whose value is a :class:`RuleSpec` (``name = "my_pkg.spec:SPEC"``): a plugin, see docs/rules.md. The entry point's
  module must not import torch either (the spec names the implementation by its import path).

No silent settings (issue 15): a rule reads exactly the settings it declares; the schema gives each rule only its
own, and a setting given for a rule that does not read it is refused with the rules that do read it named.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from sim.errors import ConfigError

#: the entry-point group plugins register their rules in
ENTRY_POINT_GROUP = "gaitsim.rules"

#: what a rule's name may be: it names store folders (``rule~<name>``) and mixtures (``<below>+<above>``), so lower
#: case letters, digits and ``_`` only; the Snakefile's ``rule`` wildcard is built from it
RULE_NAME = r"[a-z][a-z0-9_]*"
ARITHMETICS = ("difference", "target")
INVERSE_METHODS = ("lu", "inv")
#: the reconstruction losses a learned inverse (dtp, lgp) trains on
RECONSTRUCTIONS = ("dtp", "drl")


@dataclass(frozen=True)
class Setting:
    """One setting a rule reads: its config key, meaning and JSON schema (type, bounds, enum) of its value."""

    name: str
    """The key under ``settings.<rule>``."""
    description: str
    """What it does (the schema's description)."""
    schema: Mapping[str, Any]
    """JSON schema of the value without ``description`` or ``default``, e.g. ``{"type": "number", "minimum": 0}``."""


#: the settings of the built-in rules, by name; a rule's spec lists which of them it reads (plugins may declare more)
SETTINGS: dict[str, Setting] = {s.name: s for s in (
    Setting("lr", "Adam learning rate.", {"type": "number", "exclusiveMinimum": 0}),
    Setting("betas", "Adam (beta1, beta2), each in [0, 1).",
            {"type": "array", "items": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
             "minItems": 2, "maxItems": 2}),
    Setting("eps", "Adam epsilon.", {"type": "number", "exclusiveMinimum": 0}),
    Setting("ortho_lambda", "Weight of the orthogonality regulariser lambda ||W W^T - I||_F^2 on every layer whose "
            "weight matrix is square (under any rule), relative to the batch-summed loss.",
            {"type": "number", "minimum": 0}),
    Setting("gamma", "Vanilla GP: the constant incremental-target step.", {"type": "number", "exclusiveMinimum": 0}),
    Setting("eta", "Normalized GP: per-unit RMS of the nudge.", {"type": "number", "exclusiveMinimum": 0}),
    Setting("arithmetic", "GP arithmetic: 'difference' (exact in float32) or 'target' (the paper's eq. 4; use with "
            "float64).", {"enum": list(ARITHMETICS)}),
    Setting("inverse", "How square layers are inverted: 'lu' (factorise and solve) or 'inv' (explicit inverse each "
            "step).", {"enum": list(INVERSE_METHODS)}),
    Setting("decay", "Kolen-Pollack: decoupled weight decay per step, lr * decay, on both the forward weight and its "
            "learned feedback weight (what makes the feedback converge to the forward weight).",
            {"type": "number", "minimum": 0}),
    Setting("feedback_lr", "Learned inverse (dtp, lgp): Adam learning rate of the feedback mapping's own group.",
            {"type": "number", "exclusiveMinimum": 0}),
    Setting("reconstruction_std", "Learned inverse (dtp, lgp): std of the Gaussian noise added to the layer's input "
            "for the reconstruction loss.", {"type": "number", "exclusiveMinimum": 0}),
    Setting("reconstruction", "DTP's reconstruction loss: 'dtp' (Lee et al. 2015, ||g(f(W(a+xi)+b)) - (a+xi)||^2) or "
            "'drl' (Meulemans et al. 2020's difference reconstruction loss, one layer: "
            "||g(f(W(a+xi)+b)) - g(f(W a+b)) - xi||^2).", {"enum": list(RECONSTRUCTIONS)}),
)}

def setting_problem(setting: Setting, value: Any) -> str | None:
    """Why ``value`` is not a valid value of ``setting`` (its JSON schema, and finite where it is a number), or
    None. The one check of a setting's bounds, for config files and for :class:`RuleSettings` built in Python."""
    import math

    import jsonschema

    plain = list(value) if isinstance(value, tuple) else value  # JSON arrays are lists; betas is kept as a tuple
    numbers = plain if isinstance(plain, list) else [plain]
    if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
        return f"{value!r} is not a finite number"
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(setting.schema).iter_errors(plain))
    return None if error is None else f"{error.message} (expected: {setting.description})"


#: what a rule's learned state may report per layer (:meth:`sim.rules.base.Rule.state_metrics`); the run archive
#: records each per epoch and layer, NaN where a rule reports none
STATE_METRICS = ("feedback_angle", "reconstruction_loss")

#: the optimiser and regulariser settings every rule reads
COMMON = ("lr", "betas", "eps", "ortho_lambda")


@dataclass(frozen=True)
class RuleSettings:
    """Optimiser and rule hyper-parameters for the layers that use one rule (REFERENCE.md section 6).

    One value type for every rule; which fields a rule *reads* is its :class:`RuleSpec`'s ``settings`` (the config
    refuses the others). Settings declared by a plugin that are not fields here live in :attr:`extra`."""

    lr: float = 1.9e-5
    """Adam learning rate."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam (beta1, beta2)."""
    eps: float = 1e-6
    """Adam epsilon."""
    ortho_lambda: float = 0.0
    """Weight of the orthogonality regulariser ``lambda ||W W^T - I||_F^2`` on every layer whose weight matrix is
    square, under any rule (batch-summed loss)."""
    gamma: float = 1e-3
    """Vanilla GP: the constant incremental-target step."""
    eta: float = 1e-7
    """Normalized GP: per-unit RMS of the nudge, ``gamma = eta sqrt(N) / ||t - a||`` per sample."""
    arithmetic: str = "difference"
    """GP arithmetic: 'difference' (exact in float32) or 'target' (the paper's eq. 4)."""
    inverse: str = "lu"
    """How square layers are inverted: 'lu' (factorise and solve; fast, exact) or 'inv' (explicit inverse each
    step, the reference implementation's cost)."""
    decay: float = 0.0
    """Kolen-Pollack: decoupled weight decay (``p <- p - lr decay p`` each step) on W and on its learned feedback."""
    feedback_lr: float = 1e-4
    """Learned inverse (dtp, lgp): Adam learning rate of the feedback mapping's group."""
    reconstruction_std: float = 0.1
    """Learned inverse (dtp, lgp): std of the input noise of the reconstruction loss."""
    reconstruction: str = "dtp"
    """DTP's reconstruction loss: 'dtp' (Lee et al. 2015) or 'drl' (Meulemans et al. 2020, one layer)."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Settings a plugin rule declares that are not fields of this class, by name."""

    def __post_init__(self) -> None:
        # the bounds are the ones the config schema shows (SETTINGS), checked here too because RuleSettings is
        # also built in Python (tests, bench, notebooks) without going through a config file
        for name in FIELDS:
            problem = setting_problem(SETTINGS[name], getattr(self, name))
            if problem:
                raise ConfigError(f"{name}: {problem}")

    def get(self, name: str) -> Any:
        """The value of setting ``name`` (a field, or a plugin's setting in :attr:`extra`)."""
        return self.extra[name] if name in self.extra else getattr(self, name)


FIELDS = tuple(f.name for f in fields(RuleSettings) if f.name != "extra")


@dataclass(frozen=True)
class RuleSpec:
    """What the registry knows of a rule without importing it (torch-free)."""

    name: str
    """The rule's name in configs (``rules: [..]``, ``settings.<name>``)."""
    impl: str
    """``'module:Class'`` of the :class:`~sim.rules.base.Rule` subclass, imported when a network is built."""
    summary: str
    """One line: what the rule sends down, and its paper."""
    settings: tuple[str | Setting, ...] = COMMON
    """The settings the rule reads: names of :data:`SETTINGS` or new :class:`Setting` declarations (a plugin's)."""
    defaults: Mapping[str, Any] = field(default_factory=dict)
    """Reference values of the settings it reads (the rest take :class:`RuleSettings`' defaults)."""

    def declared(self) -> dict[str, Setting]:
        """The settings it reads, by name."""
        return {s.name: s for s in (SETTINGS[s] if isinstance(s, str) else s for s in self.settings)}

    def default_values(self) -> dict[str, Any]:
        """Every setting it reads with its reference value."""
        base = RuleSettings()
        return {name: self.defaults[name] if name in self.defaults else _field_default(base, name, self.name)
                for name in self.declared()}

    def resolve(self, given: Mapping[str, Any] | None = None, where: str | None = None) -> RuleSettings:
        """The :class:`RuleSettings` of this rule: its defaults with ``given`` on top. A setting it does not read is
        a :class:`ConfigError` keyed ``<where>.<setting>`` naming the rules that read it."""
        where = where or f"settings.{self.name}"
        declared = self.declared()
        for key in given or {}:
            if key not in declared:
                raise ConfigError.at(f"{where}.{key}", unread_message(self.name, key))
        values = {**self.default_values(), **(given or {})}
        if "betas" in values:
            values["betas"] = tuple(values["betas"])
        known = {k: v for k, v in values.items() if k in FIELDS}
        extra = {k: v for k, v in values.items() if k not in FIELDS}
        for key, value in extra.items():  # a plugin's own settings (the fields check themselves)
            problem = setting_problem(declared[key], value)
            if problem:
                raise ConfigError.at(f"{where}.{key}", problem)
        try:
            return RuleSettings(**known, extra=extra)
        except ConfigError as exc:
            raise ConfigError.at(where, str(exc)) from None

    def values(self, settings: RuleSettings) -> dict[str, Any]:
        """The settings it reads, from ``settings`` (what a resolved config stores)."""
        return {name: settings.get(name) for name in self.declared()}


def _field_default(base: RuleSettings, name: str, rule: str) -> Any:
    if name in FIELDS:
        return getattr(base, name)
    raise ConfigError(f"rule {rule!r} declares setting {name!r} without a default; give it in RuleSpec.defaults")


# ----- the registry -------------------------------------------------------------------------------------------------
@functools.cache
def specs() -> dict[str, RuleSpec]:
    """Every known rule's spec by name: the built-in catalogue, then the ``gaitsim.rules`` entry points (read once
    per process). A plugin reusing a built-in name, or a malformed entry point, is a :class:`ConfigError`."""
    from sim.rules.catalog import BUILTIN

    out = {s.name: s for s in BUILTIN}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            spec = ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken plugin is named, not a traceback
            raise ConfigError(f"the rule plugin {ep.name!r} ({ep.value}) in entry-point group {ENTRY_POINT_GROUP!r} "
                              f"cannot be loaded: {type(exc).__name__}: {exc}") from None
        if not isinstance(spec, RuleSpec):
            raise ConfigError(f"the entry point {ep.name!r} = {ep.value!r} in group {ENTRY_POINT_GROUP!r} must name a "
                              f"sim.rules.registry.RuleSpec, got {type(spec).__name__}")
        if not re.fullmatch(RULE_NAME, spec.name):
            raise ConfigError(f"the rule plugin {ep.value!r} registers the name {spec.name!r}, which is not a rule "
                              f"name ({RULE_NAME}: lower case letters, digits and '_', a letter first; it names "
                              f"store folders and 'below+above' mixtures); rename the plugin's rule")
        if spec.name in out and out[spec.name] != spec:
            raise ConfigError(f"the rule plugin {ep.value!r} registers {spec.name!r}, a name already taken "
                              f"({out[spec.name].impl}); rename the plugin's rule")
        out[spec.name] = spec
    return out


def get_spec(name: str) -> RuleSpec:
    """The spec of rule ``name``; an unknown name lists the registered ones."""
    try:
        return specs()[name]
    except KeyError:
        raise ConfigError(f"unknown rule {name!r}; registered rules: {', '.join(sorted(specs()))}") from None


def readers(setting: str) -> list[str]:
    """The rules that read ``setting``, sorted."""
    return sorted(name for name, spec in specs().items() if setting in spec.declared())


def unread_message(rule: str, setting: str) -> str:
    """Why ``settings.<rule>.<setting>`` is refused, and what to do."""
    who = readers(setting)
    if who:
        return (f"rule {rule!r} does not read {setting!r}, so it would be silently ignored; {setting!r} is read by "
                f"{', '.join(who)}. Drop it, or give it under settings.<rule> of one of those.")
    return (f"no rule reads {setting!r}; rule {rule!r} reads {', '.join(get_spec(rule).declared())}")


def load_class(spec: RuleSpec) -> type:
    """Import the implementation of ``spec`` (``'module:Class'``)."""
    module, _, attr = spec.impl.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"rule {spec.name!r}: cannot import its implementation {spec.impl!r}: {exc}") from None


def settings_schema(spec: RuleSpec) -> dict:
    """The JSON schema of ``settings.<rule>``: an object of exactly the settings the rule reads, with defaults."""
    defaults = spec.default_values()
    props = {}
    for name, s in spec.declared().items():
        value = defaults[name]
        props[name] = {"description": s.description, **s.schema,
                       "default": list(value) if isinstance(value, tuple) else value}
    return {"description": f"Settings of the layers trained by {spec.name}: {spec.summary} A setting not given takes "
                           "the rule's reference default; a setting the rule does not read is refused.",
            "type": "object", "additionalProperties": False, "properties": props}
