"""The training loop of one run (REFERENCE.md section 2; docs/runs.md, "What a run does").

Per epoch ``e`` (1-based): the train split in the order fixed by ``(train.seed, e)``, one
:meth:`Scheduler.train_step` per batch; at steps ``0, n, 2n, ...`` (``record.angle_every``) the step is computed once
by :func:`sim.compare`, which adds BP's gradient on the same batch, and then applied, so measuring costs one BP pass
and never changes the trajectory. Per-step losses stay on the device and reach the host once per epoch. After the
epoch: accuracy and loss on the whole test split and on the train split (or its fixed subset,
``train.eval_train_subset``; :func:`sim.run.data.evaluation_batches`), the square layers' orthogonality errors, the
probe batch at the chosen epochs, one archive commit, and a checkpoint every ``record.checkpoint_every`` epochs and
after the last. Each split is read through one persistent loader for the whole run (:mod:`sim.run.data`).

In a data-parallel run (``par``, :mod:`sim.distributed`) every process runs this loop on its part of each batch
(``shard``); the scheduler sums the step over the processes; the evaluation is sharded and summed; rank 0 alone
records and writes. Each stretch where one process could fail alone is a section of ``par.agree``, so all stop
together; with one process these are no-ops.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from sim import checkpoint as ckpt_io
from sim import distributed, faults, memory, metrics
from sim.archive import ArchiveError, RunArchive
from sim.config import RunConfig, build_network, build_scheduler
from sim.correspondence import compare
from sim.errors import NonFiniteError, SingularLayerError
from sim.network import Network
from sim.run import provenance, recovery, store
from sim.run.data import RunData, evaluation_batches, load_data
from sim.run.init_from import check_not_own_store, load_initial_weights
from sim.run.log import log
from sim.run.recorder import Recorder
from sim.run.recovery import StepFailure
from sim.schedule import Scheduler


@dataclass
class RunState:
    """One run between epochs: what it trains, what it records into, and its non-finite retries so far."""

    cfg: RunConfig
    out: Path
    net: Network
    sched: Scheduler
    data: RunData
    rec: Recorder
    retries: list[dict] = field(default_factory=list)
    last_test_top1: float = math.nan
    first_loss: float = math.nan
    """The training loss after the first epoch this process trained (the reference of :func:`warn_exploding`)."""
    loss_warned: bool = False
    par: distributed.Group = distributed.SINGLE
    """The processes of a data-parallel run (one: an ordinary run)."""


def train(cfg: RunConfig, out: Path, *, progress: bool, resume: bool, keep_diverged: bool = False,
          allow_change: tuple[str, ...] = (), par: distributed.Group = distributed.SINGLE) -> Path:
    """Train ``cfg`` into the store ``out``: with ``resume`` from its newest usable checkpoint
    (:func:`recovery.resume_point`, checked against the network and scheduler built here), else (or when it has no
    checkpoint) from the start, a new store replacing what is at ``out``; returns ``out``. ``keep_diverged``: see
    :func:`recovery.stop`; ``allow_change``: config keys that may differ from the checkpoint's (``--allow-change``);
    ``par``: the processes of a data-parallel run (rank 0 reads and writes the store, the others get its checkpoint).
    """
    # Everything that can be refused is refused before the store is touched, by every process.
    with par.agree("building the network and loading the data"):
        net = build_network(cfg)
        sched = build_scheduler(cfg, net, par)
        data = load_data(cfg, net, shard=par.shard)
        par.check_batches(len(data.train), cfg.train.batch_size, cfg.train.drop_last,
                          {"train": len(data.eval_train), "test": len(data.test)}, cfg.train.eval_batch_size,
                          skips_bad_images=cfg.data.on_bad_image == "skip")
        # CUDA: a per-process batch that does not fit is refused with the largest that does
        memory.check_batch_fits(cfg, processes=par.world)
    n = data.steps_per_epoch
    checkpoint: ckpt_io.Checkpoint | None = None
    archive: RunArchive | None = None
    with par.agree("finding the checkpoint to resume from"):
        if resume and par.writes:
            checkpoint, archive = recovery.resume_point(cfg, out, net, sched, steps_per_epoch=n,
                                                        allow=allow_change)
    checkpoint = par.share_checkpoint(checkpoint)  # rank 0's (None: start over), on every process
    where = f"{net.device}" + (f" x {par.world} processes" if par.world > 1 else "")
    if checkpoint is None:
        with par.agree("taking the initial weights"):  # still before the store is touched
            initial = {}
            if cfg.train.init_from is not None:
                check_not_own_store(cfg.train.init_from, out)
                initial = {"init_from": json.dumps(load_initial_weights(net, cfg.train.init_from))}
        with par.agree("creating the run store"):
            if par.writes:
                archive = store.create(out, cfg, net, steps_per_epoch=n, resume=resume, world_size=par.world,
                                       probe_labels=None if data.probe is None else data.probe[1].cpu().numpy(),
                                       attrs={"train_eval_samples": len(data.eval_train), **initial})
            run = RunState(cfg, out, net, sched, data, Recorder(archive, net, data.probe, n, cfg.train.step.checks),
                           par=par)
            log.info(f"run {cfg.name!r}: {cfg.train.epochs} epochs of {n} steps, rules {','.join(net.rule_names)}, "
                     f"{cfg.train.dtype} on {where}, seed {cfg.train.seed} -> {out}")
            if 0 in cfg.record.probe_epochs:
                run.rec.probe(0, sched.step_count)
                run.rec.commit()
            if cfg.train.on_nonfinite == "retry":
                recovery.save_checkpoint(run, 0, 0, "start")  # somewhere to go back to from a failure in epoch 1
        epochs_done, batches_done = 0, 0
    else:
        with par.agree("resuming from the checkpoint"):
            if archive is not None and archive.layers != net.names:
                raise ArchiveError(f"{out} holds layers {archive.layers}, the network has {net.names}")
            run = RunState(cfg, out, net, sched, data, Recorder(archive, net, data.probe, n, cfg.train.step.checks),
                           par=par)
            try:
                recovery.restore(run, checkpoint)
            except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:  # a misfit fit_problem missed
                raise ArchiveError(f"checkpoint {checkpoint.path} cannot be loaded into this run "
                                   f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); start "
                                   "the run over with --overwrite") from exc
            # gaitsim status: who writes now, on how many processes; --allow-change: what changed
            run.rec.commit(device=str(net.device), world_size=par.world, **provenance.writer_attrs(),
                           **recovery.record_changes(run, checkpoint))
        epochs_done, batches_done = checkpoint.epochs_done, checkpoint.batches_done
        log.info(f"resuming {out} at step {checkpoint.step} (epoch {epochs_done + 1}, batch {batches_done}) on "
                 f"{where}")

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
                    train_epoch(run, epoch, batches_done if epoch == epochs_done + 1 else 0, bar)
                break
            except StepFailure as failure:
                if not recovery.can_retry(run):
                    recovery.stop(run, failure, keep=keep_diverged)
                epochs_done, batches_done = recovery.retry(run, failure)
                if bar is not None:
                    bar.n = epochs_done * n + batches_done
                    bar.refresh()
    finally:
        if bar is not None:
            bar.close()
    with par.agree("completing the run store"):
        run.rec.commit(complete=True, end_time=provenance.now())
    log.info(f"done: {out} is complete")
    return out


def train_epoch(run: RunState, epoch: int, start: int, bar: tqdm | None) -> None:
    """Train epoch ``epoch`` from its batch ``start``, evaluate, record, commit, and checkpoint when due.

    Raises :class:`StepFailure` (nothing of this epoch written yet) when a step meets a NaN/Inf or a singular
    layer."""
    cfg, net, sched, rec, par = run.cfg, run.net, run.sched, run.rec, run.par
    every = cfg.record.angle_every
    t0 = time.perf_counter()
    rec.start_epoch()
    # on the device, in the network's dtype; this process's part of every batch
    batches = par.each(run.data.loaders["train"].epoch(epoch, start), "reading a training batch")
    i = start
    last_postfix = 0.0
    x = None
    # a failed step has drawn its noise already: keep the generator's state before each step, so that the failure
    # checkpoint is the exact state before the failing step (only when there is noise to draw)
    noisy = any(s > 0 for s in (*sched.message_std, *sched.activity_std))
    before = None
    try:
        for i, (x, y) in enumerate(batches, start=start):
            if noisy:
                before = sched.generator.get_state()
            if every and sched.step_count % every == 0:
                corr = compare(sched, x, y)
                sched.apply(corr.result)
                rec.step(i, corr.result.loss, corr.result.batch_size, corr.angle_deg)
            else:
                result = sched.train_step(x, y)
                rec.step(i, result.loss, result.batch_size)
            faults.hit("train.step")
            if bar is not None:
                now = time.monotonic()
                if now - last_postfix >= 1.0:  # one host sync per second at most
                    last_postfix = now
                    bar.set_postfix(loss=f"{rec.loss(i):.4f}", acc=f"{run.last_test_top1:.3f}",
                                    angle=f"{rec.last_angle:.2f}", refresh=False)
                bar.update(1)
    except (NonFiniteError, SingularLayerError) as exc:
        # the weights are untouched by the failed step; its noise is put back
        if before is not None:
            sched.generator.set_state(before)
        if isinstance(exc, NonFiniteError) and exc.quantity == "loss" and x is not None:
            exc = recovery.traced(net, exc, x, par)
        raise StepFailure(exc, epoch, start, i) from exc
    end = run.data.steps_per_epoch
    if not cfg.train.step.checks:
        bad = rec.first_nonfinite(start, end)  # one host sync per epoch
        if bad is not None:
            step = sched.step_count - end + bad
            raise StepFailure(NonFiniteError(
                f"non-finite loss at step {step} in layer {net.names[-1]!r} (epoch {epoch}); "
                "train.step.check_numerics is off, so this was noticed only at the end of the epoch",
                step=step, layer=net.names[-1], quantity="loss"), epoch, start, end, unchecked=True)
    with par.agree(f"recording the steps of epoch {epoch}"):  # rank 0 writes: a failure there stops every process
        rec.flush_steps(epoch, start, end, sched.step_count)

    # sharded like the training batches, the counts summed over the processes (one process: the whole splits)
    reduce = None if par.world == 1 else par.sum_
    m_train, m_test = (metrics.evaluate(net, par.each(evaluation_batches(run.data, split, cfg.train.eval_batch_size,
                                                                         shard=par.shard),
                                                      "reading an evaluation batch"), reduce=reduce)
                       for split in ("train", "test"))
    ortho = metrics.ortho_errors(net)
    state = metrics.state_metrics(net)
    with par.agree(f"recording epoch {epoch}"):
        if epoch in cfg.record.probe_epochs:
            rec.probe(epoch, sched.step_count)
        wall = time.perf_counter() - t0
        rec.epoch(epoch, m_train, m_test, ortho, wall, state)
        rec.commit()
        faults.hit("train.epoch")
    run.last_test_top1 = m_test.top1
    warn_exploding(run, epoch, m_train.loss)
    log.info(f"epoch {epoch}/{cfg.train.epochs}: train top1 {m_train.top1:.4f} loss {m_train.loss:.4f} | "
             f"test top1 {m_test.top1:.4f} top5 {m_test.top5:.4f} loss {m_test.loss:.4f} | "
             f"mean angle {rec.mean_angle(start, end):.2f} deg | {wall:.1f} s")
    every_ck = cfg.record.checkpoint_every
    if epoch == cfg.train.epochs or (every_ck and epoch % every_ck == 0):
        with par.agree(f"checkpointing epoch {epoch}"):
            recovery.save_checkpoint(run, epoch, 0, "final" if epoch == cfg.train.epochs else "scheduled")
    if bar is not None:
        bar.set_postfix(loss=f"{m_train.loss:.4f}", acc=f"{m_test.top1:.3f}", angle=f"{rec.last_angle:.2f}")


#: a training loss above this (cross-entropy: ln(classes) ~ 2.3 at chance), or above ``LOSS_GROWTH`` times the first
#: epoch's, means the run has blown up even though every number is finite
LOSS_BOUND = 1e4
LOSS_GROWTH = 1e6


def warn_exploding(run: RunState, epoch: int, loss: float) -> None:
    """Log a warning (once per run) when the epoch's training loss explodes: finite, so the run goes on, but its
    results mean nothing (BP or FA at lr 1e3 end with losses of 1e15-1e20)."""
    if math.isnan(run.first_loss):
        run.first_loss = loss
    if run.loss_warned or not math.isfinite(loss):
        return
    grew = math.isfinite(run.first_loss) and run.first_loss > 0 and loss > LOSS_GROWTH * run.first_loss
    if loss > LOSS_BOUND or grew:
        run.loss_warned = True
        lrs = ", ".join(f"{rule.name} lr {rule.settings.lr:g}" for rule in
                        {r.name: r for r in run.net.rules}.values())
        log.warning(f"the training loss exploded: {loss:.3g} after epoch {epoch} (first epoch: {run.first_loss:.3g}; "
                    f"above {LOSS_BOUND:g} or {LOSS_GROWTH:g} x the first epoch's). The run goes on, but its "
                    f"results are not meaningful: lower the learning rate ({lrs}) and start over with --overwrite, "
                    "or continue from a checkpoint before the blow-up with --resume --allow-change "
                    "settings.<rule>.lr")
