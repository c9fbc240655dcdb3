"""Layer kinds, built by name from a :class:`~sim.network.LayerSpec` through :data:`BUILDERS`.

A builder has the signature ``(spec, *, name, in_shape, square, activation, dtype, device, generator) -> Layer``;
a new layer kind is one new module that adds itself here.
"""

from __future__ import annotations

from collections.abc import Callable

from sim.layers.base import InverseFactors, Layer, factorize
from sim.layers.dense import Dense

BUILDERS: dict[str, Callable[..., Layer]] = {}


def _build_dense(spec, *, name, in_shape, square, activation, dtype, device, generator) -> Layer:
    return Dense(name, in_shape, spec.width, square=square, activation=activation, dtype=dtype, device=device,
                 generator=generator)


BUILDERS["dense"] = _build_dense

__all__ = ["BUILDERS", "Dense", "InverseFactors", "Layer", "factorize"]
