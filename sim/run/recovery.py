"""When a step fails, and when a run was killed: stop, retry, or resume (docs/reliability.md).

A step that meets a NaN/Inf or a singular GP layer raises :class:`StepFailure` out of the epoch before anything of
the epoch is committed. Then either :func:`stop` keeps what can be kept (the archive up to the failing step and a
checkpoint of the state before it) and raises the error naming step, layer and what was saved, or, with
``train.on_nonfinite: retry`` and retries left, :func:`retry` goes back to the newest checkpoint with every learning
rate scaled by ``train.retry_lr_factor`` once more. A killed run is continued from :func:`resume_point`: the newest
intact checkpoint whose archive rows are intact (damaged files are named and passed over).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from sim import checkpoint as ckpt_io
from sim.archive import ArchiveError, RunArchive
from sim.config import RunConfig
from sim.distributed import SINGLE, Group
from sim.errors import GaitsimError, NonFiniteError, SingularLayerError
from sim.network import Network
from sim.run.log import log
from sim.run.store import check_same_config, config_changes
from sim.schedule import Scheduler

if TYPE_CHECKING:
    from sim.run.loop import RunState


class StepFailure(Exception):
    """A step of epoch ``epoch`` failed (NaN/Inf, singular layer): what the loop stops or retries on.

    ``batch`` is the failing batch; ``start`` the epoch's first batch trained in this pass; ``unchecked``: found only
    at the end of the epoch (``train.step.check_numerics`` off), so the epoch's steps up to ``batch`` were all taken."""

    def __init__(self, error: GaitsimError, epoch: int, start: int, batch: int, unchecked: bool = False) -> None:
        super().__init__(str(error))
        self.error, self.epoch, self.start, self.batch, self.unchecked = error, epoch, start, batch, unchecked


@torch.no_grad()
def trace_nonfinite(net: Network, x: torch.Tensor) -> tuple[str, str] | None:
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


def traced(net: Network, exc: NonFiniteError, x: torch.Tensor, par: Group = SINGLE) -> NonFiniteError:
    """A non-finite loss, with the layer and quantity where the non-finite values start (when they repeat). In a
    data-parallel run (``par``; ``x`` this process's part of the batch) the processes agree on the first origin
    any of them finds, the one the whole batch has."""
    origin = trace_nonfinite(net, x)
    if par.world > 1:
        order = [(layer.name, kind) for layer in net.layers for kind in ("weight", "bias")]
        order += [(net.names[0], "input"), *((layer.name, "activity") for layer in net.layers)]
        first = par.least(order.index(origin) if origin is not None else len(order), "tracing the non-finite loss")
        origin = order[first] if first < len(order) else None
    if origin is None or origin == (exc.layer, exc.quantity):
        return exc
    layer, quantity = origin
    return NonFiniteError(f"{exc}; traced back to the {quantity} of layer {layer!r}, where the non-finite "
                          "values start", step=exc.step, layer=layer, quantity=quantity)


# ----- checkpoints ----------------------------------------------------------------------------------------------------
def save_checkpoint(run: RunState, epochs_done: int, batches_done: int, reason: str) -> Path:
    """Write the run's checkpoint (rank 0 of a data-parallel run: the others' state is the same); returns where it
    is."""
    if not run.par.writes:
        return ckpt_io.checkpoint_path(run.out)
    archive = run.rec.archive
    state = ckpt_io.Checkpoint(
        config_json=run.cfg.to_json(), epochs_done=epochs_done, batches_done=batches_done,
        step=run.sched.step_count, lengths=archive.lengths, network=run.net.state_dict(),
        scheduler=run.sched.state_dict(), torch_rng=torch.get_rng_state(),
        numpy_rng=ckpt_io.numpy_rng_state(), reason=reason, digests=archive.digests, retries=run.retries)
    return ckpt_io.save(run.out, state)


def restore(run: RunState, checkpoint: ckpt_io.Checkpoint) -> None:
    """Take the network, scheduler and RNG states and the retries of ``checkpoint``, and cut the archive back to
    the rows it keeps (not yet committed)."""
    run.net.load_state_dict(checkpoint.network)
    run.sched.load_state_dict(checkpoint.scheduler)
    # the learning rates are the config's (an allowed change on resume), scaled as the retries so far did: every
    # group's, the rules' own parameters too (kp's B learns at its rule's lr; were it left at the checkpoint's, B
    # and W would take different steps and B - W would no longer shrink by the decay alone)
    scale = run.cfg.train.retry_lr_factor ** len(checkpoint.retries)
    for group, lr in zip(run.sched.optimizer.param_groups, run.sched.base_lrs):
        group["lr"] = lr * scale
    torch.set_rng_state(checkpoint.torch_rng)
    ckpt_io.set_numpy_rng_state(checkpoint.numpy_rng)
    run.retries = list(checkpoint.retries)
    if run.rec.archive is not None:  # None: a data-parallel run's process other than rank 0, which writes nothing
        run.rec.archive.set_digests(checkpoint.digests)
        run.rec.archive.truncate(checkpoint.lengths)


def record_changes(run: RunState, checkpoint: ckpt_io.Checkpoint) -> dict[str, str]:
    """The attributes that record an allowed config change on resume (``--allow-change``): ``changes`` (JSON list of
    step, key, old, new; earlier changes kept) and the new ``config``; {} when nothing changed. Each is logged."""
    changes = config_changes(checkpoint.config_json, run.cfg)
    if not changes or run.rec.archive is None:
        return {}
    before = json.loads(run.rec.archive.attrs.get("changes") or "[]")
    new = [{"step": int(checkpoint.step), "key": k, "old": old, "new": value} for k, (old, value) in changes.items()]
    for c in new:
        log.warning(f"resuming at step {c['step']} with {c['key']} changed from {c['old']!r} to {c['new']!r} "
                    "(--allow-change; recorded in the store's attribute 'changes')")
    return {"changes": json.dumps(before + new), "config": run.cfg.to_json()}


def resume_point(cfg: RunConfig, out: Path, net: Network | None = None, sched: Scheduler | None = None, *,
                 steps_per_epoch: int | None = None, allow: tuple[str, ...] = ()
                 ) -> tuple[ckpt_io.Checkpoint | None, RunArchive | None]:
    """The newest intact checkpoint of ``out`` that fits the run and whose archive rows are intact, and the opened
    archive. With ``net`` and ``sched`` (the run's, freshly built) and ``steps_per_epoch``, a checkpoint must also
    fit them (:func:`sim.checkpoint.fit_problem`: tensor shapes and dtypes, RNG states, position).
    ``allow``: config keys that may differ from the checkpoint's (``--allow-change``).

    Damaged or unfitting files are logged with their paths and passed over for the previous checkpoint; None if the
    store has no checkpoint (the run starts over). Raises ArchiveError if it has checkpoints but none can be
    continued."""
    archive = None  # opened once there is a checkpoint: a store killed while it was created has no arrays yet
    problems = []
    reference = None
    if net is not None and sched is not None:
        reference = dict(network=net.state_dict(), scheduler=sched.state_dict(),
                         param_shapes=[p.shape for g in sched.optimizer.param_groups for p in g["params"]],
                         epochs=cfg.train.epochs, steps_per_epoch=steps_per_epoch or 1)
    for cand in ckpt_io.candidates(out):
        if cand.checkpoint is None:
            log.warning(cand.problem)
            problems.append(cand.problem)
            continue
        checkpoint = cand.checkpoint
        check_same_config(checkpoint.config_json, cfg, out, allow)
        why = None if reference is None else ckpt_io.fit_problem(checkpoint, **reference)
        if why is not None:
            msg = f"checkpoint {cand.path} does not fit this run: {why}"
            log.warning(msg)
            problems.append(msg)
            continue
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


# ----- after a failed step --------------------------------------------------------------------------------------------
def stop(run: RunState, failure: StepFailure, *, keep: bool = False) -> None:
    """Keep what can be kept and raise the failure with the step, layer and what was saved; ``keep``
    (``on_diverge: keep``): the archive's attribute ``diverged`` is the error message, so the prefix is a result."""
    exc = failure.error
    retried = (f" after {len(run.retries)} retr{'y' if len(run.retries) == 1 else 'ies'} with lower learning "
               "rates (train.max_retries)") if run.retries else ""
    with run.par.agree("keeping the stopped run"):
        error = _kept(run, failure, retried, keep)
    # the same error on every process of a data-parallel run, printed by rank 0
    if failure.unchecked:
        raise run.par.mark(error)
    raise run.par.mark(error) from exc


def _kept(run: RunState, failure: StepFailure, retried: str, keep: bool) -> GaitsimError:
    """Commit the steps before the failure and save the state before it; the error that says so."""
    exc, epoch, start, i = failure.error, failure.epoch, failure.start, failure.batch
    run.rec.flush_steps(epoch, start, i, run.sched.step_count)
    run.rec.commit()
    error: GaitsimError
    if failure.unchecked:
        error = NonFiniteError(
            f"{exc}{retried}, and the state before it was not kept. The archive {run.out} holds the steps so "
            "far; the last checkpoint (if any) is from an earlier epoch. Turn check_numerics on to stop at the "
            "first NaN/Inf with its layer named.", step=exc.step, layer=exc.layer, quantity=exc.quantity)
    else:
        path = save_checkpoint(run, epoch - 1, i, "failure")
        step = run.sched.step_count
        what = str(exc).rstrip(".")
        layer = getattr(exc, "layer", None)
        if layer and repr(layer) not in what:
            what = f"{what} (layer {layer!r}, {getattr(exc, 'quantity', None) or 'value'})"
        held = f"steps 0..{step - 1}" if step else "no steps"
        msg = (f"{what}. The run stopped at step {step} (epoch {epoch}, batch {i}){retried}: the archive {run.out} "
               f"holds {held} (complete = false) and {path} holds the state before step {step}.")
        error = (NonFiniteError(msg, step=exc.step, layer=exc.layer, quantity=exc.quantity)
                 if isinstance(exc, NonFiniteError) else SingularLayerError(msg))
    if keep:
        run.rec.commit(diverged=str(error))
    return error


def can_retry(run: RunState) -> bool:
    return run.cfg.train.on_nonfinite == "retry" and len(run.retries) < run.cfg.train.max_retries


def retry(run: RunState, failure: StepFailure) -> tuple[int, int]:
    """Go back to the newest intact checkpoint, scale every learning rate by ``train.retry_lr_factor`` once
    more, cut the archive back; returns the position ``(epochs_done, batches_done)`` to continue from."""
    exc = failure.error
    with run.par.agree("reading the last checkpoint"):
        checkpoint = ckpt_io.load(run.out) if run.par.writes else None
        if run.par.writes and checkpoint is None:  # cannot happen: a retrying run checkpoints before its first step
            raise exc
    checkpoint = run.par.share_checkpoint(checkpoint)  # rank 0's, on every process
    step = getattr(exc, "step", None)
    step = run.sched.step_count if step is None else step
    retries = [*run.retries, {"step": int(step), "from_step": checkpoint.step,
                              "lr_factor": run.cfg.train.retry_lr_factor, "error": str(exc)[:300]}]
    restore(run, checkpoint)
    run.retries = retries
    scale = run.cfg.train.retry_lr_factor ** len(retries)
    for group, lr in zip(run.sched.optimizer.param_groups, run.sched.base_lrs):
        group["lr"] = lr * scale  # every group: the layers' and the rules' own (learned feedback)
    with run.par.agree("recording the retry"):
        run.rec.commit(retries=json.dumps(retries))
    log.warning(f"{exc}. Retry {len(retries)}/{run.cfg.train.max_retries}: back to step {checkpoint.step} "
                f"({checkpoint.path}) with the learning rates scaled by {scale:g}")
    return checkpoint.epochs_done, checkpoint.batches_done
