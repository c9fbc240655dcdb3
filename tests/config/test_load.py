"""Run configs: the schema against the registries, the shipped configs, and the messages for bad input."""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.config import (
    DataSection,
    NetworkSection,
    RecordSection,
    TrainSection,
    build_network,
    build_scheduler,
    load_config,
    load_schema,
)
from sim.data.spec import BAD_IMAGE_POLICIES, KINDS, NORMALIZATIONS
from sim.errors import ConfigError
from sim.layers import BUILDERS
from sim.network import LayerSpec
from sim.presets import PRESETS
from sim.rules import RULES, get_rule
from sim.rules.base import ARITHMETICS, INVERSE_METHODS
from sim.schedule import NoiseFloor
from sim.step_options import StepOptions

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


# ----- the schema against the registries ----------------------------------------------------------------------------
def test_schema_enums_equal_the_registries():
    s = load_schema()
    props = s["properties"]
    assert set(s["$defs"]["rule_name"]["enum"]) == set(RULES)
    assert set(props["settings"]["properties"]) == set(RULES)
    assert set(props["network"]["properties"]["preset"]["enum"]) - {None} == set(PRESETS)
    assert tuple(props["data"]["properties"]["kind"]["enum"]) == KINDS
    assert tuple(props["data"]["properties"]["normalize"]["enum"]) == NORMALIZATIONS
    assert tuple(props["data"]["properties"]["on_bad_image"]["enum"]) == BAD_IMAGE_POLICIES
    assert set(s["$defs"]["layer"]["properties"]["kind"]["enum"]) == set(BUILDERS)
    rs = props["settings"]["properties"]["gp"]["properties"]
    assert tuple(rs["arithmetic"]["enum"]) == ARITHMETICS
    assert tuple(rs["inverse"]["enum"]) == INVERSE_METHODS


def test_schema_sections_match_the_dataclasses():
    """Every dataclass field is a schema key and vice versa, and the schema's defaults are the dataclasses'."""
    s = load_schema()
    props, defs = s["properties"], s["$defs"]
    pairs = [(props["network"], NetworkSection), (props["data"], DataSection), (props["train"], TrainSection),
             (props["record"], RecordSection), (props["noise"], NoiseFloor), (defs["layer"], LayerSpec),
             (props["train"]["properties"]["step"], StepOptions)]
    for section, cls in pairs:
        assert set(section["properties"]) == {f.name for f in fields(cls)}, cls.__name__
        for f in fields(cls):
            if "default" in section["properties"][f.name]:
                assert section["properties"][f.name]["default"] == f.default, (cls.__name__, f.name)
    run_keys = {"name", "network", "rules", "settings", "noise", "data", "train", "record"}
    assert set(props) == run_keys


def _objects(node, path="$"):
    if isinstance(node, dict):
        if node.get("type") == "object" or "properties" in node:
            yield path, node
        for k, v in node.items():
            yield from _objects(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _objects(v, f"{path}[{i}]")


def test_schema_is_closed_and_described():
    for path, obj in _objects(load_schema()):
        assert obj.get("additionalProperties") is False, path
        assert obj.get("description"), path
        for key, sub in obj.get("properties", {}).items():
            assert sub.get("description"), f"{path}.{key}"


def test_snakemake_validate_uses_the_same_schema(tmp_path):
    utils = pytest.importorskip("snakemake.utils")
    from snakemake.exceptions import WorkflowError

    good = yaml_load(CONFIGS[0])
    utils.validate(good, str(ROOT / "sim/schema/run.schema.json"))
    bad = {**good, "train": {**good["train"], "epoch": 3}}
    with pytest.raises(WorkflowError):
        utils.validate(bad, str(ROOT / "sim/schema/run.schema.json"))


def yaml_load(path):
    import yaml

    return yaml.safe_load(Path(path).read_text())


# ----- shipped configs ----------------------------------------------------------------------------------------------
def test_the_reference_configs_are_all_there():
    names = {p.stem for p in CONFIGS}
    expected = {f"cifar10_{d}_{r}" for d in ("shallow", "deep") for r in ("bp", "fa", "vgp", "gp")}
    expected |= {f"imagenet_conv_{r}" for r in ("bp", "fa", "gp")}
    expected |= {f"digits_{d}_{r}" for d in ("shallow", "deep") for r in ("bp", "fa", "vgp", "gp")}
    assert expected <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_config_validates_and_round_trips(path):
    cfg = load_config(path)
    assert cfg.name == path.stem
    assert load_config(cfg.to_dict()) == cfg
    assert load_config(json.loads(cfg.to_json())) == cfg


@pytest.mark.parametrize("name", ["cifar10_deep_gp", "cifar10_shallow_fa", "imagenet_conv_gp", "imagenet_conv_bp"])
def test_reference_settings_match_reference_md_section_6(name):
    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    rule = cfg.rules
    s = cfg.settings[rule]
    table = {
        ("cifar10", "bp"): (1.9e-5, (0.9, 0.999), 1e-6, 0), ("cifar10", "fa"): (2.5e-5, (0.9, 0.99), 1e-4, 0),
        ("cifar10", "vgp"): (1.9e-5, (0.9, 0.999), 1e-6, 100), ("cifar10", "gp"): (1.9e-5, (0.9, 0.999), 1e-6, 100),
        ("imagenet", "bp"): (4.9e-5, (0.9, 0.99), 1e-8, 0), ("imagenet", "fa"): (4.3e-5, (0.9, 0.99), 1e-4, 0),
        ("imagenet", "gp"): (4.9e-5, (0.9, 0.99), 1e-8, 1),
    }
    assert (s.lr, s.betas, s.eps, s.ortho_lambda) == table[(name.split("_")[0], rule)]
    assert cfg.train.batch_size == 256 and cfg.train.epochs == 200


def test_imagenet_configs_load_but_refuse_to_run_without_a_path(tmp_path):
    cfg = load_config(ROOT / "configs/imagenet_conv_gp.yaml")
    assert cfg.data.path is None
    with pytest.raises(ConfigError, match=r"data\.path is not set"):
        cfg.data.spec()


# ----- bad input names the key --------------------------------------------------------------------------------------
@pytest.mark.parametrize("change, pattern", [
    (lambda d: d["train"].update(epoch=3), r"train: unknown key 'epoch' \(did you mean 'epochs'\?\)"),
    (lambda d: d.update(rules="gpp"), r"rules: 'gpp' is not one of \['bp', 'brsf', 'dfa', 'dtp', 'fa', 'frsf', 'gp', "
                                      r"'kp', 'lgp', 'usf', 'vgp'\]"),
    (lambda d: d.update(rules=["bp", "gq", "bp", "bp"]), r"rules\[1\]: 'gq' is not one of"),
    (lambda d: d["settings"]["gp"].update(lr=-1), r"settings\.gp\.lr: -1 is less than or equal to the minimum of 0"),
    (lambda d: d.update(rules=["gp", "gp"]), r"rules: 2 rule names given for a network of 4 layers"),
    (lambda d: d["network"].update(preset="cifar10_dep"),
     r"network\.preset: 'cifar10_dep' is not one of .*did you mean 'cifar10_deep'"),
    (lambda d: d.update(settings={"gpp": {"lr": 1.0}}), r"settings: unknown key 'gpp' \(did you mean 'gp'\?\)"),
    (lambda d: d["settings"]["gp"].update(betas=[0.9, 1.5]), r"settings\.gp\.betas\[1\]: 1\.5"),
    (lambda d: d.update(noise={"message_std": [0.1, 0.1]}), r"noise\.message_std: 2 values for a network of 4"),
    (lambda d: d.update(noise={"activity_std": -0.5}), r"noise\.activity_std: -0\.5 is less than the minimum"),
    (lambda d: d.update(extra=1), r"unknown top-level key 'extra'"),
    (lambda d: d.pop("train"), r"missing required top-level key 'train'"),
    (lambda d: d["train"].pop("epochs"), r"train: missing required key 'epochs'"),
    (lambda d: d["train"].update(dtype="float16"), r"train\.dtype: 'float16' is not one of"),
    (lambda d: d["data"].update(kind="mnist"), r"data\.kind: 'mnist' is not one of"),
    (lambda d: d["network"].update(image_size=32), r"network\.image_size: preset 'digits_shallow' takes no option"),
    (lambda d: d["network"].update(layers=[{"width": 8}]), r"network: give either preset .* not both"),
    (lambda d: d.update(network={"classes": 10}), r"network: .*missing network\.input_shape, network\.layers"),
    (lambda d: d["record"].update(probe_epochs=[0, 9]), r"record\.probe_epochs: epoch\(s\) \[9\] come after"),
    (lambda d: d["record"].update(angle_every=-1), r"record\.angle_every: -1 is less than the minimum of 0"),
    (lambda d: d["train"].update(device="gpu"), r"train\.device: 'gpu' does not match"),
    (lambda d: d["train"].update(step={"skip_auxx": False}), r"train\.step: unknown key 'skip_auxx'.*'skip_aux'"),
    (lambda d: d["train"].update(step={"check_numerics": "never"}), r"train\.step\.check_numerics: 'never' is not one"),
    (lambda d: d["train"].update(step={"ortho_every": 0}), r"train\.step\.ortho_every: 0 is less than the minimum"),
])
def test_bad_configs_name_the_key(tiny_config, change, pattern):
    doc = tiny_config()
    change(doc)
    with pytest.raises(ConfigError, match=pattern):
        load_config(doc)


def test_all_schema_problems_are_reported_at_once(tiny_config):
    doc = tiny_config(train={"epoch": 2, "batch_size": 0})
    with pytest.raises(ConfigError) as info:
        load_config(doc)
    msg = str(info.value)
    assert "problems" in msg and "train: unknown key 'epoch'" in msg and "train.batch_size: 0" in msg


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("network: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(bad)


def test_yaml_1_2_floats_are_numbers(tmp_path, tiny_config):
    import yaml

    path = tmp_path / "run.yaml"
    doc = tiny_config()
    path.write_text(yaml.safe_dump(doc).replace("lr: 0.001", "lr: 1e-3"))
    assert "1e-3" in path.read_text()
    assert load_config(path).settings["gp"].lr == 1e-3


# ----- resolution and building --------------------------------------------------------------------------------------
def test_unspecified_settings_take_the_rule_defaults(tiny_config, one_thread):
    doc = tiny_config(rules=["fa", "gp", "gp", "bp"])
    doc["settings"] = {"gp": {"lr": 3e-4}}
    cfg = load_config(doc)
    assert set(cfg.settings) == {"fa", "gp", "bp"}
    assert cfg.settings["fa"] == get_rule("fa").defaults
    assert cfg.settings["gp"] == get_rule("gp").defaults.__class__(**{**asdict(get_rule("gp").defaults),
                                                                       "lr": 3e-4})
    net = build_network(cfg)
    assert net.rule_names == ["fa", "gp", "gp", "bp"]
    sched = build_scheduler(cfg, net)
    lrs = [g["lr"] for g in sched.optimizer.param_groups]
    assert lrs == [get_rule("fa").defaults.lr, 3e-4, 3e-4, get_rule("bp").defaults.lr]


def test_explicit_stack_and_device_override(tiny_config, one_thread):
    doc = tiny_config(network={"input_shape": [1, 8, 8], "classes": 10, "layers": [{"width": 32}, {"width": 16}]},
                      rules="bp")
    doc["network"].pop("preset")
    cfg = load_config(doc)
    net = build_network(cfg)
    assert [tuple(layer.out_shape) for layer in net.layers] == [(32,), (16,), (10,)]
    assert load_config(cfg.to_dict()) == cfg
    assert cfg.with_device("cpu") == cfg
    with pytest.raises(ConfigError, match="train.device"):
        cfg.with_device("tpu")


def test_probe_epochs_default_to_first_and_last(tiny_config):
    doc = tiny_config()
    doc["record"].pop("probe_epochs")
    assert load_config(doc).record.probe_epochs == (0, 2)


_rules = st.sampled_from(sorted(RULES))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rules=st.one_of(_rules, st.lists(_rules, min_size=4, max_size=4)),
       lr=st.floats(1e-8, 1.0), epochs=st.integers(1, 50), seed=st.integers(0, 2**31),
       std=st.one_of(st.floats(0, 1), st.lists(st.floats(0, 1), min_size=4, max_size=4)),
       probe=st.lists(st.integers(0, 50), unique=True, max_size=4))
def test_round_trip_property(tiny_config, rules, lr, epochs, seed, std, probe):
    doc = tiny_config(rules=rules, settings={"gp": {"lr": lr}}, train={"epochs": epochs, "seed": seed},
                      noise={"message_std": std}, record={"probe_epochs": [p for p in probe if p <= epochs]})
    cfg = load_config(doc)
    assert load_config(cfg.to_dict()) == cfg


# ----- what the schema cannot say (docs/reliability.md) -------------------------------------------------------------
def test_counts_written_as_floats_are_counts(tiny_config):
    cfg = load_config(tiny_config(train={"epochs": 3.0, "batch_size": 16.0}, record={"probe_epochs": [0.0, 3.0]}))
    assert cfg.train.epochs == 3 and isinstance(cfg.train.epochs, int) and cfg.record.probe_epochs == (0, 3)
    assert load_config(cfg.to_dict()) == cfg


@pytest.mark.parametrize("change, pattern", [
    (lambda d: d["settings"]["gp"].update(lr=float("inf")), r"settings\.gp\.lr: inf is not a finite number"),
    (lambda d: d["settings"]["gp"].update(ortho_lambda=float("nan")), r"settings\.gp\.ortho_lambda: nan is not a"),
    (lambda d: d.update(noise={"message_std": [0.0, float("nan"), 0.0, 0.0]}), r"noise\.message_std\[1\]: nan"),
    (lambda d: d["train"].update(seed=2**64), r"train\.seed: \d+ is greater than the maximum"),
    (lambda d: d["train"].update(epochs=10**12), r"train\.epochs: \d+ is greater than the maximum"),
    (lambda d: d["train"].update(on_nonfinite="ignore"), r"train\.on_nonfinite: 'ignore' is not one of"),
    (lambda d: d["train"].update(retry_lr_factor=1.0), r"train\.retry_lr_factor: 1\.0 is greater than or equal"),
    (lambda d: d.update(name="../up"), r"name: '\.\./up' could be taken for a path"),
    (lambda d: d.update(network={"input_shape": [1, 8, 8], "classes": 10, "layers": [{"width": 32}, {"width": 64}]}),
     r"network\.layers\[1\]: layer 'dense2': a square .* the widths do not chain"),
    (lambda d: d.update(network={"input_shape": [1, 8, 8], "classes": 10,
                                 "layers": [{"kind": "conv", "width": 4, "kernel": 3, "stride": 1},
                                            {"kind": "conv", "width": 4, "kernel": 2, "stride": 3}]}),
     r"network\.layers\[1\]: layer 'conv2': stride 3 exceeds kernel 2"),
    (lambda d: d["train"].update(epochs={"a": [1, {"b": None}]}), r"train\.epochs: \{.*\} is not of type 'integer'"),
    (lambda d: d["data"].update(path=__import__("datetime").date(2024, 1, 1)), r"data\.path: datetime\.date"),
    (lambda d: d["train"].update({1: 2}), r"train: key 1 is not a string"),
])
def test_more_bad_configs_name_the_key(tiny_config, change, pattern):
    doc = tiny_config()
    change(doc)
    with pytest.raises(ConfigError, match=pattern):
        load_config(doc)


def test_a_config_that_refers_to_itself_or_is_huge_is_refused(tmp_path, tiny_config):
    doc = tiny_config()
    doc["network"]["loop"] = doc["network"]
    with pytest.raises(ConfigError, match=r"network\.loop: refers to itself"):
        load_config(doc)
    path = tmp_path / "laughs.yaml"  # "billion laughs": 9 levels of 10 aliases, 10^9 values if expanded
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=r"more than 100000 values"):
        load_config(path)


def test_layers_that_do_not_fit_are_refused_without_building_anything(tiny_config, monkeypatch):
    """The check builds the network on the meta device: no memory, and a CUDA config validates without a GPU."""
    import sim.layers.dense

    def no_real_tensors(*args, **kwargs):
        raise AssertionError("a real weight was initialised during validation")

    monkeypatch.setattr(sim.layers.dense.nn.init, "orthogonal_", lambda t, **kw: t if t.is_meta else
                        no_real_tensors())
    cfg = load_config(tiny_config(network={"preset": "cifar10_deep"}, train={"device": "cuda"}))
    assert cfg.train.device == "cuda"


@pytest.mark.parametrize("change, key", [
    (lambda d: d["train"].update(epoch=2), "train.epoch"),
    (lambda d: d["train"].pop("epochs"), "train.epochs"),
    (lambda d: d["settings"]["gp"].update(lr=-1), "settings.gp.lr"),
    (lambda d: d.update(noise={"message_std": [0.0, float("nan"), 0.0, 0.0]}), "noise.message_std[1]"),
    (lambda d: d["network"].update(image_size=32), "network.image_size"),
    (lambda d: d.update(rules=["gp", "gp"]), "rules"),
    (lambda d: d["record"].update(probe_epochs=[0, 9]), "record.probe_epochs"),
    (lambda d: d.update(network={"input_shape": [1, 8, 8], "classes": 10, "layers": [{"width": 32}, {"width": 64}]}),
     "network.layers[1]"),
    (lambda d: d.update(network={"input_shape": [1, 8, 8], "classes": 10, "layers": [{"width": 64}, {"width": 8}]}),
     "network.classes"),
    (lambda d: d["data"].update(kind="random"), "data"),
])
def test_the_error_names_its_key_as_a_field(tiny_config, change, key):
    """ConfigError.key is the key path the message starts with (after the source): callers never parse messages."""
    doc = tiny_config()
    change(doc)
    with pytest.raises(ConfigError) as info:
        load_config(doc)
    assert info.value.key == key
    assert str(info.value).startswith((f"config: {key}", "config: "))
    assert key.split("[")[0].rsplit(".", 1)[0] in str(info.value)


def test_a_data_path_left_unset_is_refused_naming_data_path():
    cfg = load_config({"network": {"preset": "digits_shallow"}, "rules": "bp", "data": {"kind": "npz"},
                       "train": {"epochs": 1}})
    with pytest.raises(ConfigError) as info:
        cfg.data.spec()
    assert info.value.key == "data.path"
