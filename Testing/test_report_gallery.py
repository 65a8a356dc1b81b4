"""The per-case gallery file (write / read round trip, bad files) and the worst / best picks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from GliomaCompareLib.geometry import Box, Point, Polygon
from GliomaCompareLib.report.gallery import (
    CaseGallery,
    GalleryAnswer,
    GradePrediction,
    geometry_from_dict,
    read_gallery,
    representative_slice,
    select_gallery_cases,
    write_gallery,
)


def _gallery(**changes) -> CaseGallery:
    rng = np.random.default_rng(0)
    flair = rng.integers(0, 256, size=(12, 16), dtype=np.uint8)
    gt = np.zeros((12, 16), bool)
    gt[3:7, 4:9] = True
    values = {
        "case_id": "BraTS20_Training_042",
        "grade": "LGG",
        "slice_index": 77,
        "flair": flair,
        "gt": gt,
        "cnn": np.roll(gt, 1, axis=1),
        "pixel_spacing": (1.0, 1.2),
        "answers": {
            "vlm_base": {
                "point": GalleryAnswer("ok", Point(5.5, 4.0)),
                "box": GalleryAnswer("repaired", Box(3, 2, 9, 8)),
                "polygon": GalleryAnswer("invalid", None),
            },
            "vlm_finetuned": {
                "polygon": GalleryAnswer("ok", Polygon(((1.0, 1.0), (8.5, 1.0), (4.0, 9.0)))),
            },
        },
        "predictions": {
            "cnn": GradePrediction("LGG", 0.12, "SegResNet"),
            "vlm_base": GradePrediction(None, float("nan"), "tiny random-weight model"),
        },
        "models": {"cnn": "SegResNet", "vlm_base": "tiny random-weight model"},
    }
    values.update(changes)
    return CaseGallery(**values)


def test_round_trip(tmp_path):
    original = _gallery()
    path = write_gallery(tmp_path / "cases" / "c1" / "gallery.npz", original)
    assert path.is_file() and not list(path.parent.glob("*.tmp"))
    back = read_gallery(path)
    assert back.case_id == original.case_id and back.grade == "LGG" and back.slice_index == 77
    assert back.flair.dtype == np.uint8 and np.array_equal(back.flair, original.flair)
    assert back.gt.dtype == bool and np.array_equal(back.gt, original.gt)
    assert np.array_equal(back.cnn, original.cnn)
    assert back.pixel_spacing == (1.0, 1.2)
    assert back.answers["vlm_base"]["point"] == GalleryAnswer("ok", Point(5.5, 4.0))
    assert back.answers["vlm_base"]["box"] == GalleryAnswer("repaired", Box(3, 2, 9, 8))
    assert back.answers["vlm_base"]["polygon"] == GalleryAnswer("invalid", None)
    poly = back.answers["vlm_finetuned"]["polygon"].geometry
    assert isinstance(poly, Polygon) and poly.points == ((1.0, 1.0), (8.5, 1.0), (4.0, 9.0))
    assert back.predictions["cnn"] == GradePrediction("LGG", 0.12, "SegResNet")
    assert back.predictions["vlm_base"].p_hgg is None  # NaN is stored as "no value"
    assert back.models == original.models
    # the file loads without pickles
    with np.load(path, allow_pickle=False) as data:
        assert "meta" in data and data["gt"].dtype == bool


def test_without_cnn_and_answers(tmp_path):
    gallery = _gallery(cnn=None, answers={}, predictions={}, models={}, grade=None)
    back = read_gallery(write_gallery(tmp_path / "g.npz", gallery))
    assert back.cnn is None and back.answers == {} and back.grade is None


def test_bad_arrays_name_the_case():
    with pytest.raises(ValueError, match=r"BraTS20_Training_042.*uint8"):
        _gallery(flair=np.zeros((12, 16), float))
    with pytest.raises(ValueError, match="gt has shape"):
        _gallery(gt=np.zeros((5, 5), bool))
    with pytest.raises(ValueError, match="pixel_spacing"):
        _gallery(pixel_spacing=(1.0, -1.0))


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_gallery(tmp_path / "absent.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"junk\.npz: not a readable gallery file"):
        read_gallery(junk)
    partial = tmp_path / "partial.npz"
    np.savez(partial, flair=np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match="missing arrays"):
        read_gallery(partial)


def test_geometry_from_dict():
    for geometry in (Point(1, 2), Box(0, 1, 5, 6), Polygon(((0, 0), (3, 0), (0, 4)))):
        assert geometry_from_dict(geometry.to_dict()) == geometry
    assert geometry_from_dict(None) is None
    with pytest.raises(ValueError, match="unknown geometry type"):
        geometry_from_dict({"type": "circle"})
    with pytest.raises(ValueError):
        geometry_from_dict({"type": "box", "x0": 1})


def test_representative_slice():
    assert representative_slice({40: 10.0, 41: 25.0, 42: 25.0, 43: 3.0}) == 41
    with pytest.raises(ValueError):
        representative_slice({})


def _rows(scores: dict[str, float | None], method="cnn", task="seg", region="WT"):
    return [
        {"case_id": c, "method": method, "task": task, "region": region, "dice": d}
        for c, d in scores.items()
    ]


def test_select_worst_and_best():
    scores = {"a": 0.9, "b": 0.1, "c": 0.5, "d": 0.1, "e": 0.95, "f": None, "g": math.nan}
    rows = _rows(scores) + _rows({"b": 1.0}, region="ET") + _rows({"z": 0.0}, method="vlm_base")
    worst, best = select_gallery_cases(rows, method="cnn", task="seg", region="WT", count=2)
    assert [p.case_id for p in worst] == ["b", "d"]  # tie on 0.1 broken by case id
    assert [p.case_id for p in best] == ["e", "a"]
    assert [p.rank for p in worst] == [1, 2] and worst[0].position == "worst"
    assert best[0].dice == 0.95 and best[0].ranking == "cnn seg WT"


def test_select_with_few_cases_never_repeats():
    rows = _rows({"a": 0.2, "b": 0.4, "c": 0.6})
    worst, best = select_gallery_cases(rows, method="cnn", task="seg", region="WT", count=2)
    assert [p.case_id for p in worst] == ["a", "b"] and [p.case_id for p in best] == ["c"]
    assert select_gallery_cases(rows, method="cnn", task="seg", region="WT", count=0) == ([], [])
    # region None: any region (the VLM's single WT row per case)
    vlm = _rows({"x": 0.3, "y": 0.1}, method="vlm_base", task="box", region="WT")
    worst, _ = select_gallery_cases(vlm, method="vlm_base", task="box", region=None, count=1)
    assert worst[0].case_id == "y"
    with pytest.raises(ValueError):
        select_gallery_cases(rows, method="cnn", task="seg", region="WT", count=-1)


def test_gallery_ties_are_said_as_such():
    from GliomaCompareLib.report.build import _ties
    from GliomaCompareLib.report.gallery import GalleryPick

    def picks(*dice):
        return [GalleryPick(f"c{i}", "vlm box", "worst", i + 1, d) for i, d in enumerate(dice)]

    assert _ties(picks(0.0, 0.0, 0.0)) == (
        "All 3 cases shown have Dice 0.000: a tie, ranked by case id."
    )
    assert _ties(picks(0.1, 0.1, 0.5)) == "Cases with equal Dice are ranked by case id."
    assert _ties(picks(0.1, 0.2)) == ""
