"""Tiny synthetic data for the module's self-test (in Slicer) and the pytest suite.

Deliberately small and awkward: non-cubic shapes (X != Y != Z), anisotropic voxels and a
BraTS-like LPS-flipped affine, so that an axis swap or a sign error in any conversion shows up.
Nothing here is a model result; run folders written here say so in their manifest.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from GliomaCompareSlicerLib import paths

paths.ensure_library_importable()

from GliomaCompareLib import slicer_files  # noqa: E402
from GliomaCompareLib.data.conventions import load_convention  # noqa: E402
from GliomaCompareLib.data.io import write_nifti  # noqa: E402
from GliomaCompareLib.data.slices import SliceGeometry  # noqa: E402

__all__ = [
    "TINY_AFFINE",
    "TINY_SHAPE",
    "check_mrml_round_trip",
    "write_tiny_cohort",
    "write_tiny_run",
]

#: (X, Y, Z) of the tiny cases.
TINY_SHAPE = (20, 24, 12)
#: voxel -> RAS like BraTS (i runs right-to-left, j posterior-to-anterior flipped), anisotropic.
TINY_AFFINE = np.array(
    [[-1.0, 0.0, 0.0, 10.0], [0.0, -1.5, 0.0, 30.0], [0.0, 0.0, 2.0, -12.0], [0.0, 0.0, 0.0, 1.0]]
)


def _tiny_case(rng: np.random.Generator, grade: str):
    x, y, z = np.meshgrid(*[np.arange(s, dtype=float) for s in TINY_SHAPE], indexing="ij")
    brain = ((x - 9.5) / 9) ** 2 + ((y - 11.5) / 11) ** 2 + ((z - 5.5) / 6) ** 2 < 1
    cx, cy, cz = rng.uniform(6, 13), rng.uniform(7, 16), rng.uniform(4, 7)
    r = np.sqrt((x - cx) ** 2 + ((y - cy) / 1.2) ** 2 + ((z - cz) * 1.5) ** 2)
    label = np.zeros(TINY_SHAPE, np.uint8)
    label[(r < 4.5) & brain] = 2
    label[(r < 2.8) & brain] = 1
    if grade == "HGG":
        label[(r >= 1.6) & (r < 2.8) & brain] = 4
    images = {}
    for channel, scale in (("flair", 1.0), ("t1", 0.7), ("t1ce", 0.8), ("t2", 1.2)):
        base = 100 * scale * brain + rng.normal(0, 3, TINY_SHAPE) * brain
        base = (
            base
            + 60 * (label == 2) * (channel in ("flair", "t2"))
            + 80 * (label == 4) * (channel == "t1ce")
        )
        images[channel] = (base * brain).astype(np.float32)
    return images, label


def write_tiny_cohort(root: str | Path, n_cases: int = 2, seed: int = 0) -> Path:
    """Write ``n_cases`` tiny cases in BraTS 2020 layout (with ``name_mapping.csv``) under
    ``root/MICCAI_BraTS2020_TrainingData``; return that folder. Even cases are HGG."""
    conv = load_convention("brats2020")
    data = Path(root) / "MICCAI_BraTS2020_TrainingData"
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(n_cases):
        case_id = f"BraTS20_Training_{index + 1:03d}"
        grade = "HGG" if index % 2 == 0 else "LGG"
        images, label = _tiny_case(rng, grade)
        folder = data / case_id
        for channel, array in images.items():
            write_nifti(folder / f"{conv.file_stem(case_id, channel)}.nii.gz", array, TINY_AFFINE)
        write_nifti(folder / f"{conv.file_stem(case_id, 'seg')}.nii.gz", label, TINY_AFFINE)
        rows.append((case_id, grade))
    with (data / conv.name_mapping_file).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([conv.id_column, conv.grade_column])
        writer.writerows(rows)
    return data


def write_tiny_run(run_dir: str | Path, data_dir: str | Path, seed: int = 1) -> Path:
    """A run folder as the comparison run lays it out (issue 7), filled with *fabricated*
    results for the module's tests: CNN = ground truth with a shifted ET, VLM answers placed on
    each case's largest-tumour slice, per-case ``metrics.json`` and ``metrics/*.csv``. The
    manifest says ``"fabricated test data"``."""
    from GliomaCompareLib.data.case import load_case
    from GliomaCompareLib.data.discovery import discover_cases

    run = Path(run_dir)
    rng = np.random.default_rng(seed)
    cohort = discover_cases(data_dir, "brats2020", validate=False)
    seg_rows, cls_rows = [], []
    for record in cohort.cases:
        case = load_case(record)
        label = case.label.copy()
        label[np.roll(case.label == 4, 1, axis=0) & (label > 0)] = 4
        folder = slicer_files.case_dir(run, case.case_id)
        slicer_files.write_seg_nrrd(
            folder / slicer_files.CNN_SEG_FILE, label, case.affine, segments="regions"
        )
        slicer_files.write_seg_nrrd(folder / slicer_files.GT_SEG_FILE, case.label, case.affine)
        wt = np.isin(case.label, (1, 2, 4))
        k = int(np.argmax(wt.sum(axis=(0, 1))))
        geometry = SliceGeometry.axial(case.affine, case.shape, k)
        mask = geometry.extract(wt)
        rows_, cols_ = np.nonzero(mask)
        centre = (float(cols_.mean()), float(rows_.mean()))
        slicer_files.write_points_markup(
            folder / slicer_files.VLM_POINT_FILE,
            slicer_files.points_from_pixels(geometry, [centre]),
            [f"k={k}"],
            descriptions=["fabricated test data"],
        )
        roi = slicer_files.roi_from_pixel_box(
            geometry,
            cols_.min(),
            rows_.min(),
            cols_.max(),
            rows_.max(),
            description="fabricated test data",
        )
        slicer_files.write_markups(folder / slicer_files.VLM_BOX_FILE, roi)
        poly = [(cols_.min(), rows_.min()), (cols_.max(), rows_.min()), (centre[0], rows_.max())]
        slicer_files.write_markups(
            folder / slicer_files.VLM_POLYGON_FILE,
            slicer_files.closed_curve_from_pixels(
                geometry, poly, description="fabricated test data"
            ),
        )
        dice = {r: float(rng.uniform(0.3, 0.9)) for r in ("WT", "TC", "ET")}
        p = float(rng.uniform(0, 1))
        metrics = {
            "case_id": case.case_id,
            "grade": case.grade,
            "cnn": {"grade": "HGG" if p > 0.5 else "LGG", "p_hgg": p, "dice": dice},
            "vlm_base": {"grade": "HGG", "dice": {"box": float(rng.uniform(0, 0.3))}},
        }
        (folder / slicer_files.CASE_METRICS_FILE).write_text(json.dumps(metrics, indent=2))
        for region, value in dice.items():
            seg_rows.append((case.case_id, "cnn", region, value, float(rng.uniform(1, 20))))
        cls_rows.append((case.case_id, case.grade, metrics["cnn"]["grade"], p))
    metrics_dir = run / slicer_files.METRICS_DIR
    metrics_dir.mkdir(parents=True, exist_ok=True)
    with (metrics_dir / "segmentation.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_id", "method", "region", "dice", "hd95"])
        writer.writerows(seg_rows)
        writer.writerow(["mean", "cnn", "WT", 0.5, 10.0])
    with (metrics_dir / "classification.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_id", "grade", "cnn_predicted_grade", "cnn_p_hgg"])
        writer.writerows(cls_rows)
    manifest = {"note": "fabricated test data", "config": {"data": str(Path(data_dir).resolve())}}
    (run / slicer_files.MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    return run


def check_mrml_round_trip(scene) -> None:
    """The module's self-test part that needs only packages Slicer bundles (numpy, VTK, MRML; no
    nibabel, no files): a tiny case's image and label map go into volume and segmentation nodes
    and come back voxel for voxel, with the same geometry; segments carry SNOMED CT terms.

    Raises:
        AssertionError: naming what differs.
    """
    from GliomaCompareSlicerLib import mrml

    images, label = _tiny_case(np.random.default_rng(0), "HGG")
    volume = mrml.volume_node_from_array(
        images["flair"], TINY_AFFINE, "self-test FLAIR", scene=scene
    )
    array, affine = mrml.array_from_volume_node(volume)
    np.testing.assert_array_equal(array, images["flair"], err_msg="volume voxels")
    np.testing.assert_allclose(affine, TINY_AFFINE, atol=1e-6, err_msg="volume geometry")
    segmentation = mrml.segmentation_node_from_label_map(
        label, TINY_AFFINE, "brats2020", "self-test labels", scene=scene
    )
    back = mrml.label_map_from_segmentation_node(segmentation, volume)
    np.testing.assert_array_equal(back, label, err_msg="segment voxels / label values")
    seg = segmentation.GetSegmentation()
    types = [
        seg.GetNthSegment(i).GetTerminology().split("~")[2]
        for i in range(seg.GetNumberOfSegments())
    ]
    expected = ["SCT^6574001^Necrosis", "SCT^79654002^Edema", "SCT^86049000^Neoplasm, Primary"]
    assert types == expected, f"segment terminology {types}, expected {expected}"
    mrml.remove_nodes([volume, segmentation])
