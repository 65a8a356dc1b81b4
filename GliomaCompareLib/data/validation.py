"""Validation of a case's files: every problem is found, named (file + reason) and kept.

A case with problems is reported and skipped by the rest of the pipeline; other cases go on.
Checks: every modality present and readable, 3D, same shape and affine (within ``atol`` mm),
finite values, a non-empty image, and label values allowed by the convention.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from GliomaCompareLib.data.conventions import Convention
from GliomaCompareLib.data.io import ImageMeta, ImageReadError, read_header, read_image
from GliomaCompareLib.data.records import CaseRecord

__all__ = ["AFFINE_ATOL_MM", "validate_record", "validate_records"]

#: Largest difference (mm, per affine entry) between two files of one case that still counts as
#: "the same geometry".
AFFINE_ATOL_MM = 1e-3


def _check_geometry(path, meta: ImageMeta, ref: ImageMeta | None, atol: float) -> list[str]:
    problems = []
    if len(meta.shape) != 3:
        kind = f"{len(meta.shape)}D"
        problems.append(f"{path}: is {kind} (shape {meta.shape}); expected a 3D volume")
        return problems
    if ref is None:
        return problems
    if meta.shape != ref.shape:
        problems.append(f"{path}: shape {meta.shape} differs from {ref.shape} of {ref.path}")
    diff = float(np.abs(meta.affine - ref.affine).max())
    if diff > atol:
        problems.append(
            f"{path}: affine differs from {ref.path} by up to {diff:.4g} mm (tolerance {atol})"
        )
    return problems


def _check_voxels(path, array: np.ndarray, is_label: bool, conv: Convention) -> list[str]:
    if not is_label:
        if np.issubdtype(array.dtype, np.floating):
            finite = np.isfinite(array)
            if not finite.all():
                bad = int(array.size - np.count_nonzero(finite))
                return [f"{path}: {bad} voxels are NaN or infinite"]
        if not np.any(array):
            return [f"{path}: image is empty (all voxels are 0)"]
        return []
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            return [f"{path}: label map has NaN or infinite voxels"]
        if not np.array_equal(array, np.round(array)):
            return [f"{path}: label map has non-integer values"]
    values = np.unique(array).astype(np.int64)
    unknown = sorted(set(values.tolist()) - set(conv.allowed_labels))
    if unknown:
        allowed = ", ".join(str(v) for v in conv.allowed_labels)
        return [
            f"{path}: label values {unknown} are not allowed by convention {conv.name} "
            f"(allowed: {allowed})"
        ]
    return []


def validate_record(
    record: CaseRecord, conv: Convention, *, full: bool = True, atol: float = AFFINE_ATOL_MM
) -> CaseRecord:
    """Return ``record`` with every problem found added, and its shape / spacing filled in.

    Args:
        record: from :func:`~GliomaCompareLib.data.discovery.discover_cases`.
        conv: the convention the case follows.
        full: read the voxels too (finite values, label values, truncated files).
        atol: affine tolerance in mm.
    """
    problems: list[str] = []
    ref: ImageMeta | None = None
    files = [(p, False) for p in record.modality_paths.values() if p is not None]
    if record.label_path is not None:
        files.append((record.label_path, True))
    for path, is_label in files:
        try:
            meta = read_header(path)
        except ImageReadError as exc:
            problems.append(str(exc))
            continue
        found = _check_geometry(path, meta, ref, atol)
        problems += found
        if ref is None and len(meta.shape) == 3:
            ref = meta
        if not full or found:
            continue
        try:
            array, _ = read_image(path)
        except ImageReadError as exc:
            problems.append(str(exc))
            continue
        problems += _check_voxels(path, array, is_label, conv)
    shape = ref.shape if ref is not None else None
    spacing = ref.spacing if ref is not None else None
    return record.with_findings(problems=problems, shape=shape, spacing=spacing)


def _validate_one(args):
    record, conv, full, atol = args
    return validate_record(record, conv, full=full, atol=atol)


def validate_records(
    records: Sequence[CaseRecord],
    conv: Convention,
    *,
    full: bool = True,
    jobs: int = 1,
    atol: float = AFFINE_ATOL_MM,
) -> list[CaseRecord]:
    """Validate many records, in ``jobs`` processes; order is kept."""
    work = [(r, conv, full, atol) for r in records]
    if jobs <= 1 or len(records) < 2:
        return [_validate_one(w) for w in work]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(_validate_one, work))
