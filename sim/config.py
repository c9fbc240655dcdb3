"""Run configs: one YAML file (or one dict section of a workflow config) per training run (docs/runs.md).

A run is one network, one rule assignment, one dataset, one seed, trained for a number of epochs. The file is read
with ``yaml.safe_load``, validated **first** by the one JSON schema ``sim/schema/run.schema.json`` (the workflow's
``snakemake.utils.validate`` uses the same file, so both reject the same mistakes), then checked against the things a
schema cannot see (rules per layer against the network's depth, preset options, noise lists, probe epochs) and
turned into nested frozen dataclasses. Every such check runs before any tensor is built or any file is written, and
every error is a :class:`~sim.errors.ConfigError` whose message starts with the key path, e.g.
``settings.gp.lr: -1 is less than or equal to the minimum of 0``.

    cfg = load_config("configs/digits_deep_gp.yaml")
    net = build_network(cfg)                 # sim.network.Network
    sched = build_scheduler(cfg, net)        # sim.schedule.Scheduler (Adam per layer, noise, seed)
    assert load_config(cfg.to_dict()) == cfg
"""

from __future__ import annotations

import copy
import difflib
import functools
import json
import math
import re
from dataclasses import asdict, dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import torch
import yaml

from sim.errors import ConfigError, GaitsimError, ShapeError
from sim.network import LayerSpec, Network, NetworkConfig
from sim.presets import check_options, preset
from sim.rules import RuleSettings, get_rule
from sim.schedule import NoiseFloor, Scheduler
from sim.step_options import DEFAULT_STEP, StepOptions

SCHEMA_RESOURCE = "schema/run.schema.json"
#: data kinds that need no path (everything else reads a folder)
BUILTIN_KINDS = frozenset({"digits", "random"})


# ----- the dataclasses ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NetworkSection:
    """The network: a preset with its options, or an explicit stack."""

    preset: str | None = None
    """Name of a preset in :data:`sim.presets.PRESETS`; None for an explicit stack."""
    image_size: int | None = None
    """Preset option: input resolution in pixels (conv presets that take it)."""
    width_mult: float | None = None
    """Preset option: multiplier of every conv layer's filter count."""
    classes: int | None = None
    """Number of classes; preset: overrides its default; explicit stack: required."""
    input_shape: tuple[int, ...] | None = None
    """Explicit stack: per-sample input shape ``(C, H, W)``."""
    layers: tuple[LayerSpec, ...] | None = None
    """Explicit stack: hidden layers bottom to top (the dense output layer is added on top)."""

    def preset_options(self) -> dict[str, Any]:
        """The preset keyword options that were given (``image_size``, ``width_mult``, ``classes``)."""
        opts = {"image_size": self.image_size, "width_mult": self.width_mult, "classes": self.classes}
        return {k: v for k, v in opts.items() if v is not None}


@dataclass(frozen=True)
class DataSection:
    """The dataset; mirrors :class:`sim.data.DataSpec`, built by :meth:`spec` when the run starts."""

    kind: str
    """Data source, one of :data:`sim.data.KINDS`."""
    path: str | None = None
    """Folder holding the data; None for built-in kinds ('digits', 'random'), or to be set before running."""
    image_size: int | None = None
    """Resize to this square size in pixels; None keeps the native size."""
    normalize: str = "unit"
    """'unit' (pixels / 255, digits / 16) or 'imagenet' (then ImageNet mean/std per channel)."""
    download: bool = False
    """'cifar10': let torchvision download the data when it is missing."""
    on_bad_image: str = "error"
    """'imagenet_folder': 'error' or 'skip' undecodable files."""
    classes: int | None = None
    """'random': number of classes; other kinds: a check on the labels."""
    input_shape: tuple[int, int, int] | None = None
    """'random': image shape ``(C, H, W)``; other kinds: a check on the loaded shape."""
    size: int | None = None
    """'random': samples per split; other kinds: keep only the first ``size`` samples of each split."""

    def spec(self):
        """The :class:`sim.data.DataSpec` of this section; a missing path is a ConfigError naming ``data.path``."""
        from sim.data import DataSpec

        if self.kind not in BUILTIN_KINDS and not self.path:
            raise ConfigError(
                f"data.path is not set: data kind {self.kind!r} reads from a folder. Set data.path in the config "
                f"to the folder that holds the data (for imagenet_folder: the root with train/ and val/ "
                f"subfolders of <wnid>/*.JPEG), e.g. `path: /data/imagenet`."
            )
        try:
            return DataSpec(**asdict(self))
        except GaitsimError as exc:
            raise ConfigError(f"data: {exc}") from None


@dataclass(frozen=True)
class TrainSection:
    """How long and on what to train (independent of the rules' hyper-parameters)."""

    epochs: int
    """Passes over the train split."""
    batch_size: int = 256
    """Samples per training step; the loss is summed over the batch."""
    seed: int = 0
    """Seeds the weights, the feedback weights, the noise and the data order of every epoch."""
    dtype: str = "float32"
    """'float32' or 'float64'."""
    device: str = "cpu"
    """Torch device: 'cpu', 'cuda' or 'cuda:N'."""
    step: StepOptions = DEFAULT_STEP
    """What one training step computes and how (numerics checks, aux skipping, regulariser interval, ...)."""
    drop_last: bool = False
    """Drop the last, shorter batch of every epoch."""
    eval_batch_size: int = 1024
    """Samples per forward pass of the per-epoch evaluation."""
    num_workers: int = 0
    """Decoding processes for file-backed data."""
    on_nonfinite: str = "stop"
    """On a NaN/Inf or a singular layer: 'stop' (keep the prefix and the last good state, and raise) or 'retry'
    (go back to the last checkpoint with every learning rate scaled by ``retry_lr_factor``)."""
    retry_lr_factor: float = 0.5
    """'retry': the factor each retry multiplies every learning rate by (0 < factor < 1)."""
    max_retries: int = 3
    """'retry': retries allowed over the whole run before it stops as with 'stop'."""

    @property
    def check_numerics(self) -> bool:
        """Whether steps check for NaN/Inf at all (``step.check_numerics`` is not 'off')."""
        return self.step.checks


@dataclass(frozen=True)
class RecordSection:
    """What the archive records besides the per-step loss and per-epoch metrics."""

    angle_every: int = 100
    """Steps between angle-to-BP measurements (steps 0, n, 2n, ...); 0 = never."""
    probe_size: int = 64
    """Samples in the probe batch (the first ``probe_size`` test samples); 0 = no activity records."""
    probe_epochs: tuple[int, ...] | None = None
    """Epochs after which the probe's activities and targets are stored (0 = before training); sorted. None (in a
    file) resolves to ``(0, epochs)``."""
    checkpoint_every: int = 1
    """Epochs between checkpoints (one is always written after the last epoch); 0 = only at the end."""


@dataclass(frozen=True)
class RunConfig:
    """One training run, fully resolved (every default filled in); ``to_dict`` round-trips through ``load_config``."""

    name: str
    """Short name of the run (logs, archive attributes)."""
    network: NetworkSection
    """The network."""
    rules: str | tuple[str, ...]
    """One rule name for every layer, or one per layer (hidden layers bottom to top, then the output)."""
    data: DataSection
    """The dataset."""
    train: TrainSection
    """Epochs, batch size, seed, dtype, device."""
    settings: dict[str, RuleSettings] = field(default_factory=dict)
    """Settings per rule name, resolved: every rule in ``rules`` (and every rule given in the file) has an entry."""
    noise: NoiseFloor = field(default_factory=NoiseFloor)
    """Noise floors (message and activity stds)."""
    record: RecordSection = field(default_factory=RecordSection)
    """What to record."""

    # ----- derived ------------------------------------------------------------------------------------------------
    def network_config(self) -> NetworkConfig:
        """The :class:`NetworkConfig` (no tensors built): preset or explicit stack, rules, settings, dtype, seed."""
        common = dict(settings=dict(self.settings), dtype=self.train.dtype, device=self.train.device,
                      seed=self.train.seed)
        net = self.network
        if net.preset is not None:
            return preset(net.preset, self.rules, **common, **net.preset_options())
        return NetworkConfig(input_shape=tuple(net.input_shape), classes=net.classes, layers=tuple(net.layers),
                             rules=self.rules, **common)

    def with_device(self, device: str) -> RunConfig:
        """The same run on another torch device (a runtime setting: results on CPU are bitwise reproducible)."""
        train = replace(self.train, device=device)
        return validate_config(replace(self, train=train).to_dict(), source="--device")

    # ----- serialisation ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-able dict of the resolved config (lists for tuples); ``load_config`` of it equals self."""
        net = asdict(self.network)
        if self.network.layers is not None:
            net["layers"] = [asdict(layer) for layer in self.network.layers]
        return _plain({
            "name": self.name,
            "network": net,
            "rules": self.rules,
            "settings": {name: asdict(s) for name, s in sorted(self.settings.items())},
            "noise": asdict(self.noise),
            "data": asdict(self.data),
            "train": asdict(self.train),
            "record": asdict(self.record),
        })

    def to_json(self) -> str:
        """``to_dict`` as canonical JSON (sorted keys), the form stored in archives and checkpoints."""
        return json.dumps(self.to_dict(), sort_keys=True)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ----- schema -------------------------------------------------------------------------------------------------------
@functools.cache
def load_schema() -> dict:
    """The run schema (``sim/schema/run.schema.json``), parsed."""
    text = resources.files("sim").joinpath(SCHEMA_RESOURCE).read_text(encoding="utf-8")
    return json.loads(text)


@functools.cache
def _validator() -> jsonschema.protocols.Validator:
    schema = load_schema()
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _key_path(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _suggest(word: Any, choices) -> str:
    if not isinstance(word, str):
        return ""
    match = difflib.get_close_matches(word, [c for c in choices if isinstance(c, str)], n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _pick_branch(error: jsonschema.ValidationError) -> jsonschema.ValidationError:
    """For a failed oneOf/anyOf, the sub-error of the branch the value was meant for: the one that got deepest into
    the value, preferring a branch whose type matched (so ``'gpp'`` reports the enum, not 'is not an array')."""
    if not error.context:
        return error
    best = max(error.context, key=lambda e: (len(e.absolute_path), e.validator != "type", -len(e.schema_path)))
    return _pick_branch(best)


def _format_error(error: jsonschema.ValidationError) -> list[str]:
    error = _pick_branch(error)
    where = _key_path(error.absolute_path)
    prefix = f"{where}: " if where else ""
    if error.validator == "additionalProperties":
        known = sorted(error.schema.get("properties", {}))
        extra = [k for k in error.instance if k not in known]
        lines = []
        for key in extra:
            hint = _suggest(key, known) or f" (known keys: {', '.join(known)})"
            lines.append(f"{where}: unknown key {key!r}{hint}" if where else f"unknown top-level key {key!r}{hint}")
        return lines
    if error.validator == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        return [f"{prefix}missing required key {k!r}" if where else f"missing required top-level key {k!r}"
                for k in missing]
    if error.validator == "pattern" and where == "name":
        return [f"name: {error.instance!r} could be taken for a path: a run name may hold '/' but may not start with "
                "'/' or contain a '..' part or control characters"]
    if error.validator == "enum":
        choices = [c for c in error.validator_value if c is not None]
        return [f"{prefix}{error.instance!r} is not one of {choices}{_suggest(error.instance, choices)}"]
    return [f"{prefix}{error.message}"]


#: limits of a config document's shape: deeper or bigger ones are garbage, not configs
MAX_DEPTH = 16
MAX_NODES = 100_000


def _walk(value: Any, path: tuple, ancestors: set[int], budget: list[int], nonfinite: dict, problems: list) -> None:
    """Check that ``value`` is a tree of JSON values (YAML may give dates, sets, binary data, or aliases that refer
    to themselves); collect NaN/Inf numbers by key path."""
    budget[0] -= 1
    if budget[0] < 0:
        if budget[0] == -1:
            problems.append(f"config: more than {MAX_NODES} values; this is not a run config")
        return
    where = _key_path(path) or "config"
    if isinstance(value, (dict, list)):
        if id(value) in ancestors:
            problems.append(f"{where}: refers to itself (a YAML alias inside its own anchor)")
            return
        if len(path) >= MAX_DEPTH:
            problems.append(f"{where}: nested more than {MAX_DEPTH} levels deep; this is not a run config")
            return
        ancestors.add(id(value))
        if isinstance(value, dict):
            for k, v in value.items():
                if not isinstance(k, str):
                    problems.append(f"{where}: key {k!r} is not a string (keys are names such as 'epochs')")
                    continue
                _walk(v, (*path, k), ancestors, budget, nonfinite, problems)
        else:
            for i, v in enumerate(value):
                _walk(v, (*path, i), ancestors, budget, nonfinite, problems)
        ancestors.discard(id(value))
    elif isinstance(value, float):
        if not math.isfinite(value):
            nonfinite[path] = f"{where}: {value!r} is not a finite number"
    elif value is not None and not isinstance(value, (str, int, bool)):
        problems.append(f"{where}: {value!r} is a {type(value).__name__}, not a number, string, boolean, list or "
                        "mapping")


def schema_errors(doc: Any) -> list[str]:
    """Every schema violation of ``doc`` as a message naming its key path (empty if valid). Also refused: NaN and
    Inf numbers, and documents that are not trees of JSON values (self-referencing aliases, non-string keys, dates,
    garbage nested deeper than :data:`MAX_DEPTH` or bigger than :data:`MAX_NODES`)."""
    problems: list[str] = []
    nonfinite: dict[tuple, str] = {}
    _walk(doc, (), set(), [MAX_NODES], nonfinite, problems)
    if problems:
        return problems
    errors = sorted(_validator().iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path])
    lines = [line for error in errors if tuple(error.absolute_path) not in nonfinite for line in _format_error(error)]
    return sorted([*nonfinite.values(), *lines], key=lambda line: line.split(":")[0]) if nonfinite else lines


def _schema_at(node: dict, root: dict) -> dict:
    while "$ref" in node:
        node = {**_resolve_ref(root, node["$ref"]), **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _resolve_ref(root: dict, ref: str) -> dict:
    node = root
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def _integers(value: Any, node: dict, root: dict) -> Any:
    """``value`` with integral floats (``3.0``, which JSON Schema counts as an integer) turned into ints where the
    schema asks for an integer, so that ``epochs: 3.0`` trains 3 epochs instead of failing deep inside Python."""
    node = _schema_at(node, root)
    if isinstance(value, dict):
        props = node.get("properties", {})
        return {k: _integers(v, props.get(k, {}), root) for k, v in value.items()}
    if isinstance(value, list):
        branches = [_schema_at(b, root) for b in node.get("oneOf", [])] or [node]
        items = next((b.get("items", {}) for b in branches if "items" in b), {})
        return [_integers(v, items, root) for v in value]
    types = node.get("type", [])
    if isinstance(value, float) and value.is_integer() and "integer" in (types if isinstance(types, list)
                                                                          else [types]):
        return int(value)
    return value


def _raise(source: str, problems: list[str]) -> None:
    if len(problems) == 1:
        raise ConfigError(f"{source}: {problems[0]}")
    raise ConfigError(f"{source}: {len(problems)} problems:\n" + "\n".join(f"  - {p}" for p in problems))


# ----- loading ------------------------------------------------------------------------------------------------------
class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads YAML 1.2 floats such as ``1e-3`` as numbers (YAML 1.1, which PyYAML
    implements, wants ``1.0e-3`` and would hand the schema the string '1e-3')."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_config(source: str | Path | dict, *, name: str | None = None) -> RunConfig:
    """Read (YAML path) or take (dict) a run config, validate it and resolve every default.

    Args:
        source: path of a YAML file, or a dict (e.g. one section of a Snakemake config; it is not modified).
        name: the run name when the config gives none (default: the file's stem, or 'run').

    Raises:
        ConfigError: naming the key path of every problem the schema finds, or of the first semantic problem.
    """
    if isinstance(source, dict):
        doc, where, stem = copy.deepcopy(source), "config", "run"
    else:
        path = Path(source)
        where, stem = str(path), path.stem
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except IsADirectoryError:
            raise ConfigError(f"config path {path} is a folder; give the YAML file of one run") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from None
        try:
            doc = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: a run config must be a mapping of keys (network, rules, data, train, ...), "
                          f"got {type(doc).__name__}")
    doc.setdefault("name", name or stem)
    return validate_config(doc, source=where)


def validate_config(doc: dict, *, source: str = "config") -> RunConfig:
    """Schema-validate a config dict, then resolve and check it (see :func:`load_config`)."""
    problems = schema_errors(doc)
    if problems:
        _raise(source, problems)
    try:
        return _resolve(_integers(doc, load_schema(), load_schema()))
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _section(cls, values: dict | None, **overrides):
    values = {**(values or {}), **overrides}
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in known})


def _tuple_or_none(value):
    return None if value is None else tuple(value)


def _resolve(doc: dict) -> RunConfig:
    """Turn a schema-valid dict into a :class:`RunConfig` and run the checks the schema cannot express."""
    # network: a preset with options, or an explicit stack, never a mix
    n = dict(doc["network"])
    if n.get("preset") is not None:
        mixed = [k for k in ("input_shape", "layers") if n.get(k) is not None]
        if mixed:
            raise ConfigError(f"network: give either preset (with its options image_size, width_mult, classes) or "
                              f"an explicit stack (input_shape, classes, layers), not both; drop network."
                              f"{' and network.'.join(mixed)}")
        for opt in ("image_size", "width_mult", "classes"):
            if n.get(opt) is not None:
                check_options(n["preset"], [opt], where=f"network.{opt}")
        layers = None
    else:
        missing = [k for k in ("input_shape", "classes", "layers") if n.get(k) is None]
        if missing:
            raise ConfigError(f"network: give a preset, or input_shape, classes and layers for an explicit stack; "
                              f"missing network.{', network.'.join(missing)}")
        for opt in ("image_size", "width_mult"):
            if n.get(opt) is not None:
                raise ConfigError(f"network.{opt}: a preset option, but no network.preset is given; an explicit "
                                  f"stack states its input_shape and layers instead")
        layers = tuple(LayerSpec(**layer) for layer in n["layers"])
    network = _section(NetworkSection, n, input_shape=_tuple_or_none(n.get("input_shape")), layers=layers)

    rules = doc["rules"] if isinstance(doc["rules"], str) else tuple(doc["rules"])
    used = {rules} if isinstance(rules, str) else set(rules)
    given = doc.get("settings") or {}
    settings = {}
    for rule in sorted(used | set(given)):
        values = {**asdict(get_rule(rule).defaults), **given.get(rule, {})}
        values["betas"] = tuple(values["betas"])
        try:
            settings[rule] = RuleSettings(**values)
        except ConfigError as exc:
            raise ConfigError(f"settings.{rule}: {exc}") from None

    noise_doc = doc.get("noise") or {}
    noise = NoiseFloor(**{k: (tuple(float(x) for x in v) if isinstance(v, list) else float(v))
                          for k, v in noise_doc.items()})
    d = dict(doc["data"])
    data = _section(DataSection, d, input_shape=_tuple_or_none(d.get("input_shape")))
    try:
        step = StepOptions(**doc["train"].get("step", {}))
    except ConfigError as exc:
        raise ConfigError(f"train.step: {exc}") from None
    train = _section(TrainSection, doc["train"], step=step)
    rec = dict(doc.get("record") or {})
    probe_epochs = rec.get("probe_epochs")
    probe_epochs = (0, train.epochs) if probe_epochs is None else tuple(sorted(probe_epochs))
    late = [e for e in probe_epochs if e > train.epochs]
    if late:
        raise ConfigError(f"record.probe_epochs: epoch(s) {late} come after the last epoch (train.epochs = "
                          f"{train.epochs})")
    record = _section(RecordSection, rec, probe_epochs=probe_epochs)
    cfg = RunConfig(name=str(doc["name"]), network=network, rules=rules, data=data, train=train,
                    settings=settings, noise=noise, record=record)

    # what only the network's depth tells: rules per layer, noise per layer (no tensors are built here)
    try:
        net_cfg = cfg.network_config()
        depth = len(net_cfg.rule_names())
    except ConfigError as exc:
        msg = str(exc)
        raise ConfigError(msg if msg.startswith(("rules", "network")) else f"network: {msg}") from None
    except GaitsimError as exc:
        raise ConfigError(f"network: {exc}") from None
    for which in ("message_std", "activity_std"):
        noise.per_layer(which, depth)
    _dry_build(net_cfg, network)
    if data.path or data.kind in BUILTIN_KINDS:
        data.spec()  # DataSpec's own checks (e.g. 'random' needs classes and input_shape)
    return cfg


def _dry_build(net_cfg: NetworkConfig, network: NetworkSection) -> None:
    """Build the network on torch's 'meta' device (shapes only: no memory, no numbers, a few ms) so that layers
    that do not fit together are a ConfigError naming the key now, not a ShapeError when the run starts. The
    device itself is not checked here: a config for a GPU is valid on a machine without one."""
    try:
        with torch.device("meta"):
            Network(replace(net_cfg, device="meta"))
    except (ShapeError, ConfigError) as exc:
        msg = str(exc)
        m = re.match(r"layer '[a-z]+(\d+)'", msg)
        if network.layers is not None and m and 1 <= int(m.group(1)) <= len(network.layers):
            raise ConfigError(f"network.layers[{int(m.group(1)) - 1}]: {msg}") from None
        if network.layers is not None and msg.startswith(("layer 'output'", "output layer")):
            raise ConfigError(f"network.classes: {msg}") from None
        raise ConfigError(msg if msg.startswith(("rules", "network")) else f"network: {msg}") from None


# ----- building -----------------------------------------------------------------------------------------------------
def build_network(cfg: RunConfig) -> Network:
    """The run's :class:`Network` (weights initialised from ``train.seed``, on ``train.device``)."""
    return Network(cfg.network_config())


def build_scheduler(cfg: RunConfig, net: Network) -> Scheduler:
    """The run's :class:`Scheduler`: one Adam group per layer with its rule's settings, the noise floors, the
    noise generator seeded from ``train.seed``, and the step options ``train.step``."""
    return Scheduler(net, noise=cfg.noise, seed=cfg.train.seed, options=cfg.train.step)
