"""The comparison report: ``metrics/*.md`` tables and one self-contained ``report.html``.

Built only from the files of a run folder (``manifest.json``, ``metrics/*.csv``,
``cases/<case_id>/gallery.npz``), recomputing no model output, so ``gliomacompare report RUN``
can rebuild it at any time. The study's published figures (``Resources/published.yaml``) are
printed beside ours; every table and figure says what produced it, and outputs of the tiny
random-weight VLM are labelled as such.

Modules: :mod:`.build` (:func:`build_report`); :mod:`.table` (a table declared: ``Column``,
``TableSpec``, the one builder of cells), :mod:`.tables` (the report's table specs and what
fills them), :mod:`.render` (Markdown and HTML of a built table), :mod:`.cells` (number and
label formatting), :mod:`.summaries` (what the report computes from CSV rows); :mod:`.figures`,
:mod:`.html`, :mod:`.gallery` (the per-case gallery file the run writes), :mod:`.published`,
:mod:`.rundata`, :mod:`.options`, :mod:`.commands` (the CLI). matplotlib is imported only
while drawing.
"""

from GliomaCompareLib.report.build import build_report, write_markdown_tables
from GliomaCompareLib.report.gallery import (
    CaseGallery,
    GalleryAnswer,
    GradePrediction,
    read_gallery,
    representative_slice,
    select_gallery_cases,
    write_gallery,
)
from GliomaCompareLib.report.options import ReportOptions
from GliomaCompareLib.report.published import Published, load_published
from GliomaCompareLib.report.rundata import TINY_LABEL, RunData, load_run

__all__ = [
    "TINY_LABEL",
    "CaseGallery",
    "GalleryAnswer",
    "GradePrediction",
    "Published",
    "ReportOptions",
    "RunData",
    "build_report",
    "load_published",
    "load_run",
    "read_gallery",
    "representative_slice",
    "select_gallery_cases",
    "write_gallery",
    "write_markdown_tables",
]
