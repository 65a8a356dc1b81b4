"""What the first stages left in a run folder, read back by the later ones: the validated cohort,
the patient split, and the usable test patients.

``cohort.json`` also holds a fingerprint of the data folder per case (its grade and its files'
names, sizes and modification times, as the CNN's preprocessing cache keys them): when a later
stage reads the cohort back and the folder no longer matches (cases added or removed, an image
replaced, a grade changed), :func:`load_cohort` refuses with :class:`CohortChangedError`, naming
the folder, the cases and ``--force data``, instead of scoring against another cohort.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

from GliomaCompareLib.data import CaseRecord, Cohort, discover_cases
from GliomaCompareLib.data.splits import Splits
from GliomaCompareLib.runlayout import SPLITS_FILE

__all__ = [
    "COHORT_FILE",
    "CohortChangedError",
    "case_fingerprints",
    "load_cohort",
    "load_splits",
    "usable_test_ids",
]

#: The ``data`` stage's record of the cohort, in its stage folder.
COHORT_FILE = "cohort.json"


class CohortChangedError(ValueError):
    """The data folder no longer holds the cohort the ``data`` stage recorded."""


def _case_fingerprint(case: CaseRecord) -> str:
    parts = [case.case_id, str(case.grade)]
    for path in [*case.modality_paths.values(), case.label_path]:
        if path is None:
            parts.append("-")
            continue
        try:
            stat = Path(path).stat()
        except OSError as exc:
            parts.append(f"{Path(path).name}:{exc.strerror}")
            continue
        parts.append(f"{Path(path).name}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def case_fingerprints(cohort: Cohort) -> dict[str, str]:
    """Case id -> a hash of its grade and its files' names, sizes and modification times."""
    return {case.case_id: _case_fingerprint(case) for case in cohort.cases}


def _check_unchanged(cohort: Cohort, recorded: dict[str, str], record: Path) -> None:
    now = case_fingerprints(cohort)
    if now == recorded:
        return
    added = sorted(set(now) - set(recorded))
    removed = sorted(set(recorded) - set(now))
    changed = sorted(c for c in set(now) & set(recorded) if now[c] != recorded[c])
    what = [
        f"{label} {', '.join(ids[:5])}{' ...' if len(ids) > 5 else ''}"
        for label, ids in (("added:", added), ("removed:", removed), ("changed:", changed))
        if ids
    ]
    run_dir = record.parent.parent.parent
    raise CohortChangedError(
        f"{cohort.data_dir}: the data folder changed since the data stage recorded it in "
        f"{record} ({'; '.join(what)}); the results would mix two cohorts. Redo the cohort and "
        f"everything after it: gliomacompare run CONFIG --out {run_dir} --force data"
    )


def load_cohort(run_dir: Path) -> Cohort:
    """The cohort the ``data`` stage validated (headers re-read; voxel findings kept).

    Raises:
        CohortChangedError: the data folder's cases or files differ from what ``cohort.json``
            recorded (see module docstring).
    """
    record = Path(run_dir) / "stages" / "data" / COHORT_FILE
    info = json.loads(record.read_text())
    cohort = discover_cases(info["data_dir"], info["convention"], validate=True, full=False)
    if isinstance(info.get("case_fingerprints"), dict):  # absent in runs before issue 17
        _check_unchanged(cohort, info["case_fingerprints"], record)
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
