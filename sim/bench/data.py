"""``python -m sim bench --data``: which one limits training, the input pipeline or the step?

Three rates in images per second, for each worker count of ``--workers`` (``train.num_workers``):

* **input**: the run's train loader (:class:`~sim.data.loader.SplitLoader`, persistent workers, pinned memory and
  uploads on CUDA) iterated with no compute, ``steps`` batches per timed repeat (epochs follow each other as in a
  run);
* **step**: the next ``steps`` batches of the same loader, each trained on (:meth:`Scheduler.train_step`): what a
  run's epoch achieves (evaluation aside);
* **compute**: the training step alone, on one batch of the data held on the device.

A worker count whose input rate is below the compute rate is input-bound (``limit: input``): more workers, more cores
or faster storage would speed the run up; otherwise the step limits. With 0 workers decoding and compute take turns,
so the step rate is about ``1 / (1/input + 1/compute)``; with workers they overlap and it approaches the smaller.

The timing goes round-robin, as the step benchmark's does: each of ``repeats`` rounds times the step alone, then, for
every worker count, builds a fresh loader, reads ``warmup`` untimed batches (which start its workers), times the
input and then the fed steps, and drops the loader (its workers stop, so none prefetches into the next count's
timing); a change of the machine's load between rounds hits every worker count alike. Rates are medians over rounds.
The files are read through the operating system's page cache after the first pass, so the rates measure decoding and
resizing, not the disk. Every case is the run config's
(``--config``, or the preset ``--net`` with ``--data-path``, an ImageNet-style folder decoded at the network's input
size); the rows carry it (``config``).
"""

from __future__ import annotations

import itertools
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator

import torch

from sim.bench.cases import BenchOptions, build_case, make_cases, validate
from sim.bench.measure import device_name, time_steps
from sim.config import RunConfig
from sim.data import load_split
from sim.data.loader import EpochBatchSampler, SplitLoader
from sim.errors import ConfigError
from sim.network import resolve_device
from sim.run.data import check_fit

#: the most worker processes ``--workers`` may ask for (the schema's bound of ``train.num_workers``)
MAX_WORKERS = 256


def validate_data(opts: BenchOptions) -> RunConfig:
    """Refuse ``--data`` options that cannot run or would be ignored; returns the base run config (with its data)."""
    rules = opts.rules
    if rules is not None and len(rules) != 1:
        raise ConfigError(f"--data times the training step of one rule assignment; give one rule with --rules, got "
                          f"{','.join(rules)}")
    if opts.reference_cost:
        raise ConfigError("--reference-cost does not apply to --data (it times the run config's step as it is); drop "
                          "it, or benchmark the reference costs without --data")
    if opts.tf32 is not None:
        raise ConfigError("--tf32 does not apply to --data (the step runs with torch's TF32 default, as a run does); "
                          "drop it")
    for w in opts.workers or ():
        if isinstance(w, bool) or not isinstance(w, int) or not 0 <= w <= MAX_WORKERS:
            raise ConfigError(f"--workers: {w!r} is not a worker count between 0 and {MAX_WORKERS}")
    if opts.workers is not None and (not opts.workers or len(set(opts.workers)) != len(opts.workers)):
        raise ConfigError(f"--workers must list distinct counts, e.g. 0,1,2; got {','.join(map(str, opts.workers))}")
    if opts.config is None and opts.data_path is None:
        raise ConfigError("--data needs data: give --data-path (an ImageNet-style folder with train/<class>/*.JPEG) "
                          "or --config with a data section")
    return validate(opts)  # the step benchmark's checks of the shared options, and the base config


def run_data(opts: BenchOptions, progress: Callable[[str], None] | None = None) -> list[dict]:
    """Time the input pipeline and the step fed by it for every worker count of ``opts``; one row per count."""
    base = validate_data(opts)
    device = resolve_device(base.train.device, "--device")
    threads_before = torch.get_num_threads()
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    try:
        return _run(opts, base, device, progress or (lambda _: None))
    finally:
        torch.set_num_threads(threads_before)


def _run(opts: BenchOptions, base: RunConfig, device: torch.device, progress: Callable[[str], None]) -> list[dict]:
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    case = make_cases(opts, base)[0]
    sched, _, _, cfg = build_case(opts, case, base)
    spec = cfg.data.spec()
    progress(f"loading the train split of {spec.path or spec.kind}")
    train = load_split(spec, "train", seed=cfg.train.seed)
    try:
        check_fit(train, sched.net, spec.path or spec.kind)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (or, without a config: --image-size and --classes)") from None
    in_memory = train.loader_parts() is None
    workers = opts.workers if opts.workers is not None else (cfg.train.num_workers,)
    if in_memory and any(workers):
        raise ConfigError(f"--workers {','.join(map(str, workers))}: {spec.kind} data are held in memory and gathered "
                          "with one index_select per batch, without worker processes; give --workers 0")
    if in_memory and device.type != "cpu":
        train = train.to(device)  # as a run does

    def loader(num_workers: int) -> SplitLoader:
        sampler = EpochBatchSampler(len(train), cfg.train.batch_size, seed=cfg.train.seed,
                                    drop_last=cfg.train.drop_last)
        return SplitLoader(train, sampler, num_workers=num_workers, device=device, dtype=sched.net.dtype)

    x, y = next(loader(0).epoch(1))  # the compute-only batch: real data, on the device
    for _ in range(opts.warmup):
        sched.train_step(x, y)
    compute: list[float] = []
    inputs: dict[int, list[tuple[int, float]]] = {w: [] for w in workers}
    steps: dict[int, list[tuple[int, float]]] = {w: [] for w in workers}
    for r in range(opts.repeats):
        compute.append(time_steps(sched, x, y, opts.steps) * opts.steps)
        for w in workers:
            feed = _stream(loader(w))  # a fresh loader: its warm-up starts the workers, `del` below stops them
            _take(feed, opts.warmup, None, device)
            inputs[w].append(_take(feed, opts.steps, None, device))
            steps[w].append(_take(feed, opts.steps, sched, device))
            del feed  # no idle worker of this loader prefetches into the next one's timing
        progress(f"round {r + 1}/{opts.repeats}: compute {len(y) * opts.steps / compute[-1]:.1f}, " + ", ".join(
            f"{w} workers: input {_rate(inputs[w][-1:]):.1f} step {_rate(steps[w][-1:]):.1f}" for w in workers)
            + " images/s")
    compute_rate = len(y) * opts.steps / statistics.median(compute)
    rows = []
    for w in workers:
        input_rate = _rate(inputs[w])
        step_rate = _rate(steps[w])
        rows.append({
            "mode": "data", "net": base.network.preset or base.name, "rule": case.rule, "dtype": case.dtype,
            "batch": cfg.train.batch_size, "workers": w, "data_kind": spec.kind, "data_path": spec.path,
            "image_shape": list(train.input_shape), "samples": len(train),
            "input_images_per_s": input_rate, "step_images_per_s": step_rate, "compute_images_per_s": compute_rate,
            "limit": "input" if input_rate < compute_rate else "compute",
            "input_repeats": [list(r) for r in inputs[w]], "step_repeats": [list(r) for r in steps[w]],
            "compute_s_repeats": compute, "steps_per_repeat": opts.steps, "repeats": opts.repeats,
            "warmup": opts.warmup, "pin_memory": device.type == "cuda" and not in_memory,
            "config": cfg.to_dict(), "device": str(device), "device_name": device_name(device),
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "load_start": load_start,
        })
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    for row in rows:
        row["load_end"] = load_end
    return rows


def _stream(split: SplitLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The loader's epochs 1, 2, ... one after another, as a run reads them."""
    for epoch in itertools.count(1):
        yield from split.epoch(epoch)


def _take(feed: Iterator, n: int, sched, device: torch.device) -> tuple[int, float]:
    """``(images, seconds)`` of the next ``n`` batches of ``feed``, each trained on when ``sched`` is given."""
    images = 0
    _sync(device)
    t0 = time.perf_counter()
    for x, y in itertools.islice(feed, n):
        if sched is not None:
            sched.train_step(x, y)
        images += int(y.shape[0])
    _sync(device)
    return images, time.perf_counter() - t0


def _rate(repeats: list[tuple[int, float]]) -> float:
    """Images per second: the median over repeats of each repeat's images over its seconds."""
    return statistics.median(images / seconds for images, seconds in repeats)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def format_data_table(rows: list[dict]) -> str:
    """A plain-text table of ``--data`` rows, and which one limits at each worker count."""
    if not rows:
        return "(no worker counts)"
    head = f"{'workers':>7} {'input img/s':>12} {'step img/s':>11} {'compute img/s':>14}  limit"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['workers']:>7} {r['input_images_per_s']:>12.1f} {r['step_images_per_s']:>11.1f} "
                     f"{r['compute_images_per_s']:>14.1f}  {r['limit']}")
    r0 = rows[0]
    shape = "x".join(map(str, r0["image_shape"]))
    lines += ["", f"net {r0['net']} ({r0['rule']}, {r0['dtype']}), batch {r0['batch']}, data {r0['data_kind']} "
                  f"{r0['data_path'] or ''} ({r0['samples']} train images, {shape}), {r0['repeats']} repeats x "
                  f"{r0['steps_per_repeat']} batches after {r0['warmup']} warm-up, device {r0['device_name']}, "
                  f"{r0['threads']} threads, torch {r0['torch']}, load {r0['load_start']:.2f} -> {r0['load_end']:.2f}",
              "input: the train loader alone; step: training steps fed by it; compute: the step on one batch held "
              "on the device."]
    for r in rows:
        if r["limit"] == "input":
            lines.append(f"{r['workers']} workers: the input pipeline limits ({r['input_images_per_s']:.1f} < "
                         f"{r['compute_images_per_s']:.1f} images/s): more workers (train.num_workers), cores or "
                         "faster storage would speed training up")
        else:
            lines.append(f"{r['workers']} workers: the training step limits ({r['compute_images_per_s']:.1f} <= "
                         f"{r['input_images_per_s']:.1f} images/s of input)")
    return "\n".join(lines)
