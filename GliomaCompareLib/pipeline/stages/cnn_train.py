"""Stages ``cnn-train-seg`` and ``cnn-train-cls``: the segmentation and classification networks
(or released weights), each resumable from its last checkpoint. When the segmentation network is
trained here, its random initialisation is packaged too (``untrained/``), as a baseline."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from GliomaCompareLib.cnn import load_model_info, train_classifier, train_segmenter
from GliomaCompareLib.pipeline.cohort import load_cohort, load_splits
from GliomaCompareLib.pipeline.runner import Stage, StageContext

__all__ = [
    "CNN_TRAIN_CLS",
    "CNN_TRAIN_SEG",
    "MODEL_DIR",
    "UNTRAINED_DIR",
    "cnn_enabled",
    "model_id",
]

#: Folder of the trained network, in its stage folder.
MODEL_DIR = "model"
#: Folder of the segmentation network before training (the baseline), in its stage folder.
UNTRAINED_DIR = "untrained"


def cnn_enabled(config) -> bool:
    return config.cnn.enabled


def model_id(folder: Path) -> str | None:
    """The model id of a model folder, or None when there is no (readable) model."""
    try:
        return load_model_info(folder).model_id
    except (OSError, ValueError):
        return None


def _package_untrained(ctx: StageContext, config) -> str | None:
    """The segmentation network as it was before training (same seed, so the same random
    initialisation), packaged as a model folder: the baseline that shows what training bought.
    Returns its model id."""
    folder = ctx.dir / UNTRAINED_DIR
    if ctx.fresh or model_id(folder) is None:
        train_segmenter(
            load_cohort(ctx.run_dir),
            folder,
            load_splits(ctx.run_dir),
            replace(config, train=replace(config.train, epochs=0)),
            device=ctx.config.device,
            overwrite=True,
            progress=False,
        )
    return model_id(folder)


def _train_cnn(ctx: StageContext, task: str) -> dict:
    cnn = ctx.config.cnn
    train = train_segmenter if task == "seg" else train_classifier
    config = cnn.network(task)
    weights = cnn.weights.get(task)
    folder = ctx.dir / MODEL_DIR
    result = train(
        load_cohort(ctx.run_dir),
        folder,
        load_splits(ctx.run_dir),
        config,
        device=ctx.config.device,
        weights=weights,
        resume=not ctx.fresh,
        overwrite=ctx.fresh,
        progress=True,
    )
    baseline = None
    if task == "seg" and not weights and config.train.epochs > 0:
        baseline = _package_untrained(ctx, config)
    elif task == "seg":  # given weights: no random-init baseline; drop one from an earlier run
        shutil.rmtree(ctx.dir / UNTRAINED_DIR, ignore_errors=True)
    return {
        "model_dir": str(folder),
        "model_id": model_id(folder),
        "untrained_model_id": baseline,
        "best_epoch": getattr(result, "best_epoch", None),
        "best_metric": getattr(result, "best_metric", None),
        "weights": weights,
        "seconds": round(getattr(result, "seconds", 0.0) or 0.0, 2),
    }


def run_cnn_train_seg(ctx: StageContext) -> dict:
    return _train_cnn(ctx, "seg")


def run_cnn_train_cls(ctx: StageContext) -> dict:
    return _train_cnn(ctx, "cls")


CNN_TRAIN_SEG = Stage(
    "cnn-train-seg",
    run_cnn_train_seg,
    ("split",),
    ("cnn.seg", "cnn.weights.seg", "device"),
    description="train the 3D segmentation CNN",
    enabled=cnn_enabled,
)
CNN_TRAIN_CLS = Stage(
    "cnn-train-cls",
    run_cnn_train_cls,
    ("split",),
    ("cnn.cls", "cnn.weights.cls", "device"),
    description="train the 3D LGG/HGG classifier",
    enabled=cnn_enabled,
)
