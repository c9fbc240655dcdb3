"""Data-parallel runs: N processes train one run, each on its part of every global batch (issue 17; docs/runs.md,
"Several GPUs")::

    torchrun --nproc-per-node 8 -m sim run configs/imagenet_conv_gp.yaml --out results/imagenet_conv_gp.zarr
    srun --ntasks-per-node 8 --gpus-per-node 8 python -m sim run configs/imagenet_conv_gp.yaml --out ...

**The step.** Every process builds the same network, scheduler and generators (all seeded from ``train.seed``; a resumed
run's state is rank 0's checkpoint, sent to every process, :meth:`Group.share_checkpoint`). Of each global batch of
``B`` samples process ``r`` takes the rows ``torch.tensor_split`` gives it (``sim.data.iterate_batches(shard=...)``
reads only those; :meth:`Group.part_of` places them in the batch). The local phases run on the part; then the raw
updates, which are sums over the batch's samples (the loss is summed over the batch, REFERENCE.md section 2), learned
feedback included, and the batch loss are summed over the processes in one all-reduce (:meth:`Group.reduce_step`, called
by :meth:`sim.schedule.Scheduler.compute`). The sum of the parts' sums is the global batch's sum, so the regulariser,
Adam and the rules' ``after_step`` get the single-process step's input (up to the order of float additions) and take the
same step on every process. Random numbers drawn per sample are drawn for the whole batch and cut to the part
(:class:`~sim.step_options.BatchPart`), so the shared generators stay in step and the noise is the single-process run's.
Not ``torch.nn.parallel.DistributedDataParallel``: it sums the gradients autograd computes for a loss, and only BP has
such a loss here; the rules' updates come out of the local phases, so the sum is the scheduler's.

**The rest of an epoch.** Evaluation is sharded the same way and its counts and summed losses are summed over the
processes (:func:`sim.metrics.evaluate` with ``reduce``): the same counts, the same losses up to rounding. Rank 0
alone writes: it takes the store's lock and writes the archive, the checkpoints and the log, and records the probe
batch. The other processes hold no state that is not in rank 0's checkpoint, so a checkpoint does not depend on the
number of processes and a run resumes with any number.

**Failures.** Every stretch in which one process can fail alone (reading its part of a batch, its local phases, rank
0's writes) is a section of :meth:`Group.agree`: at its end the processes exchange one flag and, if any failed,
every process raises the same error (a NaN/Inf or a singular layer as that error, so every process stops or retries
together; anything else as a :class:`~sim.errors.DistributedError` naming the process), which rank 0 alone prints.
These exchanges go over gloo on the CPU (a second process group beside NCCL), so they never wait for the GPU. A
process that dies (killed, out of memory) makes the next collective fail on the others, which stop with a
:class:`~sim.errors.DistributedError` saying to ``--resume``. Stop signals are not agreed on: each process unwinds
at once (a launcher signals all of them).

**Launchers.** torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), or
an ``srun`` step's (``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS``, ``SLURM_LOCALID``; the master is the step's first node
and the port follows from the job id, unless ``MASTER_ADDR``/``MASTER_PORT`` are set). Neither: one process, and
nothing here runs. Backend: NCCL on GPUs (the process with ``LOCAL_RANK`` k uses ``cuda:k``), gloo on the CPU.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sim.errors import ConfigError, DistributedError, GaitsimError, NonFiniteError, SingularLayerError
from sim.step_options import BatchPart

if TYPE_CHECKING:
    import torch

    from sim.checkpoint import Checkpoint
    from sim.network import Network
    from sim.schedule import StepResult

#: how long a collective waits for a process that neither answers nor dies (a hung GPU, a stopped machine); rank 0
#: writes a checkpoint while the others wait, so this is far above any write
TIMEOUT = timedelta(minutes=30)
#: the port range an ``srun`` step's master port is taken from (by job and step id) when MASTER_PORT is not set
SLURM_PORTS = (20000, 60000)


# ----- the launch (torch-free) --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Launch:
    """This process's place in its launch, read from the environment."""

    rank: int
    """0 .. world - 1; rank 0 writes the store."""
    world: int
    """Processes of the run (1: an ordinary run)."""
    local_rank: int | None
    """Its index among the processes on its machine (which GPU it uses); None where the launcher does not say."""
    launcher: str
    """'torchrun' (its variables, also set by hand), 'srun', or 'none'."""
    master_addr: str | None = None
    """Host of the rendezvous (rank 0's machine)."""
    master_port: int | None = None
    """Its port."""


def _int(env: Mapping[str, str], name: str) -> int:
    value = env.get(name, "")
    if not value.strip().isdigit():
        raise ConfigError(f"the environment variable {name}={value!r} is not a non-negative integer; it is set by the "
                          "launcher (torchrun, srun): start the run through one, or unset the variable")
    return int(value)


def first_host(nodelist: str) -> str:
    """The first host of a SLURM host list: ``node[03-05,9],gpu1`` -> ``node03`` (bracket ranges keep their zero
    padding)."""
    depth, end = 0, len(nodelist)
    for i, ch in enumerate(nodelist):
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            end = i
            break
    return re.sub(r"\[([^\]]*)\]", lambda m: m.group(1).split(",")[0].split("-")[0], nodelist[:end].strip())


def launch_from_env(env: Mapping[str, str] | None = None) -> Launch:
    """Where this process stands: torchrun's variables (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``,
    ``MASTER_PORT``) take precedence, then an ``srun`` step's (``SLURM_STEP_NUM_TASKS``, ``SLURM_PROCID``,
    ``SLURM_LOCALID``; set by ``srun`` only, so a batch script's own ``SLURM_NTASKS`` never makes a plain
    ``python -m sim run`` wait for processes nobody started); neither: one process."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" in env and "RANK" in env:  # both: a variable of that name alone may be another tool's
        world, rank = _int(env, "WORLD_SIZE"), _int(env, "RANK")
        local = _int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else None
        port = _int(env, "MASTER_PORT") if "MASTER_PORT" in env else None
        launch = Launch(rank, world, local, "torchrun", env.get("MASTER_ADDR") or None, port)
    elif "SLURM_STEP_NUM_TASKS" in env and "SLURM_PROCID" in env:
        world, rank = _int(env, "SLURM_STEP_NUM_TASKS"), _int(env, "SLURM_PROCID")
        local = _int(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else None
        nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or ""
        addr = env.get("MASTER_ADDR") or (first_host(nodes) if nodes else None)
        if "MASTER_PORT" in env:
            port = _int(env, "MASTER_PORT")
        else:  # one port per job step, the same on every task of the step
            job = int(env.get("SLURM_JOB_ID", "0") or 0) if env.get("SLURM_JOB_ID", "0").isdigit() else 0
            step = int(env.get("SLURM_STEP_ID", "0")) if env.get("SLURM_STEP_ID", "0").isdigit() else 0
            low, high = SLURM_PORTS
            port = low + (job * 97 + step) % (high - low)
        launch = Launch(rank, world, local, "srun", addr, port)
    else:
        return Launch(0, 1, None, "none")
    if launch.world < 1 or launch.rank >= launch.world:
        raise ConfigError(f"{launch.launcher}: process {launch.rank} of {launch.world}: the rank must be below the "
                          "number of processes; check the launcher's variables (RANK, WORLD_SIZE or SLURM_*)")
    return launch


def launch_or_single(env: Mapping[str, str] | None = None) -> Launch:
    """:func:`launch_from_env`, or one process where the launch variables are malformed (the error about them is
    raised when the run joins); what decides who prints a stop message."""
    try:
        return launch_from_env(env)
    except ConfigError:
        return Launch(0, 1, None, "none")


# ----- the group ----------------------------------------------------------------------------------------------------
class Group:
    """The processes of one run: who this one is, which rows of a batch are its, and the collectives a
    data-parallel run needs. With one process (:data:`SINGLE`) every method returns at once and changes nothing,
    so an ordinary run takes exactly the code path it took before data-parallel runs existed.

    Args:
        rank, world: this process and the number of processes.
        backend: 'gloo' or 'nccl' (None for one process).
        control: the process group of the failure flags, checkpoints and small messages (gloo, CPU tensors); None:
            the default group (itself gloo).
        owned: this module initialised the process groups, so :meth:`close` destroys them.
    """

    def __init__(self, rank: int = 0, world: int = 1, *, backend: str | None = None, control: Any = None,
                 owned: bool = False) -> None:
        self.rank, self.world, self.backend, self._control, self._owned = rank, world, backend, control, owned

    def __repr__(self) -> str:
        return f"Group(rank={self.rank}, world={self.world}, backend={self.backend!r})"

    @property
    def writes(self) -> bool:
        """Whether this process writes the store, its checkpoints and the log (rank 0)."""
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        """``(rank, world)``: the ``shard`` of :func:`sim.data.iterate_batches` that reads this process's parts."""
        return self.rank, self.world

    def part_of(self, rows: int, what: str) -> BatchPart:
        """This process's place in a global batch of which it holds ``rows`` (its part, as
        ``sim.data.iterate_batches(shard=...)`` cut it: the parts lie in rank order): the processes tell each
        other their parts' sizes (one small exchange on the CPU), so the step needs no other account of the batch
        (a short last batch included)."""
        import torch
        import torch.distributed as dist

        mine = torch.tensor([rows], dtype=torch.int64)
        sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self.world)]
        self._call(lambda: dist.all_gather(sizes, mine, group=self._control), f"sharing the batch sizes of {what}")
        counts = [int(s.item()) for s in sizes]
        start = sum(counts[:self.rank])
        return BatchPart(start, start + rows, sum(counts))

    def check_batches(self, samples: int, batch_size: int, drop_last: bool,
                      evaluated: dict[str, int] | None = None, eval_batch_size: int | None = None,
                      skips_bad_images: bool = False) -> None:
        """Refuse a batch with fewer samples than processes (some process's part would be empty): a training batch
        (``batch_size`` below the number of processes, or the epoch's short last batch), where a step is not
        defined on no samples, or an evaluation batch (``eval_batch_size`` below the number of processes, or the
        last batch of an evaluated split; ``evaluated``: samples by split name), which a streaming loader cannot
        read as an empty part. ``skips_bad_images`` (``data.on_bad_image: skip``) is refused too: a process whose
        part of a batch held only undecodable files would leave that batch out alone and fall out of step with the
        others."""
        if self.world == 1:
            return
        if skips_bad_images:
            raise ConfigError(f"data.on_bad_image 'skip' cannot be used in a data-parallel run ({self.world} "
                              "processes): a process whose part of a batch holds only undecodable files would leave "
                              "that batch out alone and wait for the others at a different step. Use on_bad_image: "
                              "error (it names each undecodable file, to remove), or run one process",
                              key="data.on_bad_image")
        if batch_size < self.world:
            raise ConfigError(f"train.batch_size {batch_size} is smaller than the {self.world} processes of this "
                              "data-parallel run: every process needs at least one sample of each batch. Start at "
                              f"most {batch_size} processes, or raise train.batch_size", key="train.batch_size")
        last = samples % batch_size
        if not drop_last and 0 < last < self.world:
            raise ConfigError(f"the last batch of every epoch holds {last} of the {samples} training samples (fewer "
                              f"than train.batch_size {batch_size}), too few for the {self.world} processes of this "
                              "data-parallel run: every process needs at least one sample of each batch. Set "
                              f"train.drop_last: true, start at most {last} processes, or change train.batch_size",
                              key="train.drop_last")
        if evaluated and eval_batch_size < self.world:
            raise ConfigError(f"train.eval_batch_size {eval_batch_size} is smaller than the {self.world} processes of "
                              "this data-parallel run, each of which evaluates its part of every evaluation batch; "
                              f"set train.eval_batch_size to at least {self.world}", key="train.eval_batch_size")
        for split, count in (evaluated or {}).items():
            last = count % eval_batch_size
            if 0 < last < self.world:
                raise ConfigError(f"the last evaluation batch of the {split} split holds {last} of its {count} samples "
                                  f"(train.eval_batch_size {eval_batch_size}), too few for the {self.world} processes "
                                  "of this data-parallel run, each of which evaluates its part; change "
                                  "train.eval_batch_size", key="train.eval_batch_size")

    # ----- agreeing on failures (control plane) -------------------------------------------------------------------
    @contextlib.contextmanager
    def agree(self, what: str) -> Iterator[None]:
        """A section every process runs together (``what``: what it does, for messages; the same on every process).
        At its end the processes tell each other whether it failed; if any did, every process raises the error of
        the lowest failing rank: the failing process its own exception, the others a
        :class:`~sim.errors.NonFiniteError` or :class:`~sim.errors.SingularLayerError` as it was raised (so the run
        stops or retries on every process) or a :class:`~sim.errors.DistributedError` naming the process. On ranks
        other than 0 the error is marked ``reported_elsewhere``: rank 0 prints it. Stop signals (``KeyboardInterrupt``
        and :class:`~sim.errors.Stopped`) pass through unagreed."""
        if self.world == 1:
            yield
            return
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - whatever failed here is agreed on, and raised again below
            self._settle(what, exc)
            raise
        self._settle(what, None)

    def _settle(self, what: str, exc: Exception | None) -> None:
        import torch
        import torch.distributed as dist

        tag = zlib.crc32(what.encode()) & 0x3FFFFFFF  # the section's name: every process must be in the same one
        status = torch.tensor([int(exc is not None), tag, -tag], dtype=torch.int64)
        self._call(lambda: dist.all_reduce(status, op=dist.ReduceOp.MAX, group=self._control), what)
        failed, high, neg_low = status.tolist()
        if high != -neg_low:
            raise self.mark(DistributedError(
                f"the processes of the data-parallel run are out of step: process {self.rank} was {what}, another "
                "was elsewhere. This is a bug in gaitsim; the store keeps everything up to its last checkpoint "
                "(continue with --resume)"))
        if not failed:
            return
        reports = self._gather(None if exc is None else _describe(exc), what)
        first = min(rank for rank, report in enumerate(reports) if report is not None)
        if first == self.rank:
            raise self.mark(exc)
        raise self.mark(_rebuild(reports[first], first, self.world, what)) from exc

    def mark(self, exc: BaseException) -> BaseException:
        """``exc`` marked ``reported_elsewhere`` on every rank but 0: an error every process raises together, which
        rank 0 prints (:mod:`sim.cli`)."""
        if self.rank != 0:
            with contextlib.suppress(AttributeError, TypeError):  # an exception type with __slots__: printed twice
                exc.reported_elsewhere = True
        return exc

    def _call(self, fn: Callable[[], Any], what: str) -> Any:
        """Run a collective; a process lost on the way (its sockets closed, a timeout) becomes one
        :class:`~sim.errors.DistributedError` instead of torch.distributed's backtrace."""
        try:
            return fn()
        except RuntimeError as exc:  # torch.distributed.DistError (DistNetworkError, ...) is a RuntimeError
            raise self.mark(DistributedError(
                f"process {self.rank} of {self.world} lost contact with the other processes of the data-parallel "
                f"run while {what} ({_reason(exc)}): one of them stopped or was killed (its own output, or the "
                "launcher's, says why). The store keeps everything up to its last checkpoint: continue with the "
                "same command and --resume, with this number of processes or another")) from None

    def least(self, value: int, what: str) -> int:
        """The smallest ``value`` over the processes."""
        if self.world == 1:
            return value
        import torch
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.int64)
        self._call(lambda: dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self._control), what)
        return int(t.item())

    def _gather(self, obj: Any, what: str) -> list[Any]:
        """Every process's ``obj`` (JSON), by rank."""
        import torch
        import torch.distributed as dist

        data = json.dumps(obj).encode()
        size = torch.tensor([len(data)], dtype=torch.int64)
        sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self.world)]
        self._call(lambda: dist.all_gather(sizes, size, group=self._control), what)
        longest = max(int(s.item()) for s in sizes)
        buf = torch.zeros(longest, dtype=torch.uint8)
        buf[:len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else buf[:0]
        bufs = [torch.empty(longest, dtype=torch.uint8) for _ in range(self.world)]
        self._call(lambda: dist.all_gather(bufs, buf, group=self._control), what)
        return [json.loads(b[:int(s.item())].numpy().tobytes()) for b, s in zip(bufs, sizes)]

    def _broadcast_bytes(self, data: bytes | None, what: str) -> bytes:
        """Rank 0's ``data`` on every process."""
        import torch
        import torch.distributed as dist

        size = torch.tensor([len(data) if self.writes else 0], dtype=torch.int64)
        self._call(lambda: dist.broadcast(size, src=0, group=self._control), what)
        n = int(size.item())
        if n == 0:
            return b""
        buf = torch.frombuffer(bytearray(data), dtype=torch.uint8) if self.writes else torch.empty(n, dtype=torch.uint8)
        self._call(lambda: dist.broadcast(buf, src=0, group=self._control), what)
        return data if self.writes else buf.numpy().tobytes()

    def share(self, value: Any, what: str) -> Any:
        """Rank 0's ``value`` (JSON: what it decided about the store) on every process."""
        if self.world == 1:
            return value
        data = self._broadcast_bytes(json.dumps(value).encode() if self.writes else None, what)
        return json.loads(data)

    def share_checkpoint(self, checkpoint: Checkpoint | None) -> Checkpoint | None:
        """Rank 0's checkpoint (or None: a fresh start) on every process, so every process continues from the state
        rank 0 read and checked; sent as the bytes ``torch.save`` writes and read with ``weights_only=True``, as a
        checkpoint file is."""
        if self.world == 1:
            return checkpoint
        import torch

        from sim.checkpoint import Checkpoint

        payload = None
        if self.writes:
            buf = io.BytesIO()
            if checkpoint is not None:
                torch.save(checkpoint.to_state(), buf)
            payload = buf.getvalue()
        data = self._broadcast_bytes(payload, "sending the checkpoint to every process")
        if self.writes or not data:
            return checkpoint
        return Checkpoint.from_state(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))

    def each(self, batches: Iterable, what: str) -> Iterable:
        """``batches``, each item read inside :meth:`agree` (a process that cannot read its part of a batch stops
        every process, naming it); with one process ``batches`` itself."""
        if self.world == 1:
            return batches

        def read() -> Iterator:
            it, end = iter(batches), object()
            while True:
                with self.agree(what):
                    item = next(it, end)
                if item is end:
                    return
                yield item

        return read()

    # ----- summing (data plane) -----------------------------------------------------------------------------------
    def sum_(self, tensors: list[torch.Tensor], what: str = "summing over the processes") -> None:
        """Replace every tensor by its sum over the processes, in place: one all-reduce per dtype and device of the
        tensors flattened into one buffer, GPU tensors over the run's backend (NCCL), CPU tensors over the gloo
        control group (NCCL cannot reduce them; a plugin rule's sums may live on the CPU)."""
        if self.world == 1 or not tensors:
            return
        import torch
        import torch.distributed as dist

        by_kind: dict[tuple, list[torch.Tensor]] = {}
        for t in tensors:
            by_kind.setdefault((t.dtype, t.device), []).append(t)
        for (_, device), group in by_kind.items():
            flat = torch.cat([t.reshape(-1) for t in group])
            over = self._control if device.type == "cpu" else None  # None: the default group, the run's backend
            self._call(lambda flat=flat, over=over: dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=over), what)
            for t, chunk in zip(group, flat.split([t.numel() for t in group])):
                t.copy_(chunk.view_as(t))

    def reduce_step(self, net: Network, result: StepResult) -> StepResult:
        """``result`` (this process's local phases) made the global batch's step, in place: the raw updates of every
        layer and of every rule's own parameters, the batch loss and the rules' :meth:`~sim.rules.base.Rule.batch_sums`
        summed over the processes."""
        tensors = [g for upd in result.updates for g in upd.values()]
        tensors += [g for fb in result.feedback_updates for g in fb.values()]
        tensors.append(result.loss)
        tensors += [t for rule in net.rules for t in rule.batch_sums()]
        self.sum_(tensors, "summing the step's updates")
        return result

    def close(self) -> None:
        """Leave the process groups (if this module made them)."""
        if self.world == 1 or not self._owned:
            return
        import torch.distributed as dist

        with contextlib.suppress(Exception):  # after a lost process the groups may refuse to shut down cleanly
            dist.destroy_process_group()


#: one process: an ordinary run
SINGLE = Group()


def _reason(exc: BaseException) -> str:
    """The first sentence of a backend's error, without its source location (``[.../pair.cc:561] Connection closed
    by peer [127.0.0.1]:26793. This is typically ...`` -> ``Connection closed by peer [127.0.0.1]:26793``)."""
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "") or type(exc).__name__
    text = re.sub(r"^\[[^\]]*\.(?:cc|cpp|h|hpp):\d+\]\s*", "", text)
    return text.split(". ")[0].rstrip(".")[:200]


def _describe(exc: BaseException) -> dict[str, Any]:
    """What the other processes need to raise ``exc``'s error (JSON)."""
    kind = ("nonfinite" if isinstance(exc, NonFiniteError) else "singular" if isinstance(exc, SingularLayerError)
            else "gaitsim" if isinstance(exc, GaitsimError) else "other")
    return {"kind": kind, "type": type(exc).__name__, "message": str(exc)[:4000] or type(exc).__name__,
            "step": getattr(exc, "step", None), "layer": getattr(exc, "layer", None),
            "quantity": getattr(exc, "quantity", None)}


def _rebuild(report: dict[str, Any], rank: int, world: int, what: str) -> Exception:
    """The error a process raises for another process's failure ``report``."""
    message = report["message"]
    if report["kind"] == "nonfinite":  # the same error on every process: the same stop, or the same retry
        return NonFiniteError(message, step=report["step"], layer=report["layer"], quantity=report["quantity"])
    if report["kind"] == "singular":
        return SingularLayerError(message)
    if report["kind"] == "gaitsim":
        return DistributedError(f"{message} (process {rank} of {world} of the data-parallel run, while {what})")
    return DistributedError(f"process {rank} of {world} of the data-parallel run failed while {what}: "
                            f"{report['type']}: {message.splitlines()[0] if message else ''} (its traceback is in "
                            "its own output)")


# ----- joining ------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def same_on_every_process(env: Mapping[str, str] | None = None) -> Iterator[None]:
    """Errors in what every process of a launch reads alike (the config, the command line, the device asked for),
    raised before the processes have joined: every process raises the same one, so rank 0 alone reports it (the
    others' are marked ``reported_elsewhere``). A :class:`~sim.errors.DistributedError` (a process that cannot reach
    the others) is each process's own, and printed by each."""
    try:
        yield
    except GaitsimError as exc:
        launch = launch_or_single(env)
        if launch.rank != 0 and launch.world > 1 and not isinstance(exc, DistributedError):
            exc.reported_elsewhere = True
        raise


def _backend(device: str, launch: Launch) -> str:
    """The backend for ``device`` (NCCL for cuda, gloo for cpu), refusing a device that cannot be one process's
    own; the same answer on every process."""
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"device {device!r} is not a torch device; use cpu or cuda") from None
    if dev.type == "cpu":
        return "gloo"
    if dev.type != "cuda":
        raise ConfigError(f"device {device!r}: a data-parallel run trains on cpu (gloo) or cuda (NCCL)")
    if dev.index is not None:
        raise ConfigError(f"device {device!r}: in a data-parallel run every process uses its own GPU, "
                          f"cuda:LOCAL_RANK; give the device as cuda (--device cuda), not one GPU for all "
                          f"{launch.world} processes")
    if launch.local_rank is None:
        raise ConfigError("the launcher did not say which GPU of its machine this process uses (LOCAL_RANK, or "
                          "SLURM_LOCALID under srun, is not set); start the run with torchrun or srun")
    if not torch.cuda.is_available():
        raise ConfigError("device cuda asked for but CUDA is not available here; use --device cpu")
    return "nccl"


def _use_gpu(launch: Launch) -> None:
    """Make this process's own GPU its current device (what ``cuda`` then means in it): ``cuda:LOCAL_RANK`` among
    the GPUs its machine shows, or ``cuda:0`` where ``srun`` shows each task one GPU of its own (``--gpus-per-task
    1``); refuse a process without one (more processes on its machine than visible GPUs)."""
    import torch

    count = torch.cuda.device_count()
    if launch.local_rank < count:
        torch.cuda.set_device(launch.local_rank)
        return
    if count == 1 and launch.launcher == "srun":
        torch.cuda.set_device(0)
        return
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    raise ConfigError(f"process {launch.rank} is process {launch.local_rank} of its machine but only {count} GPU(s) "
                      f"are visible{f' (CUDA_VISIBLE_DEVICES={visible})' if visible is not None else ''}; start at "
                      f"most {count} processes per machine (torchrun --nproc-per-node {count})")


def _checked_backend(device: str, launch: Launch, joined: bool) -> str:
    """The backend of a launch of several processes, every check that needs no other process done."""
    import torch.distributed as dist

    if not dist.is_available():
        raise DistributedError("this torch build has no torch.distributed, so it cannot train one run on several "
                               "processes; install a torch with distributed support or start one process")
    backend = _backend(device, launch)
    if joined and str(dist.get_backend()) != backend:
        raise ConfigError(f"device {device!r} needs the {backend} backend, but this process group uses "
                          f"{dist.get_backend()}; initialise the process group with the device's backend (nccl "
                          "for cuda, gloo for cpu)")
    if not joined and (not launch.master_addr or launch.master_port is None):
        raise ConfigError(f"process {launch.rank} of {launch.world}: MASTER_ADDR and MASTER_PORT are not set, so "
                          "the processes cannot meet; start the run with torchrun (which sets them), or set them "
                          "to rank 0's host and a free port")
    return backend


@contextlib.contextmanager
def join(device: str, env: Mapping[str, str] | None = None) -> Iterator[Group]:
    """The processes of this run, for the duration of the block: :data:`SINGLE` outside a data-parallel launch,
    else a :class:`Group` joined through ``torch.distributed`` (and left at the end). A process group the caller
    initialised already (a script run under torchrun) is used as it is, and left to the caller.

    Raises:
        ConfigError: the device does not fit the launch (``cuda:N`` for every process, more processes than GPUs,
            a device other than cpu and cuda, a process group of the other backend).
        DistributedError: the processes cannot meet (rendezvous address, port, a process that never started).
    """
    import torch.distributed as dist

    with same_on_every_process(env):
        launch = launch_from_env(env)
        joined = dist.is_available() and dist.is_initialized()
        backend = None
        if joined:  # the caller's process group: its ranks are the truth
            launch = Launch(dist.get_rank(), dist.get_world_size(), launch.local_rank, launch.launcher)
        if launch.world > 1:
            backend = _checked_backend(device, launch, joined)
    if launch.world == 1:
        yield SINGLE
        return
    if not joined:
        if env is None:  # env:// reads them here (srun's were derived above); torchrun's are left as they are
            os.environ.setdefault("MASTER_ADDR", launch.master_addr)
            os.environ.setdefault("MASTER_PORT", str(launch.master_port))
        try:
            dist.init_process_group(backend, init_method="env://", rank=launch.rank, world_size=launch.world,
                                    timeout=TIMEOUT)
        except (RuntimeError, ValueError) as exc:
            raise DistributedError(f"process {launch.rank} of {launch.world} cannot join the data-parallel run at "
                                   f"{launch.master_addr}:{launch.master_port} ({backend}): {_reason(exc)}. Check "
                                   "that every process was started with the same MASTER_ADDR and MASTER_PORT and can "
                                   "reach that host") from None
    # the failure flags go over gloo on the CPU beside NCCL, so they never wait for the GPU
    control = dist.new_group(backend="gloo", timeout=TIMEOUT) if backend == "nccl" else None
    group = Group(launch.rank, launch.world, backend=backend, control=control, owned=not joined)
    try:
        with group.agree("choosing each process's GPU"):
            if backend == "nccl":
                _use_gpu(launch)
        yield group
    finally:
        group.close()
