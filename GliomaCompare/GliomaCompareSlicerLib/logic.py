"""The module's logic, without Qt: case list, loading a case and results into the scene, running
the CNN / VLM arms in a background process, showing / hiding methods, jumping to answers, saving.

The GUI (``GliomaCompare.py``) and ``Scripts/batch.py`` both drive this class; under slicer-core it
runs in plain Python. Collaborators are injected: ``runner`` (a
:class:`~GliomaCompareSlicerLib.process.ProcessRunner`, default :class:`SubprocessRunner`).
"""

from __future__ import annotations

import csv
import fnmatch
import json
import math
import os
import shutil
import tempfile
import time
import weakref
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from GliomaCompareSlicerLib import caches, grids, mrml, paths
from GliomaCompareSlicerLib import cases as case_table
from GliomaCompareSlicerLib.process import (
    CnnRunParams,
    Job,
    ProcessRunner,
    SubprocessRunner,
    VlmRunParams,
    cnn_predict_command,
    vlm_command,
)
from GliomaCompareSlicerLib.vlmslices import (
    SLICE_CHOICES,
    SliceChoice,
    slice_index_on_screen,
    write_selection,
)

paths.ensure_library_importable()

from GliomaCompareLib import slicer_files  # noqa: E402
from GliomaCompareLib.data.case import Case, load_case  # noqa: E402
from GliomaCompareLib.data.conventions import load_convention  # noqa: E402
from GliomaCompareLib.data.discovery import discover_cases  # noqa: E402
from GliomaCompareLib.data.io import write_nifti  # noqa: E402
from GliomaCompareLib.data.slices import SliceGeometry  # noqa: E402
from GliomaCompareLib.data.synthetic import DATA_DIR_NAME as SYNTH_DATA_DIR  # noqa: E402

__all__ = [
    "DEMO_JOB",
    "METHODS",
    "SAMPLE_JOB",
    "CompareLogic",
    "LoadedCase",
    "LoadedResults",
    "Marker",
]

#: Methods whose nodes can be shown / hidden, with the GUI's names.
METHODS = {
    "ground_truth": "Ground truth",
    "cnn": "CNN",
    "vlm_point": "VLM point",
    "vlm_box": "VLM box",
    "vlm_polygon": "VLM polygon",
}
_TINY_LABEL = "tiny random-weight model"
#: Names of the first-time jobs (the GUI opens their results itself) and their folders.
SAMPLE_JOB, DEMO_JOB = "Sample case", "Demo"
SAMPLE_DIR, DEMO_DIR = "sample", "demo"


@dataclass(frozen=True)
class Marker:
    """A place to jump to: a VLM answer (or other result) at a RAS point on a slice."""

    label: str
    method: str
    ras: tuple[float, float, float]


@dataclass(frozen=True, eq=False)
class LoadedCase:
    """A case shown in the scene.

    Attributes:
        case: the library :class:`~GliomaCompareLib.data.case.Case` (None when only results
            from a run folder were loaded, without the images).
        case_id, grade: the case and its true grade.
        volumes: channel -> volume node (``flair`` is the background).
        ground_truth: segmentation node (segments by label) or None.
        focus_ras: RAS of the tumour's centre on its largest axial slice (image centre without
            a label map); the slice views are moved there.
        notes: what was done to the inputs (volumes resampled onto the FLAIR's grid).
    """

    case_id: str
    grade: str | None
    case: Case | None
    volumes: dict
    ground_truth: object | None
    focus_ras: tuple[float, float, float]
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class LoadedResults:
    """Results of one method run (or a run folder) on a case, as nodes.

    Attributes:
        case_id: the case.
        source: the folder the results were read from.
        nodes: method -> nodes.
        table: table node with every score (``metric, value, source``) or None.
        predictions: method -> ``{"grade": ..., "p_hgg": ..., "votes": ...}``.
        markers: VLM answers (and other places) to jump to.
        notes: what was skipped or odd (file + reason); shown in the log.
    """

    case_id: str
    source: Path
    nodes: dict[str, list] = field(default_factory=dict)
    table: object | None = None
    predictions: dict[str, dict] = field(default_factory=dict)
    markers: list[Marker] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _method_of_file(name: str) -> str:
    stem = name.split(".")[0]
    return {"ground_truth": "ground_truth", "cnn": "cnn"}.get(stem, stem)


class CompareLogic:
    """Case list, loading, background runs and display of results (see the module docstring).

    Args:
        scene: MRML scene (default: ``slicer.mrmlScene``, prepared by :func:`mrml.setup_scene`).
        runner: starts background processes (default :class:`SubprocessRunner`).
        convention: label convention of the data.
        work_root: where live runs write (default: a ``GliomaCompare`` temp folder).
    """

    def __init__(
        self,
        scene=None,
        runner: ProcessRunner | None = None,
        convention="brats2020",
        work_root: str | Path | None = None,
    ):
        self.scene = mrml.setup_scene(scene)
        self.runner = runner or SubprocessRunner()
        self.convention = load_convention(convention)
        self.work_root = Path(work_root or Path(tempfile.gettempdir()) / "GliomaCompare")
        self.cohort = None
        self.rows: list[case_table.CaseRow] = []
        self.run_dir: Path | None = None
        self.notes: list[str] = []
        self.loaded: LoadedCase | None = None
        self.results: list[LoadedResults] = []
        # closing the scene removes every node: forget them before they go, so nothing
        # (Run buttons, saving) keeps using removed nodes
        # (through a weak reference: a scene -> observer -> logic -> scene cycle is collected
        # by Python's GC while VTK still calls the observer, which crashes)
        self._close_tag = self.scene.AddObserver(self.scene.StartCloseEvent, _forget_on(self))

    def forget_nodes(self) -> None:
        """Drop every reference to scene nodes (the loaded case, loaded results), keeping the
        case list and the open folders; called on the scene's ``StartCloseEvent``."""
        self.loaded = None
        self.results = []

    def close(self) -> None:
        """Stop observing the scene (the module widget's cleanup)."""
        if self._close_tag is not None:
            self.scene.RemoveObserver(self._close_tag)
            self._close_tag = None

    # ------------------------------------------------------------------------ the case list
    def open_data(self, data_dir: str | Path) -> list[case_table.CaseRow]:
        """List the cases of a BraTS folder (headers checked, voxels not read: fast).

        Raises:
            FileNotFoundError: when the folder holds no case folders.
        """
        self.cohort = discover_cases(data_dir, self.convention, validate=True, full=False)
        rows = case_table.rows_from_cohort(self.cohort)
        if self.run_dir is not None:
            scores, _ = case_table.read_metrics_tables(self.run_dir / slicer_files.METRICS_DIR)
            rows = case_table.merge_scores(rows, scores)
        self.rows = rows
        self.notes = list(self.cohort.warnings)
        return self.rows

    def open_run(self, run_dir: str | Path, data_dir: str | Path | None = None):
        """List the cases of a finished run folder with each method's scores.

        The images are found through ``data_dir`` or the run's manifest (any ``data`` /
        ``data_dir`` entry naming an existing folder); without them, results still load.

        Raises:
            FileNotFoundError: when ``run_dir`` is not a folder.
        """
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise FileNotFoundError(f"{run_dir}: run folder not found")
        self.run_dir = run_dir
        scores, notes = case_table.read_metrics_tables(run_dir / slicer_files.METRICS_DIR)
        data = Path(data_dir) if data_dir else _data_dir_from_manifest(run_dir)
        rows: list[case_table.CaseRow] = []
        if data is not None:
            try:
                self.cohort = discover_cases(data, self.convention, validate=True, full=False)
                rows = case_table.rows_from_cohort(self.cohort)
            except FileNotFoundError as exc:
                notes.append(f"images not available: {exc}")
                self.cohort = None
        else:
            notes.append(f"{run_dir}: the manifest names no data folder; images will not load")
        cases_dir = run_dir / slicer_files.CASES_DIR
        in_run = (
            sorted(p.name for p in cases_dir.iterdir() if p.is_dir()) if cases_dir.is_dir() else []
        )
        for case_id in in_run:
            scores.setdefault(case_id, {})
        self.rows = case_table.merge_scores(rows, scores)
        self.notes = notes
        return self.rows

    def sorted_rows(self, metric: str | None, worst_first: bool = True):
        """The case list ordered by a score (worst first by default)."""
        return case_table.sort_rows(self.rows, metric, worst_first)

    def score_names(self) -> list[str]:
        return case_table.score_names(self.rows)

    def row(self, case_id: str) -> case_table.CaseRow:
        for r in self.rows:
            if r.case_id == case_id:
                return r
        raise KeyError(f"case {case_id!r} is not in the case list")

    # ------------------------------------------------------------------------------ loading
    def clear(self) -> None:
        """Remove every node this module made."""
        mrml.remove_nodes(mrml.case_nodes(self.scene))
        self.forget_nodes()

    def load_case(self, case_id: str) -> LoadedCase:
        """Load a case's four modalities (FLAIR as background) and ground truth; the slice views
        move to the tumour. Nodes of the previous case are removed.

        Raises:
            KeyError: for a case not in the open folder.
            ValueError: (:class:`~GliomaCompareLib.data.case.CaseLoadError`) naming the case, file
                and reason when it cannot be loaded.
        """
        if self.cohort is None:
            raise ValueError("open a BraTS folder (or a run whose manifest names one) first")
        record = self.cohort.get(case_id)
        case = load_case(record, self.convention)
        self.clear()
        volumes = {}
        for channel in case.channels:
            node = mrml.volume_node_from_array(
                case.modality(channel),
                case.affine,
                f"{case_id} {channel.upper()}",
                scene=self.scene,
            )
            volumes[channel] = mrml.tag_node(node, case_id, "image")
        gt = None
        if case.label is not None:
            gt = mrml.segmentation_node_from_label_map(
                case.label, case.affine, self.convention, "Ground truth", scene=self.scene
            )
            mrml.tag_node(gt, case_id, "ground_truth")
            gt.SetReferenceImageGeometryParameterFromVolumeNode(volumes[case.channels[0]])
        focus = focus_point(case)
        background = volumes.get("flair") or volumes[case.channels[0]]
        mrml.show_in_slice_views(self.scene, background=background)
        mrml.jump_slices(self.scene, focus, centered=True)
        self.loaded = LoadedCase(case_id, case.grade, case, volumes, gt, focus)
        return self.loaded

    def use_scene_volumes(
        self,
        volumes: Mapping[str, object],
        reference=None,
        case_id: str = "Patient",
        grade: str | None = None,
    ) -> LoadedCase:
        """Use volumes already in the scene (any patient, e.g. loaded from DICOM) as the case the
        arms run on: ``volumes`` maps each channel of the convention (``flair, t1, t1ce, t2``) to
        a volume node, ``reference`` is an optional segmentation with reference labels (read on
        the FLAIR grid). The nodes stay the user's: they are neither tagged nor removed; other
        nodes this module made are. ``case_id`` gets the convention's folder prefix where it
        lacks it (``Patient`` -> ``BraTS20_Patient``), so the arms' commands find the case.

        A volume on another grid than the FLAIR's (other spacing, extent or orientation, as DICOM
        series often are) is resampled onto the FLAIR's grid (trilinear, exact affine map; the
        volumes must be aligned in RAS); :attr:`LoadedCase.notes` says which.

        Raises:
            ValueError: naming the channel without a volume, or the volume that does not overlap
                the FLAIR at all.
        """
        case_id = _fitting_case_id(case_id, self.convention.case_dir_glob)
        channels = self.convention.channels
        absent = [c.upper() for c in channels if volumes.get(c) is None]
        if absent:
            raise ValueError(f"choose a volume for {', '.join(absent)}")
        first = volumes[channels[0]]
        arrays, affine, notes = _arrays_on_one_grid(volumes, channels)
        label = None
        if reference is not None:
            label = mrml.label_map_from_segmentation_node(reference, first, self.convention.name)
        keep = {volumes[c].GetID() for c in channels}
        if reference is not None:  # e.g. a loaded case's ground truth, picked in the selector
            keep.add(reference.GetID())
        mrml.remove_nodes([n for n in mrml.case_nodes(self.scene) if n.GetID() not in keep])
        case = Case(
            case_id,
            grade,
            np.stack(arrays),
            label,
            affine,
            tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0)),
            tuple(channels),
            self.convention,
        )
        focus = focus_point(case)
        mrml.jump_slices(self.scene, focus, centered=True)
        self.forget_nodes()
        self.loaded = LoadedCase(case_id, grade, case, dict(volumes), reference, focus, notes)
        return self.loaded

    def reference_volume(self):
        """The loaded case's FLAIR node (the grid results are compared on), or None."""
        if self.loaded is None or not self.loaded.volumes:
            return None
        return self.loaded.volumes.get("flair") or next(iter(self.loaded.volumes.values()))

    def load_run_results(self, case_id: str, run_dir: str | Path | None = None) -> LoadedResults:
        """Load what a finished run wrote for a case (``cases/<id>/``), without recomputing:
        ``cnn.seg.nrrd`` as segmentation "CNN", the VLM markups, the ground truth when no images
        are loaded, ``metrics.json`` and the case's rows of ``metrics/*.csv`` as a table.

        Raises:
            FileNotFoundError: when the run has no folder for the case.
        """
        run_dir = Path(run_dir or self.run_dir or "")
        folder = slicer_files.case_dir(run_dir, case_id)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: the run has no results for {case_id}")
        results = LoadedResults(case_id, folder)
        have_gt = self.loaded is not None and self.loaded.ground_truth is not None
        for path in sorted(folder.glob("*.seg.nrrd")):
            method = _method_of_file(path.name)
            if method == "ground_truth" and have_gt and self.loaded.case_id == case_id:
                continue
            name = {"cnn": "CNN", "ground_truth": "Ground truth"}.get(
                method, path.name.split(".")[0]
            )
            try:
                node = mrml.load_segmentation_file(path, name, scene=self.scene)
            except OSError as exc:
                results.notes.append(str(exc))
                continue
            results.nodes.setdefault(method, []).append(mrml.tag_node(node, case_id, method))
        for path in sorted(folder.glob("*.mrk.json")):
            method = _method_of_file(path.name)
            try:
                nodes = mrml.load_markups_file(path, scene=self.scene)
            except OSError as exc:
                results.notes.append(str(exc))
                continue
            for node in nodes:
                results.nodes.setdefault(method, []).append(mrml.tag_node(node, case_id, method))
                results.markers.extend(_markers_of(node, method))
        flat: dict[str, float | str] = {}
        metrics_file = folder / slicer_files.CASE_METRICS_FILE
        if metrics_file.is_file():
            try:
                flat = case_table.flatten(json.loads(metrics_file.read_text(encoding="utf-8")))
            except (OSError, json.JSONDecodeError) as exc:
                results.notes.append(f"{metrics_file}: unreadable ({exc})")
        table_rows = [
            {"metric": k, "value": v, "source": slicer_files.CASE_METRICS_FILE}
            for k, v in flat.items()
        ]
        try:
            row_scores = self.row(case_id).scores
        except KeyError:
            row_scores = {}
        table_rows += [
            {"metric": k, "value": v, "source": slicer_files.METRICS_DIR}
            for k, v in row_scores.items()
            if k not in flat
        ]
        # the run's tables first, then metrics.json (the case's own file) where both say
        for source in (case_table.predictions_from(row_scores), case_table.predictions_from(flat)):
            for method, values in source.items():
                results.predictions.setdefault(method, {}).update(values)
        results = self._finish(results, table_rows, f"{case_id} run metrics")
        self.results.append(results)
        return results

    def _finish(self, results: LoadedResults, rows: list[dict], name: str) -> LoadedResults:
        """Add the scores table (``metric, value, text, source``: numbers in ``value``, words
        such as grades in ``text``, so the value column stays numeric for sorting / plots)."""
        if rows:
            rows = [
                {
                    "metric": r["metric"],
                    "value": float(r["value"]) if _is_number(r["value"]) else math.nan,
                    "text": "" if _is_number(r["value"]) else str(r["value"]),
                    "source": r["source"],
                }
                for r in rows
            ]
            columns = ["metric", "value", "text", "source"]
            table = mrml.table_node_from_rows(rows, name, columns, self.scene)
            mrml.tag_node(table, results.case_id, "metrics")
            results = LoadedResults(
                results.case_id,
                results.source,
                results.nodes,
                table,
                results.predictions,
                results.markers,
                results.notes,
            )
            results.nodes.setdefault("metrics", []).append(table)
        return results

    # ---------------------------------------------------------------------- background runs
    def prepare_case_data(self, case_id: str, work: Path) -> Path:
        """A data folder holding only ``case_id`` (linked, or copied where links fail) and its
        ``name_mapping.csv`` row, so the CLI arms run on the loaded case alone."""
        loaded = self.loaded
        if loaded is not None and loaded.case_id == case_id and not loaded.case.paths:
            return self._write_case_data(loaded.case, work / "data")
        if self.cohort is None:
            raise ValueError("open a BraTS folder first")
        record = self.cohort.get(case_id)
        data = work / "data"
        data.mkdir(parents=True, exist_ok=True)
        target = data / record.folder.name
        if not target.exists():
            try:
                target.symlink_to(record.folder.resolve(), target_is_directory=True)
            except OSError:
                shutil.copytree(record.folder, target)
        conv = self.convention
        with (data / conv.name_mapping_file).open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow([conv.id_column, conv.grade_column])
            writer.writerow([case_id, record.grade or ""])
        return data

    def _write_case_data(self, case: Case, data: Path) -> Path:
        """A BraTS-layout data folder holding ``case`` (from scene volumes, no files yet)."""
        conv = self.convention
        folder = data / case.case_id
        for channel in case.channels:
            path = folder / f"{conv.file_stem(case.case_id, channel)}.nii.gz"
            write_nifti(path, case.modality(channel), case.affine)
        if case.label is not None:
            path = folder / f"{conv.file_stem(case.case_id, 'seg')}.nii.gz"
            write_nifti(path, case.label, case.affine)
        with (data / conv.name_mapping_file).open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow([conv.id_column, conv.grade_column])
            writer.writerow([case.case_id, case.grade or ""])
        return data

    def _work_dir(self, case_id: str, name: str) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        work = self.work_root / case_id / f"{name}-{stamp}-{os.getpid()}"
        work.mkdir(parents=True, exist_ok=True)
        return work

    def start_cnn(self, case_id: str, params: CnnRunParams) -> Job:
        """Start ``gliomacompare predict-cnn`` on one case in the background."""
        work = self._work_dir(case_id, "cnn")
        data = self.prepare_case_data(case_id, work)
        out = work / "out"
        argv = cnn_predict_command(data, out, params)
        process = self.runner.start(argv, cwd=work, env=paths.cli_environment())
        return Job("CNN", argv, out, case_id, process)

    def start_vlm(
        self, case_id: str, params: VlmRunParams, slices: SliceChoice | None = None
    ) -> Job:
        """Start ``gliomacompare vlm`` on one case in the background, on the slices ``slices``
        chose (see :meth:`vlm_slices`; default: the command's own rule)."""
        work = self._work_dir(case_id, "vlm")
        data = self.prepare_case_data(case_id, work)
        out = work / "out"
        if slices is not None:
            params = self._with_slices(params, slices, work, case_id)
        argv = vlm_command(data, out, params)
        env = paths.cli_environment()
        if params.device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
        process = self.runner.start(argv, cwd=work, env=env)
        job = Job("VLM", argv, out, case_id, process)
        job.backend = params.backend  # type: ignore[attr-defined]
        job.slices = slices.describe if slices is not None else ""  # type: ignore[attr-defined]
        return job

    # ------------------------------------------------------------------- the VLM's slices
    def vlm_slices(self, choice: str, slice_node=None) -> SliceChoice:
        """The slices the VLM is asked about for a panel choice (:data:`SLICE_CHOICES`):
        ``reference`` (the command's default: the reference tumour slices, label-free without
        labels), ``screen`` (the slice ``slice_node`` shows, default the Red view), ``cnn`` (the
        CNN segmentation of the case in the scene: the slices where it sees tumour) or ``brain``.

        Raises:
            ValueError: without a loaded case, for an unknown choice, a view not on an axial
                slice of the case, or ``cnn`` without a CNN segmentation with tumour in the scene.
        """
        if choice not in SLICE_CHOICES:
            raise ValueError(f"VLM slices {choice!r}: use one of {', '.join(SLICE_CHOICES)}")
        loaded = self.loaded
        if loaded is None or loaded.case is None:
            raise ValueError("load a case first: the VLM is asked about its slices")
        case = loaded.case
        if choice == "reference":
            what = SLICE_CHOICES["reference"] if case.label is not None else "brain slices"
            return SliceChoice("", None, 0, what)
        if choice == "brain":
            return SliceChoice("brain", None, 0, SLICE_CHOICES["brain"])
        if choice == "screen":
            node = slice_node or _red_slice_node(self.scene)
            if node is None:
                raise ValueError("no Red slice view in the scene to take the slice from")
            k = slice_index_on_screen(node, self.reference_volume())
            return SliceChoice(describe=f"the slice on screen (k={k})", slices=(k,))
        segs = [
            n
            for n in mrml.case_nodes(self.scene, loaded.case_id, "cnn")
            if n.IsA("vtkMRMLSegmentationNode")
        ]
        if not segs:
            raise ValueError(
                f"no CNN segmentation of {loaded.case_id} in the scene: run the CNN first"
            )
        label = mrml.label_map_from_segmentation_node(
            segs[-1], self.reference_volume(), self.convention.name
        )
        if not np.isin(label, self.convention.regions["WT"]).any():
            raise ValueError(f"the CNN found no tumour in {loaded.case_id}; choose brain slices")
        return SliceChoice("cnn", label, 0, SLICE_CHOICES["cnn"])

    def _with_slices(
        self, params: VlmRunParams, slices: SliceChoice, work: Path, case_id: str
    ) -> VlmRunParams:
        """``params`` with the slice rule of ``slices``; its label map (if any) written where the
        command's ``--cnn-pred`` reads it."""
        cnn_pred = ""
        if slices.label_map is not None:
            folder = work / "slices"
            write_selection(folder, case_id, slices.label_map, self.loaded.case.affine)
            cnn_pred = str(folder)
        return replace(
            params,
            slice_rule=slices.slice_rule,
            cnn_pred=cnn_pred,
            slices_per_case=0 if slices.slices else slices.max_slices or params.slices_per_case,
            slices=((case_id, slices.slices),) if slices.slices else (),
        )

    def start_command(self, name: str, args: Sequence[str], cwd: str | Path | None = None) -> Job:
        """Start any ``gliomacompare`` sub-command in the background."""
        argv = paths.cli_command(*args)
        return Job(
            name, argv, None, None, self.runner.start(argv, cwd=cwd, env=paths.cli_environment())
        )

    def load_job_results(self, job: Job) -> LoadedResults:
        """Turn a finished CNN or VLM job's outputs into nodes (see :meth:`load_cnn_output`,
        :meth:`load_vlm_output`).

        Raises:
            RuntimeError: when the job failed or was cancelled (with the last log lines).
        """
        if not job.done:
            raise RuntimeError(f"{job.name} is still running")
        if not job.succeeded:
            tail = "\n".join(job.log[-5:])
            raise RuntimeError(f"{job.summary()}; nothing to load. Last output:\n{tail}")
        if job.name == "CNN":
            return self.load_cnn_output(job.case_id, job.out_dir)
        if job.name == "VLM":
            results = self.load_vlm_output(job.case_id, job.out_dir, getattr(job, "backend", ""))
            if getattr(job, "slices", ""):
                results.notes.append(f"VLM asked about {job.slices}")
            return results
        raise ValueError(f"no results to load for a {job.name} job")

    def load_cnn_output(self, case_id: str, out_dir: str | Path) -> LoadedResults:
        """Load ``predict-cnn`` outputs for a case: ``<case_id>.nii.gz`` (or ``.seg.nrrd``) as the
        segmentation "CNN" (segments by region, label values kept) and ``grades.csv`` /
        other CSVs as predictions and scores.

        Raises:
            FileNotFoundError: when no label map for the case is in ``out_dir``.
        """
        from GliomaCompareLib.data.io import read_image

        out_dir = Path(out_dir)
        results = LoadedResults(case_id, out_dir)
        candidates = [out_dir / f"{case_id}{ext}" for ext in (".nii.gz", ".nii", ".seg.nrrd")]
        found = [p for p in candidates if p.is_file()]
        if not found:
            raise FileNotFoundError(f"{out_dir}: no {case_id}.nii.gz from predict-cnn")
        if found[0].name.endswith(".seg.nrrd"):
            seg = slicer_files.read_seg_nrrd(found[0], self.convention)
            label, affine = seg.label_map, seg.affine
        else:
            label, meta = read_image(found[0])
            label, affine = np.rint(label).astype(np.uint8), meta.affine
        node = mrml.segmentation_node_from_label_map(
            label,
            affine,
            self.convention,
            "CNN",
            segments="regions",
            scene=self.scene,
            extra_tags={"GliomaCompare.Source": str(found[0].name)},
        )
        results.nodes["cnn"] = [mrml.tag_node(node, case_id, "cnn")]
        scores, notes = case_table.read_metrics_tables(out_dir)
        results.notes.extend(notes)
        flat = {f"cnn.{k}": v for k, v in scores.get(case_id, {}).items()}
        results.predictions.update(case_table.predictions_from(flat))
        rows = [{"metric": k, "value": v, "source": "predict-cnn"} for k, v in flat.items()]
        results = self._finish(results, rows, f"{case_id} CNN")
        self.results.append(results)
        return results

    def load_vlm_output(
        self, case_id: str, out_dir: str | Path, backend: str = ""
    ) -> LoadedResults:
        """Load ``gliomacompare vlm`` outputs for a case: every placed answer in
        ``answers.jsonl`` as markups on its own slice (fiducials "VLM point" with one point per
        slice and run; ROI "VLM box" and closed curve "VLM polygon" per slice), the grade votes
        over slices, and the case's rows of ``metrics/*.csv``.

        Pixel coordinates are mapped with the slice geometry of the loaded case (exact, see
        :class:`~GliomaCompareLib.data.slices.SliceGeometry`).

        Raises:
            FileNotFoundError: without ``answers.jsonl``.
            ValueError: when the case's images are not loaded (needed to place answers).
        """
        out_dir = Path(out_dir)
        answers_file = out_dir / "answers.jsonl"
        if not answers_file.is_file():
            raise FileNotFoundError(f"{answers_file}: not found; did the VLM run finish?")
        if self.loaded is None or self.loaded.case is None or self.loaded.case_id != case_id:
            raise ValueError(f"load {case_id} first: VLM answers are placed on its slices")
        case = self.loaded.case
        answers, bad = case_table.read_answers(answers_file, case_id)
        results = LoadedResults(case_id, out_dir)
        if bad:
            results.notes.append(f"{answers_file}: {bad} lines were not readable answers")
        label = f" ({_TINY_LABEL})" if backend == "tiny" else ""
        placed = _answers_to_markups(answers, case, label, results.notes)
        for method, markups in placed.items():
            for markup in markups:
                node = mrml.markup_node(markup, scene=self.scene)
                results.nodes.setdefault(method, []).append(mrml.tag_node(node, case_id, method))
                results.markers.extend(_markers_of(node, method))
        grades = [a for a in answers if a.task == "grade"]
        votes = Counter(a.grade for a in grades if a.grade)
        rows: list[dict] = []
        if grades:
            failed = sum(1 for a in grades if a.grade is None)
            vote = {
                "votes_hgg": votes.get("HGG", 0),
                "votes_lgg": votes.get("LGG", 0),
                "unanswered": failed,
            }
            if votes:
                top = votes.most_common()
                vote["grade"] = top[0][0] if len(top) == 1 or top[0][1] > top[1][1] else "tie"
            probs = [a.p_hgg for a in grades if a.p_hgg is not None]
            if probs:
                vote["p_hgg"] = float(np.mean(probs))
            results.predictions["vlm"] = vote
            rows += [
                {"metric": f"vlm {k} (from answers.jsonl){label}", "value": v, "source": "vlm"}
                for k, v in vote.items()
            ]
        statuses = Counter(a.status for a in answers)
        rows += [
            {"metric": f"vlm answers {s}", "value": float(n), "source": "answers.jsonl"}
            for s, n in sorted(statuses.items())
        ]
        scores, notes = case_table.read_metrics_tables(out_dir / slicer_files.METRICS_DIR)
        results.notes.extend(notes)
        rows += [
            {"metric": f"vlm {k}{label}", "value": v, "source": "vlm metrics"}
            for k, v in scores.get(case_id, {}).items()
        ]
        results = self._finish(results, rows, f"{case_id} VLM")
        self.results.append(results)
        return results

    # ------------------------------------------------------- first-time path: sample, demo
    def start_sample_case(
        self, out: str | Path | None = None, seed: int = 0, shape: Sequence[int] | None = None
    ) -> Job:
        """Start ``gliomacompare synth`` for one synthetic HGG case in BraTS layout (made on this
        computer, nothing downloaded) in the background; :meth:`open_sample_case` loads it.

        Args:
            out: where to write (default ``<work_root>/sample``); the case folder is
                ``out/MICCAI_BraTS2020_TrainingData`` (the job's ``out_dir``).
            seed: the case's random seed.
            shape: volume shape (default BraTS's 240 x 240 x 155).
        """
        out = Path(out or self.work_root / SAMPLE_DIR)
        out.mkdir(parents=True, exist_ok=True)
        args = ["synth", str(out), "--cases", "1", "--seed", str(seed), "--hgg-fraction", "1"]
        if shape is not None:
            args += ["--shape", ",".join(str(int(v)) for v in shape)]
        job = self.start_command(SAMPLE_JOB, args, cwd=out)
        job.out_dir = out / SYNTH_DATA_DIR
        return job

    def open_sample_case(self, data_dir: str | Path) -> list[case_table.CaseRow]:
        """List the sample case's folder as the open BraTS folder (no run folder: the sample
        has no results yet); its one row is then loaded with :meth:`load_case`.

        Raises:
            FileNotFoundError: when the folder holds no case.
        """
        self.run_dir = None
        return self.open_data(data_dir)

    def start_demo(self, out: str | Path | None = None) -> Job:
        """Start ``gliomacompare demo`` (the ``demo`` preset on a synthetic cohort, CPU) in the
        background; its run folder (the job's ``out_dir``, default ``<work_root>/demo``, resumed
        when run again) opens with :meth:`open_run` once it finished."""
        out = Path(out or self.work_root / DEMO_DIR)
        out.parent.mkdir(parents=True, exist_ok=True)
        job = self.start_command(DEMO_JOB, ["demo", "--out", str(out)], cwd=out.parent)
        job.out_dir = out
        return job

    # ---------------------------------------------------------------------------- caches
    def cache_folders(self) -> list[Path]:
        """The module's cache folders that exist (see :mod:`GliomaCompareSlicerLib.caches`)."""
        return caches.cache_folders(self.work_root)

    def clear_caches(self, confirm) -> list[Path]:
        """Delete the module's cache folders once ``confirm(question)`` says yes; return them.
        A case list read from a deleted folder (the sample case) is closed too."""
        removed = caches.clear_caches(self.cache_folders(), confirm)
        if self.cohort is not None and any(
            Path(self.cohort.root).resolve().is_relative_to(p.resolve()) for p in removed
        ):
            self.cohort, self.rows = None, []
        return removed

    # ------------------------------------------------------------------------------ display
    def set_method_visible(self, method: str, visible: bool) -> int:
        """Show or hide every node of a method (``ground_truth``, ``cnn``, ``vlm_point``, ...;
        a prefix matches too: ``vlm_point`` includes a run's ``vlm_point_finetuned``, ``vlm``
        every VLM answer); return how many nodes changed."""
        nodes = [
            n
            for n in mrml.case_nodes(self.scene)
            if (n.GetAttribute(mrml.ATTR_METHOD) or "").startswith(method)
            and n.IsA("vtkMRMLDisplayableNode")
        ]
        for node in nodes:
            mrml.set_visibility(node, visible)
        return len(nodes)

    def vlm_sources(self) -> list[str]:
        """The VLMs whose answers are in the scene, as their markup files name them: ``base``,
        ``finetuned``, and for a run that compares several VLMs ``base-<name>``,
        ``finetuned-<name>`` (see ``GliomaCompareLib.runlayout.vlm_markup_variant``)."""
        found = (_vlm_source(n.GetAttribute(mrml.ATTR_METHOD)) for n in mrml.case_nodes(self.scene))
        return sorted({source for source in found if source is not None})

    def show_only_vlm(self, source: str | None) -> int:
        """Hide the answers of every VLM but ``source`` (one of :meth:`vlm_sources`; None hides
        nothing); return how many nodes were hidden. Which tasks show stays with
        :meth:`set_method_visible`."""
        if source is None:
            return 0
        nodes = [
            n
            for n in mrml.case_nodes(self.scene)
            if _vlm_source(n.GetAttribute(mrml.ATTR_METHOD)) not in (None, source)
            and n.IsA("vtkMRMLDisplayableNode")
        ]
        for node in nodes:
            mrml.set_visibility(node, False)
        return len(nodes)

    def set_show_3d(self, on: bool) -> int:
        """Show (or hide) every segmentation of the case in 3D views, building its closed
        surface on first use; return how many segmentations changed."""
        nodes = [n for n in mrml.case_nodes(self.scene) if n.IsA("vtkMRMLSegmentationNode")] + [
            n
            for n in [self.loaded.ground_truth if self.loaded else None]
            if n is not None and not n.GetAttribute(mrml.ATTR_CASE)
        ]
        for node in nodes:
            if on:
                node.CreateClosedSurfaceRepresentation()
            if node.GetDisplayNode() is None:
                node.CreateDefaultDisplayNodes()
            node.GetDisplayNode().SetVisibility3D(bool(on))
        return len(nodes)

    def markers(self) -> list[Marker]:
        """Every place results can be jumped to (all loaded results)."""
        return [m for r in self.results for m in r.markers]

    def jump_to(self, marker: Marker | Sequence[float]) -> None:
        """Move the slice views to a marker (e.g. a VLM answer's slice)."""
        ras = marker.ras if isinstance(marker, Marker) else tuple(marker)
        mrml.jump_slices(self.scene, ras, centered=True)

    # ------------------------------------------------------------------------------- saving
    def save_case(self, out_dir: str | Path) -> dict[str, Path]:
        """Save the loaded case and results: segmentations (``.seg.nrrd``), markups
        (``.mrk.json``), tables (``.tsv``), and a scene file ``<case_id>.mrml`` that opens all of
        them in 3D Slicer, with the volumes read from the original image files.

        Everything is written from copies in a separate scene: the user's scene keeps its URL and
        root directory, and its nodes get no storage nodes.

        Returns:
            name -> file written.
        """
        if self.loaded is None and not self.results:
            raise ValueError("nothing is loaded")
        case_id = self.loaded.case_id if self.loaded else self.results[-1].case_id
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        saved = mrml.empty_scene_like(self.scene)
        written: dict[str, Path] = {}
        if self.loaded is not None and self.loaded.case is not None:
            for channel, node in self.loaded.volumes.items():
                source = self.loaded.case.paths.get(channel)
                if source is None:  # a volume from the scene: written next to the scene file
                    copy = mrml.copy_to_scene(node, saved)
                    written[node.GetName()] = mrml.save_node(copy, out / f"{channel}.nrrd")
                    continue
                copy = mrml.copy_to_scene(node, saved)
                storage = saved.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
                storage.SetFileName(str(Path(source).resolve()))
                copy.SetAndObserveStorageNodeID(storage.GetID())
        for stem, node in _file_stems(mrml.case_nodes(self.scene, case_id)):
            if node.IsA("vtkMRMLSegmentationNode"):
                path = out / f"{stem}.seg.nrrd"
            elif node.IsA("vtkMRMLMarkupsNode"):
                path = out / f"{stem}.mrk.json"
            elif node.IsA("vtkMRMLTableNode"):
                path = out / f"{stem}.tsv"
            else:
                continue
            written[node.GetName()] = mrml.save_node(mrml.copy_to_scene(node, saved), path)
        written["scene"] = mrml.commit_scene(saved, out / f"{_safe(case_id)}.mrml")
        saved.Clear(1)
        return written


def _arrays_on_one_grid(volumes: Mapping[str, object], channels):
    """``(arrays, affine, notes)``: the channels' voxels (float32) on the first channel's grid,
    that grid's IJKToRAS, and a note per volume that was resampled onto it (see :func:`GliomaCompareSlicerLib.grids.resample_to_grid`)."""
    first = volumes[channels[0]]
    arrays, notes = [], []
    shape = affine = None
    for channel in channels:
        array, grid = mrml.array_from_volume_node(volumes[channel])
        if shape is None:
            shape, affine = array.shape, grid
        elif not grids.same_grid(array.shape, grid, shape, affine):
            try:
                array = grids.resample_to_grid(array, grid, shape, affine)
            except ValueError as exc:
                raise ValueError(
                    f"{volumes[channel].GetName()} ({channel.upper()}): {exc}"
                ) from exc
            spacing = "x".join(f"{v:.3g}" for v in np.linalg.norm(grid[:3, :3], axis=0))
            notes.append(
                f"{channel.upper()} ({volumes[channel].GetName()}, {spacing} mm) resampled onto "
                f"the {channels[0].upper()} grid of {first.GetName()} (linear)"
            )
        arrays.append(array.astype(np.float32))
    return arrays, affine, tuple(notes)


def _file_stems(nodes) -> list[tuple[str, object]]:
    """(file stem, node) for a case's result nodes (not its images): the run folder's file names
    (``cnn``, ``vlm_box`` ...) where a method has one node, so the folder loads like a run's."""
    nodes = [n for n in nodes if n.GetAttribute(mrml.ATTR_METHOD) != "image"]
    per_method = Counter(n.GetAttribute(mrml.ATTR_METHOD) for n in nodes)
    used: set[str] = set()
    out = []
    for node in nodes:
        method = node.GetAttribute(mrml.ATTR_METHOD)
        stem = method if per_method[method] == 1 and method in METHODS else _safe(node.GetName())
        while stem in used:
            stem += "_"
        used.add(stem)
        out.append((stem, node))
    return out


def _vlm_source(method: str | None) -> str | None:
    """``vlm_point`` -> ``base``, ``vlm_box_finetuned-qwen`` -> ``finetuned-qwen``; None for a
    node that is not a VLM answer."""
    for task in ("point", "box", "polygon"):
        stem = f"vlm_{task}"
        if method == stem:
            return "base"
        if method and method.startswith(stem + "_"):
            return method[len(stem) + 1 :]
    return None


def _shorten(text: str, limit: int = 300) -> str:
    """One line of at most ``limit`` characters (markup descriptions are shown in a table)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _fitting_case_id(case_id: str, pattern: str) -> str:
    """``case_id`` made safe for a folder name and matching ``pattern`` (``BraTS20_*``)."""
    safe = _safe(case_id)
    if fnmatch.fnmatchcase(safe, pattern) or "*" not in pattern:
        return safe
    return pattern.replace("*", safe, 1).replace("*", "").replace("?", "_")


def _red_slice_node(scene):
    """The Red view's slice node (the application's ``vtkMRMLSliceNodeRed``, or any slice node
    whose layout name is Red), or None."""
    node = scene.GetNodeByID("vtkMRMLSliceNodeRed")
    if node is not None:
        return node
    nodes = scene.GetNodesByClass("vtkMRMLSliceNode")
    found = [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())]
    return next((n for n in found if n.GetLayoutName() == "Red"), None)


def _forget_on(logic: CompareLogic):
    """A scene observer calling ``logic.forget_nodes()`` while the logic lives."""
    ref = weakref.ref(logic)

    def observer(caller, event):
        target = ref()
        if target is not None:
            target.forget_nodes()

    return observer


def _is_number(value) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("_") or "node"


def focus_point(case: Case) -> tuple[float, float, float]:
    """RAS (mm) of the whole tumour's centroid on its largest axial slice; the volume centre
    when the case has no label map or an empty one."""
    shape = np.array(case.shape)
    if case.label is not None:
        wt = np.isin(case.label, case.convention.regions["WT"])
        if wt.any():
            geometry = SliceGeometry.axial(case.affine, case.shape, 0)
            axis = geometry.slice_axis
            other = tuple(a for a in range(3) if a != axis)
            k = int(np.argmax(wt.sum(axis=other)))
            coords = np.argwhere(np.take(wt, k, axis=axis))
            centre = np.zeros(3)
            centre[list(other)] = coords.mean(axis=0)
            centre[axis] = k
            ras = case.affine[:3, :3] @ centre + case.affine[:3, 3]
            return tuple(float(v) for v in ras)  # type: ignore[return-value]
    ras = case.affine[:3, :3] @ ((shape - 1) / 2) + case.affine[:3, 3]
    return tuple(float(v) for v in ras)  # type: ignore[return-value]


def _markers_of(node, method: str) -> list[Marker]:
    import slicer

    out = []
    if node.IsA("vtkMRMLMarkupsROINode"):
        center = [0.0, 0.0, 0.0]
        node.GetCenterWorld(center)
        out.append(Marker(node.GetName(), method, tuple(center)))  # type: ignore[arg-type]
    elif node.IsA("vtkMRMLMarkupsClosedCurveNode"):
        points = slicer.util.arrayFromMarkupsControlPoints(node)
        if len(points):
            out.append(Marker(node.GetName(), method, tuple(map(float, points.mean(axis=0)))))  # type: ignore[arg-type]
    elif node.IsA("vtkMRMLMarkupsFiducialNode"):
        points = (
            slicer.util.arrayFromMarkupsControlPoints(node)
            if node.GetNumberOfControlPoints()
            else []
        )
        for i, p in enumerate(points):
            label = f"{node.GetName()}: {node.GetNthControlPointLabel(i)}"
            out.append(Marker(label, method, tuple(map(float, p))))  # type: ignore[arg-type]
    return out


def _answers_to_markups(answers, case: Case, label: str, notes: list[str]) -> dict[str, list]:
    """Placed answers -> library markups per method (see :meth:`CompareLogic.load_vlm_output`);
    answers on slices the case does not have are listed in ``notes``, not drawn."""
    points, point_labels, point_notes = [], [], []
    out: dict[str, list] = {}
    depth = case.shape[SliceGeometry.axial(case.affine, case.shape, 0).slice_axis]
    for a in answers:
        if not a.placed or a.task not in ("point", "box", "polygon"):
            continue
        if not 0 <= a.slice_index < depth:
            notes.append(
                f"{a.task} answer on slice {a.slice_index}: outside 0..{depth - 1}; skipped"
            )
            continue
        geometry = SliceGeometry.axial(case.affine, case.shape, a.slice_index)
        note = f"slice {a.slice_index}, run {a.run}, status {a.status}{label}"
        if a.raw_text:  # what the model said, so a reader can judge the parse
            note += f"; answer: {_shorten(a.raw_text)}"
        tag = f"k={a.slice_index}" + (f" run {a.run}" if a.run else "")
        if a.pixels:
            pix = np.asarray(a.pixels, float)
        else:  # only RAS given: back to this slice's pixels (exact, SliceGeometry is affine)
            pix = geometry.ras_to_pixel(np.asarray(a.ras, float))[:, :2]
        if a.task == "point":
            points.append(slicer_files.points_from_pixels(geometry, pix[:1])[0])
            point_labels.append(tag)
            point_notes.append(note)
        elif a.task == "box" and len(pix) >= 2:
            (x0, y0), (x1, y1) = pix.min(axis=0), pix.max(axis=0)
            out.setdefault("vlm_box", []).append(
                slicer_files.roi_from_pixel_box(
                    geometry, x0, y0, x1, y1, name=f"VLM box {tag}", description=note
                )
            )
        elif a.task == "polygon" and len(pix) >= 3:
            out.setdefault("vlm_polygon", []).append(
                slicer_files.closed_curve_from_pixels(
                    geometry, pix, name=f"VLM polygon {tag}", description=note
                )
            )
    if points:
        out["vlm_point"] = [
            slicer_files.PointsMarkup(
                "VLM point", np.asarray(points), tuple(point_labels), tuple(point_notes)
            )
        ]
    return out


def _data_dir_from_manifest(run_dir: Path) -> Path | None:
    manifest = run_dir / slicer_files.MANIFEST_FILE
    if not manifest.is_file():
        return None
    try:
        doc = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    found: list[Path] = []

    def walk(node, depth=0):
        if depth > 6:
            return
        if isinstance(node, dict):
            for key, value in node.items():
                if key.lower() in ("data", "data_dir", "data_root", "data_folder") and isinstance(
                    value, str
                ):
                    path = Path(value)
                    if not path.is_absolute():
                        path = run_dir / path
                    if path.is_dir():
                        found.append(path)
                walk(value, depth + 1)
        elif isinstance(node, list):
            for value in node:
                walk(value, depth + 1)

    walk(doc)
    return found[0] if found else None
