"""The codecs a run store may name: nothing loaded from a store is executed, whatever the installed zarr and numcodecs
would do with a codec that unpickles or imports (docs/reliability.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sim.archive.errors import ArchiveError

#: the codecs a run store is written with (and the few other plain ones zarr offers); a store whose metadata names
#: any other (``numcodecs.pickle``, an object codec, a third-party name resolved by import) is refused before a
#: chunk is decoded: nothing loaded is executed, whatever the installed zarr/numcodecs would do with it
SAFE_CODECS = frozenset({"bytes", "zstd", "crc32c", "gzip", "blosc", "transpose", "sharding_indexed", "vlen-utf8",
                         "vlen-bytes"})


def unsafe_codecs(path: Path | str) -> list[str]:
    """``'file: codec'`` for every codec named in the store's metadata (each ``zarr.json``, the consolidated copy
    in the root one included) that is not in :data:`SAFE_CODECS`; empty for a store we could have written."""
    found = []

    def walk(node: Any, where: Path) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("codecs", "index_codecs") and isinstance(value, list):
                    for codec in value:
                        name = codec.get("name") if isinstance(codec, dict) else codec
                        if name not in SAFE_CODECS:
                            found.append(f"{where}: codec {name!r}")
                walk(value, where)
        elif isinstance(node, list):
            for value in node:
                walk(value, where)

    root = Path(path)
    for name in (".zarray", ".zgroup", ".zmetadata", ".zattrs"):  # zarr v2: object codecs such as pickle
        found += [f"{meta}: zarr v2 metadata (a run store is zarr v3)" for meta in sorted(root.rglob(name))]
    for meta in sorted(root.rglob("zarr.json")) if root.is_dir() else []:
        try:
            walk(json.loads(meta.read_text(encoding="utf-8")), meta)
        except (OSError, ValueError):
            continue  # unreadable metadata is reported by whoever opens it
    return found


def check_codecs(path: Path | str) -> None:
    """Refuse (ArchiveError) a store whose metadata names a codec a run never writes (see :data:`SAFE_CODECS`)."""
    bad = unsafe_codecs(path)
    if bad:
        raise ArchiveError(f"{path} names codecs a gaitsim run never writes ({'; '.join(bad[:4])}"
                           f"{'; ...' if len(bad) > 4 else ''}); refused before anything is decoded (such a codec "
                           "can run code from the file). Do not open stores from untrusted sources")
