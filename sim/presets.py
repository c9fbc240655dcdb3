"""Network presets (REFERENCE.md section 5) and the registry that holds them.

A preset is a function returning a :class:`~sim.network.NetworkConfig` for a given rule assignment; extra keyword
arguments (``image_size``, ``width_mult``, ``classes``) are accepted by the presets that use them.

* ``cifar10_shallow``: 3072 -> 1024 (not inverted), two square 1024 layers, output ("3 hidden layers");
* ``cifar10_deep``: 3072 -> 1024, five square 1024 layers, output ("6 hidden layers");
* ``digits_shallow`` / ``digits_deep``: the same designs sized for the embedded 8x8 digits (64 -> 128 -> ...),
  for runs that must finish in seconds on a CPU;
* ``imagenet_conv``: the ImageNet conv net (seven conv layers, dense output; ``image_size``, ``width_mult``);
* ``cifar10_conv``: an invertible conv net of the same kind for 3x32x32 inputs (``width_mult``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sim.errors import ConfigError
from sim.layers.conv import conv_out_size
from sim.network import LayerSpec, NetworkConfig
from sim.rules import RuleSettings, get_rule

PRESETS: dict[str, Callable[..., NetworkConfig]] = {}


def register_preset(name: str) -> Callable[[Callable[..., NetworkConfig]], Callable[..., NetworkConfig]]:
    def wrap(fn: Callable[..., NetworkConfig]) -> Callable[..., NetworkConfig]:
        PRESETS[name] = fn
        return fn
    return wrap


def preset(name: str, rule: str | Sequence[str] = "bp", *, settings: dict[str, RuleSettings] | None = None,
           dtype: str = "float32", device: str = "cpu", seed: int = 0, **kwargs) -> NetworkConfig:
    """The network config of preset ``name`` with one rule everywhere or one rule name per layer."""
    if name not in PRESETS:
        raise ConfigError(f"unknown network preset {name!r}; presets: {', '.join(sorted(PRESETS))}")
    check_options(name, sorted(kwargs))
    rules = rule if isinstance(rule, str) else tuple(rule)
    return PRESETS[name](rules=rules, settings=dict(settings or {}), dtype=dtype, device=device, seed=seed, **kwargs)


#: the keyword options a preset may take besides the rules and the common settings
OPTIONS: tuple[str, ...] = ("image_size", "width_mult", "classes")


def preset_options(source: object) -> dict[str, Any]:
    """The preset options (:data:`OPTIONS`) that ``source`` sets, i.e. those not None: ``source`` is a config's
    network section or the parsed command-line arguments of ``angles`` and ``bench`` (the one place they are built)."""
    return {k: v for k in OPTIONS if (v := getattr(source, k, None)) is not None}


def check_options(name: str, given: Iterable[str], where: str = "network") -> None:
    """Refuse the options among ``given`` that preset ``name`` does not take (its extra keyword arguments:
    ``image_size``, ``width_mult``, ``classes``), naming the ones it does; ``where`` starts the message (the config
    key, for a config file)."""
    params = inspect.signature(PRESETS[name]).parameters.values()
    takes = sorted(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    unknown = [opt for opt in given if opt not in takes]
    if unknown:
        raise ConfigError.at(where, f"preset {name!r} takes no option {', '.join(unknown)} (its options: "
                             f"{', '.join(takes) or 'none'})")


def dense_stack(input_shape: tuple[int, ...], widths: Sequence[int], classes: int, **common) -> NetworkConfig:
    """A dense network with the given hidden widths (bottom to top) and a dense output."""
    return NetworkConfig(input_shape=tuple(input_shape), classes=classes,
                         layers=tuple(LayerSpec(width=w) for w in widths), **common)


@register_preset("cifar10_shallow")
def cifar10_shallow(classes: int = 10, **common) -> NetworkConfig:
    return dense_stack((3, 32, 32), [1024] * 3, classes, **common)


@register_preset("cifar10_deep")
def cifar10_deep(classes: int = 10, **common) -> NetworkConfig:
    return dense_stack((3, 32, 32), [1024] * 6, classes, **common)


@register_preset("digits_shallow")
def digits_shallow(classes: int = 10, **common) -> NetworkConfig:
    return dense_stack((1, 8, 8), [128] * 3, classes, **common)


@register_preset("digits_deep")
def digits_deep(classes: int = 10, **common) -> NetworkConfig:
    return dense_stack((1, 8, 8), [128] * 6, classes, **common)


# ----- conv nets (REFERENCE.md sections 4-5) --------------------------------------------------------------------------

#: the ImageNet conv net of REFERENCE.md section 5, ``(kernel, stride, filters)`` bottom to top
IMAGENET_CONVS: tuple[tuple[int, int, int], ...] = (
    (9, 4, 24), (3, 2, 24), (5, 2, 48), (3, 2, 48), (3, 1, 96), (3, 2, 96), (3, 1, 192),
)

#: the CIFAR-10 conv net of :func:`cifar10_conv`, ``(kernel, stride, filters)`` bottom to top
CIFAR10_CONVS: tuple[tuple[int, int, int], ...] = (
    (5, 2, 32), (3, 1, 32), (3, 2, 64), (3, 1, 64), (3, 2, 64),
)


def _scaled_convs(convs: Sequence[tuple[int, int, int]], width_mult: float, preset_name: str
                  ) -> tuple[tuple[int, int, int], ...]:
    if not (isinstance(width_mult, (int, float)) and width_mult > 0):
        raise ConfigError(f"preset {preset_name!r}: width_mult must be a positive number, got {width_mult!r}")
    return tuple((k, s, max(1, round(f * width_mult))) for k, s, f in convs)


def conv_feature_map(image_shape: tuple[int, int, int], convs: Sequence[tuple[int, int, int]]) -> tuple[int, int, int]:
    """``(channels, height, width)`` forwarded by the last conv layer (SAME padding: each stride divides, rounding
    up), computed from the input shape; this is what the dense output layer reads, flattened."""
    c, h, w = image_shape
    for _, s, f in convs:
        c, h, w = f, conv_out_size(h, s), conv_out_size(w, s)
    return c, h, w


def conv_stack(input_shape: tuple[int, int, int], convs: Sequence[tuple[int, int, int]], classes: int,
               **common) -> NetworkConfig:
    """A conv network: the given ``(kernel, stride, filters)`` conv layers (bottom to top) and a dense output.

    Which conv layers are square follows from their rules, as for dense stacks (the first is never square).
    """
    layers = tuple(LayerSpec(width=f, kind="conv", kernel=k, stride=s) for k, s, f in convs)
    return NetworkConfig(input_shape=tuple(input_shape), classes=classes, layers=layers, **common)


def _output_inverts(config: NetworkConfig) -> tuple[bool, str]:
    out_rule = config.rule_names()[-1]
    return get_rule(out_rule).inverts, out_rule


@register_preset("imagenet_conv")
def imagenet_conv(image_size: int = 224, width_mult: float = 1.0, classes: int = 1000, **common) -> NetworkConfig:
    """The ImageNet conv net of REFERENCE.md section 5: seven conv layers (kernel/stride/filters 9/4/24, 3/2/24,
    5/2/48, 3/2/48, 3/1/96, 3/2/96, 3/1/192; filters scaled by ``width_mult``, rounded, at least 1), no pooling, then
    a dense output over the flattened conv7 map, on RGB ``image_size x image_size`` inputs.

    Shapes are computed from ``image_size`` (SAME padding: the map shrinks by ``ceil(./s)`` per layer, 64-fold in
    all). Under an inverting output rule (gp, vgp) the output layer is square over the flattened conv7 map with the
    logits first, so that map must hold at least ``classes`` features: a smaller one is refused with the smallest
    ``image_size`` that works.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ConfigError(f"preset 'imagenet_conv': image_size must be a positive integer (pixels), got "
                          f"{image_size!r}; SAME padding gives every size >= 1 a conv7 map of at least 1x1.")
    convs = _scaled_convs(IMAGENET_CONVS, width_mult, "imagenet_conv")
    config = conv_stack((3, image_size, image_size), convs, classes, **common)
    inverts, out_rule = _output_inverts(config)

    def features(size: int) -> tuple[int, int, int]:
        return conv_feature_map((3, size, size), convs)

    c, h, w = features(image_size)
    if inverts and c * h * w < classes:
        smallest = image_size + 1
        while math.prod(features(smallest)) < classes:
            smallest += 1
        c2, h2, w2 = features(smallest)
        raise ConfigError(
            f"preset 'imagenet_conv': the output layer's rule {out_rule!r} inverts it, so it is square over the "
            f"flattened conv7 map ({c} x {h} x {w} = {c * h * w} features at image_size {image_size}) and cannot "
            f"hold {classes} classes. The smallest image_size that works is {smallest} (conv7 map {c2} x {h2} x {w2} "
            f"= {c2 * h2 * w2} features); or raise width_mult, or give the output layer a non-inverting rule (bp, fa)."
        )
    return config


@register_preset("cifar10_conv")
def cifar10_conv(classes: int = 10, width_mult: float = 1.0, **common) -> NetworkConfig:
    """An invertible conv net for 3x32x32 inputs, built like the ImageNet net (no pooling, SAME padding, leaky ReLU,
    dense output):

    ====== ====== ====== ======= ============ ==========================
    layer  kernel stride filters map          GP output channels D
    ====== ====== ====== ======= ============ ==========================
    conv1  5      2      32      32 x 16 x 16 32 (not square, not inverted)
    conv2  3      1      32      32 x 16 x 16 288
    conv3  3      2      64      64 x 8 x 8   288
    conv4  3      1      64      64 x 8 x 8   576
    conv5  3      2      64      64 x 4 x 4   576
    output dense         classes              GP: square 1024 x 1024, logits first
    ====== ====== ====== ======= ============ ==========================

    Every square layer has stride <= kernel (invertible) and ``filters <= D``; the strides alternate 1 and 2 as in
    the ImageNet net, and the flattened conv5 map has 1024 features, the width of the dense CIFAR-10 nets, so the
    square GP output layer is the same size as theirs and holds the 10 logits with room to spare. Filters are scaled
    by ``width_mult`` (rounded, at least 1).
    """
    convs = _scaled_convs(CIFAR10_CONVS, width_mult, "cifar10_conv")
    config = conv_stack((3, 32, 32), convs, classes, **common)
    inverts, out_rule = _output_inverts(config)
    c, h, w = conv_feature_map((3, 32, 32), convs)
    if inverts and c * h * w < classes:
        raise ConfigError(
            f"preset 'cifar10_conv': the output layer's rule {out_rule!r} inverts it, so it is square over the "
            f"flattened conv5 map ({c} x {h} x {w} = {c * h * w} features) and cannot hold {classes} classes; raise "
            "width_mult or give the output layer a non-inverting rule (bp, fa)."
        )
    return config
