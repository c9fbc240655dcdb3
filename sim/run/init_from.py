"""Start a run from another run's trained weights (``train.init_from``).

The weights come from the other store's newest intact checkpoint (:func:`sim.checkpoint.load`): the forward weights
and biases of every layer (the ``layers.*`` entries of ``Network.state_dict``), nothing else. The rules' own state
(FA's or KP's feedback weights, a learned inverse), Adam's moments, the noise generator and the data order stay this
run's own, so a run that starts from a GP-trained network under another rule, or under the regulariser alone
(``train.task_updates: false``), differs from its source only where its config says so.

Why a checkpoint and not the archive: the archive records activities and metrics, not weights; the checkpoint holds
the exact weights of the last completed epoch (the final one for a finished run).
"""

from __future__ import annotations

from pathlib import Path

import torch

from sim import checkpoint as ckpt_io
from sim.archive import ArchiveError, read_attrs
from sim.errors import ConfigError
from sim.network import Network
from sim.run.log import log

#: the ``Network.state_dict`` entries taken from the source: each layer's parameters
PREFIX = "layers."
#: what to give instead of a path that cannot be read
GIVE = "give the run store to start from, e.g. results/<study>/<experiment>/rule~gp/seed~0/run.zarr"


def load_initial_weights(net: Network, source: str | Path) -> dict[str, object]:
    """Copy the forward weights and biases of the run store ``source``'s newest intact checkpoint into ``net``
    (cast to its dtype, moved to its device); returns what was taken, for the store's provenance: ``path``,
    ``step``, ``epochs_done`` and the source run's ``name``.

    Raises:
        ConfigError: ``source`` is missing, is not a run store, has no checkpoint, or its layers differ from
            ``net``'s in names or shapes (each difference named); nothing in ``net`` is changed then.
        ArchiveError: it has checkpoints but none is intact.
    """
    path = Path(source)
    where = "train.init_from"
    try:
        exists = path.exists()
    except OSError as exc:  # e.g. a name too long for the file system
        raise ConfigError.at(where, f"{str(path)[:200]} cannot be looked up ({exc.strerror}); {GIVE}") from None
    if not exists:
        raise ConfigError.at(where, f"{path} does not exist; {GIVE}")
    attrs = read_attrs(path) if path.is_dir() else None
    if attrs is None or "config" not in attrs:
        raise ConfigError.at(where, f"{path} is not a gaitsim run store (no zarr.json with a run config); give the "
                                    "folder of a run store, e.g. .../run.zarr")
    try:
        checkpoint = ckpt_io.load(path)
    except ArchiveError as exc:
        raise ArchiveError(f"train.init_from: {exc}") from None
    if checkpoint is None:
        raise ConfigError.at(where, f"{path} holds no checkpoint, so its weights are not kept (a run writes one every "
                                    "record.checkpoint_every epochs and after its last); start from a store that "
                                    "has trained at least that far")
    source_weights = {k: v for k, v in checkpoint.network.items() if k.startswith(PREFIX)}
    own = {k: v for k, v in net.state_dict().items() if k.startswith(PREFIX)}
    problems = [f"{k} is missing from it" for k in own if k not in source_weights]
    problems += [f"it has {k}, which this network lacks" for k in source_weights if k not in own]
    problems += [f"{k}: {list(source_weights[k].shape)} there, {list(v.shape)} here" for k, v in own.items()
                 if k in source_weights and source_weights[k].shape != v.shape]
    if problems:
        names = ", ".join(f"{i}={layer.name}" for i, layer in enumerate(net.layers))
        raise ConfigError.at(where, f"the weights of {path} do not fit this network (layers {names}): "
                                    f"{'; '.join(problems[:4])}{' ...' if len(problems) > 4 else ''}; start from a "
                                    "run of the same network (preset and preset options)")
    with torch.no_grad():
        for key, value in own.items():
            value.copy_(source_weights[key])  # cast to this run's dtype and device
    taken = {"path": str(path), "step": int(checkpoint.step), "epochs_done": int(checkpoint.epochs_done),
             "name": str(attrs.get("name", ""))}
    log.info(f"initial weights from {path} (its checkpoint after epoch {taken['epochs_done']}, step {taken['step']})")
    return taken


def check_not_own_store(source: str | Path, out: Path) -> None:
    """Refuse ``train.init_from`` naming the store this run writes (``out``, or the published store of a
    ``.partial`` one): starting over replaces that store, and the weights it was to start from with it."""
    out = Path(out)
    own = {out.resolve(), out.with_name(out.name.removesuffix(".partial")).resolve()}
    if Path(source).resolve() in own:
        raise ConfigError.at("train.init_from", f"{source} is the store this run writes, which starting the run "
                                                "replaces; copy it elsewhere first, or write this run to another "
                                                "--out")
