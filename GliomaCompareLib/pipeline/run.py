"""The comparison run: ``gliomacompare run CONFIG --out RUN``.

Stages (each in ``RUN/stages/<name>/``, see :mod:`GliomaCompareLib.pipeline.stages`)::

    data -> split -> cnn-train-seg -> cnn-train-cls -> cnn-predict -> vlm-base -> vlm-finetune -> vlm-finetuned
         -> consistency -> metrics -> report

- ``data``: the cohort (a BraTS folder, or a synthetic cohort written into ``RUN/data``),
  validated case by case; cases with problems are listed and left out.
- ``split``: the patient-level split (``RUN/splits.json``), made once or read from a file.
- ``cnn-train-seg``, ``cnn-train-cls``: the segmentation and classification networks (or
  released weights), each resumable from its last checkpoint; when trained here, the
  segmentation network's random initialisation is packaged too (``untrained/``), as a baseline.
- ``cnn-predict`` (per case, shardable): label maps and P(HGG) for the test patients, and the
  untrained baseline's label maps (``pred_untrained/``).
- ``vlm-base`` (per case): the VLM's answers for every task on the test patients' slices.
- ``vlm-finetune``: a LoRA adapter trained on the training patients (all fine-tuned tasks).
- ``vlm-finetuned`` (per case): the same queries with the adapter.
- ``consistency`` (per case): repeated identical queries at a set temperature.
- ``metrics``: every table of :mod:`GliomaCompareLib.runlayout`, and ``cases/<id>/``.
- ``report``: ``report.html``.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from GliomaCompareLib.pipeline.stages import (
    Shard,
    Stage,
    StageContext,
    StageRunner,
    atomic_write_json,
)
from GliomaCompareLib.runlayout import LOG_FILE, SPLITS_FILE

__all__ = [
    "STAGE_NAMES",
    "RunOutcome",
    "build_stages",
    "finetune_config_from_dict",
    "load_cohort",
    "run_comparison",
    "vlm_config_from_dict",
]

log = logging.getLogger("gliomacompare.run")

STAGE_NAMES = (
    "data",
    "split",
    "cnn-train-seg",
    "cnn-train-cls",
    "cnn-predict",
    "vlm-base",
    "vlm-finetune",
    "vlm-finetuned",
    "consistency",
    "metrics",
    "report",
)


# ------------------------------------------------------------------------------ config helpers
def _section(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = config.get(name) or {}
    if not isinstance(value, Mapping):
        raise ValueError(f"run config: '{name}' must be a mapping, got {type(value).__name__}")
    return dict(value)


def _refuse_unknown(where: str, raw: Mapping[str, Any], known: Sequence[str]) -> None:
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ValueError(f"run config: {where}: unknown keys {unknown} (known: {', '.join(known)})")


def _dataclass_from(kind, raw: Mapping[str, Any], where: str):
    names = [f.name for f in fields(kind)]
    _refuse_unknown(where, raw, names)
    try:
        return kind(**raw)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"run config: {where}: {exc}") from exc


#: keys of the ``vlm:`` section that choose the backend (the rest is the VLMConfig).
VLM_BACKEND_KEYS = ("backend", "model", "base_url", "allow_remote", "device", "load_in_4bit",
                    "seed", "concurrency", "timeout_s", "max_retries")  # fmt: skip


def vlm_config_from_dict(raw: Mapping[str, Any], where: str = "vlm"):
    """A :class:`~GliomaCompareLib.vlm.pipeline.VLMConfig` from the ``vlm:`` section (backend
    keys are ignored here); nested ``decoding``, ``slice_rule`` and ``window`` mappings."""
    from GliomaCompareLib.data.slices import SliceRule, WindowSpec
    from GliomaCompareLib.vlm.backend import DecodingConfig
    from GliomaCompareLib.vlm.pipeline import VLMConfig

    values = {k: v for k, v in raw.items() if k not in VLM_BACKEND_KEYS}
    known = [f.name for f in fields(VLMConfig)]
    _refuse_unknown(where, values, known)
    if "decoding" in values:
        decoding = dict(values["decoding"] or {})
        _refuse_unknown(f"{where}.decoding", decoding, [f.name for f in fields(DecodingConfig)])
        temperature = float(decoding.pop("temperature", 0.0))
        decoding.pop("do_sample", None)
        values["decoding"] = DecodingConfig.from_temperature(temperature, **decoding)
    if "slice_rule" in values:
        values["slice_rule"] = _dataclass_from(
            SliceRule, values["slice_rule"] or {}, f"{where}.slice_rule"
        )
    if "window" in values:
        values["window"] = _dataclass_from(WindowSpec, values["window"] or {}, f"{where}.window")
    if "tasks" in values and isinstance(values["tasks"], str):
        values["tasks"] = tuple(t.strip() for t in values["tasks"].split(",") if t.strip())
    if "tasks" in values:
        values["tasks"] = tuple(values["tasks"])
    try:
        return VLMConfig(**values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"run config: {where}: {exc}") from exc


def finetune_config_from_dict(raw: Mapping[str, Any], vlm_config, where: str = "finetune"):
    """A :class:`~GliomaCompareLib.vlm.finetune.FinetuneConfig` from the ``finetune:`` section;
    the slice rule, window, coordinate system and polygon K default to the VLM arm's, so the
    adapter learns exactly the prompts it will be asked."""
    from GliomaCompareLib.vlm.finetune import FinetuneConfig

    values = {k: v for k, v in raw.items() if k not in ("enabled", "tasks", "base")}
    values.setdefault("slice_rule", vlm_config.rule.to_dict())
    values.setdefault("window", vlm_config.window.to_dict())
    values.setdefault("coordinate_system", vlm_config.coordinate_system)
    values.setdefault("max_vertices", vlm_config.max_vertices)
    values.setdefault("point_radius_mm", vlm_config.point_radius_mm)
    values.setdefault("prompts_dir", vlm_config.prompts_dir)
    known = [f.name for f in fields(FinetuneConfig)]
    _refuse_unknown(where, values, known)
    try:
        return FinetuneConfig.from_dict(values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"run config: {where}: {exc}") from exc


def _device(config: Mapping[str, Any]) -> str:
    device = str(config.get("device") or "auto")
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"run config: device {device!r}: use auto, cpu or cuda")
    return device


def validate_config(config: Mapping[str, Any]) -> None:
    """Build every arm's configuration once, so a typo fails before any work starts."""
    from GliomaCompareLib.cnn.config import load_cnn_config

    data = _section(config, "data")
    _refuse_unknown("data", data, ("root", "synthetic", "convention", "jobs"))
    if not data.get("root") and not data.get("synthetic"):
        raise ValueError("run config: data: give 'root' (a BraTS folder) or 'synthetic'")
    if data.get("synthetic"):
        from GliomaCompareLib.data.synthetic import SynthConfig

        _synth_config(data["synthetic"], SynthConfig)
    split = _section(config, "split")
    _refuse_unknown("split", split, ("file", "fractions", "seed"))
    cnn = _section(config, "cnn")
    _refuse_unknown("cnn", cnn, ("enabled", "seg", "cls", "weights"))
    cnn_config = load_cnn_config({k: v for k, v in cnn.items() if k in ("seg", "cls")})
    _refuse_unknown("cnn.weights", cnn.get("weights") or {}, ("seg", "cls"))
    if cnn.get("enabled", True):
        from GliomaCompareLib.cnn.networks import build_network

        # building the networks once catches bad architecture arguments before any training
        build_network(
            cnn_config.seg.network, len(cnn_config.seg.channels), len(cnn_config.seg.regions), "seg"
        )
        build_network(cnn_config.cls.network, len(cnn_config.cls.channels), 1, "cls")
    vlm = _section(config, "vlm")
    vlm_config = vlm_config_from_dict(vlm)
    ft = _section(config, "finetune")
    if ft.get("enabled", False):
        finetune_config_from_dict(ft, vlm_config)
    cons = _section(config, "consistency")
    _refuse_unknown(
        "consistency", cons, ("enabled", "runs", "temperature", "tasks", "max_cases", "methods")
    )
    _device(config)


def _synth_config(raw: Mapping[str, Any], kind):
    values = dict(raw)
    if "shape" in values:
        values["shape"] = tuple(values["shape"])
    return _dataclass_from(kind, values, "data.synthetic")


# ------------------------------------------------------------------------------ shared inputs
def load_cohort(run_dir: Path):
    """The cohort the ``data`` stage validated (headers re-read; voxel findings kept)."""
    from GliomaCompareLib.data.discovery import discover_cases

    info = json.loads((run_dir / "stages" / "data" / "cohort.json").read_text())
    cohort = discover_cases(info["data_dir"], info["convention"], validate=True, full=False)
    problems = {c["case_id"]: c["problems"] for c in info["cases"]}
    cases = tuple(
        c.with_findings(problems=[p for p in problems.get(c.case_id, []) if p not in c.problems])
        for c in cohort.cases
    )
    return replace(cohort, cases=cases)


def _splits(run_dir: Path):
    from GliomaCompareLib.data.splits import Splits

    return Splits.load(run_dir / SPLITS_FILE)


def _test_ids(ctx: StageContext) -> list[str]:
    cohort = load_cohort(ctx.run_dir)
    usable = {c.case_id for c in cohort.usable}
    return [c for c in _splits(ctx.run_dir).ids("test") if c in usable]


def _shard_dir(ctx: StageContext, *parts: str) -> Path:
    """Per-shard output folder of a per-case stage (one folder when not sharded)."""
    tag = "all" if ctx.shard.count == 1 else ctx.shard.tag
    return ctx.dir.joinpath(*parts, tag)


class _VlmProgress:
    """A tqdm bar fed by the VLM arm's progress events."""

    def __init__(self, desc: str):
        from tqdm.auto import tqdm

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


# ------------------------------------------------------------------------------ stages
def _stage_data(ctx: StageContext) -> dict:
    from GliomaCompareLib.data.discovery import discover_cases

    data = _section(ctx.config, "data")
    convention = data.get("convention", "brats2020")
    if data.get("synthetic"):
        from GliomaCompareLib.data.synthetic import SynthConfig, write_cohort

        synth = _synth_config(data["synthetic"], SynthConfig)
        data_dir = write_cohort(ctx.run_dir / "data", synth, jobs=int(data.get("jobs", 1)))
    else:
        data_dir = Path(data["root"]).expanduser()
    cohort = discover_cases(
        data_dir, convention, validate=True, full=True, jobs=int(data.get("jobs", 1))
    )
    for warning in cohort.warnings:
        ctx.logger.warning("data: %s", warning)
    for case in cohort.cases:
        if not case.usable:
            ctx.logger.warning("data: %s left out: %s", case.case_id, "; ".join(case.problems))
    if not cohort.usable:
        raise ValueError(f"data: no usable case in {cohort.data_dir}")
    atomic_write_json(
        ctx.dir / "cohort.json",
        {
            "data_dir": str(cohort.data_dir),
            "convention": cohort.convention.name,
            "synthetic": bool(data.get("synthetic")),
            "warnings": list(cohort.warnings),
            "cases": [c.to_dict() for c in cohort.cases],
        },
    )
    grades = [c.grade for c in cohort.usable]
    return {
        "data_dir": str(cohort.data_dir),
        "cases": len(cohort.cases),
        "usable": len(cohort.usable),
        "hgg": grades.count("HGG"),
        "lgg": grades.count("LGG"),
        "left_out": {c.case_id: list(c.problems) for c in cohort.cases if not c.usable},
    }


def _stage_split(ctx: StageContext) -> dict:
    from GliomaCompareLib.data.splits import Splits, make_splits

    cohort = load_cohort(ctx.run_dir)
    split = _section(ctx.config, "split")
    usable = {c.case_id: c.grade for c in cohort.usable}
    if split.get("file"):
        splits = Splits.load(split["file"])
        missing = sorted(set(splits.ids("all")) - set(usable))
        if missing:
            raise ValueError(
                f"split file {split['file']}: {len(missing)} cases are not usable cases of the "
                f"data (e.g. {', '.join(missing[:3])})"
            )
    else:
        fractions = tuple(split.get("fractions", (0.6, 0.2, 0.2)))
        splits = make_splits(usable, fractions, int(split.get("seed", ctx.config.get("seed", 0))))
    splits.save(ctx.run_dir / SPLITS_FILE)
    counts = splits.to_dict()["counts"]
    if not splits.test:
        raise ValueError("split: the test split is empty; use a larger cohort or other fractions")
    return {"hash": splits.hash, "counts": counts, "file": str(ctx.run_dir / SPLITS_FILE)}


def _cnn_sections(config: Mapping[str, Any]):
    from GliomaCompareLib.cnn.config import load_cnn_config

    cnn = _section(config, "cnn")
    return load_cnn_config({k: v for k, v in cnn.items() if k in ("seg", "cls")}), dict(
        cnn.get("weights") or {}
    )


def _cnn_enabled(config: Mapping[str, Any]) -> bool:
    return bool(_section(config, "cnn").get("enabled", True))


def _train_cnn(ctx: StageContext, task: str) -> dict:
    from GliomaCompareLib.cnn.train import train_classifier, train_segmenter

    cnn_config, weights = _cnn_sections(ctx.config)
    train = train_segmenter if task == "seg" else train_classifier
    config = cnn_config.seg if task == "seg" else cnn_config.cls
    folder = ctx.dir / "model"
    result = train(
        load_cohort(ctx.run_dir),
        folder,
        _splits(ctx.run_dir),
        config,
        device=_device(ctx.config),
        weights=weights.get(task),
        resume=not ctx.fresh,
        overwrite=ctx.fresh,
        progress=True,
    )
    baseline = None
    if task == "seg" and not weights.get(task) and config.train.epochs > 0:
        baseline = _package_untrained(ctx, config)
    elif task == "seg":  # given weights: no random-init baseline; drop one from an earlier run
        shutil.rmtree(ctx.dir / UNTRAINED_DIR, ignore_errors=True)
    return {
        "model_dir": str(folder),
        "model_id": _model_id(folder),
        "untrained_model_id": baseline,
        "best_epoch": getattr(result, "best_epoch", None),
        "best_metric": getattr(result, "best_metric", None),
        "weights": weights.get(task),
        "seconds": round(getattr(result, "seconds", 0.0) or 0.0, 2),
    }


UNTRAINED_DIR = "untrained"


def _package_untrained(ctx: StageContext, config) -> str | None:
    """The segmentation network as it was before training (same seed, so the same random
    initialisation), packaged as a model folder: the baseline that shows what training bought.
    Returns its model id."""
    from GliomaCompareLib.cnn.train import train_segmenter

    folder = ctx.dir / UNTRAINED_DIR
    if ctx.fresh or _model_id(folder) is None:
        train_segmenter(
            load_cohort(ctx.run_dir),
            folder,
            _splits(ctx.run_dir),
            replace(config, train=replace(config.train, epochs=0)),
            device=_device(ctx.config),
            overwrite=True,
            progress=False,
        )
    return _model_id(folder)


def _stage_cnn_train_seg(ctx: StageContext) -> dict:
    return _train_cnn(ctx, "seg")


def _stage_cnn_train_cls(ctx: StageContext) -> dict:
    return _train_cnn(ctx, "cls")


def _model_id(folder: Path) -> str | None:
    from GliomaCompareLib.cnn.checkpoint import load_model_info

    try:
        return load_model_info(folder).model_id
    except (OSError, ValueError):
        return None


def _stage_cnn_predict(ctx: StageContext) -> dict:
    from GliomaCompareLib.cnn.inference import load_classifier, load_segmenter, predict_cases

    cohort = load_cohort(ctx.run_dir)
    wanted = set(ctx.cases(_test_ids(ctx)))
    records = [c for c in cohort.cases if c.case_id in wanted]
    device = _device(ctx.config)
    segmenter = load_segmenter(
        ctx.stage_dir("cnn-train-seg") / "model", convention=cohort.convention, device=device
    )
    classifier = load_classifier(ctx.stage_dir("cnn-train-cls") / "model", device=device)

    def predict(folder: str, what: str, **models):
        result = predict_cases(
            records,
            _shard_dir(ctx, folder),
            convention=cohort.convention,
            skip_existing=not ctx.fresh,
            progress=True,
            **models,
        )
        for case_id, reason in result.failures:
            ctx.logger.warning("cnn-predict%s: %s failed: %s", what, case_id, reason)
        return result

    result = predict("pred", "", segmenter=segmenter, classifier=classifier)
    summary = {
        "cases": len(result.predictions),
        "failures": dict(result.failures),
        "seg_model_id": segmenter.model_id,
        "cls_model_id": classifier.model_id,
    }
    untrained = ctx.stage_dir("cnn-train-seg") / UNTRAINED_DIR
    if _model_id(untrained) is not None:
        # the same network before training, on the same patients: the baseline the trained
        # segmentation has to beat
        baseline = load_segmenter(untrained, convention=cohort.convention, device=device)
        predict("pred_untrained", " (untrained baseline)", segmenter=baseline)
        summary["untrained_seg_model_id"] = baseline.model_id
    else:  # no baseline (weights were given): none from an earlier run may be scored
        shutil.rmtree(_shard_dir(ctx, "pred_untrained"), ignore_errors=True)
    return summary


def _backend(config: Mapping[str, Any], adapter: str | None = None):
    from GliomaCompareLib.vlm.backend import make_backend

    vlm = _section(config, "vlm")
    device = vlm.get("device") or _device(config)
    kwargs = {
        "model": vlm.get("model"),
        "base_url": vlm.get("base_url"),
        "allow_remote": bool(vlm.get("allow_remote", False)),
        "adapter": adapter,
        "seed": int(vlm.get("seed", 0)),
        "device": None if device == "auto" else device,
        "load_in_4bit": bool(vlm.get("load_in_4bit", False)),
    }
    for key in ("concurrency", "timeout_s", "max_retries"):
        if key in vlm:
            kwargs[key] = vlm[key]
    return make_backend(str(vlm.get("backend", "tiny")), **kwargs)


def _run_vlm(ctx: StageContext, name: str, config, adapter: str | None, case_ids) -> dict:
    from GliomaCompareLib.vlm.pipeline import run_vlm

    backend = _backend(ctx.config, adapter)
    config = replace(config, cache_dir=str(ctx.dir / "cache"))
    bar = _VlmProgress(name)
    try:
        result = run_vlm(
            load_cohort(ctx.run_dir),
            backend,
            config,
            _shard_dir(ctx, "out"),
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


def _stage_vlm_base(ctx: StageContext) -> dict:
    config = vlm_config_from_dict(_section(ctx.config, "vlm"))
    return _run_vlm(ctx, "vlm-base", config, None, ctx.cases(_test_ids(ctx)))


def _finetune_enabled(config: Mapping[str, Any]) -> bool:
    return bool(_section(config, "finetune").get("enabled", False))


def _finetune_tasks(config: Mapping[str, Any]) -> tuple[str, ...]:
    ft = _section(config, "finetune")
    vlm_tasks = vlm_config_from_dict(_section(config, "vlm")).tasks
    tasks = ft.get("tasks") or vlm_tasks
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",")]
    return tuple(t for t in tasks if t in vlm_tasks)


def _finetune_base(config: Mapping[str, Any]) -> str:
    ft = _section(config, "finetune")
    vlm = _section(config, "vlm")
    if ft.get("base"):
        return str(ft["base"])
    backend = vlm.get("backend", "tiny")
    if backend == "tiny":
        return "tiny"
    if backend == "transformers":
        from GliomaCompareLib.vlm.backend import DEFAULT_MODEL_ID

        return str(vlm.get("model") or DEFAULT_MODEL_ID)
    raise ValueError(
        "run config: finetune: the openai backend cannot be fine-tuned here; set finetune.base "
        "to a local model (the adapter is then served, e.g. with vLLM --lora-modules)"
    )


def _stage_vlm_finetune(ctx: StageContext) -> dict:
    from GliomaCompareLib.vlm.finetune import finetune

    vlm_config = vlm_config_from_dict(_section(ctx.config, "vlm"))
    ft_config = finetune_config_from_dict(_section(ctx.config, "finetune"), vlm_config)
    if "device" not in _section(ctx.config, "finetune"):
        ft_config = replace(ft_config, device=_device(ctx.config))
    result = finetune(
        load_cohort(ctx.run_dir),
        _finetune_tasks(ctx.config),
        _finetune_base(ctx.config),
        ctx.dir / "run",
        ft_config,
        splits=_splits(ctx.run_dir),
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


def _stage_vlm_finetuned(ctx: StageContext) -> dict:
    vlm = _section(ctx.config, "vlm")
    config = vlm_config_from_dict(vlm)
    config = replace(config, tasks=_finetune_tasks(ctx.config))
    adapter = str(ctx.stage_dir("vlm-finetune") / "run" / "adapter")
    return _run_vlm(ctx, "vlm-finetuned", config, adapter, ctx.cases(_test_ids(ctx)))


def _consistency_enabled(config: Mapping[str, Any]) -> bool:
    return bool(_section(config, "consistency").get("enabled", False))


def _stage_consistency(ctx: StageContext) -> dict:
    cons = _section(ctx.config, "consistency")
    base = vlm_config_from_dict(_section(ctx.config, "vlm"))
    tasks = cons.get("tasks") or base.tasks
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",")]
    from GliomaCompareLib.vlm.backend import DecodingConfig

    decoding = DecodingConfig.from_temperature(
        float(cons.get("temperature", 0.7)),
        top_p=base.decoding.top_p,
        max_new_tokens=base.decoding.max_new_tokens,
        seed=base.decoding.seed,
    )
    config = replace(base, tasks=tuple(tasks), runs=int(cons.get("runs", 3)), decoding=decoding)
    test_ids = _test_ids(ctx)
    if cons.get("max_cases"):
        test_ids = test_ids[: int(cons["max_cases"])]
    out = {}
    methods = cons.get("methods") or ["vlm_base"]
    for method in methods:
        if method == "vlm_finetuned":
            if not _finetune_enabled(ctx.config):
                continue
            adapter = str(ctx.stage_dir("vlm-finetune") / "run" / "adapter")
            cfg = replace(
                config, tasks=tuple(t for t in config.tasks if t in _finetune_tasks(ctx.config))
            )
        elif method == "vlm_base":
            adapter, cfg = None, config
        else:
            raise ValueError(f"run config: consistency.methods: unknown method {method!r}")
        sub = replace(ctx, dir=ctx.dir / method)
        out[method] = _run_vlm(sub, f"consistency {method}", cfg, adapter, ctx.cases(test_ids))
    return out


def _stage_metrics(ctx: StageContext) -> dict:
    from GliomaCompareLib.pipeline.aggregate import aggregate_run

    return aggregate_run(ctx.run_dir, ctx.config)


def _stage_report(ctx: StageContext) -> dict:
    from GliomaCompareLib.report import build_report

    path = build_report(ctx.run_dir)
    return {"report": str(path)}


def build_stages(config: Mapping[str, Any]) -> list[Stage]:
    """The stages of a comparison run, in order."""
    cnn_on = _cnn_enabled
    return [
        Stage("data", _stage_data, (), ("data",), description="find and validate cases"),
        Stage("split", _stage_split, ("data",), ("split", "seed"), description="patient split"),
        Stage(
            "cnn-train-seg", _stage_cnn_train_seg, ("split",),
            ("cnn.seg", "cnn.weights.seg", "device"),
            description="train the 3D segmentation CNN", enabled=cnn_on,
        ),
        Stage(
            "cnn-train-cls", _stage_cnn_train_cls, ("split",),
            ("cnn.cls", "cnn.weights.cls", "device"),
            description="train the 3D LGG/HGG classifier", enabled=cnn_on,
        ),
        Stage(
            "cnn-predict", _stage_cnn_predict, ("cnn-train-seg", "cnn-train-cls"), ("device",),
            per_case=True,
            description="CNN segmentation and grade of the test patients", enabled=cnn_on,
        ),
        Stage(
            "vlm-base", _stage_vlm_base, ("split",), ("vlm",), per_case=True,
            description="base VLM on the test slices",
        ),
        Stage(
            "vlm-finetune", _stage_vlm_finetune, ("split",), ("vlm", "finetune", "device"),
            description="LoRA fine-tuning on the training patients", enabled=_finetune_enabled,
        ),
        Stage(
            "vlm-finetuned", _stage_vlm_finetuned, ("vlm-finetune",), ("vlm", "finetune"),
            per_case=True, description="fine-tuned VLM on the test slices",
            enabled=_finetune_enabled,
        ),
        # not sharded: consistency statistics need every repeat of a case in one table
        Stage(
            "consistency", _stage_consistency, ("vlm-base", "vlm-finetune"),
            ("vlm", "consistency", "finetune"),
            description="repeated identical queries", enabled=_consistency_enabled,
        ),
        Stage(
            "metrics", _stage_metrics,
            ("cnn-predict", "vlm-base", "vlm-finetuned", "consistency"),
            ("metrics",), description="tables and Slicer files",
        ),
        Stage("report", _stage_report, ("metrics",), ("report",), description="report.html"),
    ]  # fmt: skip


# ------------------------------------------------------------------------------ the run
@dataclass(frozen=True)
class RunOutcome:
    """What :func:`run_comparison` returns."""

    run_dir: Path
    summaries: dict[str, dict]
    seconds: float
    report: Path | None


class _Display:
    """One line per stage on stderr: position, name, state, elapsed."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.t0 = time.monotonic()
        self.stage_t0 = self.t0

    def __call__(self, position: int, total: int, stage: Stage, state: str) -> None:
        now = time.monotonic()
        elapsed = _clock(now - self.t0)
        if state == "start":
            self.stage_t0 = now
            text = f"running: {stage.description}"
        elif state == "done":
            text = f"done in {_clock(now - self.stage_t0)}"
        elif state == "skip":
            text = "already done (skipped)"
        elif state == "disabled":
            text = "not enabled in the config"
        else:
            text = "waiting for other shards"
        print(f"[{position}/{total} {elapsed}] {stage.name}: {text}", file=self.stream, flush=True)


def _clock(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60:d}:{seconds % 60:02d}"


def _attach_log(run_dir: Path) -> logging.Handler:
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / LOG_FILE)
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
        for other in root.handlers:
            if other is not handler and other.level == logging.NOTSET:
                other.setLevel(logging.WARNING)
    return handler


def _stage_summaries(run_dir: Path) -> dict[str, dict]:
    """Each finished stage's summary and timing, read from its completion marker."""
    out = {}
    for name in STAGE_NAMES:
        done = run_dir / "stages" / name / "done.json"
        if done.is_file():
            raw = json.loads(done.read_text())
            out[name] = {**raw.get("summary", {}), "_seconds": raw.get("seconds")}
    return out


def _write_manifest(run_dir: Path, config, config_path, device, shard: Shard) -> None:
    """(Re)write ``manifest.json`` from the config and the finished stages' summaries."""
    from GliomaCompareLib.pipeline.manifest import build_manifest

    summaries = _stage_summaries(run_dir)
    models: dict[str, Any] = {}
    for task in ("seg", "cls"):
        summary = summaries.get(f"cnn-train-{task}") or {}
        if summary.get("model_id"):
            models[f"cnn_{task}"] = {k: v for k, v in summary.items() if not k.startswith("_")}
    for stage, key in (("vlm-base", "vlm_base"), ("vlm-finetuned", "vlm_finetuned")):
        summary = summaries.get(stage) or {}
        if summary.get("identity"):
            models[key] = {
                "model_label": summary.get("model_label"),
                "identity": summary.get("identity"),
                "adapter": summary.get("adapter"),
            }
    ft = summaries.get("vlm-finetune") or {}
    if ft.get("adapter_dir"):
        models["vlm_adapter"] = {k: v for k, v in ft.items() if not k.startswith("_")}
    stages = {name: {"seconds": s.get("_seconds")} for name, s in summaries.items()}
    manifest = build_manifest(
        config, config_path, device=device, models=models, stages=stages,
        shard=f"{shard.index}/{shard.count}",
    )  # fmt: skip
    atomic_write_json(run_dir / "manifest.json", manifest)


def run_comparison(
    config: Mapping[str, Any],
    config_path: str | Path,
    out: str | Path,
    *,
    force: Sequence[str] = (),
    shard: Shard | None = None,
    only: Sequence[str] | None = None,
    display=None,
) -> RunOutcome:
    """Run (or resume) the whole comparison into ``out``.

    Raises:
        ConfigChangedError: finished work in ``out`` was made with another config.
        ValueError: a bad config (naming the key) or an unusable cohort.
    """
    from GliomaCompareLib.pipeline.manifest import device_info

    validate_config(config)
    run_dir = Path(out)
    shard = shard or Shard()
    handler = _attach_log(run_dir)
    t0 = time.monotonic()
    try:
        device = device_info(_device(config))
        log.info(
            "run %s into %s (shard %s/%s)", config.get("name"), run_dir, shard.index, shard.count
        )
        show = display or _Display()

        def on_stage(position, total, stage, state):
            show(position, total, stage, state)
            if state in ("done", "skip") or (state == "start" and stage.name == "report"):
                # the manifest says what has run so far; the report reads it
                _write_manifest(run_dir, config, config_path, device, shard)

        runner = StageRunner(
            run_dir, build_stages(config), config, shard=shard, on_stage=on_stage, logger=log
        )
        _write_manifest(run_dir, config, config_path, device, shard)
        summaries = runner.run(force=force, only=only)
        _write_manifest(run_dir, config, config_path, device, shard)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    report = run_dir / "report.html"
    return RunOutcome(
        run_dir, summaries, time.monotonic() - t0, report if report.is_file() else None
    )
