"""Training and validation data: MONAI datasets over the cases of a split.

The deterministic part (load the case, pick channels, crop to the brain, normalise, targets) is
one MONAI ``MapTransform`` that calls the same functions inference uses
(:mod:`GliomaCompareLib.cnn.preprocess`). Its output is cached: on disk by MONAI's
``PersistentDataset`` (``cache: disk``, under the model's output folder; the cache key is the
case id plus a fingerprint of its files' sizes and modification times and of the preprocessing
settings, so changed files or settings are never served stale), in memory (``cache: memory``),
or not at all (``cache: none``). Random augmentation follows (MONAI transforms).

Every case is prepared once up front; a case that fails (missing label map, unreadable file,
empty image ...) is reported with its reason and left out, and the others go on.

torch and MONAI are imported only when data are prepared (``import`` of this module stays
light); :class:`PrepareCased` is made on first use for the same reason.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from GliomaCompareLib.cnn.config import ClsConfig, SegConfig, config_to_dict
from GliomaCompareLib.cnn.preprocess import prepare_image, region_targets, resize_image
from GliomaCompareLib.data.case import load_case

__all__ = ["PreparedData", "case_fingerprint", "prepare_data", "random_transform"]

log = logging.getLogger(__name__)

GRADE_TARGET = {"LGG": 0.0, "HGG": 1.0}


def case_fingerprint(record, extra: str = "") -> str:
    """Hash of a case's file paths, sizes and modification times (plus ``extra``)."""
    parts = [record.case_id, extra]
    paths = [*record.modality_paths.values(), record.label_path]
    for path in paths:
        if path is None:
            parts.append("-")
            continue
        stat = Path(path).stat()
        parts.append(f"{path}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


def _prep_key(config: SegConfig | ClsConfig, convention) -> str:
    """What the cached output depends on: preprocessing settings and the convention."""
    cfg = config_to_dict(config)
    keep = {"task": config.task, "convention": convention.name, "channels": cfg["channels"]}
    keep["crop_margin"] = cfg["crop_margin"]
    if config.task == "seg":
        keep["regions"] = cfg["regions"]
    else:
        keep["input_size"] = cfg["input_size"]
    return json.dumps(keep, sort_keys=True)


class _CasePreparation:
    """Deterministic preparation of an item ``{"case_id", "fingerprint"}`` (a MONAI
    ``MapTransform``, so MONAI datasets cache its output).

    Output keys: ``case_id``, ``fingerprint``, ``crop_start`` and ``image`` (float32
    ``(C, x, y, z)``, cropped and normalised; classification: resized to ``input_size``) plus,
    for segmentation, ``label`` (uint8 ``(R, x, y, z)``, one channel per region) and ``fg``
    (their union, ``(1, x, y, z)``, for patch sampling); for classification ``target``
    (``[1.0]`` HGG, ``[0.0]`` LGG).

    Raises:
        ValueError / KeyError: naming the case (no label map, no grade, missing channel ...).
    """

    def __init__(self, records: dict[str, Any], config: SegConfig | ClsConfig, convention):
        super().__init__(keys=["case_id"])
        self.records = records
        self.config = config
        self.convention = convention

    def __call__(self, data: dict) -> dict:
        import torch

        case_id = data["case_id"]
        record = self.records[case_id]
        task = self.config.task
        case = load_case(record, self.convention, with_label=task == "seg")
        image, crop = prepare_image(case, self.config.channels, self.config.crop_margin)
        out = {"case_id": case_id, "fingerprint": data["fingerprint"]}
        out["crop_start"] = torch.tensor(crop.start)
        if task == "seg":
            if case.label is None:
                raise ValueError(f"{case_id}: no label map, so it cannot train a segmenter")
            label = case.label[crop.slices]
            targets = region_targets(label, self.config.regions, self.convention)
            out["image"] = torch.from_numpy(np.ascontiguousarray(image))
            out["label"] = torch.from_numpy(targets)
            out["fg"] = torch.from_numpy(targets.max(axis=0, keepdims=True))
        else:
            if case.grade not in GRADE_TARGET:
                raise ValueError(f"{case_id}: grade unknown, so it cannot train a classifier")
            resized = resize_image(image, self.config.input_size)
            out["image"] = torch.from_numpy(np.ascontiguousarray(resized))
            out["target"] = torch.tensor([GRADE_TARGET[case.grade]], dtype=torch.float32)
        return out


@functools.cache
def _prepare_cased_class() -> type:
    """``PrepareCased``: :class:`_CasePreparation` as a MONAI ``MapTransform`` (made once, on
    first use, so that importing this module does not import MONAI)."""
    from monai.transforms import MapTransform

    namespace = {"__module__": __name__, "__doc__": _CasePreparation.__doc__}
    return type("PrepareCased", (_CasePreparation, MapTransform), namespace)


def __getattr__(name: str):
    if name == "PrepareCased":  # pickle finds the class here too (DataLoader workers)
        return _prepare_cased_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def random_transform(config: SegConfig | ClsConfig):
    """The training augmentation (MONAI transforms), after the cached preparation.

    Segmentation: ``RandCropByPosNegLabeld`` (``pos_fraction`` of the patches centred on
    tumour), padding to the patch size where the brain is smaller, random flips on all three axes, intensity scale and shift (factor 0.1,
    as the bundle). Classification (with ``augment``): left-right flip, small rotation and
    scaling, intensity scale and shift.
    """
    from monai.transforms import (
        Compose,
        DeleteItemsd,
        RandAffined,
        RandCropByPosNegLabeld,
        RandFlipd,
        RandScaleIntensityd,
        RandShiftIntensityd,
        SpatialPadd,
    )

    if config.task == "seg":
        keys = ["image", "label"]
        pos = float(config.pos_fraction)
        # every transform here is random or follows a random one, so the cached preparation
        # is exactly PrepareCased's output (PersistentDataset caches up to the first random one)
        return Compose(
            [
                RandCropByPosNegLabeld(
                    keys=keys,
                    label_key="fg",
                    spatial_size=config.patch_size,
                    pos=pos,
                    neg=1.0 - pos,
                    num_samples=config.samples_per_case,
                    allow_smaller=True,
                ),
                DeleteItemsd(keys=["fg"]),
                SpatialPadd(keys=keys, spatial_size=config.patch_size),
                RandFlipd(keys=keys, prob=0.5, spatial_axis=0),
                RandFlipd(keys=keys, prob=0.5, spatial_axis=1),
                RandFlipd(keys=keys, prob=0.5, spatial_axis=2),
                RandScaleIntensityd(keys="image", factors=0.1, prob=1.0),
                RandShiftIntensityd(keys="image", offsets=0.1, prob=1.0),
            ]
        )
    if not config.augment:
        return Compose([])
    return Compose(
        [
            RandFlipd(keys="image", prob=0.5, spatial_axis=0),
            RandAffined(
                keys="image",
                prob=0.5,
                rotate_range=(0.1, 0.1, 0.1),
                scale_range=(0.05, 0.05, 0.05),
                padding_mode="zeros",
            ),
            RandScaleIntensityd(keys="image", factors=0.1, prob=1.0),
            RandShiftIntensityd(keys="image", offsets=0.1, prob=1.0),
        ]
    )


@dataclass
class PreparedData:
    """Datasets of one task over a split.

    Attributes:
        train: MONAI dataset yielding augmented training items.
        val: list of prepared (not augmented) validation items (dicts of tensors).
        train_ids, val_ids: case ids kept.
        train_targets: grade targets of the training cases (classification), for sampling.
        skipped: (case_id, reason) of every case left out.
    """

    train: Any
    val: list[dict]
    train_ids: list[str]
    val_ids: list[str]
    train_targets: list[float]
    skipped: list[tuple[str, str]]


def prepare_data(
    cohort,
    train_ids: Sequence[str],
    val_ids: Sequence[str],
    config: SegConfig | ClsConfig,
    cache_dir: str | Path | None,
    *,
    is_main: bool = True,
    barrier=None,
    progress: bool = False,
) -> PreparedData:
    """Prepare (and cache) every case of the split once; build the datasets.

    Args:
        cohort: the discovered cohort (:class:`~GliomaCompareLib.data.discovery.Cohort`).
        train_ids, val_ids: case ids from the split.
        config: the task config.
        cache_dir: where ``PersistentDataset`` keeps prepared cases (``cache: disk``).
        is_main, barrier: under DDP, the main process fills the disk cache first and the others
            wait at ``barrier()`` before reading it.
        progress: show a progress bar.
    """
    conv = cohort.convention
    records, skipped = _usable_records(cohort, (*train_ids, *val_ids))
    key = _prep_key(config, conv)
    items = {c: {"case_id": c, "fingerprint": case_fingerprint(r, key)} for c, r in records.items()}
    prepare = _prepare_cased_class()(records, config, conv)
    mode = config.train.cache
    if mode == "disk":
        if cache_dir is None:
            raise ValueError("cache 'disk' needs a cache folder")
        cache_dir = Path(cache_dir)
        cache_dir.mkdir(parents=True, exist_ok=True)
    order = [c for c in (*train_ids, *val_ids) if c in items]
    keep = set(order) if mode == "memory" else set(val_ids)  # prepared items held in memory
    disk = cache_dir if mode == "disk" else None
    show = progress and is_main
    if mode == "disk" and barrier is not None and not is_main:
        barrier()  # the main process fills the cache first
        warmed = _warm(order, items, prepare, config.task, disk, keep, skipped, show)
    else:
        warmed = _warm(order, items, prepare, config.task, disk, keep, skipped, show)
        if mode == "disk" and barrier is not None:
            barrier()
    ok, targets, kept = warmed
    train_ok = [c for c in train_ids if c in ok]
    val_ok = [c for c in val_ids if c in ok]
    return PreparedData(
        train=_train_dataset(
            mode, train_ok, items, kept, prepare, random_transform(config), cache_dir
        ),
        val=[kept[c] for c in val_ok],
        train_ids=train_ok,
        val_ids=val_ok,
        train_targets=[targets[c] for c in train_ok if c in targets],
        skipped=skipped,
    )


def _usable_records(cohort, case_ids: Sequence[str]) -> tuple[dict[str, Any], list]:
    """({case_id: record} of the usable cases, [(case_id, reason)] of the others)."""
    skipped: list[tuple[str, str]] = []
    records: dict[str, Any] = {}
    for case_id in case_ids:
        try:
            record = cohort.get(case_id)
        except KeyError:
            skipped.append((case_id, "in the split but not found in the data folder"))
            continue
        if not record.usable:
            skipped.append((case_id, "; ".join(record.problems)))
            continue
        records[case_id] = record
    return records, skipped


def _warm(order, items, prepare, task: str, cache_dir, keep: set, skipped: list, show: bool):
    """Prepare every case once (through the disk cache when ``cache_dir`` is set, else
    directly).

    Returns:
        (case ids prepared, {case_id: grade target}, {case_id: item} of the ``keep`` cases);
        a case that fails is appended to ``skipped`` with its reason.
    """
    from monai.data import PersistentDataset
    from tqdm.auto import tqdm

    ok: set[str] = set()
    targets: dict[str, float] = {}
    kept: dict[str, dict] = {}
    ds = (
        PersistentDataset([items[c] for c in order], prepare, cache_dir=cache_dir)
        if cache_dir is not None
        else None
    )
    bar = tqdm(order, desc=f"prepare {task} cases", disable=not show)
    for i, case_id in enumerate(bar):
        try:
            item = ds[i] if ds is not None else prepare(dict(items[case_id]))
        except Exception as exc:  # one bad case never stops the others
            reason = _innermost(exc)
            log.warning("%s: left out of %s training: %s", case_id, task, reason)
            skipped.append((case_id, reason))
            continue
        ok.add(case_id)
        if "target" in item:
            targets[case_id] = float(item["target"][0])
        if case_id in keep:
            kept[case_id] = item
    return ok, targets, kept


def _train_dataset(mode: str, train_ok, items, kept, prepare, augment, cache_dir):
    """The training dataset: prepared items (cached on disk, in memory or not) + augmentation."""
    from monai.data import CacheDataset, Dataset, PersistentDataset
    from monai.transforms import Compose

    if mode == "disk":
        chain = Compose([prepare, *augment.transforms])
        return PersistentDataset([items[c] for c in train_ok], chain, cache_dir=cache_dir)
    if mode == "memory":
        return CacheDataset([kept[c] for c in train_ok], augment, progress=False)
    return Dataset([items[c] for c in train_ok], Compose([prepare, *augment.transforms]))


def _innermost(exc: BaseException) -> str:
    """The most specific message of an exception chain (MONAI wraps transform errors)."""
    inner = exc
    while inner.__cause__ is not None:
        inner = inner.__cause__
    text = str(inner) or str(exc) or type(exc).__name__
    return text.strip().splitlines()[0]
