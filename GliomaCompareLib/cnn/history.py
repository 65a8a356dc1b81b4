"""The epoch history of a training run: one :class:`EpochRecord` per epoch, ``history.csv``.

This is the only place the CNN defines its epoch records and writes them; training
(:mod:`GliomaCompareLib.cnn.train`) imports both from here.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from GliomaCompareLib.fileio import atomic_write_text

__all__ = ["HISTORY_FILE", "EpochRecord", "write_history"]

HISTORY_FILE = "history.csv"


@dataclass(frozen=True)
class EpochRecord:
    """One finished epoch.

    Attributes:
        epoch: 1-based epoch number (0: evaluation of given / untrained weights, no training).
        train_loss: mean training loss (nan for epoch 0).
        val: validation metrics (segmentation: ``dice_mean``, ``dice_<region>``;
            classification: ``auc``, ``loss``, ``balanced_accuracy``, ``sensitivity``,
            ``specificity``, ``threshold``).
        score: the selection metric (``dice_mean`` / ``auc``), nan without validation cases.
        lr: learning rate used in the epoch.
        seconds: wall time of the epoch including validation.
        best: whether this epoch's weights became the model.
    """

    epoch: int
    train_loss: float
    val: dict[str, float]
    score: float
    lr: float
    seconds: float
    best: bool


def write_history(path: str | Path, history: Sequence[EpochRecord]) -> None:
    """Write ``history.csv`` atomically: ``epoch, train_loss, score, <val keys>, lr, seconds,
    best``, one row per record (a val key missing from a record is written as nan)."""
    keys: list[str] = []
    for record in history:
        keys += [k for k in record.val if k not in keys]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["epoch", "train_loss", "score", *keys, "lr", "seconds", "best"])
    for r in history:
        writer.writerow(
            [
                r.epoch,
                f"{r.train_loss:.6f}",
                f"{r.score:.6f}",
                *(f"{r.val.get(k, float('nan')):.6f}" for k in keys),
                f"{r.lr:.3g}",
                f"{r.seconds:.2f}",
                int(r.best),
            ]
        )
    atomic_write_text(Path(path), buffer.getvalue())
