"""The Qt side of the module: fills the widgets from :class:`CompareLogic` and forwards clicks.

Only runs inside the 3D Slicer application (needs ``qt``). Everything it calls is in the
Qt-free, tested logic; this file only moves values between widgets and the logic. Background
runs are polled with a ``QTimer`` (200 ms), so the GUI never waits on a process.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import ctk
import qt
import slicer
from slicer.parameterNodeWrapper import GuiConnector, parameterNodeGuiConnector, unannotatedType

from GliomaCompareSlicerLib import dependencies
from GliomaCompareSlicerLib.logic import DEMO_JOB, SAMPLE_JOB, CompareLogic
from GliomaCompareSlicerLib.process import CnnRunParams, VlmRunParams, available_commands
from GliomaCompareSlicerLib.selectors import (
    CHANNEL_PARAMETERS,
    guess_channels,
    selection_of_loaded_case,
)

__all__ = ["CompareWidget", "PathLineEditToStrConnector"]

_SHOW = {
    "showGroundTruthCheckBox": "ground_truth",
    "showCnnCheckBox": "cnn",
    "showVlmPointCheckBox": "vlm_point",
    "showVlmBoxCheckBox": "vlm_box",
    "showVlmPolygonCheckBox": "vlm_polygon",
}


@parameterNodeGuiConnector
class PathLineEditToStrConnector(GuiConnector):
    """A ``ctkPathLineEdit`` bound to a ``str`` parameter: an unset path stays "" (a
    ``pathlib.Path`` parameter shows an unset path as ".")."""

    @staticmethod
    def canRepresent(widget, datatype) -> bool:
        return isinstance(widget, ctk.ctkPathLineEdit) and unannotatedType(datatype) is str

    @staticmethod
    def create(widget, datatype):
        ok = PathLineEditToStrConnector.canRepresent(widget, datatype)
        return PathLineEditToStrConnector(widget) if ok else None

    def __init__(self, widget):
        super().__init__()
        self._widget = widget

    def _connect(self):
        self._widget.currentPathChanged.connect(self.changed)

    def _disconnect(self):
        self._widget.currentPathChanged.disconnect(self.changed)

    def widget(self):
        return self._widget

    def read(self):
        return self._widget.currentPath

    def write(self, value) -> None:
        self._widget.currentPath = value or ""


def _empty_table(table) -> None:
    """Remove every row of a ``QTableWidget`` (``clear()`` alone keeps the row count, so the
    previous case's rows stayed as blank rows above the new ones)."""
    table.clearContents()
    table.setRowCount(0)


def _is_set(path) -> bool:
    return path is not None and str(path) not in ("", ".")


class CompareWidget:
    """Connects the ``.ui`` widgets (``ui``) and the parameter node to a :class:`CompareLogic`."""

    def __init__(self, ui, parameter_node_getter, logic: CompareLogic):
        self.ui = ui
        self.params = parameter_node_getter
        self.logic = logic
        self.job = None
        self.shown_rows = []
        self.timer = qt.QTimer()
        self.timer.setInterval(200)
        self.timer.connect("timeout()", self.poll_job)
        try:
            self.commands = available_commands()
        except Exception as exc:  # the library itself failed to import: say so, keep the GUI
            self.commands = set()
            self.append_log(f"GliomaCompareLib could not be imported: {exc}")
        ui.openDataButton.connect("clicked()", self.open_data)
        ui.openRunButton.connect("clicked()", self.open_run)
        ui.sortMetricComboBox.connect("currentIndexChanged(int)", self.refresh_table)
        ui.worstFirstCheckBox.connect("toggled(bool)", self.refresh_table)
        ui.caseTableWidget.connect("cellDoubleClicked(int,int)", lambda r, c: self.load_selected())
        ui.loadCaseButton.connect("clicked()", self.load_selected)
        ui.useSceneVolumesButton.connect("clicked()", self.use_scene_volumes)
        ui.previousButton.connect("clicked()", lambda: self.step(-1))
        ui.nextButton.connect("clicked()", lambda: self.step(1))
        ui.runCnnButton.connect("clicked()", self.run_cnn)
        ui.runVlmButton.connect("clicked()", self.run_vlm)
        ui.cancelButton.connect("clicked()", self.cancel_job)
        ui.jumpButton.connect("clicked()", self.jump)
        ui.saveButton.connect("clicked()", self.save)
        for name, method in _SHOW.items():
            getattr(ui, name).connect(
                "toggled(bool)", lambda on, m=method: self.logic.set_method_visible(m, on)
            )
        ui.showThreeDCheckBox.connect("toggled(bool)", self.logic.set_show_3d)
        ui.sampleCaseButton.connect("clicked()", self.sample_case)
        ui.runDemoButton.connect("clicked()", self.run_demo)
        ui.clearCacheButton.connect("clicked()", self.clear_cache)
        # which VLM's answers to show, for a run that compares several (issue 18)
        self.vlmComboBox = qt.QComboBox()
        self.vlmComboBox.toolTip = "Show the answers of one VLM only (runs with several VLMs)"
        show_layout = ui.showVlmPointCheckBox.parentWidget().findChild(qt.QHBoxLayout, "showLayout")
        if show_layout is not None:
            show_layout.addWidget(self.vlmComboBox)
        self.vlmComboBox.connect("currentIndexChanged(int)", lambda _i: self.apply_visibility())
        self.update_buttons()

    # ------------------------------------------------------------------------------ helpers
    def append_log(self, text: str) -> None:
        self.ui.logTextEdit.appendPlainText(text)

    def _guard(self, what: str, func, *args):
        try:
            with slicer.util.tryWithErrorDisplay(f"{what} failed.", waitCursor=True):
                return func(*args)
        except Exception as exc:  # shown to the user by tryWithErrorDisplay
            self.append_log(f"{what} failed: {exc}")
            return None

    def _need(self, kind: str) -> bool:
        ok = bool(self._guard("Installing Python packages", dependencies.ensure, kind))
        if not ok:
            needed = ", ".join(dependencies.missing(dependencies.requirements(kind)))
            self.append_log(f"Not installed ({needed or 'torch'}); nothing was started.")
        return ok

    def update_buttons(self) -> None:
        loaded = self.logic.loaded is not None and self.logic.loaded.case is not None
        idle = self.job is None
        p = self.params()
        can_cnn = "predict-cnn" in self.commands
        self.ui.runCnnButton.enabled = (
            loaded and idle and can_cnn and p is not None and _is_set(p.cnnModelFolder)
        )
        self.ui.runCnnButton.toolTip = (
            "Run gliomacompare predict-cnn on the loaded case in the background"
            if can_cnn
            else "This GliomaCompareLib has no predict-cnn command yet"
        )
        can_vlm = "vlm" in self.commands
        self.ui.runVlmButton.enabled = loaded and idle and can_vlm
        if not can_vlm:
            self.ui.runVlmButton.toolTip = "This GliomaCompareLib has no vlm command yet"
        self.ui.cancelButton.enabled = not idle
        self.ui.sampleCaseButton.enabled = idle and "synth" in self.commands
        self.ui.runDemoButton.enabled = idle and "demo" in self.commands
        self.ui.clearCacheButton.enabled = idle  # never under a running job's feet
        self.ui.jumpButton.enabled = self.ui.markerComboBox.count > 0
        self.ui.saveButton.enabled = self.logic.loaded is not None or bool(self.logic.results)

    # ---------------------------------------------------------------------------- the cases
    def open_data(self) -> None:
        p = self.params()
        if not _is_set(p.dataFolder) or not self._need("load"):
            return
        if (
            self._guard("Opening the BraTS folder", self.logic.open_data, str(p.dataFolder))
            is not None
        ):
            self.after_open()

    def open_run(self) -> None:
        p = self.params()
        if not _is_set(p.runFolder) or not self._need("load"):
            return
        data = str(p.dataFolder) if _is_set(p.dataFolder) else None
        if (
            self._guard("Opening the run folder", self.logic.open_run, str(p.runFolder), data)
            is not None
        ):
            self.after_open()

    def after_open(self) -> None:
        for note in self.logic.notes:
            self.append_log(note)
        combo = self.ui.sortMetricComboBox
        combo.blockSignals(True)
        combo.clear()
        combo.addItem("(case id)")
        for name in self.logic.score_names():
            combo.addItem(name)
        combo.blockSignals(False)
        self.refresh_table()

    def refresh_table(self, *_args) -> None:
        metric = self.ui.sortMetricComboBox.currentText
        metric = None if metric in ("", "(case id)") else metric
        self.shown_rows = self.logic.sorted_rows(metric, bool(self.ui.worstFirstCheckBox.checked))
        scores = self.logic.score_names()
        columns = ["case", "grade", "usable", *scores]
        table = self.ui.caseTableWidget
        table.clear()
        table.setColumnCount(len(columns))
        table.setRowCount(len(self.shown_rows))
        table.setHorizontalHeaderLabels(columns)
        for r, row in enumerate(self.shown_rows):
            values = [
                row.case_id,
                row.grade or "?",
                "yes" if row.usable else "NO: " + "; ".join(row.problems),
            ]
            for name in scores:
                v = row.score(name)
                values.append("" if math.isnan(v) else f"{v:.4g}")
            for c, text in enumerate(values):
                table.setItem(r, c, qt.QTableWidgetItem(text))
        table.resizeColumnsToContents()

    def selected_case(self) -> str | None:
        row = self.ui.caseTableWidget.currentRow()
        if 0 <= row < len(self.shown_rows):
            return self.shown_rows[row].case_id
        return None

    def step(self, step: int) -> None:
        from GliomaCompareSlicerLib.cases import neighbour

        current = self.logic.loaded.case_id if self.logic.loaded else self.selected_case()
        case_id = neighbour(self.shown_rows, current, step)
        if case_id is None:
            return
        index = [r.case_id for r in self.shown_rows].index(case_id)
        self.ui.caseTableWidget.selectRow(index)
        self.load(case_id)

    def load_selected(self) -> None:
        case_id = self.selected_case()
        if case_id is not None:
            self.load(case_id)

    def load(self, case_id: str) -> None:
        if not self._need("load"):
            return
        self.ui.markerComboBox.clear()
        _empty_table(self.ui.metricsTableWidget)
        self.ui.predictionsLabel.text = "-"
        loaded = None
        if self.logic.cohort is not None:
            loaded = self._guard(f"Loading {case_id}", self.logic.load_case, case_id)
        else:
            self.logic.clear()
        if loaded is not None:
            layout = slicer.app.layoutManager()
            layout.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView)
            slicer.util.setSliceViewerLayers(background=loaded.volumes.get("flair"), fit=True)
            self.logic.jump_to(loaded.focus_ras)
            self.ui.caseInfoLabel.text = f"{case_id} ({loaded.grade or 'grade unknown'})"
            self._show_in_selectors(selection_of_loaded_case(loaded))
        if self.logic.run_dir is not None:
            results = self._guard(
                f"Loading the run's results for {case_id}", self.logic.load_run_results, case_id
            )
            if results is not None:
                self.show_results(results)
        self.apply_visibility()
        self.update_buttons()

    def _show_in_selectors(self, selection: dict) -> None:
        """Write parameter name -> node into the "Patient in the scene" selectors."""
        p = self.params()
        if p is not None:
            for name, node in selection.items():
                setattr(p, name, node)

    def use_scene_volumes(self) -> None:
        """The four volumes (and reference) picked in "Patient in the scene" become the case;
        with none picked, they are guessed from the volumes' names first (and said so)."""
        p = self.params()
        if all(getattr(p, n) is None for n in CHANNEL_PARAMETERS.values()):
            nodes = slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
            guessed = guess_channels(nodes)
            self._show_in_selectors({CHANNEL_PARAMETERS[c]: n for c, n in guessed.items()})
            for channel, node in guessed.items():
                self.append_log(f"{channel.upper()}: guessed {node.GetName()} from its name")
        volumes = {"flair": p.flairVolume, "t1": p.t1Volume, "t1ce": p.t1ceVolume, "t2": p.t2Volume}
        name = volumes["flair"].GetName() if volumes["flair"] is not None else "Patient"
        loaded = self._guard(
            "Using the scene volumes",
            self.logic.use_scene_volumes,
            volumes,
            p.referenceSegmentation,
            name,
        )
        self.ui.markerComboBox.clear()
        _empty_table(self.ui.metricsTableWidget)
        self.ui.predictionsLabel.text = "-"
        if loaded is not None:
            labels = "reference labels" if loaded.ground_truth is not None else "no labels"
            text = f"{loaded.case_id} (from the scene, {labels})"
            self.ui.caseInfoLabel.text = "; ".join([text, *loaded.notes])
            for note in loaded.notes:
                self.append_log(note)
        self.update_buttons()

    # ------------------------------------------------------------------------------- runs
    def _start(self, name: str, kind: str, starter, *args) -> None:
        if not self._need(kind):
            return
        job = self._guard(f"Starting {name}", starter, *args)
        if job is None:
            return
        self.job = job
        self.append_log("$ " + " ".join(job.argv))
        self.ui.progressBar.setRange(0, 0)  # busy until the first progress line
        self.timer.start()
        self.update_buttons()

    def run_cnn(self) -> None:
        p = self.params()
        params = self._guard("CNN settings", lambda: CnnRunParams(str(p.cnnModelFolder), p.device))
        if params is not None:
            self._start("the CNN", "cnn", self.logic.start_cnn, self.logic.loaded.case_id, params)

    def run_vlm(self) -> None:
        p = self.params()
        tasks = tuple(
            t
            for t, on in (
                ("grade", p.taskGrade),
                ("point", p.taskPoint),
                ("box", p.taskBox),
                ("polygon", p.taskPolygon),
            )
            if on
        )

        def make():
            return VlmRunParams(
                backend=p.vlmBackend,
                tasks=tasks,
                model=p.vlmModel,
                base_url=p.vlmBaseUrl,
                allow_remote=p.vlmAllowRemote,
                adapter=str(p.vlmAdapter) if _is_set(p.vlmAdapter) else "",
                runs=p.vlmRuns,
                temperature=p.vlmTemperature,
                slices_per_case=p.slicesPerCase,
                device=p.device,
            )

        params = self._guard("VLM settings", make)
        if params is None:
            return
        slices = self._guard("Choosing the VLM's slices", self.logic.vlm_slices, p.vlmSlices)
        if slices is not None:
            self.append_log(f"VLM: asking about {slices.describe}")
            self._start(
                "the VLM", "vlm", self.logic.start_vlm, self.logic.loaded.case_id, params, slices
            )

    def poll_job(self) -> None:
        job = self.job
        if job is None:
            self.timer.stop()
            return
        for line in job.poll():
            self.append_log(line)
        if job.progress is not None and job.progress.fraction is not None:
            self.ui.progressBar.setRange(0, 1000)
            self.ui.progressBar.setValue(int(1000 * job.progress.fraction))
            self.ui.progressBar.setFormat(job.progress.text)
        if not job.done:
            return
        self.timer.stop()
        self.job = None
        self.ui.progressBar.setRange(0, 1000)
        self.ui.progressBar.setValue(1000 if job.succeeded else 0)
        self.append_log(job.summary())
        if job.name in (SAMPLE_JOB, DEMO_JOB):
            if job.succeeded:
                self.open_first_time_results(job)
        elif job.succeeded and self.logic.loaded is None:
            self.append_log(f"{job.name}: finished, but no case is loaded any more; not loaded")
        elif job.succeeded:
            results = self._guard(
                f"Loading the {job.name} results", self.logic.load_job_results, job
            )
            if results is not None:
                self.show_results(results)
                self.apply_visibility()
        self.update_buttons()

    # ------------------------------------------------------- first-time path: sample, demo
    def sample_case(self) -> None:
        """Make a synthetic BraTS case in the background; it loads when done (also the action
        of the module's Sample Data entry)."""
        if self.job is not None:
            self.append_log("A background run is going on; try again when it finished.")
            return
        self._start("the sample case", "sample", self.logic.start_sample_case)

    def run_demo(self) -> None:
        """The ``demo`` preset in the background; its run folder opens when done."""
        self._start("the demo", "demo", self.logic.start_demo)

    def open_first_time_results(self, job) -> None:
        """A finished sample case is opened and loaded; a finished demo's run folder opened."""
        p = self.params()
        if job.name == SAMPLE_JOB:
            if p is not None:
                p.dataFolder = str(job.out_dir)
            rows = self._guard("Opening the sample case", self.logic.open_sample_case, job.out_dir)
            if rows:
                self.after_open()
                self.load(rows[0].case_id)
            return
        if p is not None:
            p.runFolder = str(job.out_dir)
        if self._guard("Opening the demo run", self.logic.open_run, job.out_dir) is not None:
            self.after_open()
            self.append_log(f"demo: report in {Path(job.out_dir) / 'report.html'}")

    # ----------------------------------------------------------------------------- caches
    def clear_cache(self) -> None:
        """Delete the module's cache folders after asking (see ``caches``)."""
        if self.job is not None:
            return
        if not self.logic.cache_folders():
            self.append_log("Nothing cached.")
            return
        removed = self._guard(
            "Clearing the cache", self.logic.clear_caches, slicer.util.confirmOkCancelDisplay
        )
        if removed:
            self.append_log("Deleted " + ", ".join(str(p) for p in removed))
            if self.logic.cohort is None:
                self.after_open()  # the case list read from a deleted folder is gone

    def cancel_job(self) -> None:
        if self.job is not None:
            self.job.cancel()
            self.poll_job()

    # ----------------------------------------------------------------------------- results
    def show_results(self, results) -> None:
        for note in results.notes:
            self.append_log(note)
        self._fill_vlm_choices()
        lines = []
        for method, pred in sorted(results.predictions.items()):
            parts = [
                f"{k} {html.escape(str(v if not isinstance(v, float) else round(v, 3)))}"
                for k, v in pred.items()
            ]
            lines.append(f"<b>{html.escape(method)}</b>: " + ", ".join(parts))
        if lines:
            old = self.ui.predictionsLabel.text
            self.ui.predictionsLabel.text = "<br>".join(
                ([old] if old not in ("", "-") else []) + lines
            )
        combo = self.ui.markerComboBox
        for marker in results.markers:
            combo.addItem(marker.label, list(marker.ras))
        if results.table is not None:
            from GliomaCompareSlicerLib.mrml import rows_from_table_node

            table = self.ui.metricsTableWidget
            rows = rows_from_table_node(results.table)
            start = table.rowCount
            table.setColumnCount(3)
            table.setHorizontalHeaderLabels(["score", "value", "source"])
            table.setRowCount(start + len(rows))
            for r, row in enumerate(rows):
                value = row["value"]
                text = row["text"] or ("" if math.isnan(value) else f"{value:.4g}")
                for c, cell in enumerate((str(row["metric"]), text, str(row["source"]))):
                    table.setItem(start + r, c, qt.QTableWidgetItem(cell))
            table.resizeColumnsToContents()
        self.update_buttons()

    def _fill_vlm_choices(self) -> None:
        """The VLM selector: all VLMs, then each VLM whose answers are in the scene."""
        current = self.vlmComboBox.currentData
        self.vlmComboBox.blockSignals(True)
        self.vlmComboBox.clear()
        self.vlmComboBox.addItem("All VLMs", None)
        for source in self.logic.vlm_sources():
            self.vlmComboBox.addItem(f"VLM {source}", source)
        index = self.vlmComboBox.findData(current) if current is not None else 0
        self.vlmComboBox.setCurrentIndex(max(index, 0))
        self.vlmComboBox.blockSignals(False)

    def apply_visibility(self) -> None:
        for name, method in _SHOW.items():
            self.logic.set_method_visible(method, bool(getattr(self.ui, name).checked))
        self.logic.show_only_vlm(self.vlmComboBox.currentData)
        if self.ui.showThreeDCheckBox.checked:
            self.logic.set_show_3d(True)

    def jump(self) -> None:
        ras = self.ui.markerComboBox.itemData(self.ui.markerComboBox.currentIndex)
        if ras:
            self.logic.jump_to([float(v) for v in ras])

    def save(self) -> None:
        p = self.params()
        if not _is_set(p.saveFolder):
            slicer.util.warningDisplay("Choose a folder to save to first.")
            return
        case_id = self.logic.loaded.case_id if self.logic.loaded else "case"
        written = self._guard("Saving", self.logic.save_case, Path(str(p.saveFolder)) / case_id)
        if written:
            self.append_log(f"saved {len(written)} files; open {written['scene']} in Slicer")

    def scene_closing(self) -> None:
        """The scene is being closed: its nodes go, so the loaded case, its results, markers and
        scores go too (the logic forgets its nodes on the same event); a running arm is
        cancelled, since its results would have no case to go to."""
        self.logic.forget_nodes()
        if self.job is not None and not self.job.done:
            self.job.cancel()
            self.append_log(f"{self.job.name}: cancelled, the scene was closed")
        self.ui.markerComboBox.clear()
        _empty_table(self.ui.metricsTableWidget)
        self.ui.predictionsLabel.text = "-"
        self.ui.caseInfoLabel.text = "-"
        self.update_buttons()

    def cleanup(self) -> None:
        self.timer.stop()
        if self.job is not None and not self.job.done:
            self.job.cancel()
        self.job = None
        self.logic.close()
