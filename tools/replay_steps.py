"""Replay a finished run from a checkpoint to chosen steps and look at what it recorded there (docs/reproduction.md,
the regulariser-alone spikes).

    python tools/replay_steps.py results/reproduce/cifar10_deep_regalone/rule~gp/seed~0 \
        --steps 1780 1820 --eta 1e-5 1e-7 1e-9 1e-11

``RUN`` is a run folder of a study (its ``config.yaml`` and ``run.zarr``). The run is continued with one torch thread
(the workflow's jobs run single-threaded, so the replay is bit for bit the recorded trajectory) from its newest
checkpoint before the first step asked for. At each step, before the step is applied, it prints the angles to BP of
the recorded config, the angles in the other GP arithmetic (target <-> difference) and with each ``--eta``, every
square layer's orthogonality error ``||W W^T - I||_F / sqrt(n)``, and per hidden layer the smallest ``|z|`` of its
pre-activations on the batch (how close a unit comes to the leaky ReLU's kink). ``--eta`` is GP's nudge (gp runs
only). Reads the run; writes nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from sim import checkpoint as ckpt_io
from sim import compare, regularizer
from sim.config import build_network, build_scheduler, load_config
from sim.data.batches import iterate_batches
from sim.run.data import load_data


def _angles(cfg_doc: dict, state: dict, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    cfg = load_config(cfg_doc)
    net = build_network(cfg)
    net.load_state_dict(state)
    return [round(a, 4) for a in compare(build_scheduler(cfg, net), x.to(net.dtype), y).angle_deg]


def _kink_distance(net, x: torch.Tensor) -> list[float]:
    """Per hidden layer, the smallest |pre-activation| over the batch and its units (the leaky ReLU's kink is at 0)."""
    a, out = x.to(net.dtype), []
    with torch.no_grad():
        for layer in net.layers[:-1]:
            out.append(float(layer.preactivation(a).abs().min()))
            a = layer.forward(a)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a run folder holding config.yaml and run.zarr")
    p.add_argument("--steps", type=int, nargs="+", required=True, help="steps to stop at (before they are applied)")
    p.add_argument("--eta", type=float, nargs="*", default=[], help="GP nudges to measure the angles with too")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = load_config(args.run / "config.yaml")
    store = args.run / "run.zarr"
    first = min(args.steps)
    start = next((c.checkpoint for c in ckpt_io.candidates(store)
                  if c.checkpoint is not None and c.checkpoint.step <= first), None)
    if start is None:
        print(f"error: {store} has no intact checkpoint at or before step {first}", file=sys.stderr)
        return 2
    net, doc = build_network(cfg), cfg.to_dict()
    sched = build_scheduler(cfg, net)
    net.load_state_dict(start.network)
    sched.load_state_dict(start.scheduler)
    data = load_data(cfg, net)
    rule = doc["rules"] if isinstance(doc["rules"], str) else doc["rules"][0]
    if args.eta and rule != "gp":
        print(f"error: --eta is GP's nudge; this run's rule is {rule}", file=sys.stderr)
        return 2
    print(f"from the checkpoint after epoch {start.epochs_done} (step {start.step}); layers {net.names}")
    epoch, last = start.epochs_done + 1, max(args.steps)
    while sched.step_count <= last and epoch <= cfg.train.epochs:
        for x, y in iterate_batches(data.train, cfg.train.batch_size, seed=cfg.train.seed, epoch=epoch,
                                    drop_last=cfg.train.drop_last):
            step = sched.step_count
            if step in args.steps:
                state = {k: v.clone() for k, v in net.state_dict().items()}
                errors = [None if (m := layer.square_weight()) is None else
                          float(torch.linalg.norm(regularizer.gram_residual(m.detach())) / m.shape[0] ** 0.5)
                          for layer in net.layers]
                print(f"step {step}: angles {_angles(doc, state, x, y)}")
                if rule in ("gp", "vgp"):
                    other = "difference" if doc["settings"][rule]["arithmetic"] == "target" else "target"
                    print(f"  {other} form: {_angles(_with(doc, rule, arithmetic=other), state, x, y)}")
                for eta in args.eta:
                    print(f"  eta {eta:g}: {_angles(_with(doc, rule, eta=eta), state, x, y)}")
                print(f"  orthogonality error: {[None if e is None else f'{e:.2e}' for e in errors]}")
                print(f"  smallest |pre-activation|: {[f'{z:.2e}' for z in _kink_distance(net, x)]}")
            if step >= last:
                return 0
            sched.train_step(x.to(net.dtype), y)
        epoch += 1
    late = [s for s in args.steps if s >= sched.step_count]
    print(f"error: step(s) {late} come after the run's last step ({sched.step_count - 1})", file=sys.stderr)
    return 2


def _with(doc: dict, rule: str, **settings) -> dict:
    """``doc`` with ``settings`` changed for ``rule``."""
    return {**doc, "settings": {**doc["settings"], rule: {**doc["settings"][rule], **settings}}}


if __name__ == "__main__":
    sys.exit(main())
