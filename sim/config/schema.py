"""The run schema, its error messages and the one YAML reader of run configs; imports neither torch nor the simulator.

The one JSON schema ``sim/schema/run.schema.json`` describes every key of a run config (docs/runs.md). The command
line (:func:`sim.config.load_config`), the workflow's study compiler (:mod:`sim.study`) and the workflow's
``check_configs`` step all validate with it, through :func:`schema_problems`, so all of them reject the same mistakes
with the same message. Each problem is a pair ``(key path, message)``; the message starts with the key path, e.g.
``settings.gp.lr: -1 is less than or equal to the minimum of 0``, and :class:`~sim.errors.ConfigError` carries the
key as :attr:`~sim.errors.ConfigError.key`, so no caller re-parses a message.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import os
import re
import stat
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from sim.errors import ConfigError

SCHEMA_RESOURCE = "schema/run.schema.json"
#: limits of a config document's shape: deeper or bigger ones are garbage, not configs
MAX_DEPTH = 16
MAX_NODES = 100_000

#: one problem: the key path (None for the document as a whole) and the message, which starts with the key path
Problem = tuple[str | None, str]


# ----- the schema ---------------------------------------------------------------------------------------------------
@functools.cache
def load_schema() -> dict:
    """The run schema: ``sim/schema/run.schema.json`` (the fixed parts) with the rule registry's part filled in,
    the rule-name enum and one ``settings.<rule>`` object per rule holding exactly the settings it reads
    (:mod:`sim.rules.registry`: built-in rules and ``gaitsim.rules`` plugins; no torch is imported)."""
    from sim.rules.registry import settings_schema, specs

    text = resources.files("sim").joinpath(SCHEMA_RESOURCE).read_text(encoding="utf-8")
    schema = json.loads(text)
    rules = specs()
    schema["$defs"]["rule_name"] = {"description": schema["$defs"]["rule_name"]["description"],
                                    "enum": sorted(rules)}
    section = schema["properties"]["settings"]
    section["additionalProperties"] = False
    section["properties"] = {name: settings_schema(spec) for name, spec in sorted(rules.items())}
    return schema


@functools.cache
def _validator() -> jsonschema.protocols.Validator:
    schema = load_schema()
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _key_path(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _suggest(word: Any, choices) -> str:
    if not isinstance(word, str):
        return ""
    match = difflib.get_close_matches(word, [c for c in choices if isinstance(c, str)], n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _pick_branch(error: jsonschema.ValidationError) -> jsonschema.ValidationError:
    """For a failed oneOf/anyOf, the sub-error of the branch the value was meant for: the one that got deepest into
    the value, preferring a branch whose type matched (so ``'gpp'`` reports the enum, not 'is not an array')."""
    if not error.context:
        return error
    best = max(error.context, key=lambda e: (len(e.absolute_path), e.validator != "type", -len(e.schema_path)))
    return _pick_branch(best)


def _format_error(error: jsonschema.ValidationError) -> list[Problem]:
    error = _pick_branch(error)
    where = _key_path(error.absolute_path)
    prefix = f"{where}: " if where else ""
    if error.validator == "additionalProperties":
        known = sorted(error.schema.get("properties", {}))
        extra = [k for k in error.instance if k not in known]
        out = []
        rule = _settings_rule(error.absolute_path)
        for key in extra:
            if rule is not None:
                from sim.rules.registry import readers, unread_message

                if readers(key):  # a real setting, of other rules: say which (no silent settings, issue 15)
                    out.append((_join(where, key), f"{_join(where, key)}: {unread_message(rule, key)}"))
                    continue
            hint = _suggest(key, known) or f" (known keys: {', '.join(known)})"
            out.append((_join(where, key), f"{where}: unknown key {key!r}{hint}" if where
                        else f"unknown top-level key {key!r}{hint}"))
        return out
    if error.validator == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        return [(_join(where, k), f"{prefix}missing required key {k!r}" if where
                 else f"missing required top-level key {k!r}") for k in missing]
    if error.validator == "pattern" and where == "name":
        return [(where, f"name: {error.instance!r} could be taken for a path: a run name may hold '/' but may not "
                        "start with '/' or contain a '..' part or control characters")]
    if error.validator == "enum":
        choices = [c for c in error.validator_value if c is not None]
        hint = _suggest(error.instance, choices)
        return [(where or None, f"{prefix}{error.instance!r} is not one of {choices}{hint}")]
    return [(where or None, f"{prefix}{error.message}")]


def _settings_rule(path) -> str | None:
    """The rule name when ``path`` is ``settings.<rule>``."""
    path = list(path)
    return path[1] if len(path) == 2 and path[0] == "settings" and isinstance(path[1], str) else None


def _walk(value: Any, path: tuple, ancestors: set[int], budget: list[int], nonfinite: dict,
          problems: list[Problem]) -> None:
    """Check that ``value`` is a tree of JSON values (YAML may give dates, sets, binary data, or aliases that refer
    to themselves); collect NaN/Inf numbers by key path."""
    budget[0] -= 1
    if budget[0] < 0:
        if budget[0] == -1:
            problems.append((None, f"config: more than {MAX_NODES} values; this is not a run config"))
        return
    key = _key_path(path) or None
    where = key or "config"
    if isinstance(value, (dict, list)):
        if id(value) in ancestors:
            problems.append((key, f"{where}: refers to itself (a YAML alias inside its own anchor)"))
            return
        if len(path) >= MAX_DEPTH:
            problems.append((key, f"{where}: nested more than {MAX_DEPTH} levels deep; this is not a run config"))
            return
        ancestors.add(id(value))
        if isinstance(value, dict):
            for k, v in value.items():
                if not isinstance(k, str):
                    problems.append((key, f"{where}: key {k!r} is not a string (keys are names such as 'epochs')"))
                    continue
                _walk(v, (*path, k), ancestors, budget, nonfinite, problems)
        else:
            for i, v in enumerate(value):
                _walk(v, (*path, i), ancestors, budget, nonfinite, problems)
        ancestors.discard(id(value))
    elif isinstance(value, float):
        if not math.isfinite(value):
            nonfinite[path] = (key, f"{where}: {value!r} is not a finite number")
    elif value is not None and not isinstance(value, (str, int, bool)):
        problems.append((key, f"{where}: {value!r} is a {type(value).__name__}, not a number, string, boolean, list "
                              "or mapping"))


def schema_problems(doc: Any) -> list[Problem]:
    """Every schema violation of ``doc`` as ``(key path, message)`` (empty if valid). Also refused: NaN and Inf
    numbers, and documents that are not trees of JSON values (self-referencing aliases, non-string keys, dates,
    garbage nested deeper than :data:`MAX_DEPTH` or bigger than :data:`MAX_NODES`)."""
    problems: list[Problem] = []
    nonfinite: dict[tuple, Problem] = {}
    _walk(doc, (), set(), [MAX_NODES], nonfinite, problems)
    if problems:
        return problems
    errors = sorted(_validator().iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path])
    found = [p for error in errors if tuple(error.absolute_path) not in nonfinite for p in _format_error(error)]
    return sorted([*nonfinite.values(), *found], key=lambda p: p[0] or "") if nonfinite else found


def schema_errors(doc: Any) -> list[str]:
    """The messages of :func:`schema_problems` (each names its key path)."""
    return [message for _, message in schema_problems(doc)]


def check_schema(doc: Any, source: str = "config") -> None:
    """Raise a :class:`ConfigError` (``key``: the first problem's key path) for every schema problem of ``doc``,
    each message prefixed with ``source`` (a file name, a run folder)."""
    problems = schema_problems(doc)
    if len(problems) == 1:
        raise ConfigError(f"{source}: {problems[0][1]}", key=problems[0][0])
    if problems:
        raise ConfigError(f"{source}: {len(problems)} problems:\n" + "\n".join(f"  - {m}" for _, m in problems),
                          key=problems[0][0])


# ----- integral floats ----------------------------------------------------------------------------------------------
def _schema_at(node: dict, root: dict) -> dict:
    while "$ref" in node:
        node = {**_resolve_ref(root, node["$ref"]), **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _resolve_ref(root: dict, ref: str) -> dict:
    node = root
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def _integers(value: Any, node: dict, root: dict) -> Any:
    node = _schema_at(node, root)
    if isinstance(value, dict):
        props = node.get("properties", {})
        return {k: _integers(v, props.get(k, {}), root) for k, v in value.items()}
    if isinstance(value, list):
        branches = [_schema_at(b, root) for b in node.get("oneOf", [])] or [node]
        items = next((b.get("items", {}) for b in branches if "items" in b), {})
        return [_integers(v, items, root) for v in value]
    types = node.get("type", [])
    if isinstance(value, float) and value.is_integer() and "integer" in (types if isinstance(types, list)
                                                                          else [types]):
        return int(value)
    return value


def with_integers(doc: dict) -> dict:
    """``doc`` with integral floats (``3.0``, which JSON Schema counts as an integer) turned into ints where the
    schema asks for an integer, so that ``epochs: 3.0`` trains 3 epochs instead of failing deep inside Python."""
    return _integers(doc, load_schema(), load_schema())


# ----- the YAML reader ----------------------------------------------------------------------------------------------
#: the largest config file read (a run config is a few KB)
MAX_CONFIG_BYTES = 1 << 20


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads YAML 1.2 floats such as ``1e-3`` as numbers (YAML 1.1, which PyYAML
    implements, wants ``1.0e-3`` and would hand the schema the string '1e-3')."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def read_yaml(path: str | Path, key: str | None = None) -> Any:
    """The YAML document of a run config file (with YAML 1.2 floats); an unreadable file or bad YAML is a
    :class:`ConfigError` naming the file (and ``key``, the config key that named the file, if any)."""
    path = Path(path)
    at = f"{key}: " if key else ""
    try:
        # O_NONBLOCK: a FIFO or a device opens without waiting for a writer, and is then refused
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(path)
            if not stat.S_ISREG(st.st_mode):
                raise ConfigError(f"{at}config path {path} is not a regular file (a FIFO, socket or device would "
                                  "hang or never end); give the YAML file of one run", key=key)
            if st.st_size > MAX_CONFIG_BYTES:
                raise ConfigError(f"{at}config file {path} is {st.st_size:,} bytes; a run config is a few KB (at "
                                  f"most {MAX_CONFIG_BYTES:,} bytes are read)", key=key)
            chunks = []
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
            text = b"".join(chunks).decode("utf-8")
        finally:
            os.close(fd)
    except FileNotFoundError:
        raise ConfigError(f"{at}config file {path} does not exist", key=key) from None
    except IsADirectoryError:
        raise ConfigError(f"{at}config path {path} is a folder; give the YAML file of one run", key=key) from None
    except ConfigError:
        raise
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # ValueError: a NUL in the path
        raise ConfigError(f"{at}cannot read config file {path}: {exc}", key=key) from None
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{at}{path} is not valid YAML: {exc}", key=key) from None
    except RecursionError:  # PyYAML's scanner and composer recurse once per level
        raise ConfigError(f"{at}{path} nests too deeply for a run config (at most 16 levels are allowed)",
                          key=key) from None
