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
  after sliding-window inference of the whole cropped case; classification: ROC AUC of P(HGG)
  by the report's formula, :func:`GliomaCompareLib.metrics.classification.auc_score`, ties
  broken by the lower validation loss) and keeps the best weights;
- classification: the decision threshold on P(HGG) is the one maximising Youden's J
  (sensitivity + specificity - 1) on the validation patients at the best epoch — never on test
  patients;
- writes ``model.safetensors`` + ``model.json`` (best), ``last.pt`` (resume state) and
  ``history.csv`` after every epoch, atomically.

:func:`_train` is the workflow, a list of steps; each step is a method of :class:`_Trainer`,
which holds what the steps share. What differs between the two tasks is in
:mod:`GliomaCompareLib.cnn.tasks`. Epochs are :class:`CNNEpoch` records, written to ``history.csv``
by the shared :func:`GliomaCompareLib.history.write_history`.
"""

from __future__ import annotations

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
    describe_architecture,
    file_sha256,
    load_model_info,
    load_training_state,
    save_model,
    save_training_state,
)
from GliomaCompareLib.cnn.config import ClsConfig, SegConfig, config_hash, config_to_dict
from GliomaCompareLib.cnn.datasets import prepare_data
from GliomaCompareLib.cnn.inference import autocast
from GliomaCompareLib.cnn.networks import (
    build_network,
    channels_last,
    load_weights,
    network_summary,
    size_divisor,
)
from GliomaCompareLib.cnn.tasks import ClsTask, SegTask, choose_threshold
from GliomaCompareLib.data.discovery import Cohort, discover_cases
from GliomaCompareLib.distributed import DistContext, init_distributed
from GliomaCompareLib.history import EpochRecord, write_history

__all__ = [
    "CNNEpoch",
    "EpochRecord",
    "TrainResult",
    "TrainingCallback",
    "choose_threshold",
    "train_classifier",
    "train_segmenter",
]

log = logging.getLogger(__name__)

HISTORY_FILE = "history.csv"
#: ``history.csv``: these first, the validation metrics, then :data:`_HISTORY_LAST`.
_HISTORY_FIRST = ("epoch", "train_loss", "score")
_HISTORY_LAST = ("lr", "seconds", "best")
_HISTORY_OPTIONS: dict[str, Any] = {
    "first": _HISTORY_FIRST,
    "last": _HISTORY_LAST,
    "float_format": ".6f",
    "formats": {"lr": ".3g", "seconds": ".2f"},
    "missing": "nan",
}


@dataclass(frozen=True, kw_only=True)
class CNNEpoch(EpochRecord):
    """One finished CNN epoch (an :class:`~GliomaCompareLib.history.EpochRecord`).

    Attributes:
        epoch: 1-based epoch number (0: evaluation of given / untrained weights, no training).
        seconds: wall time of the epoch including validation.
        metrics: the validation metrics, also as :attr:`val` (segmentation: ``dice_mean``,
            ``dice_<region>``; classification: ``auc``, ``loss``, ``balanced_accuracy``,
            ``sensitivity``, ``specificity``, ``threshold``).
        train_loss: mean training loss (nan for epoch 0).
        score: the selection metric (``dice_mean`` / ``auc``), nan without validation cases.
        lr: learning rate used in the epoch.
        best: whether this epoch's weights became the model.
    """

    train_loss: float
    score: float
    lr: float
    best: bool

    @property
    def val(self) -> dict[str, float]:
        return dict(self.metrics)

    def row(self) -> dict[str, Any]:
        """``epoch, train_loss, score, <val keys>, lr, seconds, best`` (floats as floats)."""
        return {
            "epoch": self.epoch,
            "train_loss": float(self.train_loss),
            "score": float(self.score),
            **{k: float(v) for k, v in self.metrics.items()},
            "lr": float(self.lr),
            "seconds": float(self.seconds),
            "best": bool(self.best),
        }

    @classmethod
    def from_state(cls, data: dict) -> CNNEpoch:
        """A record from ``last.pt``'s history (also the older layout with ``val``)."""
        data = dict(data)
        if "val" in data:
            data["metrics"] = data.pop("val")
        return cls(**data)


def write_epochs(path: str | Path, history: Sequence[CNNEpoch]) -> Path:
    """Write the CNN's ``history.csv``: ``epoch, train_loss, score, <val keys>, lr, seconds,
    best`` (a val key missing from a record is written as nan)."""
    return write_history(path, history, **_HISTORY_OPTIONS)


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
    history: tuple[CNNEpoch, ...]
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

    def on_epoch_end(self, record: CNNEpoch) -> None: ...


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
    return _train(SegTask(config or SegConfig()), data, out_dir, splits, **kwargs)


def train_classifier(
    data,
    out_dir: str | Path,
    splits,
    config: ClsConfig | None = None,
    **kwargs,
) -> TrainResult:
    """Train the LGG / HGG classifier (outputs P(HGG)); same arguments as
    :func:`train_segmenter`. The decision threshold is chosen on the validation patients."""
    return _train(ClsTask(config or ClsConfig()), data, out_dir, splits, **kwargs)


# ----------------------------------------------------------------------------------------------
# the workflow


def _train(
    task: SegTask | ClsTask,
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
    """Train one task's network (arguments: :func:`train_segmenter`)."""
    started = time.perf_counter()
    # where: the process group, this rank's device, the cohort
    ctx = init_distributed(device)
    cohort = data if isinstance(data, Cohort) else discover_cases(data, convention)
    trainer = _Trainer(task, cohort, Path(out_dir), splits, ctx, weights, progress and ctx.is_main)
    # the model folder: refuse, clear or keep (to resume) what is there
    trainer.clear_folder(resume=resume, overwrite=overwrite)
    # network (seeded from train.seed, given weights loaded), optimiser, scheduler, AMP scaler
    trainer.build_model()
    # the interrupted run's state, from last.pt
    if resume:
        trainer.resume()
    # data: prepared cases, loss, the DDP wrapper, this rank's validation cases
    trainer.load_data()
    # given (or untrained) weights without training: evaluate once and keep them
    if trainer.epochs == 0 and not trainer.history:
        trainer.package()
    # the epochs: train and validate, checkpoint, tell the callbacks
    for epoch in range(trainer.start_epoch, trainer.epochs):
        record = trainer.run_epoch(epoch)
        trainer.checkpoint(record)
        trainer.notify(callbacks, record)
    # the kept model, as written
    return trainer.finish(started)


class _Trainer:
    """What the steps of :func:`_train` share: the run's identity, the model and its state.

    Only rank 0 writes files and shows progress; every rank trains and validates its share.
    """

    def __init__(
        self,
        task: SegTask | ClsTask,
        cohort: Cohort,
        model_dir: Path,
        splits,
        ctx: DistContext,
        weights: str | Path | None,
        show: bool,
    ):
        self.task = task
        self.config = task.config
        self.settings = task.config.train
        self.epochs = self.settings.epochs
        self.cohort = cohort
        self.model_dir = model_dir
        self.state_path = model_dir / STATE_FILE
        self.splits = splits
        self.ctx = ctx
        self.dev = ctx.device
        self.weights = weights
        self.show = show
        # the training state (a resumed run starts from its own)
        self.start_epoch = 0
        self.best: dict | None = None
        self.history: list[CNNEpoch] = []
        self.resumed_from: int | None = None

    # ---- the model folder, the model and its state

    def clear_folder(self, *, resume: bool, overwrite: bool) -> None:
        """Refuse a folder that holds a model (unless resuming or overwriting); clear it to
        overwrite; create it."""
        ctx = self.ctx
        if _existing(self.model_dir) and not resume:
            if not overwrite:
                raise FileExistsError(
                    f"{self.model_dir}: holds a {self.task.task} model already; pass --resume to "
                    "continue its training, --overwrite to start again, or choose another --out"
                )
            if ctx.is_main:
                for name in (INFO_FILE, WEIGHTS_FILE, STATE_FILE, HISTORY_FILE):
                    (self.model_dir / name).unlink(missing_ok=True)
            ctx.barrier()
        if ctx.is_main:
            self.model_dir.mkdir(parents=True, exist_ok=True)

    def build_model(self) -> None:
        """The run's key (what a resumed run must share), the network with given weights,
        optimiser, scheduler and AMP scaler."""
        import torch

        config, settings, task = self.config, self.settings, self.task
        weights = self.weights
        weights_sha = file_sha256(weights) if weights and Path(weights).is_file() else ""
        self.arch = network_summary(config.network, len(config.channels), task.out_channels)
        self.run_key = {
            "task": task.task,
            "config": config_hash(config),
            "split_hash": self.splits.hash,
            "convention": self.cohort.convention.name,
            "weights_sha256": weights_sha,
        }
        torch.manual_seed(settings.seed)
        network = build_network(config.network, len(config.channels), task.out_channels, task.task)
        if weights:
            load_weights(network, weights, describe=describe_architecture(self.arch))
        self.network = channels_last(network, self.dev)
        if self.dev.type == "cuda":
            torch.backends.cudnn.benchmark = not settings.deterministic
            torch.backends.cudnn.deterministic = settings.deterministic
        self.amp = bool(settings.amp and self.dev.type == "cuda")
        self.optimizer = torch.optim.Adam(
            self.network.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
        )
        self.scheduler = (
            torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=max(1, self.epochs))
            if settings.scheduler == "cosine"
            else None
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)

    def resume(self) -> None:
        """Continue after the last finished epoch of ``last.pt`` (when there is one).

        Raises:
            IncompatibleModelError: when its config, split, convention or weights differ.
        """
        if not self.state_path.is_file():
            if _existing(self.model_dir) and self.ctx.is_main:
                log.warning(
                    "%s: no %s to resume from; starting from epoch 1", self.model_dir, STATE_FILE
                )
            return
        state = load_training_state(self.state_path)
        differ = [k for k, v in self.run_key.items() if state.get("run_key", {}).get(k) != v]
        if differ:
            raise IncompatibleModelError(
                f"{self.state_path}: cannot resume: {', '.join(differ)} differ from the "
                "interrupted run (same config, split, convention and weights are needed); use "
                "--overwrite to start again"
            )
        self.network.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler"):
            self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.start_epoch = int(state["epoch"])
        self.best = dict(state["best"]) if state.get("best") else None
        self.history = [CNNEpoch.from_state(h) for h in state.get("history", [])]
        self.resumed_from = self.start_epoch
        if self.show:
            _write_line(
                f"{self.task.task}: resuming after epoch {self.start_epoch} from {self.state_path}"
            )

    def load_data(self) -> None:
        """Prepare the split's cases; the loss, the (DDP) model and this rank's validation cases.

        Raises:
            ValueError: no usable training case (when there are epochs to train).
        """
        ctx = self.ctx
        self.data = prepare_data(
            self.cohort,
            self.splits.ids("train"),
            self.splits.ids("val"),
            self.config,
            self.model_dir / "cache",
            is_main=ctx.is_main,
            barrier=ctx.barrier if ctx.enabled else None,
            progress=self.show,
        )
        if not self.data.train_ids and self.epochs > 0:
            reasons = "; ".join(f"{c}: {r}" for c, r in self.data.skipped[:5])
            raise ValueError(
                f"No usable training case for the {self.task.task} network in split "
                f"{self.splits.hash}" + (f" ({reasons})" if reasons else "")
            )
        for case_id, reason in self.data.skipped:
            if self.show:
                _write_line(f"warning: {case_id} left out: {reason}")
        self.loss_fn = self.task.make_loss(self.data, self.dev)
        self.model = _ddp(self.network, ctx)
        self.divisor = size_divisor(self.config.network)
        self.val_shard = self.data.val[ctx.rank :: ctx.world_size]

    # ---- an epoch

    def package(self) -> None:
        """Epoch 0: validate the given (or untrained) weights once and keep them."""
        t0 = time.perf_counter()
        val, score, tiebreak = self.validate()
        record = CNNEpoch(
            epoch=0,
            seconds=time.perf_counter() - t0,
            metrics=val,
            train_loss=float("nan"),
            score=score,
            lr=0.0,
            best=True,
        )
        self.history.append(record)
        self.best = {"epoch": 0, "score": score, "tiebreak": tiebreak}
        if self.ctx.is_main:
            self.save_best(record)
            write_epochs(self.model_dir / HISTORY_FILE, self.history)
        self.ctx.barrier()

    def run_epoch(self, epoch: int) -> CNNEpoch:
        """Train one epoch (re-seeded from (seed, epoch, rank)), validate, keep the best."""
        t0 = time.perf_counter()
        lr = self.optimizer.param_groups[0]["lr"]
        train_loss = self.train_epoch(epoch)
        val, score, tiebreak = self.validate()
        improved = _better(score, tiebreak, self.best)
        if improved:
            self.best = {"epoch": epoch + 1, "score": score, "tiebreak": tiebreak}
        record = CNNEpoch(
            epoch=epoch + 1,
            seconds=time.perf_counter() - t0,
            metrics=val,
            train_loss=train_loss,
            score=score,
            lr=lr,
            best=improved,
        )
        self.history.append(record)
        return record

    def train_epoch(self, epoch: int) -> float:
        """One pass over the training data; the mean loss over batches and ranks."""
        from tqdm.auto import tqdm

        seed_value = _seed_epoch(self.settings.seed, epoch, self.ctx.rank, self.data.train)
        loader = _loader(self.task, self.data, self.ctx, seed_value, epoch)
        self.model.train()
        losses = []
        bar = tqdm(
            loader,
            desc=f"{self.task.task} epoch {epoch + 1}/{self.epochs}",
            leave=False,
            disable=not self.show,
            unit="batch",
        )
        for batch in bar:
            losses.append(self.step(batch))
            bar.set_postfix(loss=f"{np.mean(losses):.4f}")
        bar.close()
        if self.scheduler is not None:
            self.scheduler.step()
        return self.ctx.mean(float(np.mean(losses)) if losses else float("nan"))

    def step(self, batch) -> float:
        """One optimiser step on a batch; its loss."""
        inputs, target = self.task.step_inputs(batch, self.dev)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.dev, self.amp):
            logits = self.model(inputs)
            loss = self.loss_fn(logits.float(), target)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach())

    def validate(self) -> tuple[dict, float, float]:
        """(validation metrics, selection score, tie-break) over every rank's cases."""
        self.network.eval()
        results = [
            self.task.validate_case(self.network, item, self.dev, self.amp, self.divisor)
            for item in self.val_shard
        ]
        gathered = [r for part in self.ctx.gather(results) for r in part]
        return self.task.summarize(gathered)

    # ---- what is written

    def save_best(self, record: CNNEpoch) -> None:
        """``model.safetensors`` + ``model.json`` of the network as it is after ``record``."""
        task, config, data, weights = self.task, self.config, self.data, self.weights
        if record.epoch:
            source = f"weights: {weights}" if weights else "trained"
        else:
            source = f"weights: {weights} (not trained)" if weights else "untrained (random init)"
        info = ModelInfo(
            task=task.task,
            model_id="",
            architecture=self.arch,
            channels=tuple(config.channels),
            regions=tuple(config.regions) if task.task == "seg" else (),
            convention=self.cohort.convention.name,
            preprocessing=config.preprocessing(),
            config=config_to_dict(config),
            split_hash=self.splits.hash,
            source=source,
            metrics={
                "best_epoch": record.epoch,
                "score_name": task.score_name,
                "score": record.score,
                "val": record.val,
                "train_cases": list(data.train_ids),
                "val_cases": list(data.val_ids),
                "skipped": [{"case_id": c, "reason": r} for c, r in data.skipped],
                "epochs_planned": self.epochs,
            },
            threshold=(record.val.get("threshold", 0.5) if task.task == "cls" else None),
        )
        save_model(self.model_dir, self.network.state_dict(), info)

    def checkpoint(self, record: CNNEpoch) -> None:
        """Rank 0: the best model when ``record`` improved it, ``last.pt``, ``history.csv``."""
        if self.ctx.is_main:
            if record.best:
                self.save_best(record)
            save_training_state(self.state_path, self.training_state(record.epoch))
            write_epochs(self.model_dir / HISTORY_FILE, self.history)
            if self.show:
                _write_line(_epoch_line(self.task, record, self.best, self.epochs))
        self.ctx.barrier()

    def training_state(self, epoch: int) -> dict:
        """What ``last.pt`` holds after ``epoch``: all a resumed run needs."""
        return {
            "model": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
            "scaler": self.scaler.state_dict() if self.amp else {},
            "epoch": epoch,
            "best": self.best,
            "history": [asdict(h) for h in self.history],
            "run_key": self.run_key,
        }

    def notify(self, callbacks: Sequence[TrainingCallback], record: CNNEpoch) -> None:
        """Rank 0: each callback's ``on_epoch_end`` (after ``last.pt`` is on disk)."""
        if self.ctx.is_main:
            for callback in callbacks:
                callback.on_epoch_end(record)

    def finish(self, started: float) -> TrainResult:
        """The result, read back from the kept model's ``model.json``."""
        self.ctx.barrier()
        info = load_model_info(self.model_dir)
        best_epoch = info.metrics.get("best_epoch")
        best_record = next((h for h in self.history if h.epoch == best_epoch), None)
        return TrainResult(
            task=self.task.task,
            model_dir=self.model_dir,
            model_id=info.model_id,
            best_epoch=int(info.metrics.get("best_epoch", 0)),
            score_name=self.task.score_name,
            best_score=float(best_record.score) if best_record else float("nan"),
            threshold=info.threshold,
            history=tuple(self.history),
            resumed_from=self.resumed_from,
            train_cases=tuple(self.data.train_ids),
            val_cases=tuple(self.data.val_ids),
            skipped=tuple(self.data.skipped),
            seconds=time.perf_counter() - started,
        )


def _existing(model_dir: Path) -> bool:
    return any((model_dir / name).exists() for name in (INFO_FILE, WEIGHTS_FILE, STATE_FILE))


def _ddp(network, ctx: DistContext):
    """``network`` wrapped for DDP when there are several ranks, else itself."""
    if not ctx.enabled:
        return network
    from torch.nn.parallel import DistributedDataParallel

    dev = ctx.device
    return DistributedDataParallel(network, device_ids=[dev.index] if dev.type == "cuda" else None)


def _write_line(text: str) -> None:
    """A line above the progress bars."""
    from tqdm.auto import tqdm

    tqdm.write(text)


# ----------------------------------------------------------------------------------------------
# helpers of the steps


def _seed_epoch(seed: int, epoch: int, rank: int, dataset) -> int:
    """Seed python, numpy, torch and the dataset's random transforms from (seed, epoch, rank),
    so a resumed run continues as the uninterrupted one would have; returns the seed."""
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
    """The epoch's training loader: shuffled, class-balanced or sharded by rank."""
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


def _better(score: float, tiebreak: float, best: dict | None) -> bool:
    """Whether an epoch's (score, tie-break) beats the best so far (higher is better)."""
    if best is None:
        return True
    if math.isnan(score):
        # no validation metric: prefer the lower validation loss if any, else the latest
        return math.isnan(best["score"]) and tiebreak >= best["tiebreak"]
    if math.isnan(best["score"]) or score > best["score"] + 1e-12:
        return True
    return abs(score - best["score"]) <= 1e-12 and tiebreak > best["tiebreak"] + 1e-12


def _epoch_line(task, record: CNNEpoch, best: dict | None, epochs: int) -> str:
    shown = ", ".join(f"{k} {v:.3f}" for k, v in record.val.items() if k != "threshold")
    mark = " *" if record.best else ""
    best_text = f" (best {best['score']:.3f} @ {best['epoch']})" if best else ""
    return (
        f"{task.task} epoch {record.epoch}/{epochs}: loss {record.train_loss:.4f}; val {shown or '-'}"
        f"{best_text}{mark}; {record.seconds:.1f} s"
    )
