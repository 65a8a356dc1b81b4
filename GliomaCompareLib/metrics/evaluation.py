"""Scoring a folder of predicted label maps against reference label maps (``gliomacompare
evaluate``), the way BraTS scores a submission.

Matching: a prediction file's case id is its name without the image suffix (``.nii``,
``.nii.gz``, ``.seg.nrrd``, ...); a trailing ``_seg`` (the convention's label key) or any other
``_suffix`` after a known case id is accepted, so ``BraTS20_Training_001.nii.gz``,
``BraTS20_Training_001_seg.nii.gz`` and ``BraTS20_Training_001.seg.nrrd`` all match the reference
``BraTS20_Training_001_seg.nii.gz``. The reference folder is either a BraTS data folder (case
sub-folders, found by :func:`~GliomaCompareLib.data.discovery.discover_cases`, which knows the
odd label file name of case 355) or a flat folder of label maps.

Per case, one row per region. A problem with one case never stops the others; it is reported in
the row's ``status`` and ``note`` and scored as BraTS does (a missing prediction is an empty
prediction: Dice 0 and HD95 = image diagonal for a region present in the reference, Dice 1 and
HD95 0 for a region absent from both):

========================  ====================================================================
status                    meaning (how it is scored)
========================  ====================================================================
ok                        scored (the note may say it was re-indexed onto the reference grid)
missing_prediction        no prediction file for this reference (scored as empty, the BraTS
                          rule: ``missing="empty"``)
not_predicted             no prediction file for this reference (not scored:
                          ``missing="skip"``, the command line's default)
unreadable                the prediction file cannot be read (scored as empty)
shape_mismatch            prediction grid differs from the reference's (scored as empty)
affine_mismatch           same shape but a different voxel-to-mm mapping (scored as empty,
                          unless ``ignore_affine``)
invalid_labels            non-integer or negative label values (scored as empty)
no_reference              a prediction without a reference (not scored; metrics empty)
unreadable_reference      the reference cannot be read or is not a label map (not scored)
error                     an unexpected failure while scoring this case (not scored)
========================  ====================================================================

When the affines differ only by a re-ordering / flip of the voxel axes and a whole-voxel offset
(e.g. a Slicer ``.seg.nrrd`` saved in another orientation or cropped to the segment extent), the
prediction is placed exactly onto the reference grid and scored (status ``ok``, with a note).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from GliomaCompareLib import fileio
from GliomaCompareLib.data.conventions import REGIONS, Convention, load_convention
from GliomaCompareLib.data.discovery import discover_cases
from GliomaCompareLib.data.io import image_suffix, read_image, strip_image_suffix
from GliomaCompareLib.metrics.segmentation import bounding_box, score_label_maps

__all__ = [
    "CSV_COLUMNS",
    "MISSING_RULES",
    "NOT_SCORED",
    "SCORE_STATUSES",
    "CaseFiles",
    "EvaluationResult",
    "EvaluationRow",
    "evaluate_case",
    "evaluate_folders",
    "find_predictions",
    "find_references",
    "match_cases",
    "output_is_input",
    "summarise",
    "write_csv",
]

log = logging.getLogger(__name__)

#: Every per-row status (see the module docstring).
SCORE_STATUSES: tuple[str, ...] = (
    "ok",
    "missing_prediction",
    "not_predicted",
    "unreadable",
    "shape_mismatch",
    "affine_mismatch",
    "invalid_labels",
    "no_reference",
    "unreadable_reference",
    "error",
)
#: Statuses whose rows carry no scores (left out of summaries).
NOT_SCORED: tuple[str, ...] = ("not_predicted", "no_reference", "unreadable_reference", "error")
#: What ``missing`` may say about a reference without a prediction: score it as an empty
#: prediction (BraTS) or leave it out of the scores.
MISSING_RULES: tuple[str, ...] = ("skip", "empty")

_PRED_SUFFIXES = (".nii.gz", ".nii", ".seg.nrrd", ".nrrd")
_AFFINE_ATOL = 1e-3  # mm; NIfTI stores affines as float32


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case to score.

    Attributes:
        case_id: the case id.
        prediction: the predicted label map, or None when missing.
        reference: the reference label map, or None for a prediction without reference.
        notes: remarks from matching (e.g. duplicate prediction files).
    """

    case_id: str
    prediction: Path | None
    reference: Path | None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class EvaluationRow:
    """One CSV row: one region of one case. Distances in mm, volumes in mm^3; NaN = not scored."""

    case_id: str
    region: str
    dice: float
    hd95: float
    hd_max: float
    pred_voxels: int
    ref_voxels: int
    pred_volume_mm3: float
    ref_volume_mm3: float
    empty_rule: str
    status: str
    note: str
    prediction: str
    reference: str

    @property
    def scored(self) -> bool:
        return self.status not in NOT_SCORED


#: CSV header, in order.
CSV_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(EvaluationRow))


@dataclass(frozen=True)
class EvaluationResult:
    """All rows of an evaluation plus folder-level findings."""

    rows: tuple[EvaluationRow, ...]
    regions: tuple[str, ...]
    warnings: tuple[str, ...] = field(default=())

    def cases_with(self, status: str) -> list[str]:
        """Case ids with at least one row of ``status``."""
        return sorted({r.case_id for r in self.rows if r.status == status})

    @property
    def problem_cases(self) -> list[str]:
        """Cases with a problem (a prediction left out on purpose, ``not_predicted``, is not
        one)."""
        return sorted({r.case_id for r in self.rows if r.status not in ("ok", "not_predicted")})


# --------------------------------------------------------------------------- finding files


def _image_files(folder: Path, warnings: list[str] | None = None) -> list[Path]:
    """The label-map files directly in ``folder``; names that are not valid UTF-8 are left out
    with a warning (they cannot be written to the CSV, and one must not stop the others)."""
    found = [p for p in folder.iterdir() if p.is_file() and image_suffix(p) in _PRED_SUFFIXES]
    return sorted(_utf8_named(found, warnings))


def _utf8_named(paths, warnings: list[str] | None) -> list[Path]:
    kept = []
    for path in paths:
        try:
            path.name.encode("utf-8")
        except UnicodeEncodeError:
            shown = os.fsencode(path).decode("utf-8", "backslashreplace")
            if warnings is not None:
                warnings.append(f"{shown}: file name is not valid UTF-8; skipped (rename it)")
            continue
        kept.append(path)
    return kept


def _suffix_rank(path: Path, preferred: Sequence[str]) -> int:
    suffix = image_suffix(path)
    order = list(preferred) + [s for s in _PRED_SUFFIXES if s not in preferred]
    return order.index(suffix) if suffix in order else len(order)


def _pick(paths: list[Path], preferred: Sequence[str]) -> tuple[Path, tuple[str, ...]]:
    paths = sorted(paths, key=lambda p: (_suffix_rank(p, preferred), p.name))
    notes = ()
    if len(paths) > 1:
        others = ", ".join(p.name for p in paths[1:])
        notes = (f"several files for this case; used {paths[0].name}, ignored {others}",)
    return paths[0], notes


def find_references(
    ref_dir: str | Path, convention: str | Convention = "brats2020"
) -> tuple[dict[str, Path], list[str]]:
    """Reference label maps under ``ref_dir``: a BraTS data folder or a flat folder.

    Returns:
        (case id -> label map file, warnings).

    Raises:
        FileNotFoundError: when ``ref_dir`` does not exist.
    """
    conv = load_convention(convention)
    ref_dir = Path(ref_dir)
    if not ref_dir.is_dir():
        raise FileNotFoundError(f"{ref_dir}: reference folder not found")
    warnings: list[str] = []
    try:
        cohort = discover_cases(ref_dir, conv, validate=False)
    except FileNotFoundError:
        cohort = None
    if cohort is not None:
        refs = {}
        for record in cohort.cases:
            if record.label_path is None:
                warnings.append(f"{record.folder}: no label map, so {record.case_id} is not scored")
            else:
                refs[record.case_id] = Path(record.label_path)
        return refs, warnings
    # flat folder of label maps
    aliases = {
        alias: case_id for case_id, names in conv.label_file_aliases.items() for alias in names
    }
    modality_tails = tuple(f"_{key}" for key in conv.modality_keys.values())
    label_tail = f"_{conv.label_key}"
    found: dict[str, list[Path]] = {}
    for path in _image_files(ref_dir, warnings):
        stem = strip_image_suffix(path)
        if stem in aliases:
            case_id = aliases[stem]
        elif stem.endswith(label_tail):
            case_id = stem[: -len(label_tail)]
        elif stem.endswith(modality_tails):
            continue  # an image, not a label map
        else:
            case_id = stem
        found.setdefault(case_id, []).append(path)
    refs = {}
    for case_id, paths in sorted(found.items()):
        refs[case_id], notes = _pick(paths, conv.extensions)
        warnings += [f"{ref_dir}: {case_id}: {n}" for n in notes]
    return refs, warnings


def _case_id_for(stem: str, known: set[str], label_tail: str) -> str:
    if stem in known:
        return stem
    # the longest known id followed by "_" (e.g. "<id>_seg", "<id>_pred")
    candidates = [k for k in known if stem.startswith(k + "_")]
    if candidates:
        return max(candidates, key=len)
    return stem[: -len(label_tail)] if stem.endswith(label_tail) else stem


def find_predictions(
    pred_dir: str | Path,
    known_ids: set[str] | None = None,
    convention: str | Convention = "brats2020",
    *,
    case_file: str | None = None,
    warnings: list[str] | None = None,
) -> dict[str, list[Path]]:
    """Prediction files in ``pred_dir`` (not recursive), grouped by case id.

    Args:
        pred_dir: the folder.
        known_ids: reference case ids, used to recognise ``<id>_<anything>`` names.
        convention: for the label-file key (``_seg``).
        case_file: read ``pred_dir/<case_id>/<case_file>`` instead (a folder per case, as a
            run folder's ``cases/<case_id>/cnn.seg.nrrd``).
        warnings: where to add a warning for each file skipped (a name that is not UTF-8).

    Raises:
        FileNotFoundError: when ``pred_dir`` does not exist.
    """
    conv = load_convention(convention)
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"{pred_dir}: prediction folder not found")
    if case_file is not None:
        folders = _utf8_named(sorted(p for p in pred_dir.iterdir() if p.is_dir()), warnings)
        return {d.name: [d / case_file] for d in folders if (d / case_file).is_file()}
    known = set(known_ids or ())
    out: dict[str, list[Path]] = {}
    for path in _image_files(pred_dir, warnings):
        case_id = _case_id_for(strip_image_suffix(path), known, f"_{conv.label_key}")
        out.setdefault(case_id, []).append(path)
    return out


def match_cases(
    pred_dir: str | Path,
    ref_dir: str | Path,
    convention: str | Convention = "brats2020",
    *,
    case_file: str | None = None,
) -> tuple[list[CaseFiles], list[str]]:
    """Pair predictions with references by case id (``case_file``: see
    :func:`find_predictions`).

    Returns:
        (one :class:`CaseFiles` per reference, then one per prediction without reference,
        warnings).
    """
    conv = load_convention(convention)
    refs, warnings = find_references(ref_dir, conv)
    preds = find_predictions(pred_dir, set(refs), conv, case_file=case_file, warnings=warnings)
    if not preds:
        looked_for = f"*/{case_file}" if case_file else ".nii, .nii.gz, .seg.nrrd"
        warnings.append(f"{pred_dir}: no prediction files ({looked_for})")
    cases = []
    for case_id in sorted(refs):
        paths = preds.get(case_id)
        if paths:
            chosen, notes = _pick(paths, (*conv.extensions, ".seg.nrrd"))
            cases.append(CaseFiles(case_id, chosen, refs[case_id], notes))
        else:
            cases.append(CaseFiles(case_id, None, refs[case_id]))
    for case_id in sorted(set(preds) - set(refs)):
        chosen, notes = _pick(preds[case_id], (*conv.extensions, ".seg.nrrd"))
        cases.append(CaseFiles(case_id, chosen, None, notes))
    return cases, warnings


# --------------------------------------------------------------------------- one case


def _as_labels(array: np.ndarray) -> tuple[np.ndarray | None, str]:
    """An integer label map (uint8 when it fits), or (None, reason)."""
    array = np.asarray(array)
    if array.dtype.kind == "b":
        return array.astype(np.uint8), ""
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)):
            return None, "non-finite values"
        if np.any(array != np.round(array)):
            return None, "non-integer label values"
    elif array.dtype.kind not in "iu":
        return None, f"unsupported voxel type {array.dtype}"
    if array.dtype == np.uint8:
        return array, ""
    lo, hi = (array.min(), array.max()) if array.size else (0, 0)
    if lo < 0:
        return None, f"negative label value {lo:g}"
    if hi <= 255:
        return array.astype(np.uint8, copy=False), ""
    return array.astype(np.int64, copy=False), ""


def _unexpected_labels(label: np.ndarray, conv: Convention) -> list[int]:
    box = bounding_box(label)  # every non-zero label lies in it: count only there
    if box is None:
        return [] if 0 in conv.labels else [0]
    crop = label[box]
    if crop.dtype == np.uint8:  # order="K": no copy of a Fortran-ordered NIfTI array
        present = np.flatnonzero(np.bincount(crop.ravel(order="K"), minlength=256))
    else:
        present = np.unique(crop)
    return [int(v) for v in present if int(v) not in conv.labels]


def _onto_reference_grid(
    pred: np.ndarray, pred_affine: np.ndarray, ref_shape: tuple[int, ...], ref_affine: np.ndarray
) -> tuple[np.ndarray | None, str]:
    """Place ``pred`` onto the reference voxel grid when the two grids share their lattice.

    Returns:
        (array on the reference grid, note) or (None, reason). Exact: only axis permutations,
        flips and whole-voxel offsets are accepted, never interpolation.
    """
    transform = np.linalg.inv(ref_affine) @ pred_affine  # pred voxel -> ref voxel
    rot, shift = transform[:3, :3], transform[:3, 3]
    rot_r, shift_r = np.round(rot), np.round(shift)
    is_perm = (
        np.allclose(rot, rot_r, atol=1e-3)
        and np.all(np.abs(rot_r).sum(axis=0) == 1)
        and np.all(np.abs(rot_r).sum(axis=1) == 1)
    )
    if not is_perm or not np.allclose(shift, shift_r, atol=1e-3):
        return None, "voxel grids differ by more than an axis order / flip / whole-voxel shift"
    order = [int(np.argmax(np.abs(rot_r[a]))) for a in range(3)]  # ref axis a <- pred axis
    moved = np.transpose(pred, order)
    offsets = []
    for a, b in enumerate(order):
        if rot_r[a, b] < 0:
            moved = np.flip(moved, axis=a)
            offsets.append(int(shift_r[a]) - (pred.shape[b] - 1))
        else:
            offsets.append(int(shift_r[a]))
    out = np.zeros(ref_shape, dtype=pred.dtype)
    dst, src = [], []
    for a in range(3):
        lo = max(offsets[a], 0)
        hi = min(offsets[a] + moved.shape[a], ref_shape[a])
        if hi <= lo:
            return None, "the prediction lies entirely outside the reference image"
        dst.append(slice(lo, hi))
        src.append(slice(lo - offsets[a], hi - offsets[a]))
    out[tuple(dst)] = moved[tuple(src)]
    dropped = int(np.count_nonzero(moved)) - int(np.count_nonzero(out))
    notes = []
    if order != [0, 1, 2] or np.any(np.diag(rot_r) < 0):
        notes.append(f"voxel axes re-ordered/flipped onto the reference grid (axes {order})")
    if any(offsets) or moved.shape != tuple(ref_shape):
        notes.append(f"prediction grid shape {pred.shape} placed at voxel offset {offsets}")
    if dropped:
        notes.append(f"{dropped} labelled voxels outside the reference image were dropped")
    return out, "; ".join(notes)


def _rows(
    case: CaseFiles,
    regions: Sequence[str],
    status: str,
    note: str,
    scores=None,
) -> list[EvaluationRow]:
    rows = []
    for k, region in enumerate(regions):
        s = scores[k] if scores is not None else None
        nan = math.nan
        rows.append(
            EvaluationRow(
                case_id=case.case_id,
                region=region,
                dice=s.dice if s else nan,
                hd95=s.hd95 if s else nan,
                hd_max=s.hd_max if s else nan,
                pred_voxels=s.pred_voxels if s else -1,
                ref_voxels=s.ref_voxels if s else -1,
                pred_volume_mm3=s.pred_volume_mm3 if s else nan,
                ref_volume_mm3=s.ref_volume_mm3 if s else nan,
                empty_rule=s.empty if s else "",
                status=status,
                note=note,
                prediction=str(case.prediction or ""),
                reference=str(case.reference or ""),
            )
        )
    return rows


def evaluate_case(
    case: CaseFiles,
    convention: str | Convention = "brats2020",
    regions: Sequence[str] = REGIONS,
    *,
    ignore_affine: bool = False,
    missing: str = "empty",
) -> list[EvaluationRow]:
    """Score one case; never raises for a bad file (the rows say what went wrong).

    Args:
        case: the files.
        convention: label convention.
        regions: regions to score.
        ignore_affine: score same-shape predictions voxel by voxel even when their affine
            differs from the reference's (for predictions written with a wrong header).
        missing: without a prediction file, ``"empty"`` scores an empty prediction (BraTS,
            status ``missing_prediction``); ``"skip"`` scores nothing (``not_predicted``).

    Returns:
        One :class:`EvaluationRow` per region.
    """
    conv = load_convention(convention)
    notes = list(case.notes)
    try:
        if case.reference is None:
            return _rows(case, regions, "no_reference", "no reference label map for this case")
        if case.prediction is None and missing == "skip":
            note = "no prediction file; not scored (--missing empty scores it as empty)"
            return _rows(case, regions, "not_predicted", note)
        try:
            ref_raw, ref_meta = read_image(case.reference)
        except ValueError as exc:
            return _rows(case, regions, "unreadable_reference", str(exc))
        ref, why = _as_labels(ref_raw)
        if ref is None or ref.ndim != 3:
            why = why or f"not a 3D label map (shape {ref_raw.shape})"
            return _rows(case, regions, "unreadable_reference", f"{case.reference}: {why}")
        strange = _unexpected_labels(ref, conv)
        if strange:
            notes.append(f"reference has labels outside {conv.name}: {strange}")
        # NIfTI stores the affine in float32: 1.2 mm reads as 1.2000000477; drop that noise
        spacing = tuple(round(s, 6) for s in ref_meta.spacing)
        status = "ok"
        pred = None
        if case.prediction is None:
            status = "missing_prediction"
            notes.append("no prediction file; scored as an empty prediction")
        else:
            try:
                pred_raw, pred_meta = read_image(case.prediction)
            except ValueError as exc:
                status = "unreadable"
                notes.append(f"{exc}; scored as an empty prediction")
            else:
                pred, why = _as_labels(pred_raw)
                if pred is None:
                    status = "invalid_labels"
                    notes.append(f"{case.prediction}: {why}; scored as an empty prediction")
                elif pred.ndim != 3:
                    pred, status = None, "shape_mismatch"
                    notes.append(f"prediction is not 3D (shape {pred_raw.shape}); scored as empty")
                else:
                    pred, status = _check_grid(
                        pred, pred_meta.affine, ref.shape, ref_meta.affine, ignore_affine, notes
                    )
                if pred is not None:
                    strange = _unexpected_labels(pred, conv)
                    if strange:
                        notes.append(
                            f"prediction has labels outside {conv.name}: {strange} (in no region)"
                        )
        if pred is None:
            pred = np.zeros(ref.shape, dtype=np.uint8)
        scores = score_label_maps(pred, ref, spacing, conv, regions)
        return _rows(case, regions, status, "; ".join(notes), scores)
    except Exception as exc:  # one bad case never stops the run
        log.exception("evaluating %s failed", case.case_id)
        return _rows(case, regions, "error", f"{type(exc).__name__}: {exc}")


def _check_grid(pred, pred_affine, ref_shape, ref_affine, ignore_affine, notes):
    same_shape = pred.shape == tuple(ref_shape)
    if same_shape and (ignore_affine or np.allclose(pred_affine, ref_affine, atol=_AFFINE_ATOL)):
        if ignore_affine and not np.allclose(pred_affine, ref_affine, atol=_AFFINE_ATOL):
            notes.append("affine differs from the reference; scored voxel by voxel as asked")
        return pred, "ok"
    if same_shape or not np.allclose(pred_affine, ref_affine, atol=_AFFINE_ATOL):
        # a re-oriented / deliberately cropped grid whose header says where it lies
        placed, why = _onto_reference_grid(pred, pred_affine, tuple(ref_shape), ref_affine)
    else:
        # same header but another size: the header was not updated, so nothing says where
        # the prediction lies
        placed, why = None, "same affine, so the header does not say how the grids align"
    if placed is not None:
        if why:
            notes.append(why)
        return placed, "ok"
    if same_shape:
        diff = float(np.abs(pred_affine - ref_affine).max())
        notes.append(
            f"affine differs from the reference (largest difference {diff:.4g}): {why}; "
            "scored as an empty prediction (use --ignore-affine to score voxel by voxel)"
        )
        return None, "affine_mismatch"
    notes.append(
        f"prediction shape {pred.shape} differs from reference shape {tuple(ref_shape)} "
        f"({why}); scored as an empty prediction"
    )
    return None, "shape_mismatch"


# --------------------------------------------------------------------------- many cases


def _job(payload) -> list[EvaluationRow]:
    case, convention_source, regions, ignore_affine, missing = payload
    return evaluate_case(
        case, convention_source, regions, ignore_affine=ignore_affine, missing=missing
    )


def evaluate_folders(
    pred_dir: str | Path,
    ref_dir: str | Path,
    *,
    convention: str | Convention = "brats2020",
    regions: Sequence[str] = REGIONS,
    jobs: int = 1,
    ignore_affine: bool = False,
    missing: str = "empty",
    case_file: str | None = None,
    progress=None,
) -> EvaluationResult:
    """Score every reference case under ``ref_dir`` against ``pred_dir``.

    Args:
        pred_dir: folder of predicted label maps.
        ref_dir: BraTS data folder or flat folder of reference label maps.
        convention: label convention.
        regions: regions to score, in output order.
        jobs: worker processes (cases are scored in parallel).
        ignore_affine: see :func:`evaluate_case`.
        missing: a reference without a prediction: ``"empty"`` (scored as an empty
            prediction, BraTS) or ``"skip"`` (not scored); see :func:`evaluate_case`.
        case_file: predictions as ``pred_dir/<case_id>/<case_file>``
            (see :func:`find_predictions`).
        progress: optional callable ``(done, total)``.

    Returns:
        An :class:`EvaluationResult` with rows ordered by case id then region (predictions
        without reference last).

    Raises:
        FileNotFoundError: when a folder is missing.
        ValueError: when a region is not defined by the convention.
    """
    conv = load_convention(convention)
    unknown = [r for r in regions if r not in conv.regions]
    if unknown:
        raise ValueError(f"regions {unknown} are not defined by {conv.name}")
    if missing not in MISSING_RULES:
        raise ValueError(f"missing={missing!r}: use one of {', '.join(MISSING_RULES)}")
    cases, warnings = match_cases(pred_dir, ref_dir, conv, case_file=case_file)
    source = conv.source or conv.name
    payloads = [(c, source, tuple(regions), ignore_affine, missing) for c in cases]
    results: list[list[EvaluationRow]] = []
    if jobs > 1 and len(payloads) > 1:
        results = _run_parallel(payloads, jobs, progress)
    else:
        for i, payload in enumerate(payloads):
            results.append(_job(payload))
            if progress:
                progress(i + 1, len(payloads))
    rows = tuple(r for case_rows in results for r in case_rows)
    return EvaluationResult(rows, tuple(regions), tuple(warnings))


def _run_parallel(payloads, jobs, progress) -> list[list[EvaluationRow]]:
    results: list[list[EvaluationRow] | None] = [None] * len(payloads)
    done = 0
    try:
        with ProcessPoolExecutor(max_workers=min(jobs, len(payloads))) as pool:
            futures = {pool.submit(_job, p): i for i, p in enumerate(payloads)}
            for future in as_completed(futures):
                i = futures[future]
                try:
                    results[i] = future.result()
                except BrokenProcessPool:
                    raise
                except Exception as exc:  # a worker-side failure outside evaluate_case
                    case = payloads[i][0]
                    results[i] = _rows(
                        case, payloads[i][2], "error", f"{type(exc).__name__}: {exc}"
                    )
                done += 1
                if progress:
                    progress(done, len(payloads))
    except BrokenProcessPool:
        # a worker died (e.g. killed for memory): finish the rest here, one by one
        log.warning("a worker process died; scoring the remaining cases in this process")
        for i, payload in enumerate(payloads):
            if results[i] is None:
                results[i] = _job(payload)
                done += 1
                if progress:
                    progress(done, len(payloads))
    return [r for r in results if r is not None]


# --------------------------------------------------------------------------- output


def summarise(rows: Sequence[EvaluationRow], regions: Sequence[str] | None = None) -> dict:
    """Mean, median and sample sd (ddof 1) of Dice and HD95 per region over scored rows.

    Rows scored as empty predictions (missing, unreadable, mismatched) are included, as BraTS
    includes them; rows that were not scored (:data:`NOT_SCORED`) are not.

    Returns:
        ``{region: {"n": int, "dice": {"mean", "median", "std"}, "hd95": {...}}}``.
    """
    regions = list(regions or dict.fromkeys(r.region for r in rows))
    out = {}
    for region in regions:
        chosen = [r for r in rows if r.region == region and r.scored]
        entry: dict = {"n": len(chosen)}
        for metric in ("dice", "hd95"):
            values = np.array([getattr(r, metric) for r in chosen], dtype=float)
            if values.size == 0:
                entry[metric] = {"mean": math.nan, "median": math.nan, "std": math.nan}
                continue
            entry[metric] = {
                "mean": float(values.mean()),
                "median": float(np.median(values)),
                "std": float(values.std(ddof=1)) if values.size > 1 else math.nan,
            }
        out[region] = entry
    return out


#: Significant digits of the float cells: enough that Dice and distances read back to 1e-9.
FLOAT_DIGITS = 10


def output_is_input(
    out: str | Path, pred_dir: str | Path, ref_dir: str | Path, cases: Sequence[CaseFiles] = ()
) -> str | None:
    """Why writing ``out`` would destroy an input (None when it would not): it is one of the
    ``cases``' files, or a label map inside ``pred_dir`` / ``ref_dir`` (a file ``evaluate``
    reads, or would read next time)."""
    target = Path(out).resolve()
    inputs = {Path(p).resolve() for c in cases for p in (c.prediction, c.reference) if p}
    if target in inputs:
        return f"{out} is one of the label maps being scored"
    for name, folder in (("--pred", pred_dir), ("--ref", ref_dir)):
        inside = target.is_relative_to(Path(folder).resolve())
        if inside and (image_suffix(target) in _PRED_SUFFIXES or target.is_dir()):
            return f"{out} is inside {name} {folder}, where it would be read as a label map"
    return None


def write_csv(rows: Sequence[EvaluationRow], path: str | Path) -> Path:
    """Write the rows as CSV (header :data:`CSV_COLUMNS`), atomically, with the package's one CSV
    writer (:func:`GliomaCompareLib.fileio.write_csv`) at :data:`FLOAT_DIGITS` significant digits.

    Unscored values are empty cells; ``pred_voxels``/``ref_voxels`` are -1 when not scored.
    """
    return fileio.write_csv(path, CSV_COLUMNS, [asdict(row) for row in rows], digits=FLOAT_DIGITS)
