"""Small builders shared by the tests (no fixtures with hidden state)."""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import torch

from sim import Network, Scheduler, get_rule, preset


def settings_for(rules, **changes) -> dict:
    """Reference settings of every named rule with ``changes`` applied (e.g. arithmetic='target')."""
    names = {rules} if isinstance(rules, str) else set(rules)
    return {r: replace(get_rule(r).defaults, **changes) for r in names}


def build(name: str, rules, *, dtype: str = "float64", seed: int = 0, **changes) -> Network:
    """A fresh network: a deep copy of a cached float64 build (orthogonal init of 1024-wide layers is slow on this
    CPU), cast to ``dtype``, with ``changes`` applied to every rule's settings. Init is done in float64 and cast
    in ``Network`` too, so this equals building the network directly."""
    key = (name, rules if isinstance(rules, str) else tuple(rules), seed)
    if key not in _CACHE:
        _CACHE[key] = Network(preset(name, rules, dtype="float64", seed=seed))
    net = copy.deepcopy(_CACHE[key]).to({"float32": torch.float32, "float64": torch.float64}[dtype])
    for rule in net.rules:
        rule.settings = replace(rule.settings, **changes)
    return net


_CACHE: dict = {}


def perturb(net: Network, scale: float, seed: int = 1) -> None:
    """Add ``scale / sqrt(fan_in)`` Gaussian noise to every weight (the reference table's 'small perturbation')."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in net.layers:
            w = layer.weight
            fan_in = math.prod(w.shape[1:])
            w.add_((torch.randn(w.shape, generator=g, dtype=torch.float64) * scale / math.sqrt(fan_in)).to(w.dtype))


def batch(net: Network, n: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, *net.config.input_shape), generator=g, dtype=torch.float64).to(net.dtype)
    y = torch.randint(0, net.classes, (n,), generator=g)
    return x, y


def scheduler(net: Network, **kw) -> Scheduler:
    return Scheduler(net, **kw)
