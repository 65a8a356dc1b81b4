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
written. Opening the cache reads every segment; a truncated last line is skipped. Several
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
                    self._answers[entry["key"]] = entry["answer"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    self.skipped_lines += 1
                    log.warning("%s:%d: unreadable cache line skipped", segment, number)

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
