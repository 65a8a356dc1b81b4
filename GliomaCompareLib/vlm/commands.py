"""``gliomacompare vlm``: the VLM arm from the shell (a thin layer over :func:`run_vlm`)."""

from __future__ import annotations

import sys

from GliomaCompareLib.argtypes import positive_int
from GliomaCompareLib.data.slices import SliceRule
from GliomaCompareLib.vlm.backends import make_backend
from GliomaCompareLib.vlm.inference import VLMConfig, run_vlm
from GliomaCompareLib.vlm.tasks import parse_task_list
from GliomaCompareLib.vlm.types import DecodingConfig

__all__ = ["register"]


def register(sub) -> None:
    p = sub.add_parser(
        "vlm",
        help="ask a vision-language model to grade and localise gliomas on FLAIR slices",
        description=(
            "Run the VLM arm: render the selected axial FLAIR slices of each case, ask the model "
            "the grade (LGG/HGG), the tumour centre, a bounding box and a bounding polygon, parse "
            "and score every answer, vote the grade per patient and score stacked 3D masks against "
            "the whole tumour. Writes OUT/answers.jsonl, OUT/metrics/*.csv, OUT/masks/ and "
            "OUT/vlm.json; answers are cached in OUT/cache, so re-running resumes. Exits 0 when "
            "finished (failed queries are counted, not fatal)."
        ),
    )
    p.add_argument("--data", required=True, help="BraTS data folder (or up to two levels above)")
    p.add_argument(
        "--backend",
        required=True,
        choices=["tiny", "transformers", "openai"],
        help="tiny: random-weight test model built in code; transformers: a local Hugging Face "
        "model; openai: an OpenAI-compatible /v1/chat/completions server",
    )
    p.add_argument(
        "--model",
        help="transformers: local folder or cached hub id (default "
        "meta-llama/Llama-3.2-11B-Vision-Instruct; never downloaded); openai: the server's "
        "model name (default: its only model)",
    )
    p.add_argument("--base-url", help="openai: server URL, e.g. http://127.0.0.1:8000/v1")
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="openai: allow a server that is not on this machine (patient images leave it)",
    )
    p.add_argument("--adapter", help="LoRA adapter folder (tiny / transformers)")
    p.add_argument(
        "--tasks",
        default=None,
        help="comma-separated: grade,point,box,polygon (default all; with --adapter, its task)",
    )
    p.add_argument("--runs", type=positive_int, default=1, help="repeat every query N times")
    p.add_argument(
        "--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples"
    )
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus mass when sampling (1.0)")
    p.add_argument("--max-new-tokens", type=positive_int, default=256, help="per answer (256)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed and tiny model seed (0)")
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=8,
        help="queries per model call; for openai, requests in flight (8)",
    )
    p.add_argument(
        "--slices-per-case",
        type=positive_int,
        default=None,
        help="at most K slices per case, evenly spaced over the tumour (default: all selected)",
    )
    p.add_argument(
        "--min-area-mm2",
        type=float,
        default=None,
        help="slice rule: least whole-tumour area on a slice (default 100)",
    )
    p.add_argument("--split", help="splits.json: run its test cases (default: every usable case)")
    p.add_argument("--split-name", default="test", help="which split of --split (default test)")
    p.add_argument(
        "--coords",
        default="pixel",
        choices=["pixel", "normalized", "per_mille"],
        help="coordinate system asked for in prompts (default pixel)",
    )
    p.add_argument("--max-vertices", type=positive_int, help="polygon K (default 8)")
    p.add_argument(
        "--tie-rule",
        default="probability",
        choices=["probability", "positive", "negative", "none"],
        help="grade vote ties: mean P(HGG) decides (default), HGG, LGG, or no prediction",
    )
    p.add_argument(
        "--point-radius-mm", type=float, default=10.0, help="disc radius for point Dice (10)"
    )
    p.add_argument(
        "--no-grade-probabilities",
        action="store_true",
        help="do not record P(HGG) (saves one forward pass per grade answer)",
    )
    p.add_argument("--prompts", help="prompts folder (default Resources/prompts)")
    p.add_argument("--cache", help="answer cache folder (default OUT/cache)")
    p.add_argument("--no-masks", action="store_true", help="do not write OUT/masks/*.nii.gz")
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto (default: CUDA when available)")
    p.add_argument("--load-in-4bit", action="store_true", help="transformers: 4-bit (CUDA only)")
    p.add_argument("--timeout", type=float, default=120.0, help="openai: seconds per request")
    p.add_argument("--retries", type=int, default=4, help="openai: retries per request (4)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for CIs")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_vlm)


def _vlm(args) -> int:
    from dataclasses import replace

    tasks = parse_task_list(args.tasks)
    decoding = DecodingConfig.from_temperature(
        args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens, seed=args.seed
    )
    rule = SliceRule()
    if args.min_area_mm2 is not None:
        rule = replace(rule, min_area_mm2=args.min_area_mm2)
    backend = make_backend(
        args.backend,
        model=args.model,
        base_url=args.base_url,
        allow_remote=args.allow_remote,
        adapter=args.adapter,
        seed=args.seed,
        device=args.device,
        load_in_4bit=args.load_in_4bit,
        concurrency=args.batch_size,
        timeout_s=args.timeout,
        max_retries=args.retries,
    )
    adapter = getattr(backend, "adapter", None)
    if args.tasks is None and adapter is not None and adapter.tasks:
        tasks = parse_task_list(",".join(adapter.tasks))
    config = VLMConfig(
        tasks=tasks,
        runs=args.runs,
        decoding=decoding,
        batch_size=args.batch_size,
        slice_rule=rule,
        slices_per_case=args.slices_per_case,
        split=args.split_name,
        coordinate_system=args.coords,
        max_vertices=args.max_vertices,
        tie_rule=args.tie_rule,
        point_radius_mm=args.point_radius_mm,
        grade_probabilities=not args.no_grade_probabilities,
        prompts_dir=args.prompts,
        cache_dir=args.cache,
        save_masks=not args.no_masks,
        n_bootstrap=args.bootstrap,
    )
    bar = _progress_bar()
    try:
        result = run_vlm(
            args.data, backend, config, args.out, splits=args.split, progress=bar.update
        )
    finally:
        bar.close()
    print(_summary(result))
    return 0


class _progress_bar:
    """A tqdm bar over cases on stderr (plain lines when stderr is not a terminal)."""

    def __init__(self):
        self._bar = None

    def update(self, event) -> None:
        from tqdm import tqdm

        if self._bar is None:
            self._bar = tqdm(
                total=event.cases_total, unit="case", desc="vlm", file=sys.stderr, leave=False
            )
        self._bar.n = event.cases_done
        self._bar.set_postfix(
            queries=event.queries_done, cached=event.queries_cached, failed=event.queries_failed
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _summary(result) -> str:
    lines = [f"model: {result.model_label} ({result.identity.get('model_id')})"]
    lines.append(
        f"{len({r.case_id for r in result.records})} cases, {len(result.records)} queries "
        f"in {result.seconds:.1f} s"
    )
    for task, counts in result.status_counts.items():
        shown = ", ".join(f"{k} {v}" for k, v in counts.items() if v)
        lines.append(f"  {task:8s} {shown}")
    for run, report in sorted(result.classification.items()):
        lines.append(
            f"grade (patients, run {run}): accuracy {report.accuracy:.3f}, sensitivity "
            f"{report.recall:.3f}, specificity {report.specificity:.3f}, invalid "
            f"{report.n_invalid}/{report.n}"
            + (f", AUC {report.auc:.3f}" if report.auc is not None else "")
        )
    for task in ("point", "box", "polygon"):
        dice = [p.dice_3d for p in result.patients if p.task == task and p.dice_3d is not None]
        if dice:
            lines.append(
                f"{task} 3D Dice vs WT (mean over patients and runs): {sum(dice) / len(dice):.4f}"
            )
    for case_id, reason in result.case_errors.items():
        lines.append(f"skipped {case_id}: {reason}")
    lines.append(f"{result.failed} queries failed")
    lines.append(f"results in {result.out_dir}")
    return "\n".join(lines)
