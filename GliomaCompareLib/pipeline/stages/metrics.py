"""Stage ``metrics``: every table of :mod:`GliomaCompareLib.runlayout`, and ``cases/<id>/`` (see
:mod:`GliomaCompareLib.pipeline.aggregate`)."""

from __future__ import annotations

from GliomaCompareLib.pipeline.aggregate import aggregate_run
from GliomaCompareLib.pipeline.runner import Stage, StageContext

__all__ = ["METRICS"]


def run_metrics(ctx: StageContext) -> dict:
    return aggregate_run(ctx.run_dir, ctx.config)


METRICS = Stage(
    "metrics",
    run_metrics,
    ("cnn-predict", "vlm-base", "vlm-finetuned", "consistency", "slice-sensitivity"),
    ("metrics",),
    description="tables and Slicer files",
)
