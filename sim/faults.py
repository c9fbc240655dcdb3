"""Fault hooks: deterministic crashes and write failures at named places of a run (docs/reliability.md).

The reliability tests kill ``python -m sim run`` at many moments and check that ``--resume`` always ends with the
archive an uninterrupted run writes. Timer-based kills land wherever they land; these hooks make the interesting
moments (half an archive append, a checkpoint written but not yet renamed, a resume half done) hit every time::

    GAITSIM_FAULT=checkpoint.rotate:2 python -m sim run run.yaml --out run.zarr       # SIGKILL at the 2nd rotation
    GAITSIM_FAULT=archive.append:40:enospc python -m sim run ...                       # "disk full" at the 40th append

``GAITSIM_FAULT`` is a comma-separated list of ``SITE:N[:ACTION]``: the ``N``-th call (1-based, counted per process)
of :func:`hit` with that site performs ``ACTION``: ``kill`` (the default; ``SIGKILL`` to this process, so nothing
is flushed or cleaned up), ``enospc``, ``erofs`` or ``eio`` (raise the ``OSError`` a full disk, a read-only file
system or a failing disk raises there). The variable is read once, when this module is imported; unset, :func:`hit`
returns at its first test, so the hooks cost nothing in real runs.
"""

from __future__ import annotations

import errno
import os
import signal

ENV = "GAITSIM_FAULT"

#: every site a hook sits at, and the moment it marks
SITES: dict[str, str] = {
    "train.step": "after each training step's update (nothing written since the last commit)",
    "train.epoch": "after an epoch's archive commit, before its checkpoint",
    "archive.create": "after each array of a new store is created",
    "archive.append": "after an array was resized for new rows, before the rows are written",
    "archive.commit": "after the consolidated metadata (the commit point) is rewritten, before new attributes",
    "archive.truncate": "after each array is cut back on resume",
    "archive.remove": "after an old store was renamed aside for deletion (--overwrite), before it is deleted",
    "checkpoint.write": "after a checkpoint's bytes went to its temp file, before fsync and rename",
    "checkpoint.manifest": "before the checksum manifest is rewritten",
    "checkpoint.rotate": "after last.pt became prev.pt, before the new checkpoint becomes last.pt",
}

_ERRORS = {"enospc": (errno.ENOSPC, "No space left on device"), "erofs": (errno.EROFS, "Read-only file system"),
           "eio": (errno.EIO, "Input/output error")}
ACTIONS = ("kill", *_ERRORS)

_plan: dict[str, tuple[int, str]] | None = None
_counts: dict[str, int] = {}


def parse(spec: str | None) -> dict[str, tuple[int, str]] | None:
    """``'site:n[:action],...'`` as ``{site: (n, action)}``; None for an empty spec. Raises ValueError."""
    if not spec or not spec.strip():
        return None
    plan = {}
    for item in spec.split(","):
        parts = item.strip().split(":")
        if len(parts) not in (2, 3) or not parts[1].isdigit() or int(parts[1]) < 1:
            raise ValueError(f"{ENV}: {item!r} is not SITE:N[:ACTION] with N >= 1")
        site, n, action = parts[0], int(parts[1]), parts[2] if len(parts) == 3 else "kill"
        if site not in SITES:
            raise ValueError(f"{ENV}: unknown site {site!r}; sites: {', '.join(SITES)}")
        if action not in ACTIONS:
            raise ValueError(f"{ENV}: unknown action {action!r}; actions: {', '.join(ACTIONS)}")
        plan[site] = (n, action)
    return plan


def arm(spec: str | None, *, count: bool = False) -> None:
    """Replace this process's plan by ``spec`` (the syntax of ``GAITSIM_FAULT``; None disarms) and reset the counts;
    ``count``: count the hits of every site even without a fault planned (see :func:`counts`).

    For test harnesses that start runs in forked processes, where the variable was read before the fork."""
    global _plan
    _plan = parse(spec)
    if _plan is None and count:
        _plan = {}
    _counts.clear()


def counts() -> dict[str, int]:
    """How often each site was hit since the plan was armed (only counted while a plan is armed)."""
    return dict(_counts)


def hit(site: str) -> None:
    """Mark that the run reached ``site``; performs the planned fault if this is its ``N``-th hit."""
    if _plan is None:
        return
    n = _counts[site] = _counts.get(site, 0) + 1
    planned = _plan.get(site)
    if planned is None or planned[0] != n:
        return
    action = planned[1]
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    code, message = _ERRORS[action]
    raise OSError(code, f"{message} (injected by {ENV} at {site}:{n})")


arm(os.environ.get(ENV))
