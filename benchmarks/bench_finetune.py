"""Benchmark: LoRA fine-tuning of the ``tiny`` VLM as the CPU demo would run it.

Two measurements in the same process, on the same synthetic cohort and the same examples:

- ``finetune()``: the whole call (example building, training, validation every epoch with
  greedy answers, checkpoints, adapter), with its mean time per optimizer step taken from the
  progress events (steps right after a validation or checkpoint are left out).
- baseline ``raw peft loop``: the same model, LoRA settings, batches and number of optimizer
  steps, trained by a bare loop (``model(**batch, labels=...).loss.backward(); step()``): no
  loss normalisation across steps, no validation, no checkpoints. (``finetune()`` computes the
  output layer only at the answer positions, so it may be the faster of the two.)

Printed: the wall time of ``finetune()`` against the demo's budget for this stage (about a
minute on a 2-core CPU, issue 7), the ratio of its step time to the bare loop's (the overhead
of this module's training loop; target <= 1.3x), the peak memory of the process, and the
validation answer statuses after the last epoch (what the demo's fine-tuned tiny model will
show). Timings on a shared machine are noisy: each loop is timed ``--repeats`` times and the
fastest counts.

Run: ``.venv/bin/python benchmarks/bench_finetune.py [--cases 12] [--epochs 12] [--repeats 2]``
"""

from __future__ import annotations

import argparse
import itertools
import os
import resource
import sys
import tempfile
import time
from pathlib import Path


def _cohort(folder: Path, cases: int, shape: tuple[int, int, int]):
    from GliomaCompareLib.data.discovery import discover_cases
    from GliomaCompareLib.data.synthetic import SynthConfig, write_cohort

    data = write_cohort(folder, SynthConfig(cases=cases, seed=0, shape=shape), jobs=1)
    return discover_cases(data)


def _raw_loop(config, examples, steps: int) -> float:
    """Seconds per optimizer step of a bare peft training loop on the same batches."""
    import torch
    from peft import LoraConfig, get_peft_model

    from GliomaCompareLib.vlm.finetune_data import FinetuneCollator
    from GliomaCompareLib.vlm.tiny import build_tiny_model

    model, processor = build_tiny_model(config.tiny_seed)
    model.config.use_cache = False
    lora = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=config.target_regex(),
    )
    model = get_peft_model(model, lora)
    model.train()
    collator = FinetuneCollator.for_model(model.get_base_model(), processor)
    batches = [
        collator(examples[i : i + config.batch_size])
        for i in range(0, len(examples), config.batch_size)
    ]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as finetune() does for a model this small on the CPU
    try:
        start = time.perf_counter()
        for step in range(steps):
            batch = dict(batches[step % len(batches)])
            model(**batch, use_cache=False).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return (time.perf_counter() - start) / steps
    finally:
        torch.set_num_threads(threads)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=12, help="synthetic patients (12)")
    parser.add_argument("--shape", default="96,96,64", help="volume shape (96,96,64)")
    parser.add_argument("--tasks", default="grade,point,box,polygon")
    parser.add_argument("--slices-per-case", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--warmup-ratio", type=float, default=0.03)
    parser.add_argument("--eval-every", type=int, default=6, help="validate every N epochs (6)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--budget-s", type=float, default=60.0, help="demo stage budget (60)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from GliomaCompareLib.vlm.finetune import FinetuneConfig, finetune
    from GliomaCompareLib.vlm.finetune_data import build_examples

    shape = tuple(int(v) for v in args.shape.split(","))
    config = FinetuneConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_ratio=args.warmup_ratio,
        eval_every=args.eval_every,
        extra_target_modules=("lm_head",),
        slices_per_case=args.slices_per_case,
        patience=None,
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        cohort = _cohort(tmp / "cohort", args.cases, shape)
        print(f"cohort: {args.cases} cases {shape} in {time.perf_counter() - t0:.1f} s")
        best_total, best_step, result = None, None, None
        for repeat in range(args.repeats):
            stamps: list[tuple[str, int, float]] = []

            def progress(event, stamps=stamps):
                stamps.append((event.phase, event.global_step, time.perf_counter()))

            start = time.perf_counter()
            result = finetune(
                cohort, args.tasks, "tiny", tmp / f"ft{repeat}", config, progress=progress
            )
            total = time.perf_counter() - start
            steps = [
                b[2] - a[2]
                for a, b in itertools.pairwise(stamps)
                if a[0] == "train" and b[0] == "train" and b[1] == a[1] + 1
            ]
            step = sum(steps) / len(steps)
            best_total = total if best_total is None else min(best_total, total)
            best_step = step if best_step is None else min(best_step, step)
        from GliomaCompareLib.data.splits import Splits

        splits = Splits.load(tmp / "ft0" / "splits.json")
        examples = list(
            build_examples(cohort, splits.train, result.tasks, config.example_settings()).examples
        )
        raw = min(
            _raw_loop(config, examples, steps=min(30, result.history[-1].global_step))
            for _ in range(args.repeats)
        )
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"data: {result.n_train} training / {result.n_val} validation examples "
        f"({', '.join(result.tasks)}), {result.history[-1].global_step} optimizer steps of "
        f"{args.batch_size}, {args.epochs} epochs"
    )
    print(
        f"finetune(): {best_total:.1f} s in all (budget {args.budget_s:.0f} s: "
        f"{best_total / args.budget_s:.2f}x of it)"
    )
    print(
        f"step time: finetune() {best_step * 1000:.0f} ms, raw peft loop {raw * 1000:.0f} ms "
        f"-> {best_step / raw:.2f}x the baseline (target <= 1.3x)"
    )
    print(f"peak memory (max RSS of this process): {peak_mb:.0f} MB")
    last = result.history[-1]
    print(f"last epoch: train loss {last.train_loss:.3f}, val loss {last.val_loss:.3f}")
    for task, metrics in last.metrics.items():
        shown = {k: v for k, v in metrics.items() if k.endswith("rate") and v is not None}
        print(f"  {task}: " + ", ".join(f"{k} {v:.2f}" for k, v in shown.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
