"""LoRA / QLoRA fine-tuning of the VLM on the grade, point, box and polygon tasks.

:func:`finetune` is the Python API (``gliomacompare finetune-vlm`` and the comparison run's
"VLM fine-tune" stage call it). What one call does:

- **Data**: the split's ``train`` patients give the training examples and its ``val`` patients
  the validation examples; ``test`` patients are never read. Each example is a slice chosen by
  the VLM arm's slice rule, the prompt inference sends, and the exact JSON answer the parser
  expects, computed from the ground-truth mask (:mod:`GliomaCompareLib.vlm.finetune_data`).
  Several tasks may be trained into one adapter. Built examples are cached in ``OUT/data/``.
- **Model**: the base model (``tiny``, a local folder or a cached hub id; nothing is
  downloaded) with LoRA adapters (peft) on the language model's attention and MLP projections
  (``target_modules`` within ``target_scope``); with ``load_in_4bit`` the frozen base is NF4
  4-bit (QLoRA, bitsandbytes, CUDA only). The vision encoder is never adapted by default.
- **Loss**: cross-entropy on the answer tokens and the end-of-turn token only (the collator
  masks prompt, padding and image token with -100), normalised by the number of answer tokens
  in the whole optimizer step across micro-batches and processes, so one process with batch
  ``2B``, one with batch ``B`` and 2 accumulation steps, and two processes with batch ``B``
  compute the same gradient.
- **Grade balance** (``balance_grades``): ``oversample`` repeats the minority grade's slices
  (whole copies, then a random remainder) until both grades have as many slices per epoch;
  ``weighted`` draws the epoch's grade slices with replacement with probability inversely
  proportional to their grade's count. The base model answers HGG to nearly everything because
  HGG dominates BraTS (79.4%); this is the remedy the study's fine-tuning suggests.
- **Each epoch** (every ``eval_every`` epochs): validation loss (same masking) and task
  metrics from greedy answers to the validation slices, parsed and scored exactly as the VLM arm
  does (grade: slice accuracy, balanced accuracy, sensitivity, specificity, AUC from P(HGG),
  patient-level majority-vote accuracy; point: inside rate, distance to the tumour centre, disc
  Dice; box / polygon: Dice, HD95; every task: answer-status rates and exact-answer rate).
  The best validation (``monitor``: ``val_loss`` or the tasks' ``task`` metric) keeps its
  adapter in ``OUT/adapter``; ``patience`` validations without improvement stop the run.
- **Resumable**: a checkpoint (adapter, optimizer, scheduler, every process's RNG state,
  position in the epoch) is written atomically at the end of every epoch and every
  ``checkpoint_every`` optimizer steps; the order of examples in an epoch depends only on
  ``(seed, epoch)``, so a resumed run continues exactly where it stopped. Re-running a finished
  run returns its result without training.
- **Scale**: the same code runs under ``torchrun --nproc_per_node N`` or ``accelerate launch``
  (PyTorch DDP; NCCL on CUDA, gloo on CPU); each process takes its share of every optimizer
  step; only process 0 writes files and reports progress.

Outputs in ``OUT``:

- ``adapter/``: the fine-tuned adapter (``adapter_config.json``, ``adapter_model.safetensors``)
  and :data:`~GliomaCompareLib.vlm.hf_backend.ADAPTER_META_FILE` (base model id and revision,
  task(s), prompt template hash(es), coordinate system, polygon K, split hash, training settings,
  metrics, history). Use it with ``gliomacompare vlm --adapter OUT/adapter``; the VLM arm
  refuses it on another base model or for another task.
- ``finetune.json``: the run's manifest (status ``running`` / ``finished``), ``history.csv``
  (one row per epoch), ``val_answers.jsonl`` (the latest validation answers), ``splits.json``
  (when the split was made here), ``checkpoints/``, ``data/``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from GliomaCompareLib.data.discovery import Cohort, discover_cases
from GliomaCompareLib.data.slices import SliceRule, WindowSpec
from GliomaCompareLib.data.splits import Splits, load_or_make_splits
from GliomaCompareLib.fileio import atomic_write_text, jsonable
from GliomaCompareLib.geometry import COORDINATE_SYSTEMS
from GliomaCompareLib.vlm.finetune_data import (
    IGNORE_INDEX,
    POINT_TARGETS,
    ExampleSet,
    ExampleSettings,
    FinetuneCollator,
    FinetuneExample,
    build_examples,
    load_example_set,
    save_example_set,
)
from GliomaCompareLib.vlm.finetune_eval import (
    monitor_value,
    score_answer,
    summarize_validation,
)
from GliomaCompareLib.vlm.hf_backend import ADAPTER_META_FILE, TransformersBackend, load_model
from GliomaCompareLib.vlm.tasks import TASK_NAMES, load_tasks, parse_task_list
from GliomaCompareLib.vlm.tiny import TINY_MODEL_LABEL, build_tiny_model, tiny_model_id
from GliomaCompareLib.vlm.types import DecodingConfig, Query

__all__ = [
    "BALANCE_MODES",
    "DEFAULT_TARGET_MODULES",
    "MONITORS",
    "BaseModelLoader",
    "DefaultLoader",
    "EpochRecord",
    "FinetuneConfig",
    "FinetuneProgress",
    "FinetuneResult",
    "epoch_order",
    "finetune",
    "resolve_splits",
]

log = logging.getLogger(__name__)

#: LoRA targets: the Llama language model's attention (self and cross) and MLP projections.
DEFAULT_TARGET_MODULES: tuple[str, ...] = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)
BALANCE_MODES: tuple[str, ...] = ("none", "oversample", "weighted")
MONITORS: tuple[str, ...] = ("val_loss", "task")
SCHEDULERS: tuple[str, ...] = ("linear", "cosine", "constant")
MANIFEST_FILE = "finetune.json"
ADAPTER_DIR = "adapter"
_SMALL_MODEL = 10_000_000  # parameters; below this, one CPU thread is faster (see hf_backend)
#: Settings that do not change what is trained (ignored when checking a resumed run).
_NOT_RESULT_FIELDS = ("jobs", "eval_batch_size")


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class FinetuneConfig:
    """Every setting of a fine-tuning run (all of it goes in the adapter's JSON).

    LoRA:
        rank, alpha, dropout: LoRA rank ``r``, scaling ``alpha`` (update scaled by
            ``alpha / r``) and dropout on the LoRA input.
        target_modules: module names adapted (``q_proj`` ...); see ``target_scope``.
        target_scope: only modules under a module of this name are adapted
            (``language_model``: the text decoder, not the vision encoder); None: anywhere.
        extra_target_modules: module names adapted wherever they are, outside the scope too
            (e.g. ``lm_head``: the tiny random model learns much faster with it, because its
            frozen random output layer is too weak to make confident predictions).
    Optimisation:
        epochs: passes over the training examples.
        batch_size: examples per process per micro-batch.
        grad_accum: micro-batches per optimizer step (global batch = batch_size x grad_accum x
            processes).
        lr: peak learning rate (AdamW); 2e-4 suits LoRA on Llama 3.2 11B; the tiny random
            model needs about 3e-3.
        weight_decay: AdamW weight decay.
        warmup_ratio: share of the optimizer steps with linear warm-up.
        scheduler: ``linear`` (decay to 0), ``cosine`` or ``constant`` after warm-up.
        max_grad_norm: gradient clipping (None: none).
        seed: LoRA initialisation, example order, dropout.
        balance_grades: ``none``, ``oversample`` or ``weighted`` (grade examples only).
    Validation and early stopping:
        eval_every: validate every N epochs (and after the last).
        patience: validations without improvement before stopping (None: never stop early).
        min_delta: smallest change that counts as an improvement.
        monitor: ``val_loss`` (lower is better) or ``task`` (mean of the tasks'
            :data:`~GliomaCompareLib.vlm.finetune_eval.PRIMARY_METRICS`, higher is better).
        max_val_slices: at most this many validation slices per task are answered by greedy
            decoding for the task metrics (evenly spread; None: all). The loss uses all.
        eval_batch_size: answers generated per call.
        max_new_tokens: longest validation answer (None: the longest target + 16 tokens).
        point_radius_mm: disc radius giving point answers a Dice (as the VLM arm).
    Data (as the VLM arm asks, so the adapter is trained on what it will be asked):
        slice_rule, window, slices_per_case: slice selection (``slices_per_case`` overrides
            ``slice_rule.max_slices``).
        coordinate_system: ``pixel``, ``normalized`` or ``per_mille``.
        max_vertices: polygon K (None: the prompts' default).
        point_target: ``centroid`` (the VLM arm's target) or ``inside``.
        prompts_dir: prompts folder (None: ``Resources/prompts``).
    Model and machine:
        device: ``auto`` (CUDA when available), ``cuda``, ``cuda:N`` (one process) or ``cpu``;
            under ``torchrun`` each process uses the GPU of its ``LOCAL_RANK``.
        load_in_4bit: QLoRA: NF4 4-bit frozen base (CUDA and bitsandbytes only).
        gradient_checkpointing: trade compute for activation memory (large models).
        tiny_seed: weight seed of the ``tiny`` base model.
        checkpoint_every: also checkpoint every N optimizer steps (None: at epoch ends only).
        keep_checkpoints: checkpoints kept (the newest).
        jobs: processes loading cases.
    """

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES
    target_scope: str | None = "language_model"
    extra_target_modules: tuple[str, ...] = ()
    epochs: int = 3
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    scheduler: str = "linear"
    max_grad_norm: float | None = 1.0
    seed: int = 0
    balance_grades: str = "none"
    eval_every: int = 1
    patience: int | None = 3
    min_delta: float = 0.0
    monitor: str = "val_loss"
    max_val_slices: int | None = None
    eval_batch_size: int = 8
    max_new_tokens: int | None = None
    point_radius_mm: float = 10.0
    slice_rule: SliceRule = field(default_factory=SliceRule)
    window: WindowSpec = field(default_factory=WindowSpec)
    slices_per_case: int | None = None
    coordinate_system: str = "pixel"
    max_vertices: int | None = None
    point_target: str = "centroid"
    prompts_dir: str | None = None
    device: str = "auto"
    load_in_4bit: bool = False
    gradient_checkpointing: bool = False
    tiny_seed: int = 0
    checkpoint_every: int | None = None
    keep_checkpoints: int = 1
    jobs: int = 1

    def __post_init__(self):
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        object.__setattr__(self, "extra_target_modules", tuple(self.extra_target_modules))
        problems = []
        positive_ints = ("rank", "epochs", "batch_size", "grad_accum", "eval_every")
        for name in (*positive_ints, "eval_batch_size", "keep_checkpoints", "jobs"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_val_slices", "max_new_tokens", "slices_per_case", "checkpoint_every"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                problems.append(f"{name} must be >= 1 or None, got {value}")
        if self.patience is not None and self.patience < 1:
            problems.append(f"patience must be >= 1 or None, got {self.patience}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            problems.append(f"lr must be > 0, got {self.lr}")
        if not self.alpha > 0:
            problems.append(f"alpha must be > 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0 <= self.warmup_ratio < 1:
            problems.append(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.weight_decay < 0:
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            problems.append(f"max_grad_norm must be > 0 or None, got {self.max_grad_norm}")
        if self.min_delta < 0:
            problems.append(f"min_delta must be >= 0, got {self.min_delta}")
        if not self.point_radius_mm > 0:
            problems.append(f"point_radius_mm must be > 0, got {self.point_radius_mm}")
        choices = {
            "scheduler": SCHEDULERS,
            "balance_grades": BALANCE_MODES,
            "monitor": MONITORS,
            "coordinate_system": COORDINATE_SYSTEMS,
            "point_target": POINT_TARGETS,
        }
        device = str(self.device)
        if device not in ("auto", "cuda", "cpu") and not (
            device.startswith("cuda:") and device[5:].isdigit()
        ):
            problems.append(f"device {device!r}: use auto, cuda, cuda:N or cpu")
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                problems.append(f"{name} {getattr(self, name)!r}: use one of {', '.join(allowed)}")
        names = (*self.target_modules, *self.extra_target_modules)
        if not self.target_modules or not all(
            isinstance(m, str) and m.replace("_", "").isalnum() for m in names
        ):
            problems.append(
                f"target_modules {list(names)}: give module names such as q_proj or lm_head"
            )
        if self.target_scope is not None and not self.target_scope.replace("_", "").isalnum():
            problems.append(f"target_scope {self.target_scope!r}: give a module name")
        if self.max_vertices is not None and self.max_vertices < 4:
            problems.append(
                f"max_vertices must be >= 4 for polygon targets, got {self.max_vertices}"
            )
        if problems:
            raise ValueError("Fine-tuning settings: " + "; ".join(problems))

    @property
    def rule(self) -> SliceRule:
        """The slice rule with ``slices_per_case`` applied."""
        if self.slices_per_case is None:
            return self.slice_rule
        return replace(self.slice_rule, max_slices=self.slices_per_case)

    def example_settings(self, *, keep_masks: bool = False) -> ExampleSettings:
        return ExampleSettings(
            slice_rule=self.rule,
            window=self.window,
            coordinate_system=self.coordinate_system,
            max_vertices=self.max_vertices,
            point_target=self.point_target,
            prompts_dir=self.prompts_dir,
            keep_masks=keep_masks,
        )

    def target_regex(self) -> str:
        """The peft ``target_modules`` regular expression (full match on module names)."""
        names = "|".join(sorted(set(self.target_modules)))
        pattern = rf"(?:.*\.)?(?:{names})"
        if self.target_scope:
            pattern = rf"(?:.*\.)?{self.target_scope}\..*\.(?:{names})"
        if self.extra_target_modules:
            extra = "|".join(sorted(set(self.extra_target_modules)))
            pattern = rf"(?:{pattern})|(?:.*\.)?(?:{extra})"
        return pattern

    def to_dict(self) -> dict:
        data = asdict(self)
        data["target_modules"] = list(self.target_modules)
        data["extra_target_modules"] = list(self.extra_target_modules)
        data["slice_rule"] = self.slice_rule.to_dict()
        data["window"] = self.window.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> FinetuneConfig:
        """Inverse of :meth:`to_dict` (unknown keys are refused, naming them)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown fine-tuning settings: {', '.join(unknown)}")
        values = dict(data)
        if isinstance(values.get("slice_rule"), dict):
            values["slice_rule"] = SliceRule(**values["slice_rule"])
        if isinstance(values.get("window"), dict):
            values["window"] = WindowSpec(**values["window"])
        for key in ("target_modules", "extra_target_modules"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


@dataclass(frozen=True)
class EpochRecord:
    """One finished epoch.

    Attributes:
        epoch: 1-based.
        global_step: optimizer steps done by its end.
        train_loss: mean cross-entropy per answer token over the epoch (nats).
        val_loss: the same on the validation examples, or None (not validated this epoch, or
            no validation examples).
        metrics: task -> metric name -> value (see
            :func:`~GliomaCompareLib.vlm.finetune_eval.summarize_validation`); empty when not
            validated.
        monitor_value: the value compared for early stopping, or None.
        improved: this validation was the best so far (its adapter is ``OUT/adapter``).
        lr: learning rate at the end of the epoch.
        seconds: wall time of the epoch including validation.
        examples: training examples seen (all processes).
    """

    epoch: int
    global_step: int
    train_loss: float
    val_loss: float | None
    metrics: dict[str, dict[str, Any]]
    monitor_value: float | None
    improved: bool
    lr: float
    seconds: float
    examples: int

    def to_dict(self) -> dict:
        return jsonable(asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> EpochRecord:
        return cls(**{f.name: data.get(f.name) for f in fields(cls)})


@dataclass(frozen=True)
class FinetuneProgress:
    """Progress, reported by process 0 after every optimizer step and validation.

    Attributes:
        phase: ``train``, ``validate``, ``epoch`` (an epoch ended; ``record`` is set) or
            ``done``.
        epoch, epochs: current epoch (1-based) and total.
        global_step, total_steps: optimizer steps done and planned.
        loss: mean training loss of the current epoch so far (nats per answer token).
        lr: current learning rate.
        record: the finished epoch (phase ``epoch``).
    """

    phase: str
    epoch: int
    epochs: int
    global_step: int
    total_steps: int
    loss: float | None = None
    lr: float | None = None
    record: EpochRecord | None = None


@dataclass(frozen=True)
class FinetuneResult:
    """What :func:`finetune` returns.

    Attributes:
        out_dir: the run folder.
        adapter_dir: the fine-tuned adapter (``OUT/adapter``), for ``--adapter``.
        tasks: tasks trained.
        base_model: the base model's id (what the adapter records).
        model_label: the base model's label (``tiny random-weight model`` for the tiny model).
        history: one :class:`EpochRecord` per epoch run.
        best_epoch: epoch whose adapter was kept.
        best_metrics: its validation metrics (task -> name -> value).
        best_val_loss: its validation loss (None without validation).
        stop_reason: ``epochs`` (all done), ``early_stopping`` or ``no_validation``.
        split_hash: hash of the split used.
        train_cases, val_cases: patients whose slices were used.
        n_train, n_val: examples.
        skipped: case (or slice) -> why it was left out.
        world_size: processes that trained.
        resumed: the run continued from a checkpoint (or was already finished).
        seconds: wall time of this call.
    """

    out_dir: Path
    adapter_dir: Path
    tasks: tuple[str, ...]
    base_model: str
    model_label: str
    history: tuple[EpochRecord, ...]
    best_epoch: int
    best_metrics: dict[str, dict[str, Any]]
    best_val_loss: float | None
    stop_reason: str
    split_hash: str
    train_cases: tuple[str, ...]
    val_cases: tuple[str, ...]
    n_train: int
    n_val: int
    skipped: dict[str, str]
    world_size: int
    resumed: bool
    seconds: float

    def to_dict(self) -> dict:
        data = asdict(self)
        data["out_dir"] = str(self.out_dir)
        data["adapter_dir"] = str(self.adapter_dir)
        data["history"] = [r.to_dict() for r in self.history]
        return jsonable(data)


# --------------------------------------------------------------------------- collaborators


class BaseModelLoader(Protocol):
    """Loads the base model for training."""

    def load(self, base: str, *, device: str, load_in_4bit: bool, tiny_seed: int):
        """Return ``(model, processor, info)``; ``info`` has ``model_id``, ``revision``,
        ``model_label``, ``names`` (every name the model goes by) and ``dtype``."""
        ...


class DefaultLoader:
    """``tiny`` -> :func:`~GliomaCompareLib.vlm.tiny.build_tiny_model`; anything else ->
    :func:`~GliomaCompareLib.vlm.hf_backend.load_model` (local files only)."""

    def load(self, base: str, *, device: str, load_in_4bit: bool, tiny_seed: int):
        if base == "tiny":
            if load_in_4bit:
                raise ValueError(
                    "The in-code tiny model is not quantised; for QLoRA save it "
                    "(GliomaCompareLib.vlm.tiny.save_tiny_model) and pass its folder as --base"
                )

            model, processor = build_tiny_model(tiny_seed)
            model.to(device)
            model_id = tiny_model_id(tiny_seed)
            info = {
                "model_id": model_id,
                "revision": f"tiny-seed{tiny_seed}",
                "model_label": TINY_MODEL_LABEL,
                "names": [model_id],
                "dtype": "float32",
                "quantization": None,
            }
            return model, processor, info

        model, processor, info = load_model(
            base, device=device, load_in_4bit=load_in_4bit, for_training=True
        )
        path = Path(info["path"])
        if Path(base).expanduser().is_dir():  # record a local folder by its absolute path
            info = dict(info, model_id=str(path.resolve()))
            info["names"] = [info["model_id"], *info["names"]]
        return model, processor, info


# --------------------------------------------------------------------------- small helpers


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished folder ``tmp`` to ``final``, replacing an older one."""
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)


def _hash(obj) -> str:
    text = json.dumps(jsonable(obj), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _versions() -> dict:
    import importlib.metadata as md
    import platform

    out = {"python": platform.python_version()}
    for name in ("gliomacompare", "torch", "transformers", "peft", "accelerate", "numpy"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def resolve_splits(
    cohort,
    splits=None,
    default_path: str | Path | None = None,
    *,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    seed: int = 0,
    create: bool = True,
):
    """The split to train on.

    Args:
        cohort: the discovered cohort.
        splits: a :class:`~GliomaCompareLib.data.splits.Splits`, or a ``splits.json`` path
            (read when it exists, else made once and written there), or None (use
            ``default_path`` the same way).
        default_path: where the split lives when ``splits`` is None.
        fractions, seed: for a new split (patient-level, stratified by grade, the usable
            cases of the cohort).
        create: False to refuse a missing file.

    Returns:
        ``(splits, path or None)``.

    Raises:
        FileNotFoundError: a missing file with ``create=False``.
        ValueError: an unreadable split file, or one whose grades contradict the data's.
    """

    if isinstance(splits, Splits):
        return splits, None
    path = Path(splits if splits is not None else default_path)
    made = load_or_make_splits(cohort, path, fractions=fractions, seed=seed, create=create)
    return made, path


def epoch_order(
    examples: Sequence[FinetuneExample], epoch: int, seed: int, balance: str = "none"
) -> list[int]:
    """The order of training examples in ``epoch`` (indices into ``examples``).

    It depends only on ``(seed, epoch)`` and the examples, so every process and every resumed
    run sees the same order. With ``balance`` (``oversample`` / ``weighted``) the grade
    examples are resampled as the module docstring says; other tasks' examples are kept as
    they are.

    Raises:
        ValueError: for an unknown ``balance``.
    """
    if balance not in BALANCE_MODES:
        raise ValueError(f"balance {balance!r}: use one of {', '.join(BALANCE_MODES)}")
    rng = np.random.default_rng([int(seed), int(epoch), 7])
    indices = list(range(len(examples)))
    grade = [i for i in indices if examples[i].task == "grade"]
    by_grade = {g: [i for i in grade if examples[i].grade == g] for g in ("HGG", "LGG")}
    if balance != "none" and all(by_grade.values()):
        other = [i for i in indices if examples[i].task != "grade"]
        if balance == "oversample":
            target = max(len(v) for v in by_grade.values())
            chosen: list[int] = []
            for members in by_grade.values():
                copies, rest = divmod(target, len(members))
                chosen += members * copies
                chosen += [members[j] for j in rng.choice(len(members), rest, replace=False)]
        else:
            weights = np.array([1.0 / len(by_grade[examples[i].grade]) for i in grade], dtype=float)
            chosen = [
                grade[j] for j in rng.choice(len(grade), len(grade), p=weights / weights.sum())
            ]
        indices = other + chosen
    return [indices[j] for j in rng.permutation(len(indices))]


# --------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class _Dist:
    """This process's place in a (possibly one-process) DDP job."""

    rank: int
    local_rank: int
    world: int
    device: Any
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def gather(self, obj) -> list:
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out: list = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def sum(self, *values: float) -> list[float]:
        if self.world == 1:
            return [float(v) for v in values]
        import torch
        import torch.distributed as dist

        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.cpu().tolist()

    def broadcast(self, obj):
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def _init_dist(device: str) -> _Dist:
    """Join the process group when started by ``torchrun`` / ``accelerate launch``."""
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if device.startswith("cuda") and not cuda:
        raise ValueError(f"--device {device} asked for, but CUDA is not available here")
    if device.startswith("cuda:") and world > 1:
        raise ValueError(
            f"--device {device}: under torchrun each process uses the GPU of its LOCAL_RANK; "
            "use --device cuda (and CUDA_VISIBLE_DEVICES to choose the GPUs)"
        )
    use_cuda = device.startswith("cuda") or (device == "auto" and cuda)
    if not use_cuda:
        dev = torch.device("cpu")
    elif world > 1:
        dev = torch.device("cuda", local)
    elif device.startswith("cuda:"):
        dev = torch.device(device)
    else:
        dev = torch.device("cuda", torch.cuda.current_device())
    if use_cuda:
        torch.cuda.set_device(dev)
    owns = False
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
            owns = True
    return _Dist(rank, local, world, dev, owns)


# --------------------------------------------------------------------------- the trainer


def _cases_key(cohort, case_ids: Sequence[str]) -> list:
    """Identity of the cases' files (name, size, modification time) for the example cache."""
    records = {r.case_id: r for r in cohort.cases}
    out = []
    for case_id in case_ids:
        record = records.get(case_id)
        if record is None:
            out.append([case_id, None])
            continue
        paths = [*record.modality_paths.values(), record.label_path]
        stats = []
        for p in paths:
            if p is None or not Path(p).is_file():
                stats.append(None)
            else:
                st = Path(p).stat()
                stats.append([Path(p).name, st.st_size, st.st_mtime_ns])
        out.append([case_id, record.grade, stats])
    return out


class _Run:
    """State of one fine-tuning call (internal; see :func:`finetune`)."""

    def __init__(self, tasks, base, out, config, dist, progress, loader):
        self.tasks = tasks
        self.base = base
        self.out = out
        self.config = config
        self.dist = dist
        self.progress = progress if dist.main else None
        self.loader = loader
        self.history: list[EpochRecord] = []
        self.best: dict | None = None  # {"epoch", "value", "val_loss", "metrics"}
        self.bad_validations = 0
        self.global_step = 0
        self.epoch = 1  # epoch in progress
        self.step_in_epoch = 0
        self.epoch_loss_sum = 0.0
        self.epoch_tokens = 0.0
        self.epoch_examples = 0
        self.epoch_seconds = 0.0
        self.stop_reason: str | None = None

    # ------------------------------------------------------------------ data
    def examples(self, cohort, case_ids, name: str, keep_masks: bool) -> ExampleSet:
        settings = self.config.example_settings(keep_masks=keep_masks)

        specs = load_tasks(self.config.prompts_dir)
        key = _hash(
            {
                "settings": settings.to_dict(),
                "tasks": list(self.tasks),
                "cases": _cases_key(cohort, case_ids),
                "templates": {t: specs[t].template_hash for t in self.tasks},
            }
        )
        path = self.out / "data" / f"{name}.npz"
        cached = load_example_set(path, key, settings) if self.dist.main else None
        if self.dist.main and cached is None:
            cached = build_examples(cohort, case_ids, self.tasks, settings, jobs=self.config.jobs)
            save_example_set(path, cached, key)
        self.dist.barrier()
        if not self.dist.main:
            cached = load_example_set(path, key, settings)
            if cached is None:  # the file went missing: build it here too (same result)
                cached = build_examples(cohort, case_ids, self.tasks, settings)
        return cached

    # ------------------------------------------------------------------ model
    def setup_model(self):
        import torch

        cfg = self.config
        model, processor, info = self.loader.load(
            self.base,
            device=str(self.dist.device),
            load_in_4bit=cfg.load_in_4bit,
            tiny_seed=cfg.tiny_seed,
        )
        self.info = info
        self.processor = processor
        n_params = sum(p.numel() for p in model.parameters())
        self.small = n_params < _SMALL_MODEL
        if cfg.load_in_4bit:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(
                model,
                use_gradient_checkpointing=cfg.gradient_checkpointing,
                gradient_checkpointing_kwargs={"use_reentrant": False},
            )
        elif cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        if hasattr(model, "config"):
            model.config.use_cache = False
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=cfg.rank,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=cfg.target_regex(),
            bias="none",
        )
        torch.manual_seed(cfg.seed)  # identical LoRA initialisation in every process
        try:
            model = get_peft_model(model, lora)
        except ValueError as exc:
            raise ValueError(
                f"LoRA target modules {list(cfg.target_modules)} under "
                f"{cfg.target_scope or 'any module'!r} match nothing in {self.base} ({exc})"
            ) from exc
        self.model = model
        self.collator = FinetuneCollator.for_model(model.get_base_model(), processor)
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        params = next(p for p in model.parameters() if p.is_floating_point())
        self.dtype = params.dtype
        self.n_trainable = sum(p.numel() for p in self.trainable)
        self.n_params = n_params

    def setup_optimizer(self, steps_per_epoch: int):
        import torch
        from transformers import get_scheduler

        cfg = self.config
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = steps_per_epoch * cfg.epochs
        self.optimizer = torch.optim.AdamW(self.trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
        name = {"constant": "constant_with_warmup"}.get(cfg.scheduler, cfg.scheduler)
        self.scheduler = get_scheduler(
            name,
            self.optimizer,
            num_warmup_steps=math.ceil(cfg.warmup_ratio * self.total_steps),
            num_training_steps=self.total_steps,
        )

    def wrap_ddp(self):
        self.ddp = self.model
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.dist.device.index] if self.dist.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=device_ids)

    # ------------------------------------------------------------------ steps
    def _to_device(self, batch):
        import torch

        out = {}
        for key, value in batch.items():
            if isinstance(value, torch.Tensor):
                value = value.to(self.dist.device)
                if value.is_floating_point():
                    value = value.to(self.dtype)
            out[key] = value
        return out

    def token_loss(self, module, batch):
        """Sum of the answer tokens' cross-entropy (nats) and their number."""
        import torch

        batch = dict(batch)
        labels = batch.pop("labels")
        valid = labels != IGNORE_INDEX
        first = int(valid.float().argmax(dim=1).min().item())
        length = labels.shape[1]
        keep = max(2, length - first + 1)
        output = module(**batch, use_cache=False, logits_to_keep=keep)
        logits = output.logits[:, -keep:].float()
        targets = labels[:, length - keep + 1 :]
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]),
            targets.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        return loss, int((targets != IGNORE_INDEX).sum().item())

    def step_batches(self, order: list[int], step: int) -> list[list[int]]:
        """This process's micro-batches of optimizer step ``step`` (indices)."""
        cfg, world = self.config, self.dist.world
        size = cfg.batch_size * cfg.grad_accum * world
        chunk = order[step * size : (step + 1) * size]
        unit = world * cfg.grad_accum
        if len(chunk) % unit:  # the last step: wrap around so every process has work
            need = unit - len(chunk) % unit
            chunk = chunk + [order[i % len(order)] for i in range(need)]
        mine = chunk[self.dist.rank :: world]
        return [list(part) for part in np.array_split(mine, cfg.grad_accum) if len(part)]

    def train_step(self, examples, order, step) -> None:
        import torch

        micro = self.step_batches(order, step)
        batches = [self.collator([examples[i] for i in part]) for part in micro]
        local_tokens = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)
        (global_tokens,) = self.dist.sum(local_tokens)
        scale = self.dist.world / max(global_tokens, 1.0)
        loss_sum = 0.0
        for i, batch in enumerate(batches):
            last = i == len(batches) - 1
            sync = nullcontext() if last or self.dist.world == 1 else self.ddp.no_sync()
            with sync:
                loss, _ = self.token_loss(self.ddp, self._to_device(batch))
                (loss * scale).backward()
            loss_sum += float(loss.detach())
        if self.config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss_all, tokens_all, count = self.dist.sum(loss_sum, local_tokens, sum(map(len, micro)))
        self.epoch_loss_sum += loss_all
        self.epoch_tokens += tokens_all
        self.epoch_examples += int(count)
        self.global_step += 1
        self.step_in_epoch += 1

    # ------------------------------------------------------------------ validation
    def validate(self, val: ExampleSet, specs) -> tuple[float | None, dict, list[dict]]:
        import torch

        if not val.examples:
            return None, {}, []
        cfg, dist = self.config, self.dist
        self.model.eval()
        try:
            mine = list(val.examples[dist.rank :: dist.world])
            loss_sum, tokens = 0.0, 0
            with torch.no_grad():
                for start in range(0, len(mine), cfg.eval_batch_size):
                    batch = self.collator(mine[start : start + cfg.eval_batch_size])
                    loss, n = self.token_loss(self.model, self._to_device(batch))
                    loss_sum += float(loss)
                    tokens += n
            loss_all, tokens_all = dist.sum(loss_sum, tokens)
            val_loss = loss_all / tokens_all if tokens_all else None
            chosen = self.generation_examples(val)
            backend = TransformersBackend.from_model(
                self.model,
                self.processor,
                model_id=self.info["model_id"],
                model_label=self.info["model_label"],
                name="finetune",
                revision=f"finetune-step{self.global_step}",
            )
            decoding = DecodingConfig(max_new_tokens=self.max_new_tokens)
            rows = []
            my_items = chosen[dist.rank :: dist.world]
            for start in range(0, len(my_items), cfg.eval_batch_size):
                part = my_items[start : start + cfg.eval_batch_size]
                queries = [
                    Query(image=e.rgb, prompt=e.prompt, score_options=e.task == "grade")
                    for e in part
                ]
                answers = backend.answer(queries, decoding)
                rows += [
                    score_answer(e, a, specs[e.task], cfg.point_radius_mm)
                    for e, a in zip(part, answers, strict=True)
                ]
            rows = [r for part in dist.gather(rows) for r in part]
        finally:
            self.model.train()
        order = {t: i for i, t in enumerate(TASK_NAMES)}
        rows.sort(key=lambda r: (order[r["task"]], r["case_id"], r["slice_index"]))
        return val_loss, summarize_validation(rows, self.tasks), rows

    def generation_examples(self, val: ExampleSet) -> list[FinetuneExample]:
        limit = self.config.max_val_slices
        chosen = []
        for task in self.tasks:
            items = [e for e in val.examples if e.task == task]
            if limit is not None and len(items) > limit:
                picks = np.unique(np.round(np.linspace(0, len(items) - 1, limit)).astype(int))
                items = [items[i] for i in picks]
            chosen += items
        return chosen

    # ------------------------------------------------------------------ state on disk
    def state(self) -> dict:
        return {
            "global_step": self.global_step,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "epoch_loss_sum": self.epoch_loss_sum,
            "epoch_tokens": self.epoch_tokens,
            "epoch_examples": self.epoch_examples,
            "epoch_seconds": self.epoch_seconds,
            "history": [r.to_dict() for r in self.history],
            "best": self.best,
            "bad_validations": self.bad_validations,
            "stop_reason": self.stop_reason,
        }

    def save_checkpoint(self, signature: dict, epoch_seconds: float) -> None:
        import torch

        root = self.out / "checkpoints"
        name = f"step-{self.global_step:08d}"
        tmp = root / f".tmp-{name}"
        self.epoch_seconds = epoch_seconds
        if self.dist.main:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
            from peft import get_peft_model_state_dict
            from safetensors.torch import save_file

            weights = get_peft_model_state_dict(self.model, save_embedding_layers=False)
            save_file(
                {k: v.detach().contiguous().cpu() for k, v in weights.items()},
                tmp / "adapter.safetensors",
            )
            torch.save(
                {
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                },
                tmp / "optimizer.pt",
            )
            state = {"signature": signature, **self.state()}
            (tmp / "trainer_state.json").write_text(json.dumps(jsonable(state), indent=2))
        self.dist.barrier()
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, tmp / f"rng_rank{self.dist.rank}.pt")
        self.dist.barrier()
        if self.dist.main:
            _replace_dir(tmp, root / name)
            done = sorted(p for p in root.glob("step-*") if p.is_dir())
            for old in done[: -self.config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        self.dist.barrier()

    def load_checkpoint(self, signature: dict) -> bool:
        """Restore the newest checkpoint; False when there is none."""
        import torch
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        root = self.out / "checkpoints"
        done = sorted(p for p in root.glob("step-*") if (p / "trainer_state.json").is_file())
        if not done:
            return False
        ckpt = done[-1]
        state = json.loads((ckpt / "trainer_state.json").read_text())
        if state.get("signature") != jsonable(signature):
            raise ValueError(f"{ckpt}: checkpoint of another run (settings or data differ)")
        weights = load_file(str(ckpt / "adapter.safetensors"))
        result = set_peft_model_state_dict(self.model, weights)
        unexpected = getattr(result, "unexpected_keys", None)
        if unexpected:
            raise ValueError(f"{ckpt}: adapter weights do not fit the model ({unexpected[:3]})")
        opt = torch.load(ckpt / "optimizer.pt", map_location=self.dist.device, weights_only=True)
        self.optimizer.load_state_dict(opt["optimizer"])
        self.scheduler.load_state_dict(opt["scheduler"])
        rng_file = ckpt / f"rng_rank{self.dist.rank}.pt"
        if rng_file.is_file():
            rng = torch.load(rng_file, weights_only=True)
            torch.set_rng_state(rng["cpu"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
        self.global_step = int(state["global_step"])
        self.epoch = int(state["epoch"])
        self.step_in_epoch = int(state["step_in_epoch"])
        self.epoch_loss_sum = float(state["epoch_loss_sum"])
        self.epoch_tokens = float(state["epoch_tokens"])
        self.epoch_examples = int(state["epoch_examples"])
        self.epoch_seconds = float(state.get("epoch_seconds") or 0.0)
        self.history = [EpochRecord.from_dict(r) for r in state["history"]]
        self.best = state["best"]
        self.bad_validations = int(state["bad_validations"])
        self.stop_reason = state.get("stop_reason")
        log.info("resumed from %s (epoch %d, step %d)", ckpt, self.epoch, self.global_step)
        return True

    def save_adapter(self, meta: dict) -> None:
        if not self.dist.main:
            return
        final = self.out / ADAPTER_DIR
        tmp = self.out / f".{ADAPTER_DIR}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        # the vocabulary never changes, so the (huge) embedding and output layers are not saved
        self.model.save_pretrained(tmp, save_embedding_layers=False)

        (tmp / ADAPTER_META_FILE).write_text(json.dumps(jsonable(meta), indent=2) + "\n")
        _replace_dir(tmp, final)

    def report(self, phase: str, record: EpochRecord | None = None) -> None:
        if self.progress is None:
            return
        loss = self.epoch_loss_sum / self.epoch_tokens if self.epoch_tokens else None
        self.progress(
            FinetuneProgress(
                phase=phase,
                epoch=record.epoch if record is not None else min(self.epoch, self.config.epochs),
                epochs=self.config.epochs,
                global_step=self.global_step,
                total_steps=self.total_steps,
                loss=loss,
                lr=float(self.scheduler.get_last_lr()[0]),
                record=record,
            )
        )


def _write_history(path: Path, history: Sequence[EpochRecord]) -> None:
    base = ["epoch", "global_step", "train_loss", "val_loss", "monitor_value", "improved", "lr"]
    rows, extra = [], []
    for r in history:
        row = {k: getattr(r, k) for k in base}
        row.update(seconds=r.seconds, examples=r.examples)
        for task, metrics in r.metrics.items():
            for name, value in metrics.items():
                if isinstance(value, dict):
                    continue
                key = f"{task}_{name}"
                row[key] = value
                if key not in extra:
                    extra.append(key)
        rows.append(row)
    columns = [*base, "seconds", "examples", *extra]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {
                k: (
                    ""
                    if row.get(k) is None
                    else f"{row[k]:.6g}"
                    if isinstance(row.get(k), float)
                    else int(row[k])
                    if isinstance(row.get(k), bool)
                    else row[k]
                )
                for k in columns
            }
        )
    atomic_write_text(path, buffer.getvalue())


def _result_from_manifest(out: Path, manifest: dict, seconds: float) -> FinetuneResult:
    return FinetuneResult(
        out_dir=out,
        adapter_dir=out / ADAPTER_DIR,
        tasks=tuple(manifest["tasks"]),
        base_model=manifest["base_model"],
        model_label=manifest["model_label"],
        history=tuple(EpochRecord.from_dict(r) for r in manifest["history"]),
        best_epoch=int(manifest["best_epoch"]),
        best_metrics=manifest.get("best_metrics") or {},
        best_val_loss=manifest.get("best_val_loss"),
        stop_reason=manifest["stop_reason"],
        split_hash=manifest["split"]["hash"],
        train_cases=tuple(manifest["data"]["train_cases"]),
        val_cases=tuple(manifest["data"]["val_cases"]),
        n_train=int(manifest["data"]["n_train"]),
        n_val=int(manifest["data"]["n_val"]),
        skipped=dict(manifest["data"]["skipped"]),
        world_size=int(manifest["world_size"]),
        resumed=True,
        seconds=seconds,
    )


def _parse_tasks(tasks) -> tuple[str, ...]:
    if isinstance(tasks, str):
        return parse_task_list(tasks)
    names = [str(t).strip().lower() for t in tasks]
    bad = [t for t in names if t not in TASK_NAMES]
    if bad or not names:
        raise ValueError(
            f"Unknown task(s) {', '.join(bad) or '(none)'}; use {', '.join(TASK_NAMES)}"
        )
    return tuple(t for t in TASK_NAMES if t in names)


def finetune(
    data,
    tasks: str | Sequence[str],
    base: str,
    out_dir: str | Path,
    config: FinetuneConfig | None = None,
    *,
    splits=None,
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    split_seed: int = 0,
    resume: bool = False,
    progress: Callable[[FinetuneProgress], None] | None = None,
    loader: BaseModelLoader | None = None,
) -> FinetuneResult:
    """Fine-tune a LoRA adapter of ``base`` for ``tasks`` (see module docstring).

    Args:
        data: a :class:`~GliomaCompareLib.data.Cohort`, or a BraTS data folder.
        tasks: ``"grade"``, ``"box"``, ``"grade,box"``, ``"all"`` or a sequence of task names;
            several tasks train one adapter that answers all of them.
        base: ``tiny``, a local model folder, or a hub id in the local Hugging Face cache.
        out_dir: the run folder (see module docstring).
        config: the settings (default :class:`FinetuneConfig`).
        splits: a :class:`~GliomaCompareLib.data.splits.Splits` or ``splits.json`` path (made
            there once when missing); None: ``OUT/splits.json`` the same way.
        split_fractions, split_seed: for a split made here.
        resume: continue the run in ``out_dir`` (required when it holds one; a finished run is
            returned as it is).
        progress: called (in process 0) with :class:`FinetuneProgress` after every optimizer
            step and validation.
        loader: loads the base model (default :class:`DefaultLoader`).

    Returns:
        :class:`FinetuneResult`.

    Raises:
        ValueError: bad settings, a run folder holding another (or any, without ``resume``)
            run, no training example, QLoRA without CUDA, LoRA targets matching nothing.
        FileNotFoundError: missing data, split file or base model.
    """

    start_time = time.perf_counter()
    config = config or FinetuneConfig()
    tasks = _parse_tasks(tasks)
    if config.balance_grades != "none" and "grade" not in tasks:
        raise ValueError("balance_grades applies to the grade task, which is not being trained")
    loader = loader or DefaultLoader()
    specs = load_tasks(config.prompts_dir)
    out = Path(out_dir)
    dist = _init_dist(config.device)
    try:
        return _finetune(
            dist,
            data,
            tasks,
            base,
            out,
            config,
            specs,
            splits=splits,
            split_fractions=split_fractions,
            split_seed=split_seed,
            resume=resume,
            progress=progress,
            loader=loader,
            start_time=start_time,
        )
    finally:
        if dist.owns_group:
            import torch.distributed

            torch.distributed.destroy_process_group()


def _finetune(
    dist: _Dist,
    data,
    tasks: tuple[str, ...],
    base: str,
    out: Path,
    config: FinetuneConfig,
    specs,
    *,
    splits,
    split_fractions,
    split_seed,
    resume: bool,
    progress,
    loader: BaseModelLoader,
    start_time: float,
) -> FinetuneResult:
    """The body of :func:`finetune` once the processes are joined."""
    import torch

    if config.load_in_4bit and dist.device.type != "cuda":
        raise ValueError(
            "QLoRA (--4bit) loads the base model in 4 bits with bitsandbytes, which needs a "
            "CUDA GPU; none is in use here (train without --4bit, or on a CUDA machine)"
        )
    cohort = data if isinstance(data, Cohort) else discover_cases(data, validate=True, full=False)
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        splits_obj, split_path = resolve_splits(
            cohort, splits, out / "splits.json", fractions=split_fractions, seed=split_seed
        )
    dist.barrier()
    if not dist.main:
        splits_obj, split_path = resolve_splits(cohort, splits, out / "splits.json", create=False)
    train_ids, val_ids = splits_obj.ids("train"), splits_obj.ids("val")
    leaked = set(splits_obj.ids("test")) & (set(train_ids) | set(val_ids))
    if leaked:  # Splits refuses overlaps already; this guards the promise made above
        raise ValueError(f"test patients {sorted(leaked)[:3]} would enter fine-tuning")
    signature = {
        "tasks": list(tasks),
        "base": base,
        "config": {k: v for k, v in config.to_dict().items() if k not in _NOT_RESULT_FIELDS},
        "split_hash": splits_obj.hash,
        "data_dir": str(cohort.data_dir or cohort.root),
        "template_hashes": {t: specs[t].template_hash for t in tasks},
        "world_size": dist.world,
    }
    manifest_path = out / MANIFEST_FILE
    previous = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    if previous is not None:
        if not resume:
            raise ValueError(
                f"{out} already holds a fine-tuning run ({previous.get('status')}); pass "
                "--resume to continue it, or choose another --out"
            )
        if previous.get("signature") != jsonable(signature):
            old, new = previous.get("signature") or {}, jsonable(signature)
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            if "config" in changed:
                oc, nc = old.get("config") or {}, new["config"]
                changed += [
                    f"config.{k}" for k in sorted(set(oc) | set(nc)) if oc.get(k) != nc.get(k)
                ]
            raise ValueError(
                f"{out}: cannot resume: the run was started with other settings or data "
                f"(changed: {', '.join(changed)}); use the same settings, or another --out"
            )
        if previous.get("status") == "finished" and (out / ADAPTER_DIR).is_dir():
            return _result_from_manifest(out, previous, time.perf_counter() - start_time)

    run = _Run(tasks, base, out, config, dist, progress, loader)
    train_set = run.examples(cohort, train_ids, "train", keep_masks=False)
    val_set = run.examples(cohort, val_ids, "val", keep_masks=True)
    if not train_set.examples:
        reasons = "; ".join(list(train_set.skipped.values())[:3])
        raise ValueError(
            f"No training example for {', '.join(tasks)} among the {len(train_ids)} training "
            f"patients of split {splits_obj.hash}" + (f" ({reasons})" if reasons else "")
        )
    fingerprints = {"train": train_set.fingerprint(), "val": val_set.fingerprint()}
    for name, current in fingerprints.items():
        recorded = ((previous or {}).get("data") or {}).get(f"{name}_fingerprint")
        if recorded and recorded != current:
            raise ValueError(
                f"{out}: cannot resume: the {name} examples differ from those the run started "
                "with (the data files changed); use another --out"
            )
    run.setup_model()
    tok = run.processor.tokenizer
    longest = max(
        len(tok(e.target, add_special_tokens=False)["input_ids"])
        for e in (*train_set.examples, *val_set.examples)
    )
    run.max_new_tokens = config.max_new_tokens or longest + 16
    n_order = len(epoch_order(train_set.examples, 1, config.seed, config.balance_grades))
    global_batch = config.batch_size * config.grad_accum * dist.world
    run.setup_optimizer(math.ceil(n_order / global_batch))
    resumed = run.load_checkpoint(signature) if resume else False
    run.wrap_ddp()
    threads = torch.get_num_threads()
    if run.small and dist.device.type == "cpu":
        torch.set_num_threads(1)  # see hf_backend: small matrices run faster on one thread

    base_meta = {
        "base_model": run.info["model_id"],
        "base_model_names": [n for n in run.info.get("names", []) if n],
        "base_model_revision": run.info.get("revision"),
        "model_label": run.info["model_label"],
        "quantization": "bnb-4bit-nf4" if config.load_in_4bit else None,
    }
    data_meta = {
        "data_dir": str(cohort.data_dir or cohort.root),
        "train_cases": sorted({e.case_id for e in train_set.examples}),
        "val_cases": sorted({e.case_id for e in val_set.examples}),
        "n_train": len(train_set),
        "n_val": len(val_set),
        "counts": {"train": train_set.counts(), "val": val_set.counts()},
        "train_fingerprint": fingerprints["train"],
        "val_fingerprint": fingerprints["val"],
        "skipped": {**train_set.skipped, **val_set.skipped},
        "notes": {**train_set.notes, **val_set.notes},
    }
    split_meta = {
        "hash": splits_obj.hash,
        "file": str(split_path) if split_path else None,
        "train": list(train_ids),
        "val": list(val_ids),
        "test_never_used": list(splits_obj.ids("test")),
    }

    versions = _versions()

    def manifest(status: str) -> dict:
        best = run.best or {}
        return {
            "status": status,
            "signature": signature,
            "tasks": list(tasks),
            "task": tasks[0] if len(tasks) == 1 else None,
            **base_meta,
            "prompt_template_hashes": {t: specs[t].template_hash for t in tasks},
            "coordinate_system": config.coordinate_system,
            "max_vertices": config.max_vertices,
            "split": split_meta,
            "data": data_meta,
            "config": config.to_dict(),
            "world_size": dist.world,
            "global_batch": global_batch,
            "trainable_parameters": run.n_trainable,
            "parameters": run.n_params,
            "steps_per_epoch": run.steps_per_epoch,
            "history": [r.to_dict() for r in run.history],
            "best_epoch": best.get("epoch"),
            "best_val_loss": best.get("val_loss"),
            "best_metrics": best.get("metrics"),
            "stop_reason": run.stop_reason,
            "versions": versions,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def adapter_meta(record: EpochRecord) -> dict:
        meta = manifest("finished")
        keep = (
            "tasks", "task", "base_model", "base_model_names", "base_model_revision",
            "model_label", "quantization", "prompt_template_hashes", "coordinate_system",
            "max_vertices", "world_size", "global_batch", "trainable_parameters", "versions",
        )  # fmt: skip
        out_meta = {k: meta[k] for k in keep}
        if len(tasks) == 1:
            out_meta["prompt_template_hash"] = specs[tasks[0]].template_hash
        out_meta.update(
            split_hash=splits_obj.hash,
            split_file=split_meta["file"],
            train_cases=data_meta["train_cases"],
            val_cases=data_meta["val_cases"],
            n_train=data_meta["n_train"],
            n_val=data_meta["n_val"],
            training=config.to_dict(),
            epoch=record.epoch,
            global_step=record.global_step,
            val_loss=record.val_loss,
            metrics=record.metrics,
            history=[r.to_dict() for r in run.history],
            created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )
        return out_meta

    if dist.main:
        atomic_write_text(manifest_path, json.dumps(jsonable(manifest("running")), indent=2) + "\n")
    try:
        if not resumed:
            # each process draws its own dropout masks from here on
            torch.manual_seed(config.seed * 1000 + 1 + dist.rank)
        run.model.train()
        while run.stop_reason is None and run.epoch <= config.epochs:
            epoch_start = time.perf_counter() - run.epoch_seconds
            order = epoch_order(train_set.examples, run.epoch, config.seed, config.balance_grades)
            steps = math.ceil(len(order) / global_batch)
            while run.step_in_epoch < steps:
                run.train_step(train_set.examples, order, run.step_in_epoch)
                run.report("train")
                every = config.checkpoint_every
                if every and run.global_step % every == 0 and run.step_in_epoch < steps:
                    run.save_checkpoint(signature, time.perf_counter() - epoch_start)
            last = run.epoch == config.epochs
            validate = bool(val_set.examples) and (run.epoch % config.eval_every == 0 or last)
            val_loss, metrics, rows = None, {}, []
            if validate:
                run.report("validate")
                val_loss, metrics, rows = run.validate(val_set, specs)
            value = monitor_value(config.monitor, val_loss, metrics, tasks) if validate else None
            improved = False
            if validate and value is not None:
                best = run.best.get("value") if run.best else None
                if best is None:
                    improved = True
                elif config.monitor == "val_loss":
                    improved = value < best - config.min_delta
                else:
                    improved = value > best + config.min_delta
            elif not val_set.examples:
                improved = True  # without validation the newest adapter is kept
            record = EpochRecord(
                epoch=run.epoch,
                global_step=run.global_step,
                train_loss=run.epoch_loss_sum / max(run.epoch_tokens, 1.0),
                val_loss=val_loss,
                metrics=metrics,
                monitor_value=value,
                improved=improved,
                lr=float(run.scheduler.get_last_lr()[0]),
                seconds=time.perf_counter() - epoch_start,
                examples=run.epoch_examples,
            )
            run.history.append(record)
            if improved:
                run.best = {
                    "epoch": record.epoch,
                    "value": value,
                    "val_loss": val_loss,
                    "metrics": metrics,
                }
                run.bad_validations = 0
                if val_set.examples:  # without validation, the last epoch's is saved at the end
                    run.save_adapter(adapter_meta(record))
            elif validate:
                run.bad_validations += 1
            if dist.main and rows:
                lines = [json.dumps(jsonable({"epoch": record.epoch, **r})) for r in rows]
                atomic_write_text(out / "val_answers.jsonl", "\n".join(lines) + "\n")
            if not val_set.examples:
                stop = "no_validation" if last else None
            elif config.patience is not None and run.bad_validations >= config.patience:
                stop = "early_stopping"
            else:
                stop = "epochs" if last else None
            run.stop_reason = stop
            run.epoch += 1
            run.step_in_epoch = 0
            run.epoch_loss_sum = run.epoch_tokens = 0.0
            run.epoch_examples = 0
            run.save_checkpoint(signature, 0.0)
            if dist.main:
                _write_history(out / "history.csv", run.history)
                atomic_write_text(
                    manifest_path, json.dumps(jsonable(manifest("running")), indent=2) + "\n"
                )
            run.report("epoch", record)
        if run.stop_reason is None:  # epochs reached on resume of a run stopped at its end
            run.stop_reason = "epochs"
        if dist.main:
            if not val_set.examples or not (out / ADAPTER_DIR / ADAPTER_META_FILE).is_file():
                run.save_adapter(adapter_meta(run.history[-1]))
            atomic_write_text(
                manifest_path, json.dumps(jsonable(manifest("finished")), indent=2) + "\n"
            )
        dist.barrier()
        run.report("done")
    finally:
        torch.set_num_threads(threads)
    best = run.best or {}
    return FinetuneResult(
        out_dir=out,
        adapter_dir=out / ADAPTER_DIR,
        tasks=tasks,
        base_model=run.info["model_id"],
        model_label=run.info["model_label"],
        history=tuple(run.history),
        best_epoch=int(best.get("epoch") or run.history[-1].epoch),
        best_metrics=best.get("metrics") or {},
        best_val_loss=best.get("val_loss"),
        stop_reason=run.stop_reason,
        split_hash=splits_obj.hash,
        train_cases=tuple(data_meta["train_cases"]),
        val_cases=tuple(data_meta["val_cases"]),
        n_train=len(train_set),
        n_val=len(val_set),
        skipped=dict(data_meta["skipped"]),
        world_size=dist.world,
        resumed=resumed,
        seconds=time.perf_counter() - start_time,
    )
