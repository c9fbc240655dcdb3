"""One zarr v3 store per run, growing as training runs (docs/runs.md has every variable, dim and unit).

Modules: :mod:`~sim.archive.layout` (dims, variables, layer descriptions), :mod:`~sim.archive.writer` (the writer
:class:`RunArchive` and :func:`remove_store`), :mod:`~sim.archive.read` (attributes, verification, :func:`open_run`),
:mod:`~sim.archive.codecs` (the codecs a store may name), :mod:`~sim.archive.errors`.

The store is written with zarr directly, in the layout xarray reads (``dimension_names`` on every array, non-index
coordinates listed in each variable's ``coordinates`` attribute), so ``xr.open_zarr(store)`` gives a Dataset with

* dims ``step`` (global optimizer step, 0-based), ``epoch`` (1-based), ``layer``, ``probe_epoch`` (the epochs
  after which the probe batch was recorded, 0 = before training; coordinate ``probe_step``: steps taken by then),
  ``sample`` (sample of the probe batch) and one set of unit dims per layer (``unit_<layer>`` for dense layers,
  ``channel_/row_/col_<layer>`` for conv layers);
* per step ``loss``, ``angle(step, layer)``, ``batch_size``; per epoch ``train_top1`` ... ``test_loss``,
  ``ortho_error(epoch, layer)``, ``feedback_angle(epoch, layer)``, ``reconstruction_loss(epoch, layer)``,
  ``epoch_wall_s``; per probe record ``activity_<layer>`` and ``target_<layer>``
  ``(probe_epoch, sample, unit...)``; per sample ``probe_label``.

"Checkpoint" means only resumable state (:mod:`sim.checkpoint`, ``STORE/_checkpoints/``). Stores written before
the probe records were renamed (dims ``checkpoint`` and ``probe``, coordinate ``checkpoint_step``) read with the new
names through :func:`open_run`; they cannot be resumed (:data:`OLD_NAMES`).

**Growing safely.** Rows are appended per epoch: every array of a dim is resized and written, then :meth:`commit`
rewrites the consolidated metadata in the root ``zarr.json`` (one atomic file replace). Readers use the consolidated
metadata, so they see the store as of the last commit: a crash at any point leaves a readable, self-consistent
prefix. zarr's ``LocalStore`` writes every file atomically (temp file + rename), so rewriting a partly filled chunk
never leaves a torn chunk either (a kill leaves at most a ``*.partial`` temp file, removed on reopening).
:meth:`truncate` cuts every dim back to given lengths (resume).

**Checking what is kept.** Every block of rows is hashed (SHA-256 of its bytes) as it is written; the checkpoint
stores these :attr:`RunArchive.digests`, and on resume :meth:`verify` re-reads the rows the checkpoint keeps and
names every chunk file whose rows are missing, undecodable or changed (docs/reliability.md). Every commit also writes
the digests of the committed rows into the root attribute :data:`DIGESTS_ATTR`, so readers verify a store without
its checkpoints: :func:`open_run` does by default (:func:`verify_store`; :class:`DamagedStoreError` names each damaged
chunk and array), and a damaged store is never read as zarr's fill values. A store is deleted by
renaming it out of the way first (:func:`remove_store`), so no moment of a deletion leaves a half-deleted store that
still reads as a run.

Every ``OSError`` (full disk, read-only folder) becomes an :class:`ArchiveError` naming the store.
"""

from sim.archive.codecs import SAFE_CODECS, check_codecs, unsafe_codecs
from sim.archive.errors import ArchiveError, DamagedStoreError, io_errors
from sim.archive.layout import (
    EPOCH_CHUNK,
    EPOCH_METRICS,
    GROWING,
    OLD_NAMES,
    SAFE_NAME,
    STATE_DESCRIPTIONS,
    LayerInfo,
    Lengths,
)
from sim.archive.read import open_run, read_attrs, verify_store
from sim.archive.writer import DIGESTS_ATTR, Digests, RunArchive, digest, remove_store

__all__ = [
    "DIGESTS_ATTR", "EPOCH_CHUNK", "EPOCH_METRICS", "GROWING", "OLD_NAMES", "SAFE_CODECS", "SAFE_NAME",
    "STATE_DESCRIPTIONS", "ArchiveError", "DamagedStoreError", "Digests", "LayerInfo", "Lengths", "RunArchive",
    "check_codecs", "digest", "io_errors", "open_run", "read_attrs", "remove_store", "unsafe_codecs", "verify_store",
]
