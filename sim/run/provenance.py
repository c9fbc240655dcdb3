"""Provenance of a run: what goes into a new store's attributes besides its config (docs/runs.md, "Archive").

The git commit of the package source, the versions of the package, torch, numpy and Python, the config's hash
(``config_sha256``: SHA-256 of the canonical config JSON, the ``config`` attribute), the device and dtype, and the
start and end times (UTC, ISO 8601, seconds), so that a store says which code on which machine wrote it. The process
writing the store (``writer_pid`` on ``writer_host``, renewed on resume) lets ``gaitsim status`` tell a running run
from one whose writer is gone, without taking any lock.
"""

from __future__ import annotations

import hashlib
import os
import platform
import socket
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


def config_hash(config_json: str) -> str:
    """SHA-256 (hex) of a config's canonical JSON (:meth:`RunConfig.to_json`, sorted keys)."""
    return hashlib.sha256(config_json.encode("utf-8")).hexdigest()


def writer_attrs() -> dict[str, object]:
    """The process now writing the store: ``writer_pid`` and ``writer_host`` (read by ``gaitsim status``)."""
    return {"writer_pid": os.getpid(), "writer_host": socket.gethostname()}


def start_attrs(cfg: RunConfig, device: torch.device, world_size: int = 1) -> dict[str, object]:
    """The attributes of a new run store: config and its hash, versions, git commit, device, dtype, the writing
    process, the number of processes training the run (``world_size``: 1, or a data-parallel run's; not part of the
    config, so a run resumed with another number is the same run), start time (end time empty until the run
    completes)."""
    config = cfg.to_json()
    return {
        "name": cfg.name, "config": config, "config_sha256": config_hash(config), "gaitsim_version": sim.__version__,
        "git_commit": git_commit(), "torch_version": torch.__version__, "numpy_version": np.__version__,
        "python_version": platform.python_version(), "device": str(device), "dtype": cfg.train.dtype,
        "world_size": world_size, **writer_attrs(), "start_time": now(), "end_time": "",
    }
