"""Per-rule overrides in a study (``set_by_rule``, docs/workflow.md): an entry reaches only its rule's runs, at the
study and the experiment level, in the documented order; an unknown rule name is an error naming the key."""

from __future__ import annotations

import pytest

from sim.errors import ConfigError
from sim.study import expand
from tests.test_study import REPO, bad_study, workflow_config


def by_rule(runs) -> dict[str, dict]:
    return {run.label: run.config for run in runs if run.seed == 0}


def test_experiment_set_by_rule_reaches_only_its_rules_runs():
    config = bad_study({"rules": ["bp", "fa", "gp", "vgp"],
                        "set": {"train": {"epochs": 2}},
                        "set_by_rule": {"gp": {"settings": {"gp": {"eta": 1.0e-5}}},
                                        "vgp": {"train": {"dtype": "float64"},
                                                "settings": {"vgp": {"arithmetic": "target"}}}}})
    runs = by_rule(expand(config, REPO))
    assert runs["gp"]["settings"]["gp"]["eta"] == 1.0e-5
    assert runs["vgp"]["train"]["dtype"] == "float64" and runs["vgp"]["settings"]["vgp"]["arithmetic"] == "target"
    for rule in ("bp", "fa", "gp"):
        assert runs[rule]["train"].get("dtype", "float32") == "float32", rule
    for rule in ("bp", "fa", "vgp"):
        assert runs[rule].get("settings", {}).get("gp", {}).get("eta") != 1.0e-5, rule
    assert all(doc["train"]["epochs"] == 2 for doc in runs.values())  # the experiment's `set` still reaches all


def test_order_study_set_then_study_by_rule_then_experiment():
    config = bad_study({"set": {"train": {"epochs": 4}}},
                       set={"train": {"epochs": 2, "batch_size": 16}},
                       set_by_rule={"gp": {"train": {"epochs": 3, "batch_size": 8}}})
    runs = by_rule(expand(config, REPO))
    assert runs["gp"]["train"]["batch_size"] == 8 and runs["bp"]["train"]["batch_size"] == 16
    assert runs["gp"]["train"]["epochs"] == 4 and runs["bp"]["train"]["epochs"] == 4  # the experiment's set wins


def test_rule_mixture_label_as_key():
    config = workflow_config("mixing")
    exp = next(iter(config["studies"]["mixing"]["experiments"].values()))
    exp["set_by_rule"] = {"fa+gp": {"train": {"epochs": 1}}}
    runs = expand(config, REPO)
    assert runs and all(run.config["train"]["epochs"] == 1 for run in runs)


@pytest.mark.parametrize("level", ["study", "experiment"])
def test_unknown_rule_name_is_an_error_naming_the_key(level):
    section = {"set_by_rule": {"gpp": {"train": {"epochs": 1}}}}
    config = bad_study(section) if level == "experiment" else bad_study({}, **section)
    with pytest.raises(ConfigError) as info:
        expand(config, REPO)
    key = ("studies.bad.experiments.e" if level == "experiment" else "studies.bad") + ".set_by_rule.gpp"
    assert info.value.key == key
    assert str(info.value).startswith(f"{key}: 'gpp' is not a rule name")
    assert "did you mean 'gp'?" in str(info.value)


def test_experiment_key_for_a_rule_it_does_not_run_is_an_error():
    config = bad_study({"set_by_rule": {"vgp": {"train": {"epochs": 1}}}})  # the experiment runs bp and gp
    with pytest.raises(ConfigError, match=r"has no runs of rule 'vgp' \(its rules: bp, gp\)") as info:
        expand(config, REPO)
    assert info.value.key == "studies.bad.experiments.e.set_by_rule.vgp"


def test_a_bad_value_in_a_rule_entry_names_the_run_and_key():
    config = bad_study({"set_by_rule": {"gp": {"train": {"epoch": 1}}}})
    with pytest.raises(ConfigError, match=r"rule gp, seed 0\): train: unknown key 'epoch'") as info:
        expand(config, REPO)
    assert info.value.key == "train.epoch"
