"""The comparison run: ``gliomacompare run CONFIG --out RUN``.

Stages (each in ``RUN/stages/<name>/``, one module each in :mod:`GliomaCompareLib.pipeline.stages`;
the runner that skips, resumes and shards them: :mod:`GliomaCompareLib.pipeline.runner`)::

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
- ``consistency`` (not sharded: a case's repeats form one table): repeated identical queries
  at a set temperature.
- With several VLMs (``vlms:``), ``vlm-base``, ``vlm-finetune`` and ``vlm-finetuned`` are made once
  per VLM, ``vlm-base-<name>`` ... (:func:`build_stages`), in the order the config lists them.
- ``metrics``: every table of :mod:`GliomaCompareLib.runlayout`, and ``cases/<id>/``.
- ``report``: ``report.html``.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from GliomaCompareLib.fileio import atomic_write_json
from GliomaCompareLib.pipeline.cohort import load_cohort
from GliomaCompareLib.pipeline.config import (
    RunConfig,
    finetune_config_from_dict,
    parse_run_config,
    vlm_config_from_dict,
)
from GliomaCompareLib.pipeline.manifest import build_manifest, device_info
from GliomaCompareLib.pipeline.runner import Shard, Stage, StageRunner, read_marker
from GliomaCompareLib.pipeline.stages.cnn_predict import CNN_PREDICT
from GliomaCompareLib.pipeline.stages.cnn_train import CNN_TRAIN_CLS, CNN_TRAIN_SEG
from GliomaCompareLib.pipeline.stages.data import DATA
from GliomaCompareLib.pipeline.stages.metrics import METRICS
from GliomaCompareLib.pipeline.stages.report import REPORT
from GliomaCompareLib.pipeline.stages.sensitivity import SLICE_SENSITIVITY, sensitivity_stage
from GliomaCompareLib.pipeline.stages.split import SPLIT
from GliomaCompareLib.pipeline.stages.vlm_finetune import VLM_FINETUNE
from GliomaCompareLib.pipeline.stages.vlm_infer import (
    CONSISTENCY,
    VLM_BASE,
    VLM_FINETUNED,
    consistency_stage,
    vlm_stages,
)
from GliomaCompareLib.runlayout import LOG_FILE, MANIFEST_FILE, REPORT_FILE

__all__ = [
    "STAGES",
    "STAGE_NAMES",
    "RunOutcome",
    "StageDisplay",
    "build_stages",
    "finetune_config_from_dict",
    "load_cohort",
    "run_comparison",
    "stage_names",
    "vlm_config_from_dict",
]

log = logging.getLogger("gliomacompare.run")

#: The stages of a comparison run, in order (dependencies first).
STAGES: tuple[Stage, ...] = (
    # step 1: the cohort and the patient split
    DATA,
    SPLIT,
    # step 2: the CNN arm
    CNN_TRAIN_SEG,
    CNN_TRAIN_CLS,
    CNN_PREDICT,
    # step 3: the VLM arm, base and fine-tuned, and its repeatability
    VLM_BASE,
    VLM_FINETUNE,
    VLM_FINETUNED,
    CONSISTENCY,
    SLICE_SENSITIVITY,
    # step 4: the tables, the Slicer files and the report
    METRICS,
    REPORT,
)

STAGE_NAMES = tuple(stage.name for stage in STAGES)


def build_stages(config: RunConfig | None = None) -> list[Stage]:
    """The stages of a comparison run, in order. A ``vlm:`` config runs :data:`STAGES` (a stage
    that is off in ``config`` is skipped by its own ``enabled``); a ``vlms:`` config runs each
    VLM's own stages (see :func:`~.stages.vlm_infer.vlm_stages`) in place of the VLM ones."""
    entries = config.vlm_entries() if config is not None else ()
    if not entries or not entries[0].name:
        return list(STAGES)
    per_vlm = [stage for entry in entries for stage in vlm_stages(entry)]
    answers = [s.name for s in per_vlm if not s.name.startswith("vlm-finetune-")]
    metrics = replace(
        METRICS, depends=("cnn-predict", *answers, "consistency", "slice-sensitivity")
    )
    head = [s for s in STAGES if s.name in ("data", "split") or s.name.startswith("cnn-")]
    tail = [consistency_stage(entries), sensitivity_stage(entries[0]), metrics, REPORT]
    return [*head, *per_vlm, *tail]


def stage_names(config: RunConfig | None = None) -> tuple[str, ...]:
    """The names of :func:`build_stages` (``config``'s VLMs' stages included)."""
    return tuple(stage.name for stage in build_stages(config))


# ------------------------------------------------------------------------------ the run
@dataclass(frozen=True)
class RunOutcome:
    """What :func:`run_comparison` returns."""

    run_dir: Path
    summaries: dict[str, dict]
    seconds: float
    report: Path | None


class StageDisplay:
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


def _stage_summaries(run_dir: Path, names: Sequence[str] = STAGE_NAMES) -> dict[str, dict]:
    """Each finished stage's summary and timing, read from its completion marker."""
    out = {}
    for name in names:
        raw = read_marker(run_dir / "stages" / name / "done.json", log)
        if raw is not None:
            summary = raw.get("summary")
            out[name] = {**(summary if isinstance(summary, dict) else {}),
                         "_seconds": raw.get("seconds")}  # fmt: skip
    return out


def _write_manifest(run_dir: Path, config: RunConfig, config_path, device, shard: Shard) -> None:
    """(Re)write ``manifest.json`` from the raw config and the finished stages' summaries
    (VLM models under their method ids, adapters under ``vlm_adapter`` or
    ``vlm_adapter-<name>``)."""
    summaries = _stage_summaries(run_dir, stage_names(config))
    models: dict[str, Any] = {}
    for task in ("seg", "cls"):
        summary = summaries.get(f"cnn-train-{task}") or {}
        if summary.get("model_id"):
            models[f"cnn_{task}"] = {k: v for k, v in summary.items() if not k.startswith("_")}
    for entry in config.vlm_entries():
        for stage, key in ((entry.stage("vlm-base"), entry.base_method),
                           (entry.stage("vlm-finetuned"), entry.finetuned_method)):  # fmt: skip
            summary = summaries.get(stage) or {}
            if summary.get("identity"):
                models[key] = {
                    "model_label": summary.get("model_label"),
                    "identity": summary.get("identity"),
                    "adapter": summary.get("adapter"),
                }
        ft = summaries.get(entry.stage("vlm-finetune")) or {}
        if ft.get("adapter_dir"):
            key = f"vlm_adapter-{entry.name}" if entry.name else "vlm_adapter"
            models[key] = {k: v for k, v in ft.items() if not k.startswith("_")}
    stages = {name: {"seconds": s.get("_seconds")} for name, s in summaries.items()}
    manifest = build_manifest(
        config.raw, config_path, device=device, models=models, stages=stages,
        shard=f"{shard.index}/{shard.count}",
    )  # fmt: skip
    atomic_write_json(run_dir / MANIFEST_FILE, manifest)


def run_comparison(
    config: RunConfig | Mapping[str, Any],
    config_path: str | Path,
    out: str | Path,
    *,
    force: Sequence[str] = (),
    shard: Shard | None = None,
    only: Sequence[str] | None = None,
    display=None,
) -> RunOutcome:
    """Run (or resume) the whole comparison into ``out``.

    Args:
        config: the typed config, or the mapping :func:`~.config.load_run_config` read (it is
            parsed here).

    Raises:
        ConfigChangedError: finished work in ``out`` was made with another config.
        ValueError: a bad config (naming the key) or an unusable cohort.
    """
    if not isinstance(config, RunConfig):
        config = parse_run_config(config)
    raw = config.raw
    run_dir = Path(out)
    shard = shard or Shard()
    handler = _attach_log(run_dir)
    t0 = time.monotonic()
    try:
        device = device_info(config.device)
        log.info("run %s into %s (shard %s/%s)", raw.get("name"), run_dir, shard.index, shard.count)
        show = display or StageDisplay()

        def on_stage(position, total, stage, state):
            show(position, total, stage, state)
            if state in ("done", "skip") or (state == "start" and stage.name == "report"):
                # the manifest says what has run so far; the report reads it
                _write_manifest(run_dir, config, config_path, device, shard)

        runner = StageRunner(
            run_dir, build_stages(config), config, raw=raw, shard=shard, on_stage=on_stage,
            logger=log,
        )  # fmt: skip
        _write_manifest(run_dir, config, config_path, device, shard)
        summaries = runner.run(force=force, only=only)
        _write_manifest(run_dir, config, config_path, device, shard)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    report = run_dir / REPORT_FILE
    return RunOutcome(
        run_dir, summaries, time.monotonic() - t0, report if report.is_file() else None
    )
