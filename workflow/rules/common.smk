# Input functions of the rules (docs/workflow.md). The studies are expanded into runs by sim.study.expand, plain
# Python that tests/test_study.py tests without Snakemake; nothing here imports torch, so the DAG is built in a
# second. Each run is validated completely once per workflow, in its study's check_configs job
# (sim.study.check_runs); here only against the run schema, and only in the main process (a dry run reports a
# misspelled key at once; the jobs, which re-read this file, do not repeat it).

import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

REPO = Path(workflow.basedir)
sys.path.insert(0, str(REPO))  # this repo's sim/ (torch-free parts only)
from sim.errors import ConfigError
from sim.study import EXPERIMENT, RUN, RUN_LOGS, expand, experiment_pattern, selected_studies, several_gpus
from sim.study import study_figures
from sim.study import write_run_config as write_config

try:
    STUDIES = selected_studies(config)
    RUNS = {(r.study, r.experiment, r.label, r.seed): r for r in expand(config, REPO, validate=workflow.is_main_process)}
    # experiments whose runs train on several GPUs: the run_parallel jobs make their stores, the run jobs the others'
    SEVERAL_GPUS = several_gpus(RUNS.values())
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None

# the several-GPU jobs run `python -m sim ...` from a shell, so this repository's sim/ must be importable there too
# (a prefix is formatted as the commands are: its braces doubled)
shell.prefix("export PYTHONPATH=" + shlex.quote(str(REPO)).replace("{", "{{").replace("}", "}}")
             + "${{PYTHONPATH:+:$PYTHONPATH}}; ")


def get_run(wildcards):
    key = (wildcards.study, wildcards.experiment, wildcards.rule, int(wildcards.seed))
    if key not in RUNS:
        raise WorkflowError(f"no run {RUN.format(**wildcards)} in the selected studies ({', '.join(STUDIES)})")
    return RUNS[key]


def run_config(wildcards) -> dict:
    return get_run(wildcards).config


def run_init_from(wildcards) -> list[str]:
    """The store a run starts from (train.init_from, e.g. set by its experiment's init_from): an input, so the
    workflow trains it first and retrains this run when it changes."""
    source = (get_run(wildcards).config.get("train") or {}).get("init_from")
    return [source] if source else []


def write_run_config(path: str, run: dict, log: str) -> None:
    """Rule run_config (in-process, no torch): the run's resolved config as an ordinary run config file."""
    write_config(path, run)
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    Path(log).write_text(f"wrote {path}\n", encoding="utf-8")


def study_run_configs(wildcards) -> dict[str, dict]:
    """Every run config of a study, by run folder."""
    return {r.folder: r.config for r in sorted(RUNS.values(), key=lambda r: r.folder) if r.study == wildcards.study}


def study_stores(wildcards) -> list[str]:
    return sorted(r.store for r in RUNS.values() if r.study == wildcards.study)


def gpu_request() -> int:
    """GPUs a training job asks Snakemake for: 1 unless the study runs on the CPU (`--resources gpu=N` caps the
    number of GPU jobs; which GPU each takes is its own lease, sim.gpu)."""
    return 0 if config["device"] == "cpu" else 1


def run_gpus(wildcards) -> int:
    """GPUs (and processes) of a several-GPU run, its experiment's `gpus`."""
    return get_run(wildcards).gpus


# The several-GPU job's runtime settings reach its shell command as string resources: like the one-GPU job's config,
# and unlike params, a change of them never reruns a finished run.
def run_on_diverge(wildcards) -> str:
    """The study's on_diverge."""
    return config["studies"][wildcards.study]["on_diverge"]


def lease_options() -> str:
    """The lease's options: its timeout; device cuda insists on GPUs, auto trains on the CPU where there are none."""
    return f"--timeout {config['gpu_lease_timeout']}" + (" --require-gpu" if config["device"] == "cuda" else "")


def final_targets() -> list[str]:
    targets = []
    for study in STUDIES:
        targets += [r.store for r in RUNS.values() if r.study == study]
        targets += [f"results/{study}/figures/{name}.png" for name in study_figures(config["studies"][study])]
        targets += [f"results/{study}/table.md", f"results/{study}/table.csv"]
    return targets
