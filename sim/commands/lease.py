"""``python -m sim lease -- COMMAND ...``: run a command on a leased GPU (the CLI twin of :mod:`sim.gpu`).

Takes a lease exactly as the workflow's run job does, runs COMMAND with ``CUDA_VISIBLE_DEVICES`` set to the
leased GPU (so it sees one GPU, ``cuda:0``) and ``GAITSIM_DEVICE`` set to ``cuda:0`` or ``cpu``, passes the locked
descriptor to the child (the GPU stays leased while either process lives) and exits with the command's status.
``python -m sim run`` trains on ``GAITSIM_DEVICE`` when it is given no ``--device``, so it needs none here::

    python -m sim lease -- python -m sim run configs/cifar10_deep_gp.yaml --out results/x.zarr
    python -m sim lease --status          # which GPUs of the pool are leased, by which process

With ``--gpus N`` it leases N GPUs together (all or none) for a data-parallel run: the command sees all N, and
``GAITSIM_DEVICE`` is ``cuda`` (each process of the run takes ``cuda:LOCAL_RANK``)::

    python -m sim lease --gpus 8 -- torchrun --standalone --nproc-per-node 8 -m sim run CONFIG --out STORE
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

help = "run a command on a GPU leased for it alone (or list the leases)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timeout", type=float, default=600.0, metavar="S",
                   help="seconds to wait while every GPU is leased (default 600; 0 tries once)")
    p.add_argument("--require-gpu", action="store_true", help="fail instead of using the CPU when there is no GPU")
    p.add_argument("--fallback-cpu", action="store_true",
                   help="use the CPU when every GPU stays leased for the whole timeout")
    p.add_argument("--gpus", type=int, default=1, metavar="N",
                   help="lease N GPUs together (all or none) for a data-parallel run of N processes; the command gets "
                   "GAITSIM_DEVICE=cuda and sees the N GPUs (default 1)")
    p.add_argument("--status", action="store_true", help="list the pool's devices and who holds each, then exit")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- COMMAND ...",
                   help="the command to run; it gets GAITSIM_DEVICE, the leased device, which `python -m sim run` "
                   "trains on when given no --device")


def main(args: argparse.Namespace) -> int:
    from sim.errors import ConfigError
    from sim.gpu import HELD_ENV, lease_gpu, lease_gpus, lease_status, lock_dir

    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not args.timeout >= 0:  # NaN too: a deadline of NaN would never pass
        raise ConfigError(f"--timeout must be a number of seconds >= 0 (inf waits for ever), got {args.timeout}")
    if args.status:
        pool = lease_status()
        if not pool:
            print("no GPU in the pool (GAITSIM_GPU_POOL, CUDA_VISIBLE_DEVICES, nvidia-smi -L)")
        for device_id, holder in pool:
            state = "free" if holder is None else f"leased by pid {holder}"
            print(f"gpu {device_id}: {state}")
        print(f"lock folder: {lock_dir()}")
        return 0
    if not cmd:
        raise ConfigError("give the command to run after --, e.g. `python -m sim lease -- python train.py`")
    if args.gpus < 1:
        raise ConfigError(f"--gpus must be a positive number of GPUs, got {args.gpus}")
    lease = (lease_gpu(args.timeout, require_gpu=args.require_gpu, fallback_cpu=args.fallback_cpu, set_env=False)
             if args.gpus == 1 else
             lease_gpus(args.gpus, args.timeout, require_gpu=args.require_gpu, fallback_cpu=args.fallback_cpu))
    with lease:
        env = {**os.environ, **lease.env, "GAITSIM_DEVICE": lease.device}
        fds = lease.fds
        if fds:  # a lease asked for inside the command is refused at once, not after its timeout
            env[HELD_ENV] = f"{os.getpid()}:{lease.physical_id}"
        print(f"lease: {lease.device} (gpu {lease.physical_id or '-'}, {lease.source})", file=sys.stderr)
        try:
            child = subprocess.Popen(cmd, env=env, pass_fds=fds)
        except FileNotFoundError:
            raise ConfigError(f"command not found: {cmd[0]}") from None
        except OSError as exc:
            raise ConfigError(f"cannot run {cmd[0]}: {exc.strerror}") from None
        while True:
            try:
                return child.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                problem = lease.verify()  # the lock file deleted while held: take it again, or say it is lost
                if problem:
                    print(f"lease: warning: {problem}", file=sys.stderr)
