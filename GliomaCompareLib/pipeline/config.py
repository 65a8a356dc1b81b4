"""Run configuration: YAML files and presets in ``Resources/presets``, parsed into a typed
:class:`RunConfig`.

A config is a YAML mapping. ``extends: NAME`` (a preset name or a path relative to the file)
deep-merges the file over another config, so a small file can change a few settings of a preset.
``--set key.sub=value`` overrides single values on the command line (the value is parsed as YAML).
Every choice the study left open (slice rule, prompts, coordinate convention, LoRA settings, CNN
recipe) lives in the config and is printed in the report and the manifest.

:func:`load_run_config` reads the mapping (``extends`` and overrides resolved);
:func:`parse_run_config` checks it once and returns a frozen :class:`RunConfig` with one typed
section per YAML section (``data``, ``split``, ``cnn``, ``vlm``, ``finetune``, ``consistency``,
``metrics``, ``report``; ``vlms`` for several VLMs, see :class:`VlmEntry`). Stages read the typed
sections; the mapping itself stays available as
``RunConfig.raw``, because the stage fingerprints (by dotted key, ``"cnn.seg"``) and the manifest
are taken from it.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from GliomaCompareLib.cnn.config import (
    ClsConfig,
    EngineConfig,
    SegConfig,
    load_cnn_config,
    load_engine_config,
)
from GliomaCompareLib.cnn.networks import build_network
from GliomaCompareLib.data.provenance import TRAINED_ON
from GliomaCompareLib.data.slices import GIVEN_MODE, SLICE_MODES, SliceRule, WindowSpec
from GliomaCompareLib.data.synthetic import SynthConfig
from GliomaCompareLib.report import ReportOptions
from GliomaCompareLib.resources import resource_path
from GliomaCompareLib.runlayout import VLM_NAME_PATTERN, vlm_method
from GliomaCompareLib.vlm import DecodingConfig, FinetuneConfig, VLMConfig
from GliomaCompareLib.vlm.openai_backend import STRUCTURED_OUTPUTS
from GliomaCompareLib.vlm.tasks import PROMPT_VARIANTS

__all__ = [
    "CONSISTENCY_METHODS",
    "DEVICES",
    "KNOWN_SECTIONS",
    "SHARED_VLM_KEYS",
    "VLM_BACKEND_KEYS",
    "CnnSection",
    "ConsistencySection",
    "DataSection",
    "FinetuneSection",
    "MetricsSection",
    "RunConfig",
    "SplitSection",
    "VlmEntry",
    "VlmSection",
    "apply_overrides",
    "available_presets",
    "deep_merge",
    "finetune_config_from_dict",
    "load_run_config",
    "parse_run_config",
    "read_run_config",
    "vlm_config_from_dict",
]

#: Top-level keys a run config may have; anything else is a typo and is refused.
KNOWN_SECTIONS = (
    "name",
    "description",
    "extends",
    "seed",
    "device",
    "data",
    "split",
    "cnn",
    "vlm",
    "vlms",
    "finetune",
    "consistency",
    "sensitivity",
    "metrics",
    "report",
)


def available_presets() -> dict[str, Path]:
    """Preset name -> file, from ``Resources/presets/*.yaml``."""
    return {p.stem: p for p in sorted(resource_path("presets").glob("*.yaml"))}


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base`` (mappings merge; anything else replaces)."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _resolve(name_or_path: str | Path, relative_to: Path | None = None) -> Path:
    text = str(name_or_path)
    candidates = [Path(text)]
    if relative_to is not None:
        candidates.insert(0, relative_to / text)
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    presets = available_presets()
    if text in presets:
        return presets[text]
    raise FileNotFoundError(
        f"Run config {text!r} is neither a file nor a preset "
        f"(presets: {', '.join(presets) or 'none'})"
    )


#: Largest run config file (bytes).
MAX_CONFIG_BYTES = 1024 * 1024
#: Most values (mappings, lists, scalars) a run config may hold once its YAML aliases are
#: expanded; a few hundred bytes of nested aliases (an "alias bomb") expand to millions.
MAX_CONFIG_VALUES = 100_000


def _check_expanded_size(data: Any, where: str) -> None:
    """Count the values of ``data`` as written out (aliases repeated); refuse past the limit."""
    count = 0
    stack = [data]
    while stack:
        item = stack.pop()
        count += 1
        if count > MAX_CONFIG_VALUES:
            raise ValueError(
                f"{where}: expands to more than {MAX_CONFIG_VALUES} values (YAML aliases "
                "repeated over and over?); refused"
            )
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ValueError(
                f"{path}: {size} bytes is more than a run config may have ({MAX_CONFIG_BYTES})"
            )
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: not a readable YAML run config ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a run config must be a YAML mapping, got {type(data).__name__}")
    _check_expanded_size(data, str(path))
    return data


def _load(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise ValueError(f"Run config 'extends' loop: {chain}")
    data = _read_yaml(path)
    unknown = sorted(set(data) - set(KNOWN_SECTIONS))
    if unknown:
        raise ValueError(
            f"{path}: unknown top-level keys {unknown} (known: {', '.join(KNOWN_SECTIONS)})"
        )
    parent = data.pop("extends", None)
    if parent:
        base = _load(_resolve(parent, path.parent), (*seen, path))
        data = deep_merge(base, data)
    return data


def apply_overrides(config: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML).

    Raises:
        ValueError: for an override without ``=`` or with an unknown top-level key.
    """
    out = copy.deepcopy(dict(config))
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected key.sub=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if parts[0] not in KNOWN_SECTIONS:
            raise ValueError(f"--set {item!r}: unknown top-level key {parts[0]!r}")
        node = out
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = yaml.safe_load(raw)
    return out


def load_run_config(
    name_or_path: str | Path, overrides: Sequence[str] = ()
) -> tuple[dict[str, Any], Path]:
    """Load a run config (file or preset name), resolve ``extends``, apply overrides.

    Returns:
        (config mapping, the file it came from).
    """
    path = _resolve(name_or_path)
    config = _load(path, ())
    config = apply_overrides(config, overrides)
    _check_expanded_size(config, f"{path} with --set overrides")
    config.setdefault("name", path.stem)
    return config, path


def read_run_config(
    name_or_path: str | Path, overrides: Sequence[str] = ()
) -> tuple[RunConfig, Path]:
    """:func:`load_run_config` then :func:`parse_run_config`: the typed config and its file."""
    raw, path = load_run_config(name_or_path, overrides)
    return parse_run_config(raw), path


# ------------------------------------------------------------------------------ typed sections
#: Compute devices a run accepts (``cuda:N`` too).
DEVICES = ("auto", "cpu", "cuda")

#: keys of the ``vlm:`` section that choose the backend (the rest is the VLMConfig).
VLM_BACKEND_KEYS = ("backend", "model", "base_url", "allow_remote", "device", "load_in_4bit",
                    "seed", "concurrency", "timeout_s", "max_retries",
                    "structured_output", "adapter")  # fmt: skip

#: VLM methods the ``consistency`` stage can repeat.
CONSISTENCY_METHODS = ("vlm_base", "vlm_finetuned")

_DATA_KEYS = ("root", "synthetic", "convention", "jobs")
_SPLIT_KEYS = ("file", "fractions", "seed")
_CNN_KEYS = ("enabled", "seg", "cls", "weights", "weights_trained_on", "engine", "threads")
_CONSISTENCY_KEYS = ("enabled", "runs", "temperature", "tasks", "max_cases", "methods")
_SENSITIVITY_KEYS = ("enabled", "slice_rules", "tasks", "prompt_variant")
_METRICS_KEYS = ("n_bootstrap", "vlm_grade_score")


@dataclass(frozen=True)
class DataSection:
    """``data:``: where the cases come from.

    Attributes:
        root: a BraTS folder (None with ``synthetic``).
        synthetic: a synthetic cohort to write into ``RUN/data`` (None: use ``root``).
        convention: the file-name convention (``brats2020``, ...).
        jobs: processes for validating cases (and writing a synthetic cohort).
    """

    root: str | None = None
    synthetic: SynthConfig | None = None
    convention: str | None = "brats2020"
    jobs: int = 1


@dataclass(frozen=True)
class SplitSection:
    """``split:``: the patient-level split, from a file or made here.

    Attributes:
        file: a ``splits.json`` to use as it is (None: make one).
        fractions: train / validation / test shares.
        seed: seed of the stratified split (default: the run's ``seed``).
    """

    file: str | None = None
    fractions: tuple[float, ...] = (0.6, 0.2, 0.2)
    seed: int = 0


@dataclass(frozen=True)
class CnnSection:
    """``cnn:``: the CNN arm.

    Attributes:
        enabled: whether the CNN stages run.
        seg, cls: the segmentation and classification networks and their training.
        weights: ``{"seg": ..., "cls": ...}``: released weights to start from (values as given).
        weights_trained_on: the data those weights were trained on (a value of
            :data:`~GliomaCompareLib.data.provenance.TRAINED_ON`, e.g. ``brats2018`` for the
            MONAI bundle); ``unknown`` when weights are given without it, ``none`` without
            weights. Test patients the weights saw are labelled in every table.
        engine: what runs the networks at inference (``cnn.engine``: auto, openvino,
            onnxruntime, torch; ``cnn.threads``).
    """

    enabled: bool = True
    seg: SegConfig = field(default_factory=SegConfig)
    cls: ClsConfig = field(default_factory=ClsConfig)
    weights: Mapping[str, Any] = field(default_factory=dict, hash=False)
    weights_trained_on: str = "none"
    engine: EngineConfig = field(default_factory=EngineConfig)

    def network(self, task: str) -> SegConfig | ClsConfig:
        """The config of ``task`` (``seg`` or ``cls``)."""
        return self.seg if task == "seg" else self.cls


@dataclass(frozen=True)
class VlmSection:
    """``vlm:``: the backend keys, and everything else as the arm's :class:`VLMConfig`.

    Attributes:
        backend: ``tiny``, ``transformers`` or ``openai``.
        model, base_url, allow_remote, load_in_4bit, seed: backend options (see ``make_backend``).
        device: the VLM's device (default: the run's ``device``).
        concurrency, timeout_s, max_retries, structured_output: openai options (None: the
            backend's defaults).
        adapter: a LoRA adapter folder the base queries load (None: the model as it is).
        inference: slice rule, window, prompts, decoding, tasks ... (:class:`VLMConfig`).
    """

    backend: str = "tiny"
    model: str | None = None
    base_url: str | None = None
    allow_remote: bool = False
    device: str = "auto"
    load_in_4bit: bool = False
    seed: int = 0
    concurrency: int | None = None
    timeout_s: float | None = None
    max_retries: int | None = None
    structured_output: str | None = None
    adapter: str | None = None
    inference: VLMConfig = field(default_factory=VLMConfig)


@dataclass(frozen=True)
class FinetuneSection:
    """``finetune:``: LoRA fine-tuning of the VLM.

    Attributes:
        enabled: whether the fine-tuning stages run.
        tasks: the tasks fine-tuned and then asked (those of ``vlm.tasks`` it lists; default all).
        base: the model to fine-tune (None: the VLM backend's model).
        training: every training setting (None when not enabled).
    """

    enabled: bool = False
    tasks: tuple[str, ...] = ()
    base: str | None = None
    training: FinetuneConfig | None = None


@dataclass(frozen=True)
class ConsistencySection:
    """``consistency:``: repeated identical queries.

    Attributes:
        enabled: whether the stage runs.
        runs: times each query is asked.
        temperature: sampling temperature of the repeats.
        tasks: the tasks repeated (default: ``vlm.tasks``).
        max_cases: at most this many test patients (None: all).
        methods: which VLMs are repeated (``vlm_base``, ``vlm_finetuned``).
    """

    enabled: bool = False
    runs: int = 3
    temperature: float = 0.7
    tasks: tuple[str, ...] = ()
    max_cases: int | None = None
    methods: tuple[str, ...] = ("vlm_base",)


@dataclass(frozen=True)
class SensitivitySection:
    """``sensitivity:``: the base VLM asked again under other slice rules, to show how much the
    study's slice choice (oracle slices that show tumour) shapes its figures.

    Attributes:
        enabled: whether the ``slice-sensitivity`` stage runs.
        slice_rules: the other slice rule modes (``cnn``, ``brain``, ``largest``, ...).
        tasks: the tasks asked (default: ``vlm.tasks``).
        prompt_variant: the prompts' image description under those rules (default
            ``neutral``: label-free slices may show no tumour).
    """

    enabled: bool = False
    slice_rules: tuple[str, ...] = ("cnn", "brain")
    tasks: tuple[str, ...] = ()
    prompt_variant: str = "neutral"


@dataclass(frozen=True)
class MetricsSection:
    """``metrics:``.

    Attributes:
        n_bootstrap: bootstrap resamples of the classification intervals.
        vlm_grade_score: the VLM patient score its validation threshold is chosen on:
            ``vote_share`` (HGG share of the valid slice answers) or ``mean_p`` (mean P(HGG)).
    """

    n_bootstrap: int = 2000
    vlm_grade_score: str = "vote_share"


@dataclass(frozen=True)
class VlmEntry:
    """One VLM of the comparison, with its own methods, stages and answer cache.

    A config with a ``vlm:`` section (every study preset) has one entry, ``name == ""``: its
    methods are ``vlm_base`` / ``vlm_finetuned`` and its stages ``vlm-base``, ``vlm-finetune``,
    ``vlm-finetuned``, exactly as before several VLMs existed. A config with ``vlms:`` (a list)
    has one entry per item: ``name`` (unique, ``[a-z0-9_-]``), methods ``vlm_base-<name>`` /
    ``vlm_finetuned-<name>`` and stages ``vlm-base-<name>`` ... (see
    :mod:`GliomaCompareLib.runlayout`). Each item takes every key of a ``vlm:`` section (merged over
    the top-level ``vlm:``, which then holds shared settings only: prompts, slice rule, decoding)
    and ``finetune: true | false | {mapping merged over the top-level finetune:}``. Each item names
    its own ``backend`` (and ``model``, unless tiny), so a model is compared only when listed; the
    slices and their scoring (:data:`SHARED_VLM_KEYS`) are the same for all and stay in ``vlm:``.
    The first VLM listed is the one ``slice-sensitivity`` asks, and ``RunConfig.vlm`` /
    ``RunConfig.finetune`` are its sections.

    Attributes:
        name: the short name (``""`` for the single VLM of a ``vlm:`` config).
        vlm, finetune: its typed sections.
        raw: ``{"vlm": ..., "finetune": ..., "device": ...}``: its resolved mapping (defaults
            merged in); the fingerprints of its stages when ``name`` is set.
    """

    name: str = ""
    vlm: VlmSection = field(default_factory=VlmSection)
    finetune: FinetuneSection = field(default_factory=FinetuneSection)
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def base_method(self) -> str:
        return vlm_method(self.name, finetuned=False)

    @property
    def finetuned_method(self) -> str:
        return vlm_method(self.name, finetuned=True)

    @property
    def methods(self) -> tuple[str, ...]:
        """Its method ids: the base one, and the fine-tuned one when fine-tuning is on."""
        if self.finetune.enabled:
            return (self.base_method, self.finetuned_method)
        return (self.base_method,)

    def stage(self, kind: str) -> str:
        """Its stage of ``kind`` (``vlm-base``, ``vlm-finetune``, ``vlm-finetuned``)."""
        return f"{kind}-{self.name}" if self.name else kind


@dataclass(frozen=True)
class RunConfig:
    """A whole run config, checked once (see :func:`parse_run_config`).

    Attributes:
        name, description: the run's name and one line about it.
        seed: the run's seed (split and bootstrap defaults).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        data, split, cnn, vlm, finetune, consistency, sensitivity, metrics: the typed sections
            (``vlm`` and ``finetune`` of the first VLM when ``vlms:`` lists several).
        vlms: every VLM compared (one unnamed entry for a ``vlm:`` config), see :class:`VlmEntry`.
        report: the report settings of the ``report:`` section.
        raw: the mapping it was parsed from (JSON-able; fingerprints and the manifest use it).
    """

    name: str = "run"
    description: str | None = None
    seed: int = 0
    device: str = "auto"
    data: DataSection = field(default_factory=DataSection)
    split: SplitSection = field(default_factory=SplitSection)
    cnn: CnnSection = field(default_factory=CnnSection)
    vlm: VlmSection = field(default_factory=VlmSection)
    finetune: FinetuneSection = field(default_factory=FinetuneSection)
    consistency: ConsistencySection = field(default_factory=ConsistencySection)
    sensitivity: SensitivitySection = field(default_factory=SensitivitySection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    report: ReportOptions = field(default_factory=ReportOptions)
    vlms: tuple[VlmEntry, ...] = ()
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def vlm_entries(self) -> tuple[VlmEntry, ...]:
        """The VLMs compared (``vlms``; a config built by hand without them: its ``vlm`` and
        ``finetune`` sections as the one unnamed VLM)."""
        return self.vlms or (VlmEntry("", self.vlm, self.finetune),)

    def vlm_methods(self) -> list[str]:
        """Every VLM method id of the run, in config order (base, then fine-tuned, per VLM)."""
        return [m for entry in self.vlm_entries() for m in entry.methods]

    def vlm_entry(self, method: str) -> VlmEntry:
        """The VLM a method id belongs to.

        Raises:
            KeyError: for a method that is not one of this run's VLM methods.
        """
        for entry in self.vlm_entries():
            if method in (entry.base_method, entry.finetuned_method):
                return entry
        raise KeyError(f"{method!r} is not a VLM method of this run")


# ------------------------------------------------------------------------------ parsing
def _section(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = config.get(name) or {}
    if not isinstance(value, Mapping):
        raise ValueError(f"run config: '{name}' must be a mapping, got {type(value).__name__}")
    return dict(value)


def _refuse_unknown(where: str, raw: Mapping[str, Any], known: Sequence[str]) -> None:
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ValueError(f"run config: {where}: unknown keys {unknown} (known: {', '.join(known)})")


def _refuse_user_slices(where: str, values: Mapping[str, Any]) -> None:
    """A run over a cohort has no user's slices: refuse ``slices`` and the rule ``given``."""
    rule = values.get("slice_rule")
    mode = rule.get("mode") if isinstance(rule, Mapping) else getattr(rule, "mode", None)
    if "slices" in values or mode == GIVEN_MODE:
        raise ValueError(
            f"run config: {where}: slices chosen by the user (slice rule 'given', 'slices') are "
            "for one patient (gliomacompare vlm --slices CASE:K, the Slicer module), not for a "
            f"run over a cohort: use slice_rule mode {', '.join(SLICE_MODES)}"
        )


def _dataclass_from(kind, raw: Mapping[str, Any], where: str):
    names = [f.name for f in fields(kind)]
    _refuse_unknown(where, raw, names)
    try:
        return kind(**raw)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"run config: {where}: {exc}") from exc


def _convert(where: str, convert, value):
    """``convert(value)``, a conversion error named ``run config: where: ...``."""
    try:
        return convert(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"run config: {where}: {exc}") from exc


def _task_list(value) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(t.strip() for t in value.split(","))
    return tuple(value)


def vlm_config_from_dict(raw: Mapping[str, Any], where: str = "vlm") -> VLMConfig:
    """A :class:`VLMConfig` from the ``vlm:`` section (backend keys are ignored here); nested
    ``decoding``, ``slice_rule`` and ``window`` mappings."""
    values = {k: v for k, v in raw.items() if k not in VLM_BACKEND_KEYS}
    known = [f.name for f in fields(VLMConfig)]
    _refuse_unknown(where, values, known)
    _refuse_user_slices(where, values)
    if "decoding" in values:
        decoding = dict(values["decoding"] or {})
        _refuse_unknown(f"{where}.decoding", decoding, [f.name for f in fields(DecodingConfig)])
        temperature = float(decoding.pop("temperature", 0.0))
        decoding.pop("do_sample", None)
        values["decoding"] = DecodingConfig.from_temperature(temperature, **decoding)
    if "slice_rule" in values:
        values["slice_rule"] = _dataclass_from(
            SliceRule, values["slice_rule"] or {}, f"{where}.slice_rule"
        )
    if "window" in values:
        values["window"] = _dataclass_from(WindowSpec, values["window"] or {}, f"{where}.window")
    if "tasks" in values and isinstance(values["tasks"], str):
        values["tasks"] = tuple(t.strip() for t in values["tasks"].split(",") if t.strip())
    if "tasks" in values:
        values["tasks"] = tuple(values["tasks"])
    try:
        return VLMConfig(**values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"run config: {where}: {exc}") from exc


def finetune_config_from_dict(
    raw: Mapping[str, Any], vlm_config: VLMConfig, where: str = "finetune"
) -> FinetuneConfig:
    """A :class:`FinetuneConfig` from the ``finetune:`` section; the slice rule, window,
    coordinate system and polygon K default to the VLM arm's, so the adapter learns exactly the
    prompts it will be asked."""
    values = {k: v for k, v in raw.items() if k not in ("enabled", "tasks", "base")}
    values.setdefault("slice_rule", vlm_config.rule.to_dict())
    values.setdefault("window", vlm_config.window.to_dict())
    values.setdefault("coordinate_system", vlm_config.coordinate_system)
    values.setdefault("max_vertices", vlm_config.max_vertices)
    values.setdefault("point_radius_mm", vlm_config.point_radius_mm)
    values.setdefault("prompts_dir", vlm_config.prompts_dir)
    known = [f.name for f in fields(FinetuneConfig)]
    _refuse_unknown(where, values, known)
    _refuse_user_slices(where, values)
    try:
        return FinetuneConfig.from_dict(values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"run config: {where}: {exc}") from exc


def _device(config: Mapping[str, Any]) -> str:
    device = str(config.get("device") or "auto")
    if device not in DEVICES and not device.startswith("cuda:"):
        raise ValueError(f"run config: device {device!r}: use auto, cpu or cuda")
    return device


def _synth_config(raw: Mapping[str, Any]) -> SynthConfig:
    values = dict(raw)
    if "shape" in values:
        values["shape"] = tuple(values["shape"])
    return _dataclass_from(SynthConfig, values, "data.synthetic")


def _data_section(config: Mapping[str, Any]) -> DataSection:
    data = _section(config, "data")
    _refuse_unknown("data", data, _DATA_KEYS)
    if not data.get("root") and not data.get("synthetic"):
        raise ValueError("run config: data: give 'root' (a BraTS folder) or 'synthetic'")
    if data.get("root") and data.get("synthetic"):  # root was ignored silently (issue 17)
        raise ValueError(
            "run config: data: give 'root' or 'synthetic', not both (a preset with 'synthetic', "
            "such as demo, runs on your folder with --set data.synthetic=null --set data.root=DIR)"
        )
    return DataSection(
        root=data.get("root"),
        synthetic=_synth_config(data["synthetic"]) if data.get("synthetic") else None,
        convention=data.get("convention", "brats2020"),
        jobs=_convert("data.jobs", int, data.get("jobs", 1)),
    )


def _split_section(config: Mapping[str, Any], seed: int) -> SplitSection:
    split = _section(config, "split")
    _refuse_unknown("split", split, _SPLIT_KEYS)
    return SplitSection(
        file=split.get("file") or None,
        fractions=_convert("split.fractions", tuple, split.get("fractions", (0.6, 0.2, 0.2))),
        seed=_convert("split.seed", int, split.get("seed", seed)),
    )


def _cnn_section(config: Mapping[str, Any]) -> CnnSection:
    cnn = _section(config, "cnn")
    _refuse_unknown("cnn", cnn, _CNN_KEYS)
    networks = load_cnn_config({k: v for k, v in cnn.items() if k in ("seg", "cls")})
    _refuse_unknown("cnn.weights", cnn.get("weights") or {}, ("seg", "cls"))
    weights = dict(cnn.get("weights") or {})
    trained_on = str(
        cnn.get("weights_trained_on") or ("unknown" if any(weights.values()) else "none")
    )
    if trained_on not in TRAINED_ON:
        raise ValueError(
            f"run config: cnn.weights_trained_on {trained_on!r}: use one of {', '.join(TRAINED_ON)}"
        )
    section = CnnSection(
        enabled=bool(cnn.get("enabled", True)),
        seg=networks.seg,
        cls=networks.cls,
        weights=weights,
        weights_trained_on=trained_on,
        engine=load_engine_config(cnn),
    )
    if section.enabled:
        # building the networks once catches bad architecture arguments before any training
        build_network(
            section.seg.network, len(section.seg.channels), len(section.seg.regions), "seg"
        )
        build_network(section.cls.network, len(section.cls.channels), 1, "cls")
    return section


def _vlm_section(config: Mapping[str, Any], device: str) -> VlmSection:
    return _vlm_section_from(_section(config, "vlm"), device, "vlm")


def _vlm_section_from(vlm: Mapping[str, Any], device: str, where: str) -> VlmSection:
    inference = vlm_config_from_dict(vlm, where)
    structured_output = vlm.get("structured_output")
    if structured_output is not None and structured_output not in STRUCTURED_OUTPUTS:
        raise ValueError(f"run config: {where}.structured_output {structured_output!r}: use "
                         f"{', '.join(STRUCTURED_OUTPUTS)}")  # fmt: skip
    return VlmSection(
        backend=str(vlm.get("backend", "tiny")),
        model=vlm.get("model"),
        base_url=vlm.get("base_url"),
        allow_remote=bool(vlm.get("allow_remote", False)),
        device=vlm.get("device") or device,
        load_in_4bit=bool(vlm.get("load_in_4bit", False)),
        seed=_convert(f"{where}.seed", int, vlm.get("seed", 0)),
        concurrency=vlm.get("concurrency"),
        timeout_s=vlm.get("timeout_s"),
        max_retries=vlm.get("max_retries"),
        structured_output=structured_output,
        adapter=str(vlm["adapter"]) if vlm.get("adapter") else None,
        inference=inference,
    )


def _finetune_section(config: Mapping[str, Any], vlm: VLMConfig, device: str) -> FinetuneSection:
    ft = _section(config, "finetune")
    return _finetune_section_from(ft, vlm, device, "finetune")


def _finetune_section_from(
    ft: Mapping[str, Any], vlm: VLMConfig, device: str, where: str
) -> FinetuneSection:
    enabled = bool(ft.get("enabled", False))
    training = None
    if enabled:
        training = finetune_config_from_dict(ft, vlm, where)
        if "device" not in ft:
            training = replace(training, device=device)
    tasks = _task_list(ft.get("tasks") or vlm.tasks)
    return FinetuneSection(
        enabled=enabled,
        tasks=tuple(t for t in tasks if t in vlm.tasks),
        base=str(ft["base"]) if ft.get("base") else None,
        training=training,
    )


# ------------------------------------------------------------------------------ several VLMs
#: Keys of one ``vlms:`` item besides those of a ``vlm:`` section.
_VLM_ENTRY_KEYS = ("name", "finetune")
#: ``vlm:`` keys every VLM of a run shares: the same slices, windowed the same way, and answers
#: scored the same way (one like-for-like scorer), so a ``vlms:`` item may not set them.
SHARED_VLM_KEYS = ("slice_rule", "slices_per_case", "window", "point_radius_mm", "max_vertices",
                   "cnn_predictions")  # fmt: skip


def _entry_finetune(item: Mapping[str, Any], shared: Mapping[str, Any], where: str) -> dict:
    """An item's ``finetune:`` (true / false / a mapping) over the top-level ``finetune:``."""
    value = item.get("finetune")
    if value is None:
        return dict(shared)
    if isinstance(value, bool):
        return {**shared, "enabled": value}
    if not isinstance(value, Mapping):
        raise ValueError(f"run config: {where}.finetune: use true, false or a mapping")
    return deep_merge(shared, value)


def _vlm_entry(item, index: int, config: Mapping[str, Any], device: str) -> VlmEntry:
    where = f"vlms[{index}]"
    if not isinstance(item, Mapping):
        raise ValueError(f"run config: {where}: each VLM is a mapping, got {type(item).__name__}")
    name = str(item.get("name") or "")
    if not re.fullmatch(VLM_NAME_PATTERN, name):
        raise ValueError(
            f"run config: {where}: name {name!r}: give each VLM a short name of lower-case "
            "letters, digits, _ and - (it becomes part of method ids and folder names)"
        )
    where = f"{where} ({name})"
    if "backend" not in item or ("model" not in item and item.get("backend") != "tiny"):
        raise ValueError(
            f"run config: {where}: say which backend and model this VLM is in its own entry; "
            "with 'vlms:', the top-level 'vlm:' section holds shared settings only"
        )
    own = {k: v for k, v in item.items() if k not in _VLM_ENTRY_KEYS}
    shared = sorted(set(own) & set(SHARED_VLM_KEYS))
    if shared:
        raise ValueError(
            f"run config: {where}: {shared} are the same for every VLM compared (the same slices, "
            "scored the same way); set them in the shared 'vlm:' section"
        )
    vlm_raw = deep_merge(_section(config, "vlm"), own)
    ft_raw = _entry_finetune(item, _section(config, "finetune"), where)
    vlm = _vlm_section_from(vlm_raw, device, where)
    if vlm.backend == "tiny" and ft_raw.get("enabled"):
        # the adapter is trained on the very tiny model this entry asks (its weight seed)
        ft_raw.setdefault("tiny_seed", vlm.seed)
    finetune = _finetune_section_from(ft_raw, vlm.inference, device, f"{where}.finetune")
    raw = {"vlm": vlm_raw, "finetune": ft_raw, "device": config.get("device")}
    return VlmEntry(name, vlm, finetune, raw)


def _vlm_entries(config: Mapping[str, Any], device: str) -> tuple[VlmEntry, ...]:
    """The ``vlms:`` list, checked: names unique, each with its own backend and model, no
    top-level ``vlm.backend`` / ``vlm.model`` that none of them uses, no shared
    ``finetune.base`` (it would fine-tune one model for all of them)."""
    items = config.get("vlms")
    if not isinstance(items, list) or not items:
        raise ValueError("run config: vlms: a non-empty list of VLMs, each a mapping with a name")
    entries = tuple(_vlm_entry(item, i, config, device) for i, item in enumerate(items))
    names = [e.name for e in entries]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"run config: vlms: duplicate names {duplicates}; each VLM needs its own")
    shared = _section(config, "vlm")
    if "backend" in shared or "model" in shared:
        pair = (shared.get("backend", "tiny"), shared.get("model"))
        if pair not in {(e.vlm.backend, e.vlm.model) for e in entries}:
            raise ValueError(
                f"run config: vlm: backend/model {pair[0]} {pair[1] or ''} is not one of the "
                f"VLMs in 'vlms:' ({', '.join(names)}); is it compared or not? List it in 'vlms:' "
                "or remove it from 'vlm:'"
            )
    if _section(config, "finetune").get("base"):
        raise ValueError(
            "run config: finetune.base with 'vlms:': it would fine-tune one model for every VLM; "
            "set finetune: {base: ...} in the entry of the VLM it belongs to"
        )
    return entries


def _consistency_section(
    config: Mapping[str, Any], vlm: VLMConfig, entries: Sequence[VlmEntry] = ()
) -> ConsistencySection:
    cons = _section(config, "consistency")
    _refuse_unknown("consistency", cons, _CONSISTENCY_KEYS)
    allowed = (
        [m for e in entries for m in (e.base_method, e.finetuned_method)]
        if entries
        else list(CONSISTENCY_METHODS)
    )
    methods = _task_list(cons.get("methods") or allowed[:1])
    for method in methods:
        if method not in allowed:
            raise ValueError(
                f"run config: consistency.methods: unknown method {method!r} "
                f"(use {', '.join(allowed)})"
            )
    max_cases = cons.get("max_cases")
    return ConsistencySection(
        enabled=bool(cons.get("enabled", False)),
        runs=_convert("consistency.runs", int, cons.get("runs", 3)),
        temperature=_convert("consistency.temperature", float, cons.get("temperature", 0.7)),
        tasks=_task_list(cons.get("tasks") or vlm.tasks),
        max_cases=_convert("consistency.max_cases", int, max_cases) if max_cases else None,
        methods=methods,
    )


def _sensitivity_section(config: Mapping[str, Any], vlm: VLMConfig) -> SensitivitySection:
    sens = _section(config, "sensitivity")
    _refuse_unknown("sensitivity", sens, _SENSITIVITY_KEYS)
    rules = _task_list(sens.get("slice_rules") or SensitivitySection.slice_rules)
    for rule in rules:
        if rule not in SLICE_MODES:
            raise ValueError(
                f"run config: sensitivity.slice_rules: unknown rule {rule!r} "
                f"(use {', '.join(SLICE_MODES)})"
            )
    variant = str(sens.get("prompt_variant") or SensitivitySection.prompt_variant)
    if variant not in PROMPT_VARIANTS:
        raise ValueError(
            f"run config: sensitivity.prompt_variant {variant!r}: use {', '.join(PROMPT_VARIANTS)}"
        )
    return SensitivitySection(
        enabled=bool(sens.get("enabled", False)),
        slice_rules=rules,
        tasks=tuple(t for t in _task_list(sens.get("tasks") or vlm.tasks) if t in vlm.tasks),
        prompt_variant=variant,
    )


def _metrics_section(config: Mapping[str, Any]) -> MetricsSection:
    metrics = _section(config, "metrics")
    _refuse_unknown("metrics", metrics, _METRICS_KEYS)
    n_bootstrap = metrics.get("n_bootstrap", MetricsSection.n_bootstrap)
    score = str(metrics.get("vlm_grade_score", MetricsSection.vlm_grade_score))
    if score not in ("vote_share", "mean_p"):
        raise ValueError(f"run config: metrics.vlm_grade_score {score!r}: use vote_share or mean_p")
    return MetricsSection(
        n_bootstrap=_convert("metrics.n_bootstrap", int, n_bootstrap), vlm_grade_score=score
    )


def _report_section(config: Mapping[str, Any]) -> ReportOptions:
    # unknown report keys are not refused: the report lists them (a finished run's report must
    # not fail over a typo); a bad value of a known key is refused here, before any work
    options, _ = _convert("report", ReportOptions.from_config, _section(config, "report"))
    return options


def parse_run_config(raw: Mapping[str, Any]) -> RunConfig:
    """Check a run config once and return it typed; a typo fails before any work starts.

    Args:
        raw: the mapping :func:`load_run_config` returns (it is copied, not kept).

    Raises:
        ValueError: ``run config: <section>: ...`` naming the key and what is wrong.
    """
    raw = copy.deepcopy(dict(raw))
    seed = _convert("seed", int, raw.get("seed", 0))
    data = _data_section(raw)
    split = _split_section(raw, seed)
    cnn = _cnn_section(raw)
    given_device = str(raw.get("device") or "auto")  # checked after the arms, as it always was
    vlm = _vlm_section(raw, given_device)
    finetune = _finetune_section(raw, vlm.inference, given_device)
    named = _vlm_entries(raw, given_device) if "vlms" in raw else ()
    if named:  # the first VLM stands in wherever one VLM is asked (sensitivity, consistency)
        vlm, finetune = named[0].vlm, named[0].finetune
    unnamed = VlmEntry("", vlm, finetune, {k: raw.get(k) for k in ("vlm", "finetune", "device")})
    consistency = _consistency_section(raw, vlm.inference, named)
    sensitivity = _sensitivity_section(raw, vlm.inference)
    device = _device(raw)
    return RunConfig(
        name=str(raw.get("name") or "run"),
        description=raw.get("description"),
        seed=seed,
        device=device,
        data=data,
        split=split,
        cnn=cnn,
        vlm=vlm,
        finetune=finetune,
        consistency=consistency,
        sensitivity=sensitivity,
        metrics=_metrics_section(raw),
        report=_report_section(raw),
        vlms=named or (unnamed,),
        raw=raw,
    )
