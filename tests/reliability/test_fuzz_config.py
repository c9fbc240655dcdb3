"""Fuzzed run configs (docs/reliability.md): thousands of generated configs, valid ones and mutations of them
(misspelled keys, wrong types, negative numbers, unknown names, wrong list lengths, NaN/Inf, huge integers, nested
garbage). Every valid one loads (and a sample builds its network); every invalid one is a ConfigError naming the
key; nothing else ever escapes ``load_config``."""

from __future__ import annotations

import math
import string

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sim.config import _key_path, build_network, load_config, load_schema
from sim.errors import ConfigError
from sim.presets import PRESETS
from sim.rules import RULES, get_spec

RULE_NAMES = sorted(RULES)
#: presets cheap enough to build in a fuzz test (the others are validated only)
SMALL_PRESETS = {"digits_shallow": 4, "digits_deep": 7}
#: how many fuzzed configs each test saw (reported by the last test of the module)
SEEN = {"valid": 0, "built": 0, "invalid": 0}

# ----- valid configs ------------------------------------------------------------------------------------------------
names = st.text(alphabet=string.ascii_letters + string.digits + "_-~=+/.", min_size=1, max_size=40).filter(
    lambda s: not s.startswith("/") and ".." not in s.split("/"))
small_floats = st.floats(1e-9, 1.0, allow_nan=False)


def as_float_sometimes(draw, value: int):
    """An integer, or the same number written as a float (``3.0``), which JSON Schema also calls an integer."""
    return float(value) if draw(st.booleans()) and abs(value) < 2**52 else value


@st.composite
def networks(draw, buildable: bool):
    """``(network section, depth)`` of a network that builds: a preset, or a dense or conv+dense stack whose widths
    chain for any rule (non-increasing, square conv layers with stride <= kernel and filters <= C k k)."""
    kinds = ["small_preset", "dense", "conv"] + ([] if buildable else ["big_preset"])
    kind = draw(st.sampled_from(kinds))
    if kind == "small_preset":
        name = draw(st.sampled_from(sorted(SMALL_PRESETS)))
        net = {"preset": name}
        if draw(st.booleans()):
            net["classes"] = draw(st.integers(2, 12))
        return net, SMALL_PRESETS[name]
    if kind == "big_preset":
        name = draw(st.sampled_from(sorted(set(PRESETS) - set(SMALL_PRESETS))))
        net = {"preset": name}
        if name == "imagenet_conv":
            net.update(image_size=draw(st.integers(64, 256)), width_mult=draw(st.sampled_from([0.5, 1, 1.5])),
                       classes=draw(st.integers(2, 90)))
        elif name == "cifar10_conv":
            net.update(width_mult=draw(st.sampled_from([0.5, 1.0, 2])), classes=draw(st.integers(2, 10)))
        else:
            net["classes"] = draw(st.integers(2, 100))
        depth = {"cifar10_shallow": 4, "cifar10_deep": 7, "cifar10_conv": 6, "imagenet_conv": 8}[name]
        return net, depth
    classes = draw(st.integers(2, 4))
    layers = []
    if kind == "conv":
        channels = draw(st.sampled_from([1, 3]))
        shape = [channels, 8, 8]
        f1, k1, s1 = draw(st.integers(1, 6)), draw(st.integers(1, 3)), draw(st.integers(1, 2))
        layers.append({"kind": "conv", "width": f1, "kernel": k1, "stride": s1})
        size, read = math.ceil(8 / s1), f1
        if draw(st.booleans()):
            k2 = draw(st.integers(2, 3))
            s2 = draw(st.integers(1, k2))
            f2 = draw(st.integers(1, min(8, read * k2 * k2)))
            layers.append({"kind": "conv", "width": f2, "kernel": k2, "stride": s2})
            size, read = math.ceil(size / s2), f2
        top = min(16, read * size * size)
    else:
        shape = [1, 8, 8]
        top = 64
    for _ in range(draw(st.integers(0 if kind == "conv" else 1, 3))):
        top = draw(st.integers(classes, max(classes, top)))
        layer = {"width": top}
        if draw(st.integers(0, 3)) == 0:
            layer["square"] = True
        layers.append(layer)
    assume(top >= classes)
    return {"input_shape": shape, "classes": classes, "layers": layers}, len(layers) + 1


@st.composite
def rule_settings(draw, rule: str):
    """Settings of ``rule``: only those it reads (sim.rules.registry: a setting it does not read is refused)."""
    out = {}
    declared = get_spec(rule).declared()
    for key, strat in [("lr", small_floats), ("eps", st.floats(1e-12, 1e-2)), ("ortho_lambda", st.floats(0, 1e3)),
                       ("gamma", small_floats), ("eta", small_floats),
                       ("betas", st.lists(st.floats(0, 0.999), min_size=2, max_size=2)),
                       ("arithmetic", st.sampled_from(["difference", "target"])),
                       ("inverse", st.sampled_from(["lu", "inv"])), ("decay", st.floats(0, 10))]:
        if key in declared and draw(st.booleans()):
            out[key] = draw(strat)
    return out


@st.composite
def valid_configs(draw, buildable: bool = False):
    """A valid config dict, and its depth."""
    net, depth = draw(networks(buildable))
    if draw(st.booleans()):
        rules = draw(st.sampled_from(RULE_NAMES))
    else:
        rules = draw(st.lists(st.sampled_from(RULE_NAMES), min_size=depth, max_size=depth))
    used = {rules} if isinstance(rules, str) else set(rules)
    settings_doc = {r: draw(rule_settings(r)) for r in sorted(used) if draw(st.booleans())}
    epochs = draw(st.integers(1, 500))
    train = {"epochs": as_float_sometimes(draw, epochs)}
    optional = {
        "batch_size": st.integers(1, 4096), "seed": st.integers(0, 2**63 - 1),
        "dtype": st.sampled_from(["float32", "float64"]),
        "step": st.fixed_dictionaries({}, optional={
            "check_numerics": st.sampled_from([True, False, "tensor", "step", "off"]),
            "ortho_every": st.integers(1, 1000), "skip_aux": st.booleans(), "fused_adam": st.booleans(),
            "symmetric_gram": st.booleans(), "compile_nudge": st.booleans()}),
        "drop_last": st.booleans(), "eval_batch_size": st.integers(1, 4096), "num_workers": st.integers(0, 8),
        "eval_train_subset": st.one_of(st.none(), st.integers(1, 10**6)),
        "on_nonfinite": st.sampled_from(["stop", "retry"]), "retry_lr_factor": st.floats(0.01, 0.99),
        "max_retries": st.integers(0, 100),
        "device": st.just("cpu") if buildable else st.sampled_from(["cpu", "cuda", "cuda:1"]),
    }
    for key, strat in optional.items():
        if draw(st.booleans()):
            train[key] = draw(strat)
    data_kind = draw(st.sampled_from(["digits", "random", "npz", "cifar10", "imagenet_folder"]))
    data = {"kind": data_kind}
    if data_kind == "random":
        data.update(classes=draw(st.integers(1, 100)), input_shape=[draw(st.integers(1, 3)), 8, 8])
    elif data_kind != "digits":
        data["path"] = draw(st.one_of(st.none(), st.just("data/x"), st.just("/data/imagenet")))
    if draw(st.booleans()):
        data["size"] = draw(st.integers(1, 10**6))
    if draw(st.booleans()):
        data["normalize"] = draw(st.sampled_from(["unit", "imagenet"]))
    doc = {"network": net, "rules": rules, "data": data, "train": train}
    if settings_doc:
        doc["settings"] = settings_doc
    if draw(st.booleans()):
        std = st.floats(0, 1)
        doc["noise"] = {k: draw(st.one_of(std, st.lists(std, min_size=depth, max_size=depth)))
                        for k in ("message_std", "activity_std") if draw(st.booleans())}
    if draw(st.booleans()):
        doc["record"] = {
            "angle_every": draw(st.integers(0, 1000)), "probe_size": draw(st.integers(0, 256)),
            "probe_epochs": draw(st.lists(st.integers(0, epochs), unique=True, max_size=4)),
            "checkpoint_every": draw(st.integers(0, 50)),
        }
    if draw(st.booleans()):
        doc["name"] = draw(names)
    return doc


# ----- mutations ----------------------------------------------------------------------------------------------------
SCHEMA = load_schema()


def _deref(node: dict) -> dict:
    while "$ref" in node:
        target = SCHEMA
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def schema_node(path: tuple) -> dict:
    """The schema of the value at ``path`` (a oneOf picks its array branch for list items, else its first)."""
    node = _deref(SCHEMA)
    for part in path:
        branches = [_deref(b) for b in node.get("oneOf", [])]
        if branches:
            node = next((b for b in branches if isinstance(part, int) == (b.get("type") == "array")), branches[0])
        node = _deref(node["items"] if isinstance(part, int) else node["properties"][part])
    return node


def leaf_node(path: tuple, value) -> dict:
    """The schema of the value at ``path``; of a oneOf, the branch of the value's kind (list or not)."""
    node = schema_node(path)
    branches = [_deref(b) for b in node.get("oneOf", [])]
    if branches:
        node = next((b for b in branches if isinstance(value, list) == (b.get("type") == "array")), branches[0])
    return node


def types_of(node: dict) -> set[str]:
    """The JSON types a node accepts ('enum' for an enumeration)."""
    if "oneOf" in node:
        return set().union(*(types_of(_deref(b)) for b in node["oneOf"]))
    if "enum" in node:
        return {"enum"}
    t = node.get("type", [])
    return set(t if isinstance(t, list) else [t])


def enum_of(node: dict) -> list:
    """The values of a node's enumeration (its oneOf branches' included)."""
    return [*node.get("enum", []), *(v for b in node.get("oneOf", []) for v in _deref(b).get("enum", []))]


def leaves(doc, path=()):
    """Every ``(path, value)`` in the document, containers included (not the root)."""
    if path:
        yield path, doc
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from leaves(v, (*path, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from leaves(v, (*path, i))


def get(doc, path):
    for part in path:
        doc = doc[part]
    return doc


def put(doc, path, value):
    get(doc, path[:-1])[path[-1]] = value


def json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return {str: "string", list: "array", dict: "object"}[type(value)]


GARBAGE = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10, 10), st.text(max_size=5)),
    lambda inner: st.one_of(st.lists(inner, min_size=1, max_size=3),
                            st.dictionaries(st.text(max_size=5), inner, min_size=1, max_size=3)),
    max_leaves=8,
).map(lambda g: {"junk\u2603": g, "more": [g]})


def _typo(draw, key: str) -> str:
    kind = draw(st.integers(0, 3))
    i = draw(st.integers(0, max(0, len(key) - 1)))
    if kind == 0 and len(key) > 1:
        return key[:i] + key[i + 1:]
    if kind == 1 and len(key) > 1:
        j = min(i + 1, len(key) - 1)
        return key[:i] + key[j] + key[i] + key[j + 1:] if key[i] != key[j] else key + "s"
    if kind == 2:
        return key[:i] + draw(st.sampled_from("aeiouxz_")) + key[i:]
    return key.upper() if key.upper() != key else key + "_"


@st.composite
def invalid_configs(draw):
    """``(config, mutation, words)``: a valid config broken in one place; the error must contain one of ``words``."""
    doc = draw(valid_configs())
    mutation = draw(st.sampled_from(["typo", "type", "negative", "unknown_name", "length", "nonfinite", "huge",
                                     "garbage"]))
    spots = [(p, v) for p, v in leaves(doc)]
    if mutation == "typo":
        owners = [p for p, v in spots if isinstance(v, dict) and v] + [()]
        owner = draw(st.sampled_from(owners))
        obj = get(doc, owner)
        key = draw(st.sampled_from(sorted(obj)))
        known = set(schema_node(owner).get("properties", {}))
        typo = _typo(draw, key)
        assume(typo not in known and typo not in obj)
        obj[typo] = obj.pop(key)
        return doc, mutation, [repr(typo)]
    if mutation == "length":
        options = []
        if isinstance(doc["rules"], list):
            options.append(("rules", lambda: doc.update(rules=doc["rules"] + doc["rules"][:1])))
            if len(doc["rules"]) > 1:
                options.append(("rules", lambda: doc.update(rules=doc["rules"][:-1])))
        else:
            options.append(("rules", lambda: doc.update(rules=[doc["rules"]] * 11)))
        for k, v in (doc.get("noise") or {}).items():
            if isinstance(v, list):
                options.append((f"noise.{k}", lambda k=k, v=v: doc["noise"].update({k: v + [0.0]})))
        if "input_shape" in doc["network"]:
            options.append(("network.input_shape", lambda: doc["network"].update(input_shape=[1, 8, 8, 1])))
        if doc["data"]["kind"] == "random":
            options.append(("data.input_shape", lambda: doc["data"].update(input_shape=[8, 8])))
        for rule, s in (doc.get("settings") or {}).items():
            if "betas" in s:
                options.append((f"settings.{rule}.betas", lambda s=s: s.update(betas=s["betas"] + [0.5])))
        key, apply = draw(st.sampled_from(options))
        apply()
        return doc, mutation, [key]
    if mutation == "garbage":
        path, _ = draw(st.sampled_from(spots))
        put(doc, path, draw(GARBAGE))
        return doc, mutation, [_key_path(path)]
    # the rest change one scalar (or container) at a path the schema describes
    path, value = draw(st.sampled_from(spots))
    where = _key_path(path)
    if mutation == "type":
        node = schema_node(path)
        allowed, names_ = types_of(node) - {"enum"}, enum_of(node)
        if "number" in allowed:
            allowed.add("integer")
        pool = [None, True, 7, 2.5, "text", {"k": 1}] + ([] if "array" in allowed else [[1, "x"]])
        bad = [v for v in pool if json_type(v) not in allowed and v not in names_]
        assume(bad)
        put(doc, path, draw(st.sampled_from(bad)))
        return doc, mutation, [where]
    node = leaf_node(path, value)
    allowed = types_of(node)
    if mutation == "negative":
        assume(allowed & {"integer", "number"} and ("minimum" in node or "exclusiveMinimum" in node))
        neg = -draw(st.integers(1, 10**6))
        put(doc, path, neg if "integer" in allowed else neg / 7)
        return doc, mutation, [where]
    if mutation == "unknown_name":
        assume("enum" in allowed)
        name = draw(st.text(min_size=1, max_size=12))
        assume(name not in enum_of(node))
        put(doc, path, name)
        return doc, mutation, [where]
    if mutation == "nonfinite":
        assume(allowed & {"integer", "number"} or isinstance(value, float))
        put(doc, path, draw(st.sampled_from([math.nan, math.inf, -math.inf])))
        return doc, mutation, [where]
    # huge
    assume("integer" in allowed and "maximum" in node)
    put(doc, path, draw(st.integers(node["maximum"] + 1, max(10**30, node["maximum"] * 10))))
    return doc, mutation, [where]


# ----- the tests ----------------------------------------------------------------------------------------------------
@pytest.mark.slow
@settings(max_examples=600, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(doc=valid_configs())
def test_valid_configs_load_and_round_trip(doc):
    cfg = load_config(doc)
    assert load_config(cfg.to_dict()) == cfg
    SEEN["valid"] += 1


@settings(max_examples=120, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(doc=valid_configs(buildable=True))
def test_valid_configs_build_their_network(doc):
    cfg = load_config(doc)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        net = build_network(cfg)
    finally:
        torch.set_num_threads(threads)
    assert len(net.layers) == len(cfg.network_config().rule_names())
    SEEN["built"] += 1


@pytest.mark.slow
@settings(max_examples=1500, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(case=invalid_configs())
def test_invalid_configs_are_a_config_error_naming_the_key(case):
    doc, mutation, words = case
    try:
        load_config(doc)
    except ConfigError as exc:
        msg = str(exc)
        assert any(w in msg for w in words), f"{mutation}: {words} not named in: {msg}"
    else:
        raise AssertionError(f"{mutation}: accepted an invalid config naming {words}: {doc}")
    SEEN["invalid"] += 1


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(case=invalid_configs())
def test_invalid_configs_fast_sample(case):
    test_invalid_configs_are_a_config_error_naming_the_key.hypothesis.inner_test(case)


def test_fuzz_counts():
    """Report how many configs the fuzz tests above checked in this session."""
    print(f"\nfuzzed configs: {SEEN['valid']} valid (loaded), {SEEN['built']} built, {SEEN['invalid']} invalid "
          f"(rejected naming the key): {sum(SEEN.values())} in all")
