"""The two training tasks: what differs between training the segmenter and the classifier.

A task says how many outputs the network has, which loss it trains with, how a batch becomes
network inputs and targets, how one validation case is scored and how the validation cases
sum up to the selection score (segmentation: mean Dice of the regions; classification: ROC AUC
of P(HGG) — the same AUC the report prints, :func:`GliomaCompareLib.metrics.classification.
auc_score` — ties broken by the lower validation loss). The training loop itself is in
:mod:`GliomaCompareLib.cnn.train`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from GliomaCompareLib.cnn.config import ClsConfig, SegConfig
from GliomaCompareLib.cnn.inference import autocast, segment_logits
from GliomaCompareLib.cnn.networks import channels_last
from GliomaCompareLib.metrics.classification import auc_score
from GliomaCompareLib.metrics.decisions import choose_threshold_youden

__all__ = ["ClsTask", "SegTask", "choose_threshold", "selection_auc"]


def choose_threshold(y_true: Sequence[float], scores: Sequence[float]) -> dict[str, Any]:
    """Decision threshold on scores maximising Youden's J = sensitivity + specificity - 1.

    The package's one threshold rule,
    :func:`GliomaCompareLib.metrics.decisions.choose_threshold_youden` (the VLM's validation
    threshold is chosen by it too): a case is positive (HGG) when ``score >= threshold``;
    candidates are midpoints between consecutive distinct scores plus both extremes; among
    equally good ones the one nearest 0.5 is taken.

    Returns:
        ``{"threshold", "balanced_accuracy", "sensitivity", "specificity", "note"}``; with
        only one class present, threshold 0.5 and a note saying so (the rates nan).
    """
    labels = (np.asarray(y_true, dtype=float) > 0.5).astype(np.int64)
    chosen = choose_threshold_youden(labels, np.asarray(scores, dtype=float))
    return {
        "threshold": chosen.threshold,
        "balanced_accuracy": chosen.balanced_accuracy,
        "sensitivity": chosen.sensitivity,
        "specificity": chosen.specificity,
        "note": chosen.note,
    }


def selection_auc(y_true: Sequence[float], scores: Sequence[float]) -> float:
    """ROC AUC of ``scores`` for the targets ``y_true > 0.5``; nan with one class only.

    The report's AUC (the rank / Mann-Whitney formula, ties count one half), as a float for
    model selection: nan where that returns None (a validation set of one grade), and nan when
    a score is nan (a diverged network), so such an epoch is never chosen for its AUC.
    """
    y = (np.asarray(y_true, dtype=float) > 0.5).astype(int)
    value = auc_score(y, np.asarray(scores, dtype=float))
    return float("nan") if value is None else float(value)


def _plain(tensor):
    """A MONAI MetaTensor as a plain tensor (no metadata tracking in the hot loop)."""
    return tensor.as_tensor() if hasattr(tensor, "as_tensor") else tensor


class SegTask:
    """Segmentation: one sigmoid output per region; selected on the mean validation Dice."""

    task = "seg"
    score_name = "dice_mean"

    def __init__(self, config: SegConfig):
        self.config = config

    @property
    def out_channels(self) -> int:
        return len(self.config.regions)

    def make_loss(self, data, device):
        import torch
        from monai.losses import DiceLoss

        dice = DiceLoss(sigmoid=True, squared_pred=True, smooth_nr=0.0, smooth_dr=1e-5)
        if self.config.loss == "dice":
            return dice
        bce = torch.nn.BCEWithLogitsLoss()
        return lambda logits, target: dice(logits, target) + bce(logits, target)

    def step_inputs(self, batch, device):
        image = channels_last(_plain(batch["image"]), device)
        return image, _plain(batch["label"]).to(device).float()

    def validate_case(self, network, item, device, amp, divisor) -> dict:
        import torch
        from monai.metrics import compute_dice

        logits = segment_logits(network, _plain(item["image"]), self.config, device, amp, divisor)
        pred = (torch.sigmoid(logits) > self.config.threshold).float()[None]
        ref = _plain(item["label"]).float()[None]
        dice = compute_dice(pred, ref, include_background=True, ignore_empty=False)[0]
        return {"case_id": item["case_id"], "dice": [float(d) for d in dice]}

    def summarize(self, results: list[dict]) -> tuple[dict[str, float], float, float]:
        """(validation metrics, selection score, tie-break: higher is better)."""
        if not results:
            return {}, float("nan"), 0.0
        dice = np.array([r["dice"] for r in results], dtype=float)
        means = dice.mean(axis=0)
        val = {f"dice_{r}": float(m) for r, m in zip(self.config.regions, means, strict=True)}
        val["dice_mean"] = float(means.mean())
        return val, val["dice_mean"], 0.0


class ClsTask:
    """Classification: one logit (P(HGG) after a sigmoid); selected on the validation AUC, ties
    broken by the lower validation loss."""

    task = "cls"
    score_name = "auc"
    out_channels = 1

    def __init__(self, config: ClsConfig):
        self.config = config

    def make_loss(self, data, device):
        import torch

        pos_weight = None
        if self.config.imbalance == "weighted_loss":
            n_pos = sum(t > 0.5 for t in data.train_targets)
            n_neg = len(data.train_targets) - n_pos
            if n_pos and n_neg:
                pos_weight = torch.tensor([n_neg / n_pos], device=device)
        return torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)

    def step_inputs(self, batch, device):
        image = channels_last(_plain(batch["image"]), device)
        return image, _plain(batch["target"]).to(device).float()

    def validate_case(self, network, item, device, amp, divisor) -> dict:
        import torch

        image = channels_last(_plain(item["image"])[None], device)
        with torch.inference_mode(), autocast(device, amp):
            logit = network(image).float().reshape(-1)[:1].cpu()
        target = _plain(item["target"]).float().reshape(-1)[:1]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, target)
        return {
            "case_id": item["case_id"],
            "p": float(torch.sigmoid(logit)[0]),
            "y": float(target[0]),
            "loss": float(loss),
        }

    def summarize(self, results: list[dict]) -> tuple[dict[str, float], float, float]:
        """(validation metrics, selection score, tie-break: higher is better)."""
        if not results:
            return {}, float("nan"), 0.0
        y = [r["y"] for r in results]
        p = [r["p"] for r in results]
        loss = float(np.mean([r["loss"] for r in results]))
        auc = selection_auc(y, p)
        chosen = choose_threshold(y, p)
        val = {
            "auc": auc,
            "loss": loss,
            "balanced_accuracy": chosen["balanced_accuracy"],
            "sensitivity": chosen["sensitivity"],
            "specificity": chosen["specificity"],
            "threshold": chosen["threshold"],
        }
        return val, auc, -loss
