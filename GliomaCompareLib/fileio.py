"""Atomic file writes and JSON-safe values, shared by every part that writes results.

A result file is written to a temporary file beside it (a unique name, so concurrent shards
never share one) and renamed onto its path only when complete: an interrupted run leaves the
previous file or none, never half of one. Standard library and numpy only, so the Slicer module
can use it too.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "jsonable",
]


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", *, fsync: bool = True) -> Iterator[Any]:
    """Open a temporary file beside ``path``; rename it onto ``path`` only on success.

    ``fsync``: flush to disk before the rename, so the file also survives a power cut (an
    interrupted process is covered either way; small per-query files skip it for speed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield handle
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically (no fsync); returns the path."""
    with atomic_write(path, fsync=False) as handle:
        handle.write(text)
    return Path(path)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` atomically (no fsync); returns the path."""
    with atomic_write(path, "wb", fsync=False) as handle:
        handle.write(data)
    return Path(path)


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically (values JSON cannot hold become ``str``)."""
    with atomic_write(path) as handle:
        json.dump(obj, handle, indent=2, sort_keys=False, default=str)
        handle.write("\n")
    return Path(path)


def jsonable(value: Any) -> Any:
    """``value`` with mappings, sequences, paths and numpy scalars made JSON-safe; NaN and
    infinities become ``None`` (JSON has no such numbers)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
