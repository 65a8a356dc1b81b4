"""Issue 17, the run folder's state and its inputs: a reused cohort record checked against the
data folder, damaged answer-cache lines and manifest fields, ``data.root`` beside
``data.synthetic``, case folders that loop or hold two copies of one image, and Markdown tables
that print markup as text."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_data_discovery import write_case, write_mapping

from GliomaCompareLib.cli import main
from GliomaCompareLib.pipeline.cohort import CohortChangedError, load_cohort
from GliomaCompareLib.pipeline.config import read_run_config
from GliomaCompareLib.pipeline.runner import StageContext
from GliomaCompareLib.pipeline.stages.data import DATA, run_data
from GliomaCompareLib.report import build_report
from GliomaCompareLib.report.render import render_markdown
from GliomaCompareLib.report.table import Column, Line, TableSpec, build_table
from GliomaCompareLib.vlm.cache import AnswerCache
from GliomaCompareLib.vlm.hf_backend import TransformersBackend
from GliomaCompareLib.vlm.inference import VLMConfig, run_vlm
from GliomaCompareLib.vlm.types import DecodingConfig

MD_SPEC = TableSpec(
    "md",
    "A <b>title</b> & more",
    "What <i>it</i> shows.",
    ("classification",),
    (Column("Method", "method", label="method"), Column("Model", "model")),
)


def test_markdown_tables_print_markup_as_text():
    row = {"method": "<script>alert(1)</script>", "model": "a|b & <img src=x onerror=y>"}
    md = render_markdown(build_table(MD_SPEC, [Line(row=row)], notes=["p < 0.05 & n > 3"]))
    assert "<script>" not in md and "<img" not in md and "<b>" not in md and "<i>" not in md
    assert (
        "| &lt;script&gt;alert(1)&lt;/script&gt; | a\\|b &amp; &lt;img src=x onerror=y&gt; |" in md
    )
    assert "## A &lt;b&gt;title&lt;/b&gt; &amp; more" in md
    assert "- p &lt; 0.05 &amp; n &gt; 3" in md


CI_CHECK = """
import pytest

@pytest.mark.skipif(True, reason="cmake is not installed")
def test_cmake():
    pass

def test_slicer():
    pytest.skip("slicer-core is not installed (No module named 'slicer'); pip install slicer-core")

def test_compiler():
    pytest.skip("no C++ compiler for project() here")

@pytest.mark.skipif(True, reason="POSIX permissions")
def test_other_reason():
    pass
"""


@pytest.mark.parametrize("ci", ["", "true"])
def test_in_ci_a_missing_tool_fails_instead_of_skipping(pytester, monkeypatch, ci):
    """With CI set, the slicer-core, cmake and compiler tests fail when their tool is missing
    (Testing/conftest.py); other skips stay skips, and without CI all of them skip."""
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text(encoding="utf-8"))
    pytester.makepyfile(test_tools=CI_CHECK)
    monkeypatch.setenv("CI", ci)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    if ci:
        # a skipif mark skips in setup, so there the test ends as an error: the run fails too
        result.assert_outcomes(failed=2, errors=1, skipped=1)
        assert result.ret != 0
        result.stdout.fnmatch_lines(["*CI is set, so this test must run*cmake is not installed*"])
    else:
        result.assert_outcomes(skipped=4)


def test_an_exception_in_a_thread_fails_the_test(pytester):
    """pyproject's filterwarnings makes PytestUnhandledThreadExceptionWarning an error, so a
    thread's exception cannot pass as a warning."""
    root = Path(__file__).resolve().parent.parent
    pytester.makepyprojecttoml((root / "pyproject.toml").read_text(encoding="utf-8"))
    pytester.makepyfile(
        test_thread="""
import threading

def test_thread():
    t = threading.Thread(target=lambda: 1 / 0)
    t.start()
    t.join()
"""
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)


def test_report_names_manifest_fields_of_the_wrong_type(tmp_path):
    """A manifest whose ``git`` is not an object (or ``command`` not a list) crashed ``report``;
    now the field is named on the page and left out."""
    run = tmp_path / "run"
    (run / "metrics").mkdir(parents=True)
    manifest = {"git": "abc123", "command": 5, "seeds": {"global": 3}, "created": "today"}
    (run / "manifest.json").write_text(json.dumps(manifest))
    page = build_report(run, figures=False).read_text(encoding="utf-8")
    assert "manifest.json: field &#x27;git&#x27; is str, not an object; not shown" in page
    assert "manifest.json: field &#x27;command&#x27; is int, not a list; not shown" in page
    assert "today" in page  # the rest of the manifest is still shown
    assert main(["report", str(run), "--no-figures"]) == 0


@pytest.mark.slow
def test_damaged_answer_cache_lines_are_named_and_asked_again(synth_cohort, tmp_path, caplog):
    """A truncated line or one of the wrong types in the answer cache crashed the VLM arm on
    every re-run; now each is skipped with its file and line named, and that query is asked
    again (the other answers still come from the cache)."""
    tiny = TransformersBackend.tiny(seed=0)
    config = VLMConfig(
        tasks=("grade", "point"), slices_per_case=1, decoding=DecodingConfig(max_new_tokens=8)
    )
    config = replace(config, n_bootstrap=0, save_masks=False)
    ids = ["BraTS20_Training_001", "BraTS20_Training_002"]
    first = run_vlm(synth_cohort, tiny, config, tmp_path / "out", case_ids=ids)
    (segment,) = (tmp_path / "out" / "cache").glob("answers-*.jsonl")
    lines = segment.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(first.records) == 4
    entry = json.loads(lines[1])
    entry["answer"]["text"] = 5  # wrong type
    lines[1] = json.dumps(entry)
    lines[2] = json.dumps({"key": json.loads(lines[2])["key"], "answer": "ok"})
    lines[3] = lines[3][: len(lines[3]) // 2]  # truncated
    segment.write_text("\n".join(lines) + "\n", encoding="utf-8")
    caplog.set_level(logging.WARNING, logger="GliomaCompareLib.vlm.cache")
    again = run_vlm(synth_cohort, tiny, config, tmp_path / "out", case_ids=ids)
    messages = [r.getMessage() for r in caplog.records]
    for number, reason in ((2, "field 'text' is int"), (3, "answer is str"), (4, "not JSON")):
        assert any(f"{segment}:{number}: damaged" in m and reason in m for m in messages), number
    manifest = json.loads((tmp_path / "out" / "vlm.json").read_text())
    assert manifest["cached"] == 1 and manifest["asked"] == 3
    assert [r.raw_text for r in again.records] == [r.raw_text for r in first.records]


def test_answer_cache_keeps_only_lines_that_are_answers(tmp_path, caplog):
    good = {"text": "HGG", "refused": False, "latency_s": 0.5, "meta": {}}
    bad = [
        "[1, 2]",
        json.dumps({"key": "", "answer": good}),
        json.dumps({"key": "k", "answer": [good]}),
        json.dumps({"key": "k", "answer": {**good, "refused": "no"}}),
        json.dumps({"key": "k", "answer": {**good, "latency_s": True}}),
        json.dumps({"key": "k", "answer": {**good, "option_logprobs": {"HGG": "x"}}}),
        json.dumps({"key": "k", "answer": {**good, "error": "timeout"}}),
        json.dumps({"key": "k", "answer": {"refused": False}}),
        '{"key": "k", "ans',
    ]
    lines = [json.dumps({"key": "good", "answer": good}), *bad]
    (tmp_path / "answers-a.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    caplog.set_level(logging.WARNING, logger="GliomaCompareLib.vlm.cache")
    cache = AnswerCache(tmp_path)
    assert len(cache) == 1 and cache.get("good").text == "HGG" and cache.get("k") is None
    assert cache.skipped_lines == len(bad)
    named = {r.getMessage().split(": damaged")[0] for r in caplog.records}
    assert named == {f"{tmp_path / 'answers-a.jsonl'}:{n}" for n in range(2, len(lines) + 1)}


def _data_stage(run_dir: Path, root: Path) -> StageContext:
    data = SimpleNamespace(root=str(root), synthetic=None, convention="brats2020", jobs=1)
    ctx = StageContext(
        run_dir=run_dir,
        dir=run_dir / "stages" / "data",
        stage=DATA,
        config=SimpleNamespace(data=data),
        shard=None,
        upstream={},
        logger=logging.getLogger("test"),
    )
    ctx.dir.mkdir(parents=True, exist_ok=True)
    run_data(ctx)
    return ctx


@pytest.mark.parametrize("change", ["added", "removed", "replaced", "regraded"])
def test_a_changed_data_folder_is_refused_when_the_cohort_is_read_back(tmp_path, change):
    """Issue 17: later stages re-read the cohort from cohort.json's data folder; when that
    folder changed they scored against another cohort without a word. Now they refuse, naming
    the folder, the cases and --force data; redoing the data stage (what --force data does)
    makes the run usable again."""
    data, run_dir = tmp_path / "data", tmp_path / "run"
    for i in (1, 2, 3):
        write_case(data, f"BraTS20_Training_00{i}", seed=i)
    write_mapping(data, [(f"BraTS20_Training_00{i}", "HGG") for i in (1, 2, 3)])
    _data_stage(run_dir, data)
    assert len(load_cohort(run_dir).usable) == 3  # unchanged: read back as before
    if change == "added":
        write_case(data, "BraTS20_Training_004", seed=4)
    elif change == "removed":
        shutil.rmtree(data / "BraTS20_Training_002")
    elif change == "replaced":
        flair = data / "BraTS20_Training_002" / "BraTS20_Training_002_flair.nii.gz"
        flair.write_bytes(flair.read_bytes() + b"\0")
    else:
        write_mapping(data, [(f"BraTS20_Training_00{i}", "LGG") for i in (1, 2, 3)])
    with pytest.raises(CohortChangedError) as info:
        load_cohort(run_dir)
    message = str(info.value)
    assert message.startswith(f"{data.resolve()}: the data folder changed")
    case = "BraTS20_Training_004" if change == "added" else "BraTS20_Training_002"
    if change == "regraded":
        case = "BraTS20_Training_001, BraTS20_Training_002, BraTS20_Training_003"
    label = {"added": "added:", "removed": "removed:"}.get(change, "changed:")
    assert f"{label} {case}" in message
    assert f"--out {run_dir} --force data" in message
    _data_stage(run_dir, data)  # --force data
    assert load_cohort(run_dir).cases


@pytest.mark.slow
def test_the_cli_names_a_changed_data_folder(tmp_path, capsys):
    """Through ``gliomacompare run``: the split stage meets the changed folder and the command
    ends with the message (exit 2), not a traceback; ``--force data`` then carries on."""
    data, run_dir = tmp_path / "data", tmp_path / "run"
    for i in range(1, 7):
        write_case(data, f"BraTS20_Training_00{i}", seed=i)
    write_mapping(data, [(f"BraTS20_Training_00{i}", ("HGG", "LGG")[i % 2]) for i in range(1, 7)])
    config = tmp_path / "run.yaml"
    config.write_text(f"data: {{root: {data}}}\n", encoding="utf-8")
    assert main(["run", str(config), "--out", str(run_dir), "--only", "data"]) == 0
    write_case(data, "BraTS20_Training_007", seed=7)
    capsys.readouterr()
    assert main(["run", str(config), "--out", str(run_dir), "--only", "split"]) == 2
    err = capsys.readouterr().err
    assert (
        f"{data.resolve()}: the data folder changed" in err and "added: BraTS20_Training_007" in err
    )
    assert f"--out {run_dir} --force data" in err and "Traceback" not in err
    argv = ["run", str(config), "--out", str(run_dir), "--only", "data", "--only", "split"]
    assert main([*argv, "--force", "data"]) == 0


def test_data_root_beside_a_synthetic_cohort_is_refused(tmp_path):
    """``--set data.root=...`` on the demo preset was ignored (the synthetic cohort was used);
    now the combination is refused with the override that does what was meant."""
    with pytest.raises(ValueError, match=r"not both .*--set data\.synthetic=null"):
        read_run_config("demo", [f"data.root={tmp_path}"])
    config, _ = read_run_config("demo", ["data.synthetic=null", f"data.root={tmp_path}"])
    assert config.data.synthetic is None and config.data.root == str(tmp_path)
    config, _ = read_run_config("demo", [])
    assert config.data.root is None and config.data.synthetic is not None
