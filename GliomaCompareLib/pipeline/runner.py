"""A small staged, resumable runner: atomic outputs, completion markers, config fingerprints.

Every stage of a run lives in ``RUN/stages/<name>/``. When a stage starts it writes
``started.json`` (its fingerprint); when it finishes it writes ``done.json`` (fingerprint,
summary, timings) — the completion marker. A stage's fingerprint is a hash of the config
sections it reads and of the fingerprints of the stages it depends on, so:

- re-running the same command skips finished stages and resumes interrupted ones (a stage's own
  code resumes its partial work: the VLM answer cache, the CNN's last checkpoint);
- a changed config that would invalidate finished (or half-done) work is detected and refused,
  naming the stage and the changed keys, unless that stage is forced (``--force STAGE``);
- a forced stage re-runs, and the stages downstream of it re-run too (their inputs changed).

Per-case stages can be sharded (``--shard i/n``): shard ``i`` processes the cases whose position
in the sorted case list is ``i`` modulo ``n`` and writes ``done-shard-i-of-n.json``; a stage that
needs all cases waits until every shard of its upstream stages is done. Whole-cohort stages
(training) are run by whichever shard gets there first, under a file lock (the ``filelock``
package: it works on Windows, macOS and Linux); the others wait for it.

The runner does not know what a run config is: stages see ``config`` (for a comparison run, the
typed :class:`~GliomaCompareLib.pipeline.config.RunConfig`), and fingerprints are taken from
``raw``, the JSON-able mapping the config was parsed from (by dotted key, e.g. ``"cnn.seg"``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

from GliomaCompareLib.fileio import atomic_write, atomic_write_json

__all__ = [
    "ConfigChangedError",
    "Shard",
    "Stage",
    "StageContext",
    "StageRunner",
    "atomic_write",
    "atomic_write_json",
    "fingerprint",
    "read_marker",
    "select_config",
]

log = logging.getLogger(__name__)

#: The lock file of a whole-cohort stage, in its folder (a dot file: not an output).
LOCK_FILE = ".lock"


class ConfigChangedError(RuntimeError):
    """Finished (or half-done) work would be invalidated by a changed config."""


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def fingerprint(obj: Any) -> str:
    """sha256 (16 hex digits) of the canonical JSON of ``obj``."""
    return hashlib.sha256(_canonical(obj).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (``0/1`` = the whole cohort)."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str | None) -> Shard:
        """Parse ``"i/n"`` (0-based ``i``).

        Raises:
            ValueError: for anything that is not ``i/n`` with ``0 <= i < n``.
        """
        if not text:
            return cls()
        try:
            i, n = (int(x) for x in text.split("/"))
        except ValueError:
            raise ValueError(f"--shard {text!r}: expected i/n, e.g. 0/4") from None
        if not 0 <= i < n:
            raise ValueError(f"--shard {text!r}: need 0 <= i < n")
        return cls(i, n)

    def select(self, case_ids: Sequence[str]) -> list[str]:
        """This shard's cases out of the sorted list ``case_ids``."""
        return [c for pos, c in enumerate(sorted(case_ids)) if pos % self.count == self.index]

    @property
    def tag(self) -> str:
        return f"shard-{self.index}-of-{self.count}"


@dataclass(frozen=True)
class Stage:
    """One stage of a run.

    Attributes:
        name: stage name (also its folder name), e.g. ``"cnn-predict"``.
        run: ``run(ctx) -> summary dict``; writes its outputs under ``ctx.dir``.
        depends: names of stages whose outputs it reads.
        config_keys: dotted keys of the raw config it reads (``"vlm"``, ``"cnn.seg"``); they make
            up the fingerprint together with the upstream fingerprints.
        per_case: True when the stage can be sharded by case.
        description: one line for the progress display.
        enabled: ``enabled(config) -> bool`` (the config the stages see); a disabled stage is
            skipped and marked so.
        settings: JSON-able settings that are not a key of the raw config (one VLM of a
            ``vlms:`` list, resolved); part of the fingerprint when given. Stages made for one item
            of a list use it, so editing one item redoes only that item's stages.
    """

    name: str
    run: Callable[[StageContext], Mapping[str, Any] | None]
    depends: tuple[str, ...] = ()
    config_keys: tuple[str, ...] = ()
    per_case: bool = False
    description: str = ""
    enabled: Callable[[Any], bool] | None = None
    settings: Mapping[str, Any] | None = field(default=None, compare=False, hash=False)


@dataclass
class StageContext:
    """What a running stage can see.

    ``config`` is the config the runner was given (a typed ``RunConfig`` in a comparison run).
    ``fresh`` is True when the stage was forced or its inputs changed: partial work left in
    ``dir`` from an earlier attempt must then be discarded rather than resumed (content-addressed
    caches may be kept: their keys already hold every input).
    """

    run_dir: Path
    dir: Path
    stage: Stage
    config: Any
    shard: Shard
    upstream: dict[str, dict]
    logger: logging.Logger
    fresh: bool = False
    extras: dict[str, Any] = field(default_factory=dict)

    def stage_dir(self, name: str) -> Path:
        """Output folder of another stage."""
        return self.run_dir / "stages" / name

    def cases(self, case_ids: Sequence[str]) -> list[str]:
        """This stage's share of ``case_ids`` (all of them unless the stage is sharded)."""
        return self.shard.select(case_ids) if self.stage.per_case else sorted(case_ids)

    def shard_dir(self, *parts: str) -> Path:
        """Per-shard output folder ``dir/parts/<all | shard-i-of-n>`` of a per-case stage."""
        tag = "all" if self.shard.count == 1 else self.shard.tag
        return self.dir.joinpath(*parts, tag)


def select_config(config: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """The values of dotted ``keys`` in ``config`` (missing keys give None)."""
    out: dict[str, Any] = {}
    for key in keys:
        node: Any = config
        for part in key.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        out[key] = node
    return out


def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _diff(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else str(key))
        return out
    return [] if _canonical(old) == _canonical(new) else [f"{prefix}: {old!r} -> {new!r}"]


def read_marker(path: Path, logger: logging.Logger | None = None) -> dict | None:
    """A stage marker (``done.json`` / ``started.json``) as a dict; None when it is missing or
    damaged (not JSON, or not a JSON object), a damaged one named with the reason in the log."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        (logger or log).warning("%s: unreadable (%s); the stage is redone", path, exc)
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        (logger or log).warning("%s: not valid JSON (%s); the stage is redone", path, exc)
        return None
    if not isinstance(data, dict):
        (logger or log).warning(
            "%s: holds a %s, not a JSON object; the stage is redone", path, type(data).__name__
        )
        return None
    return data


class StageRunner:
    """Runs stages in order, skipping finished ones, refusing invalidating config changes.

    Args:
        run_dir: the run folder.
        stages: stages in execution order (dependencies first).
        config: what the stages see as ``ctx.config`` and ``enabled(config)``.
        raw: the JSON-able mapping fingerprinted by the stages' ``config_keys`` (default:
            ``config`` itself, which must then be such a mapping).
        shard: which shard this process is.
        poll_seconds: how often a shard waiting for others looks again.
        wait_timeout: seconds a shard waits for others before giving up (None: forever).
        on_stage: callback ``(position, total, stage, state)``; state is
            ``"start" | "skip" | "done" | "disabled" | "wait"``.
    """

    def __init__(
        self,
        run_dir: str | Path,
        stages: Sequence[Stage],
        config: Any,
        *,
        raw: Mapping[str, Any] | None = None,
        shard: Shard | None = None,
        poll_seconds: float = 5.0,
        wait_timeout: float | None = None,
        on_stage: Callable[[int, int, Stage, str], None] | None = None,
        logger: logging.Logger | None = None,
        extras: dict[str, Any] | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.stages = list(stages)
        names = [s.name for s in self.stages]
        for stage in self.stages:
            unknown = [d for d in stage.depends if d not in names[: names.index(stage.name)]]
            if unknown:
                raise ValueError(f"Stage {stage.name} depends on {unknown}, not earlier stages")
        self.config = config
        self.raw = config if raw is None else raw
        self.shard = shard or Shard()
        self.poll_seconds = poll_seconds
        self.wait_timeout = wait_timeout
        self.on_stage = on_stage or (lambda *a: None)
        self.log = logger or log
        self.extras = extras or {}
        self._fingerprints: dict[str, str] = {}

    # ---------------------------------------------------------------- state on disk
    def stage_dir(self, name: str) -> Path:
        return self.run_dir / "stages" / name

    def _marker(self, stage: Stage, kind: str) -> Path:
        suffix = f"-{self.shard.tag}" if stage.per_case and self.shard.count > 1 else ""
        return self.stage_dir(stage.name) / f"{kind}{suffix}.json"

    def _read(self, path: Path) -> dict | None:
        """A completion / start marker, or None when there is none. A damaged one (not JSON,
        not an object) is named in the log and treated as absent, so its stage is redone."""
        return read_marker(path, self.log)

    def fingerprint_of(self, stage: Stage) -> tuple[str, dict]:
        inputs = {
            "config": select_config(self.raw, stage.config_keys),
            "upstream": {d: self._fingerprints.get(d) for d in stage.depends},
            **({"settings": stage.settings} if stage.settings is not None else {}),
        }
        return fingerprint(inputs), inputs

    def status(self) -> list[dict]:
        """Per stage: name, state (done / partial / pending), fingerprint match."""
        out = []
        for stage in self.stages:
            fp, _ = self.fingerprint_of(stage)
            self._fingerprints[stage.name] = fp
            done = self._read(self._marker(stage, "done"))
            started = self._read(self._marker(stage, "started"))
            state = "done" if done else ("partial" if started else "pending")
            current = (done or started or {}).get("fingerprint") in (None, fp)
            out.append({"stage": stage.name, "state": state, "config_current": current})
        return out

    # ---------------------------------------------------------------- running
    def run(self, force: Sequence[str] = (), only: Sequence[str] | None = None) -> dict[str, dict]:
        """Run every stage (or only ``only``) that is not finished with the same inputs.

        Args:
            force: stage names to redo even if finished or if their config changed
                (``"all"`` forces every stage).

        Returns:
            stage name -> summary (from ``done.json``).

        Raises:
            ConfigChangedError: a stage finished (or started) with other inputs, not forced.
        """
        names = {s.name for s in self.stages}
        unknown = sorted(set(force) - names - {"all"})
        if unknown:
            raise ValueError(f"--force {', '.join(unknown)}: no such stage ({', '.join(names)})")
        forced = set(names) if "all" in force else set(force)
        rerun: set[str] = set()
        invalidated: set[str] = set()  # stages whose earlier outputs were thrown away
        summaries: dict[str, dict] = {}
        total = len(self.stages)
        for position, stage in enumerate(self.stages, start=1):
            fp, inputs = self.fingerprint_of(stage)
            self._fingerprints[stage.name] = fp
            if only is not None and stage.name not in only:
                done = self._read(self._marker(stage, "done"))
                summaries[stage.name] = (done or {}).get("summary", {})
                continue
            if stage.enabled is not None and not stage.enabled(self.config):
                self.on_stage(position, total, stage, "disabled")
                summaries[stage.name] = {"disabled": True}
                continue
            upstream_rerun = any(d in rerun for d in stage.depends)
            done = self._read(self._marker(stage, "done"))
            started = self._read(self._marker(stage, "started"))
            previous = done or started
            changed = bool(previous and previous.get("fingerprint") != fp)
            if changed and stage.name not in forced and not upstream_rerun:
                changes = _diff(previous.get("inputs", {}), inputs)
                what = "finished" if done else "half-done"
                raise ConfigChangedError(
                    f"stage {stage.name}: {what} work in {self.stage_dir(stage.name)} was "
                    f"made with other inputs ({'; '.join(changes) or 'unknown change'}); "
                    f"re-run with --force {stage.name} to redo it (and what depends on it), "
                    "or use another --out folder"
                )
            # a stage whose upstream was redone from scratch (forced, or its inputs changed) is
            # redone too: its inputs are new even when its fingerprint is not
            redo = stage.name in forced or any(d in invalidated for d in stage.depends)
            if done and done.get("fingerprint") == fp and not redo:
                self.on_stage(position, total, stage, "skip")
                summaries[stage.name] = done.get("summary", {})
                continue
            fresh = redo or changed
            if fresh:
                invalidated.add(stage.name)
            if fresh:
                self._clear_markers(stage)
            self._wait_for_upstream(stage, position, total)
            summaries[stage.name] = self._run_stage(
                stage, fp, inputs, summaries, position, total, fresh
            )
            rerun.add(stage.name)
        return summaries

    def _clear_markers(self, stage: Stage) -> None:
        folder = self.stage_dir(stage.name)
        for pattern in ("done*.json", "started*.json"):
            for path in folder.glob(pattern):
                path.unlink()

    def _wait_for_upstream(self, stage: Stage, position: int, total: int) -> None:
        """Block until every shard of every upstream per-case stage is done (when sharded)."""
        if self.shard.count == 1:
            return
        waiting_since = time.monotonic()
        for dep in stage.depends:
            dep_stage = next(s for s in self.stages if s.name == dep)
            if not dep_stage.per_case or stage.per_case:
                continue
            if dep_stage.enabled is not None and not dep_stage.enabled(self.config):
                continue  # a disabled stage writes no shard markers
            need = [
                self.stage_dir(dep) / f"done-shard-{i}-of-{self.shard.count}.json"
                for i in range(self.shard.count)
            ]
            while not all(p.exists() for p in need):
                missing = [p.name for p in need if not p.exists()]
                self.on_stage(position, total, stage, "wait")
                self.log.info("stage %s waits for %s of %s", stage.name, missing, dep)
                if self.wait_timeout and time.monotonic() - waiting_since > self.wait_timeout:
                    raise TimeoutError(
                        f"stage {stage.name}: gave up waiting for {dep} shards {missing}"
                    )
                time.sleep(self.poll_seconds)

    def _run_stage(self, stage, fp, inputs, summaries, position, total, fresh) -> dict:
        folder = self.stage_dir(stage.name)
        folder.mkdir(parents=True, exist_ok=True)
        # whole-cohort stages: one shard runs it; the others wait here, then find it done
        lock = nullcontext() if stage.per_case else FileLock(folder / LOCK_FILE)
        with lock:
            if not stage.per_case:
                done = self._read(self._marker(stage, "done"))
                if done and done.get("fingerprint") == fp:
                    self.on_stage(position, total, stage, "skip")
                    return done.get("summary", {})
            atomic_write_json(
                self._marker(stage, "started"),
                {"fingerprint": fp, "inputs": inputs, "started": time.time()},
            )
            self.on_stage(position, total, stage, "start")
            ctx = StageContext(
                run_dir=self.run_dir,
                dir=folder,
                stage=stage,
                config=self.config,
                shard=self.shard,
                upstream={d: summaries.get(d, {}) for d in stage.depends},
                logger=self.log,
                fresh=fresh,
                extras=self.extras,
            )
            t0 = time.time()
            summary = dict(stage.run(ctx) or {})
            elapsed = time.time() - t0
            atomic_write_json(
                self._marker(stage, "done"),
                {
                    "fingerprint": fp,
                    "inputs": inputs,
                    "summary": summary,
                    "seconds": round(elapsed, 3),
                    "finished": time.time(),
                },
            )
        self.on_stage(position, total, stage, "done")
        self.log.info("stage %s done in %.1f s", stage.name, elapsed)
        return summary
