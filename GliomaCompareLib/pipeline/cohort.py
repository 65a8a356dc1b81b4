"""What the first stages left in a run folder, read back by the later ones: the validated cohort,
the patient split, and the usable test patients."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from GliomaCompareLib.data import Cohort, discover_cases
from GliomaCompareLib.data.splits import Splits
from GliomaCompareLib.runlayout import SPLITS_FILE

__all__ = ["COHORT_FILE", "load_cohort", "load_splits", "usable_test_ids"]

#: The ``data`` stage's record of the cohort, in its stage folder.
COHORT_FILE = "cohort.json"


def load_cohort(run_dir: Path) -> Cohort:
    """The cohort the ``data`` stage validated (headers re-read; voxel findings kept)."""
    info = json.loads((Path(run_dir) / "stages" / "data" / COHORT_FILE).read_text())
    cohort = discover_cases(info["data_dir"], info["convention"], validate=True, full=False)
    problems = {c["case_id"]: c["problems"] for c in info["cases"]}
    cases = tuple(
        c.with_findings(problems=[p for p in problems.get(c.case_id, []) if p not in c.problems])
        for c in cohort.cases
    )
    return replace(cohort, cases=cases)


def load_splits(run_dir: Path) -> Splits:
    """The patient split the ``split`` stage wrote."""
    return Splits.load(Path(run_dir) / SPLITS_FILE)


def usable_test_ids(run_dir: Path, cohort: Cohort | None = None) -> list[str]:
    """The test patients that are usable cases of the cohort, in the split's order."""
    cohort = cohort or load_cohort(run_dir)
    usable = {c.case_id for c in cohort.usable}
    return [c for c in load_splits(run_dir).ids("test") if c in usable]
