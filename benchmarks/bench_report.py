"""Rebuilding the report of a full-size run: 369 BraTS 2020 cases, 240x240 slices.

A run folder is filled with random but well-formed tables (the layout of
``GliomaCompareLib.runlayout``: 369 cases, CNN WT/TC/ET, base and fine-tuned VLM with
point / box / polygon on ``--slices`` slices per case, consistency repeats) and one
``gallery.npz`` per case. The numbers mean nothing; only the time and size of the report do.

Baseline, measured in the same run: reading the run folder (``load_run``: manifest and every
CSV), which any report must do. Prints seconds and ratios against it for the tables-only report
(``figures=False``) and the full report (figures and an 18-panel gallery), the HTML size and the
peak memory (RSS) of this process. No target is asserted.

    .venv/bin/python benchmarks/bench_report.py [--cases 369] [--slices 12] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np


def make_run(root: Path, cases: int, slices: int, seed: int = 0) -> Path:
    from GliomaCompareLib.geometry import Box, Point, Polygon
    from GliomaCompareLib.report import CaseGallery, GalleryAnswer, GradePrediction, write_gallery
    from GliomaCompareLib.runlayout import write_table

    rng = np.random.default_rng(seed)
    run = root / "run"
    ids = [f"BraTS20_Training_{i:03d}" for i in range(1, cases + 1)]
    grades = ["HGG" if rng.random() < 293 / 369 else "LGG" for _ in ids]
    models = {
        "cnn": "SegResNet(16) + DenseNet121",
        "vlm_base": "meta-llama/Llama-3.2-11B-Vision-Instruct",
        "vlm_finetuned": "meta-llama/Llama-3.2-11B-Vision-Instruct + LoRA adapter 1a2b3c",
    }
    seg, slice_rows, grade_rows = [], [], []
    yy, xx = np.mgrid[0:240, 0:240]
    for case_id, grade in zip(ids, grades, strict=True):
        for region in ("WT", "TC", "ET"):
            seg.append(
                {
                    "case_id": case_id,
                    "method": "cnn",
                    "model": models["cnn"],
                    "task": "seg",
                    "region": region,
                    "dice": rng.beta(5, 2),
                    "hd95": rng.gamma(2, 4),
                    "status": "ok",
                }
            )
        for method in ("vlm_base", "vlm_finetuned"):
            for task in ("point", "box", "polygon"):
                seg.append(
                    {
                        "case_id": case_id,
                        "method": method,
                        "model": models[method],
                        "task": task,
                        "region": "WT",
                        "dice": rng.beta(1, 6),
                        "hd95": rng.gamma(4, 8),
                        "status": "ok",
                    }
                )
                for k in range(slices):
                    for r in range(2 if k < 2 else 1):  # repeats of two slices
                        slice_rows.append(
                            {
                                "case_id": case_id,
                                "slice_index": 60 + k,
                                "method": method,
                                "model": models[method],
                                "task": task,
                                "run": r,
                                "status": "ok",
                                "dice_2d": rng.beta(1, 5),
                                "hd95_2d": rng.gamma(3, 6),
                                "pred_cx": 120 + rng.normal(0, 10),
                                "pred_cy": 120 + rng.normal(0, 10),
                                "true_cx": rng.uniform(40, 200),
                                "true_cy": rng.uniform(40, 200),
                                "width": 240,
                                "height": 240,
                            }
                        )
            grade_rows.append(
                {
                    "case_id": case_id,
                    "method": method,
                    "model": models[method],
                    "grade_true": grade,
                    "grade_pred": "HGG",
                    "p_hgg": 1.0,
                }
            )
        cx, cy = rng.uniform(60, 180, size=2)
        gt = (xx - cx) ** 2 + (yy - cy) ** 2 < 30**2
        answer = {
            "point": GalleryAnswer("ok", Point(120, 120)),
            "box": GalleryAnswer("ok", Box(100, 100, 140, 140)),
            "polygon": GalleryAnswer("ok", Polygon(((100, 100), (140, 105), (120, 140)))),
        }
        write_gallery(
            run / "cases" / case_id / "gallery.npz",
            CaseGallery(
                case_id=case_id,
                grade=grade,
                slice_index=70,
                flair=rng.integers(0, 256, (240, 240), dtype=np.uint8),
                gt=gt,
                cnn=np.roll(gt, 5, axis=0),
                answers={"vlm_base": answer, "vlm_finetuned": answer},
                predictions={"cnn": GradePrediction(grade, 0.7, models["cnn"])},
                models=models,
            ),
        )
    cls = []
    for method in models:
        cls.append(
            {
                "method": method,
                "model": models[method],
                "n": cases,
                "tp": 200,
                "fp": 50,
                "tn": 26,
                "fn": 93,
                "n_invalid": 0,
                "accuracy": 0.61,
                "precision": 0.8,
                "sensitivity": 0.68,
                "specificity": 0.34,
                "f1": 0.74,
                "balanced_accuracy": 0.51,
                "auc": 0.55,
                "majority_baseline_accuracy": 0.79,
                "ci_level": 0.95,
                "n_bootstrap": 2000,
            }
        )
    metrics = run / "metrics"
    write_table(metrics / "classification.csv", "classification", cls)
    write_table(metrics / "grades.csv", "grades", grade_rows)
    write_table(metrics / "segmentation.csv", "segmentation", seg)
    write_table(metrics / "slices.csv", "slices", slice_rows)
    write_table(
        metrics / "comparisons.csv",
        "comparisons",
        [
            {
                "method_a": "cnn",
                "method_b": "vlm_base",
                "n": cases,
                "b": 40,
                "c": 12,
                "statistic": 14.0,
                "p_value": 0.0002,
                "test": "chi2_cc",
            }
        ],
    )
    write_answers(run, ids, slices, models, rng)
    (run / "manifest.json").write_text(json.dumps({"config": {"name": "bench"}, "versions": {}}))
    return run


#: Parse statuses of the benchmark's answers, and how often each comes.
STATUS_SHARES = {"ok": 0.7, "repaired": 0.1, "pattern": 0.05, "invalid": 0.1, "refused": 0.05}


def write_answers(run: Path, ids, slices: int, models, rng) -> None:
    """Each VLM stage's ``answers.jsonl`` (every task on every slice, slice 70 being the gallery
    slice), ``answer_status.csv`` and ``dice_by_group.csv``: what the report's raw answers on
    their images, answer-status bars and Dice-by-group figure read."""
    from GliomaCompareLib.runlayout import write_table

    statuses, shares = list(STATUS_SHARES), list(STATUS_SHARES.values())
    status_rows, group_rows = [], []
    for method in ("vlm_base", "vlm_finetuned"):
        counts: dict[tuple[str, str], int] = {}
        folder = run / "stages" / f"vlm-{method}" / "out" / "all"
        folder.mkdir(parents=True)
        with (folder / "answers.jsonl").open("w", encoding="utf-8") as handle:
            for case_id in ids:
                for k in range(slices):
                    for task in ("grade", "point", "box", "polygon"):
                        status = str(rng.choice(statuses, p=shares))
                        counts[(task, status)] = counts.get((task, status), 0) + 1
                        usable = status in ("ok", "repaired", "pattern") and task != "grade"
                        pixel = {"type": "point", "x": 120.0, "y": 118.0} if usable else None
                        record = {"case_id": case_id, "slice_index": 64 + k, "task": task,
                                  "run": 0, "status": status, "raw_text": '{"x": 120, "y": 118}',
                                  "pixel": pixel, "width": 240, "height": 240,
                                  "model_label": models[method]}  # fmt: skip
                        handle.write(json.dumps(record) + "\n")
        for (task, status), count in sorted(counts.items()):
            total = sum(c for (t, _), c in counts.items() if t == task)
            status_rows.append({"method": method, "model": models[method], "task": task,
                                "status": status, "count": count, "fraction": count / total})  # fmt: skip
        for group, level in (
            ("grade", "HGG"),
            ("grade", "LGG"),
            ("size", "small"),
            ("size", "large"),
        ):
            for scope in ("slices", "cnn_same_slices"):
                group_rows.append({"method": method, "model": models[method], "task": "box",
                                   "region": "WT", "scope": scope, "group": group, "level": level,
                                   "n": 90, "dice_mean": rng.beta(1, 5), "dice_median": 0.1})  # fmt: skip
    write_table(run / "metrics" / "answer_status.csv", "answer_status", status_rows)
    write_table(run / "metrics" / "dice_by_group.csv", "dice_by_group", group_rows)


def timed(func, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        func()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=369)
    parser.add_argument("--slices", type=int, default=12, help="slices per case the VLM saw")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    from GliomaCompareLib.report import build_report, load_run
    from GliomaCompareLib.report.answer_panels import answer_panels
    from GliomaCompareLib.report.options import ReportOptions
    from GliomaCompareLib.report.prompts import read_prompts

    def answers_on_images():
        answer_panels(run, read_prompts(run), ReportOptions(), [])

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run = make_run(Path(tmp), args.cases, args.slices)
        print(
            f"run folder: {args.cases} cases, {args.slices} slices per case "
            f"(made in {time.perf_counter() - t0:.1f} s)"
        )
        base = timed(lambda: load_run(run), args.repeats)
        tables = timed(lambda: build_report(run, figures=False), args.repeats)
        full = timed(lambda: build_report(run), args.repeats)
        answers = timed(answers_on_images, args.repeats)
        size = (run / "report.html").stat().st_size
        print(f"baseline  load_run (read manifest + CSVs): {base:7.2f} s   1.0x")
        print(f"report    tables only (figures=False):     {tables:7.2f} s  {tables / base:5.1f}x")
        print(f"report    full (figures + gallery):        {full:7.2f} s  {full / base:5.1f}x")
        print(
            f"  of it   raw answers on their images:     {answers:7.2f} s  {answers / base:5.1f}x"
        )
        print(f"report.html: {size / 1e6:.2f} MB")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process: {peak:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
