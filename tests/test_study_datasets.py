"""The workflow-wide data settings of a study's datasets (sim.study.apply_dataset): `imagenet_sample` as `cifar10`,
and a run whose data.path is still unset stopped by check_runs (the study's first job) with the key to set."""

from __future__ import annotations

import pytest

from sim.errors import ConfigError
from sim.study import check_runs, expand
from tests.studies import REPO, workflow_config


def test_the_imagenet_sample_study_reads_its_path_from_the_workflow_setting():
    runs = expand(workflow_config("reproduce", study="reproduce_imagenet_sample",
                                  imagenet_sample={"path": "data/imagenet_sample/tiny200_64"}), REPO)
    assert sorted(r.config["rules"] for r in runs) == ["bp", "fa", "gp"]
    for run in runs:
        data, net = run.config["data"], run.config["network"]
        assert data == {"kind": "npz", "path": "data/imagenet_sample/tiny200_64", "image_size": 96,
                        "normalize": "imagenet"}
        assert (net["preset"], net["image_size"], net["classes"]) == ("imagenet_conv", 96, 200)
        assert run.config["train"]["dtype"] == "float32" and run.config["train"]["batch_size"] == 64
    gp = next(r for r in runs if r.config["rules"] == "gp")
    assert gp.config["settings"]["gp"]["arithmetic"] == "difference"
    assert len(check_runs({r.folder: r.config for r in runs})) == 3  # GP's square output fits 200 classes at 96 px


def test_a_data_section_with_kind_replaces_the_runs_data():
    runs = expand(workflow_config("reproduce", study="reproduce_imagenet_sample",
                                  imagenet_sample={"kind": "npz", "path": "elsewhere"}), REPO)
    assert all(r.config["data"]["path"] == "elsewhere" for r in runs)


def test_an_unset_data_path_is_refused_before_any_job_naming_the_setting():
    runs = expand(workflow_config("reproduce", study="reproduce_imagenet_sample"), REPO)
    with pytest.raises(ConfigError, match=r"3 of 3 run configs are invalid") as info:
        check_runs({r.folder: r.config for r in runs})
    assert "data.path is not set" in str(info.value) and "imagenet_sample={path:" in str(info.value)
