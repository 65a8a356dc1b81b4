"""``gliomacompare train-cnn`` and ``gliomacompare predict-cnn``.

Nothing heavy is imported here at module level (``gliomacompare --help`` stays fast): the CNN
modules import torch and MONAI only when they train or predict.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields, replace
from pathlib import Path

from GliomaCompareLib.argtypes import (
    CommandError,
    add_alias,
    add_dataclass_arguments,
    add_device_option,
    add_quiet_option,
    comma_list,
    given,
    split_fractions,
)
from GliomaCompareLib.cnn.config import (
    EngineConfig,
    TrainSettings,
    load_cnn_config,
    load_engine_config,
)
from GliomaCompareLib.cnn.inference import load_classifier, load_segmenter, predict_cases
from GliomaCompareLib.cnn.scoring import score_predictions
from GliomaCompareLib.cnn.train import train_classifier, train_segmenter
from GliomaCompareLib.data.discovery import discover_cases
from GliomaCompareLib.data.splits import Splits, load_or_make_splits
from GliomaCompareLib.distributed import init_distributed
from GliomaCompareLib.pipeline.config import load_run_config

__all__ = ["register"]

#: What ``train-cnn --tasks`` trains: ``seg``, ``cls`` or both (``seg,cls``, ``both``, ``all``).
CNN_TASKS = ("seg", "cls")


def _cnn_tasks(text: str) -> tuple[str, ...]:
    names = comma_list(text)
    if names in (("both",), ("all",)):
        return CNN_TASKS
    unknown = [n for n in names if n not in CNN_TASKS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: use seg, cls or seg,cls (or both / all)")
    return tuple(t for t in CNN_TASKS if t in names)


def register(sub) -> None:
    _add_train(sub)
    _add_predict(sub)


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train-cnn",
        help="train the CNN segmenter and / or LGG-HGG classifier (MONAI)",
        description=(
            "Train the 3D CNNs of the comparison on the split's train patients, selecting the "
            "best epoch (and the classifier's decision threshold) on its val patients. Model "
            "folders go to OUT/seg and OUT/cls; the split is read from (or written once to) "
            "OUT/splits.json unless --splits names another file. Runs under "
            "`torchrun --nproc_per_node N` with DDP."
        ),
    )
    p.add_argument("-i", "--data", required=True, help="BraTS data folder")
    p.add_argument(
        "--tasks",
        required=True,
        type=_cnn_tasks,
        metavar="seg|cls|seg,cls",
        help="which networks: seg (segmentation), cls (LGG/HGG), or both (seg,cls / both / all)",
    )
    p.add_argument(
        "-o", "--out", required=True, help="output folder (OUT/seg, OUT/cls, OUT/splits.json)"
    )
    p.add_argument("--splits", help="splits.json to use (read if it exists, else written there)")
    p.add_argument(
        "--split-fractions",
        type=split_fractions,
        default=(0.6, 0.2, 0.2),
        help="train,val,test fractions for a new split (default 0.6,0.2,0.2)",
    )
    p.add_argument("--split-seed", type=int, default=0, help="seed of a new split (default 0)")
    p.add_argument(
        "--config",
        help="YAML with a cnn: section: a run config (or preset name, e.g. demo; its "
        "cnn.weights are used too) or a file with seg: / cls:",
    )
    add_device_option(p)
    p.add_argument(
        "--weights",
        help="initial weights file (e.g. brats_mri_segmentation's models/model.pt); with "
        "--epochs 0 they become the model without training",
    )
    p.add_argument("--resume", action="store_true", help="continue from OUT/<task>/last.pt")
    p.add_argument("--overwrite", action="store_true", help="start again where a model exists")
    p.add_argument("--convention", default="brats2020", help="label convention (default brats2020)")
    add_quiet_option(p, "no progress bars")
    # every TrainSettings field (--epochs, --lr, --batch-size ...), generated from its metadata
    add_dataclass_arguments(p, TrainSettings)
    add_alias(p, "--task", "--tasks")
    p.set_defaults(func=_train)


def _add_predict(sub) -> None:
    p = sub.add_parser(
        "predict-cnn",
        help="segment and grade cases with trained CNNs",
        description=(
            "Segment (BraTS label maps as NIfTI with the input affine, optional probability "
            "maps) and grade (grades.csv: case_id, p_hgg, predicted_grade, threshold, "
            "model_id, reference_grade) every case. A bad case is reported in failures.csv "
            "and skipped. Re-running skips cases already done with the same models."
        ),
    )
    p.add_argument("-i", "--data", required=True, help="BraTS data folder")
    p.add_argument(
        "--model",
        required=True,
        help="a train-cnn output folder (with seg/ and/or cls/), one model folder, or a "
        "segmentation weights file (architecture from --config; default: the "
        "brats_mri_segmentation bundle's)",
    )
    p.add_argument("-o", "--out", required=True, help="output folder")
    add_device_option(p)
    p.add_argument("--save-probabilities", action="store_true", help="also write probability maps")
    p.add_argument(
        "--splits", metavar="FILE", help="splits.json; with --subset, predict only those patients"
    )
    p.add_argument(
        "--subset",
        default="all",
        choices=["train", "val", "test", "all"],
        help="which part of --splits (default all)",
    )
    p.add_argument("--case", action="append", default=[], help="only this case (repeatable)")
    p.add_argument(
        "--config",
        help="YAML cnn: section: the architecture of a bare weights file, or inference settings "
        "(roi_size, sw_batch_size, overlap, threshold) for a model folder of that architecture",
    )
    p.add_argument("--convention", default="brats2020", help="label convention (default brats2020)")
    p.add_argument(
        "--overwrite", action="store_true", help="recompute cases done by an earlier run"
    )
    p.add_argument(
        "--no-score",
        action="store_true",
        help="do not score against the reference label maps / grades (by default cases that "
        "have them are scored: seg_scores.csv, grade_report.json)",
    )
    add_quiet_option(p, "no progress bar")
    # --engine, --threads (EngineConfig), generated from its metadata
    add_dataclass_arguments(p, EngineConfig)
    add_alias(p, "--split", "--splits")
    add_alias(p, "--redo", "--overwrite")
    p.set_defaults(func=_predict)


def _train(args) -> int:
    config, run_weights = _read_config(args.config)
    tasks = list(args.tasks)
    if args.weights and len(tasks) > 1:
        raise ValueError("--weights belongs to one network; use --tasks seg or --tasks cls")
    ctx = init_distributed(args.device)
    out = Path(args.out)
    cohort = discover_cases(args.data, args.convention)
    if ctx.is_main:
        for warning in cohort.warnings:
            print(f"warning: {warning}", file=sys.stderr)
    split_path = Path(args.splits) if args.splits else out / "splits.json"
    if ctx.is_main:
        splits = load_or_make_splits(
            cohort, split_path, fractions=args.split_fractions, seed=args.split_seed
        )
    ctx.barrier()
    if not ctx.is_main:
        splits = load_or_make_splits(cohort, split_path, create=False)
    train_overrides = train_settings_given(args)
    for task in tasks:
        task_config = getattr(config, task)
        if train_overrides:
            task_config = replace(task_config, train=replace(task_config.train, **train_overrides))
        trainer = train_segmenter if task == "seg" else train_classifier
        try:
            result = trainer(
                cohort,
                out / task,
                splits,
                task_config,
                device=args.device,
                weights=args.weights or run_weights.get(task),
                resume=args.resume,
                overwrite=args.overwrite,
                progress=not args.quiet,
            )
        except FileExistsError as exc:
            raise CommandError(str(exc)) from exc
        if ctx.is_main:
            extra = f", threshold {result.threshold:.3f}" if result.threshold is not None else ""
            print(
                f"{task}: {result.model_id} in {result.model_dir} (best epoch {result.best_epoch}, "
                f"val {result.score_name} {result.best_score:.3f}{extra}; "
                f"{len(result.train_cases)} train / {len(result.val_cases)} val cases, "
                f"{len(result.skipped)} left out; split {splits.hash}; {result.seconds:.0f} s)"
            )
            for case_id, reason in result.skipped:
                print(f"  left out {case_id}: {reason}", file=sys.stderr)
    if ctx.enabled:
        import torch.distributed as dist

        dist.destroy_process_group()
    return 0


def train_settings_given(args) -> dict:
    """The :class:`~GliomaCompareLib.cnn.config.TrainSettings` fields given as options (those
    not given keep the config's values)."""
    return {f.name: getattr(args, f.name) for f in fields(TrainSettings) if given(args, f.name)}


def _read_config(source: str | None):
    """(CNNConfig, {task: weights}) from a YAML with ``cnn:`` (a run config or preset name,
    ``extends`` resolved) or a bare ``seg:`` / ``cls:`` file."""
    return _read_config_engine(source)[:2]


def _read_config_engine(source: str | None):
    """(CNNConfig, {task: weights}, EngineConfig) as :func:`_read_config` reads them; the engine
    from a run config's ``cnn.engine`` / ``cnn.threads`` (defaults for a bare file)."""
    if source is None:
        return load_cnn_config(None), {}, EngineConfig()
    path = Path(source)
    raw = None
    if path.is_file():
        import yaml

        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not readable YAML ({exc})") from exc
    if raw is None or (isinstance(raw, dict) and ("cnn" in raw or "extends" in raw)):
        raw, _ = load_run_config(source)  # a preset name, or a run config with extends
        weights = (raw.get("cnn") or {}).get("weights") or {}
        engine = load_engine_config(raw.get("cnn"))
        return load_cnn_config(raw), {k: v for k, v in weights.items() if v}, engine
    return load_cnn_config(path), {}, EngineConfig()


def _predict(args) -> int:
    # models: a bare weights file, one model folder, or a train-cnn output folder
    segmenter, classifier = _load_models(args)
    # cases: the data folder's, narrowed by --splits / --subset and --case
    records = _select_records(args)
    run = predict_cases(
        records,
        args.out,
        segmenter=segmenter,
        classifier=classifier,
        convention=args.convention,
        save_probabilities=args.save_probabilities,
        skip_existing=not args.overwrite,
        progress=not args.quiet,
    )
    models = ", ".join(
        f"{m.model_id} ({getattr(m, 'engine', 'torch')})"
        for m in (segmenter, classifier)
        if m is not None
    )
    print(f"predicted {len(run.predictions)} cases with {models} into {run.out_dir}")
    if run.grades_csv:
        print(f"grades: {run.grades_csv}")
    # scores against the references, where cases have them
    if not args.no_score and run.predictions:
        _score(run, records, args.convention)
    for case_id, reason in run.failures:
        print(f"failed {case_id}: {reason}", file=sys.stderr)
    return 0 if not run.failures else 1


def _load_models(args):
    """(segmenter or None, classifier or None) from ``--model`` (and ``--config``).

    Raises:
        FileNotFoundError: when ``--model`` is missing or holds no model.
    """
    model = Path(args.model)
    config, _, engine = _read_config_engine(args.config)
    config = config if args.config else None
    # the engine: the config's cnn.engine / cnn.threads, overridden by --engine / --threads
    engine = replace(engine, **{f.name: getattr(args, f.name) for f in fields(EngineConfig)
                                if given(args, f.name)})  # fmt: skip
    # with --config, a model folder must hold that architecture; its inference settings
    # (ROI, windows per batch, overlap, threshold) then come from the config
    seg_config = config.seg if config else None
    cls_config = config.cls if config else None

    def segmenter(folder: Path):
        return load_segmenter(
            folder,
            config=seg_config,
            convention=args.convention,
            device=args.device,
            engine=engine,
        )

    def classifier(folder: Path):
        return load_classifier(folder, config=cls_config, device=args.device, engine=engine)

    if model.is_file():
        return segmenter(model), None
    if (model / "model.json").is_file():
        task = json.loads((model / "model.json").read_text()).get("task")
        return (None, classifier(model)) if task == "cls" else (segmenter(model), None)
    if not model.is_dir():
        raise FileNotFoundError(f"{model}: model folder or weights file not found")
    seg = segmenter(model / "seg") if (model / "seg" / "model.json").is_file() else None
    cls = classifier(model / "cls") if (model / "cls" / "model.json").is_file() else None
    if seg is None and cls is None:
        raise FileNotFoundError(f"{model}: holds no model (no model.json, seg/ or cls/)")
    return seg, cls


def _select_records(args) -> list:
    """The case records to predict: all, those of ``--splits``' ``--subset``, or ``--case``.

    Raises:
        ValueError: ``--subset`` without ``--splits``, an unknown ``--case``, no case left.
    """
    cohort = discover_cases(args.data, args.convention)
    records = list(cohort.cases)
    if args.splits:
        wanted = set(Splits.load(args.splits).ids(args.subset))
        records = [r for r in records if r.case_id in wanted]
    elif args.subset != "all":
        raise ValueError(f"--subset {args.subset} needs --splits FILE")
    if args.case:
        known = {r.case_id for r in records}
        missing = [c for c in args.case if c not in known]
        if missing:
            raise ValueError(
                f"--case {', '.join(missing)}: not among the cases selected in {args.data}"
            )
        records = [r for r in records if r.case_id in set(args.case)]
    if not records:
        raise ValueError("no case selected")
    return records


def _score(run, records, convention: str) -> None:
    """Score the predictions against the cases' reference label maps / grades; print where."""
    scores = score_predictions(run, records, convention=convention)
    if scores.summary():
        print(scores.summary())
    for path in (scores.seg_csv, scores.grade_json):
        if path is not None:
            print(f"scores: {path}")
