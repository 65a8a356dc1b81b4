"""The module's issue-14 features below the widget, under slicer-core: standard terminology on
segments (through Slicer's own segmentation storage node), the VLM on the slice on screen / the
CNN's tumour slices / brain slices, the sample case and demo, the advanced options and the cache
clearing, and volumes on different grids resampled onto one."""

from __future__ import annotations

import pytest
from slicer_env import (  # noqa: F401  (scene, tiny_data are fixtures)
    add_slice_node,
    needs_slicer,
    scene,
    tiny_data,
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
