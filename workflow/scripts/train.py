"""Snakemake adapter of rule train: lease a device, train one run (sim.train.run), publish the store atomically.

The run is written to ``run.zarr.partial`` and renamed to ``run.zarr`` only once complete, so a failed or killed job
leaves no store a downstream rule accepts; a rerun resumes the partial store when its config is unchanged. With the
study's ``on_diverge: keep``, a run that stops at a NaN/Inf or a singular layer is a result too: its prefix is
published with the attribute ``diverged`` (the message), which the analysis accepts. CLI twin:
``python -m sim lease -- python -m sim run CONFIG --out STORE``.
"""

import json
import os
import shutil
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

    from sim.archive import RunArchive, read_attrs
    from sim.config import load_config
    from sim.errors import NonFiniteError, SingularLayerError
    from sim.train import run

    torch.set_num_threads(snakemake.threads)
    cfg = load_config(snakemake.input.config)
    out = Path(snakemake.output.store)
    partial = out.with_name(out.name + ".partial")
    def settings(config_json: str | None) -> dict:  # a config without its device (a runtime setting)
        doc = json.loads(config_json or "{}")
        return {**doc, "train": {k: v for k, v in doc.get("train", {}).items() if k != "device"}}

    same = settings((read_attrs(partial) or {}).get("config")) == settings(cfg.to_json())
    try:
        run(cfg, partial, resume=same, overwrite=partial.exists() and not same, device=lease.device,
            progress=False, log_file=snakemake.log[0])
    except (NonFiniteError, SingularLayerError) as exc:
        if config["studies"][snakemake.wildcards.study]["on_diverge"] != "keep":
            raise
        RunArchive.open(partial).commit(diverged=str(exc))
    if out.exists():  # an empty folder or a stale store: Snakemake already counts it as not done
        shutil.rmtree(out)
    os.replace(partial, out)
