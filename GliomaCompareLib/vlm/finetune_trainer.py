"""The fine-tuning trainer: the model with its LoRA adapter, optimizer steps, validation,
checkpoints and the epoch loop (internal to :func:`~GliomaCompareLib.vlm.finetune.finetune`,
whose module docstring says what a run does).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from GliomaCompareLib.distributed import DistContext
from GliomaCompareLib.fileio import atomic_write_text, jsonable
from GliomaCompareLib.history import EpochRecord, flatten_metrics, write_history
from GliomaCompareLib.vlm.families import family_of_model
from GliomaCompareLib.vlm.finetune_config import BALANCE_MODES, FinetuneConfig
from GliomaCompareLib.vlm.finetune_data import (
    IGNORE_INDEX,
    ExampleSet,
    FinetuneCollator,
    FinetuneExample,
    build_examples,
    load_example_set,
    save_example_set,
)
from GliomaCompareLib.vlm.finetune_eval import monitor_value, score_answer, summarize_validation
from GliomaCompareLib.vlm.hf_backend import ADAPTER_META_FILE, TransformersBackend
from GliomaCompareLib.vlm.tasks import TASK_NAMES, load_tasks
from GliomaCompareLib.vlm.types import DecodingConfig, Query

__all__ = [
    "ADAPTER_DIR",
    "HISTORY_COLUMNS",
    "MANIFEST_FILE",
    "FinetuneEpoch",
    "FinetuneProgress",
    "Trainer",
    "epoch_order",
]

log = logging.getLogger(__name__)

MANIFEST_FILE = "finetune.json"
ADAPTER_DIR = "adapter"
_SMALL_MODEL = 10_000_000  # parameters; below this, one CPU thread is faster (see hf_backend)
#: The first columns of ``history.csv`` (the tasks' metrics follow).
HISTORY_COLUMNS: tuple[str, ...] = (
    "epoch", "global_step", "train_loss", "val_loss", "monitor_value", "improved", "lr",
    "seconds", "examples",
)  # fmt: skip


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, kw_only=True)
class FinetuneEpoch(EpochRecord):
    """One finished fine-tuning epoch (an :class:`~GliomaCompareLib.history.EpochRecord`).

    Attributes:
        epoch: 1-based.
        seconds: wall time of the epoch including validation.
        metrics: task -> metric name -> value (see
            :func:`~GliomaCompareLib.vlm.finetune_eval.summarize_validation`); empty when not
            validated.
        global_step: optimizer steps done by its end.
        train_loss: mean cross-entropy per answer token over the epoch (nats).
        val_loss: the same on the validation examples, or None (not validated this epoch, or
            no validation examples).
        monitor_value: the value compared for early stopping, or None.
        improved: this validation was the best so far (its adapter is ``OUT/adapter``).
        lr: learning rate at the end of the epoch.
        examples: training examples seen (all processes).
    """

    global_step: int
    train_loss: float
    val_loss: float | None
    monitor_value: float | None
    improved: bool
    lr: float
    examples: int

    def row(self) -> dict[str, Any]:
        """The ``history.csv`` row: :data:`HISTORY_COLUMNS`, then ``<task>_<metric>``."""
        return {
            **{name: getattr(self, name) for name in HISTORY_COLUMNS},
            **flatten_metrics(self.metrics),
        }

    def to_dict(self) -> dict:
        return jsonable(asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> FinetuneEpoch:
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
    record: FinetuneEpoch | None = None


# --------------------------------------------------------------------------- helpers


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


class Trainer:
    """The model, optimizer and training state of one fine-tuning call (see
    :func:`~GliomaCompareLib.vlm.finetune.finetune`): examples, steps, validation, checkpoints."""

    def __init__(
        self,
        tasks: tuple[str, ...],
        base: str,
        out: Path,
        config: FinetuneConfig,
        dist: DistContext,
        progress,
        loader,
    ):
        self.tasks = tasks
        self.base = base
        self.out = out
        self.config = config
        self.dist = dist
        self.progress = progress if dist.is_main else None
        self.loader = loader
        self.history: list[FinetuneEpoch] = []
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
        self.resumed = False
        self.global_batch = config.batch_size * config.grad_accum * dist.world_size

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
        cached = load_example_set(path, key, settings) if self.dist.is_main else None
        if self.dist.is_main and cached is None:
            cached = build_examples(cohort, case_ids, self.tasks, settings, jobs=self.config.jobs)
            save_example_set(path, cached, key)
        self.dist.barrier()
        if not self.dist.is_main:
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

        # the family names its language model (``language_model``, Idefics3's ``text_model``)
        targets = family_of_model(model).lora_config(cfg)
        lora = LoraConfig(
            r=cfg.rank,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=targets.target_regex(),
            bias="none",
        )
        torch.manual_seed(cfg.seed)  # identical LoRA initialisation in every process
        try:
            model = get_peft_model(model, lora)
        except ValueError as exc:
            raise ValueError(
                f"LoRA target modules {list(cfg.target_modules)} under "
                f"{targets.target_scope or 'any module'!r} match nothing in {self.base} ({exc})"
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
        if self.dist.world_size > 1:
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
        cfg, world = self.config, self.dist.world_size
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
        scale = self.dist.world_size / max(global_tokens, 1.0)
        loss_sum = 0.0
        for i, batch in enumerate(batches):
            last = i == len(batches) - 1
            sync = nullcontext() if last or self.dist.world_size == 1 else self.ddp.no_sync()
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
            mine = list(val.examples[dist.rank :: dist.world_size])
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
            my_items = chosen[dist.rank :: dist.world_size]
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
        if self.dist.is_main:
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
        if self.dist.is_main:
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
        self.history = [FinetuneEpoch.from_dict(r) for r in state["history"]]
        self.best = state["best"]
        self.bad_validations = int(state["bad_validations"])
        self.stop_reason = state.get("stop_reason")
        log.info("resumed from %s (epoch %d, step %d)", ckpt, self.epoch, self.global_step)
        return True

    def save_adapter(self, meta: dict) -> None:
        if not self.dist.is_main:
            return
        final = self.out / ADAPTER_DIR
        tmp = self.out / f".{ADAPTER_DIR}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        # the vocabulary never changes, so the (huge) embedding and output layers are not saved
        self.model.save_pretrained(tmp, save_embedding_layers=False)

        (tmp / ADAPTER_META_FILE).write_text(json.dumps(jsonable(meta), indent=2) + "\n")
        _replace_dir(tmp, final)

    def report(self, phase: str, record: FinetuneEpoch | None = None) -> None:
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

    # ------------------------------------------------------------------ the epoch loop
    def prepare(self, train_set: ExampleSet, val_set: ExampleSet, signature: dict, resume: bool):
        """Model, answer length, optimizer and schedule; the newest checkpoint on ``resume``."""
        cfg = self.config
        self.setup_model()
        tok = self.processor.tokenizer
        longest = max(
            len(tok(e.target, add_special_tokens=False)["input_ids"])
            for e in (*train_set.examples, *val_set.examples)
        )
        self.max_new_tokens = cfg.max_new_tokens or longest + 16
        n_order = len(epoch_order(train_set.examples, 1, cfg.seed, cfg.balance_grades))
        self.global_batch = cfg.batch_size * cfg.grad_accum * self.dist.world_size
        self.setup_optimizer(math.ceil(n_order / self.global_batch))
        self.resumed = self.load_checkpoint(signature) if resume else False
        self.wrap_ddp()

    def fit(self, train_set: ExampleSet, val_set: ExampleSet, specs, book: RunBook) -> None:
        """Epochs until the last one or early stopping; then the final adapter and manifest."""
        import torch

        threads = torch.get_num_threads()
        if self.small and self.dist.device.type == "cpu":
            torch.set_num_threads(1)  # see hf_backend: small matrices run faster on one thread
        try:
            if self.dist.is_main:
                book.write_manifest(self, "running")
            if not self.resumed:
                # each process draws its own dropout masks from here on
                torch.manual_seed(self.config.seed * 1000 + 1 + self.dist.rank)
            self.model.train()
            while self.stop_reason is None and self.epoch <= self.config.epochs:
                self.run_epoch(train_set, val_set, specs, book)
            if self.stop_reason is None:  # epochs reached on resume of a run stopped at its end
                self.stop_reason = "epochs"
            self.finish(bool(val_set.examples), book)
        finally:
            torch.set_num_threads(threads)

    def run_epoch(self, train_set: ExampleSet, val_set: ExampleSet, specs, book: RunBook):
        """Train the epoch in progress (from where a checkpoint left it), validate, keep the
        best adapter, decide whether to stop, and checkpoint."""
        cfg, has_val = self.config, bool(val_set.examples)
        epoch_start = time.perf_counter() - self.epoch_seconds
        self.train_epoch(train_set.examples, book.signature, epoch_start)
        last = self.epoch == cfg.epochs
        validated = has_val and (self.epoch % cfg.eval_every == 0 or last)
        val_loss, metrics, rows = None, {}, []
        if validated:
            self.report("validate")
            val_loss, metrics, rows = self.validate(val_set, specs)
        value = monitor_value(cfg.monitor, val_loss, metrics, self.tasks) if validated else None
        record = FinetuneEpoch(
            epoch=self.epoch,
            global_step=self.global_step,
            train_loss=self.epoch_loss_sum / max(self.epoch_tokens, 1.0),
            val_loss=val_loss,
            metrics=metrics,
            monitor_value=value,
            improved=self.is_improvement(value, has_val),
            lr=float(self.scheduler.get_last_lr()[0]),
            seconds=time.perf_counter() - epoch_start,
            examples=self.epoch_examples,
        )
        self.history.append(record)
        self.keep_best(record, validated, has_val, book)
        self.write_val_answers(record, rows)
        self.stop_reason = self.stop_for(has_val, last)
        self.next_epoch(book)
        self.report("epoch", record)

    def train_epoch(self, examples, signature: dict, epoch_start: float) -> None:
        cfg = self.config
        order = epoch_order(examples, self.epoch, cfg.seed, cfg.balance_grades)
        steps = math.ceil(len(order) / self.global_batch)
        while self.step_in_epoch < steps:
            self.train_step(examples, order, self.step_in_epoch)
            self.report("train")
            every = cfg.checkpoint_every
            if every and self.global_step % every == 0 and self.step_in_epoch < steps:
                self.save_checkpoint(signature, time.perf_counter() - epoch_start)

    def is_improvement(self, value: float | None, has_val: bool) -> bool:
        """Whether the monitored ``value`` beats the best so far (without validation examples
        the newest adapter is kept)."""
        if value is None:
            return not has_val
        best = self.best.get("value") if self.best else None
        if best is None:
            return True
        if self.config.monitor == "val_loss":
            return value < best - self.config.min_delta
        return value > best + self.config.min_delta

    def keep_best(self, record: FinetuneEpoch, validated: bool, has_val: bool, book) -> None:
        if record.improved:
            self.best = {
                "epoch": record.epoch,
                "value": record.monitor_value,
                "val_loss": record.val_loss,
                "metrics": record.metrics,
            }
            self.bad_validations = 0
            if has_val:  # without validation, the last epoch's is saved at the end
                self.save_adapter(book.adapter_meta(self, record))
        elif validated:
            self.bad_validations += 1

    def write_val_answers(self, record: FinetuneEpoch, rows: list[dict]) -> None:
        if self.dist.is_main and rows:
            lines = [json.dumps(jsonable({"epoch": record.epoch, **r})) for r in rows]
            atomic_write_text(self.out / "val_answers.jsonl", "\n".join(lines) + "\n")

    def stop_for(self, has_val: bool, last: bool) -> str | None:
        """Why the run stops after this epoch, or None."""
        if not has_val:
            return "no_validation" if last else None
        patience = self.config.patience
        if patience is not None and self.bad_validations >= patience:
            return "early_stopping"
        return "epochs" if last else None

    def next_epoch(self, book: RunBook) -> None:
        """Move to the next epoch and checkpoint there; history and manifest on disk."""
        self.epoch += 1
        self.step_in_epoch = 0
        self.epoch_loss_sum = self.epoch_tokens = 0.0
        self.epoch_examples = 0
        self.save_checkpoint(book.signature, 0.0)
        if self.dist.is_main:
            write_history(self.out / "history.csv", self.history, first=HISTORY_COLUMNS, last=())
            book.write_manifest(self, "running")

    def finish(self, has_val: bool, book: RunBook) -> None:
        if self.dist.is_main:
            if not has_val or not (self.out / ADAPTER_DIR / ADAPTER_META_FILE).is_file():
                self.save_adapter(book.adapter_meta(self, self.history[-1]))
            book.write_manifest(self, "finished")
        self.dist.barrier()
        self.report("done")


# --------------------------------------------------------------------------- what a run records


@dataclass(frozen=True)
class RunBook:
    """What ``finetune.json`` and the adapter's metadata hold besides the trainer's state.

    Attributes:
        out: the run folder.
        signature: what a resumed run must share with the first call.
        tasks: tasks trained; template_hashes: task -> prompt template hash.
        config: the settings.
        base_meta, data_meta, split_meta: the base model, the examples, the split.
        versions: library versions.
    """

    out: Path
    signature: dict
    tasks: tuple[str, ...]
    template_hashes: dict[str, str]
    config: FinetuneConfig
    base_meta: dict
    data_meta: dict
    split_meta: dict
    versions: dict

    def manifest(self, trainer: Trainer, status: str) -> dict:
        best = trainer.best or {}
        return {
            "status": status,
            "signature": self.signature,
            "tasks": list(self.tasks),
            "task": self.tasks[0] if len(self.tasks) == 1 else None,
            **self.base_meta,
            "prompt_template_hashes": dict(self.template_hashes),
            "coordinate_system": self.config.coordinate_system,
            "max_vertices": self.config.max_vertices,
            "split": self.split_meta,
            "data": self.data_meta,
            "config": self.config.to_dict(),
            "world_size": trainer.dist.world_size,
            "global_batch": trainer.global_batch,
            "trainable_parameters": trainer.n_trainable,
            "parameters": trainer.n_params,
            "steps_per_epoch": trainer.steps_per_epoch,
            "history": [r.to_dict() for r in trainer.history],
            "best_epoch": best.get("epoch"),
            "best_val_loss": best.get("val_loss"),
            "best_metrics": best.get("metrics"),
            "stop_reason": trainer.stop_reason,
            "versions": self.versions,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def write_manifest(self, trainer: Trainer, status: str) -> None:
        text = json.dumps(jsonable(self.manifest(trainer, status)), indent=2) + "\n"
        atomic_write_text(self.out / MANIFEST_FILE, text)

    def adapter_meta(self, trainer: Trainer, record: FinetuneEpoch) -> dict:
        meta = self.manifest(trainer, "finished")
        keep = (
            "tasks", "task", "base_model", "base_model_names", "base_model_revision",
            "model_label", "quantization", "prompt_template_hashes", "coordinate_system",
            "max_vertices", "world_size", "global_batch", "trainable_parameters", "versions",
        )  # fmt: skip
        out = {k: meta[k] for k in keep}
        if len(self.tasks) == 1:
            out["prompt_template_hash"] = self.template_hashes[self.tasks[0]]
        out.update(
            split_hash=self.split_meta["hash"],
            split_file=self.split_meta["file"],
            train_cases=self.data_meta["train_cases"],
            val_cases=self.data_meta["val_cases"],
            n_train=self.data_meta["n_train"],
            n_val=self.data_meta["n_val"],
            training=self.config.to_dict(),
            epoch=record.epoch,
            global_step=record.global_step,
            val_loss=record.val_loss,
            metrics=record.metrics,
            history=[r.to_dict() for r in trainer.history],
            created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )
        return out
