"""Code the data-parallel tests run in spawned processes (tests/run/test_distributed*.py), and its single-process
twin: a few steps of every case, update by update, so the test can compare the two.

A case is a network (preset, options, rules, dtype), noise floors, step options and a list of global batch sizes;
its batches are a pure function of the case's seed, so every process and the reference draw the same ones. Each
process of a spawned group takes its ``torch.tensor_split`` part of every batch, as ``iterate_batches(shard=...)``
does.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

import torch

from sim import Network, preset
from sim.correspondence import compare
from sim.schedule import NoiseFloor, Scheduler
from sim.step_options import StepOptions


def free_port() -> int:
    """A TCP port nobody listens on now (the rendezvous of one spawned group)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def case(name: str, net: str, rules, *, dtype: str = "float64", batches=(25, 25, 9), noise=(0.01, 0.001),
         options: dict | None = None, seed: int = 3, **preset_options) -> dict:
    """One case: ``rules`` (a name or one per layer) on preset ``net`` with ``preset_options``; ``noise``:
    (activity_std, message_std); ``batches``: the global batch sizes of its steps (step 0 measures the angle to
    BP, as a run's first step does)."""
    return {"name": name, "net": net, "rules": rules, "dtype": dtype, "batches": list(batches), "noise": noise,
            "options": options or {}, "seed": seed, "preset": preset_options}


def build(c: dict, parallel=None) -> Scheduler:
    net = Network(preset(c["net"], c["rules"], dtype=c["dtype"], seed=c["seed"], **c["preset"]))
    activity, message = c["noise"]
    return Scheduler(net, noise=NoiseFloor(activity_std=activity, message_std=message), seed=c["seed"],
                     options=StepOptions(**c["options"]), parallel=parallel)


def batches(c: dict, net: Network) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(c["seed"])
    out = []
    for size in c["batches"]:
        x = torch.rand((size, *net.config.input_shape), generator=g, dtype=torch.float64).to(net.dtype)
        out.append((x, torch.randint(0, net.classes, (size,), generator=g)))
    return out


def steps(c: dict, parallel=None, shard: tuple[int, int] = (0, 1)) -> dict:
    """Train case ``c`` for its steps (on ``shard``'s part of each batch with ``parallel``) and return, per step,
    the raw updates (layers' and learned feedback's, as the scheduler hands them to Adam), the loss and, at step 0,
    BP's reference and the angles; then the final state of the network and the optimiser."""
    sched = build(c, parallel)
    rank, world = shard
    record: dict = {"updates": [], "loss": [], "angles": None, "reference": None}
    for k, (x, y) in enumerate(batches(c, sched.net)):
        x, y = torch.tensor_split(x, world)[rank], torch.tensor_split(y, world)[rank]
        if k == 0:
            corr = compare(sched, x, y)
            result = corr.result
            record["angles"] = corr.angle_deg
            record["reference"] = [g.clone() for ref in corr.reference for g in ref.values()]
        else:
            result = sched.compute(x, y)
        record["updates"].append([g.clone() for upd in (*result.updates, *result.feedback_updates)
                                  for g in upd.values()])
        record["loss"].append(result.loss.clone())
        sched.apply(result)
    record["network"] = {k: v.clone() for k, v in sched.net.state_dict().items()}
    record["adam"] = [v.clone() for s in sched.optimizer.state.values() for v in s.values()
                      if isinstance(v, torch.Tensor) and v.ndim]
    return record


def spawned(rank: int, world: int, port: int, job: Callable, args: tuple, out: str) -> None:
    """The body of one spawned process: join the group through the launch variables torchrun would set, run
    ``job(group, rank, world, *args)`` and save what it returns to ``<out>.<rank>``."""
    from sim.distributed import join

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    with join("cpu") as group:
        result = job(group, rank, world, *args)
    torch.save(result, f"{out}.{rank}")


def spawn(job: Callable, args: tuple, out: str, world: int = 2) -> list:
    """Run ``job`` in ``world`` spawned processes (gloo on the CPU); what each returned, by rank."""
    import torch.multiprocessing as mp

    mp.spawn(spawned, args=(world, free_port(), job, args, out), nprocs=world, join=True)
    return [torch.load(f"{out}.{rank}", weights_only=True) for rank in range(world)]


def all_cases(group, rank: int, world: int, cases: list[dict]) -> dict:
    """Every case's :func:`steps` on this process's parts (rank 0's is compared; every rank returns its own)."""
    return {c["name"]: steps(c, group, (rank, world)) for c in cases}


# ----- the agreement protocol, one scenario at a time ---------------------------------------------------------------
def _outcome(fn: Callable[[], object]) -> dict:
    """What calling ``fn`` did: its value, or the error's type, message, marks and fields."""
    try:
        return {"value": fn()}
    except Exception as exc:  # noqa: BLE001 - the outcome is the test's to judge
        return {"error": type(exc).__name__, "message": str(exc),
                "reported_elsewhere": bool(getattr(exc, "reported_elsewhere", False)),
                "step": getattr(exc, "step", None), "layer": getattr(exc, "layer", None)}


def protocol(group, rank: int, world: int) -> dict:
    """Every collective of :class:`sim.distributed.Group` with a failure on one rank, on the other, on both, and
    none; what each rank saw (the test compares the ranks)."""
    from sim.checkpoint import Checkpoint
    from sim.errors import DataError, NonFiniteError

    def fail_on(ranks, exc):
        def body():
            with group.agree("a section"):
                if rank in ranks:
                    raise exc
            return "passed"
        return body

    def reading():
        def items():
            for i in range(4):
                if rank == 1 and i == 2:
                    raise DataError("cannot decode image /data/x.JPEG")
                yield i
        seen = []
        try:
            for item in group.each(items(), "reading a batch"):
                seen.append(item)
        finally:
            out["seen"] = seen
        return seen

    out: dict = {}
    out["nonfinite"] = _outcome(fail_on({1}, NonFiniteError("non-finite activity at step 5 in layer 'dense2'",
                                                            step=5, layer="dense2", quantity="activity")))
    out["data"] = _outcome(fail_on({1}, DataError("cannot decode image /data/x.JPEG")))
    out["both"] = _outcome(fail_on({0, 1}, DataError(f"rank {rank}'s problem")))
    out["bug"] = _outcome(fail_on({0}, TypeError("a bug")))
    out["none"] = _outcome(fail_on(set(), None))

    def out_of_step():
        with group.agree(f"section {rank}"):  # a different section on each rank: a bug the tag exchange catches
            return "passed"

    out["out_of_step"] = _outcome(out_of_step)
    out["reading"] = _outcome(reading)
    out["part"] = _outcome(lambda: tuple(vars(group.part_of(13 - rank, "a step")).values()))
    out["share"] = _outcome(lambda: group.share({"plan": [1, 2]} if rank == 0 else None, "sharing"))
    out["least"] = _outcome(lambda: group.least(5 - 2 * rank, "least"))
    mine = torch.arange(3, dtype=torch.float64) * (rank + 1)
    group.sum_([mine], "summing")
    out["sum"] = mine
    ckpt = None
    if rank == 0:
        ckpt = Checkpoint(config_json="{}", epochs_done=1, batches_done=2, step=9, lengths=_lengths(),
                          network={"w": torch.eye(2)}, scheduler={"step": 9}, torch_rng=torch.get_rng_state(),
                          numpy_rng={"name": "MT19937"})
    got = group.share_checkpoint(ckpt)
    out["checkpoint"] = {"step": got.step, "w": got.network["w"], "batches_done": got.batches_done}
    out["no_checkpoint"] = group.share_checkpoint(None) is None
    return out


def _lengths():
    from sim.archive import Lengths

    return Lengths(steps=9, epochs=1, probes=0)


def protocol_and_case(group, rank: int, world: int, c: dict) -> dict:
    """:func:`protocol`, then one case's :func:`steps` (one spawn for both: starting processes is the slow part)."""
    return {**protocol(group, rank, world), "case": steps(c, group, (rank, world))}
