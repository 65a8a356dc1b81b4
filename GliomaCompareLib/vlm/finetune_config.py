"""The settings of a fine-tuning run, declared once.

:class:`FinetuneConfig` is the one place a fine-tuning setting is declared: its default, its
help text (field metadata) and its check. ``gliomacompare finetune-vlm`` generates its options
from it (:func:`~GliomaCompareLib.argtypes.add_dataclass_arguments`), the comparison run reads
its ``finetune:`` section into it (:meth:`FinetuneConfig.from_dict`), and
:func:`~GliomaCompareLib.argtypes.to_cli_args` turns it back into options. A new field is a new
``finetune-vlm`` option and a new run-config key, with no other change.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace

from GliomaCompareLib.argtypes import (
    count_or_none,
    positive_float_or_none,
    positive_int,
    to_cli_args,
)
from GliomaCompareLib.data.slices import SliceRule, WindowSpec
from GliomaCompareLib.geometry import COORDINATE_SYSTEMS
from GliomaCompareLib.vlm.finetune_data import POINT_TARGETS, ExampleSettings

__all__ = [
    "BALANCE_MODES",
    "DEFAULT_TARGET_MODULES",
    "DEVICES",
    "MONITORS",
    "SCHEDULERS",
    "FinetuneConfig",
]

#: LoRA targets: the Llama language model's attention (self and cross) and MLP projections.
DEFAULT_TARGET_MODULES: tuple[str, ...] = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)
BALANCE_MODES: tuple[str, ...] = ("none", "oversample", "weighted")
MONITORS: tuple[str, ...] = ("val_loss", "task")
SCHEDULERS: tuple[str, ...] = ("linear", "cosine", "constant")
#: What ``--device`` offers (the config also takes ``cuda:N`` for one process).
DEVICES: tuple[str, ...] = ("auto", "cuda", "cpu")

_LORA, _TRAIN, _VAL, _DATA = "LoRA", "training", "validation", "data (as the vlm command asks)"


def _scope(text: str) -> str | None:
    """``--target-scope``: ``any`` (or empty) means everywhere (None)."""
    return None if text in ("", "any") else text


def _setting(default, help: str, **cli):
    """A config field: its default, help text and command-line details (see
    :func:`~GliomaCompareLib.argtypes.add_dataclass_arguments`)."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass(frozen=True)
class FinetuneConfig:
    """Every setting of a fine-tuning run (all of it goes in the adapter's JSON).

    Each field's help text is its metadata (``finetune-vlm --help`` shows it). Notes:
    ``lr`` 2e-4 suits LoRA on Llama 3.2 11B, the tiny random model needs about 3e-3;
    ``extra_target_modules`` such as ``lm_head`` make the tiny random model learn much faster
    (its frozen random output layer is too weak for confident predictions); ``monitor="task"``
    follows the mean of the tasks' :data:`~GliomaCompareLib.vlm.finetune_eval.PRIMARY_METRICS`
    (higher is better), ``val_loss`` the validation loss (lower is better); under ``torchrun``
    each process uses the GPU of its ``LOCAL_RANK``.
    """

    # LoRA
    rank: int = _setting(16, "LoRA rank r", type=positive_int, group=_LORA)
    alpha: float = _setting(32.0, "LoRA alpha (the update is scaled by alpha/r)", group=_LORA)
    dropout: float = _setting(0.05, "dropout on the LoRA input", group=_LORA)
    target_modules: tuple[str, ...] = _setting(
        DEFAULT_TARGET_MODULES, "comma-separated module names to adapt", group=_LORA
    )
    target_scope: str | None = _setting(
        "language_model",
        "adapt only modules under this one ('language_model' leaves the vision encoder alone; "
        "'any' for everywhere)",
        type=_scope,
        to_cli=lambda v: "any" if v is None else v,
        group=_LORA,
    )
    extra_target_modules: tuple[str, ...] = _setting(
        (),
        "comma-separated module names adapted outside the scope too (e.g. lm_head: the tiny "
        "random model learns far faster with it)",
        group=_LORA,
    )
    # training
    epochs: int = _setting(3, "passes over the training examples", type=positive_int, group=_TRAIN)
    batch_size: int = _setting(
        4, "examples per process per micro-batch", type=positive_int, group=_TRAIN
    )
    grad_accum: int = _setting(
        1, "micro-batches per optimizer step", type=positive_int, group=_TRAIN
    )
    lr: float = _setting(2e-4, "peak learning rate, AdamW (tiny model: ~3e-3)", group=_TRAIN)
    weight_decay: float = _setting(0.0, "AdamW weight decay", group=_TRAIN)
    warmup_ratio: float = _setting(0.03, "share of the steps with linear warm-up", group=_TRAIN)
    scheduler: str = _setting(
        "linear", "after warm-up: decay to 0, cosine or constant", choices=SCHEDULERS, group=_TRAIN
    )
    max_grad_norm: float | None = _setting(
        1.0,
        "gradient clipping (0: none)",
        type=positive_float_or_none,
        to_cli=lambda v: 0 if v is None else v,
        group=_TRAIN,
    )
    seed: int = _setting(0, "LoRA initialisation, example order, dropout", group=_TRAIN)
    balance_grades: str = _setting(
        "none",
        "grade task: balance LGG and HGG slices per epoch (bare flag: oversample)",
        choices=BALANCE_MODES,
        nargs="?",
        const="oversample",
        group=_TRAIN,
    )
    # validation and early stopping
    eval_every: int = _setting(
        1, "validate every N epochs (and after the last)", type=positive_int, group=_VAL
    )
    patience: int | None = _setting(
        3,
        "validations without improvement before stopping (0: never stop early)",
        type=count_or_none,
        to_cli=lambda v: 0 if v is None else v,
        group=_VAL,
    )
    min_delta: float = _setting(
        0.0, "smallest change of the monitored value that counts as an improvement", group=_VAL
    )
    monitor: str = _setting(
        "val_loss", "what early stopping and the kept adapter follow", choices=MONITORS, group=_VAL
    )
    max_val_slices: int | None = _setting(
        None,
        "answer at most N validation slices per task for the task metrics (default all; the "
        "loss uses all)",
        type=positive_int,
        group=_VAL,
    )
    eval_batch_size: int = _setting(8, "answers per call", type=positive_int, group=_VAL)
    max_new_tokens: int | None = _setting(
        None,
        "longest validation answer (default: the longest target + 16 tokens)",
        type=positive_int,
        group=_VAL,
    )
    point_radius_mm: float = _setting(
        10.0, "disc radius giving point answers a Dice (as the VLM arm)", group=_VAL
    )
    # data, as the VLM arm asks, so the adapter is trained on what it will be asked
    slice_rule: SliceRule = field(
        default_factory=SliceRule,
        metadata={
            "help": "which slices are asked about",
            "group": _DATA,
            "fields": {"min_area_mm2": {"help": "slice rule: least whole-tumour area on a slice"}},
        },
    )
    window: WindowSpec = field(
        default_factory=WindowSpec, metadata={"help": "FLAIR windowing", "cli": False}
    )
    slices_per_case: int | None = _setting(
        None,
        "at most K slices per case, evenly spaced over the tumour (default all selected)",
        type=positive_int,
        group=_DATA,
    )
    coordinate_system: str = _setting(
        "pixel",
        "coordinate system of prompts and answers",
        flags=("--coords",),
        choices=tuple(COORDINATE_SYSTEMS),
        group=_DATA,
    )
    max_vertices: int | None = _setting(
        None, "polygon K (default: the prompts', 8)", type=positive_int, group=_DATA
    )
    point_target: str = _setting(
        "centroid",
        "point answer: the WT centroid (the centre the VLM arm measures from) or the tumour's "
        "deepest pixel (always inside it)",
        choices=POINT_TARGETS,
        group=_DATA,
    )
    prompts_dir: str | None = _setting(
        None, "prompts folder (default Resources/prompts)", flags=("--prompts",), group=_DATA
    )
    # model and machine
    device: str = _setting(
        "auto",
        "auto: CUDA when available (under torchrun, one GPU per process)",
        choices=DEVICES,
        group=_TRAIN,
    )
    load_in_4bit: bool = _setting(
        False,
        "QLoRA: 4-bit NF4 base weights (CUDA and bitsandbytes only)",
        flags=("--4bit", "--load-in-4bit"),
        group=_LORA,
    )
    gradient_checkpointing: bool = _setting(
        False, "save activation memory (big models)", group=_LORA
    )
    tiny_seed: int = _setting(0, "weight seed of --model tiny", group=_TRAIN)
    checkpoint_every: int | None = _setting(
        None,
        "also checkpoint every N optimizer steps (default: at epoch ends)",
        type=positive_int,
        group=_TRAIN,
    )
    keep_checkpoints: int = _setting(
        1, "checkpoints kept (the newest)", type=positive_int, group=_TRAIN
    )
    jobs: int = _setting(1, "processes loading cases", type=positive_int, group=_TRAIN)

    def __post_init__(self):
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        object.__setattr__(self, "extra_target_modules", tuple(self.extra_target_modules))
        problems = [problem for check in _CHECKS for problem in check(self)]
        if problems:
            raise ValueError("Fine-tuning settings: " + "; ".join(problems))

    @property
    def rule(self) -> SliceRule:
        """The slice rule with ``slices_per_case`` applied."""
        if self.slices_per_case is None:
            return self.slice_rule
        return replace(self.slice_rule, max_slices=self.slices_per_case)

    def example_settings(self, *, keep_masks: bool = False) -> ExampleSettings:
        return ExampleSettings(
            slice_rule=self.rule,
            window=self.window,
            coordinate_system=self.coordinate_system,
            max_vertices=self.max_vertices,
            point_target=self.point_target,
            prompts_dir=self.prompts_dir,
            keep_masks=keep_masks,
        )

    def target_regex(self) -> str:
        """The peft ``target_modules`` regular expression (full match on module names)."""
        names = "|".join(sorted(set(self.target_modules)))
        pattern = rf"(?:.*\.)?(?:{names})"
        if self.target_scope:
            pattern = rf"(?:.*\.)?{self.target_scope}\..*\.(?:{names})"
        if self.extra_target_modules:
            extra = "|".join(sorted(set(self.extra_target_modules)))
            pattern = rf"(?:{pattern})|(?:.*\.)?(?:{extra})"
        return pattern

    def to_cli_args(self) -> list[str]:
        """The command-line options that rebuild these settings (those that differ from the
        defaults; see :func:`~GliomaCompareLib.argtypes.to_cli_args`)."""
        return to_cli_args(self)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["target_modules"] = list(self.target_modules)
        data["extra_target_modules"] = list(self.extra_target_modules)
        data["slice_rule"] = self.slice_rule.to_dict()
        data["window"] = self.window.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> FinetuneConfig:
        """Inverse of :meth:`to_dict` (unknown keys are refused, naming them)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown fine-tuning settings: {', '.join(unknown)}")
        values = dict(data)
        if isinstance(values.get("slice_rule"), dict):
            values["slice_rule"] = SliceRule(**values["slice_rule"])
        if isinstance(values.get("window"), dict):
            values["window"] = WindowSpec(**values["window"])
        for key in ("target_modules", "extra_target_modules"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


# --------------------------------------------------------------------------- per-field checks
# Each takes the config and returns its problems (messages in the order they are reported).

_POSITIVE = ("rank", "epochs", "batch_size", "grad_accum", "eval_every", "eval_batch_size")
_POSITIVE += ("keep_checkpoints", "jobs")
_POSITIVE_OR_NONE = ("max_val_slices", "max_new_tokens", "slices_per_case", "checkpoint_every")


def _check_counts(c: FinetuneConfig) -> list[str]:
    out = [f"{n} must be >= 1, got {getattr(c, n)}" for n in _POSITIVE if int(getattr(c, n)) < 1]
    for name in _POSITIVE_OR_NONE:
        value = getattr(c, name)
        if value is not None and int(value) < 1:
            out.append(f"{name} must be >= 1 or None, got {value}")
    if c.patience is not None and c.patience < 1:
        out.append(f"patience must be >= 1 or None, got {c.patience}")
    return out


def _check_ranges(c: FinetuneConfig) -> list[str]:
    checks = (
        (c.lr > 0 and math.isfinite(c.lr), f"lr must be > 0, got {c.lr}"),
        (c.alpha > 0, f"alpha must be > 0, got {c.alpha}"),
        (0 <= c.dropout < 1, f"dropout must be in [0, 1), got {c.dropout}"),
        (0 <= c.warmup_ratio < 1, f"warmup_ratio must be in [0, 1), got {c.warmup_ratio}"),
        (c.weight_decay >= 0, f"weight_decay must be >= 0, got {c.weight_decay}"),
        (
            c.max_grad_norm is None or c.max_grad_norm > 0,
            f"max_grad_norm must be > 0 or None, got {c.max_grad_norm}",
        ),
        (c.min_delta >= 0, f"min_delta must be >= 0, got {c.min_delta}"),
        (c.point_radius_mm > 0, f"point_radius_mm must be > 0, got {c.point_radius_mm}"),
    )
    return [message for ok, message in checks if not ok]


def _check_device(c: FinetuneConfig) -> list[str]:
    device = str(c.device)
    if device in DEVICES or (device.startswith("cuda:") and device[5:].isdigit()):
        return []
    return [f"device {device!r}: use auto, cuda, cuda:N or cpu"]


def _check_choices(c: FinetuneConfig) -> list[str]:
    choices = {
        "scheduler": SCHEDULERS,
        "balance_grades": BALANCE_MODES,
        "monitor": MONITORS,
        "coordinate_system": tuple(COORDINATE_SYSTEMS),
        "point_target": POINT_TARGETS,
    }
    return [
        f"{name} {getattr(c, name)!r}: use one of {', '.join(allowed)}"
        for name, allowed in choices.items()
        if getattr(c, name) not in allowed
    ]


def _check_modules(c: FinetuneConfig) -> list[str]:
    out = []
    names = (*c.target_modules, *c.extra_target_modules)
    if not c.target_modules or not all(
        isinstance(m, str) and m.replace("_", "").isalnum() for m in names
    ):
        out.append(f"target_modules {list(names)}: give module names such as q_proj or lm_head")
    if c.target_scope is not None and not c.target_scope.replace("_", "").isalnum():
        out.append(f"target_scope {c.target_scope!r}: give a module name")
    return out


def _check_vertices(c: FinetuneConfig) -> list[str]:
    if c.max_vertices is not None and c.max_vertices < 4:
        return [f"max_vertices must be >= 4 for polygon targets, got {c.max_vertices}"]
    return []


_CHECKS = (
    _check_counts,
    _check_ranges,
    _check_device,
    _check_choices,
    _check_modules,
    _check_vertices,
)
