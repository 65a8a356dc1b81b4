"""CNN training: checkpoints, exact resume after an interruption, refusals, thresholds."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from GliomaCompareLib.cnn.checkpoint import (
    IncompatibleModelError,
    load_model_info,
    load_training_state,
)
from GliomaCompareLib.cnn.config import ClsConfig, NetworkSpec, SegConfig, TrainSettings
from GliomaCompareLib.cnn.inference import load_classifier, load_segmenter
from GliomaCompareLib.cnn.networks import build_network
from GliomaCompareLib.cnn.train import choose_threshold, train_classifier, train_segmenter
from GliomaCompareLib.data.discovery import discover_cases
from GliomaCompareLib.data.splits import make_splits

TINY_SEG = SegConfig(
    network=NetworkSpec(
        "SegResNet", {"init_filters": 8, "blocks_down": [1, 1, 1], "blocks_up": [1, 1]}
    ),
    patch_size=(24, 24, 16),
    roi_size=(48, 48, 32),
    overlap=0.25,
    train=TrainSettings(epochs=3, learning_rate=3e-3, seed=7),
)
TINY_CLS = ClsConfig(
    network=NetworkSpec("resnet10", {"conv1_t_stride": 2, "widen_factor": 0.25}),
    input_size=(24, 24, 16),
    train=TrainSettings(epochs=2, batch_size=2, learning_rate=1e-3, seed=3),
)


@pytest.fixture(scope="module")
def cohort(synth_cohort_factory):
    return discover_cases(
        synth_cohort_factory(cases=8, seed=11, shape=(40, 40, 28), hgg_fraction=0.5)
    )


@pytest.fixture(scope="module")
def splits(cohort):
    return make_splits({c.case_id: c.grade for c in cohort.usable}, (0.5, 0.25, 0.25), seed=0)


class StopAfter:
    """Interrupts training (as Ctrl-C would) after epoch ``n``."""

    def __init__(self, n):
        self.n = n
        self.seen = []

    def on_epoch_end(self, record):
        self.seen.append(record.epoch)
        if record.epoch == self.n:
            raise KeyboardInterrupt


def _weights(folder):
    return load_training_state(folder / "last.pt")["model"]


@pytest.mark.slow
def test_segmenter_checkpoint_and_exact_resume_after_interruption(cohort, splits, tmp_path):
    whole = train_segmenter(
        cohort, tmp_path / "whole", splits, TINY_SEG, device="cpu", progress=False
    )
    assert [h.epoch for h in whole.history] == [1, 2, 3]
    assert whole.train_cases == splits.train and whole.val_cases == splits.val
    assert set(splits.test).isdisjoint(whole.train_cases + whole.val_cases)

    # the model folder says what it is
    info = load_model_info(tmp_path / "whole")
    assert info.task == "seg" and info.convention == "brats2020"
    assert info.split_hash == splits.hash and info.source == "trained"
    assert info.architecture["name"] == "SegResNet" and info.architecture["in_channels"] == 4
    assert info.channels == ("t1ce", "t1", "t2", "flair") and info.regions == ("TC", "WT", "ET")
    assert "NormalizeIntensity nonzero=True" in info.preprocessing["normalisation"]
    assert info.metrics["best_epoch"] == whole.best_epoch
    best = max(whole.history, key=lambda h: h.score)
    assert whole.best_epoch == best.epoch
    assert info.metrics["val"]["dice_mean"] == pytest.approx(best.score)
    assert info.model_id == whole.model_id and info.model_id.startswith("seg-SegResNet-")
    header = (tmp_path / "whole" / "history.csv").read_text().splitlines()[0]
    assert header.startswith("epoch,train_loss,score,dice_TC,dice_WT,dice_ET,dice_mean")

    # interrupted after epoch 1, then resumed: the same weights as the uninterrupted run
    stop = StopAfter(1)
    with pytest.raises(KeyboardInterrupt):
        train_segmenter(
            cohort,
            tmp_path / "cut",
            splits,
            TINY_SEG,
            device="cpu",
            progress=False,
            callbacks=[stop],
        )
    assert load_training_state(tmp_path / "cut" / "last.pt")["epoch"] == 1
    resumed = train_segmenter(
        cohort, tmp_path / "cut", splits, TINY_SEG, device="cpu", progress=False, resume=True
    )
    assert resumed.resumed_from == 1
    assert [h.epoch for h in resumed.history] == [1, 2, 3]
    for a, b in zip(whole.history, resumed.history, strict=True):
        assert a.train_loss == b.train_loss and a.val == b.val
    w1, w2 = _weights(tmp_path / "whole"), _weights(tmp_path / "cut")
    for key in w1:
        assert torch.equal(w1[key], w2[key]), key
    best1 = load_file(str(tmp_path / "whole" / "model.safetensors"))
    best2 = load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert all(torch.equal(best1[k], best2[k]) for k in best1)
    assert resumed.model_id == whole.model_id

    # a finished run resumed again does nothing more
    again = train_segmenter(
        cohort, tmp_path / "cut", splits, TINY_SEG, device="cpu", progress=False, resume=True
    )
    assert again.resumed_from == 3 and len(again.history) == 3

    # refusals: existing model without --resume; resume with another config
    with pytest.raises(FileExistsError, match="--resume"):
        train_segmenter(cohort, tmp_path / "cut", splits, TINY_SEG, device="cpu", progress=False)
    changed = replace(TINY_SEG, train=replace(TINY_SEG.train, learning_rate=1e-2))
    with pytest.raises(IncompatibleModelError, match="config differ"):
        train_segmenter(
            cohort, tmp_path / "cut", splits, changed, device="cpu", progress=False, resume=True
        )

    # the model loads for inference; another architecture or convention is refused
    seg = load_segmenter(tmp_path / "whole", device="cpu")
    assert seg.model_id == whole.model_id
    other = replace(TINY_SEG, network=NetworkSpec("SegResNet", {"init_filters": 16}))
    with pytest.raises(IncompatibleModelError, match=r"architecture SegResNet.*differs"):
        load_segmenter(tmp_path / "whole", config=other, device="cpu")
    with pytest.raises(IncompatibleModelError, match="label convention 'brats2020'"):
        load_segmenter(tmp_path / "whole", convention="brats2023", device="cpu")
    with pytest.raises(IncompatibleModelError, match="it is a 'seg' model, not 'cls'"):
        load_classifier(tmp_path / "whole", device="cpu")


def test_weights_become_a_model_without_training(cohort, splits, tmp_path):
    """--weights with 0 epochs: e.g. the bundle's models/model.pt (here a DDP-prefixed dict)."""
    config = replace(TINY_SEG, train=replace(TINY_SEG.train, epochs=0))
    torch.manual_seed(123)
    net = build_network(config.network, 4, 3, "seg")
    path = tmp_path / "model.pt"
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, path)
    result = train_segmenter(
        cohort, tmp_path / "seg", splits, config, device="cpu", weights=path, progress=False
    )
    assert result.best_epoch == 0 and len(result.history) == 1
    assert 0.0 <= result.best_score <= 1.0  # validation Dice of the given weights
    info = load_model_info(tmp_path / "seg")
    assert info.source.startswith("weights: ") and "not trained" in info.source
    saved = load_file(str(tmp_path / "seg" / "model.safetensors"))
    for key, value in net.state_dict().items():
        assert torch.equal(saved[key], value)


def test_classifier_threshold_is_chosen_on_validation_patients(cohort, splits, tmp_path):
    result = train_classifier(
        cohort, tmp_path / "cls", splits, TINY_CLS, device="cpu", progress=False
    )
    info = load_model_info(tmp_path / "cls")
    assert info.task == "cls" and info.regions == ()
    assert result.threshold == info.threshold
    best = next(h for h in result.history if h.epoch == result.best_epoch)
    assert info.threshold == pytest.approx(best.val["threshold"])
    assert set(info.metrics["val_cases"]) == set(splits.val)
    # the threshold is recomputable from the validation patients alone
    clf = load_classifier(tmp_path / "cls", device="cpu")
    from GliomaCompareLib.data.case import load_case

    y, p = [], []
    for case_id in splits.val:
        record = cohort.get(case_id)
        y.append(1.0 if record.grade == "HGG" else 0.0)
        p.append(clf.probability(load_case(record)))
    assert choose_threshold(y, p)["threshold"] == pytest.approx(info.threshold, abs=1e-5)
    assert np.isfinite(result.best_score)


def test_balanced_sampler_path_trains(cohort, splits, tmp_path):
    config = replace(
        TINY_CLS,
        imbalance="balanced_sampler",
        train=replace(TINY_CLS.train, epochs=1, cache="memory"),
    )
    result = train_classifier(
        cohort, tmp_path / "cls", splits, config, device="cpu", progress=False
    )
    assert len(result.history) == 1 and np.isfinite(result.history[0].train_loss)


def test_bad_cases_are_left_out_with_a_reason(cohort, splits, tmp_path):
    from GliomaCompareLib.data.splits import Splits

    with_ghost = Splits(
        train=(*splits.train, "BraTS20_Training_999"),
        val=splits.val,
        test=splits.test,
        grades=dict(splits.grades),
        seed=0,
        fractions=splits.fractions,
    )
    config = replace(TINY_CLS, train=replace(TINY_CLS.train, epochs=1, cache="none"))
    result = train_classifier(
        cohort, tmp_path / "cls", with_ghost, config, device="cpu", progress=False
    )
    assert (
        "BraTS20_Training_999",
        "in the split but not found in the data folder",
    ) in result.skipped
    assert "BraTS20_Training_999" not in result.train_cases
    skipped = load_model_info(tmp_path / "cls").metrics["skipped"]
    assert skipped[0]["case_id"] == "BraTS20_Training_999"


def test_choose_threshold_maximises_youden():
    chosen = choose_threshold([0, 0, 1, 1, 1], [0.1, 0.4, 0.35, 0.8, 0.9])
    assert chosen["threshold"] == pytest.approx(0.6)
    assert chosen["sensitivity"] == pytest.approx(2 / 3) and chosen["specificity"] == 1.0
    assert chosen["balanced_accuracy"] == pytest.approx(5 / 6)
    perfect = choose_threshold([0, 1], [0.2, 0.3])
    assert perfect["threshold"] == pytest.approx(0.25) and perfect["balanced_accuracy"] == 1.0
    one_class = choose_threshold([1, 1], [0.2, 0.9])
    assert one_class["threshold"] == 0.5 and "one grade" in one_class["note"]


def test_existing_model_json_is_described(tmp_path, cohort, splits):
    config = replace(TINY_CLS, train=replace(TINY_CLS.train, epochs=0))
    train_classifier(cohort, tmp_path / "cls", splits, config, device="cpu", progress=False)
    raw = json.loads((tmp_path / "cls" / "model.json").read_text())
    assert raw["format"] == "gliomacompare-cnn/1"
    assert raw["source"] == "untrained (random init)"
    assert raw["versions"]["monai"] and raw["weights_sha256"]
