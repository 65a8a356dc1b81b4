"""The VLM's queries on the test patients' slices, shared by three stages:

- ``vlm-base`` (per case): the base model's answers for every task;
- ``vlm-finetuned`` (per case): the same queries with the LoRA adapter of ``vlm-finetune``;
  both also ask the grade task on the split's validation patients, into ``out_val/`` (never
  mixed with the test answers in ``out/``): the ``metrics`` stage chooses the VLM's
  validation-tuned grade threshold on them, as the CNN's is chosen on its validation patients;
- ``consistency`` (not sharded: its statistics need every repeat of a case in one table):
  repeated identical queries on a seeded, grade-stratified sample of the test patients
  (``sample.json``), at the sampling temperature and at the decoding the comparison evaluated.

With several VLMs (``vlms:`` in the run config), each VLM has its own ``vlm-base-<name>`` and
``vlm-finetuned-<name>`` stages (:func:`vlm_stages`), hence its own answer cache; ``consistency``
repeats the methods ``consistency.methods`` names, whichever VLM they belong to.

The ``cnn`` slice rule asks about the slices where the CNN's own label maps (``cnn-predict``)
show the most tumour; those label maps also give label-free slices to unlabelled patients.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from functools import partial

from tqdm.auto import tqdm

from GliomaCompareLib.data.sampling import stratified_sample
from GliomaCompareLib.fileio import atomic_write_json
from GliomaCompareLib.pipeline.cohort import load_cohort, load_splits, usable_test_ids
from GliomaCompareLib.pipeline.config import RunConfig, VlmEntry, VlmSection
from GliomaCompareLib.pipeline.runner import Stage, StageContext
from GliomaCompareLib.pipeline.stages.vlm_finetune import (
    adapter_dir,
    finetune_enabled,
    finetune_stage,
    vlm_entry,
)
from GliomaCompareLib.runlayout import is_finetuned_method
from GliomaCompareLib.vlm import DecodingConfig, VLMBackend, VLMConfig, make_backend, run_vlm

__all__ = [
    "CONSISTENCY",
    "VLM_BASE",
    "VLM_FINETUNED",
    "consistency_stage",
    "run_vlm_queries",
    "vlm_stages",
]


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


def _backend(vlm: VlmSection, adapter: str | None = None) -> VLMBackend:
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
    vlm: VlmSection | None = None,
) -> dict:
    """Ask ``config``'s queries of ``case_ids`` into ``ctx.shard_dir(folder)`` (answer cache in
    ``ctx.dir/cache``) with the backend of ``vlm`` (default: the run's first VLM)."""
    backend = _backend(vlm or ctx.config.vlm, adapter)
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
    ctx: StageContext,
    name: str,
    config: VLMConfig,
    adapter: str | None,
    summary: dict,
    vlm: VlmSection | None = None,
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
                          folder="out_val", vlm=vlm)  # fmt: skip
    summary["val"] = {
        "cases": len(cases),
        "queries": val["queries"],
        "failed": val["failed"],
        "case_errors": val["case_errors"],
        "seconds": round(time.perf_counter() - start, 2),
    }
    return summary


# ------------------------------------------------------------------------------ vlm-base
def run_vlm_base(ctx: StageContext, name: str = "") -> dict:
    entry = vlm_entry(ctx.config, name)
    cases = ctx.cases(usable_test_ids(ctx.run_dir))
    config, adapter, stage = entry.vlm.inference, entry.vlm.adapter, entry.stage("vlm-base")
    summary = run_vlm_queries(ctx, stage, config, adapter, cases, vlm=entry.vlm)
    return _with_val_grades(ctx, stage, config, adapter, summary, entry.vlm)


# ------------------------------------------------------------------------------ vlm-finetuned
def run_vlm_finetuned(ctx: StageContext, name: str = "") -> dict:
    entry = vlm_entry(ctx.config, name)
    config = replace(entry.vlm.inference, tasks=entry.finetune.tasks)
    cases = ctx.cases(usable_test_ids(ctx.run_dir))
    adapter, stage = str(adapter_dir(ctx, entry)), entry.stage("vlm-finetuned")
    summary = run_vlm_queries(ctx, stage, config, adapter, cases, vlm=entry.vlm)
    return _with_val_grades(ctx, stage, config, adapter, summary, entry.vlm)


# ------------------------------------------------------------------------------ consistency
def consistency_enabled(config: RunConfig) -> bool:
    return config.consistency.enabled


def _repeat_config(config: RunConfig, entry: VlmEntry) -> VLMConfig:
    """The VLM config of the repeats: the consistency tasks, runs and temperature."""
    base, cons = entry.vlm.inference, config.consistency
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


def _decodings(config: RunConfig, entry: VlmEntry) -> dict[str, VLMConfig]:
    """The repeats' configs: at the sampling temperature, and at the decoding the comparison
    evaluated (when it differs), under ``<method>/`` and ``<method>/evaluated/``."""
    repeat = _repeat_config(config, entry)
    out = {"": repeat}
    if entry.vlm.inference.decoding != repeat.decoding:
        out["evaluated"] = replace(repeat, decoding=entry.vlm.inference.decoding)
    return out


def run_consistency(ctx: StageContext) -> dict:
    config: RunConfig = ctx.config
    cases = ctx.cases(consistency_sample(ctx))
    out = {}
    for method in config.consistency.methods:
        entry, tuned = config.vlm_entry(method), is_finetuned_method(method)
        if tuned and not entry.finetune.enabled:
            continue
        adapter = str(adapter_dir(ctx, entry)) if tuned else entry.vlm.adapter
        for where, repeat in _decodings(config, entry).items():
            if tuned:
                tasks = tuple(t for t in repeat.tasks if t in entry.finetune.tasks)
                repeat = replace(repeat, tasks=tasks)
            sub = replace(ctx, dir=ctx.dir / method / where if where else ctx.dir / method)
            name = f"consistency {method}" + (f" ({where} decoding)" if where else "")
            out[method + (f"_{where}" if where else "")] = run_vlm_queries(
                sub, name, repeat, adapter, cases, vlm=entry.vlm
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


# ------------------------------------------------------------------------------ several VLMs
def vlm_stages(entry: VlmEntry) -> list[Stage]:
    """One VLM's stages: base queries, fine-tuning, fine-tuned queries. The unnamed VLM of a
    ``vlm:`` config keeps :data:`VLM_BASE`, ``vlm-finetune`` and :data:`VLM_FINETUNED`; a
    ``vlms:`` entry gets ``vlm-base-<name>`` ..., each fingerprinted by that VLM's resolved
    settings (its entry over the shared ``vlm:`` / ``finetune:``), so editing one VLM's entry
    leaves the others' stages done."""
    if not entry.name:
        return [VLM_BASE, finetune_stage(entry), VLM_FINETUNED]
    vlm, ft = entry.raw.get("vlm"), entry.raw.get("finetune")
    tuning = finetune_stage(entry)
    base = replace(
        VLM_BASE,
        name=entry.stage("vlm-base"),
        run=partial(run_vlm_base, name=entry.name),
        config_keys=(),
        description=f"VLM {entry.name} on the test slices",
        settings={"vlm": vlm},
    )
    tuned = replace(
        VLM_FINETUNED,
        name=entry.stage("vlm-finetuned"),
        run=partial(run_vlm_finetuned, name=entry.name),
        depends=(tuning.name,),
        config_keys=(),
        description=f"fine-tuned VLM {entry.name} on the test slices",
        enabled=tuning.enabled,
        settings={"vlm": vlm, "finetune": ft},
    )
    return [base, tuning, tuned]


def consistency_stage(entries: tuple[VlmEntry, ...]) -> Stage:
    """The ``consistency`` stage: :data:`CONSISTENCY` for a ``vlm:`` config, else one that
    waits for every VLM's base and fine-tuning stages and is fingerprinted by their settings."""
    if not entries or not entries[0].name:
        return CONSISTENCY
    return replace(
        CONSISTENCY,
        depends=tuple(e.stage(k) for e in entries for k in ("vlm-base", "vlm-finetune")),
        config_keys=("consistency",),
        settings={e.name: dict(e.raw) for e in entries},
    )
