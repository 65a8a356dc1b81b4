"""Stage ``split``: the patient-level split (``RUN/splits.json``), made once or read from a file."""

from __future__ import annotations

from GliomaCompareLib.data.splits import Splits, make_splits
from GliomaCompareLib.pipeline.cohort import load_cohort
from GliomaCompareLib.pipeline.runner import Stage, StageContext
from GliomaCompareLib.runlayout import SPLITS_FILE

__all__ = ["SPLIT"]


def _given_splits(path: str, usable) -> Splits:
    splits = Splits.load(path)
    missing = sorted(set(splits.ids("all")) - set(usable))
    if missing:
        raise ValueError(
            f"split file {path}: {len(missing)} cases are not usable cases of the "
            f"data (e.g. {', '.join(missing[:3])})"
        )
    return splits


def run_split(ctx: StageContext) -> dict:
    split = ctx.config.split
    usable = {c.case_id: c.grade for c in load_cohort(ctx.run_dir).usable}
    if split.file:
        splits = _given_splits(split.file, usable)
    else:
        splits = make_splits(usable, split.fractions, split.seed)
    splits.save(ctx.run_dir / SPLITS_FILE)
    counts = splits.to_dict()["counts"]
    if not splits.test:
        raise ValueError("split: the test split is empty; use a larger cohort or other fractions")
    return {"hash": splits.hash, "counts": counts, "file": str(ctx.run_dir / SPLITS_FILE)}


SPLIT = Stage("split", run_split, ("data",), ("split", "seed"), description="patient split")
