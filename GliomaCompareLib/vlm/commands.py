"""``gliomacompare vlm``: the VLM arm from the shell (a thin layer over :func:`run_vlm`)."""

from __future__ import annotations

import sys
from dataclasses import replace

from GliomaCompareLib.argtypes import (
    DEVICE_HELP,
    add_alias,
    add_dataclass_arguments,
    add_quiet_option,
    dataclass_from_args,
    device,
    given,
    positive_int,
)
from GliomaCompareLib.data.discovery import discover_cases
from GliomaCompareLib.data.splits import SPLIT_NAMES
from GliomaCompareLib.vlm.backends import BackendSettings
from GliomaCompareLib.vlm.inference import VLMConfig, run_vlm
from GliomaCompareLib.vlm.tasks import parse_task_list

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
            "finished (failed queries are counted, not fatal), 1 when nothing could be asked. Cases "
            "without reference labels are asked on label-free slices (brain slices, or the CNN's "
            "tumour slices with --cnn-pred). --slices CASE:K asks about exactly the slices a user "
            "chose (the slice on screen), recorded as the slice rule 'given'; a listed case that "
            "is not in the data, or a slice it does not have, ends the command (status 2) before "
            "anything is asked."
        ),
    )
    p.add_argument(
        "-i", "--data", required=True, help="BraTS data folder (or up to two levels above)"
    )
    p.add_argument(
        "--splits",
        dest="splits_file",
        metavar="FILE",
        help="splits.json: run its --subset cases (default: every usable case)",
    )
    p.add_argument("-o", "--out", required=True, help="output folder")
    # every setting of BackendSettings and VLMConfig, generated from their fields (defaults and
    # help live there); the names every command shares are set here
    add_dataclass_arguments(
        p, BackendSettings, meta={"device": {"type": device, "help": DEVICE_HELP}}
    )
    add_dataclass_arguments(
        p,
        VLMConfig,
        rename={"split": "--subset"},
        meta={"split": {"help": "which part of --splits", "choices": (*SPLIT_NAMES, "all")}},
    )
    p.add_argument(
        "--jobs",
        type=positive_int,
        default=1,
        help="processes checking the cases' files before asking, as inspect does (default 1)",
    )
    add_quiet_option(p, "no progress bar")
    add_alias(p, "--split", "--splits")
    add_alias(p, "--split-name", "--subset")
    p.set_defaults(func=_vlm)


def _vlm(args) -> int:
    config = dataclass_from_args(VLMConfig, args)
    settings = dataclass_from_args(BackendSettings, args)
    backend = settings.build(seed=config.decoding.seed, concurrency=config.batch_size)
    adapter = getattr(backend, "adapter", None)
    if not given(args, "tasks") and adapter is not None and adapter.tasks:
        config = replace(config, tasks=parse_task_list(",".join(adapter.tasks)))
    # labels checked as `inspect` checks them (every voxel), so no case is scored against a
    # label map that `inspect` rejects
    cohort = discover_cases(args.data, validate=True, full=True, jobs=args.jobs)
    bar = _progress_bar()
    try:
        result = run_vlm(
            cohort,
            backend,
            config,
            args.out,
            splits=args.splits_file,
            progress=None if args.quiet else bar.update,
        )
    finally:
        bar.close()
    print(_summary(result))
    if not result.records:
        print(
            "vlm: no query was asked (every case was skipped: see the reasons above)",
            file=sys.stderr,
        )
        return 1
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
    if result.config.slices:
        chosen = "; ".join(f"{c} {','.join(map(str, ks))}" for c, ks in result.config.slices)
        lines.append(f"slices chosen by the user (slice rule 'given'): {chosen}")
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
