"""Settings declared per rule, no silent settings (issue 15 part 1), and the schema built from the rule registry
(issue 13): a setting a rule does not read is refused naming the rules that read it; the orthogonality regulariser
acts on every layer whose weight matrix is square, under any rule, and its error is recorded for them."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from sim import ConfigError, Network, Scheduler, preset
from sim.config import load_config
from sim.config.schema import load_schema, schema_problems
from sim.metrics import ortho_errors
from sim.rules import RULES, RuleSettings, get_rule
from sim.rules.registry import SETTINGS, get_spec, readers, specs


@pytest.mark.parametrize(("rule", "setting", "readers_"), [("bp", "eta", "gp"), ("gp", "gamma", "vgp"),
                                                           ("fa", "arithmetic", "gp, vgp"), ("bp", "decay", "kp")])
def test_a_setting_the_rule_does_not_read_is_refused_naming_who_reads_it(tiny_config, rule, setting, readers_):
    value = get_spec(readers_.split(",")[0]).default_values()[setting]
    doc = tiny_config(rules=rule, settings={rule: {setting: value}})
    with pytest.raises(ConfigError) as info:
        load_config(doc)
    assert info.value.key == f"settings.{rule}.{setting}"
    assert f"settings.{rule}.{setting}: rule {rule!r} does not read {setting!r}" in str(info.value)
    assert f"read by {readers_}" in str(info.value)
    # the schema check (Snakemake's main process, check_configs) gives the same key and message
    (key, message), = schema_problems(doc)
    assert key == f"settings.{rule}.{setting}" and f"read by {readers_}" in message


def test_the_spec_refuses_unread_settings_without_the_schema():
    with pytest.raises(ConfigError, match=r"settings\.bp\.eta: .*read by gp") as info:
        get_spec("bp").resolve({"eta": 1e-6})
    assert info.value.key == "settings.bp.eta"


def test_each_rule_declares_what_it_reads():
    assert readers("eta") == ["gp", "lgp"] and readers("gamma") == ["vgp"] and readers("decay") == ["kp"]
    assert readers("arithmetic") == readers("inverse") == ["gp", "vgp"]
    for name, spec in specs().items():
        assert {"lr", "betas", "eps", "ortho_lambda"} <= set(spec.declared()), name
        # the class's defaults are the spec's reference values
        assert get_spec(name).resolve() == get_rule(name).defaults


def test_the_schema_is_built_from_the_registry():
    s = load_schema()
    assert s["$defs"]["rule_name"]["enum"] == sorted(specs()) == sorted(RULES)
    per_rule = s["properties"]["settings"]["properties"]
    assert set(per_rule) == set(specs())
    for name, spec in specs().items():
        props = per_rule[name]["properties"]
        assert set(props) == set(spec.declared()), name
        assert per_rule[name]["additionalProperties"] is False
        for key, value in spec.default_values().items():
            assert props[key]["default"] == (list(value) if isinstance(value, tuple) else value)
    assert per_rule["gp"]["properties"]["eta"]["exclusiveMinimum"] == 0  # bounds come with the declaration
    assert set(SETTINGS) >= {"lr", "betas", "eps", "ortho_lambda", "gamma", "eta", "arithmetic", "inverse", "decay"}


def test_the_schema_and_the_study_stay_torch_free():
    code = ("import sys; from sim.config.schema import load_schema; import sim.study; load_schema(); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_resolved_config_stores_only_the_settings_each_rule_reads(tiny_config):
    cfg = load_config(tiny_config(rules=["bp", "gp", "vgp", "kp"], settings={"bp": {"ortho_lambda": 3.0}}))
    stored = cfg.to_dict()["settings"]
    for name, values in stored.items():
        assert set(values) == set(get_spec(name).declared()), name
    assert stored["bp"]["ortho_lambda"] == 3.0
    assert load_config(cfg.to_dict()) == cfg


# ----- the regulariser on every square weight matrix, under any rule ----------------------------------------------
def _square_weights(net):
    return [layer.square_weight() is not None for layer in net.layers]


@pytest.mark.parametrize("rule", ["bp", "fa"])
def test_bp_and_fa_with_ortho_lambda_regularise_their_square_layers(rule):
    torch.manual_seed(0)
    x = torch.rand(64, 1, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 10, (64,))
    errors = {}
    for lam in (0.0, 10.0):
        settings = {rule: RuleSettings(lr=3e-3, ortho_lambda=lam)}
        net = Network(preset("digits_shallow", rule, dtype="float64", settings=settings))
        sched = Scheduler(net)
        for _ in range(30):
            sched.train_step(x, y)
        errors[lam] = ortho_errors(net)
    square = _square_weights(net)
    assert square == [False, True, True, False]  # 64 -> 128 and 128 -> 10 are not square; 128 -> 128 are
    assert np.isfinite(errors[10.0][square]).all() and np.isnan(errors[10.0][~np.array(square)]).all()
    assert (errors[10.0][square] < 0.5 * errors[0.0][square]).all(), errors


def test_a_bp_run_records_ortho_error_of_its_square_layers_and_regularises_them(tiny_config, tmp_path, one_thread):
    from sim.archive import open_run
    from sim.run import run

    stores = {}
    for lam in (0.0, 30.0):
        doc = tiny_config(rules="bp", settings={"bp": {"lr": 3e-3, "ortho_lambda": lam}},
                          train={"epochs": 1}, record={"angle_every": 0, "probe_size": 0, "probe_epochs": [1]})
        stores[lam] = open_run(run(doc, tmp_path / f"lam{lam}.zarr", progress=False))
    plain, reg = stores[0.0].ortho_error.values[-1], stores[30.0].ortho_error.values[-1]
    assert np.isnan(reg[[0, 3]]).all() and np.isfinite(reg[[1, 2]]).all()
    assert (reg[[1, 2]] < plain[[1, 2]]).all(), (plain, reg)
    assert math.isnan(float(stores[30.0].feedback_angle.values[-1, 1]))  # bp has no feedback weight


def test_a_store_written_before_rules_declared_their_settings_still_resumes(tiny_config):
    """Old stores hold every RuleSettings field under every rule; the fields a rule never read are not a change."""
    import json

    from sim.run.store import config_diffs

    cfg = load_config(tiny_config(rules="bp"))
    old = json.loads(cfg.to_json())
    for values in old["settings"].values():
        values.update(gamma=1e-3, eta=1e-7, arithmetic="difference", inverse="lu")
    assert config_diffs(json.dumps(old), cfg) == []
    old["settings"]["bp"]["lr"] = 0.5
    assert config_diffs(json.dumps(old), cfg) == [f"settings.bp.lr: 0.5 -> {cfg.settings['bp'].lr!r}"]
