"""The one epoch history (``GliomaCompareLib.history``) and the one DDP context, as the VLM
fine-tuning uses them (and the CNN training will)."""

from __future__ import annotations

import math

import pytest

from GliomaCompareLib.distributed import DistContext, init_distributed
from GliomaCompareLib.history import EpochRecord, flatten_metrics, history_csv, write_history
from GliomaCompareLib.vlm.finetune_trainer import HISTORY_COLUMNS, FinetuneEpoch


def _epoch(epoch: int, metrics: dict, val_loss=None, improved=False) -> FinetuneEpoch:
    return FinetuneEpoch(
        epoch=epoch,
        global_step=2 * epoch,
        train_loss=1.0 / 3.0,
        val_loss=val_loss,
        metrics=metrics,
        monitor_value=val_loss,
        improved=improved,
        lr=2e-4,
        seconds=1.5,
        examples=8,
    )


def test_flatten_metrics_is_one_level():
    nested = {"loss": 1.0, "grade": {"accuracy": 0.5, "status_counts": {"ok": 3}}}
    assert flatten_metrics(nested) == {"loss": 1.0, "grade_accuracy": 0.5}


def test_finetune_history_keeps_its_columns_and_format(tmp_path):
    history = [
        _epoch(1, {}),
        _epoch(2, {"grade": {"accuracy": 0.6, "status_counts": {"ok": 1}}}, 0.25, True),
    ]
    path = write_history(tmp_path / "history.csv", history, first=HISTORY_COLUMNS, last=())
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join([*HISTORY_COLUMNS, "grade_accuracy"])
    assert lines[1] == "1,2,0.333333,,,0,0.0002,1.5,8,"
    assert lines[2] == "2,4,0.333333,0.25,0.25,1,0.0002,1.5,8,0.6"
    record = history[1]
    assert FinetuneEpoch.from_dict(record.to_dict()) == record
    assert isinstance(record, EpochRecord)


def test_generic_records_with_per_column_formats():
    records = [
        EpochRecord(
            0, 0.123, {"train_loss": math.nan, "score": 0.5, "dice_WT": 0.25, "best": True}
        ),
        EpochRecord(1, 2.0, {"train_loss": 0.75, "score": 0.5, "best": False, "lr": 1e-3}),
    ]
    text = history_csv(
        records,
        first=("epoch", "train_loss", "score"),
        last=("lr", "seconds", "best"),
        float_format=".6f",
        formats={"lr": ".3g", "seconds": ".2f"},
        missing="nan",
    )
    assert text.splitlines() == [
        "epoch,train_loss,score,dice_WT,lr,seconds,best",
        "0,nan,0.500000,0.250000,nan,0.12,1",
        "1,0.750000,0.500000,nan,0.001,2.00,0",
    ]


def test_one_process_context_needs_no_process_group():
    pytest.importorskip("torch")
    ctx = init_distributed("cpu")
    assert ctx == DistContext(0, 0, 1, ctx.device) and ctx.device.type == "cpu"
    assert not ctx.enabled and ctx.is_main and not ctx.owns_group
    assert ctx.sum(1, 2.5) == [1.0, 2.5]
    assert ctx.gather("x") == ["x"] and ctx.broadcast({"a": 1}) == {"a": 1}
    assert ctx.mean(3) == 3.0
    ctx.barrier()
    ctx.close()
