"""``gliomacompare evaluate``: score predicted label maps against references, BraTS style."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from GliomaCompareLib.argtypes import CommandError, add_quiet_option
from GliomaCompareLib.data.conventions import REGIONS, load_convention
from GliomaCompareLib.metrics.evaluation import (
    MISSING_RULES,
    evaluate_folders,
    match_cases,
    output_is_input,
    summarise,
    write_csv,
)
from GliomaCompareLib.runlayout import CASES_DIR, CNN_SEG_FILE

__all__ = ["register"]

_EPILOG = """\
Matching: the prediction BraTS20_Training_001.nii.gz (or ..._001_seg.nii.gz, ..._001.seg.nrrd)
scores against the reference BraTS20_Training_001_seg.nii.gz. --ref may be a BraTS data folder
(case sub-folders) or a flat folder of label maps. --pred may also be a run folder (or its
cases/ folder): its cases/<case_id>/cnn.seg.nrrd are scored.

Columns: case_id, region (WT/TC/ET), dice, hd95 (mm, MONAI's definition: the larger of the two
directed 95th-percentile surface distances), hd_max (mm), pred_voxels, ref_voxels,
pred_volume_mm3, ref_volume_mm3, empty_rule, status, note, prediction, reference.
BraTS rules: a region empty in both gives Dice 1 / HD95 0; empty in one gives Dice 0 / HD95 =
image diagonal (373.13 mm for 240x240x155 at 1 mm). Unreadable or mismatched predictions are
scored as empty predictions and flagged in 'status'. A reference without a prediction is not
scored (status not_predicted) unless --missing empty, the BraTS rule, scores it as an empty
prediction (status missing_prediction).

Exit status: 0 every prediction present was usable; 1 the CSV was written but some cases had
problems (see 'status'); 2 usage error or nothing to score.
"""


def _regions(text: str) -> tuple[str, ...]:
    values = tuple(v.strip() for v in text.split(",") if v.strip())
    if not values:
        raise argparse.ArgumentTypeError("give at least one region, e.g. WT,TC,ET")
    return values


def register(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score predicted label maps against references (Dice, HD95 per region)",
        description=(
            "Score a folder of predicted label maps (.nii, .nii.gz, .seg.nrrd) against reference "
            "label maps, one CSV row per (case, region), and print a per-region summary."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--pred",
        required=True,
        metavar="DIR",
        help="folder of predicted label maps, or a run folder (its cases/<id>/cnn.seg.nrrd)",
    )
    p.add_argument(
        "--ref",
        required=True,
        metavar="DIR",
        help="BraTS data folder (case sub-folders) or flat folder of reference label maps",
    )
    p.add_argument(
        "-o", "--out", required=True, metavar="FILE.csv", help="CSV to write (atomically)"
    )
    p.add_argument(
        "--missing",
        choices=MISSING_RULES,
        default="skip",
        help="a reference without a prediction: skip = not scored (default); empty = scored as "
        "an empty prediction (the BraTS challenge rule)",
    )
    p.add_argument("--convention", default="brats2020", help="label convention (default brats2020)")
    p.add_argument(
        "--regions",
        type=_regions,
        default=None,
        metavar="WT,TC,ET",
        help="regions to score, comma-separated (default: WT,TC,ET)",
    )
    p.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    p.add_argument(
        "--ignore-affine",
        action="store_true",
        help="score same-shape predictions voxel by voxel even when their affine differs from "
        "the reference's (for files written with a wrong header)",
    )
    add_quiet_option(p, "no progress or per-case problem list")
    p.set_defaults(func=_evaluate)


def _fmt(value: float, digits: int) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def summary_table(summary: dict) -> str:
    """The per-region summary as aligned text."""
    header = ("region", "n", "Dice mean", "median", "sd", "HD95 mean", "median", "sd (mm)")
    lines = [header]
    for region, entry in summary.items():
        d, h = entry["dice"], entry["hd95"]
        lines.append(
            (
                region,
                str(entry["n"]),
                _fmt(d["mean"], 4),
                _fmt(d["median"], 4),
                _fmt(d["std"], 4),
                _fmt(h["mean"], 2),
                _fmt(h["median"], 2),
                _fmt(h["std"], 2),
            )
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.rjust(widths[i]) if i else cell.ljust(widths[i]) for i, cell in enumerate(r))
        for r in lines
    )


def prediction_layout(pred: str | Path) -> tuple[Path, str | None]:
    """(folder, per-case file name or None) of ``--pred``: a run folder (or its ``cases/``)
    holds ``cases/<case_id>/cnn.seg.nrrd``; any other folder holds the label maps directly."""
    pred = Path(pred)
    for folder in (pred / CASES_DIR, pred):
        if folder.is_dir() and any(folder.glob(f"*/{CNN_SEG_FILE}")):
            return folder, CNN_SEG_FILE
    return pred, None


def _evaluate(args) -> int:
    if args.jobs < 1:
        raise CommandError(f"--jobs must be >= 1, got {args.jobs}")
    conv = load_convention(args.convention)
    regions = args.regions or tuple(r for r in REGIONS if r in conv.regions)
    unknown = [r for r in regions if r not in conv.regions]
    if unknown:
        raise CommandError(
            f"--regions {','.join(unknown)}: not defined by {conv.name} "
            f"(it defines {', '.join(conv.regions)})"
        )
    pred_dir, case_file = prediction_layout(args.pred)
    cases, _ = match_cases(pred_dir, args.ref, conv, case_file=case_file)
    why = output_is_input(args.out, args.pred, args.ref, cases)
    if why:
        raise CommandError(f"--out {why}; refusing to overwrite an input, choose another path")
    show_progress = not args.quiet and sys.stderr.isatty()

    def progress(done: int, total: int) -> None:
        if show_progress:
            end = "\n" if done == total else ""
            print(f"\rscoring cases: {done}/{total}", end=end, file=sys.stderr, flush=True)

    result = evaluate_folders(
        pred_dir,
        args.ref,
        convention=conv,
        regions=regions,
        jobs=args.jobs,
        ignore_affine=args.ignore_affine,
        missing=args.missing,
        case_file=case_file,
        progress=progress,
    )
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    references = {r.case_id for r in result.rows if r.status != "no_reference"}
    if not references:
        raise CommandError(f"{args.ref}: no reference label maps found, nothing to score")
    if not any(r.scored for r in result.rows):
        raise CommandError(
            f"{args.pred}: no prediction matches a reference in {args.ref}, nothing to score"
        )
    path = write_csv(result.rows, args.out)
    _print_summary(result, regions, references)
    print(f"wrote {len(result.rows)} rows to {path}")
    return 1 if result.problem_cases else 0


#: Per-case statuses listed after the summary, with what they mean.
_STATUS_LINES = (
    ("missing_prediction", "missing predictions (scored as empty)"),
    ("not_predicted", "references without a prediction (not scored; --missing empty scores them)"),
    ("unreadable", "unreadable predictions (scored as empty)"),
    ("shape_mismatch", "shape mismatches (scored as empty)"),
    ("affine_mismatch", "affine mismatches (scored as empty)"),
    ("invalid_labels", "predictions with invalid labels (scored as empty)"),
    ("no_reference", "predictions without a reference (not scored)"),
    ("unreadable_reference", "unreadable references (not scored)"),
    ("error", "cases that failed (not scored)"),
)


def _print_summary(result, regions, references: set[str]) -> None:
    print(summary_table(summarise(result.rows, regions)))
    n_cases = len({r.case_id for r in result.rows})
    print(
        f"\n{len(references)} reference cases, {n_cases - len(references)} predictions without "
        f"reference; HD95 in mm (MONAI definition, BraTS empty-region rules)."
    )
    for status, text in _STATUS_LINES:
        cases = result.cases_with(status)
        if cases:
            shown = ", ".join(cases[:10]) + (
                f", ... ({len(cases) - 10} more)" if len(cases) > 10 else ""
            )
            print(f"{len(cases)} {text}: {shown}")
