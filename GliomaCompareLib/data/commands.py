"""``gliomacompare synth`` and ``gliomacompare inspect``."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from GliomaCompareLib.argtypes import add_quiet_option
from GliomaCompareLib.data.discovery import discover_cases
from GliomaCompareLib.data.synthetic import DATA_DIR_NAME, SynthConfig, write_cohort

__all__ = ["register"]


def _shape(text: str) -> tuple[int, int, int]:
    try:
        values = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {text!r}: expected X,Y,Z e.g. 96,96,64") from None
    if len(values) != 3 or min(values) < 16:
        raise argparse.ArgumentTypeError(f"shape {text!r}: expected three sizes >= 16")
    return values  # type: ignore[return-value]


def register(sub) -> None:
    p = sub.add_parser(
        "synth",
        help="write a synthetic cohort in BraTS 2020 layout",
        description=(
            "Write a synthetic cohort (MNI152 anatomy from nilearn, simulated gliomas) in BraTS "
            "2020 layout with name_mapping.csv. Deterministic for a seed."
        ),
    )
    p.add_argument("out", help="output folder (MICCAI_BraTS2020_TrainingData is created in it)")
    p.add_argument("--cases", type=int, default=10, help="number of cases (default 10)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--hgg-fraction", type=float, default=0.8, help="HGG share (default 0.8)")
    p.add_argument(
        "--shape",
        type=_shape,
        default=(240, 240, 155),
        help="volume shape X,Y,Z (default 240,240,155 at 1 mm; smaller shapes keep the field "
        "of view, so voxels grow)",
    )
    p.add_argument("--ext", choices=[".nii.gz", ".nii"], default=".nii.gz")
    p.add_argument("--jobs", type=int, default=1, help="processes (default 1)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a synthetic cohort already in OUT (made by this tool, e.g. with other "
        "settings); without it an unfinished cohort with the same settings is resumed",
    )
    add_quiet_option(p, "no line per finished case")
    p.set_defaults(func=_synth)

    p = sub.add_parser(
        "inspect",
        help="list cases, grades and problems",
        description="List the cases under DATA with grade, shape, spacing and every problem.",
    )
    p.add_argument("data", help="BraTS data folder (or a folder up to two levels above it)")
    p.add_argument("--convention", default="brats2020", help="label convention (default brats2020)")
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per case")
    p.add_argument("--quick", action="store_true", help="read headers only (no voxel checks)")
    p.add_argument("--jobs", type=int, default=1, help="processes for validation (default 1)")
    add_quiet_option(p, "no cohort warnings on stderr (problems stay in the table / JSON)")
    p.set_defaults(func=_inspect)


def _synth(args) -> int:
    if args.overwrite:
        _remove_synthetic_cohort(Path(args.out) / DATA_DIR_NAME)
    config = SynthConfig(
        cases=args.cases,
        seed=args.seed,
        hgg_fraction=args.hgg_fraction,
        shape=tuple(args.shape),
        ext=args.ext,
    )
    data_dir = write_cohort(args.out, config, jobs=args.jobs, progress=not args.quiet)
    print(f"wrote {args.cases} synthetic cases to {data_dir}")
    return 0


def _remove_synthetic_cohort(data_dir: Path) -> None:
    """Delete ``data_dir`` for ``synth --overwrite``, only when this tool made it (it holds
    ``synthetic.json``): a folder of real cases is never deleted.

    Raises:
        ValueError: when ``data_dir`` holds something else.
    """
    if not data_dir.exists():
        return
    if not (data_dir / "synthetic.json").is_file():
        raise ValueError(
            f"{data_dir}: not a synthetic cohort made by this tool (no synthetic.json); "
            "--overwrite deletes only those, choose another output folder"
        )
    shutil.rmtree(data_dir)


def _inspect(args) -> int:
    cohort = discover_cases(
        args.data, args.convention, validate=True, full=not args.quick, jobs=args.jobs
    )
    for warning in () if args.quiet else cohort.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.json:
        json.dump([c.to_dict() for c in cohort.cases], sys.stdout, indent=2)
        print()
    else:
        print(_table(cohort))
    return 0 if cohort.usable else 1


def _table(cohort) -> str:
    rows = [("case", "grade", "shape", "spacing (mm)", "usable", "problems / warnings")]
    for c in cohort.cases:
        shape = "x".join(str(s) for s in c.shape) if c.shape else "-"
        spacing = "x".join(f"{s:g}" for s in c.spacing) if c.spacing else "-"
        notes = list(c.problems) + [f"(warning) {w}" for w in c.warnings]
        rows.append(
            (
                c.case_id,
                c.grade or "?",
                shape,
                spacing,
                "yes" if c.usable else "NO",
                notes[0] if notes else "",
            )
        )
        rows += [("", "", "", "", "", n) for n in notes[1:]]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(r[i].ljust(widths[i]) for i in range(5)) + "  " + r[5] for r in rows]
    usable = len(cohort.usable)
    hgg = sum(c.grade == "HGG" for c in cohort.usable)
    lgg = sum(c.grade == "LGG" for c in cohort.usable)
    lines.append(
        f"\n{len(cohort.cases)} cases in {cohort.data_dir} ({cohort.convention.name}): "
        f"{usable} usable ({hgg} HGG, {lgg} LGG, {usable - hgg - lgg} grade unknown), "
        f"{len(cohort.cases) - usable} with problems"
    )
    return "\n".join(lines)
