"""Stage ``vlm-finetune``: a LoRA adapter trained on the training patients (all fine-tuned
tasks); with several VLMs (``vlms:``), one ``vlm-finetune-<name>`` stage per VLM
(:func:`finetune_stage`)."""

from __future__ import annotations

import shutil
from dataclasses import replace
from functools import partial
from pathlib import Path

from GliomaCompareLib.pipeline.cohort import load_cohort, load_splits
from GliomaCompareLib.pipeline.config import RunConfig, VlmEntry
from GliomaCompareLib.pipeline.runner import Stage, StageContext
from GliomaCompareLib.vlm import DEFAULT_MODEL_ID, finetune

__all__ = [
    "VLM_FINETUNE",
    "adapter_dir",
    "base_model",
    "finetune_enabled",
    "finetune_stage",
    "vlm_entry",
]


def finetune_enabled(config: RunConfig) -> bool:
    return config.finetune.enabled


def vlm_entry(config: RunConfig, name: str = "") -> VlmEntry:
    """The VLM ``name`` of the run (``""``: the single VLM of a ``vlm:`` config)."""
    for entry in config.vlm_entries():
        if entry.name == name:
            return entry
    raise KeyError(f"the run config has no VLM named {name!r}")


def adapter_dir(ctx: StageContext, entry: VlmEntry | None = None) -> Path:
    """Where the ``vlm-finetune`` stage (of ``entry``) leaves the adapter."""
    stage = entry.stage("vlm-finetune") if entry is not None else "vlm-finetune"
    return ctx.stage_dir(stage) / "run" / "adapter"


def base_model(config: RunConfig | VlmEntry) -> str:
    """The model the adapter is trained on: ``finetune.base``, else the VLM backend's model.

    Raises:
        ValueError: for the openai backend without ``finetune.base``.
    """
    if config.finetune.base:
        return config.finetune.base
    if config.vlm.backend == "tiny":
        return str(config.vlm.model or "tiny")  # a named tiny model, where the backend has them
    if config.vlm.backend == "transformers":
        return str(config.vlm.model or DEFAULT_MODEL_ID)
    raise ValueError(
        "run config: finetune: the openai backend cannot be fine-tuned here; set finetune.base "
        "to a local model (the adapter is then served, e.g. with vLLM --lora-modules)"
    )


def run_vlm_finetune(ctx: StageContext, name: str = "") -> dict:
    entry = vlm_entry(ctx.config, name)
    if ctx.fresh and (ctx.dir / "run").exists():
        # forced, or its inputs changed: an earlier adapter is discarded, not resumed
        shutil.rmtree(ctx.dir / "run")
    result = finetune(
        load_cohort(ctx.run_dir),
        entry.finetune.tasks,
        base_model(entry),
        ctx.dir / "run",
        entry.finetune.training,
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


def finetune_stage(entry: VlmEntry) -> Stage:
    """The fine-tuning stage of one VLM: :data:`VLM_FINETUNE` for the unnamed one, else
    ``vlm-finetune-<name>``, fingerprinted by that VLM's resolved settings."""
    if not entry.name:
        return VLM_FINETUNE
    return replace(
        VLM_FINETUNE,
        name=entry.stage("vlm-finetune"),
        run=partial(run_vlm_finetune, name=entry.name),
        config_keys=("device",),
        description=f"LoRA fine-tuning of VLM {entry.name} on the training patients",
        enabled=partial(_entry_finetunes, name=entry.name),
        settings={"vlm": entry.raw.get("vlm"), "finetune": entry.raw.get("finetune")},
    )


def _entry_finetunes(config: RunConfig, name: str) -> bool:
    return vlm_entry(config, name).finetune.enabled
