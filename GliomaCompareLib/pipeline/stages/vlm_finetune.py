"""Stage ``vlm-finetune``: a LoRA adapter trained on the training patients (all fine-tuned
tasks)."""

from __future__ import annotations

from pathlib import Path

from GliomaCompareLib.pipeline.cohort import load_cohort, load_splits
from GliomaCompareLib.pipeline.config import RunConfig
from GliomaCompareLib.pipeline.runner import Stage, StageContext
from GliomaCompareLib.vlm import DEFAULT_MODEL_ID, finetune

__all__ = ["VLM_FINETUNE", "adapter_dir", "base_model", "finetune_enabled"]


def finetune_enabled(config: RunConfig) -> bool:
    return config.finetune.enabled


def adapter_dir(ctx: StageContext) -> Path:
    """Where the ``vlm-finetune`` stage leaves the adapter."""
    return ctx.stage_dir("vlm-finetune") / "run" / "adapter"


def base_model(config: RunConfig) -> str:
    """The model the adapter is trained on: ``finetune.base``, else the VLM backend's model.

    Raises:
        ValueError: for the openai backend without ``finetune.base``.
    """
    if config.finetune.base:
        return config.finetune.base
    if config.vlm.backend == "tiny":
        return "tiny"
    if config.vlm.backend == "transformers":
        return str(config.vlm.model or DEFAULT_MODEL_ID)
    raise ValueError(
        "run config: finetune: the openai backend cannot be fine-tuned here; set finetune.base "
        "to a local model (the adapter is then served, e.g. with vLLM --lora-modules)"
    )


def run_vlm_finetune(ctx: StageContext) -> dict:
    config: RunConfig = ctx.config
    result = finetune(
        load_cohort(ctx.run_dir),
        config.finetune.tasks,
        base_model(config),
        ctx.dir / "run",
        config.finetune.training,
        splits=load_splits(ctx.run_dir),
        resume=not ctx.fresh and (ctx.dir / "run").exists(),
    )
    return {
        "adapter_dir": str(result.adapter_dir),
        "tasks": list(result.tasks),
        "base_model": result.base_model,
        "model_label": result.model_label,
        "best_epoch": result.best_epoch,
        "best_val_loss": result.best_val_loss,
        "stop_reason": result.stop_reason,
        "n_train": result.n_train,
        "n_val": result.n_val,
        "seconds": round(result.seconds, 2),
    }


VLM_FINETUNE = Stage(
    "vlm-finetune",
    run_vlm_finetune,
    ("split",),
    ("vlm", "finetune", "device"),
    description="LoRA fine-tuning on the training patients",
    enabled=finetune_enabled,
)
