"""Several VLMs in one run (issue 18): a ``vlms:`` config gives each VLM its own methods, stages,
answer cache and fingerprint, a row in every table and a sentence in the report; a ``vlm:``
config keeps the one unnamed VLM exactly as before."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from slicer_env import needs_slicer, scene  # noqa: F401  (scene is a fixture)

from GliomaCompareLib.pipeline.config import load_run_config, parse_run_config, read_run_config
from GliomaCompareLib.pipeline.grading import MethodGrades, comparison_rows
from GliomaCompareLib.pipeline.outputs import vlm_stage_of
from GliomaCompareLib.pipeline.run import STAGE_NAMES, build_stages, run_comparison, stage_names
from GliomaCompareLib.pipeline.runner import ConfigChangedError, Stage, StageRunner
from GliomaCompareLib.pipeline.stages.vlm_finetune import VLM_FINETUNE
from GliomaCompareLib.pipeline.stages.vlm_infer import CONSISTENCY, VLM_BASE, VLM_FINETUNED
from GliomaCompareLib.runlayout import (
    is_finetuned_method,
    is_vlm_method,
    method_label,
    read_table,
    vlm_markup_variant,
    vlm_method,
    vlm_methods_in,
    vlm_name_of,
)
from GliomaCompareLib.slicer_files import case_dir, vlm_markup_file, write_points_markup

MINIMAL = {"data": {"synthetic": {"cases": 4}}, "cnn": {"enabled": False}}


# ------------------------------------------------------------------------------ fast
def test_method_ids_name_the_vlm_and_read_back():
    assert vlm_method() == "vlm_base" and vlm_method(finetuned=True) == "vlm_finetuned"
    assert vlm_method("qwen-7b") == "vlm_base-qwen-7b"
    assert vlm_method("qwen-7b", finetuned=True) == "vlm_finetuned-qwen-7b"
    for method in ("vlm_base", "vlm_finetuned-x_1", "vlm_base-a-b"):
        assert is_vlm_method(method)
    for method in ("cnn", "cnn_untrained", "majority", "vlm", "vlm_base-", "vlm_other-a"):
        assert not is_vlm_method(method)
    assert vlm_name_of("vlm_base-a-b") == "a-b" and vlm_name_of("vlm_finetuned") == ""
    assert is_finetuned_method("vlm_finetuned-a") and not is_finetuned_method("vlm_base-a")
    assert method_label("vlm_base") == "VLM (base)"
    assert method_label("vlm_finetuned-qwen") == "VLM qwen (fine-tuned)"
    assert vlm_methods_in(["cnn", "vlm_base-b", "majority", "vlm_base-a", "vlm_base-b"]) == [
        "vlm_base-b",
        "vlm_base-a",
    ]
    assert vlm_stage_of("vlm_base") == "vlm-base"
    assert vlm_stage_of("vlm_finetuned-q") == "vlm-finetuned-q"
    # the Slicer files keep their names for the unnamed VLM; a named one's carry the name
    assert vlm_markup_file("box", vlm_markup_variant("vlm_base")) == "vlm_box.mrk.json"
    assert vlm_markup_file("box", vlm_markup_variant("vlm_finetuned")) == (
        "vlm_box_finetuned.mrk.json"
    )
    assert vlm_markup_file("point", vlm_markup_variant("vlm_base-q")) == "vlm_point_base-q.mrk.json"


def test_a_vlm_config_runs_the_stages_it_always_ran():
    config, _ = read_run_config("demo")
    stages = build_stages(config)
    assert tuple(s.name for s in stages) == STAGE_NAMES == stage_names(config)
    by_name = {s.name: s for s in stages}
    # the very stage objects of before: same config keys, no extra settings, so the same
    # fingerprints and the same folders (answer caches in stages/vlm-base/cache ...)
    assert by_name["vlm-base"] is VLM_BASE and by_name["vlm-finetuned"] is VLM_FINETUNED
    assert by_name["vlm-finetune"] is VLM_FINETUNE and by_name["consistency"] is CONSISTENCY
    assert all(s.settings is None for s in stages)
    assert config.vlm_methods() == ["vlm_base", "vlm_finetuned"]


def test_stage_settings_enter_the_fingerprint_only_when_given(tmp_path):
    noop = lambda ctx: {}  # noqa: E731
    raw = {"vlm": {"seed": 1}}
    plain = Stage("s", noop, (), ("vlm",))
    runner = StageRunner(tmp_path, [plain], raw, raw=raw)
    fp_plain, inputs = runner.fingerprint_of(plain)
    assert "settings" not in inputs  # a stage without settings keeps its old fingerprint
    one = Stage("s", noop, (), ("vlm",), settings={"vlm": {"seed": 1}})
    two = Stage("s", noop, (), ("vlm",), settings={"vlm": {"seed": 2}})
    fp_one, fp_two = runner.fingerprint_of(one)[0], runner.fingerprint_of(two)[0]
    assert len({fp_plain, fp_one, fp_two}) == 3


def test_a_vlms_config_gets_stages_per_vlm_with_their_own_fingerprints(tmp_path):
    raw = {
        **MINIMAL,
        "vlms": [{"name": "a", "backend": "tiny"}, {"name": "b", "backend": "tiny", "seed": 1}],
    }
    config = parse_run_config(raw)
    names = stage_names(config)
    for name in ("a", "b"):
        for kind in ("vlm-base", "vlm-finetune", "vlm-finetuned"):
            assert f"{kind}-{name}" in names
    assert "vlm-base" not in names
    metrics = next(s for s in build_stages(config) if s.name == "metrics")
    assert {"vlm-base-a", "vlm-finetuned-a", "vlm-base-b", "vlm-finetuned-b"} <= set(
        metrics.depends
    )

    edited = json.loads(json.dumps(raw))
    edited["vlms"][1]["decoding"] = {"max_new_tokens": 7}
    before, after = _fingerprints(raw, tmp_path), _fingerprints(edited, tmp_path)
    assert before.keys() == after.keys()
    changed = {name for name in before if before[name] != after[name]}
    assert {"vlm-base-b", "vlm-finetune-b", "vlm-finetuned-b"} <= changed
    assert not changed & {"vlm-base-a", "vlm-finetune-a", "vlm-finetuned-a", "data", "split"}
    # the shared vlm: section is every VLM's: editing it changes them all
    shared = json.loads(json.dumps(raw))
    shared["vlm"] = {"slices_per_case": 1}
    changed = {n for n, fp in _fingerprints(shared, tmp_path).items() if before[n] != fp}
    assert {"vlm-base-a", "vlm-base-b"} <= changed


def _fingerprints(raw: dict, folder: Path) -> dict[str, str]:
    config = parse_run_config(raw)
    runner = StageRunner(folder, build_stages(config), config, raw=config.raw)
    runner.status()  # fills in the upstream fingerprints, stage by stage
    return {stage.name: runner.fingerprint_of(stage)[0] for stage in runner.stages}


def test_the_cnn_is_compared_with_each_vlm_and_each_vlm_with_its_fine_tuned_self():
    truth = {"p1": "HGG", "p2": "LGG", "p3": "HGG"}
    grades = {"p1": "HGG", "p2": "HGG", "p3": "LGG"}
    methods = [
        MethodGrades(m, "", "fixed", grades)
        for m in ("cnn", "vlm_base-a", "vlm_finetuned-a", "vlm_base-b", "cnn_untrained")
    ]
    pairs = [(r["method_a"], r["method_b"]) for r in comparison_rows(methods, truth,
                                                                      list(truth), 10, 0)]  # fmt: skip
    assert pairs == [
        ("cnn", "vlm_base-a"),
        ("cnn", "vlm_finetuned-a"),
        ("cnn", "vlm_base-b"),
        ("vlm_base-a", "vlm_finetuned-a"),
    ]
    single = [MethodGrades(m, "", "fixed", grades) for m in ("cnn", "vlm_base", "vlm_finetuned")]
    pairs = [(r["method_a"], r["method_b"]) for r in comparison_rows(single, truth,
                                                                      list(truth), 10, 0)]  # fmt: skip
    assert pairs == [("cnn", "vlm_base"), ("cnn", "vlm_finetuned"), ("vlm_base", "vlm_finetuned")]


# ------------------------------------------------------------------------------ a real run
#: The demo with three tiny VLMs of different families (Mllama, LLaVA, Idefics3), shrunk to what a
#: test can afford: VLM a fine-tuned, b and c not.
MULTI = """\
extends: demo
name: multivlm-mini
data:
  synthetic: {cases: 8, seed: 3, shape: [48, 48, 32], hgg_fraction: 0.65}
cnn:
  seg:
    patch_size: [32, 32, 32]
    roi_size: [48, 48, 32]
    train: {epochs: 1}
  cls:
    input_size: [32, 32, 32]
    train: {epochs: 1}
vlm:
  tasks: [grade, point, box]
  slices_per_case: 2
  decoding: {temperature: 0.0, max_new_tokens: 40, seed: 0}
finetune:
  epochs: 1
consistency:
  max_cases: 1
  tasks: [grade]
  methods: [vlm_base-b]
metrics:
  n_bootstrap: 50
report:
  gallery_count: 1
vlms:
  - {name: a, backend: tiny, seed: 0}
  - {name: b, backend: tiny, model: tiny-llava, seed: 1, finetune: false}
  - {name: c, backend: tiny, model: tiny-idefics3, seed: 2, finetune: false}
"""
NAMES = ("a", "b", "c")
METHODS = ("vlm_base-a", "vlm_finetuned-a", "vlm_base-b", "vlm_base-c")


def _silent(*_args) -> None:
    return None


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def multi_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("multivlm")
    path = folder / "multi.yaml"
    path.write_text(MULTI)
    raw, _ = load_run_config(path)
    run = folder / "run"
    run_comparison(raw, path, run, display=_silent)
    return run, raw, path


@pytest.mark.slow
def test_every_table_has_a_row_per_vlm(multi_run):
    run, _, _ = multi_run
    metrics = run / "metrics"
    classification = read_table(metrics / "classification.csv")
    for method in METHODS:
        decisions = {r["decision"] for r in classification if r["method"] == method}
        assert decisions == {"fixed", "val_threshold"}, method
    comparisons = {(r["method_a"], r["method_b"]) for r in read_table(metrics / "comparisons.csv")}
    assert {("cnn", m) for m in METHODS} | {("vlm_base-a", "vlm_finetuned-a")} == comparisons
    for table in ("localisation", "answer_status", "slices", "grades", "segmentation_summary"):
        found = {r["method"] for r in read_table(metrics / f"{table}.csv")}
        assert set(METHODS) <= found, table
        assert not {"vlm_base", "vlm_finetuned"} & found, table
    consistency = {r["method"] for r in read_table(metrics / "consistency.csv")}
    assert consistency == {"vlm_base-b"}
    models = {r["method"]: r["model"] for r in classification}
    assert "tiny-llava-seed1" in models["vlm_base-b"]
    assert "tiny-idefics3-seed2" in models["vlm_base-c"]
    assert "LoRA adapter" in models["vlm_finetuned-a"]


@pytest.mark.slow
def test_each_vlm_has_its_own_stages_answer_cache_and_manifest_entry(multi_run):
    run, _, _ = multi_run
    stages = run / "stages"
    assert not (stages / "vlm-base").exists() and not (stages / "vlm-finetune").exists()
    caches = {}
    for name in NAMES:
        files = sorted((stages / f"vlm-base-{name}" / "cache").glob("answers-*.jsonl"))
        assert files, name
        caches[name] = {f.read_bytes() for f in files}
        assert (stages / f"vlm-base-{name}" / "done.json").is_file()
    assert caches["a"] != caches["b"] != caches["c"]
    assert (stages / "vlm-finetune-a" / "run" / "adapter").is_dir()
    assert (stages / "vlm-finetuned-a" / "cache").is_dir()
    assert not (stages / "vlm-finetune-b" / "done.json").exists()  # fine-tuning off for b
    manifest = json.loads((run / "manifest.json").read_text())
    assert set(METHODS) <= set(manifest["models"]) and "vlm_adapter-a" in manifest["models"]
    case_files = {p.name for p in (run / "cases").glob("*/*.mrk.json")}
    assert all("-" in name for name in case_files)  # vlm_<task>_base-<name>.mrk.json ...


@pytest.mark.slow
def test_the_report_compares_the_cnn_with_each_vlm(multi_run):
    run, _, _ = multi_run
    html = (run / "report.html").read_text()
    for method in METHODS:
        assert method_label(method) in html, method
    for name in NAMES:
        assert f"3D CNN vs VLM {name} (base)" in html or f"VLM {name} (base) is better" in html
    assert "3 VLMs are each compared with the CNN" in html
    assert "not adjusted" in html
    assert "VLM (base)</td><td>not run" not in html.replace("\n", "")


@pytest.mark.slow
def test_editing_one_vlm_redoes_only_its_stages(multi_run):
    run, raw, path = multi_run
    untouched = {s: _digest(run / "stages" / s) for s in ("vlm-base-a", "vlm-finetune-a",
                                                          "vlm-finetuned-a", "vlm-base-b")}  # fmt: skip
    before_c = (run / "stages" / "vlm-base-c" / "done.json").read_text()
    edited = json.loads(json.dumps(raw))
    edited["vlms"][2]["decoding"] = {"temperature": 0.0, "max_new_tokens": 24, "seed": 0}
    with pytest.raises(ConfigChangedError, match="stage vlm-base-c:") as refused:
        run_comparison(edited, path, run, display=_silent)
    assert "vlm-base-a" not in str(refused.value) and "vlm-base-b" not in str(refused.value)
    outcome = run_comparison(edited, path, run, force=["vlm-base-c"], display=_silent)
    assert outcome.report is not None
    assert (run / "stages" / "vlm-base-c" / "done.json").read_text() != before_c
    for stage, digest in untouched.items():
        assert _digest(run / "stages" / stage) == digest, stage
    rows = read_table(run / "metrics" / "classification.csv")
    assert {r["method"] for r in rows} >= set(METHODS)


# ------------------------------------------------------------------------------ Slicer
@needs_slicer
def test_the_slicer_module_shows_one_vlm_at_a_time(scene, tmp_path):  # noqa: F811
    from GliomaCompareSlicerLib.logic import CompareLogic

    folder = case_dir(tmp_path, "P1")
    folder.mkdir(parents=True)
    for variant in ("base-a", "finetuned-a", "base-b"):
        path = folder / vlm_markup_file("point", variant)
        write_points_markup(path, np.array([[1.0, 2.0, 3.0]]), ["s 1"], f"VLM {variant} point")
    logic = CompareLogic(scene)
    results = logic.load_run_results("P1", tmp_path)
    assert logic.vlm_sources() == ["base-a", "base-b", "finetuned-a"]
    assert logic.set_method_visible("vlm_point", True) == 3  # the task checkbox: every VLM
    assert logic.show_only_vlm(None) == 0
    assert logic.show_only_vlm("base-b") == 2

    def visible() -> dict[str, int]:
        return {
            method: node.GetDisplayNode().GetVisibility()
            for method, nodes in results.nodes.items()
            for node in nodes
            if method.startswith("vlm_")
        }

    assert visible() == {"vlm_point_base-a": 0, "vlm_point_base-b": 1, "vlm_point_finetuned-a": 0}
