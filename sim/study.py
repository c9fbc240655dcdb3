"""The study compiler: a workflow config (``config/*.yaml``) in, the list of its training runs out (docs/workflow.md).

One entry point, :func:`expand`, does everything the workflow decides before any job runs, so it is tested as plain
Python (tests/test_study.py) instead of through a Snakemake launch; ``workflow/rules/common.smk`` only calls it. For
every selected study, every run is

    base run config of the experiment (its file, ``{rule}`` filled in, or its inline mapping)
      <- the dataset's workflow-wide settings (``imagenet_path``, ``cifar10``, ``imagenet_sample``)
      <- the study's ``set``  <- the study's ``set_by_rule[rule]``
      <- the experiment's ``set``  <- the experiment's ``set_by_rule[rule]``
      <- the sweep point's values  <- the rules  <- the workflow-wide ``epochs`` (when set)  <- the seed
      <- the experiment's ``init_from``: ``train.init_from``, the store of that experiment's run of the same rule,
         seed and sweep point (:func:`check_init_from`; the workflow trains it first)

merged key by key (:func:`deep_merge`: mappings merge, everything else replaces; an experiment's ``rule_settings``
go under ``settings.<rule>`` of every rule a run uses, after its ``set``), over the product
experiments x sweep points (x mixing splits) x rules x seeds, named
``results/<study>/<experiment>[/<param>~<value>...]/rule~<rule>/seed~<seed>``. An experiment's ``rules: all`` is every
registered rule in the registry's order (:func:`experiment_rules`), so a rule added to the registry joins a study
without an edit; the workflow-wide ``epochs`` (:func:`with_epochs`) shortens every run of a study.
:func:`study_figures` decides, once, which figures apply to a study; :mod:`analysis.figures` asks
:func:`figures_for` the same question of a loaded study.

Validation, once per workflow: :func:`expand` checks each resolved run against the one run schema
(:func:`sim.config.schema.check_schema`) when asked (``validate=True``, the default: tests, scripts); the workflow
expands without it (every Snakemake job re-reads the Snakefile) and validates every run once, completely (schema,
then the checks a schema cannot see), in the study's ``check_configs`` job (:func:`check_runs`), before any training
job starts. Errors are :class:`~sim.errors.ConfigError` naming the key path in the message and in ``key``.

Imports neither torch nor the simulator's numerics: the DAG is built in a fraction of a second.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sim.config.overrides import deep_merge, set_key
from sim.config.schema import check_schema, load_schema, read_yaml
from sim.errors import ConfigError

RUN = "results/{study}/{experiment}/rule~{rule}/seed~{seed}"
RUN_LOGS = "logs/{study}/{experiment}/rule~{rule}/seed~{seed}"
#: the ``{experiment}`` wildcard: an experiment's name, then its sweep point's ``key~value`` folders
EXPERIMENT_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
SWEEP_FOLDERS = r"(/[A-Za-z0-9_.-]+~[A-Za-z0-9._+-]+)*"
EXPERIMENT = EXPERIMENT_NAME + SWEEP_FOLDERS

#: the figures every study has, and the sweep figures with the sweep parameters each needs (``split``: rule mixing)
FIGURES: tuple[str, ...] = ("angle_layers", "angle_steps", "accuracy")
SWEEP_FIGURES: dict[str, tuple[str, ...]] = {"noise_map": ("message_std", "eta"), "mixing": ("split",)}


@dataclass(frozen=True)
class Run:
    """One training run of a study: where it goes and its resolved run config."""

    study: str
    experiment: str
    """The experiment's name and its sweep point, e.g. ``digits_deep/message_std~0.0001/eta~1e-07``."""
    label: str
    """The ``{rule}`` wildcard: a rule name, or ``<below>+<above>`` for a mixture of two."""
    seed: int
    config: dict
    """The resolved run config (a plain dict, as a run config file holds it)."""
    gpus: int = 1
    """GPUs the run trains on, one process each (the experiment's ``gpus``; 1 with ``device: cpu``)."""

    @property
    def folder(self) -> str:
        return RUN.format(study=self.study, experiment=self.experiment, rule=self.label, seed=self.seed)

    @property
    def store(self) -> str:
        return f"{self.folder}/run.zarr"


# ----- merging (sim.config.overrides: the one place for dotted keys, also behind ``run --set``) ----------------
def rule_names() -> list[str]:
    """The registered rule names, as the run schema enumerates them (torch-free)."""
    return list(load_schema()["$defs"]["rule_name"]["enum"])


def check_set_by_rule(section: dict, where: str, labels: Iterable[str] | None = None) -> None:
    """Check the keys of a ``set_by_rule`` section (at ``where``): each a registered rule name or a mixture label
    ``<below>+<above>`` of two; with ``labels`` (an experiment's rules or mixture label), one of those."""
    known = rule_names()
    labels = None if labels is None else list(labels)
    for key in section:
        at = f"{where}.set_by_rule.{key}"
        parts = str(key).split("+")
        if len(parts) > 2 or any(p not in known for p in parts):
            hint = _suggest(key, known)
            raise ConfigError.at(at, f"{key!r} is not a rule name (rules: {', '.join(known)}; a mixture: "
                                     f"<below>+<above>){hint}")
        if labels is not None and key not in labels:
            raise ConfigError.at(at, f"this experiment has no runs of rule {key!r} (its rules: {', '.join(labels)}); "
                                     "remove the entry or add the rule")


def rule_set(section: dict, label: str) -> dict:
    """The part of a run config that ``section`` (a study or an experiment) sets for runs of rule ``label``: its
    ``set_by_rule`` entry for that rule (or mixture label), else nothing."""
    return (section.get("set_by_rule") or {}).get(label) or {}


def _suggest(word: str, choices: list[str]) -> str:
    match = difflib.get_close_matches(str(word), choices, n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def format_value(value: Any) -> str:
    """A sweep value as it appears in a path (floats round-trip: ``repr(1e-05) == '1e-05'``)."""
    return repr(value) if isinstance(value, float) else str(value).lower() if isinstance(value, bool) else str(value)


# ----- the pieces of a run ------------------------------------------------------------------------------------------
def selected_studies(config: dict) -> list[str]:
    """The studies named by ``study`` (one name or a list), each checked to be defined under ``studies``."""
    names = config["study"] if isinstance(config["study"], list) else [config["study"]]
    unknown = [n for n in names if n not in config["studies"]]
    if unknown:
        defined = ", ".join(sorted(config["studies"]))
        raise ConfigError.at("study", f"study {unknown[0]!r} is not defined under `studies` (defined: {defined}); "
                                      "pass its config file with --configfile")
    return names


def load_base(spec: str | dict, rule: str, where: str, repo: Path) -> dict:
    """The experiment's base run config for ``rule``: its file (``{rule}`` filled in, relative to ``repo``) or its
    inline mapping."""
    if isinstance(spec, dict):
        return copy.deepcopy(spec)
    path = Path(spec.replace("{rule}", rule))
    doc = read_yaml(path if path.is_absolute() else repo / path, key=f"{where}.run")
    if not isinstance(doc, dict):
        raise ConfigError.at(f"{where}.run", f"{path} is not a mapping of run config keys")
    return doc


def imagenet_root(config: dict) -> str | None:
    """The ImageNet root (``imagenet_path``), checked; None while it is not set."""
    path = config.get("imagenet_path")
    if path is None:
        return None
    root = Path(path)
    missing = [sub for sub in ("train", "val") if not (root / sub).is_dir()]
    if not root.is_dir() or missing:
        what = "does not exist" if not root.is_dir() else f"has no {' or '.join(f'{s}/' for s in missing)} folder"
        raise ConfigError.at(
            "imagenet_path", f"{str(root)!r} {what}. Set imagenet_path to the ImageNet root, the folder that holds "
            "train/ and val/ with one <wnid>/ folder of *.JPEG per class, e.g. "
            "`--config imagenet_path=/data/imagenet`, or leave it null (unset) to leave the ImageNet experiments out.")
    return str(root)


#: datasets whose workflow-wide data section is the workflow config key of the same name
DATA_SECTIONS = ("cifar10", "imagenet_sample")


def apply_dataset(doc: dict, dataset: str | None, config: dict) -> dict:
    """``doc`` with the workflow-wide data settings of its dataset (``imagenet_path``, or the data section
    ``cifar10`` / ``imagenet_sample``: with ``kind`` it replaces the run's data section, without it is merged in)."""
    if dataset == "imagenet":
        return deep_merge(doc, {"data": {"path": imagenet_root(config)}})
    if dataset in DATA_SECTIONS:
        section = config.get(dataset) or {}
        if "kind" in section:  # another source (e.g. the npz copy): its own complete data section
            return {**doc, "data": copy.deepcopy(section)}
        return deep_merge(doc, {"data": section})
    return doc


def sweep_points(exp: dict) -> list[tuple[list[str], dict[str, Any]]]:
    """``([key~value folders], {parameter: value})`` for every sweep point of an experiment (one, without a sweep);
    a rule mixture sweeps ``split``, the number of layers below the split."""
    axes = [[(name, v) for v in p["values"]] for name, p in (exp.get("sweep") or {}).items()]
    if exp.get("mix"):
        axes.append([("split", s) for s in exp["mix"]["splits"]])
    return [([f"{name}~{format_value(v)}" for name, v in combo], dict(combo)) for combo in itertools.product(*axes)]


def _rules(exp: dict, label: str, split: int | None, where: str) -> str | list[str]:
    mix = exp.get("mix")
    if not mix:
        return label
    if split > mix["layers"]:
        raise ConfigError.at(f"{where}.mix.splits", f"split {split} is above the network's {mix['layers']} layers")
    return [mix["below"]] * split + [mix["above"]] * (mix["layers"] - split)


def _check_rule_names(exp: dict, where: str) -> None:
    """Every rule an experiment names is registered (:func:`sim.rules.registry.specs`: the built-in rules and the
    ``gaitsim.rules`` plugins; torch-free). The workflow schema's file cannot list them: plugins add names."""
    from sim.config.schema import _suggest
    from sim.rules.registry import specs

    mix = exp.get("mix") or {}
    named = []
    if not isinstance(exp.get("rules"), str):
        named = [(f"{where}.rules[{i}]", r) for i, r in enumerate(exp.get("rules") or [])]
    named += [(f"{where}.mix.{k}", mix[k]) for k in ("below", "above") if k in mix]
    for key, rule in named:
        if rule not in specs():
            raise ConfigError.at(key, f"unknown rule {rule!r}{_suggest(rule, specs())}; registered rules: "
                                      f"{', '.join(sorted(specs()))}")


#: the values of an experiment's ``rules`` that mean every registered rule
ALL_RULES = ("all", "*")


def experiment_rules(exp: dict, where: str) -> list[str]:
    """The rules an experiment trains with: its list, or with ``rules: all`` (or ``"*"``) every registered rule in
    the registry's order (:func:`sim.rules.registry.specs`: the built-in catalogue, then the plugins; torch-free), so
    a rule registered later joins the study without an edit."""
    from sim.rules.registry import specs

    rules = exp["rules"]
    if isinstance(rules, str):
        if rules not in ALL_RULES:
            raise ConfigError.at(f"{where}.rules", f"{rules!r} is not a list of rules; give a list, or `all` for "
                                                   "every registered rule")
        return list(specs())
    return list(rules)


def with_rule_settings(doc: dict, settings: dict | None, rules: Iterable[str]) -> dict:
    """``doc`` with ``settings`` (an experiment's ``rule_settings``, e.g. ``{lr: 1.0e-3}``) merged under
    ``settings.<rule>`` of each of ``rules``: one learning rate for every rule of a registry-driven experiment."""
    if not settings:
        return doc
    return deep_merge(doc, {"settings": {rule: copy.deepcopy(settings) for rule in dict.fromkeys(rules)}})


def with_epochs(doc: dict, epochs: int | None) -> dict:
    """``doc`` trained for ``epochs`` (the workflow-wide override; None: its own ``train.epochs``). Probe epochs after
    the new last epoch are dropped (the last epoch is probed instead), so a 200-epoch config runs shorter as is."""
    if epochs is None:
        return doc
    doc = set_key(doc, "train.epochs", epochs)
    probes = (doc.get("record") or {}).get("probe_epochs")
    if probes is not None:
        kept = sorted({e for e in probes if e <= epochs} | ({epochs} if any(e > epochs for e in probes) else set()))
        doc = set_key(doc, "record.probe_epochs", kept)
    return doc


def _sweep_path(exp: dict, param: str, label: str, where: str) -> str:
    path = exp["sweep"][param]["path"]
    if isinstance(path, dict):
        if label not in path:
            raise ConfigError.at(f"{where}.sweep.{param}.path", f"names no key for rule {label!r}")
        path = path[label]
    return path


# ----- several GPUs per run -----------------------------------------------------------------------------------------
def experiment_gpus(exp: dict, where: str, device: str, note: Callable[[str], None]) -> int:
    """The processes (GPUs) each run of an experiment trains on: its ``gpus`` on ``device`` cuda or auto; 1 on the
    CPU, with a note (a data-parallel run on CPU processes gains nothing over one process with their threads)."""
    gpus = exp.get("gpus", 1)
    if gpus > 1 and device == "cpu":
        note(f"note: {where}.gpus: {gpus} applies with device cuda or auto; with device cpu its runs train in one "
             "process")
        return 1
    return gpus


def check_gpus(doc: dict, gpus: int, where: str) -> None:
    """Refuse more GPUs than samples per batch (each process needs its part of every batch): said now, not when
    the job starts on the cluster."""
    if gpus == 1:
        return
    batch = (doc.get("train") or {}).get("batch_size",
                                         load_schema()["properties"]["train"]["properties"]["batch_size"]["default"])
    if isinstance(batch, int) and batch < gpus:
        raise ConfigError.at(f"{where}.gpus", f"{gpus} GPUs for batches of {batch} samples (train.batch_size): each "
                                              "GPU's process needs a part of every batch; give at most "
                                              f"{batch} GPUs or a larger batch")


def several_gpus(runs: Iterable[Run]) -> list[str]:
    """The names of the experiments whose runs train on several GPUs, each the job of the workflow's rule
    ``run_parallel`` (the others': ``run``). The rules are told apart by the experiment's name, so one name must
    ask for the same GPUs in every selected study."""
    gpus: dict[str, tuple[int, str]] = {}
    for run in runs:
        name = run.experiment.split("/", 1)[0]
        seen = gpus.setdefault(name, (run.gpus, run.study))
        if (seen[0] > 1) != (run.gpus > 1):
            raise ConfigError.at(f"studies.{run.study}.experiments.{name}.gpus",
                                 f"{run.gpus}, but the experiment {name!r} of study {seen[1]!r} trains on {seen[0]} "
                                 "GPU(s): the workflow tells one-GPU from several-GPU runs by the experiment's name, "
                                 "so give experiments of one name the same gpus, or rename one")
    return sorted(name for name, (n, _) in gpus.items() if n > 1)


def experiment_pattern(names: Iterable[str], *, several: bool) -> str:
    """The ``{experiment}`` wildcard's pattern of the rule ``run_parallel`` (``several``: the experiments ``names``,
    any sweep point) or of ``run`` (every other experiment), so that exactly one rule makes each store."""
    names = sorted(names)
    if not names:
        return EXPERIMENT if not several else r"(?!)"  # no several-GPU runs: run_parallel matches nothing
    alternatives = "(?:" + "|".join(re.escape(n) for n in names) + ")"
    return alternatives + SWEEP_FOLDERS if several else f"(?!{alternatives}(?:/|$)){EXPERIMENT}"


# ----- the entry point ----------------------------------------------------------------------------------------------
def expand_study(config: dict, study: str, repo: Path, *, validate: bool = True,
                 note: Callable[[str], None] | None = None) -> list[Run]:
    """Every run of ``study`` (see :func:`expand`)."""
    note = note or (lambda message: print(message, file=sys.stderr))
    spec = config["studies"][study]
    check_set_by_rule(spec.get("set_by_rule") or {}, f"studies.{study}")
    runs = []
    for name, exp in spec["experiments"].items():
        where = f"studies.{study}.experiments.{name}"
        if exp.get("dataset") == "imagenet" and imagenet_root(config) is None:
            note(f"note: {where} is left out: it needs ImageNet and `imagenet_path` is not set (e.g. "
                 "`--config imagenet_path=/data/imagenet`, the folder with train/ and val/)")
            continue
        mix = exp.get("mix")
        _check_rule_names(exp, where)
        gpus = experiment_gpus(exp, where, config.get("device", "cpu"), note)
        labels = [f"{mix['below']}+{mix['above']}"] if mix else experiment_rules(exp, where)
        check_set_by_rule(exp.get("set_by_rule") or {}, where, labels)
        for folders, values in sweep_points(exp):
            experiment = "/".join([name, *folders])
            for label in labels:
                doc = apply_dataset(load_base(exp["run"], mix["above"] if mix else label, where, repo),
                                    exp.get("dataset"), config)
                for section in (spec, exp):  # study, then experiment: each its `set`, then its rule's entry
                    doc = deep_merge(doc, section.get("set") or {})
                    if section is exp:
                        doc = with_rule_settings(doc, exp.get("rule_settings"),
                                                 [mix["below"], mix["above"]] if mix else [label])
                    doc = deep_merge(doc, rule_set(section, label))
                for param, value in values.items():
                    if param != "split":
                        doc = set_key(doc, _sweep_path(exp, param, label, where), value)
                doc["rules"] = _rules(exp, label, values.get("split"), where)
                doc = with_epochs(doc, config.get("epochs"))
                for seed in spec.get("seeds", [0]):
                    run_doc = set_key(doc, "train.seed", seed)
                    if exp.get("init_from"):
                        source = "/".join([exp["init_from"], *folders])
                        run_doc = set_key(run_doc, "train.init_from", Run(study, source, label, seed, {}).store)
                    run_doc["name"] = f"{study}/{experiment}/rule~{label}/seed~{seed}"
                    if validate:
                        point = f" at sweep point {'/'.join(folders)}" if folders else ""
                        check_schema(run_doc, f"{where}{point} (rule {label}, seed {seed})")
                    check_gpus(run_doc, gpus, where)
                    runs.append(Run(study, experiment, label, seed, run_doc, gpus))
    if not runs:
        raise ConfigError.at(f"studies.{study}", "has no runs left (see the notes above)")
    check_init_from(spec, study, runs)
    return runs


def check_init_from(spec: dict, study: str, runs: list[Run]) -> None:
    """Refuse an experiment's ``init_from`` that names no other experiment of the study, that leads back to itself
    (a cycle no workflow can order), or whose runs lack a source: the run of the same rule, seed and sweep point."""
    experiments = spec["experiments"]
    for name, exp in experiments.items():
        where = f"studies.{study}.experiments.{name}.init_from"
        source, seen = exp.get("init_from"), [name]
        while source:
            if source not in experiments:
                raise ConfigError.at(where, f"{source!r} is not an experiment of study {study!r} (its experiments: "
                                            f"{', '.join(experiments)}){_suggest(source, list(experiments))}")
            if source in seen:
                raise ConfigError.at(where, f"starting from {' -> '.join([*seen, source])} goes round in a circle; "
                                            "an experiment must start from one that trains from scratch")
            seen.append(source)
            source = experiments[source].get("init_from")
    stores = {r.store for r in runs}
    missing = [(r, r.config["train"]["init_from"]) for r in runs
               if experiments[r.experiment.split("/")[0]].get("init_from")
               and r.config["train"]["init_from"] not in stores]
    if missing:
        run, store = missing[0]
        raise ConfigError.at(f"studies.{study}.experiments.{run.experiment.split('/')[0]}.init_from",
                             f"{len(missing)} run(s) have no run to start from, e.g. {run.folder} needs {store}: "
                             "the experiment it starts from must train the same rules, seeds and sweep points")


def expand(config: dict, repo: Path, *, validate: bool = True, note: Callable[[str], None] | None = None
           ) -> list[Run]:
    """Every run of the selected studies (``config['study']``), run configs resolved (see the module docstring).

    Args:
        config: the workflow config, validated by ``workflow/schemas/config.schema.yaml`` (defaults filled in).
        repo: the folder that relative run config paths (``configs/...``) start from.
        validate: check every resolved run against the run schema (the workflow leaves this to check_configs).
        note: called with each note (an experiment left out); default: print to stderr.

    Raises:
        ConfigError: naming the key path (message and ``key``): of the workflow config (e.g.
            ``studies.s.experiments.e.mix.splits``), or, for a run that fails the run schema, of the run config
            (e.g. ``train.epoch``) with the run named in the message.
    """
    return [run for study in selected_studies(config)
            for run in expand_study(config, study, repo, validate=validate, note=note)]


# ----- which figures apply ------------------------------------------------------------------------------------------
def figures_for(swept: Iterable[str]) -> list[str]:
    """The figures that apply to runs that sweep the parameters ``swept``: :data:`FIGURES` always, each of
    :data:`SWEEP_FIGURES` when every parameter it needs is swept."""
    swept = set(swept)
    return [*FIGURES, *(name for name, needs in SWEEP_FIGURES.items() if swept.issuperset(needs))]


def study_figures(study: dict) -> list[str]:
    """The figures that apply to a study (one entry of ``studies``): those of any of its experiments."""
    names = {name for exp in study["experiments"].values()
             for name in figures_for([*(exp.get("sweep") or {}), *(["split"] if exp.get("mix") else [])])}
    return [name for name in (*FIGURES, *SWEEP_FIGURES) if name in names]


# ----- the check_configs step and the run_config files --------------------------------------------------------------
def check_runs(docs: dict[str, dict]) -> dict[str, dict]:
    """Validate run configs completely (schema, then what a schema cannot see: :func:`sim.config.validate_config`;
    imports torch) and return them resolved, by folder. Every problem of every run is collected first: the
    ConfigError lists them all, each with its run folder (``key``: the first one's key)."""
    from sim.config.load import validate_config

    resolved, problems = {}, []
    for folder, doc in docs.items():
        try:
            cfg = validate_config(dict(doc), source=f"{folder}/config.yaml")
        except ConfigError as exc:
            problems.append(exc)
            continue
        try:
            cfg.data.spec()  # a run may leave data.path to be set later; a workflow job may not
        except ConfigError as exc:
            problems.append(ConfigError(
                f"{folder}/config.yaml: {exc} In a study, give it in the experiment's `set` or, for an experiment "
                f"with a `dataset`, in that dataset's workflow setting ({', '.join(DATA_SECTIONS)}, imagenet_path), "
                f"e.g. --config 'imagenet_sample={{path: data/imagenet_sample/tiny200_64}}'.", key=exc.key))
            continue
        resolved[folder] = cfg.to_dict()
    if problems:
        raise ConfigError(f"{len(problems)} of {len(docs)} run configs are invalid:\n"
                          + "\n".join(f"  - {p}" for p in problems), key=problems[0].key)
    return resolved


def write_run_config(path: str | Path, run: dict) -> None:
    """Write one run's resolved config as an ordinary run config file (a rerun by hand: ``python -m sim run``)."""
    header = (f"# Run {run['name']}, resolved by the workflow (docs/workflow.md).\n"
              f"# By hand: python -m sim run {path} --out {Path(path).with_name('run.zarr')}\n")
    Path(path).write_text(header + yaml.safe_dump(dict(run), sort_keys=False), encoding="utf-8")
