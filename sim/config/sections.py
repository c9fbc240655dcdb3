"""The sections of a run config: nested frozen dataclasses, one docstring per field (docs/runs.md).

Each section mirrors one object of ``sim/schema/run.schema.json`` key for key (tests/test_config.py checks both the
keys and the defaults), so adding a config key touches the schema and one dataclass. The data section *is* a
:class:`sim.data.DataSpec`; the noise floors are :class:`sim.schedule.NoiseFloor`, the rule settings
:class:`sim.rules.RuleSettings` and the layers :class:`sim.network.LayerSpec`, each described once where it is used.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from sim.data.spec import NEEDS_PATH, DataSpec
from sim.errors import ConfigError, DataError
from sim.network import LayerSpec, NetworkConfig
from sim.presets import preset, preset_options
from sim.rules.registry import RuleSettings, get_spec
from sim.schedule import NoiseFloor
from sim.step_options import DEFAULT_STEP, StepOptions


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
        """The preset keyword options that were given (:func:`sim.presets.preset_options`)."""
        return preset_options(self)


@dataclass(frozen=True)
class DataSection(DataSpec):
    """The dataset: a :class:`sim.data.DataSpec` (its fields, defaults and checks are described there, once) whose
    ``path`` may be left unset in the file, to be set before the run starts (:meth:`spec` then refuses it)."""

    def __post_init__(self) -> None:
        try:
            self._check(require_path=False)
        except DataError as exc:
            raise ConfigError.at("data", str(exc)) from None

    def spec(self) -> DataSpec:
        """The :class:`sim.data.DataSpec` of this section; a missing path is a ConfigError naming ``data.path``."""
        if self.kind in NEEDS_PATH and not self.path:
            raise ConfigError(
                f"data.path is not set: data kind {self.kind!r} reads from a folder. Set data.path in the config "
                f"to the folder that holds the data (for imagenet_folder: the root with train/ and val/ "
                f"subfolders of <wnid>/*.JPEG), e.g. `path: /data/imagenet`.", key="data.path")
        return DataSpec(**{f.name: getattr(self, f.name) for f in fields(DataSpec)})


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
    """Decoding processes for file-backed data, started once per split and kept for the whole run."""
    eval_train_subset: int | None = None
    """Train samples evaluated after every epoch: a fixed subset of this many (:func:`sim.run.data.eval_train_indices`:
    the first N of epoch 0's order, seeded by ``seed``), or None for the whole train split."""
    on_nonfinite: str = "stop"
    """On a NaN/Inf or a singular layer: 'stop' (keep the prefix and the last good state, and raise) or 'retry'
    (go back to the last checkpoint with every learning rate scaled by ``retry_lr_factor``)."""
    retry_lr_factor: float = 0.5
    """'retry': the factor each retry multiplies every learning rate by (0 < factor < 1)."""
    max_retries: int = 3
    """'retry': retries allowed over the whole run before it stops as with 'stop'."""
    task_updates: bool = True
    """Apply the rules' updates. False: the paper's "regulariser alone" control: every step still computes the raw
    updates (and the angles to BP are measured from them), but only the orthogonality regulariser's gradient reaches
    Adam, so only regularised square weights move (:meth:`sim.schedule.Scheduler.apply`)."""
    init_from: str | None = None
    """A run store (finished or not) whose newest intact checkpoint's forward weights and biases start this run
    instead of the initialisation (:mod:`sim.run.init_from`); the rules' own state, Adam's moments, the noise and the
    data order are this run's own. Read once, at the start; a resumed run continues from its own checkpoint."""


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
        from sim.config.load import validate_config

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
            # the settings each rule reads, nothing else (sim.rules.registry: no silent settings)
            "settings": {name: get_spec(name).values(s) for name, s in sorted(self.settings.items())},
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
