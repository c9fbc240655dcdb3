"""Network presets (REFERENCE.md section 5) and the registry that holds them.

A preset is a function returning a :class:`~sim.network.NetworkConfig` for a given rule assignment; extra keyword
arguments (``image_size``, ``width_mult``, ``classes``) are accepted by the presets that use them.

* ``cifar10_shallow``: 3072 -> 1024 (not inverted), two square 1024 layers, output ("3 hidden layers");
* ``cifar10_deep``: 3072 -> 1024, five square 1024 layers, output ("6 hidden layers");
* ``digits_shallow`` / ``digits_deep``: the same designs sized for the embedded 8x8 digits (64 -> 128 -> ...),
  for runs that must finish in seconds on a CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sim.errors import ConfigError
from sim.network import LayerSpec, NetworkConfig
from sim.rules import RuleSettings

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
    rules = rule if isinstance(rule, str) else tuple(rule)
    return PRESETS[name](rules=rules, settings=dict(settings or {}), dtype=dtype, device=device, seed=seed, **kwargs)


def dense_stack(input_shape: tuple[int, ...], widths: Sequence[int], classes: int, **common) -> NetworkConfig:
    """A dense network with the given hidden widths (bottom to top) and a dense output."""
    return NetworkConfig(input_shape=tuple(input_shape), classes=classes,
                         layers=tuple(LayerSpec(width=w) for w in widths), **common)


def _no_extra(name: str, kwargs: dict) -> None:
    if kwargs:
        raise ConfigError(f"preset {name!r} takes no option(s) {sorted(kwargs)}")


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
