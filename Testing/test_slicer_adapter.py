"""The module's Qt-free side under slicer-core: MRML adapter (real scene and storage nodes),
the logic (case list, loading cases and run results, live outputs, visibility, jumps, saving),
background runs with a real subprocess, tolerant readers, and ``Scripts/batch.py``."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from slicer_env import (  # noqa: F401  (scene, tiny_data, tiny_run are fixtures)
    MODULE_DIR,
    REPO,
    add_slice_node,
    needs_slicer,
    paths,
    process,
    scene,
    tiny_data,
    tiny_run,
)
from slicer_env import cases as ct

from GliomaCompareLib import slicer_files as sf
from GliomaCompareLib.data.regions import region_masks
from GliomaCompareLib.data.slices import SliceGeometry

CASE1, CASE2 = "BraTS20_Training_001", "BraTS20_Training_002"


# ------------------------------------------------------------------------- pure: case table
def test_metric_tables_long_and_wide_formats(tmp_path):
    (tmp_path / "seg.csv").write_text(
        "case_id,method,region,dice,hd95\nA,cnn,WT,0.8,3\nA,cnn,ET,0.2,9\nB,cnn,WT,nan,\n"
        "mean,cnn,WT,0.5,4\n"
    )
    (tmp_path / "cls.csv").write_text("Case,grade,p_hgg\nA,HGG,0.9\nB,LGG,0.2\n")
    (tmp_path / "notes.csv").write_text("what,value\nx,1\n")
    (tmp_path / "slices.csv").write_text(  # one row per slice: no single number per case
        "case_id,slice_index,method,model,task,dice_2d\nA,3,vlm_base,tiny,box,0.1\n"
        "A,4,vlm_base,tiny,box,0.3\n"
    )
    (tmp_path / "grades.csv").write_text(  # the run's layout (GliomaCompareLib.runlayout)
        "case_id,method,model,grade_true,grade_pred,p_hgg\n"
        "A,cnn,SegResNet-1,HGG,LGG,0.3\nA,vlm_base,tiny random-weight model,HGG,HGG,\n"
    )
    scores, notes = ct.read_metrics_tables(tmp_path)
    assert set(scores) == {"A", "B"}  # "mean" is an aggregate, not a case
    assert notes[-1].startswith("slices.csv: several rows per case")
    assert not any(k.startswith("vlm_base box") for k in scores["A"])
    assert scores["A"]["vlm_base model"] == "tiny random-weight model"  # text, not a qualifier
    assert ct.predictions_from(scores["A"]) == {
        "truth": {"grade": "HGG"},
        "unnamed method": {"p_hgg": 0.9},  # cls.csv's p_hgg column names no method
        "cnn": {"grade": "LGG", "p_hgg": 0.3},
        "vlm_base": {"grade": "HGG"},
    }
    assert scores["A"]["cnn WT dice"] == 0.8 and scores["A"]["cnn ET hd95"] == 9.0
    assert np.isnan(scores["B"]["cnn WT dice"]) and np.isnan(scores["B"]["cnn WT hd95"])
    assert scores["A"]["grade"] == "HGG" and scores["B"]["p_hgg"] == 0.2
    assert notes[0] == "notes.csv: no case id column; skipped"


def test_sort_worst_first_and_navigation():
    rows = [
        ct.CaseRow("a", scores={"dice": 0.9, "hd95": 2.0}),
        ct.CaseRow("b", scores={"dice": 0.1, "hd95": 30.0}),
        ct.CaseRow("c", scores={"dice": float("nan")}),
        ct.CaseRow("d", scores={"dice": 0.5, "hd95": 9.0}),
    ]
    assert [r.case_id for r in ct.sort_rows(rows, "dice")] == ["b", "d", "a", "c"]
    assert [r.case_id for r in ct.sort_rows(rows, "dice", worst_first=False)] == [
        "a",
        "d",
        "b",
        "c",
    ]
    assert [r.case_id for r in ct.sort_rows(rows, "hd95")] == ["b", "d", "a", "c"]
    assert ct.lower_is_better("cnn WT hd95") and ct.lower_is_better("point_dist_mm")
    assert not ct.lower_is_better("cnn WT dice") and not ct.lower_is_better("accuracy")
    ordered = ct.sort_rows(rows, "dice")
    assert ct.neighbour(ordered, "b", 1) == "d"
    assert ct.neighbour(ordered, "b", -1) == "b"  # clamped at the first case
    assert ct.neighbour(ordered, "c", 1) == "c"
    assert ct.neighbour(ordered, None, 1) == "b"
    assert ct.neighbour([], "x", 1) is None


def test_flatten_and_predictions():
    flat = ct.flatten(
        {
            "grade": "LGG",
            "cnn": {"grade": "HGG", "p_hgg": 0.7, "dice": {"WT": 0.5}},
            "vlm_base": {"predicted_grade": "hgg"},
            "ok": True,
            "none": None,
        }
    )
    assert flat["cnn.dice.WT"] == 0.5 and flat["ok"] == 1.0 and np.isnan(flat["none"])
    preds = ct.predictions_from(flat)
    assert preds == {
        "truth": {"grade": "LGG"},
        "cnn": {"grade": "HGG", "p_hgg": 0.7},
        "vlm_base": {"grade": "HGG"},
    }


def test_read_answers_is_tolerant(tmp_path):
    lines = [
        {
            "case_id": "A",
            "slice_index": 3,
            "task": "point",
            "run": 0,
            "status": "ok",
            "parsed": {"x": 4, "y": 5},
        },
        {
            "case_id": "A",
            "slice_index": 3,
            "task": "box",
            "run": 0,
            "status": "repaired",
            "parsed": [1, 2, 6, 7],
        },
        {
            "case_id": "A",
            "slice_index": 4,
            "task": "polygon",
            "run": 0,
            "status": "ok",
            "parsed": {"points": [[1, 1], [5, 1], [3, 6]]},
        },
        {
            "case_id": "A",
            "slice_index": 4,
            "task": "point",
            "run": 0,
            "status": "invalid",
            "parsed": None,
        },
        {
            "case_id": "A",
            "slice_index": 3,
            "task": "grade",
            "run": 0,
            "status": "ok",
            "parsed": "HGG",
            "p_hgg": 0.8,
        },
        {
            "case_id": "A",
            "slice_index": 3,
            "task": "point",
            "run": 1,
            "status": "ok",
            "parsed": {"x": 400, "y": 500},
            "pixels": [4.5, 5.5],
        },
        {"case_id": "B", "slice_index": 1, "task": "point", "status": "ok", "parsed": [1, 1]},
    ]
    text = "\n".join(json.dumps(x) for x in lines) + '\nnot json\n{"no_case": 1}\n'
    (tmp_path / "answers.jsonl").write_text(text)
    answers, bad = ct.read_answers(tmp_path / "answers.jsonl", "A")
    assert bad == 2 and len(answers) == 6
    assert answers[0].pixels == ((4.0, 5.0),)
    assert answers[1].pixels == ((1.0, 2.0), (6.0, 7.0))
    assert len(answers[2].pixels) == 3
    assert not answers[3].placed
    assert answers[4].grade == "HGG" and answers[4].p_hgg == 0.8
    assert answers[5].pixels == ((4.5, 5.5),)  # converted pixels win over the raw answer


# ------------------------------------------------------------------------ pure: processes
def test_parse_progress():
    p = process.parse_progress("train:  40%|####      | 4/10 [00:02<00:03,  2.0it/s]")
    assert p.fraction == pytest.approx(0.4) and p.text == "train 4/10"
    assert process.parse_progress("[3/12] BraTS20_Training_003: ok").fraction == pytest.approx(0.25)
    assert process.parse_progress("step 7/10").text == "step 7/10"
    assert process.parse_progress("loaded 5 cases") is None
    assert process.parse_progress("grade (patients): accuracy 0.5, invalid 0/1") is None
    assert process.parse_progress("step 12/10") is None  # impossible counts are not progress


def test_command_lines_follow_the_cli_contract():
    params = process.VlmRunParams(
        backend="openai",
        tasks=("grade", "box"),
        base_url="http://h:1/v1",
        allow_remote=True,
        adapter="/a",
        runs=3,
        temperature=0.7,
        slices_per_case=5,
    )
    argv = process.vlm_command("/d", "/o", params, python="py")
    assert argv[:4] == ["py", "-m", "GliomaCompareLib.cli", "vlm"]
    text = " ".join(argv)
    for part in (
        "--data /d",
        "--backend openai",
        "--tasks grade,box",
        "--runs 3",
        "--temperature 0.7",
        "--base-url http://h:1/v1",
        "--allow-remote",
        "--adapter /a",
        "--slices-per-case 5",
        "--out /o",
    ):
        assert part in text
    argv = process.cnn_predict_command("/d", "/o", process.CnnRunParams("/m", "cpu"), python="py")
    assert argv == [
        "py",
        "-m",
        "GliomaCompareLib.cli",
        "predict-cnn",
        "--data",
        "/d",
        "--model",
        "/m",
        "--out",
        "/o",
        "--device",
        "cpu",
    ]
    with pytest.raises(ValueError, match="device"):
        process.CnnRunParams("/m", "gpu")
    with pytest.raises(ValueError, match="base URL"):
        process.VlmRunParams(backend="openai")
    with pytest.raises(ValueError, match="tasks"):
        process.VlmRunParams(tasks=("segment",))
    # the slice choice's options parse with the real vlm command's parser
    argv = process.vlm_command(
        "/d", "/o", process.VlmRunParams(slice_rule="cnn", cnn_pred="/sel"), python="py"
    )
    assert " ".join(argv).endswith("--slice-rule cnn --cnn-pred /sel --out /o")
    from GliomaCompareLib.argtypes import dataclass_from_args
    from GliomaCompareLib.cli import build_parser
    from GliomaCompareLib.vlm.inference import VLMConfig

    config = dataclass_from_args(VLMConfig, build_parser().parse_args(argv[3:]))
    assert config.slice_rule.mode == "cnn" and config.cnn_predictions == "/sel"
    with pytest.raises(ValueError, match="cnn_pred"):
        process.VlmRunParams(slice_rule="cnn")


def test_real_gliomacompare_command_runs_in_background(tiny_data):  # noqa: F811
    env = paths.cli_environment()
    argv = paths.cli_command("inspect", str(tiny_data), "--json", "--quick", python=sys.executable)
    job = process.Job("inspect", argv, None, None, process.SubprocessRunner().start(argv, env=env))
    seen = []
    assert job.wait(timeout=120, on_lines=seen.extend) == 0
    assert job.succeeded and job.done and "finished" in job.summary()
    listed = json.loads("\n".join(line for line in job.log if not line.startswith("warning")))
    assert [c["case_id"] for c in listed] == [CASE1, CASE2]
    assert seen == job.log


@pytest.mark.parametrize("with_psutil", [True, False], ids=["psutil", "no-psutil"])
def test_cancel_stops_a_running_process_and_its_children(monkeypatch, with_psutil):
    if not with_psutil:  # the fallback: the process group (POSIX), taskkill /T (Windows)
        monkeypatch.setitem(sys.modules, "psutil", None)
    code = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print(child.pid, flush=True)\n"
        "for i in range(1, 101):\n"
        "    print(f'step {i}/100', flush=True); time.sleep(0.05)\n"
    )
    argv = [sys.executable, "-c", code]
    job = process.Job("long", argv, None, None, process.SubprocessRunner().start(argv))
    deadline = time.monotonic() + 30
    while (job.progress is None or job.progress.fraction < 0.05) and time.monotonic() < deadline:
        job.poll()
        time.sleep(0.02)
    assert job.progress is not None and job.progress.text.startswith("step")
    child = int(job.log[0])
    started = time.monotonic()
    job.cancel()
    assert time.monotonic() - started < POLL_INTERVAL_S  # cancel() never waits
    while not job.done and time.monotonic() - started < 10:
        job.poll()
        time.sleep(0.02)
    assert job.done and job.cancelled and not job.succeeded and "cancelled" in job.summary()
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)  # the grandchild was in the process group, so it was stopped too


#: The GUI polls a job every 200 ms; nothing the GUI calls may block for longer.
POLL_INTERVAL_S = 0.2

# A launcher (like PythonSlicer) whose child leaves the process group (as on Windows, where
# there are none) and ignores SIGTERM: only a tree kill that escalates to SIGKILL stops it.
_TREE = (
    "import subprocess, sys, time\n"
    "grandchild = (\n"
    "    'import os, signal, sys, time\\n'\n"
    "    'os.setsid()\\n'\n"
    "    'signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n'\n"
    "    'print(\"ready\", flush=True)\\n'\n"
    "    'time.sleep(60)\\n'\n"
    ")\n"
    "child = subprocess.Popen([sys.executable, '-c', grandchild], stdout=subprocess.PIPE)\n"
    "child.stdout.readline()\n"
    "print(child.pid, flush=True)\n"
    "time.sleep(60)\n"
)


@pytest.mark.skipif(os.name == "nt", reason="the grandchild uses os.setsid and SIGTERM")
def test_cancel_kills_the_whole_tree_and_escalates_without_blocking():
    proc = process.SubprocessRunner().start([sys.executable, "-c", _TREE])
    lines: list[str] = []
    deadline = time.monotonic() + 30
    while not lines and time.monotonic() < deadline:
        lines += proc.read_output()
        time.sleep(0.02)
    grandchild = int(lines[0])
    assert _alive(grandchild) and _alive(proc.pid)
    started = time.monotonic()
    proc.cancel(timeout=1.0)
    assert time.monotonic() - started < POLL_INTERVAL_S
    reads = []
    while (proc.returncode is None or _alive(grandchild)) and time.monotonic() - started < 10:
        before = time.monotonic()
        proc.returncode  # noqa: B018  (what the GUI timer reads)
        reads.append(time.monotonic() - before)
        time.sleep(0.02)
    assert proc.returncode is not None and proc.returncode != 0
    assert not _alive(proc.pid)
    assert not _alive(grandchild)  # ignored SIGTERM, outside the group: killed after 1 s
    assert time.monotonic() - started > 0.9  # it was the escalation, not the SIGTERM
    assert max(reads) < POLL_INTERVAL_S


def test_returncode_is_stored_once_and_reading_it_is_fast():
    proc = process.SubprocessRunner().start(
        [sys.executable, "-c", "print('x'); raise SystemExit(3)"]
    )
    assert proc.wait(timeout=60) == 3
    started = time.monotonic()
    assert [proc.returncode for _ in range(10)] == [3] * 10
    assert time.monotonic() - started < 0.5
    assert proc.read_output() == ["x"]


@pytest.mark.skipif(os.name == "nt", reason="uses os.setsid")
def test_returncode_comes_although_a_grandchild_holds_the_output_pipe():
    code = (
        "import subprocess, sys\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import os, time; os.setsid(); time.sleep(30)'])\n"
        "print(p.pid, flush=True)\n"
        "raise SystemExit(4)\n"
    )
    proc = process.SubprocessRunner().start([sys.executable, "-c", code])
    started = time.monotonic()
    reads = []
    while proc.returncode is None and time.monotonic() - started < 20:
        before = time.monotonic()
        proc.returncode  # noqa: B018
        reads.append(time.monotonic() - before)
        time.sleep(0.02)
    lines = proc.read_output()
    try:
        assert proc.returncode == 4 and max(reads) < POLL_INTERVAL_S
        assert time.monotonic() - started < 10
    finally:
        os.kill(int(lines[0]), 9)


def _alive(pid: int) -> bool:
    """Whether a process runs (a zombie, dead but not yet reaped by init, does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.is_file() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


def test_installed_layout_finds_library_and_ui(tmp_path):
    """Lay the files out as CMake installs them and import paths from there."""
    import shutil

    root = tmp_path / "qt-scripted-modules"
    shutil.copytree(MODULE_DIR / "GliomaCompareSlicerLib", root / "GliomaCompareSlicerLib")
    shutil.copytree(
        REPO / "GliomaCompareLib",
        root / "GliomaCompareLib",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    shutil.copytree(REPO / "Resources", root / "Resources")
    shutil.copy(MODULE_DIR / "GliomaCompare.py", root)
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from GliomaCompareSlicerLib import paths; "
        "print(paths.library_root()); print(paths.ui_file()); import GliomaCompareLib.resources as r; "
        "print(r.resources_dir())"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(root)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        cwd=tmp_path,
    ).stdout.split()
    assert out == [str(root), str(root / "Resources/UI/GliomaCompare.ui"), str(root / "Resources")]


def test_source_layout_paths():
    assert paths.library_root() == REPO
    assert paths.ui_file() == REPO / "Resources/UI/GliomaCompare.ui"
    assert paths.icon_file() == REPO / "Resources/Icons/GliomaCompare.png"
    env = paths.cli_environment({"PYTHONPATH": "/x"})
    assert env["PYTHONPATH"].split(os.pathsep) == [str(REPO), "/x"]
    assert env["PYTHONUNBUFFERED"] == "1"


# ---------------------------------------------------------------------------- MRML adapter
@needs_slicer
def test_volume_node_geometry_and_arrays(scene):  # noqa: F811
    import slicer
    from GliomaCompareSlicerLib import mrml

    rng = np.random.default_rng(0)
    array = rng.random((5, 6, 7)).astype(np.float32)
    affine = np.array([[-1.0, 0, 0, 3], [0, -1.5, 0, 4], [0, 0, 2, -5], [0, 0, 0, 1]])
    node = mrml.volume_node_from_array(array, affine, "v")
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), array.transpose(2, 1, 0))
    back, matrix = mrml.array_from_volume_node(node)
    np.testing.assert_array_equal(back, array)
    np.testing.assert_allclose(matrix, affine)
    with pytest.raises(ValueError, match="3D"):
        mrml.volume_node_from_array(array[0], affine, "bad")


@needs_slicer
def test_loaded_case_arrays_equal_the_files(scene, tiny_data):  # noqa: F811
    from GliomaCompareSlicerLib import mrml
    from GliomaCompareSlicerLib.logic import CompareLogic

    logic = CompareLogic(scene)
    rows = logic.open_data(tiny_data)
    assert [(r.case_id, r.grade, r.usable) for r in rows] == [
        (CASE1, "HGG", True),
        (CASE2, "LGG", True),
    ]
    loaded = logic.load_case(CASE1)
    folder = tiny_data / CASE1
    for channel in ("flair", "t1", "t1ce", "t2"):
        img = nib.load(folder / f"{CASE1}_{channel}.nii.gz")
        node = loaded.volumes[channel]
        assert node.GetName() == f"{CASE1} {channel.upper()}"
        array, affine = mrml.array_from_volume_node(node)
        np.testing.assert_array_equal(array, np.asarray(img.dataobj))
        np.testing.assert_allclose(affine, img.affine)
        # and Slicer's own NIfTI reader puts the file on the same grid with the same voxels
        other = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
        storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
        storage.SetFileName(str(folder / f"{CASE1}_{channel}.nii.gz"))
        assert storage.ReadData(other) == 1
        theirs, their_affine = mrml.array_from_volume_node(other)
        np.testing.assert_allclose(their_affine, affine, atol=1e-5)
        np.testing.assert_array_equal(theirs, array)
    label = np.asarray(nib.load(folder / f"{CASE1}_seg.nii.gz").dataobj).astype(np.uint8)
    gt = loaded.ground_truth
    assert gt.GetName() == "Ground truth"
    names = [gt.GetSegmentation().GetNthSegment(i).GetName() for i in range(3)]
    assert names == ["NCR/NET", "ED", "ET"]
    np.testing.assert_array_equal(
        mrml.label_map_from_segmentation_node(gt, loaded.volumes["flair"]), label
    )


@needs_slicer
def test_vlm_pixel_lands_on_the_voxel_and_back(scene, tiny_data):  # noqa: F811
    import vtk
    from GliomaCompareSlicerLib import mrml
    from GliomaCompareSlicerLib.logic import CompareLogic

    logic = CompareLogic(scene)
    logic.open_data(tiny_data)
    case = logic.load_case(CASE1).case
    flair = logic.reference_volume()
    k = 5
    geometry = SliceGeometry.axial(case.affine, case.shape, k)
    image = geometry.extract(case.flair)
    for c, r in ((0, 0), (3, 7), (geometry.width - 1, geometry.height - 1), (11, 2)):
        markup = sf.PointsMarkup(
            "VLM point", sf.points_from_pixels(geometry, [(c, r)]), (f"k={k}",)
        )
        node = mrml.markup_node(markup)
        ras = [0.0, 0.0, 0.0]
        node.GetNthControlPointPositionWorld(0, ras)
        ijk = geometry.pixel_to_voxel(c, r)
        np.testing.assert_allclose(ras, case.affine[:3, :3] @ ijk + case.affine[:3, 3], atol=1e-9)
        assert ijk[2] == k
        # back through Slicer's own RAS -> IJK of the FLAIR node
        m = vtk.vtkMatrix4x4()
        flair.GetRASToIJKMatrix(m)
        back = np.array(m.MultiplyPoint([*ras, 1.0])[:3])
        np.testing.assert_allclose(back, ijk, atol=1e-9)
        # the pixel the VLM saw is that voxel's intensity
        assert image[r, c] == case.flair[tuple(int(v) for v in np.round(back))]
        np.testing.assert_allclose(geometry.ras_to_pixel(ras), [c, r, 0], atol=1e-9)


@needs_slicer
@pytest.mark.parametrize("mode", ["labels", "regions"])
def test_segment_voxels_equal_the_library_label_map(scene, tiny_data, tmp_path, mode):  # noqa: F811
    import slicer
    from GliomaCompareSlicerLib import mrml

    from GliomaCompareLib.data.case import load_case
    from GliomaCompareLib.data.discovery import discover_cases

    case = load_case(discover_cases(tiny_data).get(CASE1))
    reference = mrml.volume_node_from_array(case.flair, case.affine, "ref")
    node = mrml.segmentation_node_from_label_map(case.label, case.affine, segments=mode, name=mode)
    segmentation = node.GetSegmentation()
    expected = (
        region_masks(case.label) if mode == "regions" else {v: case.label == v for v in (1, 2, 4)}
    )
    for i, mask in enumerate(expected.values()):
        segment_id = segmentation.GetNthSegmentID(i)
        exported = slicer.util.arrayFromSegmentBinaryLabelmap(node, segment_id, reference)
        np.testing.assert_array_equal(exported.transpose(2, 1, 0) > 0, mask)
    if mode == "labels":
        values = [segmentation.GetNthSegment(i).GetLabelValue() for i in range(3)]
        assert values == [1, 2, 4]
    np.testing.assert_array_equal(
        mrml.label_map_from_segmentation_node(node, reference), case.label
    )
    # saved by Slicer and reloaded: the same label map, and our reader agrees
    path = mrml.save_node(node, tmp_path / f"{mode}.seg.nrrd")
    again = mrml.load_segmentation_file(path)
    np.testing.assert_array_equal(
        mrml.label_map_from_segmentation_node(again, reference), case.label
    )
    np.testing.assert_array_equal(
        sf.read_seg_nrrd(path).on_grid(case.affine, case.shape), case.label
    )
    with pytest.raises(ValueError, match=r"\[3\]"):
        mrml.segmentation_node_from_label_map(np.full(case.shape, 3, np.uint8), case.affine)


@needs_slicer
def test_markups_and_tables_save_and_reload(scene, tmp_path):  # noqa: F811
    from GliomaCompareSlicerLib import mrml

    roi = sf.RoiMarkup("VLM box", [1, 2, 3], [4, 5, 1.5], description="slice 7")
    pts = sf.PointsMarkup("VLM point", [[1, 2, 3], [4, 5, 6]], ("k=1", "k=2"), ("a", "b"))
    for markup in (roi, pts):
        saved = mrml.save_node(mrml.markup_node(markup), tmp_path / f"{markup.name}.mrk.json")
        (node,) = mrml.load_markups_file(saved)
        back = mrml.markup_from_node(node)
        (from_file,) = sf.read_markups(saved)
        if isinstance(markup, sf.RoiMarkup):
            for other in (back, from_file):
                np.testing.assert_allclose(other.center_ras, roi.center_ras, atol=1e-9)
                np.testing.assert_allclose(other.size_mm, roi.size_mm, atol=1e-9)
            assert back.description == "slice 7"
        else:
            for other in (back, from_file):
                np.testing.assert_allclose(other.points_ras, pts.points_ras, atol=1e-9)
                assert other.labels == pts.labels and other.descriptions == pts.descriptions
    rows = [
        {"metric": "cnn WT dice", "value": 0.75, "source": "metrics"},
        {"metric": "cnn WT hd95", "value": None, "source": "metrics.json"},
    ]
    table = mrml.table_node_from_rows(rows, "scores")
    assert table.GetTable().GetColumn(1).GetClassName() == "vtkDoubleArray"
    back = mrml.rows_from_table_node(table)
    assert back[0] == rows[0] and np.isnan(back[1]["value"])
    mixed = mrml.table_node_from_rows([{"v": 1.5}, {"v": "HGG"}], "mixed")  # one type per column
    assert mrml.rows_from_table_node(mixed) == [{"v": "1.5"}, {"v": "HGG"}]
    tsv = mrml.save_node(table, tmp_path / "scores.tsv").read_text().splitlines()
    assert sorted(p.name for p in tmp_path.glob("scores*")) == ["scores.schema.tsv", "scores.tsv"]
    assert tsv[0].split("\t") == ["metric", "value", "source"] and tsv[1].startswith(
        "cnn WT dice\t0.75"
    )
    with pytest.raises(OSError, match="not a markups file"):
        mrml.load_markups_file(tmp_path / "missing.mrk.json")


# ----------------------------------------------------------------------------------- logic
@needs_slicer
def test_run_folder_case_list_and_results(scene, tiny_data, tiny_run):  # noqa: F811
    from GliomaCompareSlicerLib import mrml
    from GliomaCompareSlicerLib.logic import CompareLogic

    red, composite = add_slice_node(scene)
    logic = CompareLogic(scene)
    rows = logic.open_run(tiny_run)  # images found through the manifest
    assert [r.case_id for r in rows] == [CASE1, CASE2] and logic.cohort is not None
    assert "cnn WT dice" in logic.score_names()
    worst = logic.sorted_rows("cnn WT dice")
    assert worst[0].score("cnn WT dice") <= worst[1].score("cnn WT dice")
    loaded = logic.load_case(CASE1)
    assert composite.GetBackgroundVolumeID() == loaded.volumes["flair"].GetID()
    assert red.GetSliceOffset() == pytest.approx(loaded.focus_ras[2])
    results = logic.load_run_results(CASE1)
    assert sorted(results.nodes) == ["cnn", "metrics", "vlm_box", "vlm_point", "vlm_polygon"]
    cnn = results.nodes["cnn"][0]
    assert cnn.GetName() == "CNN"
    expected = sf.read_seg_nrrd(sf.case_dir(tiny_run, CASE1) / sf.CNN_SEG_FILE).label_map
    np.testing.assert_array_equal(
        mrml.label_map_from_segmentation_node(cnn, loaded.volumes["flair"]), expected
    )
    point = results.nodes["vlm_point"][0]
    (written,) = sf.read_markups(sf.case_dir(tiny_run, CASE1) / sf.VLM_POINT_FILE)
    np.testing.assert_allclose(
        mrml.markup_from_node(point).points_ras, written.points_ras, atol=1e-9
    )
    assert results.predictions["truth"] == {"grade": "HGG"}
    assert set(results.predictions["cnn"]) == {"grade", "p_hgg"}
    metrics = {r["metric"]: r for r in mrml.rows_from_table_node(results.table)}
    assert metrics["cnn.dice.WT"]["source"] == "metrics.json"
    assert metrics["cnn WT hd95"]["source"] == "metrics" and metrics["cnn WT hd95"]["value"] > 0
    assert metrics["cnn.grade"]["text"] == "HGG" and np.isnan(metrics["cnn.grade"]["value"])
    # show / hide per method; the ground truth is untouched
    assert logic.set_method_visible("vlm", False) == 3
    assert all(
        not n.GetDisplayNode().GetVisibility()
        for m in ("vlm_box", "vlm_point", "vlm_polygon")
        for n in results.nodes[m]
    )
    assert loaded.ground_truth.GetDisplayNode().GetVisibility()
    # jump to a VLM answer's slice
    box = next(m for m in logic.markers() if m.method == "vlm_box")
    logic.jump_to(box)
    assert red.GetSliceOffset() == pytest.approx(box.ras[2])
    # next case replaces the nodes of this one
    logic.load_case(CASE2)
    assert mrml.case_nodes(scene, CASE1) == []
    with pytest.raises(FileNotFoundError, match="no results"):
        logic.load_run_results("BraTS20_Training_999")


@needs_slicer
def test_results_without_images(scene, tiny_run, tmp_path):  # noqa: F811
    from GliomaCompareSlicerLib.logic import CompareLogic

    (tmp_path / "run").mkdir()
    for sub in ("cases", "metrics"):
        os.symlink(tiny_run / sub, tmp_path / "run" / sub)
    logic = CompareLogic(scene)
    rows = logic.open_run(tmp_path / "run")
    assert [r.case_id for r in rows] == [CASE1, CASE2] and logic.cohort is None
    assert any("no data folder" in n for n in logic.notes)
    results = logic.load_run_results(CASE2)
    assert "ground_truth" in results.nodes  # the run's copy, since no images were loaded


@needs_slicer
def test_live_cnn_and_vlm_outputs(scene, tiny_data, tmp_path):  # noqa: F811
    from GliomaCompareSlicerLib import mrml
    from GliomaCompareSlicerLib.logic import CompareLogic

    from GliomaCompareLib.data.io import write_nifti

    logic = CompareLogic(scene, work_root=tmp_path / "work")
    logic.open_data(tiny_data)
    case = logic.load_case(CASE1).case
    # what predict-cnn writes (GliomaCompareLib.cnn.inference): <case>.nii.gz + grades.csv
    out = tmp_path / "cnn"
    pred = case.label.copy()
    pred[pred == 1] = 4
    write_nifti(out / f"{CASE1}.nii.gz", pred, case.affine)
    (out / "grades.csv").write_text(f"case_id,p_hgg,predicted_grade\n{CASE1},0.83,HGG\n")
    res = logic.load_cnn_output(CASE1, out)
    node = res.nodes["cnn"][0]
    assert [node.GetSegmentation().GetNthSegment(i).GetName() for i in range(3)] == [
        "WT",
        "TC",
        "ET",
    ]
    np.testing.assert_array_equal(
        mrml.label_map_from_segmentation_node(node, logic.reference_volume()), pred
    )
    assert res.predictions["cnn"] == {"grade": "HGG", "p_hgg": 0.83}

    k = 5
    geometry = SliceGeometry.axial(case.affine, case.shape, k)
    geometry_next = SliceGeometry.axial(case.affine, case.shape, k + 1)
    answers = [
        {
            "case_id": CASE1,
            "slice_index": k,
            "task": "point",
            "run": 0,
            "status": "ok",
            "parsed": {"x": 7, "y": 9},
        },
        {  # as the VLM arm writes it: value in the prompt's units, pixel geometry, RAS corners
            "case_id": CASE1,
            "slice_index": k,
            "task": "box",
            "run": 0,
            "status": "ok",
            "value": [0.1, 0.12, 0.4, 0.42],
            "pixel": {"type": "box", "x0": 2, "y0": 3, "x1": 8, "y1": 10},
            "ras": geometry.pixel_to_ras([2, 8, 8, 2], [3, 3, 10, 10]).tolist(),
        },
        {  # only RAS corners: placed back through the slice geometry
            "case_id": CASE1,
            "slice_index": k + 1,
            "task": "box",
            "run": 0,
            "status": "ok",
            "ras": geometry_next.pixel_to_ras([1, 4, 4, 1], [2, 2, 6, 6]).tolist(),
        },
        {
            "case_id": CASE1,
            "slice_index": k,
            "task": "polygon",
            "run": 0,
            "status": "ok",
            "parsed": [[1, 1], [9, 2], [4, 12]],
            "raw_text": 'The tumour outline:\n {"polygon": [[1, 1], [9, 2], [4, 12]]}',
        },
        {
            "case_id": CASE1,
            "slice_index": k,
            "task": "point",
            "run": 0,
            "status": "invalid",
            "raw_text": "?",
        },
        {
            "case_id": CASE1,
            "slice_index": k,
            "task": "grade",
            "run": 0,
            "status": "ok",
            "parsed": "HGG",
        },
        {
            "case_id": CASE1,
            "slice_index": k + 1,
            "task": "grade",
            "run": 0,
            "status": "ok",
            "value": {"grade": "lgg"},
            "label": "LGG",
        },
        {
            "case_id": CASE1,
            "slice_index": k + 2,
            "task": "grade",
            "run": 0,
            "status": "ok",
            "parsed": "HGG",
        },
        {"case_id": CASE1, "slice_index": 999, "task": "point", "status": "ok", "parsed": [1, 1]},
    ]
    vlm = tmp_path / "vlm"
    vlm.mkdir()
    (vlm / "answers.jsonl").write_text("\n".join(json.dumps(a) for a in answers))
    res = logic.load_vlm_output(CASE1, vlm, backend="tiny")
    assert res.notes == ["point answer on slice 999: outside 0..11; skipped"]
    (point,) = res.nodes["vlm_point"]
    np.testing.assert_allclose(
        mrml.markup_from_node(point).points_ras[0], geometry.pixel_to_ras(7, 9), atol=1e-9
    )
    assert "tiny random-weight model" in point.GetNthControlPointDescription(0)
    box, box_next = res.nodes["vlm_box"]
    for node, geo, cols, rows in (
        (box, geometry, [1.5, 8.5], [2.5, 10.5]),
        (box_next, geometry_next, [0.5, 4.5], [1.5, 6.5]),
    ):
        corners = geo.ras_to_pixel(mrml.markup_from_node(node).corners_ras)
        np.testing.assert_allclose([corners[:, 0].min(), corners[:, 0].max()], cols, atol=1e-9)
        np.testing.assert_allclose([corners[:, 1].min(), corners[:, 1].max()], rows, atol=1e-9)
        np.testing.assert_allclose(sorted(set(np.round(corners[:, 2], 9))), [-0.5, 0.5])
    assert box_next.GetName() == f"VLM box k={k + 1}"
    (poly,) = res.nodes["vlm_polygon"]
    # the model's own words and the parse status travel with the markup
    description = poly.GetDescription() or poly.GetNthControlPointDescription(0)
    assert "status ok" in description
    assert 'answer: The tumour outline: {"polygon": [[1, 1], [9, 2], [4, 12]]}' in description
    np.testing.assert_allclose(
        mrml.markup_from_node(poly).points_ras,
        geometry.pixel_to_ras([1, 9, 4], [1, 2, 12]),
        atol=1e-9,
    )
    assert res.predictions["vlm"] == {
        "votes_hgg": 2,
        "votes_lgg": 1,
        "unanswered": 0,
        "grade": "HGG",
    }
    labels = [r["metric"] for r in mrml.rows_from_table_node(res.table)]
    assert all("tiny random-weight model" in m for m in labels if m.startswith("vlm grade"))
    assert {"vlm answers invalid", "vlm answers ok"} <= set(labels)


class RecordingRunner:
    """A real :class:`ProcessRunner`: records what it was asked to start, then starts a real
    (harmless) process, since the arms' commands may not exist in this checkout yet."""

    def __init__(self):
        self.calls = []

    def start(self, argv, *, cwd=None, env=None):
        self.calls.append({"argv": list(argv), "cwd": cwd, "env": env})
        return process.SubprocessRunner().start(
            [sys.executable, "-c", "print('done 1/1')"], cwd=cwd
        )


@needs_slicer
def test_start_cnn_and_vlm_prepare_a_one_case_folder(scene, tiny_data, tmp_path):  # noqa: F811
    from GliomaCompareSlicerLib.logic import CompareLogic

    runner = RecordingRunner()
    logic = CompareLogic(scene, runner=runner, work_root=tmp_path / "work")
    logic.open_data(tiny_data)
    logic.load_case(CASE2)
    job = logic.start_cnn(CASE2, process.CnnRunParams(str(tmp_path / "model"), "cpu"))
    assert job.wait(timeout=60) == 0 and job.progress.fraction == 1.0
    argv = runner.calls[0]["argv"]
    data = Path(argv[argv.index("--data") + 1])
    assert [p.name for p in data.iterdir() if p.is_dir()] == [CASE2]
    assert (data / "name_mapping.csv").read_text().splitlines()[1] == f"{CASE2},LGG"
    assert str(paths.library_root()) in runner.calls[0]["env"]["PYTHONPATH"]
    job = logic.start_vlm(CASE2, process.VlmRunParams(tasks=("point",), device="cpu"))
    assert runner.calls[1]["env"]["CUDA_VISIBLE_DEVICES"] == ""
    assert job.wait(timeout=60) == 0
    with pytest.raises(FileNotFoundError, match=r"answers\.jsonl"):
        logic.load_job_results(job)  # the stand-in process wrote nothing
    real = CompareLogic(scene)  # the default runner: a real gliomacompare process that fails
    failed = real.start_command("CNN", ["no-such-command"])
    assert failed.wait(timeout=120) == 2
    with pytest.raises(RuntimeError, match=r"(?s)exit status 2.*invalid choice"):
        real.load_job_results(failed)


@needs_slicer
def test_save_case_writes_a_scene_that_reopens(scene, tiny_data, tiny_run, tmp_path):  # noqa: F811
    import slicer
    from GliomaCompareSlicerLib import mrml
    from GliomaCompareSlicerLib.logic import CompareLogic

    logic = CompareLogic(scene)
    logic.open_run(tiny_run)
    loaded = logic.load_case(CASE1)
    logic.load_run_results(CASE1)
    user_scene = tmp_path / "user" / "MyPatient.mrml"
    scene.SetURL(str(user_scene))
    scene.SetRootDirectory(str(user_scene.parent))
    node_ids = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    written = logic.save_case(tmp_path / CASE1)
    # the user's scene is where it was, unchanged: not committed, not re-pointed, no new nodes
    assert scene.GetURL() == str(user_scene) and scene.GetRootDirectory() == str(user_scene.parent)
    assert not user_scene.parent.exists()
    assert {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())} == node_ids
    assert all(v.GetStorageNode() is None for v in loaded.volumes.values())
    names = sorted(p.name for p in (tmp_path / CASE1).iterdir())
    assert names == sorted(
        [
            f"{CASE1}.mrml",
            f"{CASE1}_run_metrics.tsv",
            "cnn.seg.nrrd",
            f"{CASE1}_run_metrics.schema.tsv",
            "ground_truth.seg.nrrd",
            "vlm_box.mrk.json",
            "vlm_point.mrk.json",
            "vlm_polygon.mrk.json",
        ]
    )
    # the saved folder is laid out like a run's case folder
    np.testing.assert_array_equal(
        sf.read_seg_nrrd(written["Ground truth"]).label_map, loaded.case.label
    )
    fresh = mrml.setup_scene(slicer.vtkMRMLScene())
    fresh.SetURL(str(written["scene"]))
    fresh.Import()
    volumes = mrml._nodes(fresh, "vtkMRMLScalarVolumeNode")
    assert sorted(v.GetName() for v in volumes) == sorted(
        n.GetName() for n in loaded.volumes.values()
    )
    flair = next(v for v in volumes if v.GetName().endswith("FLAIR"))
    array, affine = mrml.array_from_volume_node(flair)
    np.testing.assert_array_equal(array, loaded.case.flair)
    np.testing.assert_allclose(affine, loaded.case.affine, atol=1e-5)
    assert len(mrml._nodes(fresh, "vtkMRMLMarkupsNode")) == 3
    assert len(mrml._nodes(fresh, "vtkMRMLSegmentationNode")) == 2


@needs_slicer
@pytest.mark.slow
def test_batch_script_with_plain_python(tiny_data, tiny_run, tmp_path):  # noqa: F811
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    (data / CASE2 / f"{CASE2}_t2.nii.gz").unlink()  # a broken case
    out = tmp_path / "out"
    script = MODULE_DIR / "Scripts" / "batch.py"
    run = subprocess.run(
        [
            sys.executable,
            str(script),
            "--data",
            str(data),
            "--run",
            str(tiny_run),
            "--out",
            str(out),
            "--cases",
            f"{CASE1},{CASE2}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 1, run.stderr  # one case failed, the other was saved
    summary = json.loads((out / "batch_summary.json").read_text())
    assert summary["cases"][CASE1]["status"] == "ok"
    assert (
        summary["cases"][CASE2]["status"] == "failed" and "t2" in summary["cases"][CASE2]["error"]
    )
    assert (out / CASE1 / f"{CASE1}.mrml").is_file() and (out / CASE1 / "cnn.seg.nrrd").is_file()
    assert "1 of 2 cases saved" in run.stdout
    bad = subprocess.run(
        [sys.executable, str(script), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "--data or --run" in bad.stderr


@needs_slicer
def test_scene_close_forgets_the_loaded_case(scene, tiny_data, tiny_run, tmp_path):  # noqa: F811
    """Closing the scene (``Clear`` emits ``StartCloseEvent`` under slicer-core as in Slicer)
    leaves no reference to removed nodes: nothing to run on, nothing to save, and no storage
    node gets attached to a removed volume."""
    from GliomaCompareSlicerLib.logic import CompareLogic

    logic = CompareLogic(scene)
    logic.open_run(tiny_run)
    loaded = logic.load_case(CASE1)
    logic.load_run_results(CASE1)
    assert logic.reference_volume() is loaded.volumes["flair"]
    scene.Clear(0)
    assert logic.loaded is None and logic.results == [] and logic.markers() == []
    assert logic.reference_volume() is None
    assert loaded.volumes["flair"].GetScene() is None  # the node really was removed
    with pytest.raises(ValueError, match="nothing is loaded"):
        logic.save_case(tmp_path / "after-close")
    assert scene.GetNumberOfNodesByClass("vtkMRMLStorageNode") == 0
    assert not (tmp_path / "after-close").exists()
    # the case list stays, and the next case loads into the emptied scene
    assert [r.case_id for r in logic.rows] == [CASE1, CASE2]
    again = logic.load_case(CASE2)
    assert again.volumes["flair"].GetScene() is scene
    logic.close()
    logic.load_case(CASE1)
    scene.Clear(0)
    assert logic.loaded is not None  # no longer observing: close() removed the observer
    other = CompareLogic(scene)  # a logic that is gone before the scene closes
    del other
    gc.collect()
    scene.Clear(0)


@needs_slicer
def test_scene_volumes_of_any_patient_as_the_case(scene, tiny_data, tmp_path):  # noqa: F811
    """A patient loaded some other way (e.g. DICOM): four volumes picked in the scene, with or
    without a reference segmentation, become the case the arms run on and that is saved."""
    import slicer
    from GliomaCompareSlicerLib import mrml
    from GliomaCompareSlicerLib.logic import CompareLogic

    from GliomaCompareLib.data.case import load_case
    from GliomaCompareLib.data.discovery import discover_cases

    source = load_case(discover_cases(tiny_data, "brats2020").get(CASE1))
    nodes = {
        c: mrml.volume_node_from_array(source.modality(c), source.affine, f"DICOM {c}", scene=scene)
        for c in source.channels
    }
    reference = mrml.segmentation_node_from_label_map(
        source.label, source.affine, "brats2020", "my labels", scene=scene
    )
    runner = RecordingRunner()
    logic = CompareLogic(scene, runner=runner, work_root=tmp_path / "work")
    loaded = logic.use_scene_volumes(nodes, reference, case_id="Patient A", grade="HGG")
    assert loaded.case_id == "BraTS20_Patient_A"  # the convention's folder pattern
    np.testing.assert_array_equal(loaded.case.image, source.image)
    np.testing.assert_array_equal(loaded.case.label, source.label)
    np.testing.assert_allclose(loaded.case.affine, source.affine, atol=1e-6)
    assert loaded.focus_ras == pytest.approx(logic_focus(source))
    assert all(n.GetScene() is scene and not n.GetAttribute(mrml.ATTR_CASE) for n in nodes.values())
    # the arms get a one-case BraTS folder written from the scene's voxels
    job = logic.start_cnn("BraTS20_Patient_A", process.CnnRunParams(str(tmp_path / "model"), "cpu"))
    assert job.wait(timeout=60) == 0
    argv = runner.calls[0]["argv"]
    written = load_case(
        discover_cases(Path(argv[argv.index("--data") + 1])).get("BraTS20_Patient_A")
    )
    np.testing.assert_array_equal(written.image, source.image)
    np.testing.assert_array_equal(written.label, source.label)
    assert written.grade == "HGG"
    # saved with the volumes written next to the scene (they have no files of their own)
    saved = logic.save_case(tmp_path / "saved")
    assert {"flair.nrrd", "t1.nrrd", "t1ce.nrrd", "t2.nrrd"} <= {p.name for p in saved.values()}
    fresh = mrml.setup_scene(slicer.vtkMRMLScene())
    fresh.SetURL(str(saved["scene"]))
    fresh.Import()
    flair = next(
        v for v in mrml._nodes(fresh, "vtkMRMLScalarVolumeNode") if v.GetName().endswith("flair")
    )
    np.testing.assert_array_equal(mrml.array_from_volume_node(flair)[0], source.flair)
    # an unlabelled patient; a volume on another grid; a channel not chosen
    scene = mrml.setup_scene(scene)
    unlabelled = logic.use_scene_volumes(nodes, case_id="Patient_B")
    assert unlabelled.case.label is None and unlabelled.ground_truth is None
    other = mrml.volume_node_from_array(source.flair[:-1], source.affine, "cropped", scene=scene)
    cropped = logic.use_scene_volumes({**nodes, "t1": other})  # resampled onto the FLAIR grid
    assert cropped.notes == (
        "T1 (cropped, 1x1.5x2 mm) resampled onto the FLAIR grid of DICOM flair (linear)",
    )
    np.testing.assert_allclose(cropped.case.modality("t1")[:-1], source.flair[:-1], atol=1e-4)
    assert not cropped.case.modality("t1")[-1].any()  # outside the cropped volume
    far = mrml.volume_node_from_array(source.flair, source.affine @ _shift(500), "far")
    with pytest.raises(ValueError, match=r"far \(T1\): the volume does not overlap"):
        logic.use_scene_volumes({**nodes, "t1": far})
    with pytest.raises(ValueError, match="choose a volume for T2"):
        logic.use_scene_volumes({c: n for c, n in nodes.items() if c != "t2"})


def _shift(mm: float) -> np.ndarray:
    out = np.eye(4)
    out[0, 3] = mm
    return out


def logic_focus(case):
    from GliomaCompareSlicerLib.logic import focus_point

    return focus_point(case)


@needs_slicer
def test_show_3d_builds_surfaces_of_the_case_segmentations(scene, tiny_data, tiny_run):  # noqa: F811
    from GliomaCompareSlicerLib.logic import CompareLogic

    logic = CompareLogic(scene)
    logic.open_run(tiny_run)
    loaded = logic.load_case(CASE1)
    logic.load_run_results(CASE1)
    assert logic.set_show_3d(True) == 2  # ground truth and CNN
    gt = loaded.ground_truth
    assert gt.GetSegmentation().ContainsRepresentation("Closed surface")
    surface = gt.GetClosedSurfaceInternalRepresentation(gt.GetSegmentation().GetNthSegmentID(0))
    assert surface is not None and surface.GetNumberOfPoints() > 0
    assert gt.GetDisplayNode().GetVisibility3D()
    assert logic.set_show_3d(False) == 2 and not gt.GetDisplayNode().GetVisibility3D()
