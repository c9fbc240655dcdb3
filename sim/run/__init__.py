"""Train one run: the function behind ``python -m sim run`` and the workflow's ``run`` job (docs/runs.md).

    from sim.run import run
    run("configs/digits_deep_gp.yaml", "results/digits_deep_gp.zarr")
    run(cfg, "results/x/run.zarr", publish=True, on_diverge="keep")   # what a workflow job does

One module per concern:

- :mod:`sim.run.lock`: one writer per store (an ``flock`` beside it, released by the OS when the process ends);
- :mod:`sim.run.store`: what to do with what is at the output path (fresh, resume, overwrite, complete), the
  ``STORE.partial`` working store and :func:`~sim.run.store.publish`, the same-config check;
- :mod:`sim.run.loop`: the epoch loop, top to bottom;
- :mod:`sim.run.recorder`: the per-epoch buffers and everything that goes into the archive;
- :mod:`sim.run.recovery`: a failed step (stop or retry) and the resume point of a killed run;
- :mod:`sim.run.init_from`: another run's trained weights as the start (``train.init_from``);
- :mod:`sim.run.data`: the data, checked against the network; :mod:`sim.run.provenance`: commit, versions, times;
  :mod:`sim.run.log`: the log file and the progress-friendly stderr handler (logger ``sim.run``).

One writer per store: a run holds an exclusive OS lock on its store (:mod:`sim.run.lock`) from before it looks at
the output path until it returns, after publishing; a second writer is refused at once, naming the holder.

Data-parallel runs (``torchrun --nproc-per-node N -m sim run ...``, or ``srun``; :mod:`sim.distributed`): every
process calls :func:`run`; rank 0 alone takes the lock, plans, writes the store, the checkpoints and the log, and
tells the others what it decided; every step where one process could fail alone is agreed on, so a failure anywhere
stops every process with one error, which rank 0 prints.

Failure modes (docs/reliability.md): anything a config can get wrong is refused before the network or data are
touched (ConfigError); a NaN/Inf (or a singular GP layer) stops the run after the archive prefix and a checkpoint of
the last good state are written, naming step, layer and quantity, or, with ``train.on_nonfinite: retry``, goes back
to the last checkpoint with the learning rates scaled by ``train.retry_lr_factor`` (at most ``train.max_retries``
times); with ``on_diverge="keep"`` the stopped run is a result: its prefix carries the attribute ``diverged`` (the
message) and is published. An unwritable output becomes an ArchiveError naming the path. A killed run resumes from
its newest intact checkpoint whose archive rows are intact (damaged files are named and passed over), so ``resume``
after a kill at any moment ends with the archive an uninterrupted run writes.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from sim import distributed
from sim.config import RunConfig, load_config
from sim.errors import ConfigError, NonFiniteError, SingularLayerError
from sim.run import lock, loop, store
from sim.run.log import default_log_path, log, logging_to, silenced

__all__ = ["ON_DIVERGE", "default_log_path", "run"]

#: what a run that stops at a NaN/Inf or a singular layer does (the study key ``on_diverge``): ``fail`` raises (and
#: is not published); ``keep`` returns normally with the prefix flagged ``diverged`` (and published)
ON_DIVERGE = ("fail", "keep")


def run(cfg: RunConfig | dict | str | Path, out: str | Path, *, resume: bool = False, overwrite: bool = False,
        device: str | None = None, progress: bool = True, log_file: str | Path | None = None,
        publish: bool = False, on_diverge: str = "fail", allow_change: tuple[str, ...] = ()) -> Path:
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
        publish: write ``<out>.partial`` and rename it to ``out`` once complete (a ``<out>.partial`` with the same
            config is resumed, one with another config replaced), so a failed run leaves no ``out``; what a
            workflow job does. A published ``out`` is left as it is with ``resume``, replaced with ``overwrite``.
        on_diverge: ``fail`` (a NaN/Inf or singular layer raises) or ``keep`` (the run's prefix gets the attribute
            ``diverged``, the error message, and counts as a result: returned, and published with ``publish``).
        allow_change: with ``resume``, config keys that may differ from the store's (only those of
            :data:`sim.run.store.CHANGEABLE`, e.g. ``settings.gp.lr`` to continue a diverged run with a lower
            learning rate); each change is logged and recorded in the store's attribute ``changes`` (JSON: step,
            key, old, new), and the store's ``config`` becomes the new one.

    Under a data-parallel launcher (torchrun, srun; :func:`sim.distributed.join`) every process calls this with
    the same arguments and returns ``out`` together; rank 0 alone writes (and prints, with ``progress``).
    """
    with distributed.same_on_every_process():  # errors in the arguments: rank 0 alone reports them
        cfg, out = _checked(cfg, out, resume=resume, overwrite=overwrite, device=device, on_diverge=on_diverge,
                            allow_change=tuple(allow_change))
    with distributed.join(cfg.train.device) as par, contextlib.ExitStack() as held:
        with par.agree("locking the run store"):
            if par.writes:  # one writer per store, for the run's whole life (publishing included)
                held.enter_context(lock.hold(out))
        return _run_locked(cfg, out, resume=resume, overwrite=overwrite, progress=progress and par.writes,
                           log_file=log_file, publish=publish, on_diverge=on_diverge,
                           allow_change=tuple(allow_change), par=par)


def _checked(cfg: RunConfig | dict | str | Path, out: str | Path, *, resume: bool, overwrite: bool,
             device: str | None, on_diverge: str, allow_change: tuple[str, ...]) -> tuple[RunConfig, Path]:
    """The resolved config and output path, every argument checked before anything is built or written."""
    if not isinstance(cfg, RunConfig):
        cfg = load_config(cfg)
    if device is not None:
        cfg = cfg.with_device(device)
    if resume and overwrite:
        raise ConfigError("pass either --resume or --overwrite, not both")
    allow_change = tuple(allow_change)
    if allow_change and not resume:
        raise ConfigError("--allow-change only applies with --resume (a fresh run has nothing to differ from)")
    store.check_allow_change(allow_change)
    if on_diverge not in ON_DIVERGE:
        raise ConfigError(f"on_diverge must be one of {', '.join(ON_DIVERGE)}, got {on_diverge!r}")
    cfg.data.spec()  # e.g. data.path still null: refuse before anything is built
    return cfg, store.output_path(out)


def _run_locked(cfg: RunConfig, out: Path, *, resume: bool, overwrite: bool, progress: bool,
                log_file: str | Path | None, publish: bool, on_diverge: str,
                allow_change: tuple[str, ...], par: distributed.Group = distributed.SINGLE) -> Path:
    with par.agree("looking at the run store"):
        plan = (store.plan(cfg, out, resume=resume, overwrite=overwrite, publish=publish, allow=allow_change)
                if par.writes else None)
    plan = store.Plan.from_dict(par.share(plan and plan.to_dict(), "sharing what to do with the store"))
    if plan.done and plan.path == out:
        if progress:
            what = "published as a diverged run" if plan.diverged else "complete"
            print(f"{out} is already {what}; nothing to do", file=sys.stderr)
        return out
    logging = (logging_to(Path(log_file) if log_file else default_log_path(out), append=plan.append_log,
                          to_stderr=progress) if par.writes else silenced())
    with logging:
        if not plan.done:
            try:
                loop.train(cfg, plan.path, progress=progress, resume=plan.continuing,
                           keep_diverged=on_diverge == "keep", allow_change=allow_change, par=par)
            except (NonFiniteError, SingularLayerError) as exc:
                if on_diverge != "keep":
                    raise
                log.warning(f"kept as a diverged run (on_diverge: keep): {exc}")
        with par.agree("publishing the run store"):
            if publish and par.writes:
                store.publish(plan.path, out)
    return out
