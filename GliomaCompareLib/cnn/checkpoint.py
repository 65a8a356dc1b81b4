"""A trained model on disk: safetensors weights plus a JSON that says what they are.

A model folder holds::

    model.safetensors   the selected (best-on-validation) weights
    model.json          task, architecture, channels, regions, convention, preprocessing,
                        data split hash, training settings, metrics, decision threshold
    last.pt             training state after the last finished epoch (resume); read with
                        torch.load(weights_only=True)
    history.csv         one row per epoch

Loading checks the JSON against what the caller expects: a model of another task, architecture,
channel order, region order or label convention is refused with a message saying what differs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from GliomaCompareLib.fileio import atomic_write_text
from GliomaCompareLib.versions import library_versions

__all__ = [
    "MODEL_FORMAT",
    "IncompatibleModelError",
    "ModelInfo",
    "atomic_write_text",
    "check_compatible",
    "describe_architecture",
    "file_sha256",
    "load_model_info",
    "load_training_state",
    "save_model",
    "save_training_state",
]

MODEL_FORMAT = "gliomacompare-cnn/1"
INFO_FILE = "model.json"
WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "last.pt"


class IncompatibleModelError(ValueError):
    """A model folder (or weights) that does not match what it is to be used for."""


@dataclass(frozen=True)
class ModelInfo:
    """The contents of ``model.json``.

    Attributes:
        task: ``"seg"`` or ``"cls"``.
        model_id: ``<task>-<network>-<first 10 hex of the weights' sha256>``.
        architecture: network name, resolved arguments, channel counts.
        channels: input channels by name, in network order.
        regions: output regions in network order (segmentation), empty for classification.
        convention: label convention name the model was trained / is used with.
        preprocessing: what is done to a case before the network sees it.
        config: the full task config (SegConfig / ClsConfig as a dict).
        split_hash: hash of the data split it was trained on ("" for external weights).
        source: ``"trained"`` or ``"weights: <path>"``.
        metrics: best epoch, validation metrics, skipped cases, ...
        threshold: decision threshold on P(HGG) (classification), else None.
        weights_sha256: sha256 of ``model.safetensors``.
        versions: library versions used (:func:`GliomaCompareLib.versions.library_versions`).
        created: ISO time.
    """

    task: str
    model_id: str
    architecture: dict[str, Any]
    channels: tuple[str, ...]
    regions: tuple[str, ...]
    convention: str
    preprocessing: dict[str, Any]
    config: dict[str, Any]
    split_hash: str
    source: str
    metrics: dict[str, Any] = field(default_factory=dict)
    threshold: float | None = None
    weights_sha256: str = ""
    versions: dict[str, str | None] = field(default_factory=dict)
    created: str = ""
    format: str = MODEL_FORMAT

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["channels"] = list(self.channels)
        out["regions"] = list(self.regions)
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "model.json") -> ModelInfo:
        if raw.get("format") != MODEL_FORMAT:
            raise IncompatibleModelError(
                f"{where}: format {raw.get('format')!r} is not {MODEL_FORMAT!r}; "
                "not a GliomaCompare CNN model"
            )
        try:
            return cls(
                task=raw["task"],
                model_id=raw["model_id"],
                architecture=dict(raw["architecture"]),
                channels=tuple(raw["channels"]),
                regions=tuple(raw.get("regions", ())),
                convention=raw["convention"],
                preprocessing=dict(raw.get("preprocessing", {})),
                config=dict(raw.get("config", {})),
                split_hash=raw.get("split_hash", ""),
                source=raw.get("source", ""),
                metrics=dict(raw.get("metrics", {})),
                threshold=raw.get("threshold"),
                weights_sha256=raw.get("weights_sha256", ""),
                versions=dict(raw.get("versions", {})),
                created=raw.get("created", ""),
            )
        except (KeyError, TypeError) as exc:
            raise IncompatibleModelError(f"{where}: incomplete model description ({exc})") from exc


def _atomic_target(path: Path):
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_model(folder: str | Path, state_dict: dict, info: ModelInfo) -> ModelInfo:
    """Write ``model.safetensors`` and ``model.json`` (each atomically) into ``folder``.

    ``info.model_id``, ``weights_sha256``, ``versions`` and ``created`` are filled in here.

    Returns:
        The info as written.
    """
    from dataclasses import replace

    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    target = folder / WEIGHTS_FILE
    tmp = _atomic_target(target)
    try:
        # one metadata entry only: safetensors writes a map's entries in no fixed order, and the
        # file's sha256 is the model id
        save_file(tensors, str(tmp), metadata={"format": MODEL_FORMAT})
        sha = file_sha256(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    info = replace(
        info,
        model_id=f"{info.task}-{info.architecture['name']}-{sha[:10]}",
        weights_sha256=sha,
        versions=library_versions(),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    atomic_write_text(folder / INFO_FILE, json.dumps(info.to_dict(), indent=2) + "\n")
    return info


def load_model_info(folder: str | Path) -> ModelInfo:
    """Read ``model.json`` of a model folder.

    Raises:
        FileNotFoundError: when the folder or its ``model.json`` is missing.
        IncompatibleModelError: when the JSON is unreadable or not a model description.
    """
    folder = Path(folder)
    path = folder / INFO_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {INFO_FILE}; not a trained CNN model folder")
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise IncompatibleModelError(f"{path}: unreadable ({exc})") from exc
    info = ModelInfo.from_dict(raw, str(path))
    if not (folder / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{folder}: {WEIGHTS_FILE} is missing (model.json is there)")
    return info


def check_compatible(
    info: ModelInfo,
    *,
    task: str,
    architecture: dict[str, Any] | None = None,
    channels: tuple[str, ...] | None = None,
    regions: tuple[str, ...] | None = None,
    convention: str | None = None,
    where: str = "model",
) -> None:
    """Refuse a model that differs from what is expected.

    Raises:
        IncompatibleModelError: naming ``where`` and every difference.
    """
    problems = []
    if info.task != task:
        problems.append(f"it is a {info.task!r} model, not {task!r}")
    if architecture is not None and info.architecture != architecture:
        problems.append(
            f"architecture {describe_architecture(info.architecture)} differs from the "
            f"configured {describe_architecture(architecture)}"
        )
    if channels is not None and tuple(info.channels) != tuple(channels):
        problems.append(f"input channels {list(info.channels)} differ from {list(channels)}")
    if regions is not None and tuple(info.regions) != tuple(regions):
        problems.append(f"output regions {list(info.regions)} differ from {list(regions)}")
    if convention is not None and info.convention != convention:
        problems.append(
            f"it was made for label convention {info.convention!r}, the data use {convention!r}"
        )
    if problems:
        raise IncompatibleModelError(f"{where} ({info.model_id}) refused: " + "; ".join(problems))


def describe_architecture(arch: dict[str, Any]) -> str:
    """``SegResNet(init_filters=8, ...; in=4, out=3)``: a network summary in one line."""
    args = ", ".join(f"{k}={v}" for k, v in sorted(arch.get("kwargs", {}).items()))
    return (
        f"{arch.get('name')}({args}; in={arch.get('in_channels')}, out={arch.get('out_channels')})"
    )


def save_training_state(path: str | Path, state: dict) -> Path:
    """``torch.save`` the training state (tensors and plain values only) atomically."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _atomic_target(path)
    try:
        torch.save(state, str(tmp))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return path


def load_training_state(path: str | Path) -> dict:
    """Read a training state written by :func:`save_training_state` (``weights_only=True``).

    Raises:
        ValueError: naming the file when it cannot be read.
    """
    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: cannot read the training state ({exc})") from exc
