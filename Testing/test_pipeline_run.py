"""The comparison run end to end: the demo preset at a reduced size, resume after a kill,
refusal of a changed config, and the Slicer files of ``cases/`` read back through slicer-core."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from slicer_env import needs_slicer, scene  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow

#: The demo preset shrunk to what a test can afford (the real demo: see Resources/presets).
MINI = """\
extends: demo
name: demo-mini
data:
  synthetic: {cases: 12, seed: 3, shape: [48, 48, 32], hgg_fraction: 0.65}
cnn:
  seg:
    patch_size: [32, 32, 32]
    roi_size: [48, 48, 32]
    train: {epochs: 2}
  cls:
    input_size: [32, 32, 32]
    train: {epochs: 2}
vlm:
  slices_per_case: 2
  decoding: {temperature: 0.0, max_new_tokens: 40, seed: 0}
finetune:
  epochs: 1
consistency:
  max_cases: 2
sensitivity:
  enabled: true
  slice_rules: [cnn, brain]
  tasks: [grade, box]
metrics:
  n_bootstrap: 100
"""

STAGES_BEFORE_KILL = ("data", "split", "cnn-train-seg", "cnn-train-cls", "cnn-predict", "vlm-base")


def _cli(*args: str, env=None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "GliomaCompareLib.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        **kwargs,
    )


def _finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "mini.yaml"
    path.write_text(MINI)
    return path


def _digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative path -> digest)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


@dataclass
class Interrupted:
    run: Path
    before: dict[str, dict[str, str]]
    resume_err: str


@pytest.fixture(scope="module")
def interrupted_run(config_file, tmp_path_factory) -> Interrupted:
    """The reduced demo, killed (SIGKILL) right after the vlm-base stage, then run again."""
    run = tmp_path_factory.mktemp("run") / "interrupted"
    proc = _cli("run", str(config_file), "--out", str(run), start_new_session=True)
    marker = run / "stages" / "vlm-base" / "done.json"
    deadline = time.monotonic() + 600
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {s: _digest(run / "stages" / s) for s in STAGES_BEFORE_KILL}
    code, out, err = _finish(_cli("run", str(config_file), "--out", str(run)))
    assert code == 0, err[-3000:]
    assert "Report:" in out and "tiny random-weight model" in out
    return Interrupted(run, before, err)


@pytest.fixture(scope="module")
def finished_run(interrupted_run) -> Path:
    return interrupted_run.run


def test_run_writes_everything_the_contract_names(finished_run):
    run = finished_run
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["config"]["name"] == "demo-mini"
    assert manifest["versions"]["torch"] and manifest["versions"]["monai"]
    assert manifest["device"]["device"] == "cpu"
    assert "cnn_seg" in manifest["models"] and "vlm_base" in manifest["models"]
    assert manifest["models"]["vlm_base"]["model_label"] == "tiny random-weight model"
    for name in ("classification", "segmentation", "slices", "answer_status", "grades"):
        assert (run / "metrics" / f"{name}.csv").is_file(), name
    html = (run / "report.html").read_text()
    assert "tiny random-weight model" in html and "<img" in html
    assert 'src="http' not in html
    splits = json.loads((run / "splits.json").read_text())
    cases = sorted(p.name for p in (run / "cases").iterdir())
    assert cases == sorted(splits["test"])
    for case in cases:
        folder = run / "cases" / case
        assert (folder / "ground_truth.seg.nrrd").is_file()
        assert (folder / "cnn.seg.nrrd").is_file()
        assert (folder / "metrics.json").is_file() and (folder / "gallery.npz").is_file()
    rows = (run / "metrics" / "classification.csv").read_text().splitlines()
    methods = {line.split(",")[0] for line in rows[1:]}
    assert methods == {"cnn", "vlm_base", "vlm_finetuned"}


def _answered_cases(folder: Path) -> set[str]:
    return {
        json.loads(line)["case_id"]
        for path in folder.glob("*/answers.jsonl")
        for line in path.read_text().splitlines()
        if line.strip()
    }


def test_both_rules_for_both_arms_and_val_answers_kept_apart(finished_run):
    """Each method is graded under the fixed and the validation-tuned rule; the VLM stages ask
    the grade task on the validation patients into out_val/, never mixed with the test ones."""
    from GliomaCompareLib.runlayout import TABLES, read_table

    run = finished_run
    rows = read_table(run / "metrics" / "classification.csv")
    assert [(r["method"], r["decision"]) for r in rows] == [
        (m, d) for m in ("cnn", "vlm_base", "vlm_finetuned") for d in ("fixed", "val_threshold")
    ]
    for row in rows:
        assert 0.0 <= row["specificity_ci_low"] <= row["specificity_ci_high"] <= 1.0
        assert row["mcnemar_vs_majority_p"] is not None and row["threshold"] is not None
    vlm_fixed = [r for r in rows if r["method"] != "cnn" and r["decision"] == "fixed"]
    assert all(r["n_ties"] is not None for r in vlm_fixed)
    splits = json.loads((run / "splits.json").read_text())
    for stage in ("vlm-base", "vlm-finetuned"):
        val = _answered_cases(run / "stages" / stage / "out_val")
        assert val and val <= set(splits["val"]), stage
        assert not _answered_cases(run / "stages" / stage / "out") & set(splits["val"])
        summary = json.loads((run / "stages" / stage / "done.json").read_text())["summary"]
        assert summary["val"]["cases"] == len(val) and summary["val"]["queries"] > 0
    tuned = [r for r in rows if r["method"] != "cnn" and r["decision"] == "val_threshold"]
    # chosen on the validation patients with a valid vote only (the tiny model's may have none)
    assert all(0 <= r["threshold_n_val"] <= len(splits["val"]) for r in tuned)
    for name in ("comparisons", "roc", "calibration", "grading_by_size"):
        with (run / "metrics" / f"{name}.csv").open() as handle:
            assert tuple(handle.readline().strip().split(",")) == TABLES[name], name
    metrics = json.loads((run / "stages" / "metrics" / "done.json").read_text())["summary"]
    assert metrics["small_test_set"].startswith("Small test set")
    assert set(metrics["classification"]) == {f"{r['method']}/{r['decision']}" for r in rows}
    comparisons = read_table(run / "metrics" / "comparisons.csv")
    assert {r["decision"] for r in comparisons} == {"fixed", "val_threshold"}
    assert all(r["accuracy_diff_ci_low"] <= r["accuracy_diff_ci_high"] for r in comparisons)


def test_cnn_beats_an_empty_prediction_and_scores_are_bounded(finished_run):
    from GliomaCompareLib.runlayout import read_table

    rows = read_table(finished_run / "metrics" / "segmentation.csv")
    cnn_wt = [r["dice"] for r in rows if r["method"] == "cnn" and r["region"] == "WT"]
    assert cnn_wt and all(0.0 <= d <= 1.0 for d in cnn_wt)
    assert sum(cnn_wt) / len(cnn_wt) > 0.05  # trained for 2 epochs: above nothing at all


def test_localisation_is_scored_like_for_like(finished_run):
    """The VLM's localisation on exactly the slices it saw, beside the CNN, the oracle and a
    trivial baseline on those slices; the 3D figure beside its coverage ceiling."""
    from GliomaCompareLib.runlayout import TABLES, read_table

    rows = read_table(finished_run / "metrics" / "localisation.csv")
    assert list(rows[0]) == list(TABLES["localisation"])
    assert {(r["method"], r["task"]) for r in rows} == {
        (m, t) for m in ("vlm_base", "vlm_finetuned") for t in ("point", "box", "polygon")
    }
    slices = read_table(finished_run / "metrics" / "slices.csv")
    for r in rows:
        asked = {
            (s["case_id"], s["slice_index"])
            for s in slices
            if s["method"] == r["method"] and s["task"] == r["task"] and s["run"] == 0
        }
        assert r["n_slices"] + r["n_slices_empty_reference"] == len(asked)
        for key in ("dice_slices_mean", "cnn_dice_same_slices", "oracle_dice_same_slices",
                    "baseline_dice_same_slices", "dice_3d_mean", "dice_3d_ceiling"):  # fmt: skip
            assert 0.0 <= r[key] <= 1.0, key
        assert r["dice_slices_ci_low"] <= r["dice_slices_mean"] <= r["dice_slices_ci_high"]
        # a perfect answer on only the asked slices cannot cover the whole tumour
        assert r["dice_3d_mean"] <= r["dice_3d_ceiling"] < 1.0
        assert r["oracle_dice_same_slices"] > r["baseline_dice_same_slices"]
    assert {r["task"] for r in rows if r["dice_slices_lenient_mean"] is not None} == {"polygon"}
    report = (finished_run / "report.html").read_text()
    assert "Localisation, like for like" in report and "oracle slice selection" in report
    roc = report[report.index('id="fig-roc"') :]
    assert "data:image/png;base64," in roc[:3000] and "ROC curves and calibration" in roc[:3000]


def test_the_slice_rule_sensitivity_asks_the_same_patients_on_other_slices(finished_run):
    from GliomaCompareLib.runlayout import read_table

    rows = read_table(finished_run / "metrics" / "slice_sensitivity.csv")
    assert {(r["slice_rule"], r["task"]) for r in rows} == {
        (rule, task) for rule in ("tumour_area", "cnn", "brain") for task in ("grade", "box")
    } | {("tumour_area", t) for t in ("point", "polygon")}
    assert {r["slice_rule"]: r["oracle"] for r in rows} == {
        "tumour_area": 1.0,
        "cnn": 0.0,
        "brain": 0.0,
    }
    patients = {r["n_patients"] for r in rows if r["task"] == "grade"}
    assert len(patients) == 1  # the same patients under every rule
    answers = finished_run / "stages" / "slice-sensitivity" / "brain" / "out" / "all"
    line = json.loads((answers / "answers.jsonl").read_text().splitlines()[0])
    assert "may or may not be visible" not in line["raw_text"]  # the prompt is not echoed
    vlm = json.loads((answers / "vlm.json").read_text())
    assert vlm["config"]["prompt_variant"] == "neutral"
    assert vlm["config"]["slice_rule"]["mode"] == "brain"


def test_dice_is_broken_down_by_grade_and_size(finished_run):
    from GliomaCompareLib.runlayout import read_table

    rows = read_table(finished_run / "metrics" / "dice_by_group.csv")
    groups = {(r["group"], r["level"].split()[0]) for r in rows}
    assert ("size", "small") in groups and ("size", "large") in groups
    assert {g for g, _ in groups} == {"grade", "size"}
    scopes = {(r["method"], r["scope"]) for r in rows}
    assert {("cnn", "3d"), ("vlm_base", "slices"), ("vlm_base", "cnn_same_slices")} <= scopes
    n_test = len(json.loads((finished_run / "splits.json").read_text())["test"])
    for method, scope in scopes:  # the two size groups split the same patients
        sizes = [
            r["n"]
            for r in rows
            if (r["method"], r["scope"], r["group"], r["region"]) == (method, scope, "size", "WT")
            and r["task"] in ("seg", "box")
        ]
        assert sum(sizes) <= n_test and all(n >= 1 for n in sizes)


def test_consistency_repeats_a_stratified_sample_at_both_decodings(finished_run):
    from GliomaCompareLib.runlayout import read_table

    sample = json.loads((finished_run / "stages" / "consistency" / "sample.json").read_text())
    splits = json.loads((finished_run / "splits.json").read_text())
    test_grades = {c: splits["grades"][c] for c in splits["test"]}
    assert len(sample["cases"]) == 2 and set(sample["cases"]) <= set(test_grades)
    if set(test_grades.values()) == {"HGG", "LGG"}:  # both grades asked again, not the first ids
        assert set(sample["grades"].values()) == {"HGG", "LGG"}
    rows = read_table(finished_run / "metrics" / "consistency.csv")
    # the sampling temperature of the preset, and the greedy decoding the comparison evaluated
    assert {r["temperature"] for r in rows if r["method"] == "vlm_base"} == {0.0, 0.7}


def test_the_untrained_network_is_scored_on_the_same_patients_as_a_baseline(finished_run):
    import json

    from GliomaCompareLib.runlayout import read_table

    rows = read_table(finished_run / "metrics" / "segmentation.csv")
    trained = {(r["case_id"], r["region"]) for r in rows if r["method"] == "cnn"}
    base = [r for r in rows if r["method"] == "cnn_untrained"]
    assert trained and {(r["case_id"], r["region"]) for r in base} == trained
    assert all("untrained" in r["model"] and r["status"] == "ok" for r in base)
    info = json.loads(
        (finished_run / "stages" / "cnn-train-seg" / "untrained" / "model.json").read_text()
    )
    assert info["source"] == "untrained (random init)" and info["metrics"]["best_epoch"] == 0
    report = (finished_run / "report.html").read_text()
    assert "3D CNN (untrained)" in report


def test_interrupted_run_resumes_without_recomputing(interrupted_run, config_file):
    run = interrupted_run.run
    for stage in STAGES_BEFORE_KILL:
        assert f"{stage}: already done (skipped)" in interrupted_run.resume_err
        after = _digest(run / "stages" / stage)
        before = interrupted_run.before[stage]
        changed = {k for k in before if after.get(k) != before[k]}
        assert not changed, f"{stage}: files recomputed after the resume: {sorted(changed)}"
    # the results are a function of the stages' outputs: recomputing them gives the same tables
    tables = _digest(run / "metrics")
    code, _, err = _finish(_cli("run", str(config_file), "--out", str(run), "--force", "metrics"))
    assert code == 0, err[-3000:]
    assert "vlm-finetuned: already done (skipped)" in err
    again = _digest(run / "metrics")
    assert {k: v for k, v in again.items() if k.endswith(".csv")} == {
        k: v for k, v in tables.items() if k.endswith(".csv")
    }


def test_changed_config_is_refused_and_leaves_the_run_alone(config_file, finished_run, tmp_path):
    done = (finished_run / "stages" / "vlm-base" / "done.json").read_text()
    code, _, err = _finish(
        _cli("run", str(config_file), "--out", str(finished_run), "--set", "vlm.slices_per_case=3")
    )
    assert code == 3
    assert "stage vlm-base" in err and "slices_per_case: 2 -> 3" in err
    assert "--force vlm-base" in err
    assert (finished_run / "stages" / "vlm-base" / "done.json").read_text() == done


def test_report_rebuilds_without_recomputing(finished_run):
    before = {p: p.stat().st_mtime_ns for p in (finished_run / "stages").rglob("done.json")}
    (finished_run / "report.html").unlink()
    code, _, err = _finish(_cli("report", str(finished_run)))
    assert code == 0, err[-2000:]
    assert (finished_run / "report.html").is_file()
    assert before == {p: p.stat().st_mtime_ns for p in (finished_run / "stages").rglob("done.json")}


@needs_slicer
def test_case_files_load_in_slicer(finished_run, scene):  # noqa: F811
    import numpy as np
    import slicer
    from GliomaCompareSlicerLib import mrml

    from GliomaCompareLib.data import discover_cases, load_case

    cohort = discover_cases(finished_run / "data", validate=False)
    folder = sorted((finished_run / "cases").iterdir())[0]
    case = load_case(cohort.get(folder.name))
    reference = mrml.volume_node_from_array(case.flair, case.affine, "FLAIR", scene=scene)
    seg = mrml.load_segmentation_file(folder / "ground_truth.seg.nrrd", scene=scene)
    assert isinstance(seg, slicer.vtkMRMLSegmentationNode)
    label = mrml.label_map_from_segmentation_node(seg, reference)
    np.testing.assert_array_equal(label, case.label)
    cnn = mrml.load_segmentation_file(folder / "cnn.seg.nrrd", scene=scene)
    assert cnn.GetSegmentation().GetNumberOfSegments() >= 1
    markups = list(folder.glob("vlm_*.mrk.json"))
    for path in markups:
        nodes = mrml.load_markups_file(path, scene=scene)
        assert nodes, path
        for node in nodes:
            assert node.GetNumberOfControlPoints() >= 1
