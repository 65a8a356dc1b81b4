"""The staged runner: skip finished work, resume, refuse invalidating config changes, shard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass

import pytest

from GliomaCompareLib.pipeline.runner import (
    ConfigChangedError,
    Shard,
    Stage,
    StageRunner,
    atomic_write,
    fingerprint,
)

CASES = [f"c{i}" for i in range(7)]


class Recorder:
    """Real stage functions that write files and count calls."""

    def __init__(self, fail_at: str | None = None):
        self.calls: list[str] = []
        self.fail_at = fail_at

    def split(self, ctx):
        self.calls.append("split")
        (ctx.dir / "cases.json").write_text(json.dumps(CASES))
        return {"n": len(CASES), "seed": ctx.config["seed"]}

    def per_case(self, ctx):
        self.calls.append(f"predict:{ctx.shard.tag}")
        out = ctx.dir / "cases"
        out.mkdir(exist_ok=True)
        for case in ctx.cases(CASES):
            if (out / case).exists() and not ctx.fresh:
                continue  # resume: keep what was computed
            if case == self.fail_at:
                self.fail_at = None
                raise KeyboardInterrupt("simulated interruption")
            self.calls.append(f"case:{case}")
            (out / case).write_text(str(ctx.config["model"]["scale"] * int(case[1:])))
        return {"cases": len(ctx.cases(CASES))}

    def total(self, ctx):
        self.calls.append("total")
        values = [int((ctx.stage_dir("predict") / "cases" / c).read_text()) for c in CASES]
        return {"sum": sum(values)}

    def stages(self):
        return [
            Stage("split", self.split, config_keys=("seed",)),
            Stage("predict", self.per_case, ("split",), ("model",), per_case=True),
            Stage("total", self.total, ("predict",), ("report",)),
        ]


def _config(scale=2, seed=0, title="x"):
    return {"seed": seed, "model": {"scale": scale}, "report": {"title": title}}


def test_finished_stages_are_skipped(tmp_path):
    rec = Recorder()
    out = StageRunner(tmp_path, rec.stages(), _config()).run()
    assert out["total"] == {"sum": 2 * sum(range(7))}
    n = len(rec.calls)
    again = StageRunner(tmp_path, rec.stages(), _config()).run()
    assert len(rec.calls) == n and again == out
    assert all(
        s["state"] == "done" for s in StageRunner(tmp_path, rec.stages(), _config()).status()
    )


def test_interrupted_stage_resumes_without_recomputing(tmp_path):
    rec = Recorder(fail_at="c4")
    with pytest.raises(KeyboardInterrupt):
        StageRunner(tmp_path, rec.stages(), _config()).run()
    assert [c for c in rec.calls if c.startswith("case:")] == [
        "case:c0",
        "case:c1",
        "case:c2",
        "case:c3",
    ]
    rec.calls.clear()
    out = StageRunner(tmp_path, rec.stages(), _config()).run()
    assert "split" not in rec.calls
    assert [c for c in rec.calls if c.startswith("case:")] == ["case:c4", "case:c5", "case:c6"]
    assert out["total"]["sum"] == 2 * sum(range(7))


def test_changed_config_is_refused_then_forced(tmp_path):
    rec = Recorder()
    StageRunner(tmp_path, rec.stages(), _config()).run()
    with pytest.raises(ConfigChangedError, match=r"predict.*model.scale: 2 -> 3.*--force predict"):
        StageRunner(tmp_path, rec.stages(), _config(scale=3)).run()
    rec.calls.clear()
    out = StageRunner(tmp_path, rec.stages(), _config(scale=3)).run(force=["predict"])
    assert "split" not in rec.calls and "total" in rec.calls  # downstream re-runs by itself
    assert out["total"]["sum"] == 3 * sum(range(7))


def test_half_done_work_with_other_config_is_refused(tmp_path):
    rec = Recorder(fail_at="c2")
    with pytest.raises(KeyboardInterrupt):
        StageRunner(tmp_path, rec.stages(), _config()).run()
    with pytest.raises(ConfigChangedError, match="half-done"):
        StageRunner(tmp_path, rec.stages(), _config(scale=5)).run()
    out = StageRunner(tmp_path, rec.stages(), _config(scale=5)).run(force=["predict"])
    assert out["total"]["sum"] == 5 * sum(range(7))  # fresh: the old partial cases were redone


def test_unrelated_config_change_reruns_only_its_stage(tmp_path):
    rec = Recorder()
    StageRunner(tmp_path, rec.stages(), _config()).run()
    with pytest.raises(ConfigChangedError, match="total"):
        StageRunner(tmp_path, rec.stages(), _config(title="y")).run()
    rec.calls.clear()
    StageRunner(tmp_path, rec.stages(), _config(title="y")).run(force=["total"])
    assert rec.calls == ["total"]


def test_unknown_force_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no such stage"):
        StageRunner(tmp_path, Recorder().stages(), _config()).run(force=["nope"])


def test_shards_split_the_cases_and_the_last_stage_waits(tmp_path):
    rec = Recorder()
    results = {}

    def shard(i):
        runner = StageRunner(
            tmp_path,
            rec.stages(),
            _config(),
            shard=Shard(i, 3),
            poll_seconds=0.05,
            wait_timeout=30,
        )
        try:
            results[i] = runner.run()
        except BaseException as exc:  # a shard's failure fails the test, not a warning
            errors[i] = exc

    errors: dict[int, BaseException] = {}
    threads = [threading.Thread(target=shard, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a shard did not finish"
    assert not errors, errors
    assert sorted(results) == [0, 1, 2]
    assert rec.calls.count("split") == 1  # the whole-cohort stage ran once, under the lock
    done = sorted(c for c in rec.calls if c.startswith("case:"))
    assert done == sorted(f"case:{c}" for c in CASES)  # each case exactly once
    assert all(r["total"]["sum"] == 2 * sum(range(7)) for r in results.values())


def test_shard_parsing_and_selection():
    assert Shard.parse("1/3").select(CASES) == ["c1", "c4"]
    assert Shard.parse(None) == Shard(0, 1)
    for bad in ("3/3", "a/b", "1"):
        with pytest.raises(ValueError, match="--shard"):
            Shard.parse(bad)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(target) as handle:
        handle.write("partial")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_fingerprint_ignores_key_order():
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})


@dataclass(frozen=True)
class Typed:
    scale: int


def test_stages_see_the_typed_config_and_fingerprints_come_from_the_raw_mapping(tmp_path):
    seen = []

    def record(ctx):
        seen.append(ctx.config)
        return {"scale": ctx.config.scale}

    stages = [Stage("s", record, config_keys=("model",), enabled=lambda c: c.scale > 0)]
    out = StageRunner(tmp_path, stages, Typed(2), raw={"model": {"scale": 2}}).run()
    assert seen == [Typed(2)] and out == {"s": {"scale": 2}}
    done = json.loads((tmp_path / "stages" / "s" / "done.json").read_text())
    assert done["inputs"]["config"] == {"model": {"scale": 2}}
    with pytest.raises(ConfigChangedError, match=r"model\.scale: 2 -> 3"):
        StageRunner(tmp_path, stages, Typed(3), raw={"model": {"scale": 3}}).run()
    assert StageRunner(tmp_path, stages, Typed(0), raw={}).run() == {"s": {"disabled": True}}


#: Runs one whole-cohort stage as shard i of 2 in its own process (argv: run_dir, i, fcntl?).
LOCK_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path

    if sys.argv[3] == "no-fcntl":
        sys.modules["fcntl"] = None  # as on Windows: `import fcntl` fails
    from GliomaCompareLib.pipeline.runner import Shard, Stage, StageRunner

    run_dir, shard = Path(sys.argv[1]), int(sys.argv[2])
    log = run_dir / "calls.txt"

    def train(ctx):
        with log.open("a") as handle:
            handle.write(f"start {shard}\\n")
        time.sleep(1.0)
        with log.open("a") as handle:
            handle.write(f"end {shard}\\n")
        return {"trained_by": shard}

    while not (run_dir / "go").exists():  # both processes start the stage together
        time.sleep(0.01)
    runner = StageRunner(run_dir, [Stage("train", train)], {}, shard=Shard(shard, 2))
    print(json.dumps({"summary": runner.run(), "fcntl": "fcntl" in sys.modules
                      and sys.modules["fcntl"] is not None}))
    """
)


@pytest.mark.parametrize("fcntl", ["fcntl", "no-fcntl"])
def test_the_stage_lock_works_across_processes_with_and_without_fcntl(tmp_path, fcntl):
    script = tmp_path / "shard.py"
    script.write_text(LOCK_SCRIPT)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(run_dir), str(i), fcntl],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ),
        )
        for i in range(2)
    ]
    time.sleep(0.5)
    (run_dir / "go").touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    calls = (run_dir / "calls.txt").read_text().split()
    assert len(calls) == 4 and calls[0] == "start" and calls[2] == "end"  # ran once, whole
    winner = int(calls[1])
    assert all(r["summary"] == {"train": {"trained_by": winner}} for r in results)
    assert all(r["fcntl"] == (fcntl == "fcntl") for r in results)


def test_forcing_a_stage_redoes_everything_downstream(tmp_path):
    """Same config, --force predict: total depends on predict's outputs, so it is redone too
    (it used to be skipped because its own fingerprint had not changed)."""
    rec = Recorder()
    StageRunner(tmp_path, rec.stages(), _config()).run()
    rec.calls.clear()
    StageRunner(tmp_path, rec.stages(), _config()).run(force=["predict"])
    assert "split" not in rec.calls
    assert [c for c in rec.calls if c.startswith("case:")] == [f"case:{c}" for c in CASES]
    assert rec.calls[-1] == "total"


@pytest.mark.parametrize("content", ["{garbage", "[]", '"text"'])
def test_a_damaged_marker_is_named_and_its_stage_redone(tmp_path, caplog, content):
    rec = Recorder()
    StageRunner(tmp_path, rec.stages(), _config()).run()
    marker = tmp_path / "stages" / "total" / "done.json"
    marker.write_text(content)
    rec.calls.clear()
    with caplog.at_level("WARNING"):
        out = StageRunner(tmp_path, rec.stages(), _config()).run()
    assert rec.calls == ["total"] and out["total"]["sum"] == 2 * sum(range(7))
    assert str(marker) in caplog.text and "the stage is redone" in caplog.text
    assert json.loads(marker.read_text())["summary"] == out["total"]
