"""The prompts section: each prompt rendered from the templates with the hashes the answers
carry, and per parse status a few raw answers (truncated)."""

from __future__ import annotations

import json

from GliomaCompareLib.report import build_report
from GliomaCompareLib.report.prompts import EXAMPLES_PER_STATUS, RAW_CHARS, read_prompts
from GliomaCompareLib.vlm.tasks import load_tasks
from Testing.test_report import make_run


def _answers(run, stage="vlm-base"):
    box = load_tasks()["box"].render(64, 64, "pixel")
    base = {"task": "box", "width": 64, "height": 64, "coordinate_system": "pixel",
            "template_hash": box.template_hash, "prompt_hash": box.prompt_hash}  # fmt: skip
    records = [
        {
            **base,
            "case_id": f"c{i}",
            "slice_index": i,
            "status": "invalid",
            "note": "no '{'",
            "raw_text": "x" * (RAW_CHARS + 50),
        }
        for i in range(4)
    ]
    records.append({**base, "case_id": "c9", "slice_index": 3, "status": "ok", "raw_text": "{}"})
    records.append({**base, "case_id": "c8", "status": "ok", "prompt_hash": "0" * 16})
    folder = run / "stages" / stage / "out" / "all"
    folder.mkdir(parents=True)
    (folder / "answers.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in records) + "not json\n", encoding="utf-8"
    )
    cache = run / "stages" / stage / "cache"
    cache.mkdir()
    (cache / "answers.jsonl").write_text(json.dumps({**base, "status": "ok"}) + "\n")
    return box


def test_prompts_rendered_with_their_hashes(tmp_path):
    run, _ = make_run(tmp_path)
    box = _answers(run)
    summary = read_prompts(run)
    assert summary.files == ["stages/vlm-base/out/all/answers.jsonl"]  # caches are not read
    assert any("line 7 is not JSON" in p for p in summary.problems)
    first, other = summary.prompts
    assert (first.template_hash, first.prompt_hash, first.count) == (
        box.template_hash,
        box.prompt_hash,
        5,
    )
    assert first.matches and first.text == box.text
    assert other.count == 1 and not other.matches  # an edited prompt is told apart
    invalid = [x for x in summary.examples if x.status == "invalid"]
    assert len(invalid) == EXAMPLES_PER_STATUS
    assert invalid[0].raw_text.endswith("[truncated]")
    assert len(invalid[0].raw_text) < RAW_CHARS + 20


def test_prompts_section_in_the_report(tmp_path):
    run, _ = make_run(tmp_path)
    box = _answers(run)
    page = build_report(run).read_text(encoding="utf-8")
    start = page.index('id="prompts"')
    section = page[start : page.index("</section>", start)]
    assert f"template <code>{box.template_hash}</code>" in section
    assert "both hashes match" in section and "the template has changed" in section
    assert "<details>" in section and "no '{'" in section.replace("&#x27;", "'")
    assert '<a href="#prompts">' in page  # from "What was run"


def test_no_answers_no_prompts(tmp_path):
    run, _ = make_run(tmp_path)
    page = build_report(run).read_text(encoding="utf-8")
    start = page.index('id="prompts"')
    assert "no VLM answers" in page[start : page.index("</section>", start)]
