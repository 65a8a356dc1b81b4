"""Stage ``cnn-predict`` (per case, shardable): label maps and P(HGG) for the test patients, and
the untrained baseline's label maps (``pred_untrained/``)."""

from __future__ import annotations

import shutil

from GliomaCompareLib.cnn import load_classifier, load_segmenter, predict_cases
from GliomaCompareLib.pipeline.cohort import load_cohort, usable_test_ids
from GliomaCompareLib.pipeline.runner import Stage, StageContext
from GliomaCompareLib.pipeline.stages.cnn_train import (
    MODEL_DIR,
    UNTRAINED_DIR,
    cnn_enabled,
    model_id,
)

__all__ = ["CNN_PREDICT"]


def _predict(ctx: StageContext, cohort, records, folder: str, what: str, **models):
    result = predict_cases(
        records,
        ctx.shard_dir(folder),
        convention=cohort.convention,
        skip_existing=not ctx.fresh,
        progress=True,
        **models,
    )
    for case_id, reason in result.failures:
        ctx.logger.warning("cnn-predict%s: %s failed: %s", what, case_id, reason)
    return result


def run_cnn_predict(ctx: StageContext) -> dict:
    cohort = load_cohort(ctx.run_dir)
    wanted = set(ctx.cases(usable_test_ids(ctx.run_dir, cohort)))
    records = [c for c in cohort.cases if c.case_id in wanted]
    device = ctx.config.device
    engine = ctx.config.cnn.engine  # what runs the networks (cnn.engine / cnn.threads)
    seg_dir = ctx.stage_dir("cnn-train-seg")
    segmenter = load_segmenter(
        seg_dir / MODEL_DIR, convention=cohort.convention, device=device, engine=engine
    )
    classifier = load_classifier(
        ctx.stage_dir("cnn-train-cls") / MODEL_DIR, device=device, engine=engine
    )
    result = _predict(ctx, cohort, records, "pred", "", segmenter=segmenter, classifier=classifier)
    summary = {
        "cases": len(result.predictions),
        "failures": dict(result.failures),
        "seg_model_id": segmenter.model_id,
        "cls_model_id": classifier.model_id,
        "seg_engine": segmenter.engine,
        "cls_engine": classifier.engine,
    }
    untrained = seg_dir / UNTRAINED_DIR
    if model_id(untrained) is not None:
        # the same network before training, on the same patients: the baseline the trained
        # segmentation has to beat
        baseline = load_segmenter(
            untrained, convention=cohort.convention, device=device, engine=engine
        )
        _predict(
            ctx, cohort, records, "pred_untrained", " (untrained baseline)", segmenter=baseline
        )
        summary["untrained_seg_model_id"] = baseline.model_id
    else:  # no baseline (weights were given): none from an earlier run may be scored
        shutil.rmtree(ctx.shard_dir("pred_untrained"), ignore_errors=True)
    return summary


CNN_PREDICT = Stage(
    "cnn-predict",
    run_cnn_predict,
    ("cnn-train-seg", "cnn-train-cls"),
    ("device",),
    per_case=True,
    description="CNN segmentation and grade of the test patients",
    enabled=cnn_enabled,
)
