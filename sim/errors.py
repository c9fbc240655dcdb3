"""Errors a user can act on.

Every error raised for bad input derives from :class:`GaitsimError`, so the CLI can print its message (which names
the problem and what to do) instead of a traceback from deep inside torch.
"""

from __future__ import annotations


class GaitsimError(Exception):
    """Base class for every error a user can fix."""

    layer_index: int | None = None
    """The index (bottom to top, output last) of the layer being built when the error was raised, when known;
    set by :class:`sim.network.Network`, read by the config loader to name the config key."""
    reported_elsewhere: bool = False
    """Set on the processes of a data-parallel run but rank 0 for an error all of them raise together
    (:meth:`sim.distributed.Group.agree`): rank 0 prints it, the others end with status 2 without repeating it."""


class ConfigError(GaitsimError, ValueError):
    """A configuration value is missing, misspelled or out of range; the message names the key, and so does
    :attr:`key`, so that callers never re-parse the message."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key
        """The key path of the (first) problem, e.g. ``settings.gp.lr`` or ``studies.quick.experiments.e.run``;
        None when the problem is not one key's (an unreadable file, a document that is not a mapping)."""

    @classmethod
    def at(cls, key: str, problem: str) -> ConfigError:
        """The error ``'<key>: <problem>'`` with :attr:`key` set."""
        return cls(f"{key}: {problem}", key=key)


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


class DistributedError(GaitsimError, RuntimeError):
    """A data-parallel run that cannot go on together: a process cannot join it (launch settings, device, backend),
    was lost (killed, crashed) or failed; the message names the process and what to do."""


class Stopped(KeyboardInterrupt):
    """A run stopped by a signal (``SIGTERM``: a scheduler's pre-emption or ``kill``; ``SIGHUP``: the terminal
    closed), raised by the handler ``python -m sim run`` installs, so the run unwinds as on Ctrl-C: the log gets a
    line naming the signal and the command line says how to resume."""

    def __init__(self, signum: int) -> None:
        import signal

        self.signum = int(signum)
        self.signame = signal.Signals(signum).name
        super().__init__(self.signame)
