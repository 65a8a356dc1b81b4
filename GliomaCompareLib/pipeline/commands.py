"""``gliomacompare run`` and ``gliomacompare demo``."""

from __future__ import annotations

import sys
from pathlib import Path

from GliomaCompareLib.argtypes import add_device_option, add_quiet_option
from GliomaCompareLib.pipeline.config import read_run_config
from GliomaCompareLib.pipeline.run import run_comparison, stage_names
from GliomaCompareLib.pipeline.runner import ConfigChangedError, Shard
from GliomaCompareLib.runlayout import METRICS_DIR, REPORT_FILE, method_label, read_table

__all__ = ["DEMO_OUT", "print_summary", "register"]

#: The demo's run folder when ``--out`` is not given (``make demo`` uses the same).
DEMO_OUT = "demo_out"


def register(sub) -> None:
    p = sub.add_parser(
        "run",
        help="the whole comparison, staged and resumable",
        description=(
            "Run the comparison described by CONFIG (a YAML file or a preset name: "
            "demo, brats2020-paper) into the run folder OUT. Re-running the same command skips "
            "finished stages and resumes interrupted ones."
        ),
    )
    p.add_argument("config", help="run config: a YAML file or a preset name")
    p.add_argument("-o", "--out", required=True, help="run folder")
    _common(p)
    p.set_defaults(func=_run)

    p = sub.add_parser(
        "demo",
        help="synthetic cohort + the demo preset + report, on a CPU",
        description=(
            "Write a synthetic BraTS-layout cohort and run the 'demo' preset on it (tiny "
            "random-weight VLM, small CNNs, CPU), then print where the report is."
        ),
    )
    p.add_argument("-o", "--out", default=DEMO_OUT, help="run folder (default %(default)s)")
    p.add_argument("--config", default="demo", help="preset or YAML file (default demo)")
    _common(p)
    p.set_defaults(func=_run)


def _common(p) -> None:
    p.add_argument(
        "--force",
        action="append",
        default=[],
        metavar="STAGE",
        help="redo STAGE (and what depends on it) even if finished or its config changed; "
        "repeatable; 'all' redoes everything",
    )
    p.add_argument("--shard", default=None, help="process shard i of n of the cases (i/n, 0-based)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value, e.g. --set vlm.batch_size=4 (value parsed as YAML)",
    )
    p.add_argument("--only", action="append", default=None, metavar="STAGE", help="run only STAGE")
    add_device_option(p, default=None, shown="the config's device")
    add_quiet_option(p, "no line per stage (the summary is still printed)")


def _run(args) -> int:
    # --device is the config's `device` (--set device=... says the same)
    overrides = [*([f"device={args.device}"] if args.device else []), *args.overrides]
    config, path = read_run_config(args.config, overrides)
    names = stage_names(config)  # a vlms: config has one set of VLM stages per VLM
    for name in args.only or []:
        if name not in names:
            raise ValueError(f"--only {name}: no such stage ({', '.join(names)})")
    try:
        outcome = run_comparison(
            config,
            path,
            args.out,
            force=args.force,
            shard=Shard.parse(args.shard),
            only=args.only,
            display=_silent if args.quiet else None,
        )
    except ConfigChangedError as exc:
        print(f"gliomacompare {args.command}: {exc}", file=sys.stderr)
        return 3
    print_summary(outcome.run_dir, outcome.seconds)
    return 0


def _silent(*_args) -> None:
    """The stage display of ``--quiet``: nothing."""


def print_summary(run_dir: str | Path, seconds: float | None = None, stream=None) -> None:
    """One screen: what was compared, the headline numbers, and where everything is."""
    stream = stream or sys.stdout
    run_dir = Path(run_dir)
    metrics = run_dir / METRICS_DIR
    out = []
    if seconds is not None:
        out.append(f"Finished in {int(seconds) // 60} min {int(seconds) % 60} s.")
    out += _grading_lines(metrics)
    out += _localisation_lines(metrics)
    path = metrics / "segmentation_summary.csv"
    rows = [r for r in (read_table(path) if path.is_file() else []) if r["task"] == "seg"]
    if rows:
        out.append("\nSegmentation (3D Dice against the reference, mean):")
        for r in rows:
            out.append(
                f"  {method_label(r['method']):<20} {r['region']:<3} Dice "
                f"{_f(r['dice_mean'])}  HD95 {_f(r['hd95_mean'], 7, 1)} mm  (n={_n(r['n'])})"
            )
    path = metrics / "answer_status.csv"
    rows = read_table(path) if path.is_file() else []
    if rows:
        invalid = sum(r["count"] for r in rows if r["status"] in ("invalid", "error", "empty"))
        total = sum(r["count"] for r in rows)
        out.append(
            f"\nVLM answers: {int(total)}, of which {int(invalid)} invalid / empty / failed."
        )
    if any("tiny random-weight model" in line for line in out):
        out.append(
            "\nNOTE: the VLM here is the tiny random-weight model: its numbers exercise the "
            "pipeline and say nothing about real vision-language models."
        )
    out.append(f"\nRun folder: {run_dir}")
    report = run_dir / REPORT_FILE
    if report.is_file():
        out.append(f"Report:     {report.resolve()}")
    out.append(f"Slicer:     {run_dir / 'cases'} (open a case's *.seg.nrrd / *.mrk.json)")
    print("\n".join(out), file=stream)


_RULES = {"fixed": "0.5 / vote", "val_threshold": "val. thr."}


def _grading_lines(metrics: Path) -> list[str]:
    """Each method under each decision rule, with McNemar against the majority baseline."""
    path = metrics / "classification.csv"
    rows = read_table(path) if path.is_file() else []
    if not rows:
        return []
    out = ["\nGrading (test patients, HGG positive; p: McNemar against always the majority grade):"]
    out.append(f"  {'method':<18} {'rule':<10} {'n':>3} {'acc':>6} {'sens':>6} {'spec':>6} "
               f"{'bal.acc':>8} {'AUC':>6} {'p':>6}  model")  # fmt: skip
    for r in rows:
        out.append(
            f"  {method_label(r['method']):<18} "
            f"{_RULES.get(r.get('decision'), r.get('decision') or '-'):<10} {_n(r['n']):>3} "
            f"{_f(r['accuracy'])} {_f(r['sensitivity'])} {_f(r['specificity'])} "
            f"{_f(r['balanced_accuracy'], 8)} {_f(r['auc'])} "
            f"{_f(r.get('mcnemar_vs_majority_p'))}  {r['model']}"
        )
    out.append(f"  majority-class baseline accuracy: {_f(rows[0]['majority_baseline_accuracy'])}")
    return out


def _localisation_lines(metrics: Path) -> list[str]:
    """The VLM's per-slice Dice on the slices it saw beside the CNN, oracle and baseline there."""
    path = metrics / "localisation.csv"
    rows = read_table(path) if path.is_file() else []
    if not rows:
        return []
    out = ["\nLocalisation, like for like (mean per-slice Dice on the slices the VLM saw):"]
    out.append(f"  {'method':<18} {'task':<8} {'slices':>6} {'VLM':>6} {'CNN':>6} "
               f"{'oracle':>6} {'blind':>6}")  # fmt: skip
    for r in rows:
        out.append(
            f"  {method_label(r['method']):<18} {r['task']:<8} "
            f"{_n(r['n_slices']):>6} {_f(r['dice_slices_mean'])} "
            f"{_f(r['cnn_dice_same_slices'])} {_f(r['oracle_dice_same_slices'])} "
            f"{_f(r['baseline_dice_same_slices'])}"
        )
    return out


def _f(value, width: int = 6, digits: int = 3) -> str:
    return f"{value:{width}.{digits}f}" if isinstance(value, float) else f"{'-':>{width}}"


def _n(value) -> str:
    return str(int(value)) if isinstance(value, float) else "-"
