"""Training history: one record per finished epoch and the one ``history.csv`` writer.

Both arms (the CNN training and the VLM fine-tuning) keep their epochs as :class:`EpochRecord`
s (or a subclass with typed fields) and write them with :func:`write_history`, so every
``history.csv`` is formatted the same way: floats with one format, booleans as 0/1, missing
values as ``missing``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from GliomaCompareLib.fileio import atomic_write_text

__all__ = ["EpochRecord", "flatten_metrics", "format_cell", "history_csv", "write_history"]


def flatten_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a": 1, "seg": {"dice": 0.5}}`` -> ``{"a": 1, "seg_dice": 0.5}`` (one level; values
    that are mappings below that level are left out)."""
    out: dict[str, Any] = {}
    for name, value in metrics.items():
        if isinstance(value, Mapping):
            out.update((f"{name}_{k}", v) for k, v in value.items() if not isinstance(v, Mapping))
        else:
            out[name] = value
    return out


@dataclass(frozen=True)
class EpochRecord:
    """One finished epoch.

    Attributes:
        epoch: 1-based (0: evaluation of given weights, no training).
        seconds: wall time of the epoch including validation.
        metrics: name -> value (a value may be a mapping, e.g. task -> metric -> value; see
            :func:`flatten_metrics`).
    """

    epoch: int
    seconds: float
    metrics: Mapping[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """The record's ``history.csv`` row: ``epoch``, the flattened metrics, ``seconds``."""
        return {"epoch": self.epoch, **flatten_metrics(self.metrics), "seconds": self.seconds}


def format_cell(value: Any, float_format: str = ".6g", missing: str = "") -> str:
    """One cell: None -> ``missing``, bool -> ``0``/``1``, float -> ``float_format``."""
    if value is None:
        return missing
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        return format(value, float_format)
    return str(value)


def history_csv(
    records: Iterable[EpochRecord],
    *,
    first: Sequence[str] = ("epoch",),
    last: Sequence[str] = ("seconds",),
    float_format: str = ".6g",
    formats: Mapping[str, str] | None = None,
    missing: str = "",
) -> str:
    """The CSV text of ``records``' rows (see :func:`write_history`)."""
    rows = [r.row() for r in records]
    middle: list[str] = []
    for row in rows:
        middle += [k for k in row if k not in first and k not in last and k not in middle]
    columns = [*first, *middle, *last]
    formats = formats or {}
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(
            format_cell(row.get(k), formats.get(k, float_format), missing) for k in columns
        )
    return buffer.getvalue()


def write_history(path: str | Path, records: Iterable[EpochRecord], **options: Any) -> Path:
    """Write ``history.csv`` atomically: one row per record.

    Columns: ``first``, then every other key of the rows in order of first appearance, then
    ``last`` (defaults ``("epoch",)`` / ``("seconds",)``). Options: ``float_format`` (".6g"),
    ``formats`` (column -> format, overriding it), ``missing`` (text for None / absent; "").
    """
    return atomic_write_text(path, history_csv(records, **options))
