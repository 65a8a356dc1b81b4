"""A content-addressed cache of VLM answers, so an interrupted or repeated run asks nothing twice.

The key of an answer (:func:`answer_key`) is the sha256 of everything that determines it: the
image (its sha256), the rendered prompt (text and JSON schema, via its prompt hash) and the
prompt template hash, the backend's identity (backend, model id and revision, dtype,
quantization, adapter hash; never secrets), the decoding config, the run index and whether
option probabilities were asked for. The same slice asked the same way hits the cache across
runs, output folders and pipelines that share the cache folder; anything else misses.

Storage: append-only JSON-lines segment files in the cache folder, one per writing process
(``answers-<host>-<pid>-<random>.jsonl``), each line ``{"key": ..., "answer": {...}}``, written
and flushed as soon as an answer arrives, so a killed run loses at most the line being
written. Opening the cache reads every segment; a line that cannot be an answer (truncated or
damaged JSON, fields of the wrong type) is skipped with a warning naming the file, the line and
the reason, so that query is asked again instead of crashing every re-run. Several
processes and machines can share one folder (each appends to its own segment). Failed queries
(``Answer.error``) are never cached: a later run asks them again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import uuid
from pathlib import Path

from GliomaCompareLib.vlm.tasks import Prompt
from GliomaCompareLib.vlm.types import Answer, DecodingConfig

__all__ = ["AnswerCache", "answer_key"]

log = logging.getLogger(__name__)

_NUMBER = (int, float)
#: The type each stored :class:`Answer` field must have (None allowed where listed).
_ANSWER_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "text": ((str,), True),
    "refused": ((bool,), False),
    "finish_reason": ((str,), True),
    "option_logprobs": ((dict,), True),
    "option_method": ((str,), True),
    "latency_s": (_NUMBER, False),
    "generated_tokens": ((int,), True),
    "meta": ((dict,), False),
}


def _entry_problem(entry: object) -> str | None:
    """Why a decoded cache line is not a usable ``{"key": ..., "answer": {...}}``, or None."""
    if not isinstance(entry, dict):
        return f"a JSON {type(entry).__name__}, not an object"
    key, answer = entry.get("key"), entry.get("answer")
    if not isinstance(key, str) or not key:
        return "no key"
    if not isinstance(answer, dict):
        return f"answer is {type(answer).__name__}, not an object"
    if answer.get("error") is not None:
        return "a failed query (errors are never cached)"
    for name, (kinds, optional) in _ANSWER_FIELDS.items():
        if name not in answer:
            if name == "text":
                return "answer has no text"
            continue
        value = answer[name]
        if value is None and optional:
            continue
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            return f"answer field {name!r} is {type(value).__name__}"
    logprobs = answer.get("option_logprobs") or {}
    if not all(isinstance(v, _NUMBER) and not isinstance(v, bool) for v in logprobs.values()):
        return "answer field 'option_logprobs' holds a value that is not a number"
    return None


def answer_key(
    *,
    image_sha: str,
    prompt: Prompt,
    identity: dict,
    decoding: DecodingConfig,
    run: int,
    score_options: bool,
) -> str:
    """The cache key (64 hex digits) of one query; see module docstring."""
    canon = json.dumps(
        {
            "image": image_sha,
            "prompt": prompt.prompt_hash,
            "template": prompt.template_hash,
            "task": prompt.task,
            "model": identity,
            "decoding": decoding.to_dict(),
            "run": int(run),
            "options": bool(score_options),
        },
        sort_keys=True,
    )
    return hashlib.sha256(canon.encode()).hexdigest()


class AnswerCache:
    """Answers by key, persisted in ``folder`` (in memory only when ``folder`` is None).

    Args:
        folder: the cache folder (created when needed).
    """

    def __init__(self, folder: str | Path | None):
        self.folder = Path(folder) if folder is not None else None
        self._answers: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._handle = None
        self.skipped_lines = 0
        if self.folder is not None and self.folder.is_dir():
            for segment in sorted(self.folder.glob("answers-*.jsonl")):
                self._load(segment)

    def _load(self, segment: Path) -> None:
        with segment.open("r", encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                except ValueError as exc:
                    problem: str | None = f"not JSON ({exc})"
                else:
                    problem = _entry_problem(entry)
                if problem is not None:
                    self.skipped_lines += 1
                    log.warning(
                        "%s:%d: damaged answer-cache line skipped (%s); that query is asked again",
                        segment,
                        number,
                        problem,
                    )
                    continue
                self._answers[entry["key"]] = entry["answer"]

    def __len__(self) -> int:
        return len(self._answers)

    def __contains__(self, key: str) -> bool:
        return key in self._answers

    def get(self, key: str) -> Answer | None:
        """The cached answer for ``key``, or None."""
        record = self._answers.get(key)
        return Answer.from_record(record) if record is not None else None

    def put(self, key: str, answer: Answer) -> None:
        """Store an answer (written and flushed at once); answers with ``error`` are ignored."""
        if answer.error is not None:
            return
        record = answer.to_record()
        with self._lock:
            self._answers[key] = record
            if self.folder is None:
                return
            if self._handle is None:
                self.folder.mkdir(parents=True, exist_ok=True)
                name = f"answers-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
                self._handle = (self.folder / name).open("a", encoding="utf-8")
            self._handle.write(json.dumps({"key": key, "answer": record}) + "\n")
            self._handle.flush()

    def close(self) -> None:
        """Close the segment file (answers stay readable)."""
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None

    def __enter__(self) -> AnswerCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
