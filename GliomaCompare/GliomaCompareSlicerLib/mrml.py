"""MRML adapter: numpy / library objects <-> Slicer nodes. No Qt; runs in 3D Slicer and under
slicer-core (plain Python, ``setup_scene`` prepares what the application would).

Conventions:
- Library arrays are indexed ``[i, j, k]`` with a 4x4 voxel -> RAS ``affine``; Slicer volume arrays
  (``slicer.util.arrayFromVolume``) are ``[k, j, i]`` with the node's IJKToRAS matrix. Everything
  here converts between the two, so a volume node's IJKToRAS *is* the library affine.
- Segmentations keep label values: in ``"labels"`` mode one shared layer holds the label map
  (segment label values 1/2/4 for BraTS 2020), in ``"regions"`` mode one binary layer per region.
  Segments carry the same names, colours and tags as the files
  :func:`GliomaCompareLib.slicer_files.write_seg_nrrd` writes.
- Markups are placed in RAS (world) coordinates.
- Every node made for a case carries the attributes ``GliomaCompare.Case`` and
  ``GliomaCompare.Method`` (``image``, ``ground_truth``, ``cnn``, ``vlm_point``, ...).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from GliomaCompareSlicerLib import paths

paths.ensure_library_importable()

from GliomaCompareLib import slicer_files  # noqa: E402
from GliomaCompareLib.data.conventions import REGIONS, load_convention  # noqa: E402
from GliomaCompareLib.slicer_files import (  # noqa: E402
    ClosedCurveMarkup,
    PointsMarkup,
    RoiMarkup,
)

__all__ = [
    "ATTR_CASE",
    "ATTR_METHOD",
    "array_from_volume_node",
    "case_nodes",
    "commit_scene",
    "copy_to_scene",
    "empty_scene_like",
    "jump_slices",
    "label_map_from_segmentation_node",
    "load_markups_file",
    "load_segmentation_file",
    "markup_from_node",
    "markup_node",
    "markups_logic",
    "remove_nodes",
    "rows_from_table_node",
    "save_node",
    "segment_tags",
    "segmentation_node_from_label_map",
    "segmentations_logic",
    "set_visibility",
    "setup_scene",
    "show_in_slice_views",
    "table_node_from_rows",
    "tag_node",
    "volume_node_from_array",
]

ATTR_CASE = "GliomaCompare.Case"
ATTR_METHOD = "GliomaCompare.Method"
_BINARY_LABELMAP = "Binary labelmap"
#: Logic objects created for a scene outside the Slicer application (kept alive here).
_HEADLESS: dict[str, object] = {}


def _slicer():
    import slicer

    return slicer


def _in_app() -> bool:
    return hasattr(_slicer(), "app")


def setup_scene(scene=None):
    """Return the scene to work in, prepared for markups and segmentations.

    In 3D Slicer this is ``slicer.mrmlScene`` (or ``scene``). Under slicer-core (no application)
    the scene is made current (``slicer.mrmlScene``) and an application logic, a markups logic and
    a segmentations logic are attached to it (markups storage nodes need the markups logic);
    ``slicer.modules.markups/segmentations.logic()`` are provided so that ``slicer.util``
    helpers work the same way as in the application.
    """
    slicer = _slicer()
    if _in_app():
        return scene or slicer.mrmlScene
    if scene is None:
        scene = getattr(slicer, "mrmlScene", None) or slicer.vtkMRMLScene()
    if _HEADLESS.get("scene") is scene:
        return scene
    slicer.mrmlScene = scene
    app_logic = slicer.vtkMRMLApplicationLogic()
    app_logic.SetMRMLScene(scene)
    markups = slicer.vtkSlicerMarkupsLogic()
    markups.SetMRMLScene(scene)
    segmentations = slicer.vtkSlicerSegmentationsModuleLogic()
    segmentations.SetMRMLScene(scene)
    _HEADLESS.update(scene=scene, app=app_logic, markups=markups, segmentations=segmentations)

    class _Module:
        def __init__(self, logic):
            self._logic = logic

        def logic(self):
            return self._logic

    class _Modules:
        pass

    modules = getattr(slicer, "modules", None) or _Modules()
    modules.markups = _Module(markups)
    modules.segmentations = _Module(segmentations)
    slicer.modules = modules
    return scene


def markups_logic():
    """The markups module logic (application) or the headless one."""
    if _in_app():
        return _slicer().modules.markups.logic()
    setup_scene()
    return _HEADLESS["markups"]


def segmentations_logic():
    """The segmentations module logic (application) or the headless one."""
    if _in_app():
        return _slicer().modules.segmentations.logic()
    setup_scene()
    return _HEADLESS["segmentations"]


def _scene(scene):
    return setup_scene(scene)


def _vtk_matrix(array) -> object:
    import vtk

    m = vtk.vtkMatrix4x4()
    a = np.asarray(array, dtype=float)
    for i in range(4):
        for j in range(4):
            m.SetElement(i, j, float(a[i, j]))
    return m


def _np_matrix(m) -> np.ndarray:
    return np.array([[m.GetElement(i, j) for j in range(4)] for i in range(4)], dtype=float)


def tag_node(node, case_id: str | None = None, method: str | None = None):
    """Set the ``GliomaCompare.Case`` / ``GliomaCompare.Method`` attributes; return the node."""
    if case_id is not None:
        node.SetAttribute(ATTR_CASE, case_id)
    if method is not None:
        node.SetAttribute(ATTR_METHOD, method)
    return node


# =================================================================================== volumes
def volume_node_from_array(
    array: np.ndarray,
    affine: np.ndarray,
    name: str,
    *,
    labelmap: bool = False,
    scene=None,
):
    """Add a volume node holding ``array[i, j, k]`` with IJKToRAS = ``affine``.

    Args:
        array: 3D array in library order ``(X, Y, Z)``.
        affine: 4x4 voxel -> RAS matrix (e.g. ``Case.affine``).
        name: node name.
        labelmap: make a ``vtkMRMLLabelMapVolumeNode`` instead of a scalar volume.

    Raises:
        ValueError: for a non-3D array or a non-4x4 affine.
    """
    slicer = _slicer()
    scene = _scene(scene)
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"volume {name!r}: expected a 3D array (X, Y, Z), got {array.shape}")
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4):
        raise ValueError(f"volume {name!r}: affine must be 4x4, got {affine.shape}")
    cls = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
    node = scene.AddNewNodeByClass(cls, name)
    node.SetIJKToRASMatrix(_vtk_matrix(affine))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array.transpose(2, 1, 0)))
    node.CreateDefaultDisplayNodes()
    return node


def array_from_volume_node(node) -> tuple[np.ndarray, np.ndarray]:
    """``(array[i, j, k] copy, 4x4 IJKToRAS)`` of a volume node."""
    slicer = _slicer()
    kji = slicer.util.arrayFromVolume(node)
    m = _vtk_matrix(np.eye(4))
    node.GetIJKToRASMatrix(m)
    return np.array(kji.transpose(2, 1, 0), copy=True), _np_matrix(m)


# ============================================================================= segmentations
def _oriented_image(layer: np.ndarray, affine: np.ndarray):
    import vtk
    import vtk.util.numpy_support as ns

    slicer = _slicer()
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(*layer.shape)
    image.SetImageToWorldMatrix(_vtk_matrix(affine))
    flat = np.ascontiguousarray(layer.transpose(2, 1, 0)).ravel()
    vtk_type = vtk.VTK_UNSIGNED_CHAR if layer.dtype == np.uint8 else vtk.VTK_UNSIGNED_SHORT
    image.GetPointData().SetScalars(ns.numpy_to_vtk(flat, deep=True, array_type=vtk_type))
    return image


def segmentation_node_from_label_map(
    label_map: np.ndarray,
    affine: np.ndarray,
    convention="brats2020",
    name: str = "Ground truth",
    *,
    segments: str = "labels",
    regions: Sequence[str] = REGIONS,
    extra_tags: Mapping[str, str] | None = None,
    scene=None,
):
    """Add a segmentation node from a label map, keeping the label values.

    Args:
        label_map: integer array ``(X, Y, Z)`` in the convention's values.
        affine: 4x4 voxel -> RAS matrix of the label map.
        convention: label convention (names, colours, regions).
        name: node name (``"Ground truth"``, ``"CNN"``).
        segments: ``"labels"`` (one shared layer, label values kept, segments named by label)
            or ``"regions"`` (one binary layer per region, segments WT / TC / ET).
        regions: regions for ``"regions"`` mode.
        extra_tags: tags added to every segment.

    Raises:
        ValueError: for label values the convention does not declare, or a bad shape/affine.
    """
    slicer = _slicer()
    scene = _scene(scene)
    conv = load_convention(convention)
    label_map = np.asarray(label_map)
    if label_map.ndim != 3:
        raise ValueError(f"segmentation {name!r}: label map must be 3D, got {label_map.shape}")
    unknown = sorted(set(np.unique(label_map).astype(int).tolist()) - set(conv.allowed_labels))
    if unknown:
        raise ValueError(
            f"segmentation {name!r}: label values {unknown} are not in convention {conv.name}"
        )
    affine = np.asarray(affine, dtype=float)
    specs = slicer_files.segment_specs(conv, segments, regions, extra_tags)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.CreateDefaultDisplayNodes()
    segmentation = node.GetSegmentation()
    segmentation.SetSourceRepresentationName(_BINARY_LABELMAP)
    if segments == "labels":
        dtype = np.uint8 if max(conv.allowed_labels) <= 255 else np.uint16
        layers = [label_map.astype(dtype)]
    else:
        layers = [np.isin(label_map, conv.regions[s.region]).astype(np.uint8) for s in specs]
    images = [_oriented_image(layer, affine) for layer in layers]
    extent = f"0;{label_map.shape[0] - 1};0;{label_map.shape[1] - 1};0;{label_map.shape[2] - 1};"
    geometry = ";".join(repr(float(v)) for v in affine.ravel()) + ";" + extent
    segmentation.SetConversionParameter("Reference image geometry", geometry)
    for spec in specs:
        segment = slicer.vtkSegment()
        segment.SetName(spec.name)
        segment.SetColor(*spec.color)
        segment.SetLabelValue(int(spec.label_value))
        for key, value in spec.tags.items():
            if key == slicer_files.TAG_TERMINOLOGY:  # standard terms, as Slicer's editor sets
                segment.SetTerminology(value)
            else:
                segment.SetTag(key, value)
        segment.AddRepresentation(_BINARY_LABELMAP, images[spec.layer])
        segmentation.AddSegment(segment, spec.id)
    return node


def segment_tags(segment) -> dict[str, str]:
    """The GliomaCompare tags of a ``vtkSegment`` (label, region, convention) that are set."""
    import vtk

    out = {}
    for key in ("GliomaCompare.Label", "GliomaCompare.Region", "GliomaCompare.Convention"):
        value = vtk.reference("")
        if segment.GetTag(key, value):
            out[key] = str(value)
    return out


def label_map_from_segmentation_node(node, reference_volume, convention=None) -> np.ndarray:
    """The label map ``(X, Y, Z)`` of a segmentation node on a reference volume's grid.

    Segments tagged with a label value (labels mode) write that value; segments tagged with a
    region (regions mode) are combined into labels with the convention's nesting
    (:func:`GliomaCompareLib.data.regions.labels_from_regions`); other segments write their own
    label value. Later segments win where segments overlap.

    Raises:
        RuntimeError: when Slicer cannot export a segment.
    """
    import vtk

    slicer = _slicer()
    scene = node.GetScene()
    logic = segmentations_logic()
    segmentation = node.GetSegmentation()
    masks: list[tuple[dict, int, np.ndarray]] = []
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        segment = segmentation.GetSegment(segment_id)
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id)
        temp = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__GliomaCompare_export__")
        try:
            if not logic.ExportSegmentsToLabelmapNode(node, ids, temp, reference_volume):
                raise RuntimeError(f"{node.GetName()}: exporting segment {segment_id!r} failed")
            mask = slicer.util.arrayFromVolume(temp).transpose(2, 1, 0) > 0
        finally:
            _remove(temp)
        masks.append((segment_tags(segment), int(segment.GetLabelValue()), mask))
    shape = tuple(reversed(slicer.util.arrayFromVolume(reference_volume).shape))
    tags = [t for t, _v, _m in masks]
    if masks and all("GliomaCompare.Region" in t for t in tags):
        from GliomaCompareLib.data.regions import labels_from_regions

        conv_name = convention or tags[0].get("GliomaCompare.Convention") or "brats2020"
        by_region = {t["GliomaCompare.Region"]: m for t, _v, m in masks}
        empty = np.zeros(shape, bool)
        return labels_from_regions(
            by_region.get("WT", empty),
            by_region.get("TC", empty),
            by_region.get("ET", empty),
            load_convention(conv_name),
        )
    values = [int(t.get("GliomaCompare.Label", v)) for t, v, _m in masks] or [0]
    out = np.zeros(shape, dtype=np.uint8 if max(values) <= 255 else np.uint16)
    for (_t, _v, mask), value in zip(masks, values, strict=True):
        out[mask] = value
    return out


# ==================================================================================== markups
def markup_node(markup, scene=None):
    """Add a markups node (fiducials, ROI or closed curve) for a library markup, in RAS."""
    import vtk

    scene = _scene(scene)
    markups_logic()  # markups need their logic registered with the scene
    if isinstance(markup, PointsMarkup):
        node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", markup.name)
        for p, label, description in zip(
            markup.points_ras, markup.labels, markup.descriptions, strict=True
        ):
            index = node.AddControlPoint(vtk.vtkVector3d(*map(float, p)), label)
            node.SetNthControlPointDescription(index, description)
    elif isinstance(markup, RoiMarkup):
        node = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", markup.name)
        matrix = np.eye(4)
        matrix[:3, :3] = markup.orientation
        matrix[:3, 3] = markup.center_ras
        node.SetSize(*map(float, markup.size_mm))
        node.SetAndObserveObjectToNodeMatrix(_vtk_matrix(matrix))
        if node.GetNumberOfControlPoints():
            node.SetNthControlPointDescription(0, markup.description)
    elif isinstance(markup, ClosedCurveMarkup):
        node = scene.AddNewNodeByClass("vtkMRMLMarkupsClosedCurveNode", markup.name)
        node.SetCurveTypeToLinear()
        for index, p in enumerate(markup.points_ras):
            i = node.AddControlPoint(vtk.vtkVector3d(*map(float, p)), f"{markup.name}-{index + 1}")
            node.SetNthControlPointDescription(i, markup.description)
    else:
        raise TypeError(f"not a markup: {type(markup).__name__}")
    node.SetLocked(True)
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    if display is not None:
        display.SetColor(*markup.color)
        display.SetSelectedColor(*markup.color)
    return node


def markup_from_node(node):
    """The library markup (RAS) of a fiducial, ROI or closed-curve node."""
    slicer = _slicer()
    name = node.GetName()
    color = (0.5, 0.5, 0.5)
    if node.GetDisplayNode() is not None:
        color = tuple(node.GetDisplayNode().GetSelectedColor())
    n = node.GetNumberOfControlPoints()
    if node.IsA("vtkMRMLMarkupsROINode"):
        matrix = _np_matrix(node.GetObjectToNodeMatrix())
        description = node.GetNthControlPointDescription(0) if n else ""
        return RoiMarkup(name, matrix[:3, 3], node.GetSize(), matrix[:3, :3], description, color)
    points = slicer.util.arrayFromMarkupsControlPoints(node) if n else np.zeros((0, 3))
    if node.IsA("vtkMRMLMarkupsClosedCurveNode"):
        description = node.GetNthControlPointDescription(0) if n else ""
        return ClosedCurveMarkup(name, points, description, color)
    if node.IsA("vtkMRMLMarkupsFiducialNode"):
        labels = tuple(node.GetNthControlPointLabel(i) for i in range(n))
        descriptions = tuple(node.GetNthControlPointDescription(i) for i in range(n))
        return PointsMarkup(name, points, labels, descriptions, color)
    raise TypeError(f"{name}: {node.GetClassName()} is not a fiducial, ROI or closed curve node")


# ============================================================================== tables, files
def table_node_from_rows(
    rows: Sequence[Mapping[str, object]],
    name: str,
    columns: Sequence[str] | None = None,
    scene=None,
):
    """Add a table node; numeric columns become double columns, others string columns."""
    import vtk

    scene = _scene(scene)
    if columns is None:
        columns = []
        for row in rows:
            columns += [c for c in row if c not in columns]
    node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    table = node.GetTable()

    def is_number(v):
        return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)

    for column in columns:
        values = [row.get(column) for row in rows]
        if values and all(is_number(v) or v is None for v in values):
            array = vtk.vtkDoubleArray()
            array.SetName(column)
            for v in values:
                array.InsertNextValue(float("nan") if v is None else float(v))
        else:
            array = vtk.vtkStringArray()
            array.SetName(column)
            for v in values:
                array.InsertNextValue("" if v is None else str(v))
        table.AddColumn(array)
    node.Modified()
    return node


def rows_from_table_node(node) -> list[dict[str, object]]:
    """Rows of a table node as dicts (numbers as float, text as str)."""
    table = node.GetTable()
    columns = [table.GetColumn(c) for c in range(table.GetNumberOfColumns())]
    out = []
    for r in range(table.GetNumberOfRows()):
        row = {}
        for col in columns:
            value = col.GetValue(r)
            row[col.GetName()] = float(value) if not isinstance(value, str) else value
        out.append(row)
    return out


_SUFFIXES = (".seg.nrrd", ".mrk.json", ".nii.gz", ".nrrd", ".nii", ".tsv", ".csv", ".json")


def _split_suffix(name: str) -> tuple[str, str]:
    for suffix in _SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)], name[-len(suffix) :]
    return name, ""


def save_node(node, path: str | Path) -> Path:
    """Write a node through its storage node (created when missing), atomically (temporary
    file, then rename); the storage node then points at ``path``.

    Raises:
        OSError: naming the file, when Slicer's writer fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    storage = node.GetStorageNode()
    if storage is None:
        node.AddDefaultStorageNode()
        storage = node.GetStorageNode()
    if storage is None:
        raise OSError(f"{path}: {node.GetClassName()} has no storage node to write it")
    stem, suffix = _split_suffix(path.name)
    tmp_stem = f".{stem}.{os.getpid()}.tmp"
    tmp = path.with_name(tmp_stem + suffix)
    storage.SetFileName(str(tmp))
    try:
        if not storage.WriteData(node):
            raise OSError(f"{path}: Slicer could not write {node.GetName()!r}")
        # companions Slicer writes next to the file (a table's .schema.tsv) move with it
        for companion in path.parent.glob(f"{tmp_stem}.*"):
            if companion != tmp:
                companion.replace(path.with_name(stem + companion.name[len(tmp_stem) :]))
        tmp.replace(path)
    finally:
        for leftover in path.parent.glob(f"{tmp_stem}*"):
            leftover.unlink()
    storage.SetFileName(str(path))
    return path


def empty_scene_like(scene):
    """A new, separate scene that knows every node class ``scene`` knows (markups and
    segmentations are registered per scene by their module logics), for writing scene files
    without touching ``scene`` (the application's scene keeps its URL and root directory)."""
    out = _slicer().vtkMRMLScene()
    for i in range(scene.GetNumberOfRegisteredNodeClasses()):
        prototype = scene.GetNthRegisteredNodeClass(i)
        if out.CreateNodeByClass(prototype.GetClassName()) is None:
            out.RegisterNodeClass(prototype)
    return out


def copy_to_scene(node, scene):
    """Add a copy of ``node``'s content (shallow: image data is shared, not duplicated) to
    ``scene``, with default display nodes; its references (storage, display) are not copied."""
    copy = scene.CreateNodeByClass(node.GetClassName())
    if copy is None:
        raise TypeError(f"{node.GetName()}: {node.GetClassName()} is unknown to the scene")
    copy.CopyContent(node, False)
    copy.SetName(node.GetName())
    scene.AddNode(copy)
    if copy.IsA("vtkMRMLDisplayableNode"):
        copy.CreateDefaultDisplayNodes()
    return copy


def commit_scene(scene, path: str | Path) -> Path:
    """Write ``scene``'s ``.mrml`` to ``path`` (atomically), file names relative to its folder.

    Raises:
        OSError: naming the file, when Slicer cannot write it.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name[: -len('.mrml')]}.{os.getpid()}-tmp.mrml")  # plain stem
    scene.SetRootDirectory(str(path.parent))
    scene.SetURL(str(tmp))
    if not scene.Commit():
        raise OSError(f"{path}: Slicer could not write the scene")
    tmp.replace(path)
    scene.SetURL(str(path))
    return path


def load_segmentation_file(path: str | Path, name: str | None = None, scene=None):
    """Read a ``.seg.nrrd`` into a new segmentation node (Slicer's storage node).

    Raises:
        OSError: naming the file, when Slicer cannot read it.
    """
    scene = _scene(scene)
    path = Path(path)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name or path.name.split(".")[0])
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    node.SetAndObserveStorageNodeID(storage.GetID())
    if not path.is_file() or not storage.ReadData(node):
        _remove(node)
        raise OSError(f"{path}: not a segmentation Slicer can read")
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node


def load_markups_file(path: str | Path, scene=None) -> list:
    """Read every markup in a ``.mrk.json`` into new nodes, as Slicer's markups reader does.

    Raises:
        OSError: naming the file, when nothing could be read.
    """
    scene = _scene(scene)
    path = Path(path)
    before = {n.GetID() for n in _nodes(scene, "vtkMRMLMarkupsNode")}
    first = markups_logic().LoadMarkups(str(path)) if path.is_file() else None
    nodes = [n for n in _nodes(scene, "vtkMRMLMarkupsNode") if n.GetID() not in before]
    if not first or not nodes:
        raise OSError(f"{path}: not a markups file Slicer can read")
    return nodes


def _nodes(scene, cls: str) -> list:
    collection = scene.GetNodesByClass(cls)
    out = [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]
    return out


def _remove(node) -> None:
    scene = node.GetScene()
    if scene is None:
        return
    displays = (
        [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
        if hasattr(node, "GetNumberOfDisplayNodes")
        else []
    )
    storages = (
        [node.GetNthStorageNode(i) for i in range(node.GetNumberOfStorageNodes())]
        if hasattr(node, "GetNumberOfStorageNodes")
        else []
    )
    scene.RemoveNode(node)
    for other in displays + storages:
        if other is not None and other.GetScene() is scene:
            scene.RemoveNode(other)


def case_nodes(scene, case_id: str | None = None, method: str | None = None) -> list:
    """Nodes made by this module (optionally for one case and/or method)."""
    out = []
    for node in _nodes(scene, "vtkMRMLNode"):
        if node.GetAttribute(ATTR_METHOD) is None:
            continue
        if case_id is not None and node.GetAttribute(ATTR_CASE) != case_id:
            continue
        if method is not None and node.GetAttribute(ATTR_METHOD) != method:
            continue
        out.append(node)
    return out


def remove_nodes(nodes: Sequence) -> None:
    """Remove nodes with their display and storage nodes."""
    for node in nodes:
        _remove(node)


def set_visibility(node, visible: bool) -> None:
    """Show or hide a displayable node in all views."""
    if node.GetDisplayNode() is None and hasattr(node, "CreateDefaultDisplayNodes"):
        node.CreateDefaultDisplayNodes()
    for i in range(node.GetNumberOfDisplayNodes()):
        node.GetNthDisplayNode(i).SetVisibility(bool(visible))


def jump_slices(scene, ras: Sequence[float], centered: bool = False) -> None:
    """Move every slice view to the RAS point (``centered`` also pans to it)."""
    slicer = _slicer()
    mode = (
        slicer.vtkMRMLSliceNode.CenteredJumpSlice
        if centered
        else slicer.vtkMRMLSliceNode.OffsetJumpSlice
    )
    slicer.vtkMRMLSliceNode.JumpAllSlices(scene, *(float(v) for v in ras), mode)


def show_in_slice_views(scene, background=None, foreground=None, label=None, opacity=0.5) -> int:
    """Set background / foreground / label volumes of every slice view; return how many views."""
    composites = _nodes(scene, "vtkMRMLSliceCompositeNode")
    for composite in composites:
        if background is not None:
            composite.SetBackgroundVolumeID(background.GetID())
        if foreground is not None:
            composite.SetForegroundVolumeID(foreground.GetID())
            composite.SetForegroundOpacity(opacity)
        if label is not None:
            composite.SetLabelVolumeID(label.GetID())
    return len(composites)
