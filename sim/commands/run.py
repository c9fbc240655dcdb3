"""``python -m sim run CONFIG --out STORE``: train one run and write its zarr archive (docs/runs.md).

The command line of :func:`sim.train.run`, which the Snakemake training job calls with the same arguments. Science
settings come from the config; runtime settings (device, output, log, resume) from the command line. For fault
injection in tests, ``GAITSIM_FAULT`` (docs/reliability.md) makes a run crash or fail a write at a named moment.
"""

from __future__ import annotations

import argparse

help = "train one run from a YAML config and write its zarr archive"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="run config (YAML), e.g. configs/digits_deep_gp.yaml; see docs/runs.md")
    p.add_argument("--out", required=True, metavar="STORE",
                   help="zarr store to write, a folder such as results/digits_deep_gp.zarr")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue STORE from its newest intact checkpoint (damaged files are named and passed "
                      "over); a complete store is checked and left as it is")
    mode.add_argument("--overwrite", action="store_true", help="replace an existing run store")
    p.add_argument("--device", metavar="DEVICE", help="cpu, cuda or cuda:N (overrides train.device)")
    p.add_argument("--log", metavar="FILE", help="log file (default: STORE.log beside the store)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or epoch lines on stderr (the log file "
                   "still gets everything)")


def main(args: argparse.Namespace) -> int:
    from sim.config import load_config
    from sim.train import run

    cfg = load_config(args.config)
    out = run(cfg, args.out, resume=args.resume, overwrite=args.overwrite, device=args.device,
              progress=not args.quiet, log_file=args.log)
    print(out)
    return 0
