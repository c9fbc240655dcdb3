"""Plasticity rules, one file each, looked up by name from :data:`RULES`."""

from sim.rules import bp, fa, gp, vgp  # noqa: F401  (registration side effect)
from sim.rules.base import RULES, Rule, RuleSettings, get_rule, register

__all__ = ["RULES", "Rule", "RuleSettings", "get_rule", "register"]
