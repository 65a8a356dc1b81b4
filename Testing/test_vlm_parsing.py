"""VLM tasks, prompts and the answer parser: one definition per task, statuses for every answer."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from GliomaCompareLib import geometry as g
from GliomaCompareLib.vlm.parsing import PARSE_STATUSES, parse_answer, repair_json
from GliomaCompareLib.vlm.tasks import TASK_NAMES, load_tasks, parse_task_list

W, H = 240, 200


@pytest.fixture(scope="module")
def tasks():
    return load_tasks()


@pytest.fixture(scope="module")
def prompts(tasks):
    return {name: spec.render(W, H, max_vertices=6) for name, spec in tasks.items()}


def parse(tasks, prompts, task, text, **kw):
    return parse_answer(tasks[task], text, prompts[task], **kw)


def test_prompts_state_size_convention_and_format(tasks, prompts):
    assert set(tasks) == set(TASK_NAMES)
    for name, prompt in prompts.items():
        assert "240x200" in prompt.text, name
        assert "radiological" in prompt.text
        assert tasks[name].answer_format() in prompt.text
        assert "JSON" in prompt.text
    assert "from 0 at the left edge to 239" in prompts["point"].text
    assert "to 199 at the bottom edge" in prompts["box"].text
    assert "3 to 6 vertices" in prompts["polygon"].text
    assert "HGG" in prompts["grade"].text and "LGG" in prompts["grade"].text
    assert prompts["grade"].answer_prefix == '{"grade": "'
    assert prompts["grade"].answer_suffix == '"}'


def test_schema_comes_from_the_same_definition(tasks, prompts):
    grade = prompts["grade"].json_schema
    assert grade["properties"]["grade"]["enum"] == ["HGG", "LGG"]
    assert grade["required"] == ["grade"] and grade["additionalProperties"] is False
    box = prompts["box"].json_schema["properties"]
    assert list(box) == list(tasks["box"].answer.keys)
    assert box["x_max"]["maximum"] == W - 1 and box["y_max"]["maximum"] == H - 1
    assert box["x_min"]["type"] == "integer"
    poly = prompts["polygon"].json_schema["properties"]["points"]
    assert (poly["minItems"], poly["maxItems"]) == (3, 6)
    norm = tasks["point"].render(W, H, "normalized").json_schema["properties"]["x"]
    assert norm == {"type": "number", "minimum": 0, "maximum": 1.0}


@pytest.mark.parametrize("system", ["pixel", "normalized", "per_mille"])
@pytest.mark.parametrize("task", TASK_NAMES)
def test_format_answer_round_trips_through_the_parser(tasks, task, system):
    spec = tasks[task]
    prompt = spec.render(W, H, system, max_vertices=6)
    truth = {
        "grade": "LGG",
        "point": g.Point(120.0, 80.0),
        "box": g.Box(30.0, 40.0, 90.0, 150.0),
        "polygon": g.Polygon(((30.0, 40.0), (90.0, 45.0), (95.0, 150.0), (35.0, 140.0))),
    }[task]
    if task == "grade":
        value = truth
    else:
        converted = g.from_pixels(truth, system, W, H)
        value = {
            "point": lambda p: (p.x, p.y),
            "box": lambda b: b.as_tuple(),
            "polygon": lambda p: p.points,
        }[task](converted)
    text = spec.format_answer(value, digits=None if system == "pixel" else 6)
    parsed = parse_answer(spec, text, prompt)
    assert parsed.status == "ok" and parsed.stage == "strict", parsed
    if task == "grade":
        assert parsed.value == "LGG" and parsed.label == "LGG"
        return
    got = parsed.geometry
    if task == "point":
        assert (got.x, got.y) == pytest.approx((truth.x, truth.y), abs=1e-3)
    elif task == "box":
        assert got.as_tuple() == pytest.approx(truth.as_tuple(), abs=1e-3)
    else:
        assert got.as_array() == pytest.approx(truth.as_array(), abs=1e-3)


def test_template_hash_follows_every_edit(tmp_path, tasks):
    folder = tmp_path / "prompts"
    shutil.copytree(tasks["grade"].template_file.parent, folder)
    same = load_tasks(folder)
    assert {t: s.template_hash for t, s in same.items()} == {
        t: s.template_hash for t, s in tasks.items()
    }
    (folder / "box.txt").write_text((folder / "box.txt").read_text() + "\nBe precise.\n")
    raw = json.loads((folder / "tasks.json").read_text())
    raw["tasks"]["grade"]["answer"]["synonyms"]["HGG"].append("grade three")
    (folder / "tasks.json").write_text(json.dumps(raw))
    edited = load_tasks(folder)
    assert edited["box"].template_hash != tasks["box"].template_hash
    assert edited["grade"].template_hash != tasks["grade"].template_hash
    assert edited["point"].template_hash == tasks["point"].template_hash
    assert edited["box"].render(W, H).text.endswith("Be precise.")


def test_bad_prompt_files_are_named(tmp_path, tasks):
    folder = tmp_path / "prompts"
    shutil.copytree(tasks["grade"].template_file.parent, folder)
    (folder / "point.txt").write_text("Image {width}x{hieght}")
    with pytest.raises(ValueError, match=r"point\.txt.*hieght"):
        load_tasks(folder)["point"].render(W, H)
    (folder / "grade.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"grade\.txt"):
        load_tasks(folder)
    with pytest.raises(FileNotFoundError, match=r"tasks\.json"):
        load_tasks(tmp_path / "nowhere")


def test_parse_task_list():
    assert parse_task_list(None) == TASK_NAMES
    assert parse_task_list("box, grade") == ("grade", "box")
    with pytest.raises(ValueError, match="bbox"):
        parse_task_list("grade,bbox")


GRADE_CASES = [
    ('{"grade": "HGG"}', "ok", "strict", "HGG"),
    ('Here you go:\n```json\n{"grade": "LGG"}\n```', "ok", "embedded", "LGG"),
    ('{"grade": "hgg"}', "repaired", "repair", "HGG"),
    ("{'grade': 'LGG',}", "repaired", "repair", "LGG"),
    ('{"label": "high-grade glioma"}', "repaired", "repair", "HGG"),
    ('{"grade": "HGG"', "repaired", "repair", "HGG"),
    ("This is most likely a low-grade glioma.", "pattern", "pattern", "LGG"),
    ("It could be HGG or LGG.", "invalid", None, None),
    ('{"grade": "unsure"}', "invalid", None, None),
    ("I'm sorry, but I cannot provide a medical diagnosis.", "refused", None, None),
    ("I can't determine whether this is HGG or LGG; consult a radiologist.", "refused", None, None),
    ("   \n", "empty", None, None),
]


@pytest.mark.parametrize("text,status,stage,label", GRADE_CASES)
def test_grade_answers(tasks, prompts, text, status, stage, label):
    parsed = parse(tasks, prompts, "grade", text)
    assert (parsed.status, parsed.stage, parsed.label) == (status, stage, label)
    assert parsed.status in PARSE_STATUSES


GEOMETRY_CASES = [
    ("point", '{"x": 120, "y": 85}', "ok", (120, 85)),
    ("point", 'The centre is at (120, 85).', "pattern", (120, 85)),
    ("point", "In this 240x200 image the tumour centre is (120, 85).", "pattern", (120, 85)),
    ("point", '{"center": [120, 85]}', "repaired", (120, 85)),
    ("point", '{"x": "120", "y": "85"}', "repaired", (120, 85)),
    # column 240 is just off a 240-wide image (within 2% of the side): clipped to its edge
    ("point", '{"x": 240, "y": 85}', "repaired", (239.5, 85)),
    ("point", '{"x": -3, "y": 85}', "repaired", (-0.5, 85)),
    ("point", '{"x": 250, "y": 85}', "invalid", None),  # 10.5 px off: more than 2% of 240
    ("point", "The tumour is in the left frontal lobe.", "invalid", None),
    ("box", '{"x_min": 10, "y_min": 20, "x_max": 50, "y_max": 60}', "ok", (10, 20, 50, 60)),
    ("box", '{"x0": 10, "y0": 20, "x1": 50, "y1": 60}', "repaired", (10, 20, 50, 60)),
    ("box", '{"x1": 10, "y1": 20, "x2": 50, "y2": 60}', "repaired", (10, 20, 50, 60)),
    ("box", '{"bbox": [10, 20, 50, 60]}', "repaired", (10, 20, 50, 60)),
    ("box", '{"box": [[10, 20], [50, 60]]}', "repaired", (10, 20, 50, 60)),
    ("box", "from (10, 20) to (50, 60)", "pattern", (10, 20, 50, 60)),
    ("box", '{"x_min": -4, "y_min": 20, "x_max": 243, "y_max": 60}', "repaired", (0, 20, 239, 60)),
    ("box", '{"x_min": -30, "y_min": 20, "x_max": 300, "y_max": 60}', "invalid", None),
    ("box", '{"x_min": 50, "y_min": 20, "x_max": 10, "y_max": 60}', "invalid", None),  # inverted
    ("box", '{"x_min": 400, "y_min": 20, "x_max": 500, "y_max": 60}', "invalid", None),
    ("polygon", '{"points": [[10, 10], [50, 10], [50, 50], [10, 50]]}', "ok", 4),
    ("polygon", "[[10, 10], [50, 10], [50, 50]]", "repaired", 3),
    ("polygon", '{"polygon": [{"x": 10, "y": 10}, {"x": 50, "y": 10}, {"x": 50, "y": 50}]}',
     "repaired", 3),
    ("polygon", "(10, 10), (50, 10), (50, 50), (10, 50)", "pattern", 4),
    ("polygon", '{"points": [[10, 10], [50, 50], [50, 10], [10, 50]]}', "invalid", None),
    ("polygon", '{"points": [[10, 10], [50, 10]]}', "invalid", None),
]  # fmt: skip


@pytest.mark.parametrize("task,text,status,expected", GEOMETRY_CASES)
def test_geometry_answers(tasks, prompts, task, text, status, expected):
    parsed = parse(tasks, prompts, task, text)
    assert parsed.status == status, parsed
    if expected is None:
        assert parsed.geometry is None and not parsed.usable
    elif task == "point":
        assert (parsed.geometry.x, parsed.geometry.y) == expected
    elif task == "box":
        assert parsed.geometry.as_tuple() == expected
    else:
        assert len(parsed.geometry.points) == expected


def test_clipping_and_too_many_vertices_are_noted(tasks, prompts):
    clipped = parse(tasks, prompts, "box", '{"x_min": -5, "y_min": 0, "x_max": 20, "y_max": 9}')
    assert clipped.status == "repaired" and "clipped" in clipped.note
    many = json.dumps({"points": [[10, 10], [30, 8], [50, 10], [55, 30], [50, 50], [30, 55],
                                  [10, 50], [5, 30]]})  # fmt: skip
    parsed = parse(tasks, prompts, "polygon", many)
    assert parsed.status == "repaired" and "8 vertices > K=6" in parsed.note
    assert len(parsed.geometry.points) == 8


# Geometry beyond the image (issue 13, item 6): a coordinate further out than 2% of the side is
# not a position on the image, so the answer is invalid and the note names the coordinate; a
# small overshoot is clipped and the answer counted as repaired. (Until then any box that still
# touched the image was clipped, so a box reaching x = 3000 on a 64-pixel image was "usable".)


@pytest.fixture(scope="module")
def small(tasks):
    return {name: spec.render(64, 64, max_vertices=6) for name, spec in tasks.items()}


def box_text(x_max, x_min=10):
    return json.dumps({"x_min": x_min, "y_min": 20, "x_max": x_max, "y_max": 60})


def test_far_beyond_the_image_is_invalid_and_named(tasks, small):
    parsed = parse_answer(tasks["box"], box_text(3000), small["box"])
    assert (parsed.status, parsed.geometry, parsed.usable) == ("invalid", None, False)
    assert parsed.value == (10, 20, 3000, 60)  # what the model said is kept
    assert "x_max = 3000 lies 2936.5 px beyond the 64x64 image" in parsed.note
    assert "2%" in parsed.note and "x_min" not in parsed.note
    both = parse_answer(tasks["box"], box_text(3000, x_min=-100), small["box"])
    assert "x_min = -100 lies 99.5 px, x_max = 3000" in both.note


def test_small_overshoot_is_clipped_and_repaired(tasks, small):
    parsed = parse_answer(tasks["box"], box_text(64.5), small["box"])
    assert parsed.status == "repaired" and parsed.note == "geometry clipped"
    assert parsed.geometry.as_tuple() == (10, 20, 63, 60)
    point = parse_answer(tasks["point"], '{"x": 64.5, "y": 3}', small["point"])
    assert point.status == "repaired" and (point.geometry.x, point.geometry.y) == (63.5, 3)


def test_inside_the_image_is_ok(tasks, small):
    parsed = parse_answer(tasks["box"], box_text(63), small["box"])
    assert (parsed.status, parsed.note) == ("ok", "")
    assert parsed.geometry.as_tuple() == (10, 20, 63, 60)


def test_tolerance_edge_is_two_percent_of_the_side(tasks, small):
    # the image covers x in [-0.5, 63.5]; 2% of 64 is 1.28 px
    assert parse_answer(tasks["point"], '{"x": 64.78, "y": 3}', small["point"]).status == "repaired"
    assert parse_answer(tasks["point"], '{"x": 64.79, "y": 3}', small["point"]).status == "invalid"
    assert parse_answer(tasks["point"], '{"x": 3, "y": -1.79}', small["point"]).status == "invalid"
    wide = tasks["point"].render(200, 50)  # tolerance per axis: 4 px in x, 1 px in y
    assert parse_answer(tasks["point"], '{"x": 203, "y": 3}', wide).status == "repaired"
    assert parse_answer(tasks["point"], '{"x": 3, "y": 51}', wide).status == "invalid"


def test_polygon_vertex_beyond_the_image_is_named(tasks, small):
    text = json.dumps({"points": [[1, 1], [90, 1], [30, 30]]})
    parsed = parse_answer(tasks["polygon"], text, small["polygon"])
    assert parsed.status == "invalid" and "points[1].x = 90 lies 26.5 px" in parsed.note
    near = json.dumps({"points": [[1, 1], [64, 1], [30, 30]]})
    clipped = parse_answer(tasks["polygon"], near, small["polygon"])
    assert clipped.status == "repaired" and clipped.note == "geometry clipped"
    assert clipped.geometry.as_array()[:, 0].max() == pytest.approx(63.5)


def test_beyond_note_gives_the_answer_and_pixel_value_in_other_systems(tasks):
    prompt = tasks["point"].render(64, 64, "normalized")
    parsed = parse_answer(tasks["point"], '{"x": 1.5, "y": 0.2}', prompt)
    assert parsed.status == "invalid" and "x = 1.5 (95.5 px) lies 32 px" in parsed.note
    assert parse_answer(tasks["point"], '{"x": 1.01, "y": 0.2}', prompt).status == "repaired"


def test_beyond_image_helper():
    assert g.beyond_image(g.Box(10, 20, 63, 60), 64, 64) == ()
    assert g.beyond_image(g.Point(64.5, 3), 64, 64) == ()  # 1 px out, within 1.28 px
    (over,) = g.beyond_image(g.Box(10, 20, 3000, 60), 64, 64)
    assert (over.name, over.index, over.value, over.beyond) == ("x1", 2, 3000, 2936.5)
    assert over.tolerance == pytest.approx(1.28)
    (vertex,) = g.beyond_image(g.Polygon(((1, 1), (2, -9), (5, 5))), 64, 64)
    assert (vertex.name, vertex.index) == ("points[1].y", 3)
    assert g.beyond_image(g.Point(70, 3), 64, 64, fraction=0.2) == ()
    assert g.beyond_image(g.Point(float("nan"), 3), 64, 64) == ()  # left to the validators
    with pytest.raises(ValueError, match="fraction"):
        g.beyond_image(g.Point(1, 1), 64, 64, fraction=-0.1)


def test_server_refusal_flag_and_missing_text(tasks, prompts):
    assert parse(tasks, prompts, "box", None).status == "empty"
    assert parse(tasks, prompts, "box", "No.", refused=True).status == "refused"
    assert parse(tasks, prompts, "box", None, refused=True).status == "refused"


def test_refusals_are_not_mined_for_numbers(tasks, prompts):
    text = "I cannot locate a tumour in this 240x200 image."
    assert parse(tasks, prompts, "point", text).status == "refused"


def test_normalized_answers_map_to_pixels(tasks):
    spec = tasks["point"]
    prompt = spec.render(W, H, "normalized")
    parsed = parse_answer(spec, '{"x": 0.5, "y": 0.25}', prompt)
    assert parsed.status == "ok"
    assert (parsed.geometry.x, parsed.geometry.y) == pytest.approx((0.5 * W - 0.5, 0.25 * H - 0.5))
    out = parse_answer(spec, '{"x": 1.5, "y": 0.25}', prompt)
    assert out.status == "invalid"


def test_repair_json():
    assert repair_json("{'a': (1, 2), b: True,}") == {"a": [1, 2], "b": True}
    assert repair_json('Answer: {"points": [[1, 2], [3, 4]') == {"points": [[1, 2], [3, 4]]}
    with pytest.raises(ValueError):
        repair_json("no json here")


@pytest.mark.parametrize("system", ["pixel", "normalized", "per_mille"])
def test_target_answers_parse_back_ok_and_fit_the_mask(tasks, system):
    from GliomaCompareLib.metrics.segmentation import dice

    mask = np.zeros((H, W), bool)
    rr, cc = np.mgrid[:H, :W]
    mask |= ((cc - 225) / 30.0) ** 2 + ((rr - 180) / 40.0) ** 2 <= 1  # cut by two image edges
    mask[150:160, 180:200] = True  # and a spur
    for name in ("point", "box", "polygon"):
        spec = tasks[name]
        prompt = spec.render(W, H, system, max_vertices=6)
        text = spec.target_answer(prompt, mask=mask)
        assert text == spec.target_answer(prompt, mask=mask)  # deterministic
        if system != "normalized":  # these systems promise integers in the prompt
            assert "." not in text, text
        parsed = parse_answer(spec, text, prompt)
        assert (parsed.status, parsed.stage) == ("ok", "strict"), (name, text, parsed)
        if name == "point":
            centre = g.mask_centroid(mask)
            assert parsed.geometry.x == pytest.approx(centre.x, abs=0.6)
            assert parsed.geometry.y == pytest.approx(centre.y, abs=0.6)
            continue
        filled = g.geometry_to_mask(parsed.geometry, (H, W))
        assert (filled | ~mask).mean() > 0.999  # the box / outer polygon covers the tumour
        assert dice(filled, mask) > 0.7
    grade = tasks["grade"]
    assert grade.target_answer(grade.render(W, H), grade="HGG") == '{"grade": "HGG"}'
    with pytest.raises(ValueError, match="non-empty"):
        tasks["box"].target_answer(tasks["box"].render(W, H), mask=np.zeros((H, W), bool))
    with pytest.raises(ValueError, match="not one of"):
        grade.target_answer(grade.render(W, H), grade="GBM")
