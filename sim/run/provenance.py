"""Provenance of a run: what goes into a new store's attributes besides its config (docs/runs.md, "Archive").

The git commit of the package source, the versions of the package, torch, numpy and Python, the device and dtype, and
the start and end times (UTC, ISO 8601, seconds), so that a store says which code on which machine wrote it.
"""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

import sim
from sim.config import RunConfig


def git_commit() -> str:
    """The git commit of the package source (with ``-dirty`` if ``sim/`` has uncommitted changes or untracked files),
    or 'unknown' outside a git checkout. Read-only git commands only."""
    src = Path(sim.__file__).resolve().parent
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}  # read-only: never refresh the index
    try:
        head = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, env=env)
        if head.returncode != 0:
            return "unknown"
        diff = subprocess.run(["git", "-C", str(src), "diff", "--quiet", "HEAD", "--", "."], capture_output=True,
                              timeout=10, env=env)
        untracked = subprocess.run(["git", "-C", str(src), "ls-files", "--others", "--exclude-standard", "--", "."],
                                   capture_output=True, text=True, timeout=10, env=env)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    dirty = diff.returncode == 1 or bool(untracked.stdout.strip())
    return head.stdout.strip() + ("-dirty" if dirty else "")


def now() -> str:
    """The current UTC time as ISO 8601 to the second (``start_time`` and ``end_time``)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def start_attrs(cfg: RunConfig, device: torch.device) -> dict[str, str]:
    """The attributes of a new run store: config, versions, git commit, device, dtype, start time (end time empty
    until the run completes)."""
    return {
        "name": cfg.name, "config": cfg.to_json(), "gaitsim_version": sim.__version__,
        "git_commit": git_commit(), "torch_version": torch.__version__, "numpy_version": np.__version__,
        "python_version": platform.python_version(), "device": str(device), "dtype": cfg.train.dtype,
        "start_time": now(), "end_time": "",
    }
