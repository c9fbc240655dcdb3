"""Several GPUs per run in a study (sim.study, docs/workflow.md "Several GPUs"): an experiment's ``gpus``, what it
becomes with each device, the refusals, and the ``{experiment}`` patterns that give each store to exactly one of
the rules ``run`` and ``run_parallel``. The dry runs that show the torchrun command are in
tests/workflow/test_several_gpus.py."""

from __future__ import annotations

import re

import pytest
from snakemake.exceptions import WorkflowError

from sim.errors import ConfigError
from sim.study import RUN, expand, experiment_pattern, several_gpus
from tests.studies import REPO, bad_study, workflow_config


def imagenet_root(tmp_path):
    for split in ("train", "val"):
        (tmp_path / "imagenet" / split / "n01440764").mkdir(parents=True)
    return str(tmp_path / "imagenet")


def test_the_paper_trains_its_imagenet_runs_on_eight_gpus(tmp_path):
    config = workflow_config("paper", imagenet_path=imagenet_root(tmp_path), cifar10={"path": "/data/cifar10"})
    runs = expand(config, REPO)
    gpus = {r.folder: r.gpus for r in runs}
    assert gpus["results/paper/imagenet_conv/rule~gp/seed~0"] == 8
    assert {n for f, n in gpus.items() if "imagenet" not in f} == {1}
    assert several_gpus(runs) == ["imagenet_conv"]


def test_gpus_on_the_cpu_train_in_one_process_with_a_note(tmp_path):
    notes = []
    config = workflow_config("paper", imagenet_path=imagenet_root(tmp_path), device="cpu")
    runs = expand(config, REPO, note=notes.append)
    assert {r.gpus for r in runs} == {1} and several_gpus(runs) == []
    assert any("imagenet_conv.gpus: 8 applies with device cuda or auto" in n for n in notes)


def test_more_gpus_than_samples_per_batch_are_refused():
    config = bad_study({"gpus": 64, "set": {"train": {"batch_size": 32}}})
    config["device"] = "cuda"
    with pytest.raises(ConfigError, match="64 GPUs for batches of 32 samples") as err:
        expand(config, REPO)
    assert err.value.key == "studies.bad.experiments.e.gpus"
    config["studies"]["bad"]["experiments"]["e"]["set"] = {}  # the run configs' own batch size (32 in digits)
    with pytest.raises(ConfigError, match="64 GPUs for batches of 32"):
        expand(config, REPO)


def test_gpus_must_be_a_positive_integer():
    with pytest.raises(WorkflowError, match="0 is less than the minimum of 1"):
        bad_study({"gpus": 0})


def test_one_experiment_name_with_one_and_several_gpus_is_refused():
    config = workflow_config(study=["a", "b"], device="cuda", studies={
        name: {"experiments": {"e": {"run": "configs/digits_shallow_{rule}.yaml", "rules": ["bp"], "gpus": gpus}}}
        for name, gpus in (("a", 2), ("b", 1))})
    with pytest.raises(ConfigError, match="the experiment 'e' of study 'a' trains on 2 GPU") as err:
        several_gpus(expand(config, REPO))
    assert err.value.key == "studies.b.experiments.e.gpus"


def path_regex(pattern: str) -> re.Pattern:
    """The store path pattern of a rule whose {experiment} wildcard has ``pattern`` (as Snakemake builds it)."""
    parts = {"study": r"[A-Za-z0-9][A-Za-z0-9_.-]*", "experiment": pattern, "rule": r"[a-z0-9]+(\+[a-z0-9]+)?",
             "seed": r"[0-9]+"}
    regex = re.escape(RUN + "/run.zarr")
    for name, part in parts.items():
        regex = regex.replace(re.escape("{" + name + "}"), f"(?P<{name}>{part})")
    return re.compile(regex + "$")


@pytest.mark.parametrize("names", [[], ["imagenet_conv"], ["e", "e.2"]])
def test_every_store_belongs_to_exactly_one_run_rule(names):
    one = path_regex(experiment_pattern(names, several=False))
    several = path_regex(experiment_pattern(names, several=True))
    for name, sweep in [("imagenet_conv", ""), ("imagenet_conv", "/eta~1e-07"), ("imagenet", ""), ("e", ""),
                        ("e.2", ""), ("e.3", ""), ("e", "/message_std~0.0/eta~0.1"), ("imagenet_conv2", "")]:
        store = f"results/s/{name}{sweep}/rule~gp/seed~0/run.zarr"
        parallel = name in names
        assert bool(several.match(store)) == parallel, (store, names)
        assert bool(one.match(store)) != parallel, (store, names)
        assert (several if parallel else one).match(store).group("experiment") == name + sweep
