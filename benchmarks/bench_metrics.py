"""Benchmark: scoring full 240x240x155 BraTS-sized cases (WT / TC / ET).

Compares, on the same masks in the same run:
  * ours:  ``score_label_maps`` (Dice + HD95 + max HD, three regions, from the label maps)
  * MONAI: ``compute_hausdorff_distance(percentile=95)`` on the three region masks
  * medpy: ``medpy.metric.binary.hd95`` on the three region masks
and checks that our HD95 equals MONAI's. Then scores a folder of .nii.gz cases end to end
(``evaluate_folders``, reading files included) with 2 worker processes and projects the time for
the 369 BraTS 2020 training cases.

Target (issue 3): >= 3x faster than both MONAI and medpy; 369 cases well under a minute on 2 cores.

Run: .venv/bin/python benchmarks/bench_metrics.py [--cases 3] [--files 8]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

SHAPE = (240, 240, 155)
REGIONS = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}


def _smooth_noise(rng, sigma=6.0):
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(rng.standard_normal(SHAPE).astype(np.float32), sigma)
    return field / field.std()


def make_case(seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(prediction, reference, WT volume in cm^3): a noisy ellipsoidal tumour, TC and ET inside,
    and a prediction that differs from it at the border."""
    rng = np.random.default_rng(seed)
    grid = np.ogrid[tuple(slice(0, s) for s in SHAPE)]
    centre = np.array([120, 120, 78]) + rng.uniform(-25, 25, 3)
    radii = rng.uniform(22, 34, 3) * np.array([1.0, 1.0, 0.9])

    def label_map(noise, shift):
        c = centre + shift
        r = np.sqrt(sum(((g - ci) / ri) ** 2 for g, ci, ri in zip(grid, c, radii, strict=True)))
        r = r + 0.12 * noise
        label = np.zeros(SHAPE, np.uint8)
        label[r < 1.0] = 2  # edema
        label[r < 0.6] = 1  # necrotic core
        label[(r < 0.6) & (r > 0.4)] = 4  # enhancing rim
        return label

    ref = label_map(_smooth_noise(rng), np.zeros(3))
    pred = label_map(_smooth_noise(rng), rng.uniform(-2, 2, 3))
    return pred, ref, float(np.isin(ref, REGIONS["WT"]).sum()) / 1000.0


def time_call(fn, repeat=3):
    best = float("inf")
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def bench_metrics(n_cases: int) -> dict:
    import torch
    from medpy.metric.binary import hd95 as medpy_hd95
    from monai.metrics import compute_hausdorff_distance

    from GliomaCompareLib.metrics.segmentation import score_label_maps, score_masks

    spacing = (1.0, 1.0, 1.0)
    rows = []
    for seed in range(n_cases):
        pred, ref, wt_cm3 = make_case(seed)
        masks = {r: (np.isin(pred, v), np.isin(ref, v)) for r, v in REGIONS.items()}
        t_ours, scores = time_call(lambda p=pred, r=ref: score_label_maps(p, r, spacing))
        t_ours_masks, _ = time_call(
            lambda m=masks: [score_masks(p, r, spacing) for p, r in m.values()]
        )

        def monai(m=masks):
            out = []
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for p, r in m.values():
                    hd = compute_hausdorff_distance(
                        torch.from_numpy(p)[None, None],
                        torch.from_numpy(r)[None, None],
                        include_background=True,
                        percentile=95,
                        spacing=list(spacing),
                    )
                    out.append(float(hd))
            return out

        t_monai, monai_hd = time_call(monai, repeat=2)
        t_medpy, _ = time_call(
            lambda m=masks: [medpy_hd95(p, r, spacing) for p, r in m.values()], repeat=1
        )
        diff = max(abs(s.hd95 - h) for s, h in zip(scores, monai_hd, strict=True))
        rows.append((wt_cm3, t_ours, t_ours_masks, t_monai, t_medpy, diff, scores))
        print(
            f"case {seed}: WT {wt_cm3:6.1f} cm^3 | ours {t_ours:.3f} s (from masks "
            f"{t_ours_masks:.3f} s) | MONAI {t_monai:.3f} s | medpy {t_medpy:.3f} s | "
            f"max |HD95 ours - MONAI| {diff:.2e} mm | "
            + " ".join(f"{s.region} Dice {s.dice:.3f} HD95 {s.hd95:.2f}" for s in scores)
        )
    arr = np.array([r[1:6] for r in rows])
    mean = arr.mean(axis=0)
    return {
        "ours": mean[0],
        "ours_masks": mean[1],
        "monai": mean[2],
        "medpy": mean[3],
        "max_diff": arr[:, 4].max(),
    }


def bench_files(n_files: int, jobs: int) -> tuple[float, float]:
    """(wall seconds per case, CPU seconds per case) of evaluate_folders over .nii.gz files with
    ``jobs`` worker processes; the CPU time (workers' user + system) does not depend on how busy
    the machine is."""
    import resource

    from GliomaCompareLib.data.io import write_nifti
    from GliomaCompareLib.metrics.evaluation import evaluate_folders

    with tempfile.TemporaryDirectory() as tmp:
        ref_dir, pred_dir = Path(tmp, "ref"), Path(tmp, "pred")
        ref_dir.mkdir()
        pred_dir.mkdir()
        for i in range(n_files):
            pred, ref, _ = make_case(100 + i)
            case = f"BraTS20_Training_{i + 1:03d}"
            write_nifti(ref_dir / f"{case}_seg.nii.gz", ref, np.eye(4))
            write_nifti(pred_dir / f"{case}.nii.gz", pred, np.eye(4))
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        result = evaluate_folders(pred_dir, ref_dir, jobs=jobs)
        elapsed = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        assert all(r.status == "ok" for r in result.rows), "unexpected status"
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed / n_files, cpu / n_files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=3, help="in-memory cases (default 3)")
    parser.add_argument("--files", type=int, default=8, help="cases written to disk (default 8)")
    args = parser.parse_args()
    import torch

    print(
        f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}; masks {SHAPE} at 1 mm; "
        "times are the best of repeated calls per case, three regions each"
    )
    m = bench_metrics(args.cases)
    print("\nper case (mean over cases), three regions:")
    print(f"  ours  score_label_maps (Dice+HD95+HDmax) {m['ours']:.3f} s")
    print(f"  ours  score_masks x3 on region masks     {m['ours_masks']:.3f} s")
    print(f"  MONAI compute_hausdorff_distance x3      {m['monai']:.3f} s")
    print(f"  medpy hd95 x3                            {m['medpy']:.3f} s")
    print(
        f"speed-up of ours (label maps) vs MONAI: {m['monai'] / m['ours']:.1f}x, vs medpy: "
        f"{m['medpy'] / m['ours']:.1f}x (target >= 3x both)"
    )
    print(f"largest |HD95 ours - MONAI| over all regions and cases: {m['max_diff']:.2e} mm")
    print(
        f"projected metric time for 369 cases on 2 cores: {369 * m['ours'] / 2:.1f} s "
        f"(MONAI {369 * m['monai'] / 2:.0f} s, medpy {369 * m['medpy'] / 2:.0f} s)"
    )
    if args.files:
        per_case, cpu_case = bench_files(args.files, jobs=2)
        print(
            f"\nend to end (evaluate_folders, .nii.gz read + scored, 2 processes, {args.files} "
            f"cases): {per_case:.3f} s wall per case -> projected 369 cases: {369 * per_case:.1f} s"
            f" at the present machine load; {cpu_case:.3f} CPU s per case -> "
            f"{369 * cpu_case / 2:.1f} s on 2 otherwise idle cores"
        )
    print(f"load average now: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
