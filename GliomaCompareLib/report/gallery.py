"""The per-case gallery file (``cases/<case_id>/gallery.npz``) and the worst / best case picks.

The comparison run writes one gallery file per case with :func:`write_gallery`; the report reads
it back with :func:`read_gallery` and draws the case's representative axial slice with every
method's answer on it. The format belongs to this module:

* arrays ``flair`` uint8 ``(H, W)`` (the slice exactly as the VLM saw it, radiological
  orientation), ``gt`` bool ``(H, W)`` (whole tumour on that slice), optional ``cnn`` bool
  ``(H, W)`` (the CNN's whole tumour on that slice), ``slice_index`` int (axial index in the
  volume), ``pixel_spacing`` float ``(2,)`` (mm per column, mm per row);
* ``meta``: a JSON string with ``format`` (:data:`GALLERY_FORMAT`), ``case_id``, ``grade``
  (true grade, ``"HGG"`` / ``"LGG"`` / null), ``answers`` (method -> task -> ``{"status",
  "geometry"}``, geometry as :meth:`Point.to_dict` / :meth:`Box.to_dict` /
  :meth:`Polygon.to_dict` in pixel coordinates ``(x, y) = (col, row)`` of that image, or null),
  ``predictions`` (method -> ``{"grade", "p_hgg", "model"}``) and ``models`` (method -> what
  produced it).

No object arrays are stored, so files load with ``allow_pickle=False``. Files are written
atomically (temporary file, then rename).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from GliomaCompareLib.fileio import atomic_write
from GliomaCompareLib.geometry import Box, Geometry, Point, Polygon

__all__ = [
    "GALLERY_FORMAT",
    "GALLERY_TASKS",
    "CaseGallery",
    "GalleryAnswer",
    "GalleryPick",
    "GradePrediction",
    "geometry_from_dict",
    "read_gallery",
    "representative_slice",
    "select_gallery_cases",
    "write_gallery",
]

#: Version of the gallery file format written by :func:`write_gallery`.
GALLERY_FORMAT = 1
#: The VLM localisation tasks a gallery can hold, in drawing order.
GALLERY_TASKS = ("point", "box", "polygon")


@dataclass(frozen=True)
class GalleryAnswer:
    """One VLM answer on the gallery slice.

    Attributes:
        status: the parse status (``ok``, ``repaired``, ``pattern``, ``invalid``, ...).
        geometry: the parsed geometry in pixel coordinates of the gallery image, or None when
            the answer gave none (a failed answer).
    """

    status: str
    geometry: Geometry | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": str(self.status),
            "geometry": None if self.geometry is None else self.geometry.to_dict(),
        }


@dataclass(frozen=True)
class GradePrediction:
    """A method's patient-level grade for the case.

    Attributes:
        grade: ``"HGG"``, ``"LGG"``, or None / any other text for no valid answer.
        p_hgg: P(HGG) in [0, 1] (the CNN's probability, the VLM's HGG vote share), or None.
        model: what produced it (``"tiny random-weight model"`` for the tiny VLM).
    """

    grade: str | None
    p_hgg: float | None = None
    model: str | None = None

    def to_dict(self) -> dict[str, Any]:
        p = None if self.p_hgg is None or not math.isfinite(self.p_hgg) else float(self.p_hgg)
        return {"grade": self.grade, "p_hgg": p, "model": self.model}


@dataclass(frozen=True, eq=False)
class CaseGallery:
    """A case's representative axial slice with the ground truth and every method's answers.

    Attributes:
        case_id: the case.
        grade: its true grade (``"HGG"`` / ``"LGG"``) or None.
        slice_index: axial index of the slice in the case's volume.
        flair: uint8 ``(H, W)``, the slice as the VLM saw it (radiological orientation).
        gt: bool ``(H, W)``, the whole tumour on the slice.
        cnn: bool ``(H, W)``, the CNN's whole tumour on the slice, or None (CNN not run).
        pixel_spacing: ``(mm per column, mm per row)``.
        answers: method (``vlm_base`` / ``vlm_finetuned`` / ``vlm_base-<name>``...) -> task (``point`` / ``box`` /
            ``polygon``) -> :class:`GalleryAnswer`.
        predictions: method (``cnn`` / ``vlm_base`` / ``vlm_finetuned``) ->
            :class:`GradePrediction`.
        models: method -> what produced its outputs (the tables' ``model`` column).

    Raises:
        ValueError: for arrays of the wrong shape or type, naming the case.
    """

    case_id: str
    grade: str | None
    slice_index: int
    flair: np.ndarray
    gt: np.ndarray
    cnn: np.ndarray | None = None
    pixel_spacing: tuple[float, float] = (1.0, 1.0)
    answers: Mapping[str, Mapping[str, GalleryAnswer]] = field(default_factory=dict)
    predictions: Mapping[str, GradePrediction] = field(default_factory=dict)
    models: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self):
        where = f"gallery of case {self.case_id!r}"
        flair = np.asarray(self.flair)
        if flair.ndim != 2 or min(flair.shape) < 1:
            raise ValueError(f"{where}: flair must be a 2D (H, W) image, got shape {flair.shape}")
        if flair.dtype != np.uint8:
            raise ValueError(f"{where}: flair must be uint8 (as the VLM saw it), got {flair.dtype}")
        for name in ("gt", "cnn"):
            mask = getattr(self, name)
            if mask is None:
                continue
            mask = np.asarray(mask)
            if mask.shape != flair.shape:
                raise ValueError(
                    f"{where}: {name} has shape {mask.shape} but flair has {flair.shape}"
                )
            object.__setattr__(self, name, mask.astype(bool, copy=False))
        object.__setattr__(self, "flair", flair)
        spacing = tuple(float(v) for v in np.ravel(self.pixel_spacing))
        if len(spacing) != 2 or not all(math.isfinite(v) and v > 0 for v in spacing):
            raise ValueError(f"{where}: pixel_spacing must be two positive numbers, got {spacing}")
        object.__setattr__(self, "pixel_spacing", spacing)
        object.__setattr__(self, "slice_index", int(self.slice_index))

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)``."""
        return tuple(self.flair.shape)  # type: ignore[return-value]

    def meta(self) -> dict[str, Any]:
        """The JSON-able part of the file (everything but the arrays)."""
        return {
            "format": GALLERY_FORMAT,
            "case_id": self.case_id,
            "grade": self.grade,
            "answers": {
                method: {task: answer.to_dict() for task, answer in tasks.items()}
                for method, tasks in self.answers.items()
            },
            "predictions": {m: p.to_dict() for m, p in self.predictions.items()},
            "models": {m: str(v) for m, v in self.models.items()},
        }


def geometry_from_dict(data: Mapping[str, Any] | None) -> Geometry | None:
    """Inverse of ``to_dict`` of :class:`Point`, :class:`Box` and :class:`Polygon`.

    Raises:
        ValueError: for an unknown geometry type or missing coordinates.
    """
    if data is None:
        return None
    kind = data.get("type")
    try:
        if kind == "point":
            return Point(float(data["x"]), float(data["y"]))
        if kind == "box":
            return Box(*(float(data[k]) for k in ("x0", "y0", "x1", "y1")))
        if kind == "polygon":
            return Polygon.from_array(data["points"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"geometry {dict(data)!r}: {exc}") from None
    raise ValueError(f"unknown geometry type {kind!r} (point, box or polygon)")


def write_gallery(path: str | Path, gallery: CaseGallery) -> Path:
    """Write ``gallery`` to ``path`` (``cases/<case_id>/gallery.npz``), atomically.

    Returns:
        ``path``.
    """
    arrays: dict[str, np.ndarray] = {
        "flair": gallery.flair,
        "gt": gallery.gt,
        "slice_index": np.asarray(gallery.slice_index, dtype=np.int64),
        "pixel_spacing": np.asarray(gallery.pixel_spacing, dtype=np.float64),
        "meta": np.asarray(json.dumps(gallery.meta(), allow_nan=False)),
    }
    if gallery.cnn is not None:
        arrays["cnn"] = gallery.cnn
    with atomic_write(path, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    return Path(path)


def read_gallery(path: str | Path) -> CaseGallery:
    """Read a gallery file written by :func:`write_gallery`.

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: naming the file, when it is not a readable gallery file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no gallery file")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [
                k for k in ("flair", "gt", "slice_index", "pixel_spacing", "meta") if k not in data
            ]
            if missing:
                raise ValueError(f"missing arrays {missing}")
            meta = json.loads(str(data["meta"]))
            if not isinstance(meta, dict):
                raise ValueError("meta is not a JSON object")
            if int(meta.get("format", 0)) > GALLERY_FORMAT:
                raise ValueError(
                    f"format {meta.get('format')} is newer than this reader ({GALLERY_FORMAT})"
                )
            answers = {
                str(method): {
                    str(task): GalleryAnswer(
                        status=str(a.get("status")), geometry=geometry_from_dict(a.get("geometry"))
                    )
                    for task, a in tasks.items()
                }
                for method, tasks in (meta.get("answers") or {}).items()
            }
            predictions = {
                str(method): GradePrediction(
                    grade=p.get("grade"),
                    p_hgg=None if p.get("p_hgg") is None else float(p["p_hgg"]),
                    model=p.get("model"),
                )
                for method, p in (meta.get("predictions") or {}).items()
            }
            return CaseGallery(
                case_id=str(meta["case_id"]),
                grade=meta.get("grade"),
                slice_index=int(data["slice_index"]),
                flair=np.array(data["flair"]),
                gt=np.array(data["gt"]),
                cnn=np.array(data["cnn"]) if "cnn" in data else None,
                pixel_spacing=tuple(float(v) for v in data["pixel_spacing"]),
                answers=answers,
                predictions=predictions,
                models={str(k): str(v) for k, v in (meta.get("models") or {}).items()},
            )
    except FileNotFoundError:
        raise
    except Exception as exc:  # a damaged file of any kind: zip, JSON, shapes
        raise ValueError(f"{path}: not a readable gallery file ({exc})") from None


def representative_slice(areas: Mapping[int, float]) -> int:
    """The slice with the largest whole-tumour area (ties: the lowest index).

    Args:
        areas: axial slice index -> whole-tumour area on that slice (pixels or mm^2), over
            the slices the VLM saw.

    Raises:
        ValueError: when ``areas`` is empty.
    """
    if not areas:
        raise ValueError("representative_slice: no slices given")
    return min(areas, key=lambda k: (-float(areas[k]), int(k)))


@dataclass(frozen=True)
class GalleryPick:
    """A case chosen for the gallery.

    Attributes:
        case_id: the case.
        ranking: what it was ranked by, e.g. ``"cnn seg WT"`` or ``"vlm_base box"``.
        position: ``"worst"`` or ``"best"``.
        rank: 1 = the worst (or best) case of that ranking.
        dice: the Dice it was ranked by.
    """

    case_id: str
    ranking: str
    position: str
    rank: int
    dice: float


def select_gallery_cases(
    rows: Iterable[Mapping[str, Any]],
    *,
    method: str,
    task: str,
    region: str | None,
    count: int,
) -> tuple[list[GalleryPick], list[GalleryPick]]:
    """The ``count`` worst and ``count`` best cases of one ranking, by 3D Dice.

    Ties are broken by case id, so the choice is deterministic. When there are fewer than
    ``2 * count`` cases, the best list holds the cases not already among the worst.

    Args:
        rows: ``metrics/segmentation.csv`` rows (``case_id``, ``method``, ``task``, ``region``,
            ``dice``); rows without a Dice are skipped.
        method: e.g. ``"cnn"``.
        task: e.g. ``"seg"`` or ``"box"``.
        region: e.g. ``"WT"``, or None for any region (the VLM's single region).
        count: cases per list (>= 0).

    Returns:
        ``(worst, best)``: worst first (lowest Dice first), best first (highest Dice first).

    Raises:
        ValueError: for a negative ``count``.
    """
    if count < 0:
        raise ValueError(f"gallery count must be >= 0, got {count}")
    scores: dict[str, float] = {}
    for row in rows:
        if row.get("method") != method or row.get("task") != task:
            continue
        if region is not None and row.get("region") != region:
            continue
        value = row.get("dice")
        if value is None or not math.isfinite(float(value)) or row.get("case_id") is None:
            continue
        scores[str(row["case_id"])] = float(value)
    ordered = sorted(scores.items(), key=lambda kv: (kv[1], kv[0]))
    label = f"{method} {task}" + (f" {region}" if region else "")
    worst = [
        GalleryPick(case, label, "worst", i + 1, d) for i, (case, d) in enumerate(ordered[:count])
    ]
    taken = {p.case_id for p in worst}
    rest = [kv for kv in sorted(ordered, key=lambda kv: (-kv[1], kv[0])) if kv[0] not in taken]
    best = [GalleryPick(case, label, "best", i + 1, d) for i, (case, d) in enumerate(rest[:count])]
    return worst, best
