"""CNN inference: channel order, region -> label mapping, crop / window / un-crop, output files."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest
import torch

from GliomaCompareLib.cnn.config import BUNDLE_CHANNELS, ClsConfig, SegConfig
from GliomaCompareLib.cnn.inference import (
    Classifier,
    Segmenter,
    effective_roi,
    predict_cases,
)
from GliomaCompareLib.data.case import Case
from GliomaCompareLib.data.conventions import load_convention
from GliomaCompareLib.distributed import resolve_device

CONV = load_convention("brats2020")


class ChannelOracle(torch.nn.Module):
    """A real (parameter-free) network: output channel j is 10x input channel ``src[j]``.

    After per-channel z-scoring over the brain, an input channel is positive exactly where it is
    brighter than its brain mean, so the oracle "segments" the bright voxels of chosen channels.
    Point-wise, so any window layout gives the same output.
    """

    def __init__(self, src):
        super().__init__()
        self.src = list(src)

    def forward(self, x):
        return 10.0 * x[:, self.src]


def _case(case_id="BraTS20_Training_900", shape=(40, 36, 30)):
    """A case whose FLAIR marks WT, T2 marks TC and T1ce marks ET (channels flair,t1,t1ce,t2)."""
    image = np.zeros((4, *shape), np.float32)
    image[:, 6:34, 5:31, 4:26] = 1.0  # the brain
    wt = np.zeros(shape, bool)
    wt[12:24, 10:22, 8:18] = True
    tc = np.zeros(shape, bool)
    tc[14:22, 12:20, 10:16] = True
    et = np.zeros(shape, bool)
    et[15:18, 13:16, 11:14] = True
    image[0][wt] = 5.0  # flair
    image[3][tc] = 5.0  # t2
    image[2][et] = 5.0  # t1ce
    affine = np.array([[-2.0, 0, 0, 80], [0, -2.0, 0, 70], [0, 0, 2.5, -30], [0, 0, 0, 1]])
    label = np.zeros(shape, np.uint8)
    label[wt] = 2
    label[tc] = 1
    label[et] = 4
    case = Case(
        case_id=case_id,
        grade="HGG",
        image=image,
        label=None,
        affine=affine,
        spacing=(2.0, 2.0, 2.5),
        channels=CONV.channels,
        convention=CONV,
    )
    return case, label


def _oracle_segmenter(**changes):
    # bundle order: t1ce, t1, t2, flair; outputs TC <- t2, WT <- flair, ET <- t1ce
    settings = {"roi_size": (16, 16, 16), "overlap": 0.25, **changes}
    config = replace(SegConfig(), **settings)
    src = [
        BUNDLE_CHANNELS.index("t2"),
        BUNDLE_CHANNELS.index("flair"),
        BUNDLE_CHANNELS.index("t1ce"),
    ]
    return Segmenter(ChannelOracle(src), config, model_id="oracle", device="cpu")


def test_bundle_channel_and_region_order_give_the_right_brats_labels():
    case, expected = _case()
    out = _oracle_segmenter().predict(case, probabilities=True)
    assert out.label.shape == case.shape and out.label.dtype == np.uint8
    np.testing.assert_array_equal(out.label, expected)
    assert set(np.unique(out.label)) == {0, 1, 2, 4}
    # probabilities come back in REGIONS order (WT, TC, ET), full size, 0 outside the crop
    assert out.probabilities.shape == (3, *case.shape)
    np.testing.assert_array_equal(out.probabilities[0] > 0.5, expected > 0)
    np.testing.assert_array_equal(out.probabilities[1] > 0.5, np.isin(expected, (1, 4)))
    np.testing.assert_array_equal(out.probabilities[2] > 0.5, expected == 4)
    assert out.crop.start == (6, 5, 4) and out.crop.end == (34, 31, 26)  # the brain, margin 0
    assert np.all(out.probabilities[:, :4] == 0)


def test_window_layout_does_not_change_a_pointwise_result():
    case, expected = _case()
    small = _oracle_segmenter().predict(case)  # several 16^3 windows
    whole = _oracle_segmenter(roi_size=(240, 240, 160)).predict(case)  # one window
    np.testing.assert_array_equal(small.label, whole.label)
    np.testing.assert_array_equal(whole.label, expected)


def test_whole_volume_mode_equals_monai_plain_sliding_window():
    """``crop: false`` is MONAI's plain whole-volume sliding window (the bundle's inference);
    the brain crop is not, for a GroupNorm SegResNet: its window statistics change."""
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import SegResNet

    from GliomaCompareLib.cnn.preprocess import normalize_channels

    case, _ = _case()
    torch.manual_seed(0)
    net = SegResNet(spatial_dims=3, in_channels=4, out_channels=3, init_filters=8).eval()
    roi = (24, 24, 16)
    config = replace(SegConfig(), roi_size=roi, overlap=0.25, crop=False)
    ours = Segmenter(net, config, model_id="x", device="cpu").predict(case, probabilities=True)
    image = np.stack([case.modality(c) for c in config.channels])
    tensor = torch.from_numpy(normalize_channels(image))[None]
    plain_net = net.to(memory_format=torch.contiguous_format)
    with torch.inference_mode():
        logits = sliding_window_inference(tensor, roi, 1, plain_net, overlap=0.25)
    plain = torch.sigmoid(logits[0]).numpy()  # TC, WT, ET (bundle order)
    np.testing.assert_allclose(ours.probabilities[0], plain[1], atol=1e-5)  # WT
    np.testing.assert_allclose(ours.probabilities[1], plain[0], atol=1e-5)  # TC
    np.testing.assert_allclose(ours.probabilities[2], plain[2], atol=1e-5)  # ET
    assert ours.crop.start == (0, 0, 0) and ours.crop.end == case.shape
    cropped = Segmenter(net, replace(config, crop=True), model_id="x", device="cpu")
    inside = cropped.predict(case, probabilities=True)
    block = (slice(None), slice(6, 34), slice(5, 31), slice(4, 26))
    assert np.abs(inside.probabilities[block] - ours.probabilities[block]).max() > 1e-3


def test_swapped_channel_order_gives_wrong_labels():
    """Guards the test above: with the Case's own order the oracle reads the wrong channels."""
    case, expected = _case()
    wrong = _oracle_segmenter(channels=CONV.channels).predict(case)
    assert not np.array_equal(wrong.label, expected)


def test_effective_roi_is_clipped_to_the_crop_and_divisible():
    assert effective_roi((240, 240, 160), (145, 181, 153), 8) == (152, 184, 160)
    assert effective_roi((96, 96, 96), (145, 181, 40), 8) == (96, 96, 40)
    assert effective_roi((128, 128, 128), (30, 31, 33), 16) == (32, 32, 48)


def test_segmenter_needs_all_three_regions():
    config = replace(SegConfig(), regions=("WT", "TC"))
    with pytest.raises(ValueError, match="need the regions WT, TC and ET"):
        Segmenter(ChannelOracle([0, 1]), config, model_id="x", device="cpu")


def test_cuda_request_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


class MeanFlairGrader(torch.nn.Module):
    """A real network: the logit is the mean of the (resized) first channel, scaled."""

    def forward(self, x):
        return x[:, :1].mean(dim=(2, 3, 4)) * 4.0


class CountingSegmenter(Segmenter):
    calls = 0

    def predict(self, case, probabilities=False):
        type(self).calls += 1
        return super().predict(case, probabilities)


def _write_case(folder, case, label, write):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(CONV.channels):
        write(folder / f"{case.case_id}_{name}.nii.gz", case.image[i], case.affine)
    write(folder / f"{case.case_id}_seg.nii.gz", label, case.affine)


def test_predict_cases_writes_labels_grades_and_skips_a_bad_case(tmp_path):
    from GliomaCompareLib.data.discovery import discover_cases
    from GliomaCompareLib.data.io import write_nifti

    data = tmp_path / "data"
    expected = {}
    for i in (1, 2, 3):
        case, label = _case(f"BraTS20_Training_{i:03d}")
        if i == 2:
            case = replace(case, image=case.image * 0.0)  # an empty image: a bad case
        expected[case.case_id] = label
        _write_case(data / case.case_id, case, label, write_nifti)
    (data / "name_mapping.csv").write_text(
        "Grade,BraTS_2020_subject_ID\nHGG,BraTS20_Training_001\nLGG,BraTS20_Training_002\n"
        "LGG,BraTS20_Training_003\n"
    )
    cohort = discover_cases(data, validate=False)
    seg = CountingSegmenter(
        _oracle_segmenter().network, _oracle_segmenter().config, model_id="oracle-seg", device="cpu"
    )
    cls_cfg = replace(ClsConfig(), input_size=(16, 16, 16))
    grader = Classifier(
        MeanFlairGrader(), cls_cfg, threshold=0.3, model_id="mean-flair", device="cpu"
    )
    out = tmp_path / "pred"
    run = predict_cases(
        cohort.cases, out, segmenter=seg, classifier=grader, save_probabilities=True, progress=False
    )

    assert [p.case_id for p in run.predictions] == ["BraTS20_Training_001", "BraTS20_Training_003"]
    assert [c for c, _ in run.failures] == ["BraTS20_Training_002"]
    assert "every voxel is zero" in run.failures[0][1]
    for case_id in ("BraTS20_Training_001", "BraTS20_Training_003"):
        img = nib.load(str(out / f"{case_id}.nii.gz"))
        np.testing.assert_array_equal(np.asarray(img.dataobj), expected[case_id])
        np.testing.assert_allclose(img.affine, _case()[0].affine)
        prob = nib.load(str(out / "probabilities" / f"{case_id}.nii.gz"))
        assert prob.shape == (*expected[case_id].shape, 3)
    with open(out / "grades.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == [
        "case_id",
        "p_hgg",
        "predicted_grade",
        "threshold",
        "model_id",
        "reference_grade",
    ]
    assert [r["case_id"] for r in rows] == ["BraTS20_Training_001", "BraTS20_Training_003"]
    for row in rows:
        p = float(row["p_hgg"])
        assert 0.0 < p < 1.0
        assert row["predicted_grade"] == ("HGG" if p >= 0.3 else "LGG")
        assert row["model_id"] == "mean-flair" and float(row["threshold"]) == 0.3
    assert rows[1]["reference_grade"] == "LGG"
    with open(out / "failures.csv") as handle:
        assert next(csv.DictReader(handle))["case_id"] == "BraTS20_Training_002"
    summary = json.loads((out / "predictions.json").read_text())
    assert summary["seg_model_id"] == "oracle-seg" and summary["cases"] == 2

    # scored with the metrics module: the oracle reproduces the reference exactly
    from GliomaCompareLib.cnn.scoring import score_predictions

    scores = score_predictions(run, cohort.cases, n_bootstrap=0)
    assert scores.seg_mean == {"WT": 1.0, "TC": 1.0, "ET": 1.0, "mean": 1.0}
    assert {r[0] for r in scores.seg_rows} == {"BraTS20_Training_001", "BraTS20_Training_003"}
    assert all(r[3] == 0.0 for r in scores.seg_rows)  # HD95 0 mm
    report = scores.grade_report
    assert report["n"] == 2 and report["model_id"] == "mean-flair" and report["threshold"] == 0.3
    predicted = {r["case_id"]: r["predicted_grade"] for r in rows}
    correct = sum(
        predicted[c] == g
        for c, g in (("BraTS20_Training_001", "HGG"), ("BraTS20_Training_003", "LGG"))
    )
    assert report["accuracy"] == correct / 2
    assert (out / "seg_scores.csv").read_text().startswith("case_id,region,dice,hd95")
    assert "mean Dice WT 1.000" in scores.summary()

    # re-running skips finished cases; the bad case is tried again and fails again
    calls = CountingSegmenter.calls
    again = predict_cases(
        cohort.cases, out, segmenter=seg, classifier=grader, save_probabilities=True, progress=False
    )
    assert CountingSegmenter.calls == calls + 1
    assert [p.case_id for p in again.predictions] == [
        "BraTS20_Training_001",
        "BraTS20_Training_003",
    ]
    # another model id redoes the work
    seg.model_id = "oracle-seg-2"
    predict_cases(cohort.cases, out, segmenter=seg, progress=False)
    assert CountingSegmenter.calls == calls + 1 + 3
