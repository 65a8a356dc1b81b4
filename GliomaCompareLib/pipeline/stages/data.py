"""Stage ``data``: the cohort (a BraTS folder, or a synthetic cohort written into ``RUN/data``),
validated case by case; cases with problems are listed and left out."""

from __future__ import annotations

from pathlib import Path

from GliomaCompareLib.data import discover_cases
from GliomaCompareLib.data.synthetic import write_cohort
from GliomaCompareLib.fileio import atomic_write_json
from GliomaCompareLib.pipeline.cohort import COHORT_FILE, case_fingerprints
from GliomaCompareLib.pipeline.runner import Stage, StageContext

__all__ = ["DATA"]


def _data_dir(ctx: StageContext) -> Path:
    """The cohort folder, absolute and resolved: later stages (and re-runs started from another
    directory) find the cases through the path ``cohort.json`` stores."""
    data = ctx.config.data
    if data.synthetic is not None:
        return write_cohort(ctx.run_dir.resolve() / "data", data.synthetic, jobs=data.jobs)
    return Path(data.root).expanduser().resolve()


def run_data(ctx: StageContext) -> dict:
    data = ctx.config.data
    cohort = discover_cases(
        _data_dir(ctx), data.convention, validate=True, full=True, jobs=data.jobs
    )
    for warning in cohort.warnings:
        ctx.logger.warning("data: %s", warning)
    for case in cohort.cases:
        if not case.usable:
            ctx.logger.warning("data: %s left out: %s", case.case_id, "; ".join(case.problems))
    if not cohort.usable:
        raise ValueError(f"data: no usable case in {cohort.data_dir}")
    atomic_write_json(
        ctx.dir / COHORT_FILE,
        {
            "data_dir": str(cohort.data_dir),
            "convention": cohort.convention.name,
            "synthetic": data.synthetic is not None,
            "warnings": list(cohort.warnings),
            "cases": [c.to_dict() for c in cohort.cases],
            # later stages check the folder still holds this cohort (pipeline.cohort)
            "case_fingerprints": case_fingerprints(cohort),
        },
    )
    grades = [c.grade for c in cohort.usable]
    return {
        "data_dir": str(cohort.data_dir),
        "cases": len(cohort.cases),
        "usable": len(cohort.usable),
        "hgg": grades.count("HGG"),
        "lgg": grades.count("LGG"),
        "left_out": {c.case_id: list(c.problems) for c in cohort.cases if not c.usable},
    }


DATA = Stage("data", run_data, (), ("data",), description="find and validate cases")
