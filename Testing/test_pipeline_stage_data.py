"""The ``data`` stage writes ``cohort.json`` with absolute paths (issue 17)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

from test_data_discovery import write_case

from GliomaCompareLib.pipeline.cohort import COHORT_FILE, load_cohort
from GliomaCompareLib.pipeline.runner import StageContext
from GliomaCompareLib.pipeline.stages.data import DATA, run_data


def test_cohort_json_holds_absolute_paths_usable_from_another_directory(tmp_path, monkeypatch):
    write_case(tmp_path / "d", "BraTS20_Training_001")
    write_case(tmp_path / "d", "BraTS20_Training_002", seed=4)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    run_dir = Path("run")
    data = SimpleNamespace(root="d", synthetic=None, convention="brats2020", jobs=1)
    ctx = StageContext(
        run_dir=run_dir,
        dir=run_dir / "stages" / "data",
        stage=DATA,
        config=SimpleNamespace(data=data),
        shard=None,
        upstream={},
        logger=logging.getLogger("test"),
    )
    ctx.dir.mkdir(parents=True)
    result = run_data(ctx)
    stored = json.loads((ctx.dir / COHORT_FILE).read_text())
    assert stored["data_dir"] == str((tmp_path / "d").resolve()) == result["data_dir"]
    for case in stored["cases"]:
        assert Path(case["folder"]).is_absolute() and Path(case["label"]).is_absolute()
    monkeypatch.chdir(tmp_path / "elsewhere")  # a re-run from another directory
    cohort = load_cohort(tmp_path / "run")
    assert [c.case_id for c in cohort.usable] == ["BraTS20_Training_001", "BraTS20_Training_002"]
