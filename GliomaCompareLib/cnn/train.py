"""Training the segmentation and classification networks: one loop, two tasks.

What one call does (:func:`train_segmenter`, :func:`train_classifier`):

- prepares (and caches) every case of the split's ``train`` and ``val`` lists once; a bad case
  is reported and left out (:mod:`GliomaCompareLib.cnn.datasets`);
- seeds everything from ``train.seed`` (weights), then re-seeds at the start of every epoch
  from (seed, epoch, rank), so an interrupted run resumed from ``last.pt`` continues exactly as
  the uninterrupted run would have;
- trains with Adam (+ cosine annealing), AMP and ``cudnn.benchmark`` on CUDA, under DDP when
  started by ``torchrun``;
- validates after every epoch on the ``val`` patients (segmentation: mean Dice of the regions
  after sliding-window inference of the whole cropped case; classification: ROC AUC of P(HGG),
  ties broken by the lower validation loss) and keeps the best weights;
- classification: the decision threshold on P(HGG) is the one maximising Youden's J
  (sensitivity + specificity - 1) on the validation patients at the best epoch — never on test
  patients;
- writes ``model.safetensors`` + ``model.json`` (best), ``last.pt`` (resume state) and
  ``history.csv`` after every epoch, atomically.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from GliomaCompareLib.cnn.checkpoint import (
    INFO_FILE,
    STATE_FILE,
    WEIGHTS_FILE,
    IncompatibleModelError,
    ModelInfo,
    atomic_write_text,
    file_sha256,
    load_training_state,
    save_model,
    save_training_state,
)
from GliomaCompareLib.cnn.config import ClsConfig, SegConfig, config_hash, config_to_dict

__all__ = [
    "EpochRecord",
    "TrainResult",
    "TrainingCallback",
    "choose_threshold",
    "train_classifier",
    "train_segmenter",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochRecord:
    """One finished epoch.

    Attributes:
        epoch: 1-based epoch number (0: evaluation of given / untrained weights, no training).
        train_loss: mean training loss (nan for epoch 0).
        val: validation metrics (segmentation: ``dice_mean``, ``dice_<region>``;
            classification: ``auc``, ``loss``, ``balanced_accuracy``, ``sensitivity``,
            ``specificity``, ``threshold``).
        score: the selection metric (``dice_mean`` / ``auc``), nan without validation cases.
        lr: learning rate used in the epoch.
        seconds: wall time of the epoch including validation.
        best: whether this epoch's weights became the model.
    """

    epoch: int
    train_loss: float
    val: dict[str, float]
    score: float
    lr: float
    seconds: float
    best: bool


@dataclass(frozen=True)
class TrainResult:
    """What a training call produced.

    Attributes:
        task: ``"seg"`` / ``"cls"``.
        model_dir: folder with ``model.json`` / ``model.safetensors``.
        model_id: id of the kept (best) weights.
        best_epoch: epoch of the kept weights (0: given or untrained weights).
        score_name: ``"dice_mean"`` / ``"auc"``.
        best_score: its value at ``best_epoch``.
        threshold: decision threshold on P(HGG) (classification).
        history: every epoch so far (also those of an interrupted earlier call).
        resumed_from: epoch an interrupted run was resumed after, else None.
        train_cases, val_cases: case ids used.
        skipped: (case_id, reason) for each case left out.
        seconds: wall time of this call.
    """

    task: str
    model_dir: Path
    model_id: str
    best_epoch: int
    score_name: str
    best_score: float
    threshold: float | None
    history: tuple[EpochRecord, ...]
    resumed_from: int | None
    train_cases: tuple[str, ...]
    val_cases: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]
    seconds: float

    @property
    def best_metric(self) -> dict[str, float]:
        """``{score_name: best_score}``, e.g. ``{"dice_mean": 0.65}``."""
        return {self.score_name: self.best_score}


class TrainingCallback(Protocol):
    """Called by rank 0 after each epoch, once ``last.pt`` is safely on disk (progress
    displays, early stopping by raising, tests that interrupt a run)."""

    def on_epoch_end(self, record: EpochRecord) -> None: ...


def choose_threshold(y_true: Sequence[float], scores: Sequence[float]) -> dict[str, Any]:
    """Decision threshold on scores maximising Youden's J = sensitivity + specificity - 1.

    A case is positive (HGG) when ``score >= threshold``. Candidates are midpoints between
    consecutive distinct scores plus both extremes; among equally good ones the one nearest
    0.5 is taken.

    Returns:
        ``{"threshold", "balanced_accuracy", "sensitivity", "specificity", "note"}``; with
        only one class present, threshold 0.5 and a note saying so.
    """
    y = np.asarray(y_true, dtype=float) > 0.5
    s = np.asarray(scores, dtype=float)
    if y.all() or (~y).all():
        return {
            "threshold": 0.5,
            "balanced_accuracy": float("nan"),
            "sensitivity": float("nan"),
            "specificity": float("nan"),
            "note": "validation cases hold one grade only, so the threshold stays at 0.5",
        }
    u = np.unique(s)
    candidates = np.concatenate([[u[0]], (u[:-1] + u[1:]) / 2, [np.nextafter(u[-1], np.inf)]])
    best = None
    for t in candidates:
        pred = s >= t
        sens = float((pred & y).sum() / y.sum())
        spec = float((~pred & ~y).sum() / (~y).sum())
        key = (round(sens + spec, 12), -abs(t - 0.5))
        if best is None or key > best[0]:
            best = (key, float(t), sens, spec)
    _, t, sens, spec = best
    return {
        "threshold": t,
        "balanced_accuracy": (sens + spec) / 2,
        "sensitivity": sens,
        "specificity": spec,
        "note": "maximises Youden's J on the validation patients",
    }


# ----------------------------------------------------------------------------------------------
# the two tasks


class _SegTask:
    score_name = "dice_mean"

    def __init__(self, config: SegConfig):
        self.config = config
        self.task = "seg"

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
        from GliomaCompareLib.cnn.networks import channels_last

        image = channels_last(_plain(batch["image"]), device)
        return image, _plain(batch["label"]).to(device).float()

    def validate_case(self, network, item, device, amp, divisor) -> dict:
        import torch
        from monai.metrics import compute_dice

        from GliomaCompareLib.cnn.inference import segment_logits

        logits = segment_logits(network, _plain(item["image"]), self.config, device, amp, divisor)
        pred = (torch.sigmoid(logits) > self.config.threshold).float()[None]
        ref = _plain(item["label"]).float()[None]
        dice = compute_dice(pred, ref, include_background=True, ignore_empty=False)[0]
        return {"case_id": item["case_id"], "dice": [float(d) for d in dice]}

    def summarize(self, results: list[dict]) -> tuple[dict[str, float], float, float]:
        if not results:
            return {}, float("nan"), 0.0
        dice = np.array([r["dice"] for r in results], dtype=float)
        means = dice.mean(axis=0)
        val = {f"dice_{r}": float(m) for r, m in zip(self.config.regions, means, strict=True)}
        val["dice_mean"] = float(means.mean())
        return val, val["dice_mean"], 0.0


class _ClsTask:
    score_name = "auc"

    def __init__(self, config: ClsConfig):
        self.config = config
        self.task = "cls"

    out_channels = 1

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
        from GliomaCompareLib.cnn.networks import channels_last

        image = channels_last(_plain(batch["image"]), device)
        return image, _plain(batch["target"]).to(device).float()

    def validate_case(self, network, item, device, amp, divisor) -> dict:
        import torch

        from GliomaCompareLib.cnn.inference import _autocast
        from GliomaCompareLib.cnn.networks import channels_last

        image = channels_last(_plain(item["image"])[None], device)
        with torch.inference_mode(), _autocast(device, amp):
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
        if not results:
            return {}, float("nan"), 0.0
        y = [r["y"] for r in results]
        p = [r["p"] for r in results]
        loss = float(np.mean([r["loss"] for r in results]))
        auc = _roc_auc(y, p)
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


def _roc_auc(y: Sequence[float], p: Sequence[float]) -> float:
    """ROC AUC (MONAI ``compute_roc_auc``); nan when only one class is present."""
    import torch
    from monai.metrics import compute_roc_auc

    y_arr = np.asarray(y) > 0.5
    if y_arr.all() or (~y_arr).all():
        return float("nan")
    return float(
        compute_roc_auc(torch.tensor(p, dtype=torch.float64), torch.tensor(y_arr.astype(float)))
    )


def _plain(tensor):
    """A MONAI MetaTensor as a plain tensor (no metadata tracking in the hot loop)."""
    return tensor.as_tensor() if hasattr(tensor, "as_tensor") else tensor


# ----------------------------------------------------------------------------------------------
# public entry points


def train_segmenter(
    data,
    out_dir: str | Path,
    splits,
    config: SegConfig | None = None,
    **kwargs,
) -> TrainResult:
    """Train (or package given weights as) the segmentation model.

    Args:
        data: a :class:`~GliomaCompareLib.data.discovery.Cohort` or a data folder.
        out_dir: the model folder (``model.json``, ``model.safetensors``, ``last.pt``,
            ``history.csv``, ``cache/``).
        splits: a :class:`~GliomaCompareLib.data.splits.Splits` (trains on ``train``,
            selects on ``val``; ``test`` is never touched).
        config: the segmentation config (default: the ``brats_mri_segmentation`` recipe).
        **kwargs: ``device`` ("auto"), ``weights`` (initial weights file, e.g. the bundle's
            ``models/model.pt``; with ``epochs`` 0 they are packaged without training),
            ``resume`` (continue from ``last.pt``), ``overwrite`` (start again in a folder that
            holds a model), ``progress`` (bars), ``callbacks`` (:class:`TrainingCallback` s),
            ``convention`` (when ``data`` is a folder).

    Raises:
        FileExistsError: the folder holds a model and neither ``resume`` nor ``overwrite``.
        IncompatibleModelError: resuming with another config, split, convention or weights.
        WeightsError: ``weights`` that do not fit the architecture.
        ValueError: no usable training case.
    """
    return _train(_SegTask(config or SegConfig()), data, out_dir, splits, **kwargs)


def train_classifier(
    data,
    out_dir: str | Path,
    splits,
    config: ClsConfig | None = None,
    **kwargs,
) -> TrainResult:
    """Train the LGG / HGG classifier (outputs P(HGG)); same arguments as
    :func:`train_segmenter`. The decision threshold is chosen on the validation patients."""
    return _train(_ClsTask(config or ClsConfig()), data, out_dir, splits, **kwargs)


# ----------------------------------------------------------------------------------------------
# the loop


def _seed_epoch(seed: int, epoch: int, rank: int, dataset) -> int:
    import torch

    value = (seed * 1_000_003 + epoch * 7919 + rank) % (2**31 - 1)
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)
    transform = getattr(dataset, "transform", None)
    if transform is not None and hasattr(transform, "set_random_state"):
        transform.set_random_state(seed=value)
    return value


def _loader(task, data, ctx, epoch_seed: int, epoch: int):
    import torch
    from monai.data import DataLoader, DistributedSampler, DistributedWeightedRandomSampler

    settings = task.config.train
    generator = torch.Generator().manual_seed(epoch_seed)
    dataset = data.train
    sampler = None
    balanced = task.task == "cls" and task.config.imbalance == "balanced_sampler"
    if balanced:
        targets = np.asarray(data.train_targets)
        counts = {v: max(1, int((targets == v).sum())) for v in (0.0, 1.0)}
        weights = [1.0 / counts[float(t)] for t in targets]
        if ctx.enabled:
            sampler = DistributedWeightedRandomSampler(
                dataset, weights, generator=generator, num_replicas=ctx.world_size, rank=ctx.rank
            )
        else:
            sampler = torch.utils.data.WeightedRandomSampler(
                weights, num_samples=len(weights), replacement=True, generator=generator
            )
    elif ctx.enabled:
        sampler = DistributedSampler(
            dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=settings.seed
        )
        sampler.set_epoch(epoch)
    return DataLoader(
        dataset,
        batch_size=settings.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=settings.num_workers,
        generator=generator,
        drop_last=task.task == "cls" and len(dataset) > settings.batch_size,
    )


def _existing(model_dir: Path) -> bool:
    return any((model_dir / name).exists() for name in (INFO_FILE, WEIGHTS_FILE, STATE_FILE))


def _write_history(path: Path, history: Sequence[EpochRecord]) -> None:
    keys: list[str] = []
    for record in history:
        keys += [k for k in record.val if k not in keys]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["epoch", "train_loss", "score", *keys, "lr", "seconds", "best"])
    for r in history:
        writer.writerow(
            [
                r.epoch,
                f"{r.train_loss:.6f}",
                f"{r.score:.6f}",
                *(f"{r.val.get(k, float('nan')):.6f}" for k in keys),
                f"{r.lr:.3g}",
                f"{r.seconds:.2f}",
                int(r.best),
            ]
        )
    atomic_write_text(path, buffer.getvalue())


def _better(score: float, tiebreak: float, best: dict | None) -> bool:
    if best is None:
        return True
    if math.isnan(score):
        # no validation metric: prefer the lower validation loss if any, else the latest
        return math.isnan(best["score"]) and tiebreak >= best["tiebreak"]
    if math.isnan(best["score"]) or score > best["score"] + 1e-12:
        return True
    return abs(score - best["score"]) <= 1e-12 and tiebreak > best["tiebreak"] + 1e-12


def _train(
    task,
    data,
    out_dir: str | Path,
    splits,
    *,
    device: str | None = "auto",
    weights: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    callbacks: Sequence[TrainingCallback] = (),
    convention: str = "brats2020",
) -> TrainResult:
    import torch
    from tqdm.auto import tqdm

    from GliomaCompareLib.cnn.datasets import prepare_data
    from GliomaCompareLib.cnn.networks import (
        build_network,
        channels_last,
        load_weights,
        network_summary,
        size_divisor,
    )
    from GliomaCompareLib.data.discovery import Cohort, discover_cases
    from GliomaCompareLib.distributed import init_distributed

    started = time.perf_counter()
    config = task.config
    settings = config.train
    ctx = init_distributed(device)
    dev = ctx.device
    cohort = data if isinstance(data, Cohort) else discover_cases(data, convention)
    conv = cohort.convention
    model_dir = Path(out_dir)
    state_path = model_dir / STATE_FILE
    show = progress and ctx.is_main

    if _existing(model_dir) and not resume:
        if not overwrite:
            raise FileExistsError(
                f"{model_dir}: holds a {task.task} model already; pass --resume to continue its "
                "training, --overwrite to start again, or choose another --out"
            )
        if ctx.is_main:
            for name in (INFO_FILE, WEIGHTS_FILE, STATE_FILE, "history.csv"):
                (model_dir / name).unlink(missing_ok=True)
        ctx.barrier()
    if ctx.is_main:
        model_dir.mkdir(parents=True, exist_ok=True)

    weights_sha = file_sha256(weights) if weights and Path(weights).is_file() else ""
    arch = network_summary(config.network, len(config.channels), task.out_channels)
    run_key = {
        "task": task.task,
        "config": config_hash(config),
        "split_hash": splits.hash,
        "convention": conv.name,
        "weights_sha256": weights_sha,
    }

    # ---- model, optimiser, state
    torch.manual_seed(settings.seed)
    network = build_network(config.network, len(config.channels), task.out_channels, task.task)
    if weights:
        load_weights(network, weights, describe=_describe(arch))
    network = channels_last(network, dev)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = not settings.deterministic
        torch.backends.cudnn.deterministic = settings.deterministic
    amp = bool(settings.amp and dev.type == "cuda")
    optimizer = torch.optim.Adam(
        network.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, settings.epochs))
        if settings.scheduler == "cosine"
        else None
    )
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    start_epoch = 0
    best: dict | None = None
    history: list[EpochRecord] = []
    resumed_from = None
    if resume and state_path.is_file():
        state = load_training_state(state_path)
        differ = [k for k, v in run_key.items() if state.get("run_key", {}).get(k) != v]
        if differ:
            raise IncompatibleModelError(
                f"{state_path}: cannot resume: {', '.join(differ)} differ from the interrupted "
                "run (same config, split, convention and weights are needed); use --overwrite "
                "to start again"
            )
        network.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch = int(state["epoch"])
        best = dict(state["best"]) if state.get("best") else None
        history = [EpochRecord(**h) for h in state.get("history", [])]
        resumed_from = start_epoch
        if show:
            tqdm.write(f"{task.task}: resuming after epoch {start_epoch} from {state_path}")
    elif resume and _existing(model_dir) and ctx.is_main:
        log.warning("%s: no %s to resume from; starting from epoch 1", model_dir, STATE_FILE)

    # ---- data
    data_ = prepare_data(
        cohort,
        splits.ids("train"),
        splits.ids("val"),
        config,
        model_dir / "cache",
        is_main=ctx.is_main,
        barrier=ctx.barrier if ctx.enabled else None,
        progress=show,
    )
    if not data_.train_ids and settings.epochs > 0:
        reasons = "; ".join(f"{c}: {r}" for c, r in data_.skipped[:5])
        raise ValueError(
            f"No usable training case for the {task.task} network in split {splits.hash}"
            + (f" ({reasons})" if reasons else "")
        )
    for case_id, reason in data_.skipped:
        if show:
            tqdm.write(f"warning: {case_id} left out: {reason}")
    loss_fn = task.make_loss(data_, dev)
    model = network
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(
            network, device_ids=[dev.index] if dev.type == "cuda" else None
        )
    divisor = size_divisor(config.network)
    val_shard = data_.val[ctx.rank :: ctx.world_size]

    def validate() -> tuple[dict, float, float]:
        network.eval()
        results = [task.validate_case(network, item, dev, amp, divisor) for item in val_shard]
        gathered = [r for part in ctx.gather(results) for r in part]
        return task.summarize(gathered)

    def save_best(record: EpochRecord, val: dict) -> None:
        info = ModelInfo(
            task=task.task,
            model_id="",
            architecture=arch,
            channels=tuple(config.channels),
            regions=tuple(config.regions) if task.task == "seg" else (),
            convention=conv.name,
            preprocessing=config.preprocessing(),
            config=config_to_dict(config),
            split_hash=splits.hash,
            source=(f"weights: {weights}" if weights else "trained")
            if record.epoch
            else (f"weights: {weights} (not trained)" if weights else "untrained (random init)"),
            metrics={
                "best_epoch": record.epoch,
                "score_name": task.score_name,
                "score": record.score,
                "val": val,
                "train_cases": list(data_.train_ids),
                "val_cases": list(data_.val_ids),
                "skipped": [{"case_id": c, "reason": r} for c, r in data_.skipped],
                "epochs_planned": settings.epochs,
            },
            threshold=(val.get("threshold", 0.5) if task.task == "cls" else None),
        )
        save_model(model_dir, network.state_dict(), info)

    epochs = settings.epochs
    if epochs == 0 and not history:
        # package given (or untrained) weights: evaluate once, no training
        t0 = time.perf_counter()
        val, score, tiebreak = validate()
        record = EpochRecord(0, float("nan"), val, score, 0.0, time.perf_counter() - t0, True)
        history.append(record)
        best = {"epoch": 0, "score": score, "tiebreak": tiebreak}
        if ctx.is_main:
            save_best(record, val)
            _write_history(model_dir / "history.csv", history)
        ctx.barrier()

    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        seed_value = _seed_epoch(settings.seed, epoch, ctx.rank, data_.train)
        loader = _loader(task, data_, ctx, seed_value, epoch)
        model.train()
        losses = []
        lr = optimizer.param_groups[0]["lr"]
        bar = tqdm(
            loader,
            desc=f"{task.task} epoch {epoch + 1}/{epochs}",
            leave=False,
            disable=not show,
            unit="batch",
        )
        for batch in bar:
            inputs, target = task.step_inputs(batch, dev)
            optimizer.zero_grad(set_to_none=True)
            with _autocast(dev, amp):
                logits = model(inputs)
                loss = loss_fn(logits.float(), target)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses):.4f}")
        bar.close()
        if scheduler is not None:
            scheduler.step()
        train_loss = ctx.mean(float(np.mean(losses)) if losses else float("nan"))
        val, score, tiebreak = validate()
        improved = _better(score, tiebreak, best)
        if improved:
            best = {"epoch": epoch + 1, "score": score, "tiebreak": tiebreak}
        record = EpochRecord(
            epoch + 1, train_loss, val, score, lr, time.perf_counter() - t0, improved
        )
        history.append(record)
        if ctx.is_main:
            if improved:
                save_best(record, val)
            save_training_state(
                state_path,
                {
                    "model": network.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else {},
                    "scaler": scaler.state_dict() if amp else {},
                    "epoch": epoch + 1,
                    "best": best,
                    "history": [asdict(h) for h in history],
                    "run_key": run_key,
                },
            )
            _write_history(model_dir / "history.csv", history)
            if show:
                tqdm.write(_epoch_line(task, record, best, epochs))
        ctx.barrier()
        if ctx.is_main:
            for callback in callbacks:
                callback.on_epoch_end(record)

    from GliomaCompareLib.cnn.checkpoint import load_model_info

    ctx.barrier()
    info = load_model_info(model_dir)
    best_record = next((h for h in history if h.epoch == info.metrics.get("best_epoch")), None)
    return TrainResult(
        task=task.task,
        model_dir=model_dir,
        model_id=info.model_id,
        best_epoch=int(info.metrics.get("best_epoch", 0)),
        score_name=task.score_name,
        best_score=float(best_record.score) if best_record else float("nan"),
        threshold=info.threshold,
        history=tuple(history),
        resumed_from=resumed_from,
        train_cases=tuple(data_.train_ids),
        val_cases=tuple(data_.val_ids),
        skipped=tuple(data_.skipped),
        seconds=time.perf_counter() - started,
    )


def _autocast(device, amp: bool):
    from GliomaCompareLib.cnn.inference import _autocast as autocast

    return autocast(device, amp)


def _describe(arch: dict) -> str:
    args = ", ".join(f"{k}={v}" for k, v in sorted(arch["kwargs"].items()))
    return f"{arch['name']}({args}; in={arch['in_channels']}, out={arch['out_channels']})"


def _epoch_line(task, record: EpochRecord, best: dict | None, epochs: int) -> str:
    shown = ", ".join(f"{k} {v:.3f}" for k, v in record.val.items() if k != "threshold")
    mark = " *" if record.best else ""
    best_text = f" (best {best['score']:.3f} @ {best['epoch']})" if best else ""
    return (
        f"{task.task} epoch {record.epoch}/{epochs}: loss {record.train_loss:.4f}; val {shown or '-'}"
        f"{best_text}{mark}; {record.seconds:.1f} s"
    )
