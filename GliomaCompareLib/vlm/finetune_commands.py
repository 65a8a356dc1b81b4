"""``gliomacompare finetune-vlm``: LoRA / QLoRA fine-tuning from the shell (over :func:`finetune`).

Runs alone, or in every process of ``torchrun --nproc_per_node N -m GliomaCompareLib
finetune-vlm ...`` / ``accelerate launch -m GliomaCompareLib finetune-vlm ...``; only process 0
prints.
"""

from __future__ import annotations

import os
import sys

from GliomaCompareLib.argtypes import positive_int, split_fractions
from GliomaCompareLib.data.slices import SliceRule
from GliomaCompareLib.vlm.finetune import DEFAULT_TARGET_MODULES, FinetuneConfig, finetune

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
    p.add_argument("--data", required=True, help="BraTS data folder (or up to two levels above)")
    p.add_argument(
        "--task",
        required=True,
        help="grade, point, box or polygon; several (comma-separated) or 'all' train one "
        "adapter for all of them",
    )
    p.add_argument(
        "--base",
        required=True,
        help="base model: 'tiny' (random-weight test model built in code), a local model folder, "
        "or a hub id in the local Hugging Face cache (never downloaded), e.g. "
        "meta-llama/Llama-3.2-11B-Vision-Instruct",
    )
    p.add_argument("--out", required=True, help="run folder (OUT/adapter is the result)")
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
    g = p.add_argument_group("LoRA")
    g.add_argument("--rank", type=positive_int, default=16, help="LoRA rank r (16)")
    g.add_argument("--alpha", type=float, default=32.0, help="LoRA alpha (32; scale alpha/r)")
    g.add_argument("--dropout", type=float, default=0.05, help="LoRA dropout (0.05)")
    g.add_argument(
        "--target-modules",
        default=None,
        help="comma-separated module names to adapt (default "
        "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj)",
    )
    g.add_argument(
        "--target-scope",
        default="language_model",
        help="adapt only modules under this one ('language_model', the default, leaves the "
        "vision encoder alone; 'any' for everywhere)",
    )
    g.add_argument(
        "--extra-target-modules",
        default=None,
        help="comma-separated module names adapted outside the scope too (e.g. lm_head: "
        "the tiny random model learns far faster with it)",
    )
    g.add_argument(
        "--4bit",
        "--load-in-4bit",
        dest="load_in_4bit",
        action="store_true",
        help="QLoRA: 4-bit NF4 base weights (CUDA and bitsandbytes only)",
    )
    g.add_argument(
        "--gradient-checkpointing", action="store_true", help="save activation memory (big models)"
    )
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=positive_int, default=3, help="epochs (3)")
    t.add_argument("--lr", type=float, default=2e-4, help="peak learning rate (2e-4; tiny: ~3e-3)")
    t.add_argument("--batch-size", type=positive_int, default=4, help="examples per process (4)")
    t.add_argument("--grad-accum", type=positive_int, default=1, help="micro-batches per step (1)")
    t.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (0)")
    t.add_argument("--warmup-ratio", type=float, default=0.03, help="warm-up share (0.03)")
    t.add_argument("--scheduler", default="linear", choices=["linear", "cosine", "constant"])
    t.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (1.0)")
    t.add_argument("--seed", type=int, default=0, help="LoRA init, example order, dropout (0)")
    t.add_argument(
        "--balance-grades",
        nargs="?",
        const="oversample",
        default="none",
        choices=["none", "oversample", "weighted"],
        help="grade task: balance LGG and HGG slices per epoch (bare flag: oversample)",
    )
    t.add_argument(
        "--checkpoint-every",
        type=positive_int,
        default=None,
        help="also checkpoint every N optimizer steps (default: at epoch ends)",
    )
    t.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cuda", "cpu"],
        help="auto: CUDA when available (under torchrun, one GPU per process)",
    )
    t.add_argument("--tiny-seed", type=int, default=0, help="weight seed of --base tiny (0)")
    t.add_argument("--jobs", type=positive_int, default=1, help="processes loading cases (1)")
    v = p.add_argument_group("validation")
    v.add_argument("--eval-every", type=positive_int, default=1, help="validate every N epochs")
    v.add_argument(
        "--patience",
        type=int,
        default=3,
        help="validations without improvement before stopping (3; 0 = never stop early)",
    )
    v.add_argument(
        "--monitor",
        default="val_loss",
        choices=["val_loss", "task"],
        help="what early stopping and the kept adapter follow (val_loss)",
    )
    v.add_argument(
        "--min-delta",
        type=float,
        default=0.0,
        help="smallest change of the monitored value that counts as an improvement (0)",
    )
    v.add_argument(
        "--max-val-slices",
        type=positive_int,
        default=None,
        help="answer at most N validation slices per task for the task metrics (default all)",
    )
    v.add_argument("--eval-batch-size", type=positive_int, default=8, help="answers per call (8)")
    d = p.add_argument_group("data (as the vlm command asks)")
    d.add_argument(
        "--slices-per-case",
        type=positive_int,
        default=None,
        help="at most K slices per case, evenly spaced over the tumour (default all selected)",
    )
    d.add_argument(
        "--min-area-mm2", type=float, default=None, help="slice rule: least WT area (100)"
    )
    d.add_argument(
        "--coords",
        default="pixel",
        choices=["pixel", "normalized", "per_mille"],
        help="coordinate system of prompts and answers (pixel)",
    )
    d.add_argument("--max-vertices", type=positive_int, help="polygon K (default 8)")
    d.add_argument(
        "--point-target",
        default="centroid",
        choices=["centroid", "inside"],
        help="point answer: the WT centroid (default, the centre the VLM arm measures from) or "
        "the tumour's deepest pixel (always inside it)",
    )
    d.add_argument("--prompts", help="prompts folder (default Resources/prompts)")
    p.set_defaults(func=_finetune)


def _config(args):
    from dataclasses import replace

    rule = SliceRule()
    if args.min_area_mm2 is not None:
        rule = replace(rule, min_area_mm2=args.min_area_mm2)
    modules = DEFAULT_TARGET_MODULES
    if args.target_modules:
        modules = tuple(m.strip() for m in args.target_modules.split(",") if m.strip())
    if args.patience < 0:
        raise ValueError(f"--patience {args.patience}: must be >= 0")
    return FinetuneConfig(
        rank=args.rank,
        alpha=args.alpha,
        dropout=args.dropout,
        target_modules=modules,
        target_scope=None if args.target_scope in ("", "any") else args.target_scope,
        extra_target_modules=tuple(
            m.strip() for m in (args.extra_target_modules or "").split(",") if m.strip()
        ),
        epochs=args.epochs,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_ratio=args.warmup_ratio,
        scheduler=args.scheduler,
        max_grad_norm=args.max_grad_norm if args.max_grad_norm > 0 else None,
        seed=args.seed,
        balance_grades=args.balance_grades,
        eval_every=args.eval_every,
        patience=args.patience or None,
        monitor=args.monitor,
        min_delta=args.min_delta,
        max_val_slices=args.max_val_slices,
        eval_batch_size=args.eval_batch_size,
        slice_rule=rule,
        slices_per_case=args.slices_per_case,
        coordinate_system=args.coords,
        max_vertices=args.max_vertices,
        point_target=args.point_target,
        prompts_dir=args.prompts,
        device=args.device,
        load_in_4bit=args.load_in_4bit,
        gradient_checkpointing=args.gradient_checkpointing,
        tiny_seed=args.tiny_seed,
        checkpoint_every=args.checkpoint_every,
        jobs=args.jobs,
    )


def _finetune(args) -> int:

    config = _config(args)
    main = int(os.environ.get("RANK", "0")) == 0
    bar = _ProgressBar() if main else None
    try:
        result = finetune(
            args.data,
            args.task,
            args.base,
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
        print(_summary(result, args))
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


def _summary(result, args) -> str:
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
    backend = "tiny" if args.base == "tiny" else f"transformers --model {args.base}"
    if args.base == "tiny" and args.tiny_seed:
        backend += f" --seed {args.tiny_seed}"
    asked = "" if args.coords == "pixel" else f" --coords {args.coords}"
    if args.max_vertices:
        asked += f" --max-vertices {args.max_vertices}"
    lines.append(f"adapter: {result.adapter_dir}")
    lines.append(
        f"use it: gliomacompare vlm --backend {backend} --adapter {result.adapter_dir} "
        f"--tasks {','.join(result.tasks)}{asked} --split SPLITS --data DATA --out OUT"
    )
    return "\n".join(lines)
