"""Snakemake adapter of rule run: lease a device, then :func:`sim.run.run` with ``publish=True`` (docs/workflow.md).

CLI twin, with the same arguments::

    python -m sim lease -- python -m sim run CONFIG --out STORE --publish --on-diverge {fail,keep} --quiet --log LOG
"""

import sys
from pathlib import Path

snakemake = globals()["snakemake"]  # injected by Snakemake's script directive
sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1]))  # this repo's sim/, even in a bare conda env
from sim.gpu import Lease, lease_gpu  # noqa: E402 - the lease must come before anything touches torch.cuda

config = snakemake.config
device = config["device"]
with Lease("cpu", None) if device == "cpu" else lease_gpu(config["gpu_lease_timeout"],
                                                          require_gpu=device == "cuda") as lease:
    import torch

    from sim.run import run

    from sim.errors import GaitsimError

    torch.set_num_threads(snakemake.threads)
    try:
        run(snakemake.input.config, snakemake.output.store, device=lease.device, progress=False,
            log_file=snakemake.log[0], publish=True,
            on_diverge=config["studies"][snakemake.wildcards.study]["on_diverge"])
    except GaitsimError as exc:  # what is wrong and what to do, one line (as `python -m sim run` prints it)
        sys.exit(f"error: {exc}")
