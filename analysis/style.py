"""One look for every figure: a colour and a marker per rule, line styles that carry meaning, and one save function.

Colours come from the rule registry's order (:func:`sim.rules.registry.specs`, torch-free: the built-in catalogue
bp, fa, vgp, gp, then the zoo, then plugins): the i-th registered rule gets ``PALETTE[i]`` and ``MARKERS[i]``, so
every rule looks the same in every figure of every study, and a
rule registered later gets the next free colour without any edit here. A name the registry does not know (a
mixture such as ``fa+gp``, a rule of an older or newer version) gets a colour and marker from a hash of its name:
stable across runs and figures, never shared by accident with a registered rule's.

Line styles are reserved for meaning, not for rules: solid for test accuracy and finished runs, dashed for train
accuracy, dotted (and a label suffix) for runs that are not finished yet (:data:`UNFINISHED`).
"""

from __future__ import annotations

import zlib
from functools import lru_cache
from pathlib import Path

from matplotlib.figure import Figure

#: colours of the registered rules, in registry order (bp, fa, vgp, gp, the zoo, then rules added later)
PALETTE = ("#222222", "#e07b00", "#1f77b4", "#8a4fbf", "#2ca02c", "#d62728", "#17becf", "#bcbd22", "#8c564b",
           "#e377c2", "#393b79", "#637939")
#: colours of names the registry does not know (mixtures, other versions' rules), picked by a hash of the name
EXTRA_COLORS = ("#7f7f7f", "#9edae5", "#c49c94", "#f7b6d2", "#dbdb8d", "#aec7e8", "#ffbb78", "#98df8a")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
#: how a run that has not finished is drawn: dotted, semi-transparent, its label suffixed by its progress
UNFINISHED = {"ls": ":", "alpha": 0.75}
#: the formats :func:`save` writes, by file suffix
FORMATS = ("png", "pdf", "svg")


@lru_cache(maxsize=1)
def registered_rules() -> tuple[str, ...]:
    """The rule names of the registry, in its order (no torch import)."""
    from sim.rules.registry import specs

    return tuple(specs())


def rule_index(rule: str) -> int | None:
    """The rule's position in the registry, or None for a name it does not know."""
    rules = registered_rules()
    return rules.index(rule) if rule in rules else None


def rule_key(rule: str) -> tuple:
    """Sort key: registered rules in registry order, then every other name alphabetically."""
    i = rule_index(rule)
    return (0, i, "") if i is not None else (1, 0, rule)


def _hash(rule: str) -> int:
    return zlib.crc32(rule.encode())


def rule_color(rule: str) -> str:
    """The rule's colour in every figure."""
    i = rule_index(rule)
    if i is not None and i < len(PALETTE):
        return PALETTE[i]
    return EXTRA_COLORS[_hash(rule) % len(EXTRA_COLORS)]


def rule_marker(rule: str) -> str:
    """The rule's marker in every figure."""
    i = rule_index(rule)
    return MARKERS[i % len(MARKERS)] if i is not None else MARKERS[_hash(rule) % len(MARKERS)]


def rule_style(rule: str) -> dict:
    """Matplotlib keyword arguments for the rule's line: colour, marker, and a z-order that draws later registry
    entries on top (vGP over GP, with which it often coincides; both stay visible by their markers)."""
    i = rule_index(rule)
    return {"color": rule_color(rule), "marker": rule_marker(rule), "zorder": 2 + (i if i is not None else 0) * 0.01}


def save(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write ``fig`` in the format its suffix names (``.png``, ``.pdf``, ``.svg``; through matplotlib's non-interactive
    backends, no display needed); the folder is created. A suffix of another format is a ValueError."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise ValueError(f"{path}: cannot save a figure as {path.suffix or 'a file without a suffix'!r}; "
                         f"use one of {', '.join('.' + f for f in FORMATS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"Creator": "gaitsim analysis"} if fmt in ("png", "svg", "pdf") else None
    fig.savefig(path, dpi=dpi, format=fmt, metadata=metadata)
    return path
