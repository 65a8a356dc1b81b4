"""The CNN arm: MONAI 3D networks that segment gliomas (TC / WT / ET) and grade them (LGG / HGG).

Public API (imported lazily, so ``import GliomaCompareLib.cnn`` does not import torch):

- configuration: :class:`SegConfig`, :class:`ClsConfig`, :class:`TrainSettings`,
  :class:`NetworkSpec`, :class:`CNNConfig`, :func:`load_cnn_config`;
- training: :func:`train_segmenter`, :func:`train_classifier` -> :class:`TrainResult`,
  :func:`choose_threshold`;
- inference: :func:`load_segmenter` / :class:`Segmenter`, :func:`load_classifier` /
  :class:`Classifier`, :func:`predict_cases` -> :class:`PredictionRun`;
- checkpoints: :class:`ModelInfo`, :func:`load_model_info`, :class:`IncompatibleModelError`;
- networks: :func:`build_network`, :func:`read_state_dict`, :class:`WeightsError`.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "BUNDLE_CHANNELS": "config",
    "BUNDLE_REGIONS": "config",
    "CNNConfig": "config",
    "ClsConfig": "config",
    "NetworkSpec": "config",
    "SegConfig": "config",
    "TrainSettings": "config",
    "load_cnn_config": "config",
    "CNNEpoch": "train",
    "EpochRecord": "train",
    "TrainResult": "train",
    "TrainingCallback": "train",
    "choose_threshold": "train",
    "train_classifier": "train",
    "train_segmenter": "train",
    "CasePrediction": "inference",
    "Classifier": "inference",
    "ClassifierLike": "inference",
    "GradeOutput": "inference",
    "PredictionRun": "inference",
    "SegmentationOutput": "inference",
    "Segmenter": "inference",
    "SegmenterLike": "inference",
    "load_classifier": "inference",
    "load_segmenter": "inference",
    "predict_cases": "inference",
    "IncompatibleModelError": "checkpoint",
    "ModelInfo": "checkpoint",
    "load_model_info": "checkpoint",
    "WeightsError": "networks",
    "build_network": "networks",
    "read_state_dict": "networks",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'GliomaCompareLib.cnn' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"GliomaCompareLib.cnn.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted((*globals(), *_EXPORTS))
