"""``gliomacompare evaluate`` on small NIfTI / .seg.nrrd folders built here."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from GliomaCompareLib.cli import main
from GliomaCompareLib.data.io import write_nifti
from GliomaCompareLib.metrics.evaluation import CSV_COLUMNS, evaluate_folders, write_csv
from GliomaCompareLib.metrics.segmentation import image_diagonal_mm, score_label_maps

SHAPE = (24, 22, 16)
SPACING = (1.0, 1.2, 2.0)
AFFINE = np.diag([*SPACING, 1.0])
AFFINE[:3, 3] = [-12.0, -13.0, 5.0]
DIAG = image_diagonal_mm(SHAPE, SPACING)


def tumour(seed: int, shift=(0, 0, 0)) -> np.ndarray:
    """A nested label map: edema (2) around core (1) around enhancing (4)."""
    rng = np.random.default_rng(seed)
    grid = np.indices(SHAPE).astype(float)
    centre = np.array([12, 11, 8]) + np.asarray(shift) + rng.uniform(-1, 1, 3)
    r = np.sqrt((((grid.T - centre) / np.array([6, 5, 4])) ** 2).sum(axis=-1)).T
    label = np.zeros(SHAPE, np.uint8)
    label[r < 1.0] = 2
    label[r < 0.6] = 1
    label[r < 0.35] = 4
    return label


def write_seg_nrrd(path, label, affine):
    """Write a label map as a (single-layer) .seg.nrrd with RAS affine -> LPS header."""
    import SimpleITK as sitk

    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    img = sitk.GetImageFromArray(np.ascontiguousarray(label.transpose(2, 1, 0)))
    img.SetSpacing(spacing.tolist())
    img.SetDirection((lps[:3, :3] / spacing).ravel().tolist())
    img.SetOrigin(lps[:3, 3].tolist())
    sitk.WriteImage(img, str(path), True)


@pytest.fixture
def folders(tmp_path):
    """A BraTS-layout reference folder and a prediction folder with one case of each kind."""
    ref_root = tmp_path / "MICCAI_BraTS2020_TrainingData"
    pred = tmp_path / "pred"
    pred.mkdir()
    refs = {}
    for i in range(1, 10):
        case = f"BraTS20_Training_{i:03d}"
        (ref_root / case).mkdir(parents=True)
        refs[case] = tumour(i)
        write_nifti(ref_root / case / f"{case}_seg.nii.gz", refs[case], AFFINE)
    # case 355: the odd label file name of BraTS 2020
    case355 = "BraTS20_Training_355"
    (ref_root / case355).mkdir()
    refs[case355] = tumour(355)
    write_nifti(ref_root / case355 / "W39_1998.09.19_Segm.nii", refs[case355], AFFINE)

    preds = {}
    preds["BraTS20_Training_001"] = refs["BraTS20_Training_001"]  # perfect
    write_nifti(pred / "BraTS20_Training_001.nii.gz", preds["BraTS20_Training_001"], AFFINE)
    preds["BraTS20_Training_002"] = tumour(2, shift=(2, 0, 0))
    write_nifti(pred / "BraTS20_Training_002_seg.nii.gz", preds["BraTS20_Training_002"], AFFINE)
    preds["BraTS20_Training_003"] = tumour(3, shift=(0, 1, 1))
    write_seg_nrrd(pred / "BraTS20_Training_003.seg.nrrd", preds["BraTS20_Training_003"], AFFINE)
    # 004: missing
    (pred / "BraTS20_Training_005.nii.gz").write_bytes(b"not a nifti at all")  # unreadable
    write_nifti(pred / "BraTS20_Training_006.nii.gz", np.zeros((20, 22, 16), np.uint8), AFFINE)
    shifted = AFFINE.copy()
    shifted[:3, 3] += [0.5, 0.0, 0.0]  # half a voxel: cannot be placed on the grid
    write_nifti(pred / "BraTS20_Training_007.nii.gz", refs["BraTS20_Training_007"], shifted)
    # 008: stored with the first axis flipped, and an affine that says so: exact re-indexing
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = SHAPE[0] - 1
    preds["BraTS20_Training_008"] = tumour(8, shift=(1, 0, 0))
    write_nifti(
        pred / "BraTS20_Training_008.nii.gz", preds["BraTS20_Training_008"][::-1], AFFINE @ flip
    )
    # 009: float labels that are not integers
    write_nifti(pred / "BraTS20_Training_009.nii.gz", refs["BraTS20_Training_009"] * 0.5, AFFINE)
    preds[case355] = tumour(355, shift=(0, 0, 1))
    write_nifti(pred / f"{case355}.nii", preds[case355], AFFINE)
    write_nifti(pred / "BraTS20_Training_777.nii.gz", refs["BraTS20_Training_001"], AFFINE)
    return ref_root, pred, refs, preds


def read_rows(path):
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        return list(reader)


def by_case(rows):
    out = {}
    for row in rows:
        out.setdefault(row["case_id"], {})[row["region"]] = row
    return out


def test_evaluate_scores_every_case_and_reports_problems(folders, tmp_path, capsys):
    _ref_root, pred, refs, preds = folders
    out = tmp_path / "scores" / "evaluate.csv"
    argv = ["evaluate", "--pred", str(pred), "--ref", str(tmp_path), "--out", str(out)]
    code = main([*argv, "--missing", "empty"])  # the BraTS rule
    assert code == 1  # written, but some cases had problems
    assert b"\r" not in out.read_bytes()  # the package's one CSV writer: lines end with \n
    rows = by_case(read_rows(out))
    status = {case: r["WT"]["status"] for case, r in rows.items()}
    assert status == {
        "BraTS20_Training_001": "ok",
        "BraTS20_Training_002": "ok",
        "BraTS20_Training_003": "ok",
        "BraTS20_Training_004": "missing_prediction",
        "BraTS20_Training_005": "unreadable",
        "BraTS20_Training_006": "shape_mismatch",
        "BraTS20_Training_007": "affine_mismatch",
        "BraTS20_Training_008": "ok",
        "BraTS20_Training_009": "invalid_labels",
        "BraTS20_Training_355": "ok",
        "BraTS20_Training_777": "no_reference",
    }
    # scored values are the library's values on the same arrays
    for case in ("BraTS20_Training_002", "BraTS20_Training_003", "BraTS20_Training_008",
                 "BraTS20_Training_355"):  # fmt: skip
        expected = score_label_maps(preds[case], refs[case], SPACING)
        for s in expected:
            row = rows[case][s.region]
            assert float(row["dice"]) == pytest.approx(s.dice, abs=1e-9), (case, s.region)
            assert float(row["hd95"]) == pytest.approx(s.hd95, abs=1e-6), (case, s.region)
            assert float(row["hd_max"]) == pytest.approx(s.hd_max, abs=1e-6)
            assert int(row["pred_voxels"]) == s.pred_voxels
    assert 0.3 < float(rows["BraTS20_Training_002"]["WT"]["dice"]) < 0.99
    assert "re-ordered" in rows["BraTS20_Training_008"]["WT"]["note"]
    for region in ("WT", "TC", "ET"):
        perfect = rows["BraTS20_Training_001"][region]
        assert (float(perfect["dice"]), float(perfect["hd95"])) == (1.0, 0.0)
        # problems are scored as an empty prediction, as BraTS does
        for case in ("004", "005", "006", "007", "009"):
            row = rows[f"BraTS20_Training_{case}"][region]
            assert float(row["dice"]) == 0.0
            assert float(row["hd95"]) == pytest.approx(DIAG, abs=1e-6)
            assert row["empty_rule"] == "pred_empty" and row["note"]
        orphan = rows["BraTS20_Training_777"][region]
        assert orphan["dice"] == "" and orphan["hd95"] == ""
    assert rows["BraTS20_Training_355"]["WT"]["reference"].endswith("W39_1998.09.19_Segm.nii")
    assert (
        "not a readable" in rows["BraTS20_Training_005"]["WT"]["note"]
        or "cannot read" in (rows["BraTS20_Training_005"]["WT"]["note"])
    )
    text = capsys.readouterr().out
    assert "Dice mean" in text and "HD95 mean" in text
    assert "1 missing predictions" in text and "BraTS20_Training_004" in text
    assert "1 predictions without a reference" in text and "BraTS20_Training_777" in text
    # the summary is over the 10 reference cases, problems included (as empty predictions)
    wt = [float(rows[c]["WT"]["dice"]) for c in rows if c != "BraTS20_Training_777"]
    wt_line = next(line for line in text.splitlines() if line.startswith("WT"))
    assert wt_line.split()[1] == "10"
    assert float(wt_line.split()[2]) == pytest.approx(np.mean(wt), abs=1e-4)
    assert not list(out.parent.glob(".*tmp"))  # the temporary file was renamed away


def test_parallel_jobs_give_the_same_rows(folders, tmp_path):
    ref_root, pred, _, _ = folders
    one = evaluate_folders(pred, ref_root, jobs=1)
    two = evaluate_folders(pred, ref_root, jobs=2)
    assert len(one.rows) == 11 * 3
    a = write_csv(one.rows, tmp_path / "one.csv").read_bytes()
    b = write_csv(two.rows, tmp_path / "two.csv").read_bytes()
    assert a == b


def test_flat_reference_folder_and_clean_run(tmp_path, capsys):
    ref = tmp_path / "ref"
    pred = tmp_path / "pred"
    ref.mkdir()
    pred.mkdir()
    for i in (1, 2):
        case = f"BraTS20_Validation_{i:03d}"
        label = tumour(i)
        write_nifti(ref / f"{case}_seg.nii.gz", label, AFFINE)
        write_nifti(ref / f"{case}_flair.nii.gz", label.astype(np.float32), AFFINE)  # ignored
        write_nifti(pred / f"{case}.nii.gz", tumour(i, shift=(1, 0, 0)), AFFINE)
    out = tmp_path / "e.csv"
    code = main(
        [
            "evaluate",
            "--pred",
            str(pred),
            "--ref",
            str(ref),
            "--out",
            str(out),
            "--regions",
            "WT,ET",
        ]
    )
    assert code == 0
    rows = read_rows(out)
    assert [(r["case_id"], r["region"]) for r in rows] == [
        ("BraTS20_Validation_001", "WT"),
        ("BraTS20_Validation_001", "ET"),
        ("BraTS20_Validation_002", "WT"),
        ("BraTS20_Validation_002", "ET"),
    ]
    assert all(r["status"] == "ok" and 0 < float(r["dice"]) < 1 for r in rows)
    assert "TC" not in capsys.readouterr().out


def test_ignore_affine_scores_voxel_by_voxel(folders, tmp_path):
    ref_root, pred, _refs, _ = folders
    result = evaluate_folders(pred, ref_root, ignore_affine=True)
    rows = [r for r in result.rows if r.case_id == "BraTS20_Training_007"]
    assert {r.status for r in rows} == {"ok"}
    assert all(r.dice == 1.0 for r in rows) and "voxel by voxel" in rows[0].note


def test_usage_errors_exit_2(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "x.csv"
    assert (
        main(["evaluate", "--pred", str(tmp_path / "nope"), "--ref", str(empty), "--out", str(out)])
        == 2
    )
    assert "not found" in capsys.readouterr().err
    assert main(["evaluate", "--pred", str(empty), "--ref", str(empty), "--out", str(out)]) == 2
    assert "no reference label maps" in capsys.readouterr().err
    assert (
        main(
            [
                "evaluate",
                "--pred",
                str(empty),
                "--ref",
                str(empty),
                "--out",
                str(out),
                "--regions",
                "XX",
            ]
        )
        == 2
    )
    assert "XX" in capsys.readouterr().err
    assert not out.exists()


def test_cropped_grid_with_shifted_origin_is_placed_exactly(tmp_path):
    """A prediction cropped to the tumour (as Slicer may save a .seg.nrrd), its origin moved to
    match, is placed back on the reference grid; labels outside the reference are reported."""
    from GliomaCompareLib.metrics.evaluation import CaseFiles, evaluate_case

    ref = tumour(4)
    pred = tumour(4, shift=(1, 0, 0))
    write_nifti(tmp_path / "ref.nii.gz", ref, AFFINE)
    crop = pred[4:22, 3:20, 2:15]
    moved = AFFINE.copy()
    moved[:3, 3] = (AFFINE @ np.array([4, 3, 2, 1.0]))[:3]
    write_seg_nrrd(tmp_path / "crop.seg.nrrd", crop, moved)
    rows = evaluate_case(CaseFiles("c", tmp_path / "crop.seg.nrrd", tmp_path / "ref.nii.gz"))
    expected = score_label_maps(pred, ref, SPACING)
    assert [r.status for r in rows] == ["ok"] * 3
    assert [r.dice for r in rows] == pytest.approx([s.dice for s in expected], abs=1e-12)
    assert "placed at voxel offset [4, 3, 2]" in rows[0].note
    # a grid hanging over the reference's edge: the labelled voxels outside are dropped, said so
    over = np.zeros((10, 10, 10), np.uint8)
    over[:, :, :] = 2
    edge = AFFINE.copy()
    edge[:3, 3] = (AFFINE @ np.array([20, 18, 12, 1.0]))[:3]
    write_nifti(tmp_path / "over.nii.gz", over, edge)
    rows = evaluate_case(CaseFiles("c", tmp_path / "over.nii.gz", tmp_path / "ref.nii.gz"))
    assert rows[0].status == "ok" and "outside the reference image were dropped" in rows[0].note
    assert rows[0].pred_voxels == 4 * 4 * 4


def test_unexpected_labels_and_bad_references_are_reported(tmp_path):
    from GliomaCompareLib.metrics.evaluation import CaseFiles, evaluate_case

    ref = tumour(1)
    pred = ref.copy()
    pred[0, 0, 0] = 3
    write_nifti(tmp_path / "ref.nii.gz", ref, AFFINE)
    write_nifti(tmp_path / "pred.nii.gz", pred, AFFINE)
    rows = evaluate_case(CaseFiles("c", tmp_path / "pred.nii.gz", tmp_path / "ref.nii.gz"))
    assert rows[0].status == "ok" and "labels outside brats2020: [3]" in rows[0].note
    assert rows[0].dice == 1.0  # label 3 is in no region
    rows = evaluate_case(CaseFiles("c", tmp_path / "pred.nii.gz", tmp_path / "missing.nii.gz"))
    assert {r.status for r in rows} == {"unreadable_reference"}
    assert all(math.isnan(r.dice) for r in rows)
    write_nifti(tmp_path / "frac.nii.gz", ref * 0.3, AFFINE)
    rows = evaluate_case(CaseFiles("c", tmp_path / "pred.nii.gz", tmp_path / "frac.nii.gz"))
    assert {r.status for r in rows} == {"unreadable_reference"} and "non-integer" in rows[0].note


@pytest.mark.parametrize("module", ["GliomaCompareLib.cli", "GliomaCompareLib"])
def test_command_error_is_one_line_and_exit_2_under_python_m(module, tmp_path):
    # under `python -m GliomaCompareLib.cli` cli.py runs as __main__; the commands' CommandError
    # must still be the class main() catches (it lives in argtypes)
    import subprocess
    import sys

    args = ["--pred", str(tmp_path), "--ref", str(tmp_path), "--out", str(tmp_path / "x.csv")]
    done = subprocess.run(
        [sys.executable, "-m", module, "evaluate", *args, "--jobs", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "gliomacompare evaluate: error: --jobs must be >= 1, got 0"
    ]


def test_cli_reexports_the_one_command_error():
    from GliomaCompareLib import argtypes, cli

    assert cli.CommandError is argtypes.CommandError


def test_only_the_predictions_present_are_scored_by_default(folders, tmp_path, capsys):
    _ref_root, pred, refs, _ = folders
    out = tmp_path / "default.csv"
    assert main(["evaluate", "--pred", str(pred), "--ref", str(tmp_path), "--out", str(out)]) == 1
    rows = by_case(read_rows(out))
    missing = rows["BraTS20_Training_004"]
    assert {r["status"] for r in missing.values()} == {"not_predicted"}
    assert all(r["dice"] == "" and r["hd95"] == "" for r in missing.values())
    text = capsys.readouterr().out
    wt_line = next(line for line in text.splitlines() if line.startswith("WT"))
    assert wt_line.split()[1] == "9"  # 10 references, one without a prediction
    assert "1 references without a prediction (not scored" in text
    # a clean subset: two references, a prediction for one, nothing else wrong -> exit 0
    ref, sub = tmp_path / "ref2", tmp_path / "pred2"
    ref.mkdir()
    sub.mkdir()
    for i in (1, 2):
        write_nifti(ref / f"BraTS20_Training_{i:03d}_seg.nii.gz", refs[f"BraTS20_Training_{i:03d}"], AFFINE)  # fmt: skip
    write_nifti(sub / "BraTS20_Training_001.nii.gz", refs["BraTS20_Training_001"], AFFINE)
    argv = ["evaluate", "--pred", str(sub), "--ref", str(ref), "--out", str(tmp_path / "s.csv")]
    assert main(argv) == 0
    assert main([*argv, "--missing", "empty"]) == 1  # the BraTS rule: 002 scored as empty
    assert "1 missing predictions (scored as empty)" in capsys.readouterr().out
    # nothing matched at all is a usage error, not an empty table
    empty = tmp_path / "none"
    empty.mkdir()
    assert main(["evaluate", "--pred", str(empty), "--ref", str(ref), "--out", str(out)]) == 2
    assert "no prediction matches a reference" in capsys.readouterr().err


def test_a_run_folder_is_read_in_its_own_layout(folders, tmp_path, capsys):
    """``--pred RUN`` scores RUN/cases/<id>/cnn.seg.nrrd (not the ground truth beside it)."""
    from GliomaCompareLib.runlayout import CASES_DIR, CNN_SEG_FILE, GT_SEG_FILE

    ref_root, _pred, refs, preds = folders
    run = tmp_path / "run"
    for case in ("BraTS20_Training_002", "BraTS20_Training_003"):
        folder = run / CASES_DIR / case
        folder.mkdir(parents=True)
        write_seg_nrrd(folder / CNN_SEG_FILE, preds[case], AFFINE)
        write_seg_nrrd(folder / GT_SEG_FILE, refs[case], AFFINE)
    out = run / "metrics" / "evaluate.csv"  # inside --pred, but not a label map: allowed
    for pred_arg in (run, run / CASES_DIR):
        assert main(["evaluate", "--pred", str(pred_arg), "--ref", str(ref_root), "--out", str(out)]) == 0  # fmt: skip
        rows = by_case(read_rows(out))
        scored = {c for c, r in rows.items() if r["WT"]["status"] == "ok"}
        assert scored == {"BraTS20_Training_002", "BraTS20_Training_003"}
        for case in scored:
            expected = score_label_maps(preds[case], refs[case], SPACING)
            assert [float(rows[case][s.region]["dice"]) for s in expected] == pytest.approx(
                [s.dice for s in expected], abs=1e-9
            )
            assert rows[case]["WT"]["prediction"].endswith(f"{case}/{CNN_SEG_FILE}")
    capsys.readouterr()


def test_an_output_that_is_an_input_is_refused(folders, tmp_path, capsys):
    ref_root, pred, _refs, _ = folders
    truth = ref_root / "BraTS20_Training_001" / "BraTS20_Training_001_seg.nii.gz"
    before = truth.read_bytes()
    for out in (truth, pred / "BraTS20_Training_002_seg.nii.gz", pred / "new.nii.gz"):
        kept = out.read_bytes() if out.exists() else None
        assert main(["evaluate", "--pred", str(pred), "--ref", str(ref_root), "--out", str(out)]) == 2  # fmt: skip
        err = capsys.readouterr().err
        assert "refusing to overwrite an input" in err and str(out) in err
        assert (out.read_bytes() if out.exists() else None) == kept
    assert truth.read_bytes() == before  # the ground truth is untouched
    # a reference reached through a link is the same file
    link = tmp_path / "alias_seg.nii.gz"
    try:
        link.symlink_to(truth)
    except OSError:
        return  # no symbolic links here (Windows without the privilege)
    assert main(["evaluate", "--pred", str(pred), "--ref", str(ref_root), "--out", str(link)]) == 2
    assert truth.read_bytes() == before
