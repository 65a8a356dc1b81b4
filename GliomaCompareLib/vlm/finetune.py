"""LoRA / QLoRA fine-tuning of the VLM on the grade, point, box and polygon tasks.

:func:`finetune` is the Python API (``gliomacompare finetune-vlm`` and the comparison run's
"VLM fine-tune" stage call it). What one call does:

- **Data**: the split's ``train`` patients give the training examples and its ``val`` patients
  the validation examples; ``test`` patients are never read. Each example is a slice chosen by
  the VLM arm's slice rule, the prompt inference sends, and the exact JSON answer the parser
  expects, computed from the ground-truth mask (:mod:`GliomaCompareLib.vlm.finetune_data`).
  Several tasks may be trained into one adapter. Built examples are cached in ``OUT/data/``.
- **Model**: the base model (``tiny`` or another tiny model name such as ``tiny-llava``, a
  local folder or a cached hub id of any supported family; nothing is downloaded) with LoRA
  adapters (peft) on the language model's attention and MLP projections (``target_modules``
  within ``target_scope``; the default scope ``language_model`` means the family's language
  model, e.g. Idefics3's ``text_model``, see :mod:`~GliomaCompareLib.vlm.families`); with
  ``load_in_4bit`` the frozen base is NF4 4-bit (QLoRA, bitsandbytes, CUDA only). The vision
  encoder and the projector are never adapted by default.
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

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from GliomaCompareLib.data.discovery import Cohort, discover_cases
from GliomaCompareLib.data.splits import Splits, load_or_make_splits
from GliomaCompareLib.distributed import DistContext, init_distributed
from GliomaCompareLib.fileio import jsonable
from GliomaCompareLib.versions import library_versions
from GliomaCompareLib.vlm.finetune_config import (
    BALANCE_MODES,
    DEFAULT_TARGET_MODULES,
    MONITORS,
    FinetuneConfig,
)
from GliomaCompareLib.vlm.finetune_data import ExampleSet
from GliomaCompareLib.vlm.finetune_trainer import (
    ADAPTER_DIR,
    MANIFEST_FILE,
    FinetuneEpoch,
    FinetuneProgress,
    RunBook,
    Trainer,
    epoch_order,
)
from GliomaCompareLib.vlm.hf_backend import load_model
from GliomaCompareLib.vlm.tasks import TASK_NAMES, load_tasks, parse_task_list
from GliomaCompareLib.vlm.tiny import (
    build_tiny_model,
    parse_tiny_name,
    tiny_model_id,
    tiny_model_label,
)

__all__ = [
    "BALANCE_MODES",
    "DEFAULT_TARGET_MODULES",
    "MONITORS",
    "BaseModelLoader",
    "DefaultLoader",
    "FinetuneConfig",
    "FinetuneEpoch",
    "FinetuneProgress",
    "FinetuneResult",
    "epoch_order",
    "finetune",
    "resolve_splits",
]

#: The libraries an adapter's metadata records (as before issue 12): the adapter's fingerprint,
#: its model id, hashes them, so more keys would change every fine-tuned model's id.
_ADAPTER_VERSIONS = (
    "python", "gliomacompare", "torch", "transformers", "peft", "accelerate", "numpy",
)  # fmt: skip

#: Settings that do not change what is trained (ignored when checking a resumed run).
_NOT_RESULT_FIELDS = ("jobs", "eval_batch_size")


@dataclass(frozen=True)
class FinetuneResult:
    """What :func:`finetune` returns.

    Attributes:
        out_dir: the run folder.
        adapter_dir: the fine-tuned adapter (``OUT/adapter``), for ``--adapter``.
        tasks: tasks trained.
        base_model: the base model's id (what the adapter records).
        model_label: the base model's label (``tiny random-weight model`` for the tiny model).
        history: one :class:`FinetuneEpoch` per epoch run.
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
    history: tuple[FinetuneEpoch, ...]
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


def _is_tiny_name(base: str) -> bool:
    """``tiny``, or ``tiny-<name>`` that is not a folder on this machine."""
    return base == "tiny" or (base.startswith("tiny-") and not Path(base).expanduser().exists())


class DefaultLoader:
    """``tiny`` / ``tiny-<family>`` -> :func:`~GliomaCompareLib.vlm.tiny.build_tiny_model`;
    anything else -> :func:`~GliomaCompareLib.vlm.hf_backend.load_model` (local files only)."""

    def load(self, base: str, *, device: str, load_in_4bit: bool, tiny_seed: int):
        if _is_tiny_name(base):
            family = parse_tiny_name(base)
            if load_in_4bit:
                raise ValueError(
                    "The in-code tiny model is not quantised; for QLoRA save it "
                    "(GliomaCompareLib.vlm.tiny.save_tiny_model) and pass its folder as --model"
                )

            model, processor = build_tiny_model(tiny_seed, family)
            model.to(device)
            model_id = tiny_model_id(tiny_seed, family)
            info = {
                "model_id": model_id,
                "revision": f"tiny-seed{tiny_seed}"
                if family == "mllama"
                else f"tiny-{family}-seed{tiny_seed}",
                "model_label": tiny_model_label(family),
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


def _adapter_versions() -> dict:
    """The versions the adapter's metadata records: these keys only, because the adapter's
    fingerprint (its model id) hashes them; the run manifest has all of
    :func:`~GliomaCompareLib.versions.library_versions`."""
    versions = library_versions()
    return {name: versions[name] for name in _ADAPTER_VERSIONS}


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


# --------------------------------------------------------------------------- the run


def _result_from_manifest(out: Path, manifest: dict, seconds: float) -> FinetuneResult:
    return FinetuneResult(
        out_dir=out,
        adapter_dir=out / ADAPTER_DIR,
        tasks=tuple(manifest["tasks"]),
        base_model=manifest["base_model"],
        model_label=manifest["model_label"],
        history=tuple(FinetuneEpoch.from_dict(r) for r in manifest["history"]),
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

    request = _Request(
        data=data,
        tasks=_parse_tasks(tasks),
        base=base,
        out=Path(out_dir),
        config=config or FinetuneConfig(),
        splits=splits,
        split_fractions=split_fractions,
        split_seed=split_seed,
        resume=resume,
        progress=progress,
        loader=loader or DefaultLoader(),
        start_time=time.perf_counter(),
    )
    if request.config.balance_grades != "none" and "grade" not in request.tasks:
        raise ValueError("balance_grades applies to the grade task, which is not being trained")
    specs = load_tasks(request.config.prompts_dir)
    dist = init_distributed(request.config.device)
    try:
        return _finetune(dist, request, specs)
    finally:
        dist.close()


@dataclass(frozen=True)
class _Request:
    """The arguments of one :func:`finetune` call (see there)."""

    data: Any
    tasks: tuple[str, ...]
    base: str
    out: Path
    config: FinetuneConfig
    splits: Any
    split_fractions: tuple[float, float, float]
    split_seed: int
    resume: bool
    progress: Callable[[FinetuneProgress], None] | None
    loader: BaseModelLoader
    start_time: float


def _finetune(dist: DistContext, req: _Request, specs) -> FinetuneResult:
    """The body of :func:`finetune` once the processes are joined."""
    if req.config.load_in_4bit and dist.device.type != "cuda":
        raise ValueError(
            "QLoRA (--4bit) loads the base model in 4 bits with bitsandbytes, which needs a "
            "CUDA GPU; none is in use here (train without --4bit, or on a CUDA machine)"
        )
    # data and split (process 0 makes a missing split file, the others read it)
    cohort = (
        req.data
        if isinstance(req.data, Cohort)
        else discover_cases(req.data, validate=True, full=False)
    )
    splits, split_path = _shared_splits(dist, req, cohort)
    # the run folder: a new run, a resumed one, or one finished already
    signature = _signature(dist, req, specs, cohort, splits)
    previous = _previous_run(req, signature)
    if previous and previous.get("status") == "finished" and (req.out / ADAPTER_DIR).is_dir():
        return _result_from_manifest(req.out, previous, time.perf_counter() - req.start_time)
    # examples
    trainer = Trainer(req.tasks, req.base, req.out, req.config, dist, req.progress, req.loader)
    train_set, val_set = _example_sets(trainer, req, cohort, splits, previous)
    # model, optimizer, checkpoint
    trainer.prepare(train_set, val_set, signature, req.resume)
    book = RunBook(
        out=req.out,
        signature=signature,
        tasks=req.tasks,
        template_hashes={t: specs[t].template_hash for t in req.tasks},
        config=req.config,
        base_meta=_base_meta(trainer.info, req.config),
        data_meta=_data_meta(cohort, train_set, val_set),
        split_meta=_split_meta(splits, split_path),
        versions=_adapter_versions(),
    )
    # train
    trainer.fit(train_set, val_set, specs, book)
    return _result(req, trainer, book)


def _shared_splits(dist: DistContext, req: _Request, cohort):
    """The split, made (or read) by process 0 first; test patients never enter training."""
    if dist.is_main:
        req.out.mkdir(parents=True, exist_ok=True)
        splits, path = resolve_splits(
            cohort,
            req.splits,
            req.out / "splits.json",
            fractions=req.split_fractions,
            seed=req.split_seed,
        )
    dist.barrier()
    if not dist.is_main:
        splits, path = resolve_splits(cohort, req.splits, req.out / "splits.json", create=False)
    used = set(splits.ids("train")) | set(splits.ids("val"))
    leaked = set(splits.ids("test")) & used
    if leaked:  # Splits refuses overlaps already; this guards the promise made above
        raise ValueError(f"test patients {sorted(leaked)[:3]} would enter fine-tuning")
    return splits, path


def _signature(dist: DistContext, req: _Request, specs, cohort, splits) -> dict:
    """What a resumed run must share with the call that started it."""
    config = req.config.to_dict()
    return {
        "tasks": list(req.tasks),
        "base": req.base,
        "config": {k: v for k, v in config.items() if k not in _NOT_RESULT_FIELDS},
        "split_hash": splits.hash,
        "data_dir": str(cohort.data_dir or cohort.root),
        "template_hashes": {t: specs[t].template_hash for t in req.tasks},
        "world_size": dist.world_size,
    }


def _previous_run(req: _Request, signature: dict) -> dict | None:
    """The manifest of a run already in ``req.out`` (None when there is none).

    Raises:
        ValueError: a run is there but ``resume`` was not asked for, or it has other settings.
    """
    path = req.out / MANIFEST_FILE
    if not path.is_file():
        return None
    previous = json.loads(path.read_text())
    if not req.resume:
        raise ValueError(
            f"{req.out} already holds a fine-tuning run ({previous.get('status')}); pass "
            "--resume to continue it, or choose another --out"
        )
    old, new = previous.get("signature") or {}, jsonable(signature)
    if old != new:
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if "config" in changed:
            oc, nc = old.get("config") or {}, new["config"]
            changed += [f"config.{k}" for k in sorted(set(oc) | set(nc)) if oc.get(k) != nc.get(k)]
        raise ValueError(
            f"{req.out}: cannot resume: the run was started with other settings or data "
            f"(changed: {', '.join(changed)}); use the same settings, or another --out"
        )
    return previous


def _example_sets(trainer: Trainer, req: _Request, cohort, splits, previous: dict | None):
    """The training and validation examples (cached in ``OUT/data``).

    Raises:
        ValueError: no training example, or examples that differ from a resumed run's.
    """
    train_ids, val_ids = splits.ids("train"), splits.ids("val")
    train_set = trainer.examples(cohort, train_ids, "train", keep_masks=False)
    val_set = trainer.examples(cohort, val_ids, "val", keep_masks=True)
    if not train_set.examples:
        reasons = "; ".join(list(train_set.skipped.values())[:3])
        raise ValueError(
            f"No training example for {', '.join(req.tasks)} among the {len(train_ids)} "
            f"training patients of split {splits.hash}" + (f" ({reasons})" if reasons else "")
        )
    recorded = (previous or {}).get("data") or {}
    for name, examples in (("train", train_set), ("val", val_set)):
        fingerprint = recorded.get(f"{name}_fingerprint")
        if fingerprint and fingerprint != examples.fingerprint():
            raise ValueError(
                f"{req.out}: cannot resume: the {name} examples differ from those the run "
                "started with (the data files changed); use another --out"
            )
    return train_set, val_set


def _base_meta(info: dict, config: FinetuneConfig) -> dict:
    return {
        "base_model": info["model_id"],
        "base_model_names": [n for n in info.get("names", []) if n],
        "base_model_revision": info.get("revision"),
        "model_label": info["model_label"],
        "quantization": "bnb-4bit-nf4" if config.load_in_4bit else None,
    }


def _data_meta(cohort, train_set: ExampleSet, val_set: ExampleSet) -> dict:
    return {
        "data_dir": str(cohort.data_dir or cohort.root),
        "train_cases": sorted({e.case_id for e in train_set.examples}),
        "val_cases": sorted({e.case_id for e in val_set.examples}),
        "n_train": len(train_set),
        "n_val": len(val_set),
        "counts": {"train": train_set.counts(), "val": val_set.counts()},
        "train_fingerprint": train_set.fingerprint(),
        "val_fingerprint": val_set.fingerprint(),
        "skipped": {**train_set.skipped, **val_set.skipped},
        "notes": {**train_set.notes, **val_set.notes},
    }


def _split_meta(splits, path) -> dict:
    return {
        "hash": splits.hash,
        "file": str(path) if path else None,
        "train": list(splits.ids("train")),
        "val": list(splits.ids("val")),
        "test_never_used": list(splits.ids("test")),
    }


def _result(req: _Request, trainer: Trainer, book: RunBook) -> FinetuneResult:
    best = trainer.best or {}
    data = book.data_meta
    return FinetuneResult(
        out_dir=req.out,
        adapter_dir=req.out / ADAPTER_DIR,
        tasks=req.tasks,
        base_model=trainer.info["model_id"],
        model_label=trainer.info["model_label"],
        history=tuple(trainer.history),
        best_epoch=int(best.get("epoch") or trainer.history[-1].epoch),
        best_metrics=best.get("metrics") or {},
        best_val_loss=best.get("val_loss"),
        stop_reason=trainer.stop_reason,
        split_hash=book.split_meta["hash"],
        train_cases=tuple(data["train_cases"]),
        val_cases=tuple(data["val_cases"]),
        n_train=data["n_train"],
        n_val=data["n_val"],
        skipped=dict(data["skipped"]),
        world_size=trainer.dist.world_size,
        resumed=trainer.resumed,
        seconds=time.perf_counter() - req.start_time,
    )
