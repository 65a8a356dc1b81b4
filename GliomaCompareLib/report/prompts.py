"""The prompts the VLM was given and, per parse status, a few of its raw answers.

Besides a few answers per (stage, task, status), up to :data:`PICTURED_PER_STATUS` answers per
parse status are kept that were given on a slice whose image the run folder keeps (each case's
gallery slice, ``cases/<case_id>/gallery.npz``), so the report can show them on the image the
VLM saw.

Every answer in a stage's ``answers.jsonl`` carries the ``template_hash`` of its task's
template and the ``prompt_hash`` of the rendered text. The report renders each template of
``Resources/prompts`` for the image size and coordinate system the answers record, and says
whether the hashes match (when a template has been edited since the run, the hash tells).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from GliomaCompareLib.vlm.parsing import PARSE_STATUSES
from GliomaCompareLib.vlm.tasks import load_tasks

__all__ = ["AnswerExample", "PromptUse", "PromptsSummary", "gallery_slices", "read_prompts"]

#: Raw answers kept per (stage, task, parse status), and characters kept of each.
EXAMPLES_PER_STATUS = 2
RAW_CHARS = 300
#: Answers kept per parse status on slices whose image the run folder keeps.
PICTURED_PER_STATUS = 3


@dataclass(frozen=True)
class AnswerExample:
    """One raw VLM answer (its text truncated to :data:`RAW_CHARS` characters)."""

    stage: str
    task: str
    status: str
    case_id: str
    slice_index: str
    raw_text: str
    note: str
    run: int = 0
    pixel: Mapping[str, Any] | None = None
    width: int = 0
    height: int = 0
    model: str = ""


@dataclass
class PromptUse:
    """One prompt as the answers recorded it, and its text rendered from the current template.

    Attributes:
        task: the task.
        template_hash, prompt_hash: as recorded with the answers.
        width, height, coordinate_system: the image size and coordinates the answers record.
        count: answers that carry these hashes.
        text: the prompt rendered from ``Resources/prompts`` ("" when it could not be).
        matches: whether the rendered prompt's hashes equal the recorded ones.
    """

    task: str
    template_hash: str
    prompt_hash: str
    width: int
    height: int
    coordinate_system: str
    count: int = 0
    text: str = ""
    matches: bool = False


@dataclass
class PromptsSummary:
    """The prompts, raw-answer examples, answer files read and problems met."""

    prompts: list[PromptUse] = field(default_factory=list)
    examples: list[AnswerExample] = field(default_factory=list)
    pictured: dict[str, list[AnswerExample]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _answer_files(run_dir: Path) -> list[Path]:
    """The stages' merged ``answers.jsonl`` files (not the backends' caches)."""
    stages = run_dir / "stages"
    if not stages.is_dir():
        return []
    return sorted(p for p in stages.rglob("answers.jsonl") if "cache" not in p.parts)


def _records(path: Path, problems: list[str]) -> Iterator[Mapping[str, Any]]:
    try:
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    problems.append(f"{path}: line {number} is not JSON ({exc.msg})")
                    continue
                if isinstance(record, Mapping):
                    yield record
    except OSError as exc:
        problems.append(f"{path} could not be read: {exc}")


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _render(uses: list[PromptUse], problems: list[str]) -> None:
    """Render each prompt from the current templates and compare the hashes."""
    try:
        specs = load_tasks()
    except (OSError, ValueError) as exc:
        problems.append(f"the prompt templates could not be read: {exc}")
        return
    for use in uses:
        spec = specs.get(use.task)
        if spec is None or not use.width or not use.height:
            continue
        try:
            prompt = spec.render(use.width, use.height, use.coordinate_system or "pixel")
        except ValueError as exc:
            problems.append(f"prompt of {use.task} could not be rendered: {exc}")
            continue
        use.text = prompt.text
        use.matches = (prompt.template_hash, prompt.prompt_hash) == (
            use.template_hash,
            use.prompt_hash,
        )


def gallery_slices(run_dir: str | Path) -> dict[str, int]:
    """Case id -> the axial slice whose image ``cases/<case_id>/gallery.npz`` keeps (only its
    ``slice_index`` array is read; unreadable files are left out)."""
    out = {}
    for path in sorted(Path(run_dir).glob("cases/*/gallery.npz")):
        try:
            with np.load(path, allow_pickle=False) as data:
                out[path.parent.name] = int(data["slice_index"])
        except Exception:  # a damaged file: no image for that case (the gallery says why)
            continue
    return out


def _example(stage: str, r: Mapping[str, Any]) -> AnswerExample:
    raw = str(r.get("raw_text") or "")
    short = raw if len(raw) <= RAW_CHARS else raw[:RAW_CHARS] + " … [truncated]"
    pixel = r.get("pixel")
    return AnswerExample(
        stage, str(r.get("task") or "?"), str(r.get("status") or "?"), str(r.get("case_id")),
        str(r.get("slice_index")), short, str(r.get("note") or ""), _int(r.get("run")),
        pixel if isinstance(pixel, Mapping) else None, _int(r.get("width")), _int(r.get("height")),
        str(r.get("model_label") or ""),
    )  # fmt: skip


#: Task order of the pictured answers: the localisation tasks (something drawn) first.
_TASK_ORDER = ("point", "box", "polygon", "grade")


def _interleave(lists: list[list[AnswerExample]]) -> list[AnswerExample]:
    """The first item of each list, then the second of each, and so on."""
    out: list[AnswerExample] = []
    for i in range(max((len(x) for x in lists), default=0)):
        out += [x[i] for x in lists if i < len(x)]
    return out


def _pictured(candidates: Mapping[tuple[str, str, str], list[AnswerExample]]):
    """Per status, up to :data:`PICTURED_PER_STATUS` answers, spread over the stages first (one
    stage after another) and the tasks next (each stage starting at another task), so the few
    shown cover as many VLMs and tasks as there are."""
    out: dict[str, list[AnswerExample]] = {}
    found = {k[2] for k in candidates}
    rank = {t: i for i, t in enumerate(_TASK_ORDER)}
    for status in [
        *(s for s in PARSE_STATUSES if s in found),
        *sorted(found - set(PARSE_STATUSES)),
    ]:
        stages = sorted({k[0] for k in candidates if k[2] == status})
        per_stage = []
        for j, stage in enumerate(stages):
            keys = sorted((k for k in candidates if k[0] == stage and k[2] == status),
                          key=lambda k: (rank.get(k[1], len(rank)), k[1]))  # fmt: skip
            keys = keys[j % len(keys) :] + keys[: j % len(keys)]
            per_stage.append(_interleave([list(candidates[k]) for k in keys]))
        out[status] = _interleave(per_stage)[:PICTURED_PER_STATUS]
    return out


def read_prompts(run_dir: str | Path) -> PromptsSummary:
    """The prompts and a few raw answers per parse status, from a run's answer files.

    Args:
        run_dir: the run folder (``stages/*/.../answers.jsonl`` are read).

    Returns:
        The summary; empty lists when the run has no VLM answers.
    """
    run_dir = Path(run_dir)
    out = PromptsSummary()
    uses: dict[tuple, PromptUse] = {}
    kept: Counter = Counter()
    pictured: dict[tuple[str, str, str], list[AnswerExample]] = defaultdict(list)
    images = gallery_slices(run_dir)
    statuses: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for path in _answer_files(run_dir):
        stage = str(path.parent.relative_to(run_dir / "stages"))
        out.files.append(str(path.relative_to(run_dir)))
        for r in _records(path, out.problems):
            task, status = str(r.get("task") or "?"), str(r.get("status") or "?")
            statuses[(stage, task)][status] += 1
            key = (task, r.get("template_hash"), r.get("prompt_hash"))
            if key[1] or key[2]:
                use = uses.setdefault(
                    key,
                    PromptUse(task, str(key[1] or ""), str(key[2] or ""), _int(r.get("width")),
                              _int(r.get("height")), str(r.get("coordinate_system") or "")),
                )  # fmt: skip
                use.count += 1
            if kept[(stage, task, status)] < EXAMPLES_PER_STATUS:
                kept[(stage, task, status)] += 1
                out.examples.append(_example(stage, r))
            on_image = images.get(str(r.get("case_id"))) == _int(r.get("slice_index"), -1)
            if on_image and len(pictured[(stage, task, status)]) < PICTURED_PER_STATUS:
                pictured[(stage, task, status)].append(_example(stage, r))
    out.pictured = _pictured(pictured)
    out.prompts = sorted(uses.values(), key=lambda u: (u.task, -u.count))
    _render(out.prompts, out.problems)
    return out
