"""Live progress of a study: ``gaitsim status [results/<study>]`` (``python -m sim status``; docs/workflow.md).

One line per run: done / diverged / running / failed / not started, the epoch reached of the total, the last test
accuracy and mean angle to BP, the time spent and an estimate of the time left. Everything is read from what the runs
write anyway, and only read:

- a run's store (``run.zarr``, or ``run.zarr.partial`` while it trains under the workflow) through its consolidated
  metadata, the root ``zarr.json`` that each commit replaces in one atomic step, so a store is seen as of its last
  commit even while its writer is appending (a store caught mid-creation, or mid-resume, is "starting" or read
  again); no lock is taken and nothing is written, so a writer is never disturbed;
- whether the writer is alive: the store's ``writer_pid`` and ``writer_host`` attributes (sim.run.provenance) and
  ``os.kill(pid, 0)`` on the same host; on another host (a cluster node) a run whose last commit is older than
  three epochs (and ten minutes) is shown as ``stalled?``;
- a failed run's reason: the last ``error:`` line of its log (``logs/<study>/.../run.log``, or ``STORE.log``);
- the runs not started yet: the study's ``run_configs.json`` (written by the workflow's check_configs), else the
  study expanded from the workflow config (``config/config.yaml`` and the ``config/*.yaml`` defining the study, or
  the given ``--configfile`` files) by :mod:`sim.study`.

Imports neither torch nor the simulator's numerics.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

STORE, PARTIAL = "run.zarr", "run.zarr.partial"

#: the states, in the order the summary counts them
STATES = ("done", "diverged", "running", "starting", "stalled?", "failed", "not started", "unreadable")


@dataclass(frozen=True)
class RunStatus:
    """One run's progress as read from its store (None where nothing is recorded yet)."""

    run: str
    """The run's folder relative to the study folder, e.g. ``digits_deep/rule~gp/seed~0``."""
    state: str
    epoch: int = 0
    epochs: int | None = None
    test_top1: float | None = None
    angle: float | None = None
    """Mean angle to BP (degrees) over the layers and the measured steps of the last recorded epoch."""
    elapsed_s: float | None = None
    left_s: float | None = None
    note: str = ""


# ----- reading one store --------------------------------------------------------------------------------------------
def _open(path: Path):
    import zarr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return zarr.open_group(str(path), mode="r")


def _rows(group, name: str, last: int | None = None) -> np.ndarray:
    """The committed rows of array ``name`` (the last ``last`` of them), or an empty array."""
    if name not in group:
        return np.empty(0)
    arr = group[name]
    n = arr.shape[0]
    start = 0 if last is None else max(0, n - last)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(arr[start:n], dtype=float)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (signal 0 probes without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    except (OSError, OverflowError, ValueError):
        return False
    return True


def _seconds_since(iso: str | None) -> float | None:
    try:
        return max(0.0, time.time() - datetime.fromisoformat(iso).timestamp()) if iso else None
    except ValueError:
        return None


def read_store(path: Path, run: str, *, expected_epochs: int | None = None, now: float | None = None) -> RunStatus:
    """The status of the run whose store is ``path`` (``run.zarr`` or ``run.zarr.partial``)."""
    now = time.time() if now is None else now
    partial = path.name.endswith(".partial")
    try:
        group = _open(path)
        attrs = dict(group.attrs)
    except Exception:  # noqa: BLE001 - a store mid-creation has no zarr.json yet
        attrs = None
    if not attrs or "config" not in attrs:
        if partial:
            return RunStatus(run, "starting", epochs=expected_epochs)
        if path.is_dir() and not any(path.iterdir()):
            return RunStatus(run, "not started", epochs=expected_epochs, note=f"{path} is an empty folder")
        return RunStatus(run, "unreadable", epochs=expected_epochs, note=f"{path} holds no run store")
    try:
        epochs = int(json.loads(attrs["config"])["train"]["epochs"])
    except (ValueError, KeyError, TypeError):
        epochs = expected_epochs
    try:
        top1 = _rows(group, "test_top1")
        walls = _rows(group, "epoch_wall_s")
        chunk = group["angle"].chunks[0] if "angle" in group else 1
        angles = _rows(group, "angle", last=chunk)
    except Exception as exc:  # noqa: BLE001 - e.g. a chunk renamed away by a resume that cuts the store back
        return RunStatus(run, "running" if partial else "unreadable", epochs=epochs,
                         note=f"being rewritten ({type(exc).__name__}); look again")
    reached = int(top1.size)
    test_top1 = float(top1[-1]) if reached and math.isfinite(top1[-1]) else None
    angle = float(np.nanmean(angles)) if angles.size and np.isfinite(angles).any() else None
    spent = float(np.nansum(walls)) if walls.size else 0.0
    per_epoch = float(np.nanmean(walls)) if walls.size and np.isfinite(walls).any() else None
    try:
        since_commit = max(0.0, now - (path / "zarr.json").stat().st_mtime)
    except OSError:
        since_commit = 0.0
    common = dict(epoch=reached, epochs=epochs, test_top1=test_top1, angle=angle)

    if attrs.get("complete"):
        return RunStatus(run, "done", elapsed_s=spent, left_s=0.0, note="publishing" if partial else "", **common)
    if attrs.get("diverged"):
        return RunStatus(run, "diverged", elapsed_s=spent, note=str(attrs["diverged"]).splitlines()[0], **common)
    pid, host = attrs.get("writer_pid"), attrs.get("writer_host")
    if isinstance(pid, int) and host == socket.gethostname():
        alive = pid_alive(pid)
        state = "running" if alive else "failed"
    else:  # another host (or a store from before writer_pid): judge by the time since the last commit
        stale = since_commit > max(600.0, 3 * (per_epoch or 0.0))
        state = "stalled?" if stale else "running"
    if state == "running":
        left = None if per_epoch is None or epochs is None else max(0.0, per_epoch * (epochs - reached)
                                                                    - since_commit)
        return RunStatus(run, state, elapsed_s=spent + since_commit, left_s=left, **common)
    return RunStatus(run, state, elapsed_s=spent, **common)


# ----- a study ------------------------------------------------------------------------------------------------------
def expected_runs(study_dir: Path, configfiles: Iterable[str | Path] = ()) -> tuple[dict[str, int | None], str]:
    """``{run folder relative to study_dir: epochs}`` of the runs the study should have, and where that came from
    (``''`` when it could not be told: then only the stores found are listed)."""
    listing = study_dir / "run_configs.json"
    prefix = f"results/{study_dir.name}/"
    try:
        docs = json.loads(listing.read_text(encoding="utf-8"))
        return ({k.removeprefix(prefix): _epochs(v) for k, v in docs.items()}, str(listing))
    except (OSError, ValueError, AttributeError):
        pass
    try:
        config, repo, source = _workflow_config(study_dir, configfiles)
        if config is None:
            return {}, ""
        from sim.study import expand_study

        runs = expand_study(config, study_dir.name, repo, validate=False, note=lambda message: None)
        return ({r.folder.removeprefix(prefix): _epochs(r.config) for r in runs}, source)
    except Exception:  # noqa: BLE001 - a broken workflow config must not hide what the stores say
        return {}, ""


def _epochs(doc) -> int | None:
    try:
        return int(doc["train"]["epochs"])
    except (KeyError, TypeError, ValueError):
        return None


def _workflow_config(study_dir: Path, configfiles: Iterable[str | Path]) -> tuple[dict | None, Path, str]:
    """The workflow config defining the study: ``config/config.yaml`` of the workflow folder (the one above
    ``results/``, else the working directory) merged with ``configfiles``, or with the first ``config/*.yaml`` that
    defines the study."""
    from sim.config.overrides import deep_merge
    from sim.config.schema import read_yaml

    parents = study_dir.resolve().parents
    above = parents[1] if len(parents) > 1 else None  # the folder snakemake ran in, when the study is results/<study>
    repo = above if above is not None and (above / "config").is_dir() else Path.cwd()
    base_file = repo / "config" / "config.yaml"
    base = read_yaml(base_file) if base_file.is_file() else {}
    files = [Path(f) for f in configfiles]
    if not files:
        if study_dir.name in (base.get("studies") or {}):
            return base, repo, str(base_file)
        files = [f for f in sorted((repo / "config").glob("*.yaml"))
                 if study_dir.name in ((read_yaml(f) or {}).get("studies") or {})][:1]
    config = base
    for f in files:
        config = deep_merge(config, read_yaml(f))
    if study_dir.name not in (config.get("studies") or {}):
        return None, repo, ""
    return config, repo, " + ".join(str(f) for f in [base_file, *files])


#: how deep below a study folder run folders are looked for (<experiment>/<param>~<value>.../rule~<r>/seed~<s>)
MAX_DEPTH = 12


def _stores_on_disk(study_dir: Path) -> dict[str, Path]:
    """``{run folder: store}`` for every ``run.zarr`` (preferred) or ``run.zarr.partial`` under ``study_dir``."""
    found: dict[str, Path] = {}
    top = len(study_dir.parts)
    for root, dirs, _ in os.walk(study_dir):
        if len(Path(root).parts) - top >= MAX_DEPTH:  # runs sit a few folders down; never walk a whole disk
            dirs[:] = []
        here = [name for name in (STORE, PARTIAL) if name in dirs]
        if here:
            # a published store wins; an empty run.zarr (a folder a workflow made) does not hide a partial one
            published = STORE in here and (Path(root) / STORE / "zarr.json").exists()
            found[str(Path(root).relative_to(study_dir))] = Path(root) / (STORE if published else here[-1])
        dirs[:] = [d for d in dirs if not d.endswith((".zarr", ".partial")) and not d.startswith(".")
                   and d != "figures"]
    return found


def _failure_reason(study_dir: Path, run: str, store: Path) -> str:
    """The last ``error:`` line of the run's log, if any."""
    parents = study_dir.resolve().parents
    workdir = parents[1] if len(parents) > 1 else study_dir  # results/<study> -> the folder snakemake ran in
    logs = [workdir / "logs" / study_dir.name / run / "run.log",
            store.with_name(STORE + ".log"), store.with_name(store.name + ".log")]
    for log in logs:
        try:
            lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        for line in reversed(lines):
            if "error:" in line or "interrupted" in line:
                return line.split(" ", 3)[-1] if line[:4].isdigit() else line
        return f"no error in {log}: killed?"
    return ""


def study_status(study_dir: str | Path, configfiles: Iterable[str | Path] = ()) -> list[RunStatus]:
    """One :class:`RunStatus` per run of the study in ``study_dir`` (``results/<study>``): the expected runs in order,
    then any other store found under the folder."""
    study_dir = Path(study_dir)
    expected, _ = expected_runs(study_dir, configfiles)
    stores = _stores_on_disk(study_dir)
    out = []
    for run in [*sorted(expected), *sorted(set(stores) - set(expected))]:
        epochs = expected.get(run)
        store = stores.get(run)
        if store is None:
            out.append(RunStatus(run, "not started", epochs=epochs))
            continue
        status = read_store(store, run, expected_epochs=epochs)
        if status.state in ("failed", "stalled?"):
            status = RunStatus(**{**asdict(status), "note": _failure_reason(study_dir, run, store)})
        out.append(status)
    return out


# ----- the table ----------------------------------------------------------------------------------------------------
def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def format_table(study_dir: str | Path, rows: list[RunStatus]) -> str:
    """The status lines of a study, with a summary line first."""
    counts = {s: sum(r.state == s for r in rows) for s in STATES}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    lines = [f"{study_dir}: {len(rows)} runs: {summary or 'none found'}"]
    width = max([len(r.run) for r in rows] + [3])
    lines.append(f"  {'run':{width}s}  {'state':11s} {'epoch':>7s} {'test':>6s} {'angle':>7s} {'elapsed':>8s} "
                 f"{'left':>8s}")
    for r in rows:
        epoch = f"{r.epoch}/{r.epochs if r.epochs is not None else '?'}" if r.state != "not started" else \
            f"-/{r.epochs if r.epochs is not None else '?'}"
        test = f"{r.test_top1:.3f}" if r.test_top1 is not None else "-"
        angle = f"{r.angle:.2f}" if r.angle is not None else "-"
        left = _duration(r.left_s) if r.state in ("running", "done") else "-"
        line = (f"  {r.run:{width}s}  {r.state:11s} {epoch:>7s} {test:>6s} {angle:>7s} {_duration(r.elapsed_s):>8s} "
                f"{left:>8s}")
        lines.append(line + (f"  {r.note[:160]}" if r.note else ""))
    return "\n".join(lines)


def find_studies(results: Path = Path("results")) -> list[Path]:
    """The study folders under ``results/``: those with a run_configs.json or any run store."""
    if not results.is_dir():
        return []
    return [d for d in sorted(results.iterdir()) if d.is_dir() and ((d / "run_configs.json").is_file()
                                                                     or _stores_on_disk(d))]
