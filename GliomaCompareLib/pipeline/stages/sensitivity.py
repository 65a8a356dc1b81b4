"""``slice-sensitivity`` (per case, shardable): the base VLM asked again on the test patients'
slices under other slice rules (``sensitivity.slice_rules``, e.g. ``cnn`` and ``brain``), each into
``<rule>/``, so the report can show how much the study's own choice (oracle slices known to show
tumour, with a prompt that says so) shapes the VLM's figures. With several VLMs (``vlms:``) it asks
the first one listed (:func:`sensitivity_stage`)."""

from __future__ import annotations

from dataclasses import replace

from GliomaCompareLib.data import SliceRule
from GliomaCompareLib.pipeline.cohort import usable_test_ids
from GliomaCompareLib.pipeline.config import RunConfig, VlmEntry
from GliomaCompareLib.pipeline.runner import Stage, StageContext
from GliomaCompareLib.pipeline.stages.vlm_infer import run_vlm_queries
from GliomaCompareLib.vlm import VLMConfig

__all__ = ["SLICE_SENSITIVITY", "sensitivity_config", "sensitivity_stage"]


def sensitivity_config(config: RunConfig, mode: str) -> VLMConfig:
    """The base VLM's config with the slice rule ``mode`` (K, region and area kept)."""
    base = config.vlm.inference
    rule = base.rule
    other = SliceRule(
        mode=mode,
        min_area_mm2=rule.min_area_mm2,
        max_slices=rule.max_slices or (10 if mode == "largest" else None),
        region=rule.region,
        min_brain_fraction=rule.min_brain_fraction,
        stride=rule.stride,
    )
    return replace(
        base,
        slice_rule=other,
        slices_per_case=None,
        tasks=config.sensitivity.tasks or base.tasks,
        prompt_variant=config.sensitivity.prompt_variant,
    )


def run_sensitivity(ctx: StageContext) -> dict:
    config: RunConfig = ctx.config
    cases = ctx.cases(usable_test_ids(ctx.run_dir))
    out = {}
    for mode in config.sensitivity.slice_rules:
        if mode == "cnn" and not config.cnn.enabled:
            ctx.logger.warning("slice-sensitivity: rule 'cnn' needs the CNN arm; skipped")
            continue
        sub = replace(ctx, dir=ctx.dir / mode)
        out[mode] = run_vlm_queries(
            sub, f"sensitivity {mode}", sensitivity_config(config, mode), None, cases
        )
    return out


def sensitivity_enabled(config: RunConfig) -> bool:
    return config.sensitivity.enabled


SLICE_SENSITIVITY = Stage(
    "slice-sensitivity",
    run_sensitivity,
    ("cnn-predict", "vlm-base"),
    ("vlm", "sensitivity"),
    per_case=True,
    description="the base VLM under other slice rules",
    enabled=sensitivity_enabled,
)


def sensitivity_stage(first: VlmEntry) -> Stage:
    """:data:`SLICE_SENSITIVITY`, or for a ``vlms:`` config the same stage on its first VLM."""
    if not first.name:
        return SLICE_SENSITIVITY
    return replace(
        SLICE_SENSITIVITY,
        depends=("cnn-predict", first.stage("vlm-base")),
        config_keys=("sensitivity",),
        description=f"VLM {first.name} (base) under other slice rules",
        settings={"vlm": first.raw.get("vlm")},
    )
