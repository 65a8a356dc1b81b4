"""A cohort without reference labels (a clinician's own patients, BraTS validation data) runs
end to end: the VLM is asked on label-free slices, nothing is scored against a missing
reference, grades (from name_mapping.csv) are still compared."""

from __future__ import annotations

import json
import shutil

import pytest

from GliomaCompareLib.cli import main
from GliomaCompareLib.runlayout import read_table

pytestmark = pytest.mark.slow

CONFIG = """\
name: unlabelled
data:
  root: {root}
cnn:
  enabled: false
vlm:
  backend: tiny
  tasks: [grade, box]
  slices_per_case: 2
  decoding: {{temperature: 0.0, max_new_tokens: 16, seed: 0}}
metrics:
  n_bootstrap: 50
"""


def test_an_unlabelled_cohort_runs_end_to_end(synth_cohort_factory, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(synth_cohort_factory(cases=10, seed=4), data)
    for label in data.glob("*/*_seg.nii*"):
        label.unlink()
    config = tmp_path / "unlabelled.yaml"
    config.write_text(CONFIG.format(root=data))
    run = tmp_path / "run"
    assert main(["run", str(config), "--out", str(run)]) == 0
    printed = capsys.readouterr().out
    assert "Grading" in printed and "Segmentation" not in printed
    test_ids = json.loads((run / "splits.json").read_text())["test"]
    answers = [
        json.loads(line)
        for line in (run / "stages" / "vlm-base" / "out" / "all" / "answers.jsonl")
        .read_text()
        .splitlines()
    ]
    assert {a["case_id"] for a in answers} == set(test_ids)
    assert len(answers) == len(test_ids) * 2 * 2  # 2 brain slices x 2 tasks
    # no reference: no segmentation or localisation score (a Dice of 0 would be a false claim)
    assert read_table(run / "metrics" / "segmentation.csv") == []
    assert read_table(run / "metrics" / "localisation.csv") == []
    grades = read_table(run / "metrics" / "classification.csv")
    assert {(r["method"], r["decision"]) for r in grades} == {
        ("vlm_base", "fixed"),
        ("vlm_base", "val_threshold"),
    }
    assert (run / "report.html").is_file()
