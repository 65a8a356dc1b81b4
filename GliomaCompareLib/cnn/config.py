"""Typed, frozen configuration of the CNN arm, and its mapping from the run config's ``cnn:``.

The run config (YAML) holds every choice of the CNN recipe under ``cnn:``::

    cnn:
      seg:                                # SegConfig
        network: {name: SegResNet, init_filters: 8}
        patch_size: [64, 64, 48]
        train: {epochs: 20, learning_rate: 0.002}
      cls:                                # ClsConfig
        network: {name: resnet10}
        input_size: [64, 64, 48]
        train: {epochs: 30}

Every key not given keeps the default below. The segmentation defaults reproduce MONAI's
``brats_mri_segmentation`` bundle (see :data:`BUNDLE_CHANNELS`), so that its released
``models/model.pt`` loads into the default network and gives correct labels.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from GliomaCompareLib.argtypes import non_negative_int, positive_int

__all__ = [
    "BUNDLE_CHANNELS",
    "BUNDLE_REGIONS",
    "ENGINES",
    "RUN_KEYS",
    "CNNConfig",
    "ClsConfig",
    "EngineConfig",
    "NetworkSpec",
    "SegConfig",
    "TrainSettings",
    "config_hash",
    "config_to_dict",
    "load_cnn_config",
    "load_engine_config",
]

#: Input channel order of MONAI's ``brats_mri_segmentation`` bundle (its
#: ``configs/metadata.json`` ``channel_def``: 0 T1c, 1 T1, 2 T2, 3 FLAIR; its
#: ``scripts/prepare_datalist.py`` stacks ``t1ce + t1 + t2 + flair``). Our ``Case`` stores
#: ``flair, t1, t1ce, t2``; the segmenter reorders channels by name.
BUNDLE_CHANNELS: tuple[str, ...] = ("t1ce", "t1", "t2", "flair")

#: Output channel order of the bundle: 0 tumour core, 1 whole tumour, 2 enhancing tumour.
BUNDLE_REGIONS: tuple[str, ...] = ("TC", "WT", "ET")


def _tuple(value, kind=int) -> tuple:
    if isinstance(value, (list, tuple)):
        return tuple(kind(v) for v in value)
    return (kind(value),) * 3


@dataclass(frozen=True)
class NetworkSpec:
    """A MONAI network by name plus its constructor arguments.

    ``in_channels`` / ``out_channels`` (and ``spatial_dims``) are not part of ``kwargs``: they
    follow from the task's channels and outputs. See :mod:`GliomaCompareLib.cnn.networks` for
    the names known and their defaults.

    Attributes:
        name: e.g. ``"SegResNet"``, ``"UNet"``, ``"DenseNet121"``, ``"resnet10"``.
        kwargs: constructor arguments (JSON-able values).
    """

    name: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **{k: _jsonable(v) for k, v in sorted(self.kwargs.items())}}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | str, where: str = "network") -> NetworkSpec:
        if isinstance(raw, str):
            return cls(raw, {})
        if not isinstance(raw, Mapping) or "name" not in raw:
            raise ValueError(f"{where}: expected a mapping with 'name' (e.g. {{name: SegResNet}})")
        kwargs = {k: _jsonable(v) for k, v in raw.items() if k != "name"}
        return cls(str(raw["name"]), kwargs)


def _jsonable(value):
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


#: The argument group of the ``train-cnn`` options made from :class:`TrainSettings`.
TRAIN_OPTIONS_GROUP = "training (overrides the config's train: section)"


def _train_option(help_text: str, **meta: Any) -> dict[str, Any]:
    """Metadata making a :class:`TrainSettings` field a ``train-cnn`` option; its default is the
    config's, so the dataclass default is not shown."""
    return {"group": TRAIN_OPTIONS_GROUP, "help": help_text, "show_default": False, **meta}


@dataclass(frozen=True)
class TrainSettings:
    """How a network is trained (shared by segmentation and classification).

    Attributes:
        epochs: passes over the training cases.
        batch_size: cases (classification) or patches (segmentation) per step.
        learning_rate: Adam learning rate.
        weight_decay: Adam weight decay.
        scheduler: ``"cosine"`` (cosine annealing over ``epochs``) or ``"constant"``.
        num_workers: DataLoader worker processes (0: load in the training process).
        amp: mixed precision on CUDA (ignored on CPU).
        deterministic: on CUDA, deterministic algorithms instead of ``cudnn.benchmark``.
        seed: seed of every random choice (weights, sampling, augmentation, dropout).
        cache: ``"disk"`` (MONAI ``PersistentDataset`` under the output folder),
            ``"memory"`` (``CacheDataset``) or ``"none"``.
    """

    # the metadata makes each field a ``train-cnn`` option (argtypes.add_dataclass_arguments)
    # that overrides the config's ``train:`` value for the trained networks
    epochs: int = field(
        default=300, metadata=_train_option("passes (0: no training)", type=non_negative_int)
    )
    batch_size: int = field(
        default=1, metadata=_train_option("cases / patches per step", type=positive_int)
    )
    learning_rate: float = field(
        default=1e-4,
        metadata=_train_option("Adam learning rate", flags=("--lr", "--learning-rate")),
    )
    weight_decay: float = field(default=1e-5, metadata=_train_option("Adam weight decay"))
    scheduler: str = field(
        default="cosine",
        metadata=_train_option("learning-rate schedule", choices=("cosine", "constant")),
    )
    num_workers: int = field(
        default=0, metadata=_train_option("DataLoader workers", type=non_negative_int)
    )
    amp: bool = field(
        default=True, metadata=_train_option("no mixed precision on CUDA", flags="--no-amp")
    )
    deterministic: bool = field(
        default=False,
        metadata=_train_option("deterministic CUDA algorithms instead of cudnn.benchmark"),
    )
    seed: int = field(default=0, metadata=_train_option("seed of weights, sampling, augmentation"))
    cache: str = field(
        default="disk",
        metadata=_train_option("cache of prepared cases", choices=("disk", "memory", "none")),
    )

    def __post_init__(self):
        if self.epochs < 0:
            raise ValueError(f"train.epochs must be >= 0 (got {self.epochs})")
        if self.batch_size < 1:
            raise ValueError(f"train.batch_size must be >= 1 (got {self.batch_size})")
        if self.scheduler not in ("cosine", "constant"):
            raise ValueError(f"train.scheduler {self.scheduler!r}: use 'cosine' or 'constant'")
        if self.cache not in ("disk", "memory", "none"):
            raise ValueError(f"train.cache {self.cache!r}: use 'disk', 'memory' or 'none'")


def _bundle_network() -> NetworkSpec:
    return NetworkSpec(
        "SegResNet",
        {
            "init_filters": 16,
            "blocks_down": [1, 2, 2, 4],
            "blocks_up": [1, 1, 1],
            "dropout_prob": 0.2,
        },
    )


@dataclass(frozen=True)
class SegConfig:
    """Segmentation: four modalities in, one sigmoid channel per region out.

    Defaults are those of MONAI's ``brats_mri_segmentation`` bundle: SegResNet (init_filters 16,
    blocks_down [1, 2, 2, 4], blocks_up [1, 1, 1], dropout 0.2), inputs ``t1ce, t1, t2, flair``
    z-scored per channel over non-zero voxels, outputs TC, WT, ET thresholded at 0.5, inference
    ROI 240x240x160 (here clipped to the brain's bounding box), training patch 224x224x144.

    Attributes:
        network: the MONAI network.
        channels: input channels by name, in network order.
        regions: output channels by region name, in network order.
        crop_margin: voxels kept around the brain's bounding box (0: the networks' zero
            padding already sees background there; a margin only adds windows to compute).
        crop: at inference, run the network on the brain's bounding box only (2-3x faster on a
            full-size case; training always uses the crop). SegResNet's GroupNorm takes its
            statistics over each window, so the labels then differ from those of a
            whole-volume pass (Dice 0.87-0.92 between the two in
            ``benchmarks/bench_cnn_infer.py``; against the ground truth the crop scored better
            on its full-size case, WT 0.76 vs 0.71, and slightly worse on the demo's test
            patients, 0.87 vs 0.88).
            ``False``: the whole volume, as MONAI's bundle runs it (the same labels as MONAI's
            plain sliding window); use it for weights trained on whole volumes (the bundle's).
            On the CPU an inference engine (:class:`EngineConfig`, ``cnn.engine``) speeds the
            whole volume up without changing its labels (about 1.5x on a 2-core AVX2 CPU, see
            ``benchmarks/bench_cnn_infer.py``: less than the crop); the crop changes them
            whatever runs the network.
        patch_size: training patch (voxels).
        samples_per_case: patches drawn per case per epoch.
        pos_fraction: share of patches centred on tumour (the rest on brain).
        loss: ``"dice"`` (the bundle's squared-prediction Dice) or ``"dice_bce"`` (plus
            binary cross-entropy, which also penalises false positives in tumour-free patches).
        roi_size: sliding-window size at inference (clipped per axis to the cropped volume).
        sw_batch_size: windows per forward pass on CUDA (on the CPU always 1: batching is no
            faster there and multiplies the memory).
        overlap: sliding-window overlap (fraction).
        blend_mode: ``"constant"`` or ``"gaussian"`` window blending.
        threshold: probability above which a voxel belongs to a region.
        train: training settings.
    """

    network: NetworkSpec = field(default_factory=_bundle_network)
    channels: tuple[str, ...] = BUNDLE_CHANNELS
    regions: tuple[str, ...] = BUNDLE_REGIONS
    crop_margin: int = 0
    crop: bool = True
    patch_size: tuple[int, int, int] = (224, 224, 144)
    samples_per_case: int = 1
    pos_fraction: float = 0.5
    loss: str = "dice_bce"
    roi_size: tuple[int, int, int] = (240, 240, 160)
    sw_batch_size: int = 4
    overlap: float = 0.5
    blend_mode: str = "constant"
    threshold: float = 0.5
    train: TrainSettings = field(default_factory=TrainSettings)

    task = "seg"

    def __post_init__(self):
        if not isinstance(self.crop, bool):
            raise ValueError(f"seg.crop must be true or false (got {self.crop!r})")
        if self.loss not in ("dice", "dice_bce"):
            raise ValueError(f"seg.loss {self.loss!r}: use 'dice' or 'dice_bce'")
        if self.blend_mode not in ("constant", "gaussian"):
            raise ValueError(f"seg.blend_mode {self.blend_mode!r}: use 'constant' or 'gaussian'")
        if not 0 <= self.overlap < 1:
            raise ValueError(f"seg.overlap must be in [0, 1) (got {self.overlap})")
        if not 0 <= self.pos_fraction <= 1:
            raise ValueError(f"seg.pos_fraction must be in [0, 1] (got {self.pos_fraction})")
        if len(set(self.regions)) != len(self.regions) or not self.regions:
            raise ValueError(f"seg.regions {self.regions}: expected distinct region names")
        _check_sizes("seg.patch_size", self.patch_size)
        _check_sizes("seg.roi_size", self.roi_size)

    def preprocessing(self) -> dict[str, Any]:
        """What is done to a case before the network sees it (goes into checkpoints)."""
        return {
            "channels": list(self.channels),
            "crop": f"brain bounding box (any channel != 0) + {self.crop_margin} voxels",
            "crop_margin": self.crop_margin,
            "inference_input": "the brain crop" if self.crop else "the whole volume (no crop)",
            "normalisation": "z-score per channel over non-zero voxels "
            "(MONAI NormalizeIntensity nonzero=True, channel_wise=True)",
            "spacing": "as stored (no resampling)",
        }


@dataclass(frozen=True)
class ClsConfig:
    """Classification LGG (0) vs HGG (1): four modalities in, one logit (P(HGG)) out.

    Attributes:
        network: the MONAI network (``DenseNet121``, ``resnet10`` ...).
        channels: input channels by name, in network order.
        crop_margin: voxels kept around the brain's bounding box.
        input_size: the cropped brain is resized (trilinear) to this size (voxels).
        imbalance: ``"weighted_loss"`` (BCE with pos_weight = #LGG / #HGG),
            ``"balanced_sampler"`` (each epoch draws LGG and HGG equally often) or ``"none"``.
        augment: random flips and intensity jitter during training.
        threshold_rule: ``"youden"``: the decision threshold maximises sensitivity +
            specificity - 1 (equivalently balanced accuracy) on the validation patients.
        train: training settings.
    """

    network: NetworkSpec = field(default_factory=lambda: NetworkSpec("DenseNet121", {}))
    channels: tuple[str, ...] = ("flair", "t1", "t1ce", "t2")
    crop_margin: int = 0
    input_size: tuple[int, int, int] = (128, 128, 96)
    imbalance: str = "weighted_loss"
    augment: bool = True
    threshold_rule: str = "youden"
    train: TrainSettings = field(
        default_factory=lambda: TrainSettings(epochs=100, batch_size=4, learning_rate=1e-4)
    )

    task = "cls"

    def __post_init__(self):
        if self.imbalance not in ("weighted_loss", "balanced_sampler", "none"):
            raise ValueError(
                f"cls.imbalance {self.imbalance!r}: use 'weighted_loss', 'balanced_sampler' or 'none'"
            )
        if self.threshold_rule != "youden":
            raise ValueError(f"cls.threshold_rule {self.threshold_rule!r}: only 'youden' exists")
        _check_sizes("cls.input_size", self.input_size)

    def preprocessing(self) -> dict[str, Any]:
        return {
            "channels": list(self.channels),
            "crop": f"brain bounding box (any channel != 0) + {self.crop_margin} voxels",
            "crop_margin": self.crop_margin,
            "normalisation": "z-score per channel over non-zero voxels "
            "(MONAI NormalizeIntensity nonzero=True, channel_wise=True)",
            "resize": f"trilinear to {list(self.input_size)}",
        }


def _check_sizes(name: str, sizes) -> None:
    if len(sizes) != 3 or min(sizes) < 8:
        raise ValueError(f"{name} {list(sizes)}: expected three sizes >= 8")


#: The values of ``cnn.engine`` / ``predict-cnn --engine`` (see :mod:`GliomaCompareLib.cnn.engine`).
ENGINES: tuple[str, ...] = ("auto", "openvino", "onnxruntime", "torch")

#: The argument group of the ``predict-cnn`` options made from :class:`EngineConfig`.
ENGINE_OPTIONS_GROUP = "inference engine (overrides the config's cnn.engine / cnn.threads)"


@dataclass(frozen=True)
class EngineConfig:
    """What runs the networks at inference (the run config's ``cnn.engine`` and
    ``cnn.threads``; ``predict-cnn --engine / --threads``).

    Attributes:
        engine: ``auto`` (OpenVINO on the CPU where it is installed, else ONNX Runtime where
            it is, else PyTorch; always PyTorch on CUDA), ``openvino``, ``onnxruntime`` or
            ``torch``. Every engine runs the same network over the same sliding windows, in
            float32, so the labels are the same up to float rounding; an engine that is not
            installed falls back to PyTorch (slower), saying so in the log.
        threads: CPU threads of the engine (None: every CPU this process may use).
    """

    engine: str = field(
        default="auto",
        metadata={"group": ENGINE_OPTIONS_GROUP, "help": "what runs the networks on the CPU",
                  "choices": ENGINES},
    )  # fmt: skip
    threads: int | None = field(
        default=None,
        metadata={"group": ENGINE_OPTIONS_GROUP, "type": positive_int,
                  "help": "CPU threads of the engine (default: the CPUs this process may use)"},
    )  # fmt: skip

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise ValueError(f"cnn.engine {self.engine!r}: use one of {', '.join(ENGINES)}")
        if self.threads is not None and (isinstance(self.threads, bool) or int(self.threads) < 1):
            raise ValueError(f"cnn.threads must be a whole number >= 1 (got {self.threads!r})")


def load_engine_config(cnn: Mapping[str, Any] | None) -> EngineConfig:
    """The :class:`EngineConfig` of a run config's ``cnn:`` section (keys ``engine``,
    ``threads``; missing keys keep their defaults).

    Raises:
        ValueError: naming the key, for a bad value.
    """
    cnn = cnn or {}
    threads = cnn.get("threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)):
        raise ValueError(f"cnn.threads must be a whole number >= 1 (got {threads!r})")
    return EngineConfig(engine=str(cnn.get("engine", "auto")), threads=threads)


@dataclass(frozen=True)
class CNNConfig:
    """Both networks of the CNN arm (the run config's ``cnn:`` section)."""

    seg: SegConfig = field(default_factory=SegConfig)
    cls: ClsConfig = field(default_factory=ClsConfig)


#: Keys of a run config's ``cnn:`` section that belong to the run, not to the networks.
RUN_KEYS = ("enabled", "weights", "engine", "threads")

_TUPLE_FIELDS = {
    "channels": str,
    "regions": str,
    "patch_size": int,
    "roi_size": int,
    "input_size": int,
}


def _build(kind, raw: Mapping[str, Any], where: str, base=None):
    """A ``kind`` dataclass from a mapping; unknown keys are refused, naming ``where``."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: expected a mapping, got {type(raw).__name__}")
    known = {f.name: f for f in fields(kind)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown} (known: {', '.join(sorted(known))})")
    base = base if base is not None else kind()
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if name == "network":
            values[name] = NetworkSpec.from_dict(value, f"{where}.network")
        elif name == "train":
            values[name] = _build(TrainSettings, value, f"{where}.train", base.train)
        elif name in _TUPLE_FIELDS:
            values[name] = _tuple(value, _TUPLE_FIELDS[name])
        else:
            values[name] = value
    try:
        return dataclasses.replace(base, **values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from exc


def load_cnn_config(source: str | Path | Mapping[str, Any] | None = None) -> CNNConfig:
    """Read the CNN configuration.

    Args:
        source: None (defaults), a mapping (the run config's ``cnn:`` section, or a whole run
            config that has one), or a YAML file holding either.

    Raises:
        ValueError: naming the file / key for unknown keys or bad values.
        FileNotFoundError: for a missing file.
    """
    where = "cnn"
    if source is None:
        return CNNConfig()
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: CNN config file not found")
        import yaml

        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not readable YAML ({exc})") from exc
        where = f"{path}: cnn"
    else:
        raw = source
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: expected a mapping")
    if "cnn" in raw:
        # a whole run config: its cnn section also holds the run's own keys
        raw = {k: v for k, v in (raw["cnn"] or {}).items() if k not in RUN_KEYS}
    unknown = sorted(set(raw) - {"seg", "cls"})
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown} (known: cls, seg)")
    return CNNConfig(
        seg=_build(SegConfig, raw.get("seg"), f"{where}.seg"),
        cls=_build(ClsConfig, raw.get("cls"), f"{where}.cls"),
    )


def config_to_dict(config) -> dict[str, Any]:
    """A JSON-able dict of a SegConfig / ClsConfig / TrainSettings."""
    out: dict[str, Any] = {}
    for f in fields(config):
        value = getattr(config, f.name)
        if isinstance(value, NetworkSpec):
            out[f.name] = value.to_dict()
        elif dataclasses.is_dataclass(value):
            out[f.name] = config_to_dict(value)
        else:
            out[f.name] = _jsonable(value)
    return out


def config_hash(config) -> str:
    """sha256 (16 hex digits) of a config's canonical JSON."""
    canon = json.dumps(config_to_dict(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:16]
