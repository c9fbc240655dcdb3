"""A network: a stack of independent layers, each with its own plasticity rule (REFERENCE.md sections 1, 5).

``NetworkConfig`` declares any stack: the input shape, the hidden layers (dense or conv, with their widths), the
number of classes and the rule of every layer. Which layers are square follows from the rules: a layer whose rule
inverts (GP, vGP, lgp) is built square, with aux units where it forwards fewer units than it reads; the first layer is
never square (it is never inverted); the output layer is square with the logits first under GP and plain
(``n -> classes``) under BP and FA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from sim.activation import LEAKY_RELU, LINEAR
from sim.errors import ConfigError, GaitsimError, ShapeError
from sim.layers import BUILDERS, Layer
from sim.rules import Rule, RuleSettings, get_rule

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class LayerSpec:
    """One hidden layer of a declared stack."""

    width: int
    """Units (dense) or filters (conv) forwarded to the next layer."""
    kind: str = "dense"
    """Layer kind: 'dense' or 'conv'."""
    kernel: int | None = None
    """Conv only: kernel size k (k x k)."""
    stride: int | None = None
    """Conv only: stride."""
    aux: int | None = None
    """Optional check: the number of aux units (square layers: input size minus width)."""
    square: bool | None = None
    """Force a square (True) or plain (False) layer; None: square exactly when the layer's rule inverts."""


@dataclass(frozen=True)
class NetworkConfig:
    """A network: input, hidden layers, output classes, and the rule of each of its ``len(layers) + 1`` layers."""

    input_shape: tuple[int, ...]
    """Per-sample input shape, e.g. ``(3, 32, 32)``."""
    classes: int
    """Number of classes (logits of the output layer)."""
    layers: tuple[LayerSpec, ...]
    """Hidden layers, bottom to top; the dense output layer is added on top."""
    rules: tuple[str, ...] | str = "bp"
    """One rule name for every layer, or one per layer (hidden layers then the output)."""
    settings: dict[str, RuleSettings] = field(default_factory=dict)
    """Settings per rule name; rules not listed use their CIFAR-10 reference defaults."""
    dtype: str = "float32"
    """'float32' or 'float64', for every layer."""
    device: str = "cpu"
    """Torch device every layer lives on."""
    seed: int = 0
    """Seeds the forward weights and, independently, the FA feedback weights."""

    @property
    def depth(self) -> int:
        return len(self.layers) + 1

    def rule_names(self) -> tuple[str, ...]:
        rules = (self.rules,) * self.depth if isinstance(self.rules, str) else tuple(self.rules)
        if len(rules) != self.depth:
            raise ConfigError.at(
                "rules", f"{len(rules)} rule names given for a network of {self.depth} layers "
                f"({len(self.layers)} hidden + output); give one name or one per layer."
            )
        for r in rules:
            get_rule(r)
        return rules


def seed_streams(seed: int, n: int) -> list[int]:
    """``n`` independent 63-bit seeds from one user seed (weights, feedback, noise, data...)."""
    return [int(s.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)) for s in np.random.SeedSequence(seed).spawn(n)]


def resolve_device(name: str, option: str = "device") -> torch.device:
    """``torch.device(name)``, refusing a name torch does not know and CUDA where there is none (``option`` names the
    setting in the message: ``device`` in a config, ``--device`` on the command line)."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for but CUDA is not available here; use {option} cpu")
    return device


class Network(nn.Module):
    """Layers (``self.layers``) and their rules (``self.rules``), index-aligned, bottom to top."""

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        if config.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {sorted(DTYPES)}, got {config.dtype!r}")
        if config.classes < 2:
            raise ConfigError(f"classes must be at least 2, got {config.classes}")
        device = resolve_device(config.device, "device")
        self.config = config
        self.classes = config.classes
        dtype = DTYPES[config.dtype]
        rules = config.rule_names()
        w_seed, fb_seed = seed_streams(config.seed, 2)
        w_gen = torch.Generator().manual_seed(w_seed)
        fb_gen = torch.Generator().manual_seed(fb_seed)
        specs = [*config.layers, LayerSpec(width=config.classes, kind="dense")]
        layers: list[Layer] = []
        rule_mods: list[Rule] = []
        in_shape = tuple(config.input_shape)
        for i, (spec, rule_name) in enumerate(zip(specs, rules)):
            try:
                layer, rule = self._build_layer(i, spec, rule_name, specs, in_shape, config.settings, dtype, device,
                                                w_gen, fb_gen)
            except GaitsimError as exc:
                exc.layer_index = i  # the config loader names the key (network.layers[i] or network.classes)
                raise
            # what the layer's input went through: a fixed property of the connection (dtp's g reads it)
            layer.input_activation = layers[-1].activation if layers else LINEAR
            layers.append(layer)
            rule_mods.append(rule)
            in_shape = layer.read_shape
        if layers[-1].width != config.classes:
            exc = ShapeError(f"output layer forwards {layers[-1].width} units but there are {config.classes} classes")
            exc.layer_index = len(specs) - 1
            raise exc
        self.layers = nn.ModuleList(layers)
        self.rules = nn.ModuleList(rule_mods)

    @staticmethod
    def _build_layer(i, spec, rule_name, specs, in_shape, settings, dtype, device, w_gen, fb_gen) -> tuple[Layer, Rule]:
        """Layer ``i`` (named ``<kind><i+1>``, or ``output``) and its rule, checked against its neighbours."""
        is_output = i == len(specs) - 1
        name = "output" if is_output else f"{spec.kind}{i + 1}"
        rule_cls = get_rule(rule_name)
        square = rule_cls.inverts if spec.square is None else spec.square
        if i == 0:
            square = False  # the first layer is never inverted
        if spec.kind not in BUILDERS:
            raise ConfigError(f"layer {name!r}: unknown kind {spec.kind!r}; known kinds: {sorted(BUILDERS)}")
        if rule_cls.inverts and not square and i > 0:
            raise ConfigError(f"layer {name!r}: rule {rule_name!r} inverts its layer, which must be square")
        layer = BUILDERS[spec.kind](
            spec, name=name, in_shape=in_shape, square=square,
            activation=LINEAR if is_output else LEAKY_RELU, dtype=dtype, device=device, generator=w_gen,
        )
        aux = layer.out_shape[0] - layer.width
        if spec.aux is not None and spec.aux != aux:
            raise ShapeError(
                f"layer {name!r}: declared aux={spec.aux} but the layer has {aux} aux units "
                f"(reads {math.prod(in_shape)}, forwards {layer.width}, square={square}); the widths do not chain."
            )
        # a rule on the broadcast channel learns the output error's width (the classes) at construction
        context = {"classes": specs[-1].width} if rule_cls.direct else {}
        return layer, rule_cls(layer, settings.get(rule_name, rule_cls.defaults), fb_gen, **context)

    # ----- introspection ------------------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    @property
    def rule_names(self) -> list[str]:
        return [rule.name for rule in self.rules]

    @property
    def dtype(self) -> torch.dtype:
        return self.layers[0].weight.dtype

    @property
    def device(self) -> torch.device:
        return self.layers[0].weight.device

    def __getitem__(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer {name!r}; layers: {self.names}")

    # ----- weights as tensors -------------------------------------------------------------------------------------
    def weights(self) -> dict[str, Tensor]:
        """Every layer's weight, detached copies keyed by layer name (``[out, in]`` dense, ``[D, C, k, k]`` conv)."""
        return {layer.name: layer.weight.detach().clone() for layer in self.layers}

    def biases(self) -> dict[str, Tensor]:
        """Every layer's bias, detached copies keyed by layer name."""
        return {layer.name: layer.bias.detach().clone() for layer in self.layers}

    @torch.no_grad()
    def set_weights(self, weights: dict[str, Tensor], biases: dict[str, Tensor] | None = None) -> None:
        """Overwrite weights (and optionally biases) by layer name; shapes must match, values are cast and moved."""
        for kind, table in (("weight", weights), ("bias", biases or {})):
            for name, value in table.items():
                param = getattr(self[name], kind)
                if tuple(value.shape) != tuple(param.shape):
                    raise ShapeError(
                        f"layer {name!r}: {kind} of shape {list(value.shape)} given, the layer's is {list(param.shape)}"
                    )
                param.copy_(value.to(dtype=param.dtype, device=param.device))

    # ----- inference ----------------------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, classes]`` for inputs ``[B, *input_shape]`` (no noise, no messages)."""
        h = x
        for layer in self.layers:
            layer.check_input(h)
            h = layer.read(layer(h))
        return h
