"""Helpers for the Slicer-side tests: a real MRML scene from slicer-core, set up as FACTS.md
describes (via ``GliomaCompareSlicerLib.mrml.setup_scene``), and the module folder on sys.path.

Tests import what they need from here; fixtures defined here are imported into the test
modules explicitly.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MODULE_DIR = REPO / "GliomaCompare"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))

# The Qt-free, slicer-free parts of the module, importable once MODULE_DIR is on sys.path
# (tests import them from here so that import sorting cannot break the order).
from GliomaCompareSlicerLib import cases, paths, process  # noqa: E402, F401


def slicer_core_available() -> tuple[bool, str]:
    """Whether slicer-core's MRML (not the unrelated PyPI package ``slicer``) is importable."""
    try:
        import slicer
    except ImportError as exc:
        return False, f"slicer-core is not installed ({exc}); pip install slicer-core"
    if not hasattr(slicer, "vtkMRMLScene"):
        return False, "the importable 'slicer' package is not slicer-core (no vtkMRMLScene)"
    return True, ""


_OK, _WHY = slicer_core_available()


#: Decorator for tests that need slicer-core: the ``slicer`` marker, skipped (with the reason)
#: when slicer-core is not importable.
def needs_slicer(func):
    return pytest.mark.slicer(pytest.mark.skipif(not _OK, reason=_WHY or "slicer-core")(func))


@pytest.fixture
def scene():
    """A fresh ``vtkMRMLScene`` made current, with application, markups and segmentations
    logics attached (what the Slicer application would provide)."""
    if not _OK:
        pytest.skip(_WHY)
    import slicer
    from GliomaCompareSlicerLib import mrml

    return mrml.setup_scene(slicer.vtkMRMLScene())


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """Two tiny BraTS 2020-layout cases (HGG, LGG) written once per session (read-only)."""
    from GliomaCompareSlicerLib import testing

    return testing.write_tiny_cohort(tmp_path_factory.mktemp("tiny"), n_cases=2)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_data) -> Path:
    """A run folder laid out as the comparison run writes it, with fabricated results."""
    from GliomaCompareSlicerLib import testing

    return testing.write_tiny_run(tmp_path_factory.mktemp("run") / "run", tiny_data)


def add_slice_node(scene, name: str = "Red"):
    """An axial slice node (as a layout would create), to check where jumps land."""
    node = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    node.SetName(name)
    node.SetLayoutName(name)
    node.SetOrientationToAxial()
    composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    composite.SetLayoutName(name)
    return node, composite
