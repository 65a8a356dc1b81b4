"""The VLM slice pipeline end to end: tiny model, an oracle server, resume, splits, bad cases."""

from __future__ import annotations

import csv
import json
import math
import shutil
import socket
import zlib

import numpy as np
import pytest

from GliomaCompareLib import geometry as g
from GliomaCompareLib.cli import main
from GliomaCompareLib.data import discover_cases, load_case
from GliomaCompareLib.data.splits import make_splits
from GliomaCompareLib.vlm.hf_backend import TransformersBackend
from GliomaCompareLib.vlm.inference import VLMConfig, run_vlm
from GliomaCompareLib.vlm.openai_backend import OpenAIBackend
from GliomaCompareLib.vlm.scoring import majority_vote, score_slice
from GliomaCompareLib.vlm.tiny import TINY_MODEL_LABEL
from GliomaCompareLib.vlm.types import DecodingConfig

FAST = DecodingConfig(max_new_tokens=16)
REQUIRED = ("case_id", "slice_index", "task", "run", "status", "raw_text", "value", "model_label")


@pytest.fixture(scope="module")
def tiny():
    return TransformersBackend.tiny(seed=0)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def read_csv(path):
    with path.open() as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_tiny_end_to_end_through_the_cli(synth_cohort, tmp_path, capsys):
    out = tmp_path / "vlm"
    argv = [
        "vlm", "--data", str(synth_cohort), "--backend", "tiny", "--slices-per-case", "2",
        "--runs", "2", "--temperature", "0.9", "--max-new-tokens", "16", "--bootstrap", "50",
        "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert TINY_MODEL_LABEL in printed and "0 queries failed" in printed
    lines = read_jsonl(out / "answers.jsonl")
    assert len(lines) == 8 * 2 * 4 * 2  # cases x slices x tasks x runs
    for line in lines:
        assert all(k in line for k in REQUIRED)
        assert line["model_label"] == TINY_MODEL_LABEL
        assert line["status"] in ("ok", "repaired", "pattern", "invalid", "refused", "empty")
    grade = [x for x in lines if x["task"] == "grade"]
    assert all(0 <= x["p_hgg"] <= 1 and x["option_method"] == "sequence" for x in grade)
    # sampling at T=0.9: the two runs of a query are real, different queries
    by_run = {(x["case_id"], x["slice_index"], x["task"], x["run"]): x["raw_text"] for x in lines}
    differ = sum(by_run[(*k[:3], 0)] != by_run[(*k[:3], 1)] for k in by_run if k[3] == 0)
    assert differ > 0
    for name in ("slices", "patients", "status", "classification", "localisation", "consistency"):
        rows = read_csv(out / "metrics" / f"vlm_{name}.csv")
        assert rows and {r["model_label"] for r in rows} == {TINY_MODEL_LABEL}, name
    status = read_csv(out / "metrics" / "vlm_status.csv")
    for task in ("grade", "point", "box", "polygon"):
        assert sum(int(r["count"]) for r in status if r["task"] == task) == 32
    consistency = {
        (r["task"], r["level"]): r for r in read_csv(out / "metrics" / "vlm_consistency.csv")
    }
    assert set(consistency) == {(t, "slice") for t in ("grade", "point", "box", "polygon")} | {
        ("grade", "patient")
    }
    grade_row = consistency[("grade", "slice")]
    assert grade_row["n_items"] == "16" and grade_row["runs"] == "2"
    assert 0 <= float(grade_row["all_identical_rate"]) <= 1 and grade_row["mean_entropy"] != ""
    assert float(consistency[("box", "slice")]["status_agreement"]) <= 1
    manifest = json.loads((out / "vlm.json").read_text())
    assert manifest["model_label"] == TINY_MODEL_LABEL and manifest["asked"] == 128
    assert set(manifest["prompt_template_hashes"]) == {"grade", "point", "box", "polygon"}
    masks = sorted((out / "masks").rglob("*.nii.gz"))
    assert len(masks) == 8 * 3 * 2
    # the same command again answers everything from the cache, identically
    assert main(argv) == 0
    again = read_jsonl(out / "answers.jsonl")
    assert [x["raw_text"] for x in again] == [x["raw_text"] for x in lines]
    assert all(x["cached"] for x in again)
    assert json.loads((out / "vlm.json").read_text())["asked"] == 0


class StopAfter:
    """A backend that answers ``n`` batches with ``inner`` and then is interrupted (Ctrl-C)."""

    def __init__(self, inner, n):
        self.inner, self.n = inner, n
        self.name, self.model_label = inner.name, inner.model_label

    def identity(self):
        return self.inner.identity()

    def answer(self, queries, decoding):
        if self.n == 0:
            raise KeyboardInterrupt
        self.n -= 1
        return self.inner.answer(queries, decoding)


@pytest.mark.slow
def test_an_interrupted_run_resumes_without_asking_again(synth_cohort, tmp_path, tiny):
    config = VLMConfig(slices_per_case=2, decoding=FAST, batch_size=4, n_bootstrap=0)
    full = run_vlm(synth_cohort, tiny, config, tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        run_vlm(synth_cohort, StopAfter(tiny, 3), config, tmp_path / "resumed")
    assert not (tmp_path / "resumed" / "answers.jsonl").exists()
    resumed = run_vlm(synth_cohort, tiny, config, tmp_path / "resumed")
    manifest = json.loads((tmp_path / "resumed" / "vlm.json").read_text())
    assert manifest["cached"] == 12 and manifest["asked"] == len(full.records) - 12
    assert [r.raw_text for r in resumed.records] == [r.raw_text for r in full.records]
    assert [r.status for r in resumed.records] == [r.status for r in full.records]


def test_split_bad_cases_and_adapter_tasks(synth_cohort, tmp_path, tiny):
    data = tmp_path / "data"
    shutil.copytree(synth_cohort, data)
    cohort = discover_cases(data, validate=False)
    ids = [c.case_id for c in cohort.cases]
    broken = cohort.get(ids[1]).modality_paths["flair"]
    broken.write_bytes(broken.read_bytes()[:200])  # truncated file
    splits = make_splits(dict.fromkeys(ids[:6], "HGG") | dict.fromkeys(ids[6:], "LGG"), seed=1)
    test_ids = list(splits.test)
    splits = type(splits)(
        train=tuple(i for i in splits.train if i != ids[1]),
        val=tuple(i for i in splits.val if i != ids[1]),
        test=(*test_ids, ids[1], "BraTS20_Training_999"),
        grades=splits.grades,
        seed=1,
        fractions=splits.fractions,
    )
    path = splits.save(tmp_path / "splits.json")
    config = VLMConfig(tasks=("grade", "box"), slices_per_case=1, decoding=FAST, n_bootstrap=0)
    result = run_vlm(data, tiny, config, tmp_path / "out", splits=path)
    assert sorted({r.case_id for r in result.records}) == sorted(test_ids)
    assert set(result.case_errors) == {ids[1], "BraTS20_Training_999"}
    assert "not found" in result.case_errors["BraTS20_Training_999"]
    manifest = json.loads((tmp_path / "out" / "vlm.json").read_text())
    assert manifest["split"]["hash"] == splits.hash
    # an adapter trained for one task refuses the others
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": None}))
    (adapter / "gliomacompare_adapter.json").write_text(json.dumps({"task": "box"}))

    class WithAdapter(StopAfter):
        pass

    fake = WithAdapter(tiny, 0)
    from GliomaCompareLib.vlm.hf_backend import read_adapter

    fake.adapter = read_adapter(adapter)
    with pytest.raises(ValueError, match=r"trained for task\(s\) box.*--tasks box"):
        run_vlm(data, fake, config, tmp_path / "out2", splits=path)


def _oracle_answer(image, task, k=6, jitter=0.0, rng=None):
    """What a perfect-sighted model would say: the brightest FLAIR blob's box / centre / outline
    (optionally jittered by up to ``jitter`` pixels)."""
    from scipy import ndimage

    labels, n = ndimage.label(image[..., 0].astype(float) > 180)
    if n == 0:
        return "I cannot find a tumour."
    blob = labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    shift = (lambda: int(rng.integers(-jitter, jitter + 1))) if jitter else (lambda: 0)
    if task == "grade":
        return '{"grade": "HGG"}' if not jitter or rng.random() < 0.7 else '{"grade": "LGG"}'
    if task == "point":
        c = g.mask_centroid(blob)
        return json.dumps({"x": round(c.x) + shift(), "y": round(c.y) + shift()})
    if task == "box":
        b = g.mask_box(blob)
        keys = ("x_min", "y_min", "x_max", "y_max")
        values = [int(v) for v in b.as_tuple()]
        values = [values[0] - abs(shift()), values[1], values[2] + abs(shift()), values[3]]
        return json.dumps(dict(zip(keys, values, strict=True)))
    poly = g.mask_polygon(blob, max_vertices=k)
    return json.dumps({"points": [[round(x, 1), round(y, 1)] for x, y in poly.points]})


class JitteryOracle:
    """A small real VLM backend for tests: sees the bright blob, answers with seed-driven jitter
    (each run of a query has its own seed, so repeats differ as a sampled model's do)."""

    name = "jittery-oracle"
    model_label = "jittery oracle (test backend)"

    def identity(self):
        return {"backend": self.name, "model_id": "oracle-v1"}

    def answer(self, queries, decoding):
        from GliomaCompareLib.vlm.types import Answer

        out = []
        for q in queries:
            rng = np.random.default_rng(q.seed)
            out.append(Answer(_oracle_answer(q.image, q.prompt.task, jitter=2, rng=rng)))
        return out


def test_repeated_runs_report_consistency(synth_cohort, tmp_path):
    config = VLMConfig(runs=3, slices_per_case=2, n_bootstrap=0, decoding=FAST)
    result = run_vlm(synth_cohort, JitteryOracle(), config, tmp_path / "out")
    rows = {(r["task"], r["level"]): r for r in result.consistency}
    box, point, grade = rows[("box", "slice")], rows[("point", "slice")], rows[("grade", "slice")]
    assert box["n_items"] == point["n_items"] == 16 and box["runs"] == 3
    assert 0.3 < box["iou_spread_mean"] < 1.0  # jittered repeats overlap, but not fully
    assert 0 < point["point_dispersion_mm_mean"] < 2 * 5.0 * 2  # +-2 px of 5 mm
    assert box["status_agreement"] == 1.0 and box["all_identical_rate"] < 1.0
    assert 0 < grade["all_identical_rate"] < 1 and grade["mean_entropy"] > 0
    assert math.isfinite(grade["fleiss_kappa"])
    polygon = rows[("polygon", "slice")]
    assert polygon["iou_spread_mean"] == 1.0 and polygon["all_identical_rate"] == 1.0
    assert rows[("grade", "patient")]["n_items"] == 8
    written = read_csv(tmp_path / "out" / "metrics" / "vlm_consistency.csv")
    assert {r["model_label"] for r in written} == {"jittery oracle (test backend)"}


def test_oracle_server_checks_geometry_end_to_end(synth_cohort, tmp_path):
    from test_vlm_openai import FakeVLMServer, decode_image, reply, task_of

    failing = {"on": True}

    def respond(payload, n):
        task = task_of(payload)
        image = payload["messages"][0]["content"][0]["image_url"]["url"]
        # crc32, not hash(): the same images fail in every process (hash() of a str is salted)
        if failing["on"] and task == "box" and zlib.crc32(image.encode()) % 3 == 0:
            return 500, {"error": "boom"}, 0, {}
        return 200, reply(_oracle_answer(decode_image(payload), task)), 0, {}

    config = VLMConfig(slices_per_case=3, decoding=FAST, n_bootstrap=0, max_vertices=6)
    with FakeVLMServer(respond) as server:
        backend = OpenAIBackend(server.url, max_retries=1, backoff_s=0.001, concurrency=4)
        first = run_vlm(synth_cohort, backend, config, tmp_path / "out")
        assert first.failed > 0
        errors = [r for r in first.records if r.status == "error"]
        assert all(r.task == "box" and "HTTP 500" in r.error for r in errors)
        failing["on"] = False
        second = run_vlm(synth_cohort, backend, config, tmp_path / "out")
    assert second.failed == 0
    manifest = json.loads((tmp_path / "out" / "vlm.json").read_text())
    assert manifest["asked"] == len(errors)  # only the failed queries were asked again
    cohort = discover_cases(synth_cohort)
    grades = {c.case_id: c.grade for c in cohort.cases}
    report = second.classification[0]
    assert report.tp == sum(v == "HGG" for v in grades.values())
    assert report.fp == sum(v == "LGG" for v in grades.values()) and report.tn == 0
    boxes = second.select("box")
    assert all(r.status == "ok" for r in boxes)
    assert np.mean([r.score.dice for r in boxes]) > 0.6
    points = second.select("point")
    assert np.mean([r.score.inside for r in points]) > 0.8
    assert np.mean([r.score.distance_to_centre_mm for r in points]) < 10.0
    polygons = second.select("polygon")
    assert np.mean([r.score.dice for r in polygons]) > 0.6
    # pixel -> voxel -> RAS: the recorded RAS point lies on the right voxel of the case
    case = load_case(cohort.get(points[0].case_id))
    record = points[0]
    ijk = np.linalg.inv(case.affine) @ np.array([*record.ras[0], 1.0])
    assert ijk[:3] == pytest.approx(record.voxel[0], abs=1e-3)  # RAS stored to 0.1 um
    assert ijk[2] == pytest.approx(record.slice_index, abs=1e-3)
    # 3D stacked masks are scored against WT in 3D and on the asked slices
    box_patients = [p for p in second.patients if p.task == "box"]
    assert all(0 < p.dice_3d <= p.dice_selected for p in box_patients)
    assert np.mean([p.dice_selected for p in box_patients]) > 0.6


def test_a_dead_server_is_recorded_and_the_run_finishes(synth_cohort, tmp_path, capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "out"
    argv = [
        "vlm", "--data", str(synth_cohort), "--backend", "openai", "--model", "m",
        "--base-url", f"http://127.0.0.1:{port}/v1", "--retries", "0", "--tasks", "grade,point",
        "--slices-per-case", "1", "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    assert "16 queries failed" in capsys.readouterr().out
    lines = read_jsonl(out / "answers.jsonl")
    assert len(lines) == 16
    assert all(x["status"] == "error" and "cannot reach" in x["error"] for x in lines)
    assert not list((out / "cache").glob("*.jsonl"))  # failures are never cached


def test_remote_url_refused_by_the_cli(synth_cohort, tmp_path, capsys):
    argv = ["vlm", "--data", str(synth_cohort), "--backend", "openai", "--model", "m",
            "--base-url", "http://192.0.2.10:8000/v1", "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 2
    assert "--allow-remote" in capsys.readouterr().err


def test_majority_vote_and_tie_rules():
    vote = majority_vote(["HGG", "LGG", "HGG", None], [0.2, 0.3, 0.1, 0.2])
    assert (vote.prediction, vote.votes, vote.tie, vote.n_usable) == (
        "HGG",
        {"HGG": 2, "LGG": 1},
        False,
        3,
    )
    assert vote.score == pytest.approx(0.2) and vote.score_source == "mean_p"
    tie = ["HGG", "LGG"]
    assert majority_vote(tie, [0.3, 0.4]).prediction == "LGG"  # mean P(HGG) 0.35 < 0.5
    assert majority_vote(tie, [0.6, 0.5]).prediction == "HGG"
    assert majority_vote(tie).prediction == "HGG"  # no probabilities: positive class
    assert majority_vote(tie, tie_rule="negative").prediction == "LGG"
    assert majority_vote(tie, tie_rule="positive").prediction == "HGG"
    assert majority_vote(tie, tie_rule="none").prediction is None
    empty = majority_vote([None, None])
    assert empty.prediction is None and empty.score == 0.5 and empty.score_source == "vote_share"
    assert majority_vote(["LGG", "HGG", "HGG"]).score == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="tie rule"):
        majority_vote(tie, tie_rule="coin")


def test_score_slice():
    ref = np.zeros((20, 30), bool)
    ref[5:10, 10:20] = True  # rows 5-9, cols 10-19
    exact = score_slice("box", g.Box(10, 5, 19, 9), ref, (2.0, 1.0))
    assert exact.dice == 1.0 and exact.hd95 == 0.0 and exact.inside
    assert exact.pred_area_mm2 == exact.ref_area_mm2 == 100.0
    failed = score_slice("polygon", None, ref, (2.0, 1.0))
    assert failed.dice == 0.0 and not failed.inside and math.isnan(failed.distance_to_centre_mm)
    assert failed.hd95 == pytest.approx(math.hypot(20 * 1.0, 30 * 2.0))  # BraTS: slice diagonal
    point = score_slice("point", g.Point(25.0, 7.0), ref, (2.0, 1.0), radius_mm=2.0)
    assert not point.inside
    assert point.distance_to_centre_mm == pytest.approx((25 - 14.5) * 2.0)
    assert point.distance_to_tumour_mm == pytest.approx((25 - 19) * 2.0)


def _unlabelled_copy(synth_cohort, dest):
    """The cohort without its label maps (a clinician's own patients, BraTS validation data)."""
    shutil.copytree(synth_cohort, dest)
    for label in dest.glob("*/*_seg.nii*"):
        label.unlink()
    return dest


def test_unlabelled_cases_are_asked_on_label_free_slices(synth_cohort, tmp_path, capsys):
    data = _unlabelled_copy(synth_cohort, tmp_path / "data")
    out = tmp_path / "vlm"
    argv = ["vlm", "--data", str(data), "--backend", "tiny", "--slices-per-case", "2",
            "--tasks", "grade,box", "--max-new-tokens", "8", "--bootstrap", "0",
            "--prompt-variant", "neutral", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    lines = read_jsonl(out / "answers.jsonl")
    assert len({x["case_id"] for x in lines}) == 8 and len(lines) == 8 * 2 * 2
    manifest = json.loads((out / "vlm.json").read_text())
    assert manifest["case_errors"] == {}
    # the neutral prompt does not tell the model the slice shows a glioma
    prompt = json.loads((out / "vlm.json").read_text())["config"]
    assert prompt["prompt_variant"] == "neutral"


def test_cnn_slice_rule_reads_the_predictions(synth_cohort, tmp_path):
    data = _unlabelled_copy(synth_cohort, tmp_path / "data")
    cohort = discover_cases(synth_cohort, validate=False)
    pred = tmp_path / "pred" / "all"
    pred.mkdir(parents=True)
    wanted = {}
    for record in cohort.cases[:2]:  # "predictions": the reference, moved up by 3 slices
        case = load_case(record)
        label = np.roll(case.label, 3, axis=2)
        from GliomaCompareLib.data.io import write_nifti

        write_nifti(pred / f"{record.case_id}.nii.gz", label, case.affine)
        areas = (label > 0).sum(axis=(0, 1))
        wanted[record.case_id] = sorted(np.argsort(-areas, kind="stable")[:2].tolist())
    config = VLMConfig(
        tasks=("grade",), slices_per_case=2, decoding=FAST, n_bootstrap=0,
        slice_rule=__import__("GliomaCompareLib").data.SliceRule(mode="cnn"),
        cnn_predictions=str(tmp_path / "pred"),
    )  # fmt: skip
    result = run_vlm(data, TransformersBackend.tiny(seed=0), config, tmp_path / "out",
                     case_ids=[*wanted, cohort.cases[2].case_id])  # fmt: skip
    asked = {}
    for r in result.records:
        asked.setdefault(r.case_id, set()).add(r.slice_index)
    assert {k: sorted(v) for k, v in asked.items()} == wanted
    # a case without a prediction is named, not silently asked elsewhere
    missing = cohort.cases[2].case_id
    assert "no CNN prediction of " + missing in result.case_errors[missing]


def test_vlm_exits_non_zero_when_nothing_was_asked(synth_cohort, tmp_path, capsys):
    argv = ["vlm", "--data", str(synth_cohort), "--backend", "tiny", "--slice-rule", "cnn",
            "--cnn-pred", str(tmp_path / "nothing"), "--tasks", "grade", "--out",
            str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "no query was asked" in err
