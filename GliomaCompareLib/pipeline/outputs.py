"""What the arms wrote into a run folder, gathered over every shard for the ``metrics`` stage:
the CNN's per-case records and label maps (trained, and the untrained baseline), and each VLM
method's answers and per-patient rows (every VLM of a ``vlms:`` run, see :func:`vlm_stage_of`)."""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from GliomaCompareLib.data import read_image
from GliomaCompareLib.runlayout import is_finetuned_method, vlm_name_of

__all__ = [
    "VLM_STAGES",
    "ArmOutputs",
    "CnnOutputs",
    "MethodOutputs",
    "as_float",
    "collect_vlm",
    "read_csv",
    "vlm_stage_of",
]

log = logging.getLogger("gliomacompare.metrics")

#: VLM method -> the stage that asks it (the single VLM of a ``vlm:`` run; see vlm_stage_of).
VLM_STAGES = {"vlm_base": "vlm-base", "vlm_finetuned": "vlm-finetuned"}


def vlm_stage_of(method: str) -> str:
    """The stage that asks a VLM method: ``vlm-base`` / ``vlm-finetuned``, or for a VLM of a
    ``vlms:`` run ``vlm-base-<name>`` / ``vlm-finetuned-<name>``."""
    name = vlm_name_of(method)
    stage = "vlm-finetuned" if is_finetuned_method(method) else "vlm-base"
    return f"{stage}-{name}" if name else stage


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def as_float(value) -> float | None:
    """A CSV cell as a float (None for empty, unparsable or NaN)."""
    if value in (None, ""):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


@dataclass
class MethodOutputs:
    """One VLM method's outputs gathered over every shard."""

    method: str
    model: str = ""
    model_label: str = ""
    answers: list[dict] = field(default_factory=list)
    patients: list[dict] = field(default_factory=list)
    case_errors: dict[str, str] = field(default_factory=dict)


def _model_name(identity: Mapping[str, Any], label: str) -> str:
    model = identity.get("model_id") or identity.get("model") or identity.get("backend") or ""
    adapter = identity.get("adapter_hash") or identity.get("adapter")
    text = str(model)
    if adapter:
        text += f" + LoRA adapter {str(adapter)[:12]}"
    if label and label not in text:
        text += f" ({label})"
    return text


def collect_vlm(run_dir: Path, method: str, stage_dir: Path | None = None) -> MethodOutputs | None:
    """Gather a VLM stage's answers and patient rows over its shards (None when it did not run)."""
    stage_dir = stage_dir or run_dir / "stages" / vlm_stage_of(method)
    outs = sorted(p for p in (stage_dir / "out").glob("*") if (p / "vlm.json").is_file())
    if not outs:
        return None
    result = MethodOutputs(method)
    for out in outs:
        info = json.loads((out / "vlm.json").read_text())
        result.model_label = info.get("model_label", "")
        result.model = _model_name(info.get("identity") or {}, result.model_label)
        result.case_errors.update(info.get("case_errors") or {})
        answers = out / "answers.jsonl"
        if answers.is_file():
            with answers.open() as handle:
                result.answers += [json.loads(line) for line in handle if line.strip()]
        patients = out / "metrics" / "vlm_patients.csv"
        if patients.is_file():
            result.patients += read_csv(patients)
    return result


@dataclass
class CnnOutputs:
    """The CNN's per-case records (by case id), their output folders, and the model."""

    method: str
    records: dict[str, dict] = field(default_factory=dict)
    folders: dict[str, Path] = field(default_factory=dict)
    model: str = ""

    @classmethod
    def read(cls, run_dir: Path, method: str = "cnn") -> CnnOutputs:
        """``method``: ``cnn`` (the trained networks, ``pred/``) or ``cnn_untrained`` (the
        segmentation network before training, ``pred_untrained/``, the baseline)."""
        folder = "pred" if method == "cnn" else "pred_untrained"
        out = cls(method)
        for path in sorted((run_dir / "stages" / "cnn-predict" / folder).glob("*/records/*.json")):
            record = json.loads(path.read_text())
            out.records[record["case_id"]] = record
            out.folders[record["case_id"]] = path.parent.parent
        if out.records:
            first = next(iter(out.records.values()))
            out.model = "; ".join(
                f"{task} {first[key]}"
                for task, key in (("seg", "seg_model_id"), ("cls", "cls_model_id"))
                if first.get(key)
            )
            if method == "cnn_untrained":
                out.model += " (untrained: random initialisation)"
        return out

    def label(self, case_id: str) -> np.ndarray | None:
        """A case's label map (uint8), or None when missing or unreadable (logged)."""
        record = self.records.get(case_id)
        if not (record and record.get("label_file")):
            return None
        try:
            label, _ = read_image(self.folders[case_id] / record["label_file"])
        except ValueError as exc:
            log.warning("metrics: CNN label map of %s unreadable: %s", case_id, exc)
            return None
        return np.rint(label).astype(np.uint8)


def _sensitivity_outputs(run_dir: Path, method: str = "vlm_base") -> dict[str, MethodOutputs]:
    """The base VLM's outputs under each other slice rule (``slice-sensitivity/<rule>/``)."""
    stage = run_dir / "stages" / "slice-sensitivity"
    out = {}
    for folder in sorted(p for p in stage.glob("*") if p.is_dir()):
        outputs = collect_vlm(run_dir, method, folder)
        if outputs is not None:
            out[folder.name] = outputs
    return out


@dataclass
class ArmOutputs:
    """Everything the arms wrote: the CNN (and its untrained baseline), the VLM methods, and
    the base VLM under other slice rules (``sensitivity``: rule -> outputs)."""

    cnn: CnnOutputs
    cnn_untrained: CnnOutputs
    cnn_ran: bool
    vlm: dict[str, MethodOutputs]
    sensitivity: dict[str, MethodOutputs] = field(default_factory=dict)

    @classmethod
    def read(cls, run_dir: Path, vlm_methods: Sequence[str] = tuple(VLM_STAGES)) -> ArmOutputs:
        """``vlm_methods``: the run's VLM methods, in table order (the first one's base method
        is the one the ``slice-sensitivity`` stage asked)."""
        cnn = CnnOutputs.read(run_dir, "cnn")
        ran = (run_dir / "stages" / "cnn-predict" / "done.json").exists() or bool(cnn.records)
        return cls(
            cnn=cnn,
            cnn_untrained=CnnOutputs.read(run_dir, "cnn_untrained"),
            cnn_ran=ran,
            vlm={m: o for m in vlm_methods if (o := collect_vlm(run_dir, m)) is not None},
            sensitivity=_sensitivity_outputs(
                run_dir, vlm_methods[0] if vlm_methods else "vlm_base"
            ),
        )

    def cnn_sources(self) -> list[CnnOutputs]:
        """The CNN outputs scored per case: the trained networks, then the baseline if any."""
        return [self.cnn, self.cnn_untrained] if self.cnn_untrained.records else [self.cnn]
