"""Background runs of the ``gliomacompare`` CLI: a runner Protocol, a subprocess runner, jobs,
progress parsing and the command lines of the CNN and VLM arms.

No slicer / qt import: the GUI polls a :class:`Job` from a timer (so nothing touches Qt from a
reader thread and the GUI never blocks), batch scripts call :meth:`Job.wait`.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from GliomaCompareSlicerLib import paths

__all__ = [
    "DEVICES",
    "VLM_BACKENDS",
    "VLM_TASKS",
    "CnnRunParams",
    "Job",
    "ProcessRunner",
    "Progress",
    "RunningProcess",
    "SubprocessRunner",
    "VlmRunParams",
    "available_commands",
    "cnn_predict_command",
    "parse_progress",
    "vlm_command",
]

DEVICES = ("auto", "cuda", "cpu")
VLM_BACKENDS = ("tiny", "transformers", "openai")
VLM_TASKS = ("grade", "point", "box", "polygon")


@runtime_checkable
class RunningProcess(Protocol):
    """A started process whose output can be drained without blocking."""

    def read_output(self) -> list[str]:
        """Output lines (stdout and stderr merged; ``\\r`` also ends a line) since the last call."""
        ...

    @property
    def returncode(self) -> int | None:
        """Exit status, or None while running."""
        ...

    def cancel(self, timeout: float = 5.0) -> None:
        """Start stopping the process and every process below it, without waiting: terminate
        now, kill whatever still runs ``timeout`` s later. :attr:`returncode` says when it
        ended."""
        ...

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the end (at most ``timeout`` s); return the exit status or None."""
        ...


@runtime_checkable
class ProcessRunner(Protocol):
    """Starts processes; injected into the logic (tests pass the real subprocess runner)."""

    def start(
        self, argv: Sequence[str], *, cwd: str | Path | None = None, env: dict | None = None
    ) -> RunningProcess: ...


#: How long after the process ended its output may still be arriving (a grandchild that
#: inherited the pipe keeps it open); after that the exit status is reported anyway.
_OUTPUT_GRACE_S = 1.0


def _descendants(pid: int) -> list:
    """``psutil.Process`` objects of every process below ``pid`` (empty without psutil or when
    ``pid`` is gone). Listed before anything is stopped: once the launcher dies, its children are
    re-parented and can no longer be found from it."""
    try:
        import psutil
    except ImportError:
        return []
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _signal_all(procs: list, kill: bool) -> None:
    """``terminate()`` (or ``kill()``) every process in ``procs`` that still runs."""
    import psutil

    for proc in procs:
        with contextlib.suppress(psutil.Error):  # already gone, or not ours any more
            proc.kill() if kill else proc.terminate()


class _Popen:
    """:class:`RunningProcess` over ``subprocess.Popen`` with a reader thread.

    Nothing here blocks the caller: :attr:`returncode` is a poll (the exit status is stored once),
    :meth:`cancel` signals the whole process tree and returns; a daemon thread escalates
    terminate -> kill after ``timeout`` s. The tree is found with ``psutil`` on every platform
    (inside Slicer the command runs under the ``PythonSlicer`` launcher, which starts the real
    Python as its child); without psutil, the process group (POSIX) or ``taskkill /T`` (Windows).
    """

    def __init__(self, argv: Sequence[str], cwd=None, env=None):
        kwargs: dict = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
        else:
            kwargs["start_new_session"] = True  # own process group: cancel stops children too
        try:
            self._proc = subprocess.Popen(
                [str(a) for a in argv],
                cwd=str(cwd) if cwd else None,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                bufsize=0,
                **kwargs,
            )
        except OSError as exc:
            raise FileNotFoundError(f"cannot start {argv[0]!r}: {exc}") from exc
        self._lines: queue.Queue[str] = queue.Queue()
        self._code: int | None = None
        self._exited_at: float | None = None
        self._escalation: threading.Thread | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        pending = b""
        stream = self._proc.stdout
        assert stream is not None
        while True:
            try:
                chunk = stream.read(4096)
            except (OSError, ValueError):  # the pipe was closed under us
                break
            if not chunk:
                break
            pending += chunk
            parts = re.split(rb"\r\n|\r|\n", pending)
            pending = parts.pop()
            for part in parts:
                self._lines.put(part.decode("utf-8", errors="replace"))
        if pending:
            self._lines.put(pending.decode("utf-8", errors="replace"))
        stream.close()

    def read_output(self) -> list[str]:
        out = []
        while True:
            try:
                out.append(self._lines.get_nowait())
            except queue.Empty:
                return out

    @property
    def returncode(self) -> int | None:
        """The exit status once the process ended and its output was read (or
        ``_OUTPUT_GRACE_S`` passed since it ended); None before. Never waits."""
        if self._code is not None:
            return self._code
        code = self._proc.poll()
        if code is None:
            return None
        now = time.monotonic()
        if self._exited_at is None:
            self._exited_at = now
        if self._reader.is_alive() and now - self._exited_at < _OUTPUT_GRACE_S:
            return None  # report the end once every line has been read
        self._code = code
        return code

    @property
    def pid(self) -> int:
        return self._proc.pid

    def cancel(self, timeout: float = 5.0) -> None:
        """Terminate the process and all its descendants and return at once; whatever still
        runs ``timeout`` s later is killed (by a daemon thread)."""
        if self._proc.poll() is not None or self._escalation is not None:
            return
        tree = _descendants(self._proc.pid)
        self._stop(tree, kill=False)
        self._escalation = threading.Thread(
            target=self._escalate, args=(tree, timeout), daemon=True
        )
        self._escalation.start()

    def _escalate(self, tree: list, timeout: float) -> None:
        """Runs in its own thread: wait up to ``timeout`` s, then kill what is left."""
        deadline = time.monotonic() + timeout
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=timeout)
        alive = tree
        if tree:
            import psutil

            _, alive = psutil.wait_procs(tree, timeout=max(0.0, deadline - time.monotonic()))
        if alive or self._proc.poll() is None:
            self._stop(alive, kill=True)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=timeout)

    def _stop(self, tree: list, kill: bool) -> None:
        """Signal the launcher and ``tree`` (psutil processes); on POSIX also the process
        group (catches children started after ``tree`` was listed); on Windows without psutil,
        ``CTRL_BREAK`` to the group, then ``taskkill /T /F``."""
        if tree:
            _signal_all(tree, kill)
        try:
            if os.name != "nt":
                os.killpg(self._proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
            elif _has_psutil():
                self._proc.kill() if kill else self._proc.terminate()
            elif kill:
                subprocess.run(
                    ["taskkill", "/F", "/T", "/PID", str(self._proc.pid)],
                    capture_output=True,
                    timeout=10,
                    check=False,
                )
            else:
                self._proc.send_signal(signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]
        except (OSError, subprocess.SubprocessError):  # the group is gone already
            if self._proc.poll() is None:
                self._proc.kill() if kill else self._proc.terminate()

    def wait(self, timeout: float | None = None) -> int | None:
        end = None if timeout is None else time.monotonic() + timeout
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        while self.returncode is None:  # at most _OUTPUT_GRACE_S for the last lines
            if end is not None and time.monotonic() > end:
                return None
            time.sleep(0.01)
        return self._code


def _has_psutil() -> bool:
    try:
        import psutil  # noqa: F401
    except ImportError:
        return False
    return True


class SubprocessRunner:
    """The default :class:`ProcessRunner`: ``subprocess.Popen``, output merged and streamed.

    Inside Slicer the command is run with ``PythonSlicer`` (see :func:`paths.python_executable`),
    the same interpreter and packages as the application, outside the GUI thread.
    """

    def start(self, argv, *, cwd=None, env=None) -> RunningProcess:
        return _Popen(argv, cwd, env)


@dataclass(frozen=True)
class Progress:
    """Progress parsed from a line: ``fraction`` in [0, 1] (None when unknown) and a label."""

    fraction: float | None
    text: str


_TQDM = re.compile(r"^(?P<desc>.*?):?\s*(?P<pct>\d{1,3})%\|[^|]*\|\s*(?P<n>\d+)/(?P<total>\d+)")
# "[3/12] case: ok" (batch.py) or a bare "step 3/12"; not any "a/b" inside a sentence
_COUNT = re.compile(
    r"^(?:\[(?P<n1>\d+)/(?P<t1>\d+)\](?P<rest>.*)|(?P<desc>[A-Za-z][\w -]*?)\s+(?P<n2>\d+)/(?P<t2>\d+))\s*$"
)


def parse_progress(line: str) -> Progress | None:
    """Progress in a CLI output line: tqdm bars (``train:  40%|####  | 4/10 [...]``) or
    ``[i/n]`` counters; None when the line carries none."""
    text = line.strip()
    match = _TQDM.match(text)
    if match:
        total = int(match["total"])
        fraction = int(match["n"]) / total if total else int(match["pct"]) / 100
        desc = match["desc"].strip() or "progress"
        return Progress(min(max(fraction, 0.0), 1.0), f"{desc} {match['n']}/{match['total']}")
    match = _COUNT.match(text)
    if match:
        n, total = int(match["n1"] or match["n2"]), int(match["t1"] or match["t2"])
        desc = (match["desc"] or match["rest"] or "").strip(" :") or "progress"
        if total > 0 and n <= total:
            return Progress(n / total, f"{desc} {n}/{total}")
    return None


@dataclass
class Job:
    """One background CLI run, as the GUI and batch scripts see it.

    Attributes:
        name: what runs (``"CNN"``, ``"VLM"``, ...).
        argv: the command line.
        out_dir: where the command writes its results.
        case_id: the case it runs on (None for cohort commands).
        process: the running process.
        log: every output line so far.
        progress: the last progress seen.
        cancelled: whether :meth:`cancel` was called.
    """

    name: str
    argv: list[str]
    out_dir: Path | None
    case_id: str | None
    process: RunningProcess
    log: list[str] = field(default_factory=list)
    progress: Progress | None = None
    cancelled: bool = False
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None

    def poll(self) -> list[str]:
        """Drain new output lines (kept in :attr:`log`), update :attr:`progress`, return them."""
        lines = self.process.read_output()
        for line in lines:
            progress = parse_progress(line)
            if progress is not None:
                self.progress = progress
        self.log.extend(lines)
        if self.finished is None and self.process.returncode is not None:
            self.log.extend(self.process.read_output())
            self.finished = time.monotonic()
        return lines

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    @property
    def done(self) -> bool:
        return self.process.returncode is not None

    @property
    def succeeded(self) -> bool:
        return self.returncode == 0 and not self.cancelled

    def cancel(self, timeout: float = 5.0) -> None:
        """Start stopping the process tree (returns at once; see :meth:`RunningProcess.cancel`);
        :attr:`done` turns true when it has ended."""
        self.cancelled = True
        self.process.cancel(timeout)
        self.poll()

    def wait(
        self,
        timeout: float | None = None,
        on_lines: Callable[[list[str]], None] | None = None,
        interval: float = 0.1,
    ) -> int | None:
        """Poll until the process ends (or ``timeout`` s pass); return its exit status."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            lines = self.poll()
            if lines and on_lines:
                on_lines(lines)
            if self.done:
                lines = self.poll()
                if lines and on_lines:
                    on_lines(lines)
                return self.returncode
            if end is not None and time.monotonic() > end:
                return None
            time.sleep(interval)

    def summary(self) -> str:
        """One line for the status bar / log."""
        if not self.done:
            return f"{self.name}: running"
        seconds = (self.finished or time.monotonic()) - self.started
        if self.cancelled:
            return f"{self.name}: cancelled after {seconds:.1f} s"
        state = "finished" if self.returncode == 0 else f"failed (exit status {self.returncode})"
        return f"{self.name}: {state} in {seconds:.1f} s"


@dataclass(frozen=True)
class CnnRunParams:
    """``gliomacompare predict-cnn`` options the module sets.

    Attributes:
        model_dir: trained model folder (``train-cnn --out``).
        device: ``auto``, ``cuda`` or ``cpu``.
    """

    model_dir: str
    device: str = "auto"

    def __post_init__(self):
        if self.device not in DEVICES:
            raise ValueError(f"device {self.device!r}: use one of {', '.join(DEVICES)}")
        if not str(self.model_dir).strip():
            raise ValueError("CNN: choose the trained model folder (train-cnn --out) first")


@dataclass(frozen=True)
class VlmRunParams:
    """``gliomacompare vlm`` options (names are the VLM arm's contract).

    Attributes:
        backend: ``tiny``, ``transformers`` or ``openai``.
        tasks: subset of ``grade, point, box, polygon``.
        model: model id or local folder ("" = the backend's default).
        base_url: OpenAI-compatible server URL (openai backend).
        allow_remote: allow a non-loopback ``base_url`` (patient images leave the machine).
        adapter: LoRA adapter folder ("" = base model).
        runs: repeats of every query (consistency).
        temperature: sampling temperature (0 = greedy).
        batch_size: queries per batch.
        slices_per_case: at most this many slices per case (0 = the slice rule's default).
        device: ``auto``, ``cuda`` or ``cpu``; ``cpu`` hides CUDA devices from the process
            (``CUDA_VISIBLE_DEVICES=""``), since the VLM command has no device option.
        slice_rule: ``--slice-rule`` (``brain``, ``cnn``, ...; "" = the command's default).
        cnn_pred: ``--cnn-pred``, the folder of label maps the ``cnn`` rule reads ("" = none).
        slices: ``--slices``: the slices the user chose, ``((case_id, (k, ...)), ...)``, asked
            as they are and recorded as the slice rule ``given`` (empty = a rule chooses).
    """

    backend: str = "tiny"
    tasks: tuple[str, ...] = VLM_TASKS
    model: str = ""
    base_url: str = ""
    allow_remote: bool = False
    adapter: str = ""
    runs: int = 1
    temperature: float = 0.0
    batch_size: int = 1
    slices_per_case: int = 0
    device: str = "auto"
    slice_rule: str = ""
    cnn_pred: str = ""
    slices: tuple[tuple[str, tuple[int, ...]], ...] = ()

    def __post_init__(self):
        if self.backend not in VLM_BACKENDS:
            raise ValueError(f"VLM backend {self.backend!r}: use one of {', '.join(VLM_BACKENDS)}")
        unknown = [t for t in self.tasks if t not in VLM_TASKS]
        if unknown or not self.tasks:
            raise ValueError(f"VLM tasks {list(self.tasks)}: choose from {', '.join(VLM_TASKS)}")
        if self.runs < 1 or self.batch_size < 1 or self.slices_per_case < 0:
            raise ValueError("VLM: runs and batch size must be >= 1, slices per case >= 0")
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError(f"VLM temperature {self.temperature}: use 0..2")
        if self.device not in DEVICES:
            raise ValueError(f"device {self.device!r}: use one of {', '.join(DEVICES)}")
        if self.backend == "openai" and not self.base_url:
            raise ValueError("VLM backend openai needs the server's base URL")
        if self.slice_rule == "cnn" and not self.cnn_pred:
            raise ValueError("VLM slice rule cnn needs the CNN's label maps (cnn_pred)")
        if self.slices and (self.slice_rule or self.slices_per_case):
            raise ValueError(
                "VLM: the slices the user chose are asked as they are; no slice rule or slices "
                "per case with them"
            )
        if any(not indices for _, indices in self.slices):
            raise ValueError("VLM: every case of the user's slices needs a slice index")


def cnn_predict_command(data_dir, out_dir, params: CnnRunParams, python=None) -> list[str]:
    """``gliomacompare predict-cnn --data DATA --model MODEL --out OUT --device D``."""
    return paths.cli_command(
        "predict-cnn",
        "--data",
        str(data_dir),
        "--model",
        str(params.model_dir),
        "--out",
        str(out_dir),
        "--device",
        params.device,
        python=python,
    )


def vlm_command(data_dir, out_dir, params: VlmRunParams, python=None) -> list[str]:
    """``gliomacompare vlm --data DATA --backend B --tasks T ... --out OUT``."""
    args = [
        "vlm",
        "--data",
        str(data_dir),
        "--backend",
        params.backend,
        "--tasks",
        ",".join(params.tasks),
        "--runs",
        str(params.runs),
        "--temperature",
        repr(float(params.temperature)),
        "--batch-size",
        str(params.batch_size),
    ]
    if params.model:
        args += ["--model", params.model]
    if params.base_url:
        args += ["--base-url", params.base_url]
    if params.allow_remote:
        args.append("--allow-remote")
    if params.adapter:
        args += ["--adapter", params.adapter]
    if params.slices_per_case:
        args += ["--slices-per-case", str(params.slices_per_case)]
    if params.slice_rule:
        args += ["--slice-rule", params.slice_rule]
    if params.cnn_pred:
        args += ["--cnn-pred", str(params.cnn_pred)]
    if params.slices:
        args += ["--slices", *(f"{c}:{','.join(map(str, ks))}" for c, ks in params.slices)]
    args += ["--out", str(out_dir)]
    return paths.cli_command(*args, python=python)


def available_commands() -> set[str]:
    """Sub-commands the importable ``GliomaCompareLib`` provides (its parser, built in-process;
    command modules import nothing heavy)."""
    paths.ensure_library_importable()
    import argparse

    from GliomaCompareLib.cli import build_parser

    parser = build_parser()
    for action in parser._actions:  # argparse keeps sub-parsers here
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()
