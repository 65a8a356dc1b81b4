"""Finding BraTS cases on disk and reading their grades.

A cohort folder looks like (BraTS 2020; other releases through their convention file)::

    MICCAI_BraTS2020_TrainingData/
        name_mapping.csv                       (optional: Grade per BraTS_2020_subject_ID)
        BraTS20_Training_001/
            BraTS20_Training_001_flair.nii.gz  (or .nii)
            BraTS20_Training_001_t1.nii.gz
            BraTS20_Training_001_t1ce.nii.gz
            BraTS20_Training_001_t2.nii.gz
            BraTS20_Training_001_seg.nii.gz    (case 355: W39_1998.09.19_Segm.nii)

``root`` may be that folder or any folder up to two levels above it.

A case folder that is a symbolic link looping back on itself (or pointing nowhere) is listed as a
case with that problem, not dropped; a case holding two copies of one image (``.nii`` and
``.nii.gz``) says which one is used, as a warning.
"""

from __future__ import annotations

import csv
import errno
import os
from pathlib import Path

from GliomaCompareLib.data.conventions import Convention, load_convention
from GliomaCompareLib.data.records import CaseRecord, Cohort
from GliomaCompareLib.data.validation import validate_records

__all__ = ["CaseRecord", "Cohort", "discover_cases", "find_case_folders", "read_name_mapping"]


def find_case_folders(root: Path, convention: Convention, max_depth: int = 2) -> list[Path]:
    """Case folders matching the convention at ``root`` or up to ``max_depth`` levels below."""
    level = [root]
    for _ in range(max_depth + 1):
        found = sorted(p for d in level for p in d.glob(convention.case_dir_glob) if p.is_dir())
        if found:
            return found
        level = sorted(p for d in level for p in d.iterdir() if p.is_dir())
    return []


def read_name_mapping(
    path: Path, convention: Convention
) -> tuple[dict[str, str | None], list[str]]:
    """Read grades from ``name_mapping.csv``.

    Returns:
        (case id -> "HGG" / "LGG" / None, warnings). A grade value the convention does not know
        gives None and a warning naming the row.

    Raises:
        ValueError: naming the file when it lacks the id or grade column.
    """
    grades: dict[str, str | None] = {}
    warnings: list[str] = []
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        for column in (convention.id_column, convention.grade_column):
            if column not in columns:
                raise ValueError(f"{path}: no column {column!r} (columns: {', '.join(columns)})")
        for row_number, row in enumerate(reader, start=2):
            case_id = (row.get(convention.id_column) or "").strip()
            raw = (row.get(convention.grade_column) or "").strip()
            if not case_id:
                continue
            grade = convention.grade_values.get(raw)
            if grade is None:
                warnings.append(f"{path}:{row_number}: unknown grade {raw!r} for {case_id}")
            grades[case_id] = grade
    return grades, warnings


def _find_file(
    folder: Path, stems: list[str], convention: Convention, warnings: list[str]
) -> Path | None:
    """The first of ``stems`` x ``extensions`` that is a file; a warning in ``warnings`` names
    the other copies when there are several (BraTS 2020 ships case 355's label twice)."""
    found = [
        folder / f"{stem}{ext}"
        for stem in stems
        for ext in convention.extensions
        if (folder / f"{stem}{ext}").is_file()
    ]
    if len(found) > 1:
        others = ", ".join(p.name for p in found[1:])
        warnings.append(
            f"{folder}: two copies of one image ({found[0].name} and {others}); "
            f"using {found[0].name}"
        )
    return found[0] if found else None


def _broken_links(data_dir: Path, convention: Convention) -> list[Path]:
    """Entries named like case folders that are symbolic links no path resolves (a loop, or a
    target that is gone): ``is_dir()`` is False for them, so they would vanish silently."""
    return sorted(
        p for p in data_dir.glob(convention.case_dir_glob) if p.is_symlink() and not p.exists()
    )


def _unreadable_record(link: Path, grade: str | None, convention: Convention) -> CaseRecord:
    try:
        os.stat(link)
        reason = "cannot be read"
    except OSError as exc:
        reason = "loops back on itself" if exc.errno == errno.ELOOP else "points nowhere"
    return CaseRecord(
        case_id=link.name,
        folder=link,
        grade=grade,
        modality_paths=dict.fromkeys(convention.channels),
        label_path=None,
        problems=(f"{link}: the case folder is a symbolic link that {reason}; left out",),
    )


def _record_for(folder: Path, grade: str | None, convention: Convention) -> CaseRecord:
    case_id = folder.name
    problems: list[str] = []
    warnings: list[str] = []
    paths: dict[str, Path | None] = {}
    for channel in convention.channels:
        key = convention.modality_keys[channel]
        stem = convention.file_stem(case_id, key)
        path = _find_file(folder, [stem], convention, warnings)
        if path is None:
            expected = " or ".join(f"{stem}{e}" for e in convention.extensions)
            problems.append(f"{folder / stem}: missing {channel} image (expected {expected})")
        paths[channel] = path
    label_stems = [convention.file_stem(case_id, convention.label_key)]
    label_stems += list(convention.label_file_aliases.get(case_id, ()))
    label_path = _find_file(folder, label_stems, convention, warnings)
    if label_path is None:
        warnings.append(f"{folder}: no label map ({label_stems[0]}.nii[.gz]); inference only")
    return CaseRecord(
        case_id=case_id,
        folder=folder,
        grade=grade,
        modality_paths=paths,
        label_path=label_path,
        problems=tuple(problems),
        warnings=tuple(warnings),
    )


def discover_cases(
    root: str | Path,
    convention: str | Convention = "brats2020",
    *,
    validate: bool = True,
    full: bool = True,
    jobs: int = 1,
) -> Cohort:
    """Find every case under ``root``, read grades, and (optionally) validate each case.

    Args:
        root: the data folder or a folder up to two levels above it.
        convention: convention name or object.
        validate: run :func:`~GliomaCompareLib.data.validation.validate_record` on each case.
        full: with ``validate``, also read every voxel (finite values, label values,
            truncated files); without it only headers are read.
        jobs: processes used for validation.

    Raises:
        FileNotFoundError: when ``root`` does not exist or holds no case folders.
    """
    conv = load_convention(convention)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: data folder not found")
    folders = find_case_folders(root, conv)
    if not folders:
        raise FileNotFoundError(
            f"{root}: no case folders matching {conv.case_dir_glob!r} "
            f"(convention {conv.name}) at this level or two levels below"
        )
    data_dir = folders[0].parent
    cohort_warnings: list[str] = []
    mapping_path = data_dir / conv.name_mapping_file
    grades: dict[str, str | None] = {}
    if mapping_path.is_file():
        grades, found = read_name_mapping(mapping_path, conv)
        cohort_warnings += found
    else:
        cohort_warnings.append(f"{mapping_path}: not found; grades are unknown")
    records = []
    for folder in folders:
        grade = grades.get(folder.name)
        record = _record_for(folder, grade, conv)
        if mapping_path.is_file() and folder.name not in grades:
            record = record.with_findings(
                warnings=[f"{mapping_path}: no row for {folder.name}; grade unknown"]
            )
        records.append(record)
    broken = _broken_links(data_dir, conv)
    records += [_unreadable_record(link, grades.get(link.name), conv) for link in broken]
    records.sort(key=lambda r: r.folder)
    names = {f.name for f in (*folders, *broken)}
    for case_id in sorted(set(grades) - names):
        cohort_warnings.append(f"{mapping_path}: lists {case_id}, which has no case folder")
    if validate:
        records = validate_records(records, conv, full=full, jobs=jobs)
    return Cohort(root, data_dir, conv, tuple(records), tuple(cohort_warnings))
