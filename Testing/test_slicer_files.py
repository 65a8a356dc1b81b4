"""``GliomaCompareLib.slicer_files``: Slicer ``.seg.nrrd`` / ``.mrk.json`` written without Slicer,
checked field by field, read back by our readers, and read by Slicer's own storage nodes
(slicer-core) with exact label values, segment names and control-point RAS positions."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from slicer_env import needs_slicer, scene  # noqa: F401  (scene is a fixture)

from GliomaCompareLib import slicer_files as sf
from GliomaCompareLib.data.conventions import load_convention
from GliomaCompareLib.data.io import read_image
from GliomaCompareLib.data.regions import region_masks
from GliomaCompareLib.data.slices import SliceGeometry

# Oblique, anisotropic, LPS-flipped, non-cubic: an axis or sign error cannot hide.
THETA = np.deg2rad(20)
AFFINE = np.array(
    [
        [-1.2 * np.cos(THETA), 0.9 * np.sin(THETA), 0.0, 12.5],
        [-1.2 * np.sin(THETA), -0.9 * np.cos(THETA), 0.0, -20.25],
        [0.0, 0.0, 2.5, 31.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
SHAPE = (9, 11, 7)


def brats_labels(seed=0, shape=SHAPE) -> np.ndarray:
    """Nested BraTS labels (ET inside TC inside WT) plus a scatter of every value."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    r = np.sqrt((x - 4) ** 2 + (y - 5) ** 2 + (1.5 * (z - 3)) ** 2)
    label = np.zeros(shape, np.uint8)
    label[r < 4] = 2
    label[r < 2.5] = 1
    label[(r >= 1) & (r < 2)] = 4
    label[rng.random(shape) < 0.05] = 4
    return label


def header_fields(path):
    blob = path.read_bytes()
    text = blob[: blob.index(b"\n\n")].decode()
    basic = {}
    kv = {}
    for line in text.splitlines()[1:]:
        if line.startswith("#"):
            continue
        if ":=" in line:
            k, v = line.split(":=", 1)
            kv[k] = v
        else:
            k, v = line.split(": ", 1)
            basic[k] = v
    return basic, kv


def test_seg_nrrd_labels_header_is_what_slicer_writes(tmp_path):
    label = brats_labels()
    path = sf.write_seg_nrrd(tmp_path / "gt.seg.nrrd", label, AFFINE, "brats2020")
    basic, kv = header_fields(path)
    assert basic["space"] == "left-posterior-superior"
    assert basic["dimension"] == "3" and basic["sizes"] == "9 11 7"
    assert basic["kinds"] == "domain domain domain" and basic["encoding"] == "gzip"
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ AFFINE
    dirs = [
        np.array(v.split(","), float) for v in basic["space directions"].strip("()").split(") (")
    ]
    np.testing.assert_allclose(np.stack(dirs, axis=1), lps[:3, :3], atol=1e-12)
    origin = np.array(basic["space origin"].strip("()").split(","), float)
    np.testing.assert_allclose(origin, lps[:3, 3], atol=1e-12)
    conv = load_convention("brats2020")
    for i, value in enumerate((1, 2, 4)):
        for key in ("ID", "Name", "Color", "LabelValue", "Layer", "Extent", "Tags"):
            assert f"Segment{i}_{key}" in kv, key
        assert kv[f"Segment{i}_LabelValue"] == str(value)
        assert kv[f"Segment{i}_Layer"] == "0"
        assert kv[f"Segment{i}_Name"] == conv.labels[value]["name"]
        np.testing.assert_allclose(
            [float(c) for c in kv[f"Segment{i}_Color"].split()], conv.labels[value]["color"]
        )
        assert kv[f"Segment{i}_Extent"] == "0 8 0 10 0 6"
        assert f"GliomaCompare.Label:{value}|" in kv[f"Segment{i}_Tags"]
    assert kv["Segmentation_MasterRepresentation"] == "Binary labelmap"
    assert kv["Segmentation_ReferenceImageExtentOffset"] == "0 0 0"
    raw = np.frombuffer(gzip.decompress(path.read_bytes().split(b"\n\n", 1)[1]), np.uint8)
    np.testing.assert_array_equal(raw.reshape(SHAPE, order="F"), label)


@pytest.mark.parametrize("mode", ["labels", "regions"])
def test_seg_nrrd_round_trip(tmp_path, mode):
    label = brats_labels(1)
    path = sf.write_seg_nrrd(tmp_path / "x.seg.nrrd", label, AFFINE, segments=mode)
    seg = sf.read_seg_nrrd(path)
    np.testing.assert_array_equal(seg.label_map, label)
    np.testing.assert_allclose(seg.affine, AFFINE, atol=1e-12)
    assert seg.mode == mode
    if mode == "regions":
        assert [s.name for s in seg.segments] == ["WT", "TC", "ET"]
        assert [s.layer for s in seg.segments] == [0, 1, 2]
        for region, mask in region_masks(label).items():
            np.testing.assert_array_equal(seg.segment_mask(region), mask)
    else:
        assert [s.label_value for s in seg.segments] == [1, 2, 4]
        # a labels file is also a plain label map for the data layer's reader
        array, meta = read_image(path)
        np.testing.assert_array_equal(array, label)
        np.testing.assert_allclose(meta.affine, AFFINE, atol=1e-9)


def test_seg_nrrd_errors_name_the_file(tmp_path):
    label = brats_labels()
    label[0, 0, 0] = 3  # not a BraTS 2020 label
    with pytest.raises(ValueError, match=r"bad\.seg\.nrrd.*\[3\]"):
        sf.write_seg_nrrd(tmp_path / "bad.seg.nrrd", label, AFFINE)
    with pytest.raises(ValueError, match="3D"):
        sf.write_seg_nrrd(tmp_path / "bad.seg.nrrd", label[0], AFFINE)
    assert not (tmp_path / "bad.seg.nrrd").exists()
    good = sf.write_seg_nrrd(tmp_path / "good.seg.nrrd", brats_labels(), AFFINE)
    head, body = good.read_bytes().split(b"\n\n", 1)
    (tmp_path / "cut.seg.nrrd").write_bytes(head + b"\n\n" + body[: len(body) // 2])
    with pytest.raises(ValueError, match=r"cut\.seg\.nrrd.*(truncated|corrupt)"):
        sf.read_seg_nrrd(tmp_path / "cut.seg.nrrd")
    (tmp_path / "not.seg.nrrd").write_text("hello")
    with pytest.raises(ValueError, match=r"not\.seg\.nrrd: not a NRRD"):
        sf.read_seg_nrrd(tmp_path / "not.seg.nrrd")


def test_on_grid_places_a_cropped_file(tmp_path):
    label = brats_labels()
    crop = label[2:7, 3:9, 1:6]
    affine = AFFINE.copy()
    affine[:3, 3] = AFFINE[:3, :3] @ [2, 3, 1] + AFFINE[:3, 3]
    path = sf.write_seg_nrrd(tmp_path / "crop.seg.nrrd", crop, affine)
    expected = np.zeros_like(label)
    expected[2:7, 3:9, 1:6] = crop
    np.testing.assert_array_equal(sf.read_seg_nrrd(path).on_grid(AFFINE, SHAPE), expected)
    shifted = AFFINE.copy()
    shifted[:3, 3] += AFFINE[:3, :3] @ [0.5, 0, 0]
    with pytest.raises(ValueError, match="fraction"):
        sf.read_seg_nrrd(path).on_grid(shifted, SHAPE)


def test_markups_json_is_lps_and_round_trips(tmp_path):
    pts = np.array([[1.5, -2.25, 3.0], [-10.0, 20.0, -30.5]])
    p = sf.write_points_markup(
        tmp_path / "p.mrk.json", pts, ["k=3", "k=4"], "VLM point", descriptions=["a", "b"]
    )
    doc = json.loads(p.read_text())
    assert doc["@schema"] == sf.MARKUPS_SCHEMA
    item = doc["markups"][0]
    assert item["type"] == "Fiducial" and item["coordinateSystem"] == "LPS"
    assert item["name"] == "VLM point"
    np.testing.assert_allclose([cp["position"] for cp in item["controlPoints"]], pts * [-1, -1, 1])
    (back,) = sf.read_markups(p)
    np.testing.assert_allclose(back.points_ras, pts)
    assert back.labels == ("k=3", "k=4") and back.descriptions == ("a", "b")

    rot = np.array([[np.cos(0.3), -np.sin(0.3), 0], [np.sin(0.3), np.cos(0.3), 0], [0, 0, 1]])
    r = sf.write_roi_markup(tmp_path / "r.mrk.json", [1, 2, 3], [4, 5, 1], orientation=rot)
    (roi,) = sf.read_markups(r)
    np.testing.assert_allclose(roi.center_ras, [1, 2, 3])
    np.testing.assert_allclose(roi.size_mm, [4, 5, 1])
    np.testing.assert_allclose(roi.orientation, rot, atol=1e-12)
    c = sf.write_closed_curve_markup(
        tmp_path / "c.mrk.json", pts[[0, 1, 0]] + [[0, 0, 0], [0, 0, 0], [5, 5, 0]]
    )
    (curve,) = sf.read_markups(c)
    assert curve.points_ras.shape == (3, 3)
    with pytest.raises(ValueError, match="at least 3"):
        sf.write_closed_curve_markup(tmp_path / "bad.mrk.json", pts)
    (tmp_path / "noschema.mrk.json").write_text(json.dumps({"markups": []}))
    with pytest.raises(ValueError, match="schema"):
        sf.read_markups(tmp_path / "noschema.mrk.json")


def test_roi_from_pixel_box_covers_exactly_the_pixels():
    geometry = SliceGeometry.axial(AFFINE, SHAPE, 4)
    roi = sf.roi_from_pixel_box(geometry, 6, 1, 2, 5)  # corners in any order
    pix = geometry.ras_to_pixel(roi.corners_ras)
    np.testing.assert_allclose(sorted(set(np.round(pix[:, 0], 9))), [1.5, 6.5])
    np.testing.assert_allclose(sorted(set(np.round(pix[:, 1], 9))), [0.5, 5.5])
    np.testing.assert_allclose(sorted(set(np.round(pix[:, 2], 9))), [-0.5, 0.5])
    centre = geometry.ras_to_pixel(roi.center_ras)
    np.testing.assert_allclose(centre, [4.0, 3.0, 0.0], atol=1e-9)


def test_vlm_markup_file_names():
    assert sf.vlm_markup_file("box") == sf.VLM_BOX_FILE
    assert sf.vlm_markup_file("point", "finetuned") == "vlm_point_finetuned.mrk.json"
    with pytest.raises(ValueError):
        sf.vlm_markup_file("grade")


# ----------------------------------------------------------- read by Slicer's storage nodes
def _segments(node):
    seg = node.GetSegmentation()
    return [seg.GetNthSegment(i) for i in range(seg.GetNumberOfSegments())]


def _read_segmentation(mrml_scene, path):
    node = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    return node


@pytest.mark.parametrize("mode", ["labels", "regions"])
@needs_slicer
def test_seg_nrrd_loads_through_slicer_storage_node(tmp_path, scene, mode):  # noqa: F811
    import slicer
    from GliomaCompareSlicerLib import mrml

    label = brats_labels(2)
    path = sf.write_seg_nrrd(tmp_path / "s.seg.nrrd", label, AFFINE, segments=mode)
    node = _read_segmentation(scene, path)
    segments = _segments(node)
    conv = load_convention("brats2020")
    if mode == "labels":
        assert [s.GetName() for s in segments] == ["NCR/NET", "ED", "ET"]
        assert [s.GetLabelValue() for s in segments] == [1, 2, 4]
        for s, value in zip(segments, (1, 2, 4), strict=True):
            np.testing.assert_allclose(s.GetColor(), conv.labels[value]["color"], atol=1e-6)
        assert node.GetSegmentation().GetNumberOfLayers() == 1
    else:
        assert [s.GetName() for s in segments] == ["WT", "TC", "ET"]
        assert node.GetSegmentation().GetNumberOfLayers() == 3
    reference = mrml.volume_node_from_array(np.zeros(SHAPE, np.float32), AFFINE, "ref")
    masks = region_masks(label) if mode == "regions" else {v: label == v for v in (1, 2, 4)}
    for segment_id, mask in zip(
        node.GetSegmentation().GetSegmentIDs(), masks.values(), strict=True
    ):
        exported = slicer.util.arrayFromSegmentBinaryLabelmap(node, segment_id, reference)
        np.testing.assert_array_equal(exported.transpose(2, 1, 0) > 0, mask)


@needs_slicer
def test_markups_load_through_slicer(tmp_path, scene):  # noqa: F811
    import slicer
    from GliomaCompareSlicerLib import mrml

    geometry = SliceGeometry.axial(AFFINE, SHAPE, 3)
    pts = sf.points_from_pixels(geometry, [(1, 2), (3.5, 4.25)])
    sf.write_points_markup(tmp_path / "p.mrk.json", pts, ["k=3 a", "k=3 b"])
    roi = sf.roi_from_pixel_box(geometry, 1, 2, 4, 6, description="tiny random-weight model")
    roi2 = sf.roi_from_pixel_box(geometry, 0, 0, 2, 1, name="VLM box 2")
    sf.write_markups(tmp_path / "r.mrk.json", [roi, roi2])
    poly = sf.points_from_pixels(geometry, [(1, 1), (5, 1), (3, 6)])
    sf.write_closed_curve_markup(tmp_path / "c.mrk.json", poly)

    # each file through its class's JSON storage node
    for cls, name, expected in (
        ("vtkMRMLMarkupsFiducialNode", "p", pts),
        ("vtkMRMLMarkupsClosedCurveNode", "c", poly),
    ):
        node = scene.AddNewNodeByClass(cls)
        node.AddDefaultStorageNode()
        storage = node.GetStorageNode()
        assert storage.GetClassName() == "vtkMRMLMarkupsJsonStorageNode"
        storage.SetFileName(str(tmp_path / f"{name}.mrk.json"))
        assert storage.ReadData(node) == 1
        np.testing.assert_allclose(
            slicer.util.arrayFromMarkupsControlPoints(node), expected, rtol=0, atol=1e-9
        )
    # the ROIs as Slicer's markups reader loads them (every markup in the file)
    nodes = mrml.load_markups_file(tmp_path / "r.mrk.json")
    assert [n.GetName() for n in nodes] == ["VLM box", "VLM box 2"]
    for node, expected in zip(nodes, (roi, roi2), strict=True):
        centre = [0.0, 0.0, 0.0]
        node.GetCenterWorld(centre)
        np.testing.assert_allclose(centre, expected.center_ras, atol=1e-9)
        np.testing.assert_allclose(node.GetSize(), expected.size_mm, atol=1e-9)
        matrix = node.GetObjectToNodeMatrix()
        rot = np.array([[matrix.GetElement(i, j) for j in range(3)] for i in range(3)])
        np.testing.assert_allclose(rot, expected.orientation, atol=1e-9)
    assert nodes[0].GetNthControlPointDescription(0) == "tiny random-weight model"


@needs_slicer
def test_files_slicer_writes_are_read_back(tmp_path, scene):  # noqa: F811
    from GliomaCompareSlicerLib import mrml

    label = np.zeros((30, 25, 20), np.uint8)  # a small lesion: Slicer crops what it saves
    label[10:14, 8:12, 5:9] = 2
    label[11:13, 9:11, 6:8] = 4
    node = mrml.segmentation_node_from_label_map(label, AFFINE, name="GT")
    path = mrml.save_node(node, tmp_path / "slicer.seg.nrrd")
    seg = sf.read_seg_nrrd(path)
    np.testing.assert_array_equal(seg.on_grid(AFFINE, label.shape), label)
    assert {s.name for s in seg.segments} == {"NCR/NET", "ED", "ET"}

    curve = sf.ClosedCurveMarkup("VLM polygon", [[1, 2, 3], [4, 5, 3], [0, 9, 3]])
    saved = mrml.save_node(mrml.markup_node(curve), tmp_path / "slicer.mrk.json")
    (back,) = sf.read_markups(saved)
    np.testing.assert_allclose(back.points_ras, curve.points_ras, atol=1e-9)


def test_read_image_gives_the_label_map_of_a_regions_file(tmp_path):
    """A regions file stores overlapping WT / TC / ET layers; read_image (what evaluate and
    the run's metrics use) rebuilds the exact label map from its tagged segments instead of
    refusing the overlap."""
    from GliomaCompareLib.metrics.evaluation import CaseFiles, evaluate_case

    label = brats_labels(seed=4)
    path = sf.write_seg_nrrd(tmp_path / "pred.seg.nrrd", label, AFFINE, segments="regions")
    array, meta = read_image(path)
    np.testing.assert_array_equal(array, label)
    np.testing.assert_allclose(meta.affine, AFFINE, atol=1e-6)
    import nibabel as nib

    nib.save(nib.Nifti1Image(label, AFFINE), str(tmp_path / "ref.nii.gz"))
    rows = evaluate_case(CaseFiles("c", path, tmp_path / "ref.nii.gz"))
    assert {r.region: r.dice for r in rows} == {"WT": 1.0, "TC": 1.0, "ET": 1.0}


def _nrrd_bytes(type_, sizes, encoding, data: bytes, fields=()) -> bytes:
    lines = [
        "NRRD0004",
        f"type: {type_}",
        "dimension: 3",
        "space: left-posterior-superior",
        f"sizes: {' '.join(str(s) for s in sizes)}",
        "space directions: (1,0,0) (0,1,0) (0,0,1)",
        "kinds: domain domain domain",
        f"encoding: {encoding}",
        "space origin: (0,0,0)",
        *fields,
    ]
    return ("\n".join(lines) + "\n\n").encode() + data


def test_a_gzip_bomb_is_refused_without_decompressing_it(tmp_path):
    path = tmp_path / "bomb.seg.nrrd"
    bomb = gzip.compress(b"\0" * 50_000_000)  # ~50 KB -> 50 MB, the header claims 64 bytes
    path.write_bytes(_nrrd_bytes("unsigned char", (4, 4, 4), "gzip", bomb))
    with pytest.raises(
        ValueError, match=r"bomb\.seg\.nrrd: gzip data decompresses to more than the 64 bytes"
    ):
        sf.read_seg_nrrd(path)
    huge = tmp_path / "huge.seg.nrrd"
    huge.write_bytes(_nrrd_bytes("unsigned char", (4096, 4096, 4096), "gzip", bomb))
    with pytest.raises(ValueError, match=r"huge\.seg\.nrrd: header sizes .* more than the"):
        sf.read_seg_nrrd(huge)
    exact = tmp_path / "exact.seg.nrrd"
    exact.write_bytes(_nrrd_bytes("unsigned char", (4, 4, 4), "gzip", gzip.compress(b"\1" * 64)))
    assert sf.read_seg_nrrd(exact).label_map.sum() == 64


def test_a_label_value_beyond_the_label_map_type_is_refused(tmp_path):
    voxels = np.zeros((2, 2, 2), np.uint32)
    voxels[0, 0, 0] = 70000
    raw = voxels.astype("<u4").tobytes(order="F")
    fields = ("Segment0_ID:=s1", "Segment0_LabelValue:=70000", "Segment0_Layer:=0")
    path = tmp_path / "big.seg.nrrd"
    path.write_bytes(_nrrd_bytes("unsigned int", (2, 2, 2), "raw", raw, fields))
    with pytest.raises(ValueError, match=r"big\.seg\.nrrd: label values \[70000\] are outside"):
        sf.read_seg_nrrd(path)
    bare = tmp_path / "bare.seg.nrrd"  # no segment fields: the voxel values are the labels
    bare.write_bytes(_nrrd_bytes("unsigned int", (2, 2, 2), "raw", raw))
    with pytest.raises(ValueError, match=r"bare\.seg\.nrrd: label values \[70000\] are outside"):
        sf.read_seg_nrrd(bare)


def test_segments_carry_snomed_terminology_in_slicer_format(tmp_path):
    """Each tumour label and region names its SNOMED CT type in Slicer's serialised terminology
    entry (7 '~' fields, codes as scheme^value^meaning), in the file's segment tags."""
    entry = sf.terminology_entry(("SCT", "6574001", "Necrosis"))
    fields = entry.split("~")
    assert len(fields) == 7
    assert fields[0] == "Segmentation category and type - DICOM master list"
    assert fields[1] == "SCT^49755003^Morphologically Altered Structure"
    assert fields[2] == "SCT^6574001^Necrosis" and fields[3] == "^^"
    assert fields[4] == "Anatomic codes - DICOM master list" and fields[5] == "SCT^12738006^Brain"
    with pytest.raises(ValueError, match="scheme, value, meaning"):
        sf.terminology_entry(("SCT", "1~2", "x"))
    expected = {"1": "6574001", "2": "79654002", "4": "86049000"}
    path = sf.write_seg_nrrd(tmp_path / "gt.seg.nrrd", brats_labels(), AFFINE, "brats2020")
    _, kv = header_fields(path)
    for i, value in enumerate(("1", "2", "4")):
        tags = dict(t.split(":", 1) for t in kv[f"Segment{i}_Tags"].split("|") if t)
        assert tags["TerminologyEntry"].split("~")[2].split("^")[1] == expected[value]
    codes = {
        s.id: s.tags[sf.TAG_TERMINOLOGY].split("~")[2]
        for s in sf.segment_specs("brats2020", "regions")
    }
    assert codes == {
        "WT": "SCT^4147007^Mass",
        "TC": "SCT^108369006^Neoplasm",
        "ET": "SCT^86049000^Neoplasm, Primary",
    }
    # BraTS 2023 names (NETC, SNFH, ET) get the same three codes
    names = [s.tags[sf.TAG_TERMINOLOGY].split("~")[2] for s in sf.segment_specs("brats2023")]
    assert names == ["SCT^6574001^Necrosis", "SCT^79654002^Edema", "SCT^86049000^Neoplasm, Primary"]
