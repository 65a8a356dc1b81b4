"""Slicer files and the module's case loading at full BraTS size (240x240x155, 1 mm).

Baseline, measured in the same run: Slicer's own ``vtkMRMLSegmentationStorageNode`` (slicer-core)
writing / reading the same segmentation. Prints seconds and ratios (ours / Slicer's); also the
time to load a full case into a scene through the module logic (four volumes + ground truth)
and the run results of that case. No target is asserted; the numbers go in the README.

    .venv/bin/python benchmarks/bench_slicer_files.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "GliomaCompare"))


def best(func, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return min(times)


def full_size_case(root: Path) -> Path:
    """One full-size case in BraTS layout (a sphere tumour in a noisy ellipsoid brain)."""
    from GliomaCompareLib.data.io import write_nifti

    shape = (240, 240, 155)
    affine = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 239], [0, 0, 1.0, 0], [0, 0, 0, 1]])
    x, y, z = np.ogrid[: shape[0], : shape[1], : shape[2]]
    brain = ((x - 120) / 70) ** 2 + ((y - 120) / 90) ** 2 + ((z - 77) / 60) ** 2 < 1
    r = np.sqrt((x - 150) ** 2 + (y - 100) ** 2 + (z - 80) ** 2)
    label = np.zeros(shape, np.uint8)
    label[(r < 25) & brain] = 2
    label[(r < 15) & brain] = 1
    label[(r >= 10) & (r < 15) & brain] = 4
    rng = np.random.default_rng(0)
    case_id = "BraTS20_Training_001"
    folder = root / "MICCAI_BraTS2020_TrainingData" / case_id
    for channel in ("flair", "t1", "t1ce", "t2"):
        image = (brain * (100 + rng.normal(0, 5, shape))).astype(np.float32)
        write_nifti(folder / f"{case_id}_{channel}.nii.gz", image, affine)
    write_nifti(folder / f"{case_id}_seg.nii.gz", label, affine)
    (folder.parent / "name_mapping.csv").write_text(f"BraTS_2020_subject_ID,Grade\n{case_id},HGG\n")
    return folder.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import slicer
    from GliomaCompareSlicerLib import mrml, testing
    from GliomaCompareSlicerLib.logic import CompareLogic

    from GliomaCompareLib import slicer_files as sf
    from GliomaCompareLib.data.case import load_case
    from GliomaCompareLib.data.discovery import discover_cases

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = full_size_case(tmp / "data")
        case = load_case(discover_cases(data).cases[0])
        scene = mrml.setup_scene(slicer.vtkMRMLScene())
        node = mrml.segmentation_node_from_label_map(case.label, case.affine, name="GT")

        ours_w = best(
            lambda: sf.write_seg_nrrd(tmp / "ours.seg.nrrd", case.label, case.affine), args.repeats
        )
        slicer_w = best(lambda: mrml.save_node(node, tmp / "slicer.seg.nrrd"), args.repeats)
        ours_r = best(lambda: sf.read_seg_nrrd(tmp / "ours.seg.nrrd"), args.repeats)

        def slicer_read():
            mrml.remove_nodes([mrml.load_segmentation_file(tmp / "ours.seg.nrrd")])

        slicer_r = best(slicer_read, args.repeats)
        regions_w = best(
            lambda: sf.write_seg_nrrd(
                tmp / "r.seg.nrrd", case.label, case.affine, segments="regions"
            ),
            args.repeats,
        )
        print(f"full-size label map 240x240x155 (best of {args.repeats})")
        print(
            f"  write .seg.nrrd  ours {ours_w:.3f} s   Slicer storage node {slicer_w:.3f} s   ratio {ours_w / slicer_w:.2f}"
        )
        print(
            f"  read  .seg.nrrd  ours {ours_r:.3f} s   Slicer storage node {slicer_r:.3f} s   ratio {ours_r / slicer_r:.2f}"
        )
        print(f"  write regions .seg.nrrd (3 layers) ours {regions_w:.3f} s")
        print(
            f"  file sizes: ours {(tmp / 'ours.seg.nrrd').stat().st_size / 1e3:.0f} kB, "
            f"Slicer {(tmp / 'slicer.seg.nrrd').stat().st_size / 1e3:.0f} kB (Slicer crops to the tumour)"
        )

        run = testing.write_tiny_run(tmp / "run", data)
        logic = CompareLogic(scene)
        logic.open_run(run)
        load = best(lambda: logic.load_case(case.case_id), args.repeats)
        results = best(lambda: logic.load_run_results(case.case_id), args.repeats)
        print(
            f"  module logic: load case (4 volumes + ground truth) {load:.2f} s; "
            f"load run results (CNN seg, 3 markups, table) {results:.2f} s"
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"  peak memory of this process: {peak:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
