"""Stage ``report``: ``report.html`` (built from the run folder alone, as ``gliomacompare report``
rebuilds it)."""

from __future__ import annotations

from GliomaCompareLib.pipeline.runner import Stage, StageContext
from GliomaCompareLib.report import build_report

__all__ = ["REPORT"]


def run_report(ctx: StageContext) -> dict:
    path = build_report(ctx.run_dir)
    return {"report": str(path)}


REPORT = Stage("report", run_report, ("metrics",), ("report",), description="report.html")
