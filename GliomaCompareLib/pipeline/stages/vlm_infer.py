"""The VLM's queries on the test patients' slices, shared by three stages:

- ``vlm-base`` (per case): the base model's answers for every task;
- ``vlm-finetuned`` (per case): the same queries with the LoRA adapter of ``vlm-finetune``;
  both also ask the grade task on the split's validation patients, into ``out_val/`` (never
  mixed with the test answers in ``out/``): the ``metrics`` stage chooses the VLM's
  validation-tuned grade threshold on them, as the CNN's is chosen on its validation patients;
- ``consistency`` (not sharded: its statistics need every repeat of a case in one table):
  repeated identical queries on a seeded, grade-stratified sample of the test patients
  (``sample.json``), at the sampling temperature and at the decoding the comparison evaluated.

The ``cnn`` slice rule asks about the slices where the CNN's own label maps (``cnn-predict``)
show the most tumour; those label maps also give label-free slices to unlabelled patients.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace

from tqdm.auto import tqdm

from GliomaCompareLib.data.sampling import stratified_sample
from GliomaCompareLib.fileio import atomic_write_json
from GliomaCompareLib.pipeline.cohort import load_cohort, load_splits, usable_test_ids
from GliomaCompareLib.pipeline.config import RunConfig
from GliomaCompareLib.pipeline.runner import Stage, StageContext
from GliomaCompareLib.pipeline.stages.vlm_finetune import adapter_dir, finetune_enabled
from GliomaCompareLib.vlm import DecodingConfig, VLMBackend, VLMConfig, make_backend, run_vlm

__all__ = ["CONSISTENCY", "VLM_BASE", "VLM_FINETUNED", "run_vlm_queries"]


class _VlmProgress:
    """A tqdm bar fed by the VLM arm's progress events."""

    def __init__(self, desc: str):
        self.bar = tqdm(total=0, desc=desc, unit="case", file=sys.stderr, leave=False)

    def __call__(self, event) -> None:
        self.bar.total = event.cases_total
        self.bar.n = event.cases_done
        self.bar.set_postfix_str(
            f"queries {event.queries_done} (cached {event.queries_cached}, "
            f"failed {event.queries_failed})"
        )
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def _backend(config: RunConfig, adapter: str | None = None) -> VLMBackend:
    vlm = config.vlm
    options = {
        key: value
        for key, value in (
            ("concurrency", vlm.concurrency),
            ("timeout_s", vlm.timeout_s),
            ("max_retries", vlm.max_retries),
            ("structured_output", vlm.structured_output),
        )
        if value is not None
    }
    return make_backend(
        vlm.backend,
        model=vlm.model,
        base_url=vlm.base_url,
        allow_remote=vlm.allow_remote,
        adapter=adapter,
        seed=vlm.seed,
        device=None if vlm.device == "auto" else vlm.device,
        load_in_4bit=vlm.load_in_4bit,
        **options,
    )


def _with_predictions(ctx: StageContext, config: VLMConfig) -> VLMConfig:
    """``config`` pointed at the CNN's label maps of this run (when the CNN arm runs), for the
    ``cnn`` slice rule and for patients without reference labels."""
    if not ctx.config.cnn.enabled or config.cnn_predictions is not None:
        return config
    return replace(config, cnn_predictions=str(ctx.stage_dir("cnn-predict") / "pred"))


def run_vlm_queries(
    ctx: StageContext,
    name: str,
    config: VLMConfig,
    adapter: str | None,
    case_ids,
    folder: str = "out",
) -> dict:
    backend = _backend(ctx.config, adapter)
    config = replace(_with_predictions(ctx, config), cache_dir=str(ctx.dir / "cache"))
    bar = _VlmProgress(name)
    try:
        result = run_vlm(
            load_cohort(ctx.run_dir),
            backend,
            config,
            ctx.shard_dir(folder),
            case_ids=case_ids,
            progress=bar,
        )
    finally:
        bar.close()
    if result.failed:
        ctx.logger.warning("%s: %d queries failed (status error)", name, result.failed)
    for case_id, reason in result.case_errors.items():
        ctx.logger.warning("%s: %s skipped: %s", name, case_id, reason)
    return {
        "model_label": result.model_label,
        "identity": result.identity,
        "queries": len(result.records),
        "failed": result.failed,
        "case_errors": dict(result.case_errors),
        "status_counts": result.status_counts,
        "adapter": adapter,
    }


# ------------------------------------------------------------------------------ validation
def usable_val_ids(ctx: StageContext) -> list[str]:
    """The split's validation patients that are usable cases of the cohort, in split order."""
    usable = {c.case_id for c in load_cohort(ctx.run_dir).usable}
    return [c for c in load_splits(ctx.run_dir).ids("val") if c in usable]


def _with_val_grades(
    ctx: StageContext, name: str, config: VLMConfig, adapter: str | None, summary: dict
) -> dict:
    """Ask the grade task on this stage's share of the validation patients (``out_val/``) and
    add what it cost to the stage summary (``summary["val"]``)."""
    if "grade" not in config.tasks:
        return summary
    cases = ctx.cases(usable_val_ids(ctx))
    if not cases:
        summary["val"] = {"cases": 0, "queries": 0, "seconds": 0.0}
        return summary
    start = time.perf_counter()
    val = run_vlm_queries(ctx, f"{name} (val)", replace(config, tasks=("grade",)), adapter, cases,
                   folder="out_val")  # fmt: skip
    summary["val"] = {
        "cases": len(cases),
        "queries": val["queries"],
        "failed": val["failed"],
        "case_errors": val["case_errors"],
        "seconds": round(time.perf_counter() - start, 2),
    }
    return summary


# ------------------------------------------------------------------------------ vlm-base
def run_vlm_base(ctx: StageContext) -> dict:
    cases = ctx.cases(usable_test_ids(ctx.run_dir))
    config = ctx.config.vlm.inference
    summary = run_vlm_queries(ctx, "vlm-base", config, None, cases)
    return _with_val_grades(ctx, "vlm-base", config, None, summary)


# ------------------------------------------------------------------------------ vlm-finetuned
def run_vlm_finetuned(ctx: StageContext) -> dict:
    config = replace(ctx.config.vlm.inference, tasks=ctx.config.finetune.tasks)
    cases = ctx.cases(usable_test_ids(ctx.run_dir))
    adapter = str(adapter_dir(ctx))
    summary = run_vlm_queries(ctx, "vlm-finetuned", config, adapter, cases)
    return _with_val_grades(ctx, "vlm-finetuned", config, adapter, summary)


# ------------------------------------------------------------------------------ consistency
def consistency_enabled(config: RunConfig) -> bool:
    return config.consistency.enabled


def _repeat_config(config: RunConfig) -> VLMConfig:
    """The VLM config of the repeats: the consistency tasks, runs and temperature."""
    base, cons = config.vlm.inference, config.consistency
    decoding = DecodingConfig.from_temperature(
        cons.temperature,
        top_p=base.decoding.top_p,
        max_new_tokens=base.decoding.max_new_tokens,
        seed=base.decoding.seed,
    )
    return replace(base, tasks=cons.tasks, runs=cons.runs, decoding=decoding)


def consistency_sample(ctx: StageContext) -> list[str]:
    """The test patients asked again: a seeded sample stratified by grade (``max_cases`` of
    them; all when unset), recorded in ``sample.json`` of the stage folder."""
    config: RunConfig = ctx.config
    cohort = load_cohort(ctx.run_dir)
    grades = {c.case_id: c.grade for c in cohort.usable}
    test_ids = usable_test_ids(ctx.run_dir, cohort)
    chosen = stratified_sample({c: grades[c] for c in test_ids}, config.consistency.max_cases,
                               config.seed)  # fmt: skip
    atomic_write_json(
        ctx.dir / "sample.json",
        {
            "rule": "grade-stratified random sample of the test patients (largest remainder, "
            "at least one patient of each grade present)",
            "seed": config.seed,
            "max_cases": config.consistency.max_cases,
            "cases": chosen,
            "grades": {c: grades[c] for c in chosen},
        },
    )
    return chosen


def _decodings(config: RunConfig) -> dict[str, VLMConfig]:
    """The repeats' configs: at the sampling temperature, and at the decoding the comparison
    evaluated (when it differs), under ``<method>/`` and ``<method>/evaluated/``."""
    repeat = _repeat_config(config)
    out = {"": repeat}
    if config.vlm.inference.decoding != repeat.decoding:
        out["evaluated"] = replace(repeat, decoding=config.vlm.inference.decoding)
    return out


def run_consistency(ctx: StageContext) -> dict:
    config: RunConfig = ctx.config
    cases = ctx.cases(consistency_sample(ctx))
    out = {}
    for method in config.consistency.methods:
        if method == "vlm_finetuned" and not config.finetune.enabled:
            continue
        adapter = str(adapter_dir(ctx)) if method == "vlm_finetuned" else None
        for where, repeat in _decodings(config).items():
            if method == "vlm_finetuned":
                tasks = tuple(t for t in repeat.tasks if t in config.finetune.tasks)
                repeat = replace(repeat, tasks=tasks)
            sub = replace(ctx, dir=ctx.dir / method / where if where else ctx.dir / method)
            name = f"consistency {method}" + (f" ({where} decoding)" if where else "")
            out[method + (f"_{where}" if where else "")] = run_vlm_queries(
                sub, name, repeat, adapter, cases
            )
    return out


VLM_BASE = Stage(
    "vlm-base",
    run_vlm_base,
    ("split",),
    ("vlm",),
    per_case=True,
    description="base VLM on the test slices",
)
VLM_FINETUNED = Stage(
    "vlm-finetuned",
    run_vlm_finetuned,
    ("vlm-finetune",),
    ("vlm", "finetune"),
    per_case=True,
    description="fine-tuned VLM on the test slices",
    enabled=finetune_enabled,
)
# not sharded: consistency statistics need every repeat of a case in one table
CONSISTENCY = Stage(
    "consistency",
    run_consistency,
    ("vlm-base", "vlm-finetune"),
    ("vlm", "consistency", "finetune"),
    description="repeated identical queries",
    enabled=consistency_enabled,
)
