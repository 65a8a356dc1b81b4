"""The module's issue-14 features below the widget, under slicer-core: standard terminology on
segments (through Slicer's own segmentation storage node), the VLM on the slice on screen / the
CNN's tumour slices / brain slices, the sample case and demo, the advanced options and the cache
clearing, and volumes on different grids resampled onto one."""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import numpy as np
import pytest
from local_server import LocalServer
from slicer_env import (  # noqa: F401  (scene, tiny_data, tiny_run are fixtures)
    add_slice_node,
    needs_slicer,
    process,
    scene,
    tiny_data,
    tiny_run,
)

from GliomaCompareLib import slicer_files as sf
from GliomaCompareLib.data.case import load_case
from GliomaCompareLib.data.discovery import discover_cases

CASE1 = "BraTS20_Training_001"


# ---------------------------------------------------------------------------- terminology
@needs_slicer
@pytest.mark.parametrize("mode", ["labels", "regions"])
def test_terminology_survives_slicers_storage_node(scene, tiny_data, tmp_path, mode):  # noqa: F811
    """Segments made in the scene carry SNOMED CT terms (vtkSegment.GetTerminology); saved as
    .seg.nrrd by Slicer's storage node and reloaded, the terms are still there; and a file the
    library wrote without Slicer shows the same terms once Slicer reads it."""
    from GliomaCompareSlicerLib import mrml

    case = load_case(discover_cases(tiny_data).get(CASE1))
    node = mrml.segmentation_node_from_label_map(case.label, case.affine, segments=mode)

    def terms(seg_node) -> dict[str, str]:
        segmentation = seg_node.GetSegmentation()
        out = {}
        for i in range(segmentation.GetNumberOfSegments()):
            segment = segmentation.GetNthSegment(i)
            out[segment.GetName()] = segment.GetTerminology().split("~")[2]
        return out

    expected = (
        {
            "WT": "SCT^4147007^Mass",
            "TC": "SCT^108369006^Neoplasm",
            "ET": "SCT^86049000^Neoplasm, Primary",
        }
        if mode == "regions"
        else {
            "NCR/NET": "SCT^6574001^Necrosis",
            "ED": "SCT^79654002^Edema",
            "ET": "SCT^86049000^Neoplasm, Primary",
        }
    )
    assert terms(node) == expected
    path = mrml.save_node(node, tmp_path / f"{mode}.seg.nrrd")
    again = mrml.load_segmentation_file(path)
    assert terms(again) == expected
    assert "TerminologyEntry:Segmentation category and type - DICOM master list~" in (
        path.read_bytes()[:4000].decode("latin-1")
    )
    written = sf.write_seg_nrrd(
        tmp_path / f"lib-{mode}.seg.nrrd", case.label, case.affine, segments=mode
    )
    assert terms(mrml.load_segmentation_file(written)) == expected


# ------------------------------------------------------------------- the VLM's slices
@needs_slicer
def test_slice_index_on_screen_follows_the_red_view(scene):  # noqa: F811
    """The view's plane -> the volume's axial index, for an oblique anisotropic volume whose
    k axis runs inferior (flipped); sagittal views and planes outside the volume are refused."""
    from GliomaCompareSlicerLib import mrml
    from GliomaCompareSlicerLib.vlmslices import slice_index_on_screen

    theta = np.deg2rad(15)
    affine = np.array(
        [
            [-0.9 * np.cos(theta), 0.8 * np.sin(theta), 0.0, 40.0],
            [-0.9 * np.sin(theta), -0.8 * np.cos(theta), 0.0, 25.0],
            [0.0, 0.0, -2.5, 30.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    shape = (16, 14, 10)
    volume = mrml.volume_node_from_array(np.zeros(shape, np.float32), affine, "oblique")
    red, _ = add_slice_node(scene)
    for k in (0, 3, 9):
        ras = affine @ np.array([5.0, 7.0, k, 1.0])
        mrml.jump_slices(scene, ras[:3], centered=True)
        assert slice_index_on_screen(red, volume) == k
    mrml.jump_slices(scene, (affine @ [5.0, 7.0, 30.0, 1.0])[:3], centered=True)
    with pytest.raises(ValueError, match="outside oblique"):
        slice_index_on_screen(red, volume)
    red.SetOrientationToSagittal()
    with pytest.raises(ValueError, match="not parallel"):
        slice_index_on_screen(red, volume)


@needs_slicer
def test_vlm_slice_choices_become_command_options(scene, tiny_data, tmp_path):  # noqa: F811
    """brain -> --slice-rule brain; cnn -> the CNN segmentation in the scene written where
    --cnn-pred reads it; screen -> the Red view's slice as the user's slice (--slices CASE:K), with
    no slice rule, label map or slice count (the user's own slices-per-case setting is dropped)."""
    from GliomaCompareSlicerLib import mrml
    from GliomaCompareSlicerLib.logic import CompareLogic

    from GliomaCompareLib.data.io import read_image

    runner = _RecordingRunner()
    logic = CompareLogic(scene, runner=runner, work_root=tmp_path / "work")
    logic.open_data(tiny_data)
    case = logic.load_case(CASE1).case
    params = process.VlmRunParams(tasks=("point",), device="cpu", slices_per_case=3)
    with pytest.raises(ValueError, match="run the CNN first"):
        logic.vlm_slices("cnn")
    with pytest.raises(ValueError, match="use one of"):
        logic.vlm_slices("everywhere")

    def argv_of(choice):
        job = logic.start_vlm(CASE1, params, choice)
        job.wait(timeout=60)
        return runner.calls[-1]["argv"], job

    argv, job = argv_of(logic.vlm_slices("reference"))
    assert "--slice-rule" not in argv and "reference" in job.slices
    argv, _ = argv_of(logic.vlm_slices("brain"))
    assert argv[argv.index("--slice-rule") + 1] == "brain" and "--cnn-pred" not in argv

    pred = case.label.copy()
    pred[:, :, : case.shape[2] // 2] = 0  # the CNN sees tumour on the upper slices only
    node = mrml.segmentation_node_from_label_map(pred, case.affine, segments="regions", name="CNN")
    mrml.tag_node(node, CASE1, "cnn")
    argv, _ = argv_of(logic.vlm_slices("cnn"))
    assert argv[argv.index("--slice-rule") + 1] == "cnn"
    written, _ = read_image(Path(argv[argv.index("--cnn-pred") + 1]) / f"{CASE1}.nii.gz")
    np.testing.assert_array_equal(written, pred)

    add_slice_node(scene)
    ras = case.affine @ np.array([3.0, 4.0, 7.0, 1.0])
    mrml.jump_slices(scene, ras[:3], centered=True)
    choice = logic.vlm_slices("screen")
    assert choice.describe == "the slice on screen (k=7)" and choice.slices == (7,)
    argv, _ = argv_of(choice)
    assert argv[argv.index("--slices") :][:2] == ["--slices", f"{CASE1}:7"]
    assert not {"--slice-rule", "--cnn-pred", "--slices-per-case"} & set(argv)


def test_user_slices_go_to_the_command_alone():
    """The user's slices become --slices CASE:K[,K...], never together with a slice rule."""
    from GliomaCompareSlicerLib.vlmslices import SliceChoice

    params = process.VlmRunParams(slices=(("P", (3, 5)), ("Q", (0,))))
    argv = process.vlm_command("/d", "/o", params, python="py")
    assert argv[argv.index("--slices") :] == ["--slices", "P:3,5", "Q:0", "--out", "/o"]
    with pytest.raises(ValueError, match="no slice rule or slices per case"):
        process.VlmRunParams(slices=(("P", (3,)),), slice_rule="brain")
    with pytest.raises(ValueError, match="no slice rule or slices per case"):
        process.VlmRunParams(slices=(("P", (3,)),), slices_per_case=1)
    with pytest.raises(ValueError, match="needs a slice index"):
        process.VlmRunParams(slices=(("P", ()),))
    with pytest.raises(ValueError, match="no slice rule with them"):
        SliceChoice("cnn", None, 1, "", slices=(4,))


_ANSWERS = {
    "grade": '{"grade": "HGG"}',
    "point": '{"x": 6, "y": 9}',
    "box": '{"x_min": 3, "y_min": 4, "x_max": 12, "y_max": 15}',
}


class _ChatServer(LocalServer):
    """A real OpenAI-compatible server on 127.0.0.1 answering each task with a fixed JSON
    answer (the task read from the request's response-format name or prompt)."""

    def __init__(self):
        outer = self
        self.n = 0

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send({"data": [{"id": "fake-vlm"}]})

            def do_POST(self):
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.n += 1
                fmt = payload.get("response_format") or {}
                name = (fmt.get("json_schema") or {}).get("name", "")
                text = json.dumps(payload["messages"])
                task = next(
                    (t for t in ("grade", "box", "point") if t in name),
                    "grade" if "grade (" in text else "box" if "bounding box" in text else "point",
                )
                message = {"role": "assistant", "content": _ANSWERS[task]}
                choice = {"index": 0, "message": message, "finish_reason": "stop"}
                self._send({"id": "x", "object": "chat.completion", "choices": [choice]})

        self.serve(Handler)


@needs_slicer
@pytest.mark.slow
@pytest.mark.parametrize("patient", ["BraTS case", "unlabelled patient"])
def test_vlm_answers_land_on_the_slice_on_screen(scene, tiny_data, tmp_path, patient):  # noqa: F811
    """A real `gliomacompare vlm` process (openai backend, a real server on 127.0.0.1) asked
    about the Red view's slice, of a BraTS case or of an unlabelled patient made of the scene's
    volumes: every answer is about that slice and says the user chose it (slice rule 'given'),
    its point and box lie on it with slice, parse status and raw answer in their descriptions,
    and the grade comes back."""
    from GliomaCompareSlicerLib import mrml
    from GliomaCompareSlicerLib.logic import CompareLogic

    logic = CompareLogic(scene, work_root=tmp_path / "work")
    logic.open_data(tiny_data)
    loaded = logic.load_case(CASE1)
    if patient == "unlabelled patient":
        loaded = logic.use_scene_volumes(loaded.volumes, case_id="Patient")
        assert loaded.case.label is None
    case = loaded.case
    add_slice_node(scene)
    k = 4
    mrml.jump_slices(scene, (case.affine @ np.array([9.0, 11.0, k, 1.0]))[:3], centered=True)
    with _ChatServer() as server:
        params = process.VlmRunParams(
            backend="openai", base_url=server.url, tasks=("grade", "point", "box"), device="cpu"
        )
        job = logic.start_vlm(loaded.case_id, params, logic.vlm_slices("screen"))
        assert job.wait(timeout=600) == 0, "\n".join(job.log[-20:])
    answers = [
        json.loads(line) for line in (job.out_dir / "answers.jsonl").read_text().splitlines()
    ]
    assert len(answers) == 3 and {a["slice_index"] for a in answers} == {k}
    # provenance: the user chose the slice; no rule (and no CNN) chose it
    assert {a["slice_rule"] for a in answers} == {"given"}
    config = json.loads((job.out_dir / "vlm.json").read_text())["config"]
    assert config["slice_rule"]["mode"] == "given"
    assert config["slices"] == {loaded.case_id: [k]} and config["cnn_predictions"] is None
    assert config["slice_rule_description"].startswith("label-free: slices chosen by the user")
    results = logic.load_job_results(job)
    assert results.predictions["vlm"]["grade"] == "HGG"
    assert f"the slice on screen (k={k})" in " ".join(results.notes)
    assert sorted(m.method for m in results.markers) == ["vlm_box", "vlm_point"]
    for marker in results.markers:  # every answer is drawn on slice k
        ijk = np.linalg.solve(case.affine, [*marker.ras, 1.0])
        assert abs(ijk[2] - k) < 1e-6
    for node in results.nodes["vlm_point"] + results.nodes["vlm_box"]:
        markup = mrml.markup_from_node(node)
        notes = getattr(markup, "descriptions", None) or (markup.description,)
        assert all(f"slice {k}" in n and "status ok" in n and "answer: {" in n for n in notes)


class _RecordingRunner:
    """Records the command it is asked to start, then starts a real, harmless process."""

    def __init__(self):
        self.calls = []

    def start(self, argv, *, cwd=None, env=None):
        self.calls.append({"argv": list(argv), "cwd": cwd, "env": env})
        return process.SubprocessRunner().start([sys.executable, "-c", "print(1)"], cwd=cwd)


# -------------------------------------------------------------- first-time path: sample, demo
@needs_slicer
@pytest.mark.slow
def test_sample_case_is_made_locally_and_loads(scene, tmp_path):  # noqa: F811
    """A real `gliomacompare synth` process writes one synthetic HGG case (nothing downloaded);
    it opens as the BraTS folder and loads with its four modalities and ground truth."""
    from GliomaCompareSlicerLib import mrml
    from GliomaCompareSlicerLib.logic import SAMPLE_JOB, CompareLogic

    logic = CompareLogic(scene, work_root=tmp_path / "work")
    logic.run_dir = tmp_path  # a run folder opened before: the sample has nothing to do with it
    job = logic.start_sample_case(shape=(48, 48, 31))
    assert job.name == SAMPLE_JOB
    assert job.argv[job.argv.index("synth") :] == [
        "synth",
        str(tmp_path / "work" / "sample"),
        "--cases",
        "1",
        "--seed",
        "0",
        "--hgg-fraction",
        "1",
        "--shape",
        "48,48,31",
    ]
    assert job.wait(timeout=600) == 0, "\n".join(job.log[-20:])
    assert job.out_dir == tmp_path / "work" / "sample" / "MICCAI_BraTS2020_TrainingData"
    rows = logic.open_sample_case(job.out_dir)
    assert logic.run_dir is None and len(rows) == 1 and rows[0].grade == "HGG"
    loaded = logic.load_case(rows[0].case_id)
    assert sorted(loaded.volumes) == ["flair", "t1", "t1ce", "t2"]
    array, _ = mrml.array_from_volume_node(loaded.volumes["flair"])
    assert array.shape == (48, 48, 31) and array.max() > 0
    assert loaded.ground_truth is not None and loaded.case.label.any()


@needs_slicer
def test_demo_runs_the_demo_preset_and_its_run_opens(scene, tiny_data, tiny_run, tmp_path):  # noqa: F811
    """Run demo starts `gliomacompare demo --out <work>/demo` in the background (not run here:
    the integrator runs the demo); a finished run folder opens in the case browser."""
    from GliomaCompareSlicerLib.logic import DEMO_JOB, CompareLogic

    runner = _RecordingRunner()
    logic = CompareLogic(scene, runner=runner, work_root=tmp_path / "work")
    job = logic.start_demo()
    assert job.name == DEMO_JOB and job.wait(timeout=60) == 0
    argv = runner.calls[0]["argv"]
    assert argv[-3:] == ["demo", "--out", str(tmp_path / "work" / "demo")]
    assert argv[1:3] == ["-m", "GliomaCompareLib.cli"]
    assert job.out_dir == tmp_path / "work" / "demo"
    rows = logic.open_run(tiny_run)  # what the widget does with job.out_dir once it finished
    assert [r.case_id for r in rows] == ["BraTS20_Training_001", "BraTS20_Training_002"]


def test_sample_data_entry_downloads_nothing():
    """The Sample Data registration uses the keyword names of Slicer 5.10's
    SampleDataLogic.registerCustomSampleDataSource, no URI or file, the GliomaCompare category,
    and a custom downloader; registering goes through the class given."""
    from slicer_env import MODULE_DIR

    sys.path.insert(0, str(MODULE_DIR))
    from GliomaCompareSlicerLib import sampledata

    slicer_5_10_keywords = {
        "category", "sampleName", "uris", "fileNames", "nodeNames", "customDownloader",
        "thumbnailFileName", "loadFileTypes", "loadFiles", "loadFileProperties", "checksums",
        "loadFileType",
    }  # fmt: skip
    clicked = []
    kwargs = sampledata.source_arguments(clicked.append, "icon.png")
    assert set(kwargs) <= slicer_5_10_keywords
    assert kwargs["category"] == "GliomaCompare" and kwargs["uris"] is None
    assert kwargs["fileNames"] is None and kwargs["nodeNames"] == []
    kwargs["customDownloader"]("source")
    assert clicked == ["source"]

    registered = []

    class Logic:  # records what Slicer's SampleDataLogic would be given
        @staticmethod
        def registerCustomSampleDataSource(**kw):
            registered.append(kw)

    sampledata.register(Logic)
    assert registered[0]["customDownloader"] is sampledata.make_sample_case
    assert registered[0]["sampleName"] == sampledata.SAMPLE_NAME


# ---------------------------------------------------------------------------------- caches
def test_clear_caches_deletes_only_the_module_folders_after_asking(tmp_path):
    """The live-run folder and GliomaCompare's user cache are listed with their sizes, deleted
    only after a yes; other folders (a model cache beside them) stay; home is refused."""
    from slicer_env import MODULE_DIR

    sys.path.insert(0, str(MODULE_DIR))
    from GliomaCompareSlicerLib import caches

    work = tmp_path / "tmp" / "GliomaCompare"
    (work / "BraTS20_Patient" / "vlm-1" / "out" / "cache").mkdir(parents=True)
    (work / "BraTS20_Patient" / "vlm-1" / "out" / "cache" / "a.json").write_text("x" * 2000)
    xdg = tmp_path / "xdg"
    (xdg / "gliomacompare" / "synthetic").mkdir(parents=True)
    (xdg / "huggingface" / "hub").mkdir(parents=True)  # the user's downloaded models
    env = {"XDG_CACHE_HOME": str(xdg)}
    folders = caches.cache_folders(work, env)
    assert folders == [work, xdg / "gliomacompare"]
    assert caches.folder_size(work) == 2000
    asked = []
    assert caches.clear_caches(folders, lambda q: asked.append(q) or False) == []
    assert work.is_dir() and str(work) in asked[0] and "not touched" in asked[0]
    assert caches.clear_caches(folders, lambda q: True) == folders
    assert not work.exists() and not (xdg / "gliomacompare").exists()
    assert (xdg / "huggingface" / "hub").is_dir()
    assert caches.cache_folders(work, env) == []
    # a cache folder the user named holds other things: only the library's part is ours
    assert caches.user_cache_dir({"GLIOMACOMPARE_CACHE_DIR": str(tmp_path)}) == (
        tmp_path / "synthetic"
    )
    assert caches.user_cache_dir({"GLIOMACOMPARE_CACHE_DIR": ""}) is None
    with pytest.raises(ValueError, match="never deleted"):
        caches.clear_caches([Path.home()], lambda q: True)


@needs_slicer
def test_logic_clear_caches_closes_a_case_list_read_from_them(scene, tmp_path, monkeypatch):  # noqa: F811
    from GliomaCompareSlicerLib import testing
    from GliomaCompareSlicerLib.logic import CompareLogic

    monkeypatch.setenv("GLIOMACOMPARE_CACHE_DIR", str(tmp_path / "user-cache"))
    logic = CompareLogic(scene, work_root=tmp_path / "work")
    data = testing.write_tiny_cohort(tmp_path / "work" / "sample", n_cases=1)
    logic.open_sample_case(data)
    assert logic.cache_folders() == [tmp_path / "work"]
    assert logic.clear_caches(lambda q: True) == [tmp_path / "work"]
    assert logic.cohort is None and logic.rows == []


# ------------------------------------------------------------------- volumes on other grids
def _ramp(affine, shape) -> np.ndarray:
    """A linear function of RAS on a grid: trilinear interpolation reproduces it exactly."""
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)
    ras = ijk @ affine[:3, :3].T + affine[:3, 3]
    return (2.0 * ras[..., 0] + 3.0 * ras[..., 1] - ras[..., 2] + 500.0).astype(np.float32)


@needs_slicer
def test_a_t2_on_another_grid_is_resampled_onto_the_flair_grid(scene, tmp_path):  # noqa: F811
    """A patient whose T2 has another spacing, extent and orientation (as from DICOM): the case
    gets the T2 on the FLAIR's grid, exact for a linear intensity ramp, and says so; the arms'
    one-case folder holds it on that grid."""
    from GliomaCompareSlicerLib import mrml
    from GliomaCompareSlicerLib.grids import resample_to_grid, same_grid
    from GliomaCompareSlicerLib.logic import CompareLogic

    from GliomaCompareLib.data.case import load_case as load

    flair_affine = np.array(
        [[-1.0, 0, 0, 10.0], [0, -1.0, 0, 12.0], [0, 0, 1.5, -9.0], [0, 0, 0, 1.0]]
    )
    shape = (20, 24, 12)
    theta = np.deg2rad(10)
    t2_affine = np.array(
        [
            [-2.0 * np.cos(theta), 2.0 * np.sin(theta), 0, 16.0],
            [-2.0 * np.sin(theta), -2.0 * np.cos(theta), 0, 20.0],
            [0, 0, 3.0, -15.0],
            [0, 0, 0, 1.0],
        ]
    )
    t2_shape = (18, 18, 10)
    flair = _ramp(flair_affine, shape)
    nodes = {
        c: mrml.volume_node_from_array(flair, flair_affine, f"DICOM {c}", scene=scene)
        for c in ("flair", "t1", "t1ce")
    }
    nodes["t2"] = mrml.volume_node_from_array(
        _ramp(t2_affine, t2_shape), t2_affine, "DICOM T2 axial 2mm", scene=scene
    )
    assert not same_grid(t2_shape, t2_affine, shape, flair_affine)
    runner = _RecordingRunner()
    logic = CompareLogic(scene, runner=runner, work_root=tmp_path / "work")
    loaded = logic.use_scene_volumes(nodes, case_id="Patient")
    assert loaded.notes == (
        "T2 (DICOM T2 axial 2mm, 2x2x3 mm) resampled onto the FLAIR grid of DICOM flair (linear)",
    )
    t2 = loaded.case.modality("t2")
    assert t2.shape == shape
    np.testing.assert_allclose(loaded.case.affine, flair_affine)
    inside = t2 != 0  # the T2's field of view covers most of the FLAIR's
    assert inside.mean() > 0.5
    np.testing.assert_allclose(t2[inside], flair[inside], rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(loaded.case.modality("t1"), flair)
    # the arms read the resampled T2 from the case folder written for them
    job = logic.start_cnn(loaded.case_id, process.CnnRunParams(str(tmp_path / "m"), "cpu"))
    job.wait(timeout=60)
    argv = runner.calls[0]["argv"]
    written = load(discover_cases(Path(argv[argv.index("--data") + 1])).get(loaded.case_id))
    np.testing.assert_allclose(written.modality("t2"), t2, atol=1e-4)
    # nearest neighbour keeps label values; same grid is the identity
    labels = np.zeros(t2_shape, np.uint8)
    labels[5:9, 5:9, 3:6] = 4
    nearest = resample_to_grid(labels, t2_affine, shape, flair_affine, order=0)
    assert nearest.dtype == np.uint8 and set(np.unique(nearest).tolist()) == {0, 4}
    np.testing.assert_allclose(resample_to_grid(flair, flair_affine, shape, flair_affine), flair)


# ----------------------------------------------------------------- the scene's selectors
@needs_slicer
def test_selectors_show_the_loaded_case_or_guess_from_names(scene, tiny_data):  # noqa: F811
    """A loaded BraTS case fills the four selectors and the reference; a patient from DICOM gets
    its volumes guessed from the series names (each used once, T1ce before T1, FLAIR before T2)."""
    from GliomaCompareSlicerLib import mrml
    from GliomaCompareSlicerLib.logic import CompareLogic
    from GliomaCompareSlicerLib.selectors import guess_channels, selection_of_loaded_case

    logic = CompareLogic(scene)
    logic.open_data(tiny_data)
    loaded = logic.load_case(CASE1)
    selection = selection_of_loaded_case(loaded)
    assert {k: v.GetName() for k, v in selection.items()} == {
        "flairVolume": f"{CASE1} FLAIR",
        "t1Volume": f"{CASE1} T1",
        "t1ceVolume": f"{CASE1} T1CE",
        "t2Volume": f"{CASE1} T2",
        "referenceSegmentation": "Ground truth",
    }

    def volumes(*names):
        return [
            mrml.volume_node_from_array(np.zeros((2, 2, 2)), np.eye(4), n, scene=scene)
            for n in names
        ]

    dicom = volumes("3: AX T1 POST GAD", "5: Ax T2 FLAIR", "2: Sag T1", "4: AX T2", "6: DWI")
    guessed = {c: n.GetName() for c, n in guess_channels(dicom).items()}
    assert guessed == {
        "flair": "5: Ax T2 FLAIR",
        "t1ce": "3: AX T1 POST GAD",
        "t2": "4: AX T2",
        "t1": "2: Sag T1",
    }
    brats23 = volumes("BraTS-GLI-00001-000-t2w", "BraTS-GLI-00001-000-t1c", "x-t2f", "x-t1n")
    guessed = {c: n.GetName() for c, n in guess_channels(brats23).items()}
    assert guessed == {
        "flair": "x-t2f",
        "t1ce": "BraTS-GLI-00001-000-t1c",
        "t2": "BraTS-GLI-00001-000-t2w",
        "t1": "x-t1n",
    }
    assert guess_channels(volumes("MRHead")) == {}


@needs_slicer
def test_a_loaded_case_in_the_selectors_can_be_used_as_scene_volumes(scene, tiny_data):  # noqa: F811
    """The selectors filled from a loaded case, then 'Use these volumes': the chosen reference
    (the case's ground truth node) stays in the scene with the volumes."""
    from GliomaCompareSlicerLib.logic import CompareLogic
    from GliomaCompareSlicerLib.selectors import selection_of_loaded_case

    logic = CompareLogic(scene)
    logic.open_data(tiny_data)
    loaded = logic.load_case(CASE1)
    chosen = selection_of_loaded_case(loaded)
    volumes = {c: chosen[f"{c}Volume"] for c in ("flair", "t1", "t1ce", "t2")}
    again = logic.use_scene_volumes(volumes, chosen["referenceSegmentation"], CASE1)
    assert again.ground_truth.GetScene() is scene
    assert all(v.GetScene() is scene for v in again.volumes.values())
    np.testing.assert_array_equal(again.case.label, loaded.case.label)
