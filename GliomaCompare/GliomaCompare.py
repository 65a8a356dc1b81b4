"""GliomaCompare: compare 3D CNNs with vision-language models on brain MRI, case by case.

Thin Slicer module (Module, parameters, Widget shell, Logic, Test). The work is done by the
Qt-free ``GliomaCompareSlicerLib`` (logic, MRML adapter, background runs) and the pure-Python
``GliomaCompareLib``; long runs go to a background ``PythonSlicer -m GliomaCompareLib.cli``.
"""

import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import qt
import slicer
import vtk
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

# ``GliomaCompareSlicerLib`` sits next to this file; ``GliomaCompareLib`` next to it (installed)
# or one level up (source tree): paths.ensure_library_importable() handles both.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from GliomaCompareSlicerLib import paths

paths.ensure_library_importable()


class GliomaCompare(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "GliomaCompare"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["GliomaCompare developers"]
        self.parent.helpText = (
            "Compare 3D CNNs with vision-language models (Llama 3.2 Vision and others) at grading "
            "(LGG vs HGG) and localising gliomas on BraTS MRI. Open a BraTS folder or a finished "
            "'gliomacompare run' folder, sort cases by a score (worst first), load a case (four "
            "modalities, ground truth), run the CNN and the VLM in the background, and inspect "
            "their segmentations, points, boxes and polygons on the same slices (the VLM on the "
            "reference tumour slices, the slice on screen, the CNN's tumour slices or brain "
            "slices). 'Sample case' and 'Run demo' need no download. Results from "
            "the 'tiny' backend come from a random-weight model and say so."
        )
        self.parent.acknowledgementText = (
            "Re-implements the protocol of Liu, Yoo and Khalvati, 'A Comparison and Evaluation "
            "of Fine-tuned Convolutional Neural Networks to Large Language Models for Image "
            "Classification and Segmentation of Brain Tumors on MRI', arXiv:2509.10683. "
            "BraTS 2020 data: Menze et al., Bakas et al. Built on 3D Slicer, MONAI and "
            "Hugging Face transformers."
        )
        icon = paths.icon_file()
        if icon is not None:
            self.parent.icon = qt.QIcon(str(icon))
        reason = unsupported_reason()
        if reason:
            self.parent.helpText = f"<b>{reason}</b><br>" + self.parent.helpText
            logging.warning(reason)
        else:  # Sample Data lists the synthetic case (made locally) once Slicer has started
            slicer.app.connect("startupCompleted()", _register_sample_data)


def _register_sample_data():
    from GliomaCompareSlicerLib import sampledata

    sampledata.register()


def unsupported_reason():
    """None on Slicer 5.10+ (Python 3.12); else what the module needs, in one sentence."""
    app = getattr(slicer, "app", None)
    version = (app.majorVersion, app.minorVersion) if app is not None else None
    return paths.unsupported_reason(version)


@parameterNodeWrapper
class GliomaCompareParameterNode:
    """Everything the user chooses in the module panel (saved with the scene)."""

    dataFolder: str = ""
    runFolder: str = ""
    saveFolder: str = ""
    worstFirst: bool = True
    device: Annotated[str, Choice(["auto", "cuda", "cpu"])] = "auto"
    cnnModelFolder: str = ""
    vlmBackend: Annotated[str, Choice(["tiny", "transformers", "openai"])] = "tiny"
    vlmModel: str = ""
    vlmBaseUrl: str = ""
    vlmAllowRemote: bool = False
    vlmAdapter: str = ""
    taskGrade: bool = True
    taskPoint: bool = True
    taskBox: bool = True
    taskPolygon: bool = True
    vlmRuns: Annotated[int, WithinRange(1, 20)] = 1
    vlmTemperature: Annotated[float, WithinRange(0.0, 2.0)] = 0.0
    slicesPerCase: Annotated[int, WithinRange(0, 512)] = 0
    vlmSlices: Annotated[str, Choice(["reference", "screen", "cnn", "brain"])] = "reference"
    showGroundTruth: bool = True
    showCnn: bool = True
    showVlmPoint: bool = True
    showVlmBox: bool = True
    showVlmPolygon: bool = True
    show3D: bool = False
    flairVolume: slicer.vtkMRMLScalarVolumeNode
    t1Volume: slicer.vtkMRMLScalarVolumeNode
    t1ceVolume: slicer.vtkMRMLScalarVolumeNode
    t2Volume: slicer.vtkMRMLScalarVolumeNode
    referenceSegmentation: slicer.vtkMRMLSegmentationNode


class GliomaCompareWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.impl = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        reason = unsupported_reason()
        if reason:  # the rest needs Python 3.12: say plainly what is needed, load nothing
            label = qt.QLabel(reason)
            label.wordWrap = True
            self.layout.addWidget(label)
            self.layout.addStretch(1)
            return
        uiWidget = slicer.util.loadUI(str(paths.ui_file()))  # source tree or installed layout
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = GliomaCompareLogic()
        # (also registers the connector that keeps unset path fields empty, before connectGui)
        from GliomaCompareSlicerLib.widget import CompareWidget

        self.impl = CompareWidget(self.ui, lambda: self._parameterNode, self.logic.compare)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def cleanup(self):
        if self.impl is not None:
            self.impl.cleanup()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterChanged
            )

    def onSceneStartClose(self, caller, event):
        self.setParameterNode(None)
        if self.impl is not None:
            self.impl.scene_closing()

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        if self.logic is not None:  # None on an unsupported Slicer (see setup)
            self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterChanged
            )
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterChanged
            )
            self._onParameterChanged()

    def _onParameterChanged(self, caller=None, event=None):
        if self.impl is not None:
            self.impl.update_buttons()


class GliomaCompareLogic(ScriptedLoadableModuleLogic):
    """Parameter node + the Qt-free :class:`GliomaCompareSlicerLib.logic.CompareLogic`
    (``self.compare``), which scripts can use directly."""

    def __init__(self, runner=None):
        ScriptedLoadableModuleLogic.__init__(self)
        from GliomaCompareSlicerLib.logic import CompareLogic

        self.compare = CompareLogic(slicer.mrmlScene, runner=runner)

    def getParameterNode(self):
        return GliomaCompareParameterNode(super().getParameterNode())


class GliomaCompareTest(ScriptedLoadableModuleTest):
    """Runs in Slicer's generic tests: the logic on a tiny synthetic cohort and run folder."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        """Passes in a fresh Slicer: the MRML part needs only bundled packages; the part that
        reads case files needs nibabel, which this test never installs, so it is skipped (and
        says so) until the module installed it on first use."""
        from GliomaCompareSlicerLib import dependencies, testing

        self.setUp()
        testing.check_mrml_round_trip(slicer.mrmlScene)
        need = dependencies.missing(dependencies.LOAD_REQUIREMENTS)
        if need:
            self.delayDisplay(f"Skipped the case-folder test: {', '.join(need)} not installed")
            return
        self.test_load_case_and_run_results()

    def test_load_case_and_run_results(self):
        import numpy as np
        from GliomaCompareSlicerLib import mrml, testing

        with tempfile.TemporaryDirectory() as tmp:
            data = testing.write_tiny_cohort(Path(tmp) / "data", n_cases=2)
            run = testing.write_tiny_run(Path(tmp) / "run", data)
            logic = GliomaCompareLogic().compare
            rows = logic.open_run(run)
            self.assertEqual(
                [r.case_id for r in rows], ["BraTS20_Training_001", "BraTS20_Training_002"]
            )
            loaded = logic.load_case("BraTS20_Training_001")
            array, affine = mrml.array_from_volume_node(loaded.volumes["flair"])
            np.testing.assert_array_equal(array, loaded.case.flair)
            np.testing.assert_allclose(affine, loaded.case.affine)
            label = mrml.label_map_from_segmentation_node(
                loaded.ground_truth, loaded.volumes["flair"]
            )
            np.testing.assert_array_equal(label, loaded.case.label)
            results = logic.load_run_results("BraTS20_Training_001")
            self.assertEqual(
                sorted(results.nodes), ["cnn", "metrics", "vlm_box", "vlm_point", "vlm_polygon"]
            )
            self.assertEqual(results.predictions["truth"]["grade"], "HGG")
            self.delayDisplay("GliomaCompare logic test passed")
