"""Run a cohort through the GliomaCompare module logic without a window.

In 3D Slicer::

    Slicer --no-main-window --python-script GliomaCompare/Scripts/batch.py --data DIR --out DIR

In plain Python with slicer-core (same logic, same MRML)::

    python GliomaCompare/Scripts/batch.py --data DIR --out DIR [--run RUN]

For every case: load the four modalities and the ground truth into a scene; with ``--run``,
load that run's results for the case (no recomputation); with ``--cnn-model`` / ``--vlm-backend``,
run the arms through the module's background runner and load their outputs; then save the
case's segmentations (``.seg.nrrd``), markups (``.mrk.json``), tables (``.tsv``) and a scene file
``OUT/<case_id>/<case_id>.mrml`` that opens all of it in Slicer. A case that fails is reported
and skipped; ``OUT/batch_summary.json`` lists every case's status. Exit status 0 when every case
succeeded, 1 when some failed, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # GliomaCompareSlicerLib


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="batch.py",
        description="Load (and optionally run) cases through the GliomaCompare logic.",
    )
    p.add_argument("--data", help="BraTS folder (default: the run's manifest)")
    p.add_argument("--out", required=True, help="output folder (one sub-folder per case)")
    p.add_argument("--run", help="finished run folder whose results are loaded with each case")
    p.add_argument("--cases", help="comma-separated case ids (default: every usable case)")
    p.add_argument("--convention", default="brats2020", help="label convention (default brats2020)")
    p.add_argument("--cnn-model", help="run predict-cnn with this model folder on each case")
    p.add_argument(
        "--vlm-backend",
        choices=["tiny", "transformers", "openai"],
        help="run the VLM arm with this backend on each case",
    )
    p.add_argument("--vlm-tasks", default="grade,point,box,polygon")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per background run")
    return p.parse_args(argv)


def _atomic_json(path: Path, doc) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(path)


def run_batch(args) -> int:
    from GliomaCompareSlicerLib import paths

    paths.ensure_library_importable()
    from GliomaCompareSlicerLib.logic import CompareLogic
    from GliomaCompareSlicerLib.process import CnnRunParams, VlmRunParams

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logic = CompareLogic(convention=args.convention, work_root=out / "work")
    if args.run:
        rows = logic.open_run(args.run, args.data)
    elif args.data:
        rows = logic.open_data(args.data)
    else:
        print("batch.py: error: give --data or --run", file=sys.stderr)
        return 2
    for note in logic.notes:
        print(f"note: {note}", file=sys.stderr)
    wanted = [c.strip() for c in args.cases.split(",")] if args.cases else None
    ids = [
        r.case_id for r in rows if (wanted is None and r.usable) or (wanted and r.case_id in wanted)
    ]
    if wanted:
        unknown = sorted(set(wanted) - {r.case_id for r in rows})
        if unknown:
            print(f"batch.py: error: unknown cases {', '.join(unknown)}", file=sys.stderr)
            return 2
    summary = {"data": args.data, "run": args.run, "out": str(out), "cases": {}}
    failures = 0
    for number, case_id in enumerate(ids, start=1):
        started = time.monotonic()
        record: dict = {"status": "ok"}
        try:
            if logic.cohort is not None:
                logic.load_case(case_id)
            else:
                logic.clear()
            if args.run:
                res = logic.load_run_results(case_id)
                record["notes"] = res.notes
            jobs = []
            if args.cnn_model:
                jobs.append(logic.start_cnn(case_id, CnnRunParams(args.cnn_model, args.device)))
            if args.vlm_backend:
                tasks = tuple(t for t in args.vlm_tasks.split(",") if t)
                jobs.append(
                    logic.start_vlm(
                        case_id, VlmRunParams(args.vlm_backend, tasks, device=args.device)
                    )
                )
            for job in jobs:
                code = job.wait(timeout=args.timeout, on_lines=lambda lines: None)
                if code is None:
                    job.cancel()
                    job.wait(timeout=30)  # cancel() only starts stopping the process tree
                logic.load_job_results(job)
            written = logic.save_case(out / case_id)
            record["files"] = {k: str(v) for k, v in written.items()}
        except Exception as exc:  # one bad case never stops the others
            failures += 1
            record = {
                "status": "failed",
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(limit=5),
            }
            print(f"{case_id}: failed: {exc}", file=sys.stderr)
        record["seconds"] = round(time.monotonic() - started, 3)
        summary["cases"][case_id] = record
        _atomic_json(out / "batch_summary.json", summary)
        print(f"[{number}/{len(ids)}] {case_id}: {record['status']}", flush=True)
    print(f"{len(ids) - failures} of {len(ids)} cases saved under {out}", flush=True)
    return 0 if failures == 0 else 1


def main(argv=None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        return run_batch(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"batch.py: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    status = main()
    try:
        import slicer

        in_app = hasattr(slicer, "app")
    except ImportError:
        in_app = False
    if in_app:
        slicer.util.exit(status)  # Slicer --no-main-window keeps running otherwise
    else:
        sys.exit(status)
