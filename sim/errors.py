"""Errors a user can act on.

Every error raised for bad input derives from :class:`GaitsimError`, so the CLI can print its message (which names
the problem and what to do) instead of a traceback from deep inside torch.
"""

from __future__ import annotations


class GaitsimError(Exception):
    """Base class for every error a user can fix."""


class ConfigError(GaitsimError, ValueError):
    """A configuration value is missing, misspelled or out of range; the message names the key."""


class ShapeError(GaitsimError, ValueError):
    """Layer widths, kernels or inputs that do not fit together."""


class DataError(GaitsimError, ValueError):
    """A data folder or file that is missing, empty or malformed; the message names the path."""


class SingularLayerError(GaitsimError, ArithmeticError):
    """A square layer that cannot be inverted reliably; the message names the layer and its condition number."""


class NonFiniteError(GaitsimError, ArithmeticError):
    """A NaN or Inf in activities, messages, updates or the loss; the message names step, layer and quantity."""

    def __init__(self, message: str, *, step: int | None = None, layer: str | None = None,
                 quantity: str | None = None) -> None:
        super().__init__(message)
        self.step = step
        self.layer = layer
        self.quantity = quantity
