"""CNN inference: segmentation (crop, sliding window, un-crop) and grading (P(HGG)).

:class:`Segmenter` and :class:`Classifier` work on one loaded ``Case`` at a time (the Slicer
module calls them for the case on screen); :func:`predict_cases` runs them over a cohort and
writes label maps, optional probability maps and ``grades.csv`` (see its docstring).

Segmentation of a case:

1. channels in network order, crop to the brain's bounding box (+ margin), z-score per channel
   over non-zero voxels (exactly as in training; :mod:`GliomaCompareLib.cnn.preprocess`);
2. MONAI ``sliding_window_inference`` over the cropped volume with the configured ROI, clipped
   per axis to the cropped size (rounded up to the network's size divisor), ``sw_batch_size``
   windows per forward pass, AMP on CUDA;
3. sigmoid, threshold, regions -> BraTS labels through the convention
   (:func:`~GliomaCompareLib.data.regions.labels_from_regions`), un-crop into a volume of the
   input's shape (background outside the crop).

What runs the network in step 2 is the engine (:mod:`GliomaCompareLib.cnn.engine`): on the CPU
OpenVINO or ONNX Runtime where installed (``engine="auto"``, the loaders' default), else
PyTorch; the windows, their blending and the labels stay MONAI's. With ``crop: true`` the
windows are those of the brain crop, which changes the labels (see ``SegConfig.crop``).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from GliomaCompareLib.cnn.checkpoint import (
    WEIGHTS_FILE,
    IncompatibleModelError,
    ModelInfo,
    atomic_write_text,
    check_compatible,
    describe_architecture,
    file_sha256,
    load_model_info,
)
from GliomaCompareLib.cnn.config import (
    ClsConfig,
    EngineConfig,
    SegConfig,
    config_to_dict,
    load_cnn_config,
)
from GliomaCompareLib.cnn.engine import (
    CACHE_DIR,
    EngineChoice,
    EngineError,
    choose_engine,
    compile_network,
)
from GliomaCompareLib.cnn.networks import (
    build_network,
    channels_last,
    load_weights,
    network_summary,
    size_divisor,
)
from GliomaCompareLib.cnn.preprocess import (
    BrainCrop,
    prepare_image,
    prepare_whole,
    resize_image,
    uncrop,
)
from GliomaCompareLib.data.case import load_case
from GliomaCompareLib.data.conventions import REGIONS, Convention, load_convention
from GliomaCompareLib.data.discovery import CaseRecord
from GliomaCompareLib.data.io import write_nifti
from GliomaCompareLib.data.regions import labels_from_regions
from GliomaCompareLib.distributed import resolve_device

__all__ = [
    "CasePrediction",
    "Classifier",
    "ClassifierLike",
    "GradeOutput",
    "PredictionRun",
    "SegmentationOutput",
    "Segmenter",
    "SegmenterLike",
    "autocast",
    "effective_roi",
    "load_classifier",
    "load_segmenter",
    "predict_cases",
    "segment_logits",
]

log = logging.getLogger(__name__)

GRADES_COLUMNS = ("case_id", "p_hgg", "predicted_grade", "threshold", "model_id", "reference_grade")


def effective_roi(roi: Sequence[int], shape: Sequence[int], divisor: int) -> tuple[int, ...]:
    """The ROI clipped per axis to ``shape`` rounded up to a multiple of ``divisor``."""
    out = []
    for r, s in zip(roi, shape, strict=True):
        padded = -(-int(s) // divisor) * divisor
        out.append(min(int(r), padded))
    return tuple(out)


def autocast(device, amp: bool):
    """float16 autocast on CUDA when ``amp``, else a context that does nothing."""
    import torch

    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def segment_logits(
    network,
    image,
    config: SegConfig,
    device,
    amp: bool = True,
    divisor: int = 8,
    predictor=None,
):
    """Sliding-window logits of a prepared (cropped, normalised) image.

    Args:
        network: the segmentation network (in eval mode).
        image: float32 ``(C, x, y, z)`` tensor or array.
        config: ROI, overlap, blend mode, windows per forward pass (CUDA only).
        device: torch device.
        amp: mixed precision on CUDA.
        divisor: the network's size divisor (ROI sizes are multiples of it).
        predictor: what runs each window instead of ``network`` (a compiled engine, see
            :func:`~GliomaCompareLib.cnn.engine.compile_network`); same windows, same blending.

    Returns:
        float32 CPU tensor ``(R, x, y, z)`` of logits, R = ``len(config.regions)``.
    """
    import torch
    from monai.inferers import sliding_window_inference

    tensor = torch.as_tensor(np.asarray(image), dtype=torch.float32)[None].to(device)
    roi = effective_roi(config.roi_size, tensor.shape[2:], divisor)
    # batched windows on CUDA only: on the CPU they are no faster and multiply the memory
    # (benchmarks/bench_cnn_infer.py: 4 windows per pass took 35-37 s and 3.9 GB, 1 took
    # 34-37 s and 1.7 GB for a 240x240x155 case at ROI 128)
    windows = config.sw_batch_size if torch.device(device).type == "cuda" else 1
    with torch.inference_mode(), autocast(device, amp):
        out = sliding_window_inference(
            tensor,
            roi_size=roi,
            sw_batch_size=windows,
            predictor=predictor if predictor is not None else network,
            overlap=config.overlap,
            mode=config.blend_mode,
        )
    return out[0].float().cpu()


@dataclass(frozen=True, eq=False)
class SegmentationOutput:
    """Segmentation of one case.

    Attributes:
        case_id: the case.
        label: uint8 ``(X, Y, Z)`` BraTS label map in the input's voxel grid.
        probabilities: float32 ``(3, X, Y, Z)`` sigmoid outputs in :data:`REGIONS` order
            (WT, TC, ET), 0 outside the brain crop; None unless requested.
        crop: where the brain crop sits.
        model_id: the model that produced it.
        seconds: wall time of the prediction.
        engine: what ran the network (``torch``, ``openvino``, ``onnxruntime``).
    """

    case_id: str
    label: np.ndarray
    probabilities: np.ndarray | None
    crop: BrainCrop
    model_id: str
    seconds: float
    engine: str = "torch"


@dataclass(frozen=True)
class GradeOutput:
    """Grade of one case: P(HGG), the decision threshold and the predicted grade."""

    case_id: str
    p_hgg: float
    grade: str
    threshold: float
    model_id: str


@runtime_checkable
class SegmenterLike(Protocol):
    """Anything that segments a case (the pipeline and the Slicer module take one)."""

    model_id: str

    def predict(self, case, probabilities: bool = False) -> SegmentationOutput: ...


@runtime_checkable
class ClassifierLike(Protocol):
    """Anything that grades a case."""

    model_id: str

    def predict(self, case) -> GradeOutput: ...


def _engine_settings(engine: str | EngineConfig) -> EngineConfig:
    return engine if isinstance(engine, EngineConfig) else EngineConfig(engine=engine)


def _compile(network, settings: EngineConfig, device, in_channels: int, cache, what: str):
    """(compiled predictor or None, EngineChoice): the engine that will run ``network``.

    The choice and its reason go to the log; an engine that cannot be used (not installed, or
    an export that fails) leaves PyTorch, with a warning saying why."""
    choice = choose_engine(settings.engine, device.type)
    predictor = None
    if choice.name != "torch":
        try:
            predictor = compile_network(
                network,
                choice.name,
                in_channels=in_channels,
                cache_dir=cache,
                threads=settings.threads,
            )
        except EngineError as exc:
            choice = EngineChoice("torch", settings.engine, f"{exc} -> PyTorch (slower)")
    level = (
        logging.WARNING if choice.name == "torch" and settings.engine != "torch" else logging.INFO
    )
    if device.type != "cpu":
        level = logging.INFO
    log.log(level, "CNN %s runs on %s (%s)", what, choice.name, choice.reason)
    return predictor, choice


def _device_and_predictor(network, device, engine, channels: int, engine_cache, what: str):
    """(torch device, engine predictor or None for PyTorch, EngineChoice) of a network, as the
    segmenter and the classifier both set themselves up."""
    import torch

    device = torch.device(
        device if not isinstance(device, (str, type(None))) else resolve_device(device)
    )
    predictor, choice = _compile(
        network.eval(), _engine_settings(engine), device, channels, engine_cache, what
    )
    return device, predictor, choice


class Segmenter:
    """A segmentation network with its preprocessing and postprocessing.

    Args:
        network: the torch module (weights loaded).
        config: channels, regions, ROI, threshold ...
        model_id: name written beside every output.
        convention: label convention used to turn regions into labels.
        device: ``"auto"``, ``"cuda"``, ``"cpu"`` or a torch device.
        amp: mixed precision on CUDA.
        memory_format_channels_last: run in the ``channels_last_3d`` layout (faster; the same
            values up to float rounding).
        engine: what runs the network: ``"torch"`` (this module as it is), ``"auto"``,
            ``"openvino"``, ``"onnxruntime"``, or an :class:`EngineConfig` (engine and threads).
        engine_cache: the folder of the network's exports (``<model>/engine``); None: a
            temporary one (the export then lasts as long as the process).

    Attributes:
        engine: the engine that runs the network; ``engine_choice`` says why.
    """

    def __init__(
        self,
        network,
        config: SegConfig,
        *,
        model_id: str,
        convention: str | Convention = "brats2020",
        device="auto",
        amp: bool = True,
        memory_format_channels_last: bool = True,
        engine: str | EngineConfig = "torch",
        engine_cache: str | Path | None = None,
    ):
        self.device, self.predictor, self.engine_choice = _device_and_predictor(
            network, device, engine, len(config.channels), engine_cache, "segmentation"
        )
        self.engine = self.engine_choice.name
        layout = memory_format_channels_last and self.predictor is None
        self.network = channels_last(network, self.device, layout).eval()
        self.config = config
        self.model_id = model_id
        self.convention = load_convention(convention)
        self.amp = amp
        self.divisor = size_divisor(config.network)
        missing = [r for r in config.regions if r not in REGIONS]
        if missing or not {"WT", "TC", "ET"} <= set(config.regions):
            raise ValueError(
                f"Segmenter outputs {list(config.regions)}: need the regions WT, TC and ET to "
                "rebuild a label map"
            )

    def predict(self, case, probabilities: bool = False) -> SegmentationOutput:
        """Segment one ``Case``.

        Raises:
            ValueError / KeyError: naming the case (empty image, missing channel).
        """
        import torch

        start = time.perf_counter()
        if self.config.crop:
            image, crop = prepare_image(case, self.config.channels, self.config.crop_margin)
        else:
            image, crop = prepare_whole(case, self.config.channels)
        logits = segment_logits(
            self.network,
            image,
            self.config,
            self.device,
            self.amp,
            self.divisor,
            predictor=self.predictor,
        )
        probs = torch.sigmoid(logits).numpy()
        masks = {r: probs[i] > self.config.threshold for i, r in enumerate(self.config.regions)}
        label = labels_from_regions(masks["WT"], masks["TC"], masks["ET"], self.convention)
        full = uncrop(label, crop)
        prob_out = None
        if probabilities:
            ordered = np.stack([probs[self.config.regions.index(r)] for r in REGIONS])
            prob_out = uncrop(ordered.astype(np.float32), crop)
        seconds = time.perf_counter() - start
        return SegmentationOutput(
            case.case_id, full, prob_out, crop, self.model_id, seconds, self.engine
        )


class Classifier:
    """A grading network with its preprocessing and decision threshold.

    Args:
        network: the torch module (one output logit).
        config: channels, crop margin, input size.
        threshold: P(HGG) at or above which a case is called HGG (chosen on validation data).
        model_id: name written beside every output.
        device: ``"auto"``, ``"cuda"``, ``"cpu"`` or a torch device.
        engine, engine_cache: as for :class:`Segmenter`.
    """

    def __init__(
        self,
        network,
        config: ClsConfig,
        *,
        threshold: float,
        model_id: str,
        device="auto",
        engine: str | EngineConfig = "torch",
        engine_cache: str | Path | None = None,
    ):
        self.device, self.predictor, self.engine_choice = _device_and_predictor(
            network, device, engine, len(config.channels), engine_cache, "classification"
        )
        self.engine = self.engine_choice.name
        self.network = channels_last(network, self.device, self.predictor is None).eval()
        self.config = config
        self.threshold = float(threshold)
        self.model_id = model_id

    def probability(self, case) -> float:
        """P(HGG) of one ``Case`` (sigmoid of the network's logit)."""
        import torch

        image, _ = prepare_image(case, self.config.channels, self.config.crop_margin)
        image = resize_image(image, self.config.input_size)
        tensor = torch.as_tensor(image)[None]
        with torch.inference_mode():
            if self.predictor is not None:
                logit = self.predictor(tensor).float().reshape(-1)[0]
            else:
                tensor = channels_last(tensor, self.device)
                logit = self.network(tensor).float().reshape(-1)[0]
        return float(torch.sigmoid(logit))

    def predict(self, case) -> GradeOutput:
        p = self.probability(case)
        grade = "HGG" if p >= self.threshold else "LGG"
        return GradeOutput(case.case_id, p, grade, self.threshold, self.model_id)


def _config_from_info(info: ModelInfo):
    return getattr(load_cnn_config({info.task: info.config}), info.task)


def _network_from_folder(folder: Path, info: ModelInfo, config):
    from safetensors.torch import load_file

    arch = network_summary(config.network, len(config.channels), info.architecture["out_channels"])
    check_compatible(info, task=info.task, architecture=arch, where=str(folder))
    network = build_network(config.network, len(config.channels), arch["out_channels"], info.task)
    weights = folder / WEIGHTS_FILE
    if info.weights_sha256 and file_sha256(weights) != info.weights_sha256:
        raise IncompatibleModelError(
            f"{weights}: does not match the sha256 in model.json (replaced, or an interrupted "
            "write); retrain or restore the folder"
        )
    network.load_state_dict(load_file(str(weights)), strict=True)
    return network


def load_segmenter(
    source: str | Path,
    *,
    config: SegConfig | None = None,
    convention: str | Convention = "brats2020",
    device="auto",
    engine: str | EngineConfig = "auto",
) -> Segmenter:
    """A :class:`Segmenter` from a trained model folder, or from a bare weights file.

    Args:
        source: a folder written by training (``model.json`` + ``model.safetensors``), or a
            weights file (e.g. the ``brats_mri_segmentation`` bundle's ``models/model.pt``),
            which is loaded into ``config``'s network (default: the bundle's architecture).
        config: for a folder, the expected configuration (architecture, channels, regions must
            match; None accepts the folder's own); for a weights file, the architecture.
        convention: label convention of the data; a folder made for another is refused.
        device: where to run.
        engine: what runs the network (see :class:`Segmenter`); its export is cached in
            ``<folder>/engine/`` (beside ``model.json``), or ``engine/`` beside a weights file.

    Raises:
        IncompatibleModelError: a folder of another task / architecture / convention.
        WeightsError: weights that do not fit the architecture.
    """
    conv = load_convention(convention)
    source = Path(source)
    if source.is_dir():
        info = load_model_info(source)
        own = _config_from_info(info)
        if config is not None:
            arch = network_summary(config.network, len(config.channels), len(config.regions))
            check_compatible(
                info,
                task="seg",
                architecture=arch,
                channels=config.channels,
                regions=config.regions,
                where=str(source),
            )
            own = config  # same network; inference settings (ROI, windows, threshold) may differ
        check_compatible(info, task="seg", convention=conv.name, where=str(source))
        network = _network_from_folder(source, info, own)
        return Segmenter(
            network,
            own,
            model_id=info.model_id,
            convention=conv,
            device=device,
            engine=engine,
            engine_cache=source / CACHE_DIR,
        )
    config = config or SegConfig()
    network = build_network(config.network, len(config.channels), len(config.regions), "seg")
    arch = network_summary(config.network, len(config.channels), len(config.regions))
    load_weights(network, source, describe=describe_architecture(arch))
    model_id = f"seg-{config.network.name}-{file_sha256(source)[:10]}"
    return Segmenter(
        network,
        config,
        model_id=model_id,
        convention=conv,
        device=device,
        engine=engine,
        engine_cache=source.parent / CACHE_DIR,
    )


def load_classifier(
    source: str | Path,
    *,
    config: ClsConfig | None = None,
    device="auto",
    engine: str | EngineConfig = "auto",
) -> Classifier:
    """A :class:`Classifier` from a trained model folder (its threshold included); ``engine``
    as for :func:`load_segmenter` (exports cached in ``<folder>/engine/``).

    Raises:
        IncompatibleModelError: a folder of another task or architecture.
    """
    source = Path(source)
    info = load_model_info(source)
    own = _config_from_info(info)
    if config is not None:
        arch = network_summary(config.network, len(config.channels), 1)
        check_compatible(
            info, task="cls", architecture=arch, channels=config.channels, where=str(source)
        )
        own = config
    check_compatible(info, task="cls", where=str(source))
    if info.threshold is None:
        raise ValueError(f"{source}: classification model without a decision threshold")
    network = _network_from_folder(source, info, own)
    return Classifier(
        network,
        own,
        threshold=info.threshold,
        model_id=info.model_id,
        device=device,
        engine=engine,
        engine_cache=source / CACHE_DIR,
    )


@dataclass(frozen=True)
class CasePrediction:
    """What was predicted for one case (arrays are on disk; paths relative to the output).

    Attributes:
        case_id: the case.
        label_file: BraTS label map (NIfTI, input affine), or "" without a segmenter.
        probability_file: 4D NIfTI ``(X, Y, Z, 3)`` of WT, TC, ET probabilities, or "".
        p_hgg: P(HGG), or None without a classifier.
        predicted_grade: ``"HGG"`` / ``"LGG"`` / None.
        threshold: decision threshold used.
        seg_model_id, cls_model_id: models used ("" when not run).
        reference_grade: the grade from ``name_mapping.csv`` (None when unknown).
        seconds: wall time for the case.
    """

    case_id: str
    label_file: str = ""
    probability_file: str = ""
    p_hgg: float | None = None
    predicted_grade: str | None = None
    threshold: float | None = None
    seg_model_id: str = ""
    cls_model_id: str = ""
    reference_grade: str | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class PredictionRun:
    """Result of :func:`predict_cases`.

    Attributes:
        out_dir: the output folder.
        predictions: one per case that succeeded (including cases done by an earlier run).
        failures: (case_id, reason) per case that failed.
        grades_csv: path of ``grades.csv`` (None without a classifier).
    """

    out_dir: Path
    predictions: tuple[CasePrediction, ...]
    failures: tuple[tuple[str, str], ...]
    grades_csv: Path | None


def predict_cases(
    cases: Iterable,
    out_dir: str | Path,
    *,
    segmenter: SegmenterLike | None = None,
    classifier: ClassifierLike | None = None,
    convention: str | Convention = "brats2020",
    save_probabilities: bool = False,
    skip_existing: bool = True,
    progress: bool = True,
) -> PredictionRun:
    """Segment and / or grade case records, writing results as each case finishes.

    Writes into ``out_dir``:

    - ``<case_id>.nii.gz``: BraTS label map (labels 1/2/4 from the convention), uint8, with the
      input FLAIR's affine (segmenter);
    - ``probabilities/<case_id>.nii.gz``: float32 ``(X, Y, Z, 3)``, WT, TC, ET (optional);
    - ``records/<case_id>.json``: the per-case record, written last, so an interrupted run
      redoes only unfinished cases (``skip_existing``: a case whose record names the same
      models is not recomputed);
    - ``grades.csv``: ``case_id, p_hgg, predicted_grade, threshold, model_id,
      reference_grade`` (classifier);
    - ``failures.csv``: ``case_id, reason`` for cases that failed (they are skipped; the
      others go on);
    - ``predictions.json``: models, settings and counts.

    Args:
        cases: ``CaseRecord`` s (from :func:`~GliomaCompareLib.data.discover_cases`).
        out_dir: output folder.
        segmenter, classifier: at least one.
        convention: label convention for loading cases.
        save_probabilities: also write probability maps.
        skip_existing: reuse finished cases from an earlier run with the same models.
        progress: show a progress bar.

    Raises:
        ValueError: when neither a segmenter nor a classifier is given.
    """
    from tqdm.auto import tqdm

    if segmenter is None and classifier is None:
        raise ValueError("predict_cases needs a segmenter, a classifier or both")
    conv = load_convention(convention)
    out_dir = Path(out_dir)
    (out_dir / "records").mkdir(parents=True, exist_ok=True)
    done: list[CasePrediction] = []
    failures: list[tuple[str, str]] = []
    bar = tqdm(list(cases), desc="predict-cnn", unit="case", disable=not progress)
    for record in bar:
        bar.set_postfix_str(record.case_id)
        record_path = out_dir / "records" / f"{record.case_id}.json"
        previous = (
            _reusable(record_path, out_dir, segmenter, classifier, save_probabilities)
            if skip_existing
            else None
        )
        if previous is not None:
            done.append(previous)
            continue
        try:
            pred = _predict_case(record, out_dir, conv, segmenter, classifier, save_probabilities)
        except Exception as exc:  # one bad case never stops the others
            failures.append(_failure(record.case_id, exc))
            continue
        atomic_write_text(record_path, json.dumps(asdict(pred), indent=2) + "\n")
        done.append(pred)
    grades_csv = _write_grades(out_dir, done) if classifier is not None else None
    _write_failures(out_dir, failures)
    _write_summary(out_dir, segmenter, classifier, conv, done, failures, save_probabilities)
    return PredictionRun(out_dir, tuple(done), tuple(failures), grades_csv)


def _model_id(model) -> str:
    return model.model_id if model is not None else ""


def _reusable(
    record_path: Path, out_dir: Path, segmenter, classifier, save_probabilities: bool
) -> CasePrediction | None:
    """The record of a case finished by an earlier run with the same models, else None."""
    if not record_path.is_file():
        return None
    previous = _read_record(record_path)
    if (
        previous is not None
        and previous.seg_model_id == _model_id(segmenter)
        and previous.cls_model_id == _model_id(classifier)
        and (not save_probabilities or previous.probability_file or not segmenter)
        and (not previous.label_file or (out_dir / previous.label_file).is_file())
    ):
        return previous
    return None


def _predict_case(
    record: CaseRecord,
    out_dir: Path,
    conv: Convention,
    segmenter: SegmenterLike | None,
    classifier: ClassifierLike | None,
    save_probabilities: bool,
) -> CasePrediction:
    """Segment and / or grade one case, writing its label (and probability) files.

    Raises:
        ValueError: for an unusable case; whatever loading or predicting raises.
    """
    start = time.perf_counter()
    case_id = record.case_id
    if not record.usable:
        raise ValueError("; ".join(record.problems))
    case = load_case(record, conv, with_label=False)
    pred = CasePrediction(
        case_id,
        reference_grade=record.grade,
        seg_model_id=_model_id(segmenter),
        cls_model_id=_model_id(classifier),
    )
    if segmenter is not None:
        seg = segmenter.predict(case, probabilities=save_probabilities)
        label_file = f"{case_id}.nii.gz"
        write_nifti(out_dir / label_file, seg.label, case.affine)
        prob_file = ""
        if seg.probabilities is not None:
            prob_file = f"probabilities/{case_id}.nii.gz"
            write_nifti(out_dir / prob_file, np.moveaxis(seg.probabilities, 0, -1), case.affine)
        pred = replace(pred, label_file=label_file, probability_file=prob_file)
    if classifier is not None:
        grade = classifier.predict(case)
        pred = replace(
            pred, p_hgg=grade.p_hgg, predicted_grade=grade.grade, threshold=grade.threshold
        )
    return replace(pred, seconds=round(time.perf_counter() - start, 3))


def _failure(case_id: str, exc: Exception) -> tuple[str, str]:
    """(case_id, first line of the error naming the case), logged as a warning."""
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if case_id not in reason:
        reason = f"{case_id}: {reason}"
    log.warning("predict-cnn: %s", reason)
    return case_id, reason


def _write_grades(out_dir: Path, done: Sequence[CasePrediction]) -> Path:
    grades_csv = out_dir / "grades.csv"
    _write_csv(
        grades_csv,
        GRADES_COLUMNS,
        [
            (
                p.case_id,
                f"{p.p_hgg:.6f}",
                p.predicted_grade,
                f"{p.threshold:.6f}",
                p.cls_model_id,
                p.reference_grade or "",
            )
            for p in done
        ],
    )
    return grades_csv


def _write_failures(out_dir: Path, failures: Sequence[tuple[str, str]]) -> None:
    """``failures.csv`` when a case failed; an old one is removed when none did."""
    failures_csv = out_dir / "failures.csv"
    if failures:
        _write_csv(failures_csv, ("case_id", "reason"), failures)
    elif failures_csv.exists():
        failures_csv.unlink()


def _write_summary(
    out_dir: Path,
    segmenter: SegmenterLike | None,
    classifier: ClassifierLike | None,
    conv: Convention,
    done: Sequence[CasePrediction],
    failures: Sequence[tuple[str, str]],
    save_probabilities: bool,
) -> None:
    """``predictions.json``: models, settings and counts."""
    summary = {
        "seg_model_id": _model_id(segmenter),
        "cls_model_id": _model_id(classifier),
        "convention": conv.name,
        "cases": len(done),
        "failures": [{"case_id": c, "reason": r} for c, r in failures],
        "save_probabilities": save_probabilities,
        "label_files": "<case_id>.nii.gz (BraTS labels, input affine)",
        "probability_files": "probabilities/<case_id>.nii.gz (X, Y, Z, 3): WT, TC, ET",
    }
    if segmenter is not None and hasattr(segmenter, "config"):
        summary["seg_config"] = config_to_dict(segmenter.config)
    # what ran each network (and why that engine): part of what produced the numbers
    for key, model in (("seg_engine", segmenter), ("cls_engine", classifier)):
        choice = getattr(model, "engine_choice", None)
        if isinstance(choice, EngineChoice):
            summary[key] = asdict(choice)
    atomic_write_text(out_dir / "predictions.json", json.dumps(summary, indent=2) + "\n")


def _read_record(path: Path) -> CasePrediction | None:
    try:
        return CasePrediction(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _write_csv(path: Path, header: Sequence[str], rows) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())
