# Helper Python of the workflow (docs/workflow.md): the studies of the config expanded into runs, each run's
# resolved config validated against sim/schema/run.schema.json, and the input functions of the rules.
#
# Nothing here imports torch or the simulator (sim/__init__ imports torch): the DAG is built in a second.

import copy
import itertools
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

REPO = Path(workflow.basedir)
# the run schema of the command line (sim.config.load_config validates with the same file)
RUN_SCHEMA = REPO / "sim" / "schema" / "run.schema.json"
RUN = "results/{study}/{experiment}/rule~{rule}/seed~{seed}"
RUN_LOGS = "logs/{study}/{experiment}/rule~{rule}/seed~{seed}"


class _RunConfigLoader(yaml.SafeLoader):
    """SafeLoader that also reads YAML 1.2 floats such as 1e-3 as numbers, as sim.config's loader does."""


_RunConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


@dataclass(frozen=True)
class Run:
    """One training run of a study: where it goes and its resolved run config."""

    study: str
    experiment: str
    label: str
    """The {rule} wildcard: a rule name, or <below>+<above> for a mixture of two."""
    seed: int
    config: dict

    @property
    def folder(self) -> str:
        return RUN.format(study=self.study, experiment=self.experiment, rule=self.label, seed=self.seed)

    @property
    def store(self) -> str:
        return f"{self.folder}/run.zarr"


def deep_merge(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` merged in: mappings merge key by key, everything else replaces."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def set_key(doc: dict, dotted: str, value) -> dict:
    """``doc`` with the dotted key (e.g. settings.gp.eta) set to ``value``."""
    head, *rest = dotted.split(".")
    return deep_merge(doc, {head: value} if not rest else {head: set_key({}, ".".join(rest), value)})


def format_value(value) -> str:
    """A sweep value as it appears in a path (floats round-trip: repr(1e-05) == '1e-05')."""
    return repr(value) if isinstance(value, float) else str(value).lower() if isinstance(value, bool) else str(value)


def selected_studies() -> list[str]:
    names = config["study"] if isinstance(config["study"], list) else [config["study"]]
    unknown = [n for n in names if n not in config["studies"]]
    if unknown:
        raise WorkflowError(f"config: study {unknown[0]!r} is not defined under `studies` (defined: "
                            f"{', '.join(sorted(config['studies']))}); pass its config file with --configfile")
    return names


def load_base(spec, rule: str, where: str) -> dict:
    """The experiment's base run config for ``rule``: its file (``{rule}`` filled in) or its inline mapping."""
    if isinstance(spec, dict):
        return copy.deepcopy(spec)
    path = Path(spec.replace("{rule}", rule))
    path = path if path.is_absolute() else REPO / path
    if not path.is_file():
        raise WorkflowError(f"{where}.run: run config {path} does not exist")
    with open(path, encoding="utf-8") as f:
        doc = yaml.load(f, Loader=_RunConfigLoader)  # noqa: S506 - a SafeLoader subclass
    if not isinstance(doc, dict):
        raise WorkflowError(f"{where}.run: {path} is not a mapping of run config keys")
    return doc


def check_imagenet_path() -> str | None:
    """The ImageNet root, checked; None while `imagenet_path` is not set."""
    path = config.get("imagenet_path")
    if path is None:
        return None
    root = Path(path)
    missing = [sub for sub in ("train", "val") if not (root / sub).is_dir()]
    if not root.is_dir() or missing:
        what = "does not exist" if not root.is_dir() else f"has no {' or '.join(f'{s}/' for s in missing)} folder"
        raise WorkflowError(
            f"config: imagenet_path {str(root)!r} {what}. Set imagenet_path to the ImageNet root, the folder that "
            "holds train/ and val/ with one <wnid>/ folder of *.JPEG per class, e.g. "
            "`--config imagenet_path=/data/imagenet`, or leave it null (unset) to leave the ImageNet experiments out.")
    return str(root)


def apply_dataset(doc: dict, dataset) -> dict | None:
    """``doc`` with the workflow-wide data settings of its dataset; None: leave the experiment out (no ImageNet)."""
    if dataset == "imagenet":
        root = check_imagenet_path()
        return None if root is None else deep_merge(doc, {"data": {"path": root}})
    if dataset == "cifar10":
        section = config.get("cifar10") or {}
        if "kind" in section:  # another source (e.g. the npz copy): its own complete data section
            return {**doc, "data": copy.deepcopy(section)}
        return deep_merge(doc, {"data": section})
    return doc


def validate_run(doc: dict, where: str) -> None:
    """Validate a resolved run config against the command line's schema; on failure, name the run and every
    problem in the command line's own words (sim.config.schema_errors)."""
    try:
        validate(doc, str(RUN_SCHEMA), set_default=False)
    except WorkflowError as exc:
        try:
            from sim.config import schema_errors  # imports torch: only once something is wrong
        except ImportError:
            raise WorkflowError(f"{where}: the resolved run config fails {RUN_SCHEMA}", exc) from None
        problems = "\n".join(f"  - {p}" for p in schema_errors(doc))
        raise WorkflowError(
            f"{where}: the resolved run config (base run config + the study's and the experiment's `set` + sweep "
            f"values) fails sim/schema/run.schema.json:\n{problems}") from None


def sweep_points(exp: dict) -> list[tuple[list[str], dict[str, object]]]:
    """``([key~value folders], {parameter: value})`` for every sweep point of an experiment (one, without a
    sweep)."""
    params = list((exp.get("sweep") or {}).items())
    mix = exp.get("mix")
    axes = [[(name, v) for v in p["values"]] for name, p in params]
    if mix:
        axes.append([("split", s) for s in mix["splits"]])
    points = []
    for combo in itertools.product(*axes) if axes else [()]:
        points.append(([f"{name}~{format_value(v)}" for name, v in combo], dict(combo)))
    return points


def expand_runs(study: str) -> list[Run]:
    """Every run of ``study``: experiments x sweep points x rules x seeds, configs resolved and validated."""
    spec = config["studies"][study]
    runs = []
    for name, exp in spec["experiments"].items():
        where = f"studies.{study}.experiments.{name}"
        if exp.get("dataset") == "imagenet" and check_imagenet_path() is None:
            print(f"note: {where} is left out: it needs ImageNet and `imagenet_path` is not set (e.g. "
                  "`--config imagenet_path=/data/imagenet`, the folder with train/ and val/)", file=sys.stderr)
            continue
        mix = exp.get("mix")
        labels = [f"{mix['below']}+{mix['above']}"] if mix else exp["rules"]
        for folders, values in sweep_points(exp):
            experiment = "/".join([name, *folders])
            for label in labels:
                base_rule = mix["above"] if mix else label
                doc = apply_dataset(load_base(exp["run"], base_rule, where), exp.get("dataset"))
                doc = deep_merge(doc, spec.get("set") or {})
                doc = deep_merge(doc, exp.get("set") or {})
                for pname, value in values.items():
                    if pname == "split":
                        continue
                    path = exp["sweep"][pname]["path"]
                    if isinstance(path, dict):
                        if label not in path:
                            raise WorkflowError(f"{where}.sweep.{pname}.path names no key for rule {label!r}")
                        path = path[label]
                    doc = set_key(doc, path, value)
                if mix:
                    split = values["split"]
                    if split > mix["layers"]:
                        raise WorkflowError(f"{where}.mix.splits: split {split} is above the network's "
                                            f"{mix['layers']} layers")
                    doc["rules"] = [mix["below"]] * split + [mix["above"]] * (mix["layers"] - split)
                else:
                    doc["rules"] = label
                for seed in spec["seeds"]:
                    run_doc = set_key(doc, "train.seed", seed)
                    run_doc["name"] = f"{study}/{experiment}/rule~{label}/seed~{seed}"
                    point = f" at sweep point {'/'.join(folders)}" if folders else ""
                    validate_run(run_doc, f"{where}{point} (rule {label}, seed {seed})")
                    runs.append(Run(study, experiment, label, seed, run_doc))
    if not runs:
        raise WorkflowError(f"study {study!r} has no runs left (see the notes above)")
    return runs


STUDIES = selected_studies()
RUNS = {(r.study, r.experiment, r.label, r.seed): r for s in STUDIES for r in expand_runs(s)}


def study_figures(study: str) -> list[str]:
    """The figures that apply to a study: always angle per layer, angle per step and accuracy; the noise map
    when an experiment sweeps message_std and eta; the mixing figure when one mixes rules."""
    exps = config["studies"][study]["experiments"].values()
    names = ["angle_layers", "angle_steps", "accuracy"]
    if any({"message_std", "eta"} <= set(e.get("sweep") or {}) for e in exps):
        names.append("noise_map")
    if any(e.get("mix") for e in exps):
        names.append("mixing")
    return names


# ----- input functions and params -----------------------------------------------------------------------------------
def get_run(wildcards) -> Run:
    key = (wildcards.study, wildcards.experiment, wildcards.rule, int(wildcards.seed))
    if key not in RUNS:
        raise WorkflowError(f"no run {RUN.format(**wildcards)} in the selected studies ({', '.join(STUDIES)})")
    return RUNS[key]


def run_config(wildcards) -> dict:
    return get_run(wildcards).config


def write_run_config(path: str, run: dict, log: str) -> None:
    """Write one run's resolved config as an ordinary run config file (rule run_config; in-process, no torch)."""
    header = (f"# Run {run['name']}, resolved by the workflow (docs/workflow.md).\n"
              f"# By hand: python -m sim run {path} --out {Path(path).with_name('run.zarr')}\n")
    Path(path).write_text(header + yaml.safe_dump(dict(run), sort_keys=False), encoding="utf-8")
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


def final_targets() -> list[str]:
    targets = []
    for study in STUDIES:
        targets += [r.store for r in RUNS.values() if r.study == study]
        targets += [f"results/{study}/figures/{name}.png" for name in study_figures(study)]
        targets += [f"results/{study}/table.md", f"results/{study}/table.csv"]
    return targets
