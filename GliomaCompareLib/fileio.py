"""Atomic file writes, the one CSV writer, and JSON-safe values, shared by every part that writes
results.

A result file is written to a temporary file beside it (a unique name, so concurrent shards
never share one) and renamed onto its path only when complete: an interrupted run leaves the
previous file or none, never half of one. :func:`atomic_write` gives an open handle;
:func:`atomic_path` gives a temporary path, for writers that open files themselves (nibabel,
``numpy.savez``, ``torch.save``). Standard library and numpy only, so the Slicer module can use
it too.

CSV tables are written by :func:`write_csv` only, so every table has the same cell format
(:func:`format_cell`: floats with ``digits`` significant digits, NaN and None as empty cells,
booleans as 0 / 1) and the same line ends (``\\n``). A text cell that a spreadsheet would run as
a formula (it starts with ``=``, ``+``, ``-`` or ``@`` and is not a number, e.g. a model's raw
answer ``=HYPERLINK(...)``) is written with a leading ``'``, so it opens as text; numbers,
including negative ones (``-0.12``, ``-inf``), are written as they are.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CSV_DIGITS",
    "atomic_path",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "format_cell",
    "inert_text",
    "jsonable",
    "write_csv",
]

#: Significant digits of a float cell in a CSV table (the run's ``metrics/*.csv``).
CSV_DIGITS = 6


@contextlib.contextmanager
def atomic_path(path: str | Path, *, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside ``path`` (unique, not yet created), renamed onto ``path`` when the
    block succeeds and removed when it fails.

    For writers that take a file name rather than a handle. ``suffix`` ends the temporary name,
    for writers that choose the format from it (``".nii.gz"`` for nibabel). The writer creates
    the file, so it gets the usual permissions (``0o666`` less the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", *, fsync: bool = True) -> Iterator[Any]:
    """Open a temporary file beside ``path``; rename it onto ``path`` only on success.

    ``mode``: ``"w"`` (text, UTF-8) or ``"wb"``. ``fsync``: flush to disk before the rename, so
    the file also survives a power cut (an interrupted process is covered either way; small
    per-query files skip it for speed)."""
    encoding = {} if "b" in mode else {"encoding": "utf-8"}
    with atomic_path(path) as tmp, open(tmp, mode.replace("w", "x"), **encoding) as handle:
        yield handle
        if fsync:
            handle.flush()
            os.fsync(handle.fileno())


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


#: First characters that make a spreadsheet read a cell as a formula (CSV injection).
FORMULA_PREFIXES = ("=", "+", "-", "@")


def inert_text(text: str) -> str:
    """``text`` made safe to open in a spreadsheet: prefixed with ``'`` when it starts with one
    of :data:`FORMULA_PREFIXES` and is not a number (``-0.12``, ``+3``, ``-inf`` stay as they
    are, so numeric cells still read back as numbers)."""
    if not text.startswith(FORMULA_PREFIXES):
        return text
    try:
        float(text)
    except ValueError:
        return "'" + text
    return text


def format_cell(value: Any, digits: int = CSV_DIGITS) -> str:
    """The text of one CSV cell: ``""`` for None and NaN, ``f"{value:.{digits}g}"`` for a float
    (``inf`` stays ``inf``), ``0`` / ``1`` for a bool, ``str(value)`` for anything else, made
    inert by :func:`inert_text` (a text that would run as a spreadsheet formula gets a leading
    ``'``)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if value != value else f"{value:.{digits}g}"
    if isinstance(value, bool):
        return str(int(value))
    return inert_text(str(value))


def write_csv(
    path: str | Path,
    columns: Sequence[str],
    rows: Iterable[Mapping[str, Any]],
    *,
    digits: int = CSV_DIGITS,
    ignore_extra: bool = False,
) -> Path:
    """Write ``rows`` as a CSV table with a header of ``columns``, atomically; returns the path.

    Each row maps column names to values (a missing column is an empty cell); cells are formatted
    by :func:`format_cell`; lines end with ``\\n``.

    Args:
        path: the file to write.
        columns: the header, in order.
        rows: one mapping per row.
        digits: significant digits of float cells (default :data:`CSV_DIGITS`).
        ignore_extra: leave out keys that are not columns instead of refusing them.

    Raises:
        KeyError: naming the file, for a row with keys that are not columns (unless
            ``ignore_extra``).
    """
    columns = list(columns)
    rows = list(rows)
    if not ignore_extra:
        known = set(columns)
        for row in rows:
            extra = set(row) - known
            if extra:
                raise KeyError(f"{path}: unknown columns {sorted(extra)}")
    with atomic_write(path) as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([format_cell(row.get(c), digits) for c in columns])
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
