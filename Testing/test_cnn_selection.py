"""How the CNN picks its kept epoch, and what it records beside it.

The classifier's best epoch is chosen with the report's AUC
(:func:`GliomaCompareLib.metrics.classification.auc_score`, rank formula) through
:func:`GliomaCompareLib.cnn.tasks.selection_auc`. Until issue 12 it was chosen with MONAI's
``compute_roc_auc``; these tests show the two agree exactly wherever MONAI was used (targets of
both classes, finite scores, ties included), so no chosen epoch changes, and pin down the
degenerate cases.
"""

from __future__ import annotations

import csv
import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from monai.metrics import compute_roc_auc

from GliomaCompareLib import __version__
from GliomaCompareLib.cnn.tasks import ClsTask, choose_threshold, selection_auc
from GliomaCompareLib.cnn.train import CNNEpoch, _better, write_epochs
from GliomaCompareLib.metrics.classification import auc_score
from GliomaCompareLib.versions import LIBRARIES, _version, library_versions


def _monai_auc(y, p) -> float:
    """What model selection computed before issue 12 (MONAI, float64 scores)."""
    y_arr = np.asarray(y) > 0.5
    if y_arr.all() or (~y_arr).all():
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(
            compute_roc_auc(torch.tensor(p, dtype=torch.float64), torch.tensor(y_arr.astype(float)))
        )


@pytest.mark.parametrize("seed", range(40))
def test_selection_auc_equals_monai_bit_for_bit_with_and_without_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 40))
    y = rng.integers(0, 2, n).astype(float)
    y[0], y[1] = 0.0, 1.0  # both classes
    # heavy ties (also across classes), or sigmoid outputs as training has them (float32)
    ties = seed % 2 == 0
    p = rng.integers(0, 4, n) / 4.0 if ties else rng.random(n).astype(np.float32).astype(float)
    ours, theirs = selection_auc(y, p), _monai_auc(y, p)
    assert ours == theirs  # exact: both are U / (n_pos * n_neg) with U a multiple of 0.5
    assert ours == auc_score(y.astype(int), p)  # and it is the report's AUC


def test_selection_auc_of_a_one_grade_validation_set_is_nan_as_before():
    for y in ([1.0, 1.0, 1.0], [0.0, 0.0]):
        p = np.linspace(0.1, 0.9, len(y))
        assert math.isnan(selection_auc(y, p)) and math.isnan(_monai_auc(y, p))
        assert auc_score(np.asarray(y, dtype=int), p) is None  # the report says "no AUC"


def test_one_grade_validation_falls_back_to_the_lower_loss_as_before():
    task = ClsTask(config=None)
    first = task.summarize([{"y": 1.0, "p": 0.2, "loss": 0.9}, {"y": 1.0, "p": 0.4, "loss": 0.7}])
    second = task.summarize([{"y": 1.0, "p": 0.6, "loss": 0.5}, {"y": 1.0, "p": 0.8, "loss": 0.3}])
    (_, s1, t1), (_, s2, t2) = first, second
    assert math.isnan(s1) and math.isnan(s2)
    best = {"epoch": 1, "score": s1, "tiebreak": t1}
    assert _better(s2, t2, best)  # lower validation loss wins
    assert not _better(s1, t1, {"epoch": 2, "score": s2, "tiebreak": t2})


def test_the_two_aucs_differ_only_on_nan_scores_where_ours_refuses_to_rank():
    # a diverged network (nan probabilities): MONAI sorts nan as the highest score and returns
    # a number; the rank AUC is nan, so such an epoch is never kept for its AUC
    y = [0.0, 1.0, 0.0, 1.0]
    p = [0.1, float("nan"), 0.3, 0.4]
    assert math.isfinite(_monai_auc(y, p))
    assert math.isnan(selection_auc(y, p))


def test_equal_aucs_are_broken_by_the_lower_validation_loss():
    best = {"epoch": 1, "score": 0.75, "tiebreak": -0.6}
    assert _better(0.75, -0.5, best)
    assert not _better(0.75, -0.7, best)
    assert _better(0.8, -5.0, best)


def test_choose_threshold_is_reexported_by_train():
    from GliomaCompareLib.cnn import train

    assert train.choose_threshold is choose_threshold


def _epoch(epoch, train_loss, val, score, lr, seconds, best):
    return CNNEpoch(
        epoch=epoch, seconds=seconds, metrics=val, train_loss=train_loss, score=score, lr=lr,
        best=best,
    )  # fmt: skip


def test_history_csv_columns_and_formats(tmp_path):
    # what cnn/history.py wrote before the CNN moved to the shared GliomaCompareLib.history
    records = [
        _epoch(0, float("nan"), {"auc": np.float64(0.5), "loss": 0.7}, 0.5, 0.0, 0.5, True),
        _epoch(1, 0.5, {"auc": 0.75, "loss": 0.61}, 0.75, 1e-3, 1.234, True),
        _epoch(2, 0.25, {"auc": 0.5, "threshold": 0.4}, 0.5, 5e-4, 2.0, False),
    ]
    write_epochs(tmp_path / "history.csv", records)
    rows = list(csv.reader((tmp_path / "history.csv").open()))
    assert rows == [
        ["epoch", "train_loss", "score", "auc", "loss", "threshold", "lr", "seconds", "best"],
        ["0", "nan", "0.500000", "0.500000", "0.700000", "nan", "0", "0.50", "1"],
        ["1", "0.500000", "0.750000", "0.750000", "0.610000", "nan", "0.001", "1.23", "1"],
        ["2", "0.250000", "0.500000", "0.500000", "nan", "0.400000", "0.0005", "2.00", "0"],
    ]
    assert records[1].val == {"auc": 0.75, "loss": 0.61}


def test_epoch_records_round_trip_through_the_training_state():
    from dataclasses import asdict

    record = _epoch(3, 0.25, {"dice_mean": 0.8}, 0.8, 1e-4, 3.0, False)
    assert CNNEpoch.from_state(asdict(record)) == record
    # last.pt written before the shared history kept the validation metrics as "val"
    old = {"epoch": 3, "train_loss": 0.25, "val": {"dice_mean": 0.8}, "score": 0.8,
           "lr": 1e-4, "seconds": 3.0, "best": False}  # fmt: skip
    assert CNNEpoch.from_state(old) == record


def test_library_versions_hold_what_model_json_recorded_and_more():
    import monai

    versions = library_versions()
    # what cnn/checkpoint.py recorded before issue 12, with the same values
    assert versions["gliomacompare"] == __version__
    assert versions["torch"] == torch.__version__
    assert versions["monai"] == monai.__version__
    # and what the run manifest records
    assert set(versions) == {"python", "gliomacompare", *LIBRARIES}
    assert versions["python"] == sys.version.split()[0]
    assert _version("not-a-distribution-gliomacompare-uses") is None


def test_importing_training_and_commands_does_not_import_torch():
    code = (
        "import sys\n"
        "import GliomaCompareLib.cnn.train, GliomaCompareLib.cnn.commands\n"
        "import GliomaCompareLib.cnn.inference, GliomaCompareLib.cnn.datasets\n"
        "heavy = [m for m in ('torch', 'monai') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_prepare_cased_is_a_monai_transform_that_pickles():
    import pickle

    from monai.transforms import MapTransform

    from GliomaCompareLib.cnn import datasets

    cls = datasets.PrepareCased
    assert issubclass(cls, MapTransform) and datasets.PrepareCased is cls
    item = pickle.loads(pickle.dumps(cls({}, None, None)))
    assert type(item) is cls and item.keys == ("case_id",)
