"""Raw VLM answers on the images the VLM saw: one panel per answer kept by
:func:`~GliomaCompareLib.report.prompts.read_prompts` for its parse status.

The run folder keeps one slice image per case (``cases/<case_id>/gallery.npz``, the slice as the
VLM saw it); the answers picked for pictures were given on that slice. Each panel draws the
answer's own geometry (``pixel`` in ``answers.jsonl``: pixel coordinates of the image it was
asked about, rescaled when the stored image has another size), so an invalid or refused answer
shows the slice with nothing drawn on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from GliomaCompareLib.geometry import Box, Point, Polygon
from GliomaCompareLib.report.figures import answer_png
from GliomaCompareLib.report.gallery import CaseGallery, geometry_from_dict, read_gallery
from GliomaCompareLib.report.options import ReportOptions
from GliomaCompareLib.report.prompts import AnswerExample, PromptsSummary
from GliomaCompareLib.report.rundata import is_tiny
from GliomaCompareLib.runlayout import CASE_GALLERY_FILE, CASES_DIR

__all__ = ["AnswerPanel", "answer_panels", "scaled_geometry"]


@dataclass(frozen=True)
class AnswerPanel:
    """A raw answer and its picture (or why there is none)."""

    example: AnswerExample
    png: bytes | None
    missing: str = ""


def scaled_geometry(example: AnswerExample, shape: tuple[int, int]):
    """The answer's geometry in pixels of an image of ``shape`` ``(H, W)`` (None without one).

    Raises:
        ValueError: for a geometry that cannot be read.
    """
    geometry = geometry_from_dict(example.pixel)
    h, w = shape
    if geometry is None or not example.width or not example.height:
        return geometry
    if (example.height, example.width) == (h, w):
        return geometry
    sx, sy = w / example.width, h / example.height
    if isinstance(geometry, Point):
        return Point(geometry.x * sx, geometry.y * sy)
    if isinstance(geometry, Box):
        return Box(geometry.x0 * sx, geometry.y0 * sy, geometry.x1 * sx, geometry.y1 * sy)
    if isinstance(geometry, Polygon):
        return Polygon.from_array(geometry.as_array() * [sx, sy])
    return geometry


def _heading(x: AnswerExample) -> str:
    """The panel's title: task, status, case and slice (the stage, which can be long, is in the
    HTML caption below the panel, where it can wrap)."""
    return f"{x.task} · {x.status}\n{x.case_id}, slice {x.slice_index}"


def answer_panels(
    run_dir: str | Path, summary: PromptsSummary, options: ReportOptions, problems: list[str]
) -> dict[str, list[AnswerPanel]]:
    """Parse status -> the panels of the answers ``summary`` kept for pictures.

    A gallery file that cannot be read, or an answer whose geometry cannot be drawn, becomes a
    panel without a picture that says why (and a line in ``problems``), never an exception.
    """
    galleries: dict[str, CaseGallery | str] = {}
    out: dict[str, list[AnswerPanel]] = {}
    for status, examples in summary.pictured.items():
        panels = out.setdefault(status, [])
        for x in examples:
            if x.case_id not in galleries:
                path = Path(run_dir) / CASES_DIR / x.case_id / CASE_GALLERY_FILE
                try:
                    galleries[x.case_id] = read_gallery(path)
                except (OSError, ValueError) as exc:
                    problems.append(str(exc))
                    galleries[x.case_id] = f"{CASES_DIR}/{x.case_id}/{CASE_GALLERY_FILE} unreadable"
            gallery = galleries[x.case_id]
            if isinstance(gallery, str):
                panels.append(AnswerPanel(x, None, gallery))
                continue
            tiny = is_tiny(x.model) or (
                not x.model and any(is_tiny(m) for m in gallery.models.values())
            )
            try:
                geometry = scaled_geometry(x, gallery.shape)
                png = answer_png(gallery.flair, geometry, _heading(x), options, gt=gallery.gt,
                                 tiny=tiny)  # fmt: skip
            except (ValueError, TypeError) as exc:
                problems.append(f"answer of {x.case_id} slice {x.slice_index}: {exc}")
                panels.append(AnswerPanel(x, None, f"its geometry could not be drawn ({exc})"))
                continue
            panels.append(AnswerPanel(x, png))
    return out
