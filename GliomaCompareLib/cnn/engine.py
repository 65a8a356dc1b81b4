"""Inference engines for the CNN arm on the CPU: OpenVINO, ONNX Runtime, or PyTorch itself.

The network is exported once per model (its weights' hash and its input channels name the
export), cached beside ``model.json`` in ``<model>/engine/``, and compiled once per process and
window shape; the compiled network then replaces PyTorch as the predictor inside MONAI's
``sliding_window_inference``, over the same windows with the same blending, so the labels are
those of the PyTorch pass (up to float rounding: the tests bound the probability difference).

- ``auto``: OpenVINO on the CPU where it is importable, else ONNX Runtime where it is, else
  PyTorch; CUDA always PyTorch (mixed precision, batched windows).
- Precision is float32 in every engine: OpenVINO would otherwise run bfloat16 on CPUs that have
  it (AMX, AVX512-BF16), and bf16 / f16 move probabilities near the 0.5 threshold, so labels.
- Threads: the CPUs this process may run on (``os.sched_getaffinity`` where there is one, else
  ``os.cpu_count``), or the number given.
- No pickle on the way: the network is traced from the module in memory and written as OpenVINO
  IR (XML + binary weights) or ONNX (protobuf); a small JSON beside them holds their sha256, so a
  damaged export is named in a warning and made again.

The exported graph keeps its spatial sizes dynamic, so one export serves every ROI; OpenVINO is
then compiled for each window shape met (static shapes run faster), ONNX Runtime runs them as
they come.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import os
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from GliomaCompareLib.cnn.config import ENGINES
from GliomaCompareLib.fileio import atomic_path, atomic_write_json

__all__ = [
    "CACHE_DIR",
    "ENGINES",
    "EngineChoice",
    "EngineError",
    "available_cpus",
    "choose_engine",
    "compile_network",
    "export_path",
    "weights_digest",
]

log = logging.getLogger(__name__)

#: The folder, beside ``model.json``, that holds a model's exports.
CACHE_DIR = "engine"

#: The Python modules each engine needs (both export through ONNX, which torch's exporter
#: writes with the ``onnx`` package).
_MODULES = {"openvino": ("openvino", "onnx"), "onnxruntime": ("onnxruntime", "onnx")}

#: Compiled window shapes kept per OpenVINO network (a crop gives one per crop size).
_MAX_SHAPES = 4

#: What the export format is called in file names (and which suffixes it writes).
_SUFFIXES = {"openvino": (".xml", ".bin"), "onnxruntime": (".onnx",)}


class EngineError(RuntimeError):
    """An export or compilation that failed (naming the engine and the file)."""


@dataclass(frozen=True)
class EngineChoice:
    """The engine that runs a network, and why that one.

    Attributes:
        name: ``openvino``, ``onnxruntime`` or ``torch``.
        requested: what was asked for (a value of :data:`ENGINES`).
        reason: one line for the log and the prediction's ``predictions.json``.
    """

    name: str
    requested: str
    reason: str


def available_cpus() -> int:
    """The CPUs this process may run on: its affinity mask where the OS has one (Linux), else
    ``os.cpu_count()`` (Windows, macOS); at least 1."""
    getaffinity = getattr(os, "sched_getaffinity", None)
    if getaffinity is not None:
        with contextlib.suppress(OSError):
            return max(1, len(getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _import_error(modules: tuple[str, ...]) -> str | None:
    """None when every module imports, else why the first that does not (one line)."""
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:  # ImportError, or a broken install raising something else
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            return f"{type(exc).__name__}: {text}".rstrip(": ")
    return None


def choose_engine(requested: str, device_type: str = "cpu") -> EngineChoice:
    """The engine to run with, given what was asked for and the device.

    Args:
        requested: a value of :data:`ENGINES`.
        device_type: ``"cpu"`` or ``"cuda"`` (anything but the CPU runs PyTorch).

    Raises:
        ValueError: for an unknown engine name.
    """
    if requested not in ENGINES:
        raise ValueError(f"cnn.engine {requested!r}: use one of {', '.join(ENGINES)}")
    if device_type != "cpu":
        return EngineChoice(
            "torch", requested, f"{device_type}: PyTorch (mixed precision, batched windows)"
        )
    if requested == "torch":
        return EngineChoice("torch", requested, "asked for")
    wanted = ("openvino", "onnxruntime") if requested == "auto" else (requested,)
    missing = []
    for name in wanted:
        error = _import_error(_MODULES[name])
        if error is None:
            why = "auto: the first installed of openvino, onnxruntime"
            return EngineChoice(name, requested, why if requested == "auto" else "asked for")
        missing.append(f"{name} not importable ({error})")
    return EngineChoice(
        "torch",
        requested,
        "; ".join(missing) + " -> PyTorch (slower; `pip install openvino` for the fast path)",
    )


def weights_digest(network) -> str:
    """sha256 (hex) of a network's state dict: names, dtypes, shapes and values, in order.

    It keys the exports, so an export is reused exactly while the weights are the same."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in network.state_dict().items():
        value = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{value.dtype}:{tuple(tensor.shape)};".encode())
        if value.numel():
            digest.update(value.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def export_path(cache_dir: str | Path, engine: str, digest: str, in_channels: int) -> Path:
    """The main file of an export: ``<cache_dir>/<engine>-<digest[:16]>-c<in_channels>.xml``
    (OpenVINO IR, with its ``.bin``) or ``.onnx``."""
    suffix = _SUFFIXES[engine][0]
    return Path(cache_dir) / f"{engine}-{digest[:16]}-c{in_channels}{suffix}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(main: Path, engine: str) -> list[Path]:
    return [main.with_suffix(s) for s in _SUFFIXES[engine]]


def _manifest(main: Path) -> Path:
    return main.with_suffix(".json")


def _example(network, in_channels: int):
    """A small input for tracing: 1 x C x 32^3 (the sizes stay dynamic in the export)."""
    import torch

    dtype = next((p.dtype for p in network.parameters()), torch.float32)
    return torch.zeros(1, in_channels, 32, 32, 32, dtype=dtype)


def _export_onnx(network, in_channels: int, path: Path) -> None:
    """``network`` as ONNX at ``path`` (written atomically), spatial sizes dynamic."""
    import torch

    sizes = {2: "x", 3: "y", 4: "z"}
    with atomic_path(path, suffix=".onnx") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation / tracer notes
        with torch.no_grad():
            # the TorchScript-based exporter (dynamo=False): the dynamo one needs onnxscript
            torch.onnx.export(
                network,
                (_example(network, in_channels),),
                str(tmp),
                input_names=["image"],
                output_names=["output"],
                dynamic_axes={"image": sizes},
                opset_version=17,
                dynamo=False,
            )


def _export_openvino(network, in_channels: int, main: Path) -> None:
    """``network`` as OpenVINO IR (``main`` .xml + .bin), converted from an ONNX export (4-5x
    quicker than OpenVINO's own PyTorch tracing, and the same graph)."""
    import openvino as ov

    onnx_file = main.with_name(f".{main.stem}.{uuid.uuid4().hex[:12]}.tmp.onnx")
    try:
        _export_onnx(network, in_channels, onnx_file)
        model = ov.convert_model(str(onnx_file))
    finally:
        with contextlib.suppress(FileNotFoundError):
            onnx_file.unlink()
    # save_model writes <name>.xml and <name>.bin; both go to temporary names first, the .bin
    # is renamed into place, then the .xml
    with atomic_path(main.with_suffix(".bin"), suffix=".bin") as tmp_bin:
        tmp_xml = tmp_bin.with_suffix(".xml")
        try:
            ov.save_model(model, str(tmp_xml), compress_to_fp16=False)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp_xml.unlink()
            raise
    os.replace(tmp_xml, main)


def _export(network, engine: str, in_channels: int, main: Path) -> None:
    """Export ``network`` to ``main`` (and its companions), then their sha256 manifest."""
    (_export_openvino if engine == "openvino" else _export_onnx)(network, in_channels, main)
    files = {p.name: _sha256(p) for p in _files(main, engine)}
    atomic_write_json(_manifest(main), {"engine": engine, "files": files})


def _damage(main: Path, engine: str) -> str | None:
    """None when the export at ``main`` is complete and unchanged, else what is wrong."""
    manifest = _manifest(main)
    try:
        expected = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{manifest}: unreadable ({type(exc).__name__})"
    for path in _files(main, engine):
        if not path.is_file():
            return f"{path}: missing"
        if expected.get(path.name) != _sha256(path):
            return f"{path}: does not match its sha256 in {manifest.name} (damaged)"
    return None


def _cached_export(network, engine: str, in_channels: int, cache_dir: Path) -> Path:
    """The export of ``network`` for ``engine`` in ``cache_dir``, made there when missing or
    damaged (a damaged one is named in a warning)."""
    from filelock import FileLock

    main = export_path(cache_dir, engine, weights_digest(network), in_channels)
    # one process exports, others (shards sharing a model folder) wait and reuse it
    with FileLock(str(main.with_suffix(".lock"))):
        return _reuse_or_export(network, engine, in_channels, main)


def _reuse_or_export(network, engine: str, in_channels: int, main: Path) -> Path:
    if main.is_file() or _manifest(main).is_file():
        problem = _damage(main, engine)
        if problem is None:
            log.info("CNN engine %s: reusing the export %s", engine, main)
            return main
        log.warning("CNN engine %s: %s; exporting the network again", engine, problem)
    log.info("CNN engine %s: exporting the network to %s (once per model)", engine, main)
    try:
        _export(network, engine, in_channels, main)
    except Exception as exc:
        raise EngineError(f"{engine}: exporting the network to {main} failed: {exc}") from exc
    return main


class _OpenVINOPredictor:
    """OpenVINO IR compiled for the CPU, once per window shape (static shapes run faster)."""

    engine = "openvino"

    def __init__(self, path: Path, threads: int):
        import openvino as ov

        self._core = ov.Core()
        self._model = self._core.read_model(str(path))
        self._threads = threads
        self._compiled: OrderedDict[tuple[int, ...], Any] = OrderedDict()

    def compiled(self, shape: tuple[int, ...]):
        if shape in self._compiled:
            self._compiled.move_to_end(shape)
            return self._compiled[shape]
        model = self._model.clone()
        model.reshape({0: list(shape)})
        compiled = self._core.compile_model(
            model,
            "CPU",
            {
                "INFERENCE_NUM_THREADS": self._threads,
                # f32: bf16 (the default on CPUs with AMX / AVX512-BF16) changes labels
                "INFERENCE_PRECISION_HINT": "f32",
                "PERFORMANCE_HINT": "LATENCY",
            },
        )
        self._compiled[shape] = compiled
        while len(self._compiled) > _MAX_SHAPES:
            self._compiled.popitem(last=False)
        return compiled

    def __call__(self, x):
        import torch

        array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        out = self.compiled(tuple(array.shape))({0: array})[0]
        return torch.from_numpy(np.asarray(out))


class _OnnxRuntimePredictor:
    """An ONNX Runtime CPU session (dynamic spatial sizes)."""

    engine = "onnxruntime"

    def __init__(self, path: Path, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name

    def __call__(self, x):
        import torch

        array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self._session.run(None, {self._input: array})[0])


def _open(engine: str, main: Path, threads: int):
    cls = _OpenVINOPredictor if engine == "openvino" else _OnnxRuntimePredictor
    return cls(main, threads)


def compile_network(
    network,
    engine: str,
    *,
    in_channels: int,
    cache_dir: str | Path | None,
    threads: int | None = None,
) -> Callable:
    """``network`` exported (or its cached export reused) and compiled for ``engine``.

    Args:
        network: the torch module (eval mode; its weights key the export).
        engine: ``openvino`` or ``onnxruntime``.
        in_channels: the network's input channels.
        cache_dir: the folder of exports (``<model>/engine``); None or not writable: a
            temporary folder, so the export lasts as long as this process.
        threads: CPU threads (None: :func:`available_cpus`).

    Returns:
        A predictor: float32 torch tensor ``(1, C, x, y, z)`` -> float32 torch tensor, with an
        ``engine`` attribute.

    Raises:
        EngineError: when the export fails (the caller may fall back to PyTorch).
    """
    threads = int(threads) if threads else available_cpus()
    folder = Path(cache_dir) if cache_dir is not None else None
    if folder is not None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".write-test-{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError as exc:
            log.warning("CNN engine %s: %s not writable (%s); exporting per process", engine,
                        folder, exc)  # fmt: skip
            folder = None
    if folder is None:
        folder = _process_cache_dir()
    main = _cached_export(network, engine, in_channels, folder)
    for attempt in (1, 2):
        try:
            return _open(engine, main, threads)
        except Exception as exc:  # a file that passed its checksum but does not load
            if attempt == 2:
                raise EngineError(f"{engine}: cannot load {main}: {exc}") from exc
            log.warning("CNN engine %s: %s does not load (%s); exporting again", engine, main,
                        str(exc).splitlines()[0] if str(exc) else type(exc).__name__)  # fmt: skip
            _export(network, engine, in_channels, main)
    raise AssertionError("unreachable")


_PROCESS_CACHE: list[Any] = []


def _process_cache_dir() -> Path:
    """A temporary folder for exports of networks without a model folder (removed at exit)."""
    import tempfile

    if not _PROCESS_CACHE:
        _PROCESS_CACHE.append(tempfile.TemporaryDirectory(prefix="gliomacompare-engine-"))
    return Path(_PROCESS_CACHE[0].name)
