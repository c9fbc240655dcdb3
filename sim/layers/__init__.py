"""Layer kinds, built by name from a :class:`~sim.network.LayerSpec` through :data:`BUILDERS`.

A builder has the signature ``(spec, *, name, in_shape, square, activation, dtype, device, generator) -> Layer``;
a new layer kind is one new module that adds itself here.
"""

from __future__ import annotations

from collections.abc import Callable

from sim.errors import ConfigError
from sim.layers.base import Layer
from sim.layers.conv import Conv
from sim.layers.dense import Dense
from sim.linalg import InverseFactors, factorize

BUILDERS: dict[str, Callable[..., Layer]] = {}


def _build_dense(spec, *, name, in_shape, square, activation, dtype, device, generator) -> Layer:
    return Dense(name, in_shape, spec.width, square=square, activation=activation, dtype=dtype, device=device,
                 generator=generator)


BUILDERS["dense"] = _build_dense


def _build_conv(spec, *, name, in_shape, square, activation, dtype, device, generator) -> Layer:
    if spec.kernel is None or spec.stride is None:
        raise ConfigError(f"layer {name!r}: a conv layer needs kernel and stride, got kernel={spec.kernel}, "
                          f"stride={spec.stride}")
    return Conv(name, in_shape, spec.width, spec.kernel, spec.stride, square=square, activation=activation,
                dtype=dtype, device=device, generator=generator)


BUILDERS["conv"] = _build_conv

__all__ = ["BUILDERS", "Conv", "Dense", "InverseFactors", "Layer", "factorize"]
