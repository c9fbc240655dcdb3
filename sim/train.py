"""Train one run: the function behind ``python -m sim run`` and the Snakemake training job (docs/runs.md).

    from sim.train import run
    run("configs/digits_deep_gp.yaml", "results/digits_deep_gp.zarr")

Per epoch ``e`` (1-based): the train split in the order fixed by ``(train.seed, e)``, one
:meth:`Scheduler.train_step` per batch (REFERENCE.md section 2); at steps ``0, n, 2n, ...`` (``record.angle_every``)
the step is computed once by :func:`sim.compare`, which adds BP's gradient on the same batch, and then applied, so
measuring costs one BP pass and never changes the trajectory. Per-step losses stay on the device in a preallocated
tensor and reach the host once per epoch. After the epoch: accuracy and loss on both whole splits, the square
layers' orthogonality errors, the probe batch at the chosen epochs, one archive commit, and a checkpoint every
``record.checkpoint_every`` epochs and after the last.

Failure modes (docs/reliability.md): anything a config can get wrong is refused before the network or data are
touched (ConfigError); a NaN/Inf (or a singular GP layer) stops the run after the archive prefix and a checkpoint of
the last good state are written, naming step, layer and quantity, or, with ``train.on_nonfinite: retry``, goes back
to the last checkpoint with the learning rates scaled by ``train.retry_lr_factor`` (at most ``train.max_retries``
times); an unwritable output becomes an ArchiveError naming the path. A killed run resumes from its newest intact
checkpoint whose archive rows are intact (damaged files are named and passed over), so ``--resume`` after a kill at
any moment ends with the archive an uninterrupted run writes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import sim
from sim import checkpoint as ckpt_io
from sim import faults, metrics
from sim.archive import ArchiveError, LayerInfo, RunArchive, io_errors, read_attrs, remove_store
from sim.config import RunConfig, build_network, build_scheduler, load_config
from sim.correspondence import compare
from sim.errors import ConfigError, DataError, GaitsimError, NonFiniteError, SingularLayerError
from sim.network import Network
from sim.schedule import Scheduler

log = logging.getLogger("sim.run")


def default_log_path(out: Path | str) -> Path:
    """The log file of the run store ``out`` when none is given: ``<out>.log`` beside the store (it survives a
    deleted or overwritten store, and Snakemake's removal of a failed job's output)."""
    out = Path(out)
    return out.with_name(out.name + ".log")


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


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _flat(d: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flat(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def _check_same_config(stored_json: str, cfg: RunConfig, out: Path) -> None:
    """Refuse to resume a store written with another config (the device may differ)."""
    old = _flat(json.loads(stored_json))
    new = _flat(json.loads(cfg.to_json()))
    diffs = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
             if k != "train.device" and old.get(k) != new.get(k)]
    if diffs:
        raise ConfigError(f"cannot resume {out}: it was started with a different config ({'; '.join(diffs[:8])}"
                          f"{'; ...' if len(diffs) > 8 else ''}); resume with the same config or pass --overwrite")


# ----- logging ------------------------------------------------------------------------------------------------------
class _TqdmHandler(logging.Handler):
    """Writes log lines to stderr through ``tqdm.write`` so they do not break the progress bar. The error that ends
    a run goes to the log file only: the command line prints it (once) itself."""

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "final", False):
            return
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never kill a run
            self.handleError(record)


def _open_log(path: Path, append: bool, to_stderr: bool) -> list[logging.Handler]:
    with io_errors(path, "write the log file"):
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, mode="a" if append else "w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handlers: list[logging.Handler] = [handler]
    if to_stderr:
        console = _TqdmHandler()
        console.setFormatter(logging.Formatter("%(message)s"))
        handlers.append(console)
    log.setLevel(logging.INFO)
    log.propagate = False
    for h in handlers:
        log.addHandler(h)
    return handlers


# ----- data ---------------------------------------------------------------------------------------------------------
def _load_data(cfg: RunConfig, net: Network):
    from sim.data import TensorImageDataset, iterate_batches, load_split

    spec = cfg.data.spec()
    train = load_split(spec, "train", seed=cfg.train.seed)
    test = load_split(spec, "test", seed=cfg.train.seed)
    where = spec.path or spec.kind
    if tuple(train.input_shape) != tuple(net.config.input_shape):
        raise ConfigError(f"the data ({where}) has images of shape {tuple(train.input_shape)} (C, H, W) but the "
                          f"network reads {tuple(net.config.input_shape)}; set data.image_size or the network's "
                          f"image_size/input_shape so they agree")
    if train.classes != net.classes:
        raise ConfigError(f"the data ({where}) has {train.classes} classes but the network has {net.classes}; "
                          f"set network.classes: {train.classes}")
    for split, ds in (("train", train), ("test", test)):
        if len(ds) == 0:
            raise DataError(f"the {split} split of {where} is empty")
    if cfg.record.probe_size > len(test):
        raise ConfigError(f"record.probe_size: {cfg.record.probe_size} is larger than the test split "
                          f"({len(test)} samples)")
    if net.device.type != "cpu" and isinstance(train, TensorImageDataset):
        train, test = train.to(net.device), test.to(net.device)  # gather batches where they are used
    probe = None
    if cfg.record.probe_size:
        x, y = next(iter(iterate_batches(test, cfg.record.probe_size, seed=0, epoch=0, shuffle=False)))
        probe = (x.to(device=net.device, dtype=net.dtype), y.to(net.device))
    return train, test, probe


# ----- the run ------------------------------------------------------------------------------------------------------
class _StepFailure(Exception):
    """A step of epoch ``epoch`` failed (NaN/Inf, singular layer): what :func:`_run` stops or retries on.

    ``batch`` is the failing batch; ``start`` the epoch's first batch trained in this pass; ``unchecked``: found only
    at the end of the epoch (``train.check_numerics`` off), so the epoch's steps up to ``batch`` were all taken."""

    def __init__(self, error: GaitsimError, epoch: int, start: int, batch: int, unchecked: bool = False) -> None:
        super().__init__(str(error))
        self.error, self.epoch, self.start, self.batch, self.unchecked = error, epoch, start, batch, unchecked


@torch.no_grad()
def _trace_nonfinite(net: Network, x: torch.Tensor) -> tuple[str, str] | None:
    """Where a non-finite value first appears on batch ``x``: a layer's weight or bias, the input, or a layer's
    activity (forward pass without noise); None if nothing is (the fault did not repeat)."""
    for layer in net.layers:
        for kind in ("weight", "bias"):
            if not bool(torch.isfinite(getattr(layer, kind)).all()):
                return layer.name, kind
    if not bool(torch.isfinite(x).all()):
        return net.names[0], "input"
    h = x
    for layer in net.layers:
        a = layer(h)
        if not bool(torch.isfinite(a).all()):
            return layer.name, "activity"
        h = layer.read(a)
    return None


class _Run:
    """The state of one training run between epochs: network, scheduler, data, archive, position."""

    def __init__(self, cfg: RunConfig, out: Path, net: Network, sched: Scheduler, train, test, probe,
                 archive: RunArchive) -> None:
        from sim.data import count_batches

        self.cfg, self.out, self.net, self.sched = cfg, out, net, sched
        self.train_ds, self.test_ds, self.probe_batch = train, test, probe
        self.archive = archive
        self.retries: list[dict] = []  # non-finite retries so far (train.on_nonfinite: retry)
        self.steps_per_epoch = count_batches(train, cfg.train.batch_size, cfg.train.drop_last)
        n, depth = self.steps_per_epoch, len(net.layers)
        # per-epoch buffers, allocated once: losses stay on the device until the epoch is flushed
        self.losses = torch.zeros(n, dtype=net.dtype, device=net.device)
        self.batch_sizes = np.zeros(n, dtype=np.int64)
        self.angles = np.full((n, depth), np.nan)
        self.last_test_top1 = math.nan
        self.last_angle = math.nan

    # ----- recording ----------------------------------------------------------------------------------------------
    def record_probe(self, epoch: int) -> None:
        if self.probe_batch is None:
            return
        acts, targets = metrics.probe(self.net, *self.probe_batch, step=self.sched.step_count,
                                      check=self.cfg.train.check_numerics)
        self.archive.append_probe(epoch, self.sched.step_count, [a.cpu().numpy() for a in acts],
                                  [t.cpu().numpy() for t in targets])

    def flush_steps(self, epoch: int, start: int, end: int) -> None:
        """Append the steps of batches ``start .. end-1`` of ``epoch`` to the archive (not yet committed)."""
        if end <= start:
            return
        sums = self.losses[start:end].double().cpu().numpy()
        sizes = self.batch_sizes[start:end]
        first = self.sched.step_count - (end - start)
        self.archive.append_steps(first_step=first, epoch=epoch, loss=sums / sizes, batch_size=sizes,
                                  angle=self.angles[start:end])

    def save_checkpoint(self, epochs_done: int, batches_done: int, reason: str) -> Path:
        state = ckpt_io.Checkpoint(
            config_json=self.cfg.to_json(), epochs_done=epochs_done, batches_done=batches_done,
            step=self.sched.step_count, lengths=self.archive.lengths, network=self.net.state_dict(),
            scheduler=self.sched.state_dict(), torch_rng=torch.get_rng_state(),
            numpy_rng=ckpt_io.numpy_rng_state(), reason=reason, digests=self.archive.digests,
            retries=self.retries)
        return ckpt_io.save(self.out, state)

    def restore(self, checkpoint: ckpt_io.Checkpoint) -> None:
        """Take the network, scheduler and RNG states and the retries of ``checkpoint``."""
        self.net.load_state_dict(checkpoint.network)
        self.sched.load_state_dict(checkpoint.scheduler)
        torch.set_rng_state(checkpoint.torch_rng)
        ckpt_io.set_numpy_rng_state(checkpoint.numpy_rng)
        self.retries = list(checkpoint.retries)

    # ----- one epoch ----------------------------------------------------------------------------------------------
    def epoch(self, epoch: int, start: int, bar: tqdm | None) -> None:
        """Train epoch ``epoch`` from its batch ``start``, evaluate, record, commit, and checkpoint when due.

        Raises :class:`_StepFailure` (nothing of this epoch written yet) when a step meets a NaN/Inf or a singular
        layer."""
        from sim.data import iterate_batches

        cfg, net, sched = self.cfg, self.net, self.sched
        every = cfg.record.angle_every
        t0 = time.perf_counter()
        self.angles.fill(np.nan)
        batches = iterate_batches(self.train_ds, cfg.train.batch_size, seed=cfg.train.seed, epoch=epoch,
                                  drop_last=cfg.train.drop_last, num_workers=cfg.train.num_workers,
                                  start_batch=start)
        i = start
        last_postfix = 0.0
        x = None
        # a failed step has drawn its noise already: keep the generator's state before each step, so that the
        # failure checkpoint is the exact state before the failing step (only when there is noise to draw)
        noisy = any(s > 0 for s in (*sched.message_std, *sched.activity_std))
        before = None
        try:
            for i, (x, y) in enumerate(batches, start=start):
                x = x.to(device=net.device, dtype=net.dtype, non_blocking=True)
                y = y.to(device=net.device, non_blocking=True)
                if noisy:
                    before = sched.generator.get_state()
                if every and sched.step_count % every == 0:
                    corr = compare(sched, x, y)
                    sched.apply(corr.result)
                    self.angles[i] = corr.angle_deg
                    self.last_angle = float(np.nanmean(corr.angle_deg)) if any(map(math.isfinite, corr.angle_deg)) \
                        else math.nan
                    result = corr.result
                else:
                    result = sched.train_step(x, y)
                self.losses[i] = result.loss  # a device-side copy: no host sync per step
                self.batch_sizes[i] = x.shape[0]
                faults.hit("train.step")
                if bar is not None:
                    now = time.monotonic()
                    if now - last_postfix >= 1.0:  # one host sync per second at most
                        last_postfix = now
                        bar.set_postfix(loss=f"{self.losses[i].item() / x.shape[0]:.4f}",
                                        acc=f"{self.last_test_top1:.3f}", angle=f"{self.last_angle:.2f}",
                                        refresh=False)
                    bar.update(1)
        except (NonFiniteError, SingularLayerError) as exc:
            # the weights are untouched by the failed step; its noise is put back
            if before is not None:
                sched.generator.set_state(before)
            if isinstance(exc, NonFiniteError) and exc.quantity == "loss" and x is not None:
                exc = self._traced(exc, x)
            raise _StepFailure(exc, epoch, start, i) from exc
        end = self.steps_per_epoch
        if not cfg.train.check_numerics:
            sums = self.losses[start:end]
            if not bool(torch.isfinite(sums).all()):  # one host sync per epoch
                bad = int(torch.nonzero(~torch.isfinite(sums))[0, 0])
                step = sched.step_count - (end - start) + bad
                raise _StepFailure(NonFiniteError(
                    f"non-finite loss at step {step} in layer {net.names[-1]!r} (epoch {epoch}); "
                    "train.check_numerics is off, so this was noticed only at the end of the epoch",
                    step=step, layer=net.names[-1], quantity="loss"), epoch, start, end, unchecked=True)
        self.flush_steps(epoch, start, end)

        loader = dict(seed=0, epoch=0, shuffle=False, num_workers=cfg.train.num_workers)
        m_train = metrics.evaluate(net, iterate_batches(self.train_ds, cfg.train.eval_batch_size, **loader))
        m_test = metrics.evaluate(net, iterate_batches(self.test_ds, cfg.train.eval_batch_size, **loader))
        ortho = metrics.ortho_errors(net)
        if epoch in cfg.record.probe_epochs:
            self.record_probe(epoch)
        wall = time.perf_counter() - t0
        self.archive.append_epoch(epoch, {
            "train_top1": m_train.top1, "train_top5": m_train.top5, "test_top1": m_test.top1,
            "test_top5": m_test.top5, "train_loss": m_train.loss, "test_loss": m_test.loss, "epoch_wall_s": wall,
        }, ortho)
        self.archive.commit()
        faults.hit("train.epoch")
        self.last_test_top1 = m_test.top1
        measured = self.angles[start:end]
        mean_angle = float(np.nanmean(measured)) if np.isfinite(measured).any() else math.nan
        log.info(f"epoch {epoch}/{cfg.train.epochs}: train top1 {m_train.top1:.4f} loss {m_train.loss:.4f} | "
                 f"test top1 {m_test.top1:.4f} top5 {m_test.top5:.4f} loss {m_test.loss:.4f} | "
                 f"mean angle {mean_angle:.2f} deg | {wall:.1f} s")
        every_ck = cfg.record.checkpoint_every
        if epoch == cfg.train.epochs or (every_ck and epoch % every_ck == 0):
            self.save_checkpoint(epoch, 0, "final" if epoch == cfg.train.epochs else "scheduled")
        if bar is not None:
            bar.set_postfix(loss=f"{m_train.loss:.4f}", acc=f"{m_test.top1:.3f}", angle=f"{self.last_angle:.2f}")

    def _traced(self, exc: NonFiniteError, x: torch.Tensor) -> NonFiniteError:
        """A non-finite loss, with the layer and quantity where the non-finite values start (when they repeat)."""
        origin = _trace_nonfinite(self.net, x)
        if origin is None or origin == (exc.layer, exc.quantity):
            return exc
        layer, quantity = origin
        return NonFiniteError(f"{exc}; traced back to the {quantity} of layer {layer!r}, where the non-finite "
                              "values start", step=exc.step, layer=layer, quantity=quantity)

    # ----- after a failed step ------------------------------------------------------------------------------------
    def stop(self, failure: _StepFailure) -> None:
        """Keep what can be kept and raise the failure with the step, layer and what was saved."""
        exc, epoch, start, i = failure.error, failure.epoch, failure.start, failure.batch
        retried = (f" after {len(self.retries)} retr{'y' if len(self.retries) == 1 else 'ies'} with lower learning "
                   "rates (train.max_retries)") if self.retries else ""
        if failure.unchecked:
            self.flush_steps(failure.epoch, start, i)
            self.archive.commit()
            raise NonFiniteError(
                f"{exc}{retried}, and the state before it was not kept. The archive {self.out} holds the steps so "
                "far; the last checkpoint (if any) is from an earlier epoch. Turn check_numerics on to stop at the "
                "first NaN/Inf with its layer named.", step=exc.step, layer=exc.layer, quantity=exc.quantity)
        self.flush_steps(epoch, start, i)
        self.archive.commit()
        path = self.save_checkpoint(epoch - 1, i, "failure")
        step = self.sched.step_count
        what = str(exc).rstrip(".")
        layer = getattr(exc, "layer", None)
        if layer and repr(layer) not in what:
            what = f"{what} (layer {layer!r}, {getattr(exc, 'quantity', None) or 'value'})"
        held = f"steps 0..{step - 1}" if step else "no steps"
        msg = (f"{what}. The run stopped at step {step} (epoch {epoch}, batch {i}){retried}: the archive {self.out} "
               f"holds {held} (complete = false) and {path} holds the state before step {step}.")
        if isinstance(exc, NonFiniteError):
            raise NonFiniteError(msg, step=exc.step, layer=exc.layer, quantity=exc.quantity) from exc
        raise SingularLayerError(msg) from exc

    def can_retry(self) -> bool:
        return self.cfg.train.on_nonfinite == "retry" and len(self.retries) < self.cfg.train.max_retries

    def retry(self, failure: _StepFailure) -> tuple[int, int]:
        """Go back to the newest intact checkpoint, scale every learning rate by ``train.retry_lr_factor`` once
        more, cut the archive back; returns the position ``(epochs_done, batches_done)`` to continue from."""
        exc = failure.error
        checkpoint = ckpt_io.load(self.out)
        if checkpoint is None:  # cannot happen: a retrying run writes a checkpoint before its first step
            raise exc
        step = getattr(exc, "step", None)
        step = self.sched.step_count if step is None else step
        retries = [*self.retries, {"step": int(step), "from_step": checkpoint.step,
                                   "lr_factor": self.cfg.train.retry_lr_factor, "error": str(exc)[:300]}]
        self.restore(checkpoint)
        self.retries = retries
        scale = self.cfg.train.retry_lr_factor ** len(retries)
        for group, rule in zip(self.sched.optimizer.param_groups, self.net.rules):
            group["lr"] = rule.settings.lr * scale
        self.archive.set_digests(checkpoint.digests)
        self.archive.truncate(checkpoint.lengths)
        self.archive.commit(retries=json.dumps(retries))
        log.warning(f"{exc}. Retry {len(retries)}/{self.cfg.train.max_retries}: back to step {checkpoint.step} "
                    f"({checkpoint.path}) with the learning rates scaled by {scale:g}")
        return checkpoint.epochs_done, checkpoint.batches_done


def run(cfg: RunConfig | dict | str | Path, out: str | Path, *, resume: bool = False, overwrite: bool = False,
        device: str | None = None, progress: bool = True, log_file: str | Path | None = None) -> Path:
    """Train one run and write its zarr store at ``out``; returns ``out`` as a Path.

    Args:
        cfg: a :class:`RunConfig`, or what :func:`sim.config.load_config` takes (YAML path or dict).
        out: the zarr store (a folder). An existing store is refused unless ``resume`` or ``overwrite``.
        resume: continue from the store's newest intact checkpoint whose archive rows are intact (the archive is cut
            back to it, so the result equals an uninterrupted run's); a complete store is checked and left as it is;
            a store without a checkpoint starts over.
        overwrite: replace an existing run store (only a gaitsim run store is ever deleted).
        device: override ``train.device`` ('cpu', 'cuda', 'cuda:N').
        progress: show a progress bar and per-epoch lines on stderr; False logs only to the file.
        log_file: the log file (default ``<out>.log``, appended to on resume).
    """
    if not isinstance(cfg, RunConfig):
        cfg = load_config(cfg)
    if device is not None:
        cfg = cfg.with_device(device)
    if resume and overwrite:
        raise ConfigError("pass either --resume or --overwrite, not both")
    cfg.data.spec()  # e.g. data.path still null: refuse before anything is built
    out = Path(out)
    if out.is_dir() and not out.is_symlink() and _holds_no_run(out):
        # an empty folder (made by a workflow, or a kill before the store's first file was renamed into place)
        for partial in out.rglob("*.partial"):
            partial.unlink()
        for folder in sorted(out.rglob("*"), reverse=True):
            folder.rmdir()
        out.rmdir()
    continuing = False
    if out.exists() or out.is_symlink():
        attrs = read_attrs(out)
        if attrs is None or "config" not in attrs:
            raise ConfigError(f"{out} exists and is not a gaitsim run store (no readable zarr.json with a run "
                              "config); refusing to write into or delete it. Choose another output path, or remove "
                              "it yourself.")
        if not (resume or overwrite):
            raise ConfigError(f"run store {out} already exists; pass --resume to continue it or --overwrite to "
                              "replace it")
        if resume:
            _check_same_config(attrs["config"], cfg, out)
            if attrs.get("complete"):
                _check_complete(out)
                if progress:
                    print(f"{out} is already complete; nothing to do", file=sys.stderr)
                return out
            continuing = True
    handlers = _open_log(Path(log_file) if log_file else default_log_path(out), append=resume, to_stderr=progress)
    try:
        checkpoint, archive = _resume_point(cfg, out) if continuing else (None, None)
        return _run(cfg, out, checkpoint, archive, progress, resume)
    except GaitsimError as exc:
        log.error(f"error: {exc}", extra={"final": True})
        raise
    except KeyboardInterrupt:
        log.error("interrupted; continue with --resume from the last checkpoint", extra={"final": True})
        raise
    except Exception:
        log.exception("unexpected error", extra={"final": True})
        raise
    finally:
        for h in handlers:
            log.removeHandler(h)
            h.close()


def _holds_no_run(folder: Path) -> bool:
    """Whether ``folder`` holds nothing but empty folders and zarr's temp files (``*.partial``)."""
    return all(p.is_dir() and not p.is_symlink() or p.is_file() and p.name.endswith(".partial")
               for p in folder.rglob("*"))


def _check_complete(out: Path) -> None:
    """Check a complete store's rows against its newest intact checkpoint; raise ArchiveError naming damage."""
    archive = RunArchive.open(out)
    for cand in ckpt_io.candidates(out):
        if cand.checkpoint is not None:
            damaged = archive.verify(cand.checkpoint.lengths, cand.checkpoint.digests)
            if damaged:
                lines = "\n".join(f"  - {d}" for d in damaged)
                raise ArchiveError(f"{out} is marked complete but its archive is damaged:\n{lines}\nRun it again "
                                   "with --overwrite (or restore the store from a backup).")
            return


def _resume_point(cfg: RunConfig, out: Path) -> tuple[ckpt_io.Checkpoint | None, RunArchive | None]:
    """The newest intact checkpoint of ``out`` whose archive rows are intact, and the opened archive.

    Damaged files are logged with their paths and passed over for the previous checkpoint; None if the store has
    no checkpoint (the run starts over). Raises ArchiveError if it has checkpoints but none can be continued."""
    archive = None  # opened once there is a checkpoint: a store killed while it was created has no arrays yet
    problems = []
    for cand in ckpt_io.candidates(out):
        if cand.checkpoint is None:
            log.warning(cand.problem)
            problems.append(cand.problem)
            continue
        checkpoint = cand.checkpoint
        _check_same_config(checkpoint.config_json, cfg, out)
        archive = archive or RunArchive.open(out)
        damaged = archive.verify(checkpoint.lengths, checkpoint.digests)
        if damaged:
            msg = (f"the archive rows kept by checkpoint {cand.path} (step {checkpoint.step}) are damaged: "
                   + "; ".join(damaged))
            log.warning(msg)
            problems.append(msg)
            continue
        if problems:
            log.warning(f"resuming from {cand.path} instead (step {checkpoint.step}); the steps after it are "
                        "computed again")
        if not cand.verified:
            log.warning(f"checkpoint {cand.path} has no checksum in {ckpt_io.manifest_path(out)}; loaded unverified")
        return checkpoint, archive
    if problems:
        raise ArchiveError(ckpt_io.no_intact_checkpoint(out, problems))
    return None, None


def _run(cfg: RunConfig, out: Path, checkpoint: ckpt_io.Checkpoint | None, archive: RunArchive | None,
         progress: bool, resume: bool) -> Path:
    # Everything that can be refused is refused before the store is touched.
    net = build_network(cfg)
    sched = build_scheduler(cfg, net)
    train, test, probe = _load_data(cfg, net)
    if cfg.train.drop_last and len(train) < cfg.train.batch_size:
        raise ConfigError(f"train.batch_size {cfg.train.batch_size} with drop_last leaves no batch of the "
                          f"{len(train)} training samples")
    layers = [LayerInfo(layer.name, rule.name, bool(layer.square), tuple(layer.out_shape))
              for layer, rule in zip(net.layers, net.rules)]
    if checkpoint is None:
        if out.exists() or out.is_symlink():
            log.info(f"{out}: no checkpoint to resume from; starting over" if resume else f"replacing {out}")
            remove_store(out)
        attrs = {
            "name": cfg.name, "config": cfg.to_json(), "gaitsim_version": sim.__version__,
            "git_commit": git_commit(), "torch_version": torch.__version__, "numpy_version": np.__version__,
            "python_version": platform.python_version(), "device": str(net.device), "dtype": cfg.train.dtype,
            "start_time": _now(), "end_time": "",
        }
        archive = RunArchive.create(out, layers=layers, steps_per_epoch=_count(train, cfg),
                                    probe_labels=None if probe is None else probe[1].cpu().numpy(),
                                    activity_dtype=cfg.train.dtype, attrs=attrs)
        state = _Run(cfg, out, net, sched, train, test, probe, archive)
        log.info(f"run {cfg.name!r}: {cfg.train.epochs} epochs of {state.steps_per_epoch} steps, "
                 f"rules {','.join(net.rule_names)}, {cfg.train.dtype} on {net.device}, seed {cfg.train.seed} -> "
                 f"{out}")
        if 0 in cfg.record.probe_epochs:
            state.record_probe(0)
            archive.commit()
        if cfg.train.on_nonfinite == "retry":
            state.save_checkpoint(0, 0, "start")  # somewhere to go back to from a failure in the first epoch
        epochs_done, batches_done = 0, 0
    else:
        if archive.layers != [layer.name for layer in layers]:
            raise ArchiveError(f"{out} holds layers {archive.layers}, the network has {[x.name for x in layers]}")
        state = _Run(cfg, out, net, sched, train, test, probe, archive)
        state.restore(checkpoint)
        archive.set_digests(checkpoint.digests)
        archive.truncate(checkpoint.lengths)
        archive.commit(device=str(net.device))
        epochs_done, batches_done = checkpoint.epochs_done, checkpoint.batches_done
        log.info(f"resuming {out} at step {checkpoint.step} (epoch {epochs_done + 1}, batch {batches_done}) on "
                 f"{net.device}")

    n = state.steps_per_epoch
    bar = None
    if progress:
        bar = tqdm(total=cfg.train.epochs * n, initial=epochs_done * n + batches_done, unit="step",
                   file=sys.stderr, dynamic_ncols=True, leave=True)
    try:
        while True:
            try:
                for epoch in range(epochs_done + 1, cfg.train.epochs + 1):
                    if bar is not None:
                        bar.set_description(f"{cfg.name} epoch {epoch}/{cfg.train.epochs}")
                    state.epoch(epoch, batches_done if epoch == epochs_done + 1 else 0, bar)
                break
            except _StepFailure as failure:
                if not state.can_retry():
                    state.stop(failure)
                epochs_done, batches_done = state.retry(failure)
                if bar is not None:
                    bar.n = epochs_done * n + batches_done
                    bar.refresh()
    finally:
        if bar is not None:
            bar.close()
    archive.commit(complete=True, end_time=_now())
    log.info(f"done: {out} is complete")
    return out


def _count(train, cfg: RunConfig) -> int:
    from sim.data import count_batches

    return count_batches(train, cfg.train.batch_size, cfg.train.drop_last)
