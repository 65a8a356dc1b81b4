"""``gliomacompare finetune-vlm``: LoRA / QLoRA fine-tuning from the shell (over :func:`finetune`).

Runs alone, or in every process of ``torchrun --nproc_per_node N -m GliomaCompareLib
finetune-vlm ...`` / ``accelerate launch -m GliomaCompareLib finetune-vlm ...``; only process 0
prints.
"""

from __future__ import annotations

import os
import sys

from GliomaCompareLib.argtypes import (
    DEVICE_HELP,
    add_alias,
    add_dataclass_arguments,
    add_quiet_option,
    dataclass_from_args,
    device,
    split_fractions,
)
from GliomaCompareLib.vlm.finetune import FinetuneConfig, finetune

__all__ = ["register"]


def register(sub) -> None:
    p = sub.add_parser(
        "finetune-vlm",
        help="fine-tune a LoRA / QLoRA adapter of the VLM for grade, point, box or polygon",
        description=(
            "Fine-tune a LoRA adapter of a vision-language model on the training patients of a "
            "split (never the test ones): each selected FLAIR slice with the task's prompt and "
            "the exact JSON answer computed from the ground truth. Validates on the split's val "
            "patients every epoch (loss and task metrics), stops early, resumes (--resume), and "
            "writes OUT/adapter for `gliomacompare vlm --adapter OUT/adapter`. Runs under "
            "torchrun / accelerate launch on several GPUs."
        ),
    )
    p.add_argument(
        "-i", "--data", required=True, help="BraTS data folder (or up to two levels above)"
    )
    p.add_argument(
        "--tasks",
        required=True,
        help="grade, point, box or polygon; several (comma-separated) or 'all' train one "
        "adapter for all of them",
    )
    p.add_argument(
        "--model",
        required=True,
        help="base model: 'tiny' (random-weight test model built in code), a local model folder, "
        "or a hub id in the local Hugging Face cache (never downloaded), e.g. "
        "meta-llama/Llama-3.2-11B-Vision-Instruct",
    )
    p.add_argument("-o", "--out", required=True, help="run folder (OUT/adapter is the result)")
    p.add_argument(
        "--splits",
        help="splits.json (read when it exists, else made once and written there; default "
        "OUT/splits.json). Use the comparison's split so test patients stay unseen",
    )
    p.add_argument(
        "--split-fractions",
        type=split_fractions,
        default=(0.6, 0.2, 0.2),
        help="train,val,test fractions of a new split (0.6,0.2,0.2)",
    )
    p.add_argument("--split-seed", type=int, default=0, help="seed of a new split (0)")
    p.add_argument("--resume", action="store_true", help="continue the run in OUT")
    # every setting of FinetuneConfig, generated from its fields (defaults and help live there)
    # (--device as in every command: auto, cpu, cuda or cuda:N)
    add_dataclass_arguments(
        p,
        FinetuneConfig,
        meta={
            "device": {"type": device, "choices": None, "help": DEVICE_HELP},
            "tiny_seed": {"help": "weight seed of --model tiny"},
        },
    )
    add_quiet_option(p, "no progress bar (the summary is still printed)")
    add_alias(p, "--task", "--tasks")
    add_alias(p, "--base", "--model")
    p.set_defaults(func=_finetune)


def _finetune(args) -> int:
    config = dataclass_from_args(FinetuneConfig, args)
    main = int(os.environ.get("RANK", "0")) == 0
    bar = _ProgressBar() if main and not args.quiet else None
    try:
        result = finetune(
            args.data,
            args.tasks,
            args.model,
            args.out,
            config,
            splits=args.splits,
            split_fractions=args.split_fractions,
            split_seed=args.split_seed,
            resume=args.resume,
            progress=bar.update if bar else None,
        )
    finally:
        if bar:
            bar.close()
    if main:
        print(_summary(result, args.model, config))
    return 0


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _epoch_line(record) -> str:
    parts = [f"epoch {record.epoch}: train loss {record.train_loss:.4f}"]
    if record.val_loss is not None:
        parts.append(f"val loss {record.val_loss:.4f}")
    for task, m in record.metrics.items():
        keys = {
            "grade": ("balanced_accuracy", "accuracy", "ok_rate"),
            "point": ("inside_rate", "distance_mm", "ok_rate"),
        }.get(task, ("dice", "ok_rate"))
        parts.append(f"{task} " + " ".join(f"{k} {_fmt(m.get(k))}" for k in keys))
    if record.improved:
        parts.append("(kept)")
    return "; ".join(parts) + f"; {record.seconds:.1f} s"


class _ProgressBar:
    """A tqdm bar over optimizer steps on stderr, and one line per epoch."""

    def __init__(self):
        self._bar = None

    def update(self, event) -> None:
        from tqdm import tqdm

        if self._bar is None:
            self._bar = tqdm(
                total=event.total_steps,
                initial=event.global_step,
                unit="step",
                desc="finetune",
                file=sys.stderr,
                leave=False,
            )
        self._bar.n = event.global_step
        self._bar.set_postfix(
            epoch=f"{event.epoch}/{event.epochs}",
            loss=_fmt(event.loss),
            phase=event.phase,
            refresh=False,
        )
        if event.phase == "train":
            self._bar.update(0)  # redraws at most every mininterval
        else:
            self._bar.refresh()
        if event.phase == "epoch" and event.record is not None:
            self._bar.write(_epoch_line(event.record), file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _summary(result, base: str, config: FinetuneConfig) -> str:
    lines = [
        f"base model: {result.model_label} ({result.base_model})",
        f"tasks: {', '.join(result.tasks)}; {result.n_train} training slices from "
        f"{len(result.train_cases)} patients, {result.n_val} validation slices from "
        f"{len(result.val_cases)} patients (split {result.split_hash}); "
        f"{result.world_size} process(es)",
    ]
    for record in result.history:
        lines.append("  " + _epoch_line(record))
    lines.append(
        f"stopped: {result.stop_reason}; kept epoch {result.best_epoch}"
        + (f" (val loss {result.best_val_loss:.4f})" if result.best_val_loss is not None else "")
    )
    if result.skipped:
        lines.append(f"{len(result.skipped)} case(s) / slice(s) left out (see finetune.json)")
    backend = "tiny" if base == "tiny" else f"transformers --model {base}"
    if base == "tiny" and config.tiny_seed:
        backend += f" --seed {config.tiny_seed}"
    coords = config.coordinate_system
    asked = "" if coords == "pixel" else f" --coords {coords}"
    if config.max_vertices:
        asked += f" --max-vertices {config.max_vertices}"
    lines.append(f"adapter: {result.adapter_dir}")
    lines.append(
        f"use it: gliomacompare vlm --backend {backend} --adapter {result.adapter_dir} "
        f"--tasks {','.join(result.tasks)}{asked} --splits SPLITS --data DATA --out OUT"
    )
    return "\n".join(lines)
