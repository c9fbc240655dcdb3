"""The study compiler (sim.study, docs/workflow.md) as plain Python: the shipped studies expanded into runs, merging,
sweeps, rule mixing, dataset paths, per-run validation naming the key, which figures apply, and no torch import.

The workflow config is built as Snakemake builds it (config/config.yaml, then each --configfile merged over it, then
validated by workflow/schemas/config.schema.yaml with its defaults filled in); tests/workflow/test_snakemake.py keeps
the Snakemake launches (lint, one dry run, the tiny real run) as smoke tests.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from sim.errors import ConfigError
from sim.study import (
    check_runs,
    deep_merge,
    expand,
    figures_for,
    format_value,
    set_key,
    study_figures,
    write_run_config,
)
from tests.studies import REPO, bad_study, workflow_config


def folders(runs) -> set[str]:
    return {run.folder for run in runs}


# ----- the shipped studies ------------------------------------------------------------------------------------------
def test_default_study_expands_into_its_runs():
    config = workflow_config()
    runs = expand(config, REPO)
    assert len(runs) == 16  # {shallow, deep} x {bp, fa, vgp, gp} x 2 seeds
    assert "results/quick/digits_deep/rule~vgp/seed~1" in folders(runs)
    run = next(r for r in runs if r.folder == "results/quick/digits_deep/rule~vgp/seed~1")
    assert run.store.endswith("/run.zarr")
    assert run.config["rules"] == "vgp" and run.config["train"]["seed"] == 1
    assert run.config["name"] == "quick/digits_deep/rule~vgp/seed~1"
    assert study_figures(config["studies"]["quick"]) == ["angle_layers", "angle_steps", "accuracy"]


def test_per_rule_study_gives_each_rule_its_own_arithmetic():
    runs = {r.folder.removeprefix("results/per_rule/"): r.config for r in expand(workflow_config("per_rule"), REPO)}
    assert sorted(runs) == [f"digits_deep/rule~{r}/seed~0" for r in ("bp", "fa", "gp", "vgp")] + [
        "gp_target32/rule~gp/seed~0"]
    vgp, gp = runs["digits_deep/rule~vgp/seed~0"], runs["digits_deep/rule~gp/seed~0"]
    assert vgp["train"]["dtype"] == "float64" and vgp["settings"]["vgp"]["arithmetic"] == "target"
    assert gp["train"]["dtype"] == "float32" and gp["settings"]["gp"]["arithmetic"] == "difference"
    assert runs["gp_target32/rule~gp/seed~0"]["settings"]["gp"]["arithmetic"] == "target"
    assert runs["digits_deep/rule~bp/seed~0"]["train"]["dtype"] == "float32"


def test_paper_study_without_and_with_imagenet(tmp_path):
    notes = []
    runs = expand(workflow_config("paper"), REPO, note=notes.append)
    assert len(runs) == 8  # CIFAR-10 shallow and deep x 4 rules
    assert any("imagenet_conv is left out" in n and "imagenet_path" in n for n in notes)
    imagenet = tmp_path / "imagenet"
    for split in ("train", "val"):
        (imagenet / split / "n01440764").mkdir(parents=True)
    cifar = {"kind": "npz", "path": "/data/cifar10"}
    runs = expand(workflow_config("paper", imagenet_path=str(imagenet), cifar10=cifar), REPO)
    assert len(runs) == 11  # + the ImageNet conv net x {bp, fa, gp}
    by_folder = {r.folder: r for r in runs}
    assert "results/paper/imagenet_conv/rule~fa/seed~0" in by_folder
    assert not any("imagenet_conv/rule~vgp" in f for f in by_folder)
    assert by_folder["results/paper/imagenet_conv/rule~fa/seed~0"].config["data"]["path"] == str(imagenet)
    cifar_runs = [r for r in runs if "imagenet" not in r.folder]
    assert all(r.config["data"] == cifar for r in cifar_runs)  # another source: its own complete data section


def test_beyond_paper_studies_together():
    config = workflow_config("noise", "arithmetic", "mixing", study=["noise", "arithmetic", "mixing"])
    runs = expand(config, REPO)
    count = {s: sum(r.study == s for r in runs) for s in ("noise", "arithmetic", "mixing")}
    # noise: 4 message stds x 4 etas x {vgp, gp}; arithmetic: {difference, target} x {float32, float64} x {vgp, gp}
    # x 2 seeds; mixing: 8 split depths x 2 seeds
    assert count == {"noise": 32, "arithmetic": 16, "mixing": 16}
    for folder in ("noise/digits_deep/message_std~0.0001/eta~1e-07/rule~vgp/seed~0",
                   "arithmetic/digits_deep/arithmetic~target/dtype~float64/rule~gp/seed~1",
                   "mixing/digits_deep/split~3/rule~fa+gp/seed~1"):
        assert f"results/{folder}" in folders(runs)
    figures = {s: study_figures(config["studies"][s]) for s in count}
    assert figures["noise"][-1] == "noise_map" and "mixing" not in figures["noise"]
    assert figures["mixing"][-1] == "mixing" and "noise_map" not in figures["mixing"]
    assert figures["arithmetic"] == ["angle_layers", "angle_steps", "accuracy"]


# ----- merging, sweeps, mixing --------------------------------------------------------------------------------------
def test_merge_and_set_key():
    base = {"train": {"epochs": 5, "seed": 0}, "rules": "gp"}
    assert deep_merge(base, {"train": {"epochs": 1}, "rules": ["bp", "gp"]}) == {
        "train": {"epochs": 1, "seed": 0}, "rules": ["bp", "gp"]}
    assert base == {"train": {"epochs": 5, "seed": 0}, "rules": "gp"}  # not modified
    assert set_key({}, "settings.gp.eta", 0.1) == {"settings": {"gp": {"eta": 0.1}}}
    assert [format_value(v) for v in (1e-05, True, 3, "target")] == ["1e-05", "true", "3", "target"]


def test_set_order_base_then_study_then_experiment_then_sweep_then_seed():
    config = bad_study({"set": {"train": {"epochs": 3, "batch_size": 8}},
                        "sweep": {"bs": {"path": "train.batch_size", "values": [4, 16]}}},
                       seeds=[7], set={"train": {"epochs": 2}, "data": {"size": 100}})
    runs = expand(config, REPO)
    assert folders(runs) == {f"results/bad/e/bs~{b}/rule~{r}/seed~7" for b in (4, 16) for r in ("bp", "gp")}
    for run in runs:
        train = run.config["train"]
        assert train["epochs"] == 3 and train["seed"] == 7 and run.config["data"]["size"] == 100
        assert train["batch_size"] == int(run.experiment.split("~")[1])
        assert run.config["network"] == {"preset": "digits_shallow"}  # from the base file


def test_sweep_path_per_rule():
    runs = expand(workflow_config("noise"), REPO)
    gp = next(r for r in runs if r.label == "gp" and r.experiment.endswith("eta~0.001"))
    vgp = next(r for r in runs if r.label == "vgp" and r.experiment.endswith("eta~0.001"))
    assert gp.config["settings"]["gp"]["eta"] == 1e-3 and vgp.config["settings"]["vgp"]["gamma"] == 1e-3
    config = bad_study({"sweep": {"eta": {"path": {"gp": "settings.gp.eta"}, "values": [0.1]}}})
    with pytest.raises(ConfigError, match=r"sweep\.eta\.path: names no key for rule 'bp'") as err:
        expand(config, REPO)
    assert err.value.key == "studies.bad.experiments.e.sweep.eta.path"


def test_mixing_assigns_rules_per_layer():
    runs = expand(workflow_config("mixing"), REPO)
    split3 = next(r for r in runs if r.experiment == "digits_deep/split~3")
    assert split3.label == "fa+gp" and split3.config["rules"] == ["fa"] * 3 + ["gp"] * 4
    config = bad_study({"run": "configs/digits_shallow_gp.yaml",
                        "mix": {"below": "fa", "above": "gp", "layers": 4, "splits": [0, 5]}})
    config["studies"]["bad"]["experiments"]["e"].pop("rules")
    with pytest.raises(ConfigError, match="split 5 is above the network's 4 layers") as err:
        expand(config, REPO)
    assert err.value.key == "studies.bad.experiments.e.mix.splits"


# ----- errors name the key ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("change", "key", "message"), [
    ({"train": {"epoch": 1}}, "train.epoch", "train: unknown key 'epoch' (did you mean 'epochs'?)"),
    ({"settings": {"gp": {"lr": -1}}}, "settings.gp.lr",
     "settings.gp.lr: -1 is less than or equal to the minimum of 0"),
    ({"data": {"kind": "mnist"}}, "data.kind", "data.kind: 'mnist' is not one of"),
])
def test_each_run_is_checked_against_the_run_schema(change, key, message):
    config = bad_study({"set": change})
    with pytest.raises(ConfigError) as err:
        expand(config, REPO)
    assert err.value.key == key
    assert message in str(err.value) and "studies.bad.experiments.e (rule bp, seed 0)" in str(err.value)
    assert len(expand(config, REPO, validate=False)) == 2  # the workflow leaves it to check_configs


def test_workflow_level_errors_name_the_key(tmp_path):
    config = workflow_config()
    with pytest.raises(ConfigError, match="study 'nope' is not defined under `studies`") as err:
        expand({**config, "study": "nope"}, REPO)
    assert err.value.key == "study"
    with pytest.raises(ConfigError, match="does not exist") as err:
        expand(bad_study({"run": "configs/nowhere_{rule}.yaml"}), REPO)
    assert err.value.key == "studies.bad.experiments.e.run"
    with pytest.raises(ConfigError, match="does not exist. Set imagenet_path to the ImageNet root") as err:
        expand(workflow_config("paper", imagenet_path=str(tmp_path / "nowhere")), REPO)
    assert err.value.key == "imagenet_path"
    (tmp_path / "flat").mkdir()
    with pytest.raises(ConfigError, match="has no train/ or val/ folder"):
        expand(workflow_config("paper", imagenet_path=str(tmp_path / "flat")), REPO)


def test_the_workflow_schema_refuses_study_mistakes():
    from snakemake.exceptions import WorkflowError

    with pytest.raises(WorkflowError, match="'seed' was unexpected"):
        workflow_config(study="bad", studies={"bad": {"seed": [1], "experiments": {"e": {"run": "x.yaml"}}}})
    # rule names come from the registry (plugins add some), so the compiler checks them, not the schema file
    with pytest.raises(ConfigError, match=r"studies\.bad\.experiments\.e\.rules\[0\]: unknown rule 'gpp' \(did you "
                                          r"mean 'gp'\?\)") as info:
        expand(workflow_config(study="bad", studies={"bad": {"experiments": {"e": {"run": "x.yaml",
                                                                                   "rules": ["gpp"]}}}}), REPO)
    assert info.value.key == "studies.bad.experiments.e.rules[0]"


def test_check_runs_finds_what_the_schema_cannot_see(tmp_path):
    """The check_configs step: every run validated completely, every problem listed with its run folder."""
    runs = expand(bad_study({"set": {"record": {"probe_epochs": [9]}}}), REPO)  # schema-valid
    with pytest.raises(ConfigError) as err:
        check_runs({r.folder: r.config for r in runs})
    msg = str(err.value)
    assert msg.startswith("2 of 2 run configs are invalid")
    assert ("results/bad/e/rule~bp/seed~0/config.yaml: record.probe_epochs: epoch(s) [9] come after the last epoch "
            "(train.epochs = 5)") in msg
    assert err.value.key == "record.probe_epochs"
    good = expand(workflow_config("test"), REPO)
    resolved = check_runs({r.folder: r.config for r in good})
    assert resolved[good[0].folder]["data"]["size"] == 200
    path = tmp_path / "config.yaml"
    write_run_config(path, good[0].config)
    assert yaml.safe_load(path.read_text()) == good[0].config


# ----- which figures apply ------------------------------------------------------------------------------------------
def test_figures_for_the_swept_parameters():
    base = ["angle_layers", "angle_steps", "accuracy"]
    assert figures_for([]) == base
    assert figures_for(["message_std"]) == base
    assert figures_for(["eta", "message_std", "seed"]) == [*base, "noise_map"]
    assert figures_for(["split"]) == [*base, "mixing"]
    from analysis.figures import FIGURES

    assert set(FIGURES) == set(figures_for(["message_std", "eta", "split"]))


# ----- torch-free ---------------------------------------------------------------------------------------------------
def test_the_study_compiler_does_not_import_torch():
    code = ("import sys; from pathlib import Path; import sim, sim.study, sim.config.schema\n"
            "from sim.study import expand\n"
            f"cfg = {{'study': 'q', 'studies': {{'q': {{'seeds': [0], 'experiments': {{'e': {{"
            f"'run': 'configs/digits_shallow_{{rule}}.yaml', 'rules': ['bp']}}}}}}}}}}\n"
            f"assert len(expand(cfg, Path({str(REPO)!r}))) == 1\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n"
            "from sim import ConfigError, Network\n"
            "assert 'torch' in sys.modules\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr


# ----- set_by_rule: per-rule overrides ------------------------------------------------------------------------------
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


# ----- registry-driven studies: rules: all, rule_settings, the epochs override (issues 13 and 15) ----------------
def mix_study(mix: dict) -> dict:
    """A workflow config with one rule-mixing experiment on the shallow digits net (4 layers)."""
    exp = {"run": "configs/digits_shallow_bp.yaml", "mix": {"layers": 4, **mix}, "rule_settings": {"lr": 1.0e-3}}
    return workflow_config(study="bad", studies={"bad": {"experiments": {"e": exp}}})


def registered() -> list[str]:
    from sim.rules.registry import specs

    return list(specs())


@pytest.mark.parametrize("spelling", ["all", "*"])
def test_rules_all_is_every_registered_rule_in_registry_order(spelling):
    config = bad_study({"rules": spelling, "run": "configs/digits_shallow_bp.yaml", "rule_settings": {"lr": 2.0e-3}})
    runs = expand(config, REPO)
    assert [r.label for r in runs] == registered()
    for run in runs:
        assert run.config["rules"] == run.label
        assert run.config["settings"][run.label]["lr"] == 2.0e-3  # rule_settings reach every rule's own settings


def test_rules_all_follows_a_rule_registered_later(monkeypatch):
    from sim.rules import registry
    from sim.rules.registry import RuleSpec

    extra = RuleSpec("zz_test", "nowhere:Rule", "a rule that joins the registry later.")
    known = dict(registry.specs())
    monkeypatch.setattr(registry, "specs", lambda: {**known, "zz_test": extra})
    runs = expand(bad_study({"rules": "all", "run": "configs/digits_shallow_bp.yaml"}), REPO, validate=False)
    assert [r.label for r in runs][-1] == "zz_test" and len(runs) == len(known) + 1


def test_rule_settings_come_before_set_by_rule_and_an_unread_one_is_refused():
    config = bad_study({"rules": "all", "run": "configs/digits_shallow_bp.yaml", "rule_settings": {"lr": 2.0e-3},
                        "set_by_rule": {"gp": {"settings": {"gp": {"lr": 5.0e-4}}}}})
    lrs = {r.label: r.config["settings"][r.label]["lr"] for r in expand(config, REPO)}
    assert lrs["gp"] == 5.0e-4 and lrs["bp"] == lrs["kp"] == 2.0e-3
    config = bad_study({"rules": ["bp"], "rule_settings": {"eta": 1.0e-3}})
    with pytest.raises(ConfigError, match="eta"):
        expand(config, REPO)


def test_rules_must_be_a_list_or_all():
    with pytest.raises(Exception, match="rules"):
        bad_study({"rules": "gp"})


def test_zoo_study_runs_every_registered_rule_on_both_nets():
    n = len(registered())
    runs = expand(workflow_config("zoo", study=["zoo", "zoo_cifar10"], cifar10={"kind": "npz", "path": "/d"}), REPO)
    digits = [r for r in runs if r.study == "zoo"]
    cifar = [r for r in runs if r.study == "zoo_cifar10"]
    assert len(digits) == 2 * n and len(cifar) == n  # digits: two seeds
    assert {r.label for r in digits} == {r.label for r in cifar} == set(registered())
    for run in digits:
        assert run.config["network"] == {"preset": "digits_deep"} and run.config["train"]["epochs"] == 5
        assert run.config["settings"][run.label]["lr"] == 1.0e-3
    for run in cifar:
        assert run.config["network"] == {"preset": "cifar10_deep"} and run.config["train"]["dtype"] == "float32"
        assert run.config["train"]["epochs"] == 200 and run.config["data"]["kind"] == "npz"
        if run.label in ("gp", "vgp"):
            assert run.config["settings"][run.label]["arithmetic"] == "difference"
    assert study_figures(workflow_config("zoo")["studies"]["zoo"]) == ["angle_layers", "angle_steps", "accuracy"]


def test_mixing_accepts_any_registered_rule_below_and_above():
    rules = registered()
    pairs = [(b, a) for b in rules for a in rules if b != a][:: max(1, len(rules) - 1)]  # every rule on each side
    assert {b for b, _ in pairs} | {a for _, a in pairs} == set(rules)
    for below, above in pairs:
        runs = expand(mix_study({"below": below, "above": above, "splits": [0, 2]}), REPO)
        assert [r.label for r in runs] == [f"{below}+{above}"] * 2
        assert runs[1].config["rules"] == [below, below, above, above]
        assert runs[1].config["settings"][below]["lr"] == runs[1].config["settings"][above]["lr"] == 1.0e-3


def test_mixing_refuses_an_unregistered_rule():
    config = mix_study({"below": "fa", "above": "gpp", "splits": [1]})
    with pytest.raises(ConfigError, match=r"mix\.above.*did you mean 'gp'"):
        expand(config, REPO)


# the reproduce grid per network: the paper's 4 rules + BP/FA with the regulariser + GP without it + GP float32
# target form + vGP/GP float32 difference form + GP's regulariser alone, from GP trained without it
REPRODUCE = {"": 4, "_ortho": 2, "_noortho": 1, "_f32target": 1, "_f32diff": 2, "_regalone": 1}


@pytest.mark.parametrize(("study", "nets"), [("reproduce", ("cifar10_shallow", "cifar10_deep")),
                                              ("reproduce_digits", ("digits_shallow", "digits_deep"))])
def test_reproduce_study_is_the_paper_grid_and_its_controls(study, nets):
    runs = expand(workflow_config("reproduce", study=study, cifar10={"kind": "npz", "path": "/d"}), REPO)
    assert len(runs) == 2 * sum(REPRODUCE.values()) == 22
    assert {r.experiment for r in runs} == {f"{net}{suffix}" for net in nets for suffix in REPRODUCE}
    by = {(r.experiment, r.label): r.config for r in runs}
    for net in nets:
        for rule in ("bp", "fa", "vgp", "gp"):  # the paper's arithmetic: float64, GP/vGP in the target form
            cfg = by[(net, rule)]
            assert cfg["train"]["dtype"] == "float64"
            assert cfg["network"]["preset"] == net
            if rule in ("vgp", "gp"):
                assert cfg["settings"][rule]["arithmetic"] == "target"
        for rule in ("bp", "fa"):
            assert by[(f"{net}_ortho", rule)]["settings"][rule]["ortho_lambda"] == 100
            assert by[(net, rule)]["settings"][rule].get("ortho_lambda", 0) == 0
        assert by[(f"{net}_noortho", "gp")]["settings"]["gp"]["ortho_lambda"] == 0
        target = by[(f"{net}_f32target", "gp")]
        assert target["train"]["dtype"] == "float32" and target["settings"]["gp"]["arithmetic"] == "target"
        for rule in ("vgp", "gp"):
            diff = by[(f"{net}_f32diff", rule)]
            assert diff["train"]["dtype"] == "float32" and diff["settings"][rule]["arithmetic"] == "difference"
        alone = by[(f"{net}_regalone", "gp")]
        assert alone["train"]["task_updates"] is False and alone["settings"]["gp"].get("ortho_lambda", 100) == 100
        assert alone["train"]["init_from"] == f"results/{study}/{net}_noortho/rule~gp/seed~0/run.zarr"
        assert alone["train"]["dtype"] == "float64" and alone["settings"]["gp"]["arithmetic"] == "target"
    if study == "reproduce":
        assert all(c["train"]["epochs"] == 200 and c["data"]["kind"] == "npz" for c in by.values())


def test_epochs_override_shortens_every_run_and_drops_later_probes():
    runs = expand(workflow_config("reproduce", epochs=10), REPO)
    for run in runs:
        assert run.config["train"]["epochs"] == 10
        assert run.config["record"]["probe_epochs"] == [0, 1, 10]  # 50, 100, 200 dropped, the last epoch probed
    runs = expand(workflow_config("reproduce", study="reproduce_digits", epochs=1), REPO)
    assert all(r.config["train"]["epochs"] == 1 and r.config["record"]["probe_epochs"] == [0, 1] for r in runs)
    assert expand(workflow_config(), REPO)[0].config["train"]["epochs"] == 5  # null: the run config's own
    with pytest.raises(Exception, match="epochs"):
        workflow_config(epochs=0)


@pytest.mark.parametrize(("name", "study"), [("zoo", "zoo"), ("zoo", "zoo_cifar10"), ("reproduce", "reproduce"),
                                             ("reproduce", "reproduce_digits")])
def test_zoo_and_reproduce_runs_pass_the_complete_check(name, study):
    """Beyond the schema: every rule fits the network it is put on (check_runs, as the study's first job)."""
    runs = expand(workflow_config(name, study=study, cifar10={"kind": "npz", "path": "/d"}), REPO)
    assert len(check_runs({r.folder: r.config for r in runs})) == len(runs)


def init_study(experiments: dict) -> dict:
    """A workflow config with the one study 'init' of these experiments on the shallow digits net."""
    base = {"run": "configs/digits_shallow_{rule}.yaml", "rules": ["gp"]}
    return workflow_config(study="init", studies={"init": {"seeds": [0, 1], "experiments": {
        name: {**base, **exp} for name, exp in experiments.items()}}})


def test_init_from_starts_each_run_from_its_twin_in_the_other_experiment():
    runs = expand(init_study({"a": {"sweep": {"lr": {"path": "settings.gp.lr", "values": [1e-3, 2e-3]}}},
                              "b": {"init_from": "a", "set": {"train": {"task_updates": False}},
                                    "sweep": {"lr": {"path": "settings.gp.lr", "values": [1e-3, 2e-3]}}}}), REPO)
    stores = {r.store for r in runs}
    starts = {r.folder: r.config["train"].get("init_from") for r in runs}
    assert starts["results/init/b/lr~0.002/rule~gp/seed~1"] == "results/init/a/lr~0.002/rule~gp/seed~1/run.zarr"
    assert all(s in stores for f, s in starts.items() if f.startswith("results/init/b/"))
    assert all(s is None for f, s in starts.items() if f.startswith("results/init/a/"))


@pytest.mark.parametrize(("experiments", "message"), [
    ({"a": {}, "b": {"init_from": "aa"}}, r"b\.init_from: 'aa' is not an experiment of study 'init'.*did you mean 'a'"),
    ({"a": {"init_from": "b"}, "b": {"init_from": "a"}}, r"a\.init_from: starting from a -> b -> a goes round"),
    ({"a": {"init_from": "a"}}, r"a\.init_from: starting from a -> a goes round"),
    ({"a": {}, "b": {"init_from": "a", "rules": ["gp", "bp"]}},
     r"b\.init_from: 2 run\(s\) have no run to start from, e.g. results/init/b/rule~bp/seed~0 needs "
     r"results/init/a/rule~bp/seed~0/run\.zarr"),
])
def test_init_from_without_a_source_is_refused(experiments, message):
    with pytest.raises(ConfigError, match=message):
        expand(init_study(experiments), REPO)
