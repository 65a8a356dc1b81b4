"""Tests aimed at small, plausible bugs that the rest of the suite let through (issue 17's
mutation spot-check). Each test names the mutation it kills; each was checked by applying that
mutation to the library and seeing the test fail.

- McNemar's exact / chi-square switch ``b + c < 25`` moved to ``<=``;
- a forced stage skipped because it is already done;
- an upstream stage redone without invalidating half-done downstream work;
- the CNN's class-balanced sampler weights inverted;
- the CNN's ``pos_weight`` (BCE, weighted_loss) inverted.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar

from GliomaCompareLib.cnn.config import ClsConfig, TrainSettings
from GliomaCompareLib.cnn.tasks import ClsTask
from GliomaCompareLib.cnn.train import _loader
from GliomaCompareLib.distributed import DistContext
from GliomaCompareLib.metrics import mcnemar
from GliomaCompareLib.metrics.paired import mcnemar_vs_majority
from GliomaCompareLib.pipeline.runner import Stage, StageRunner


# ---------------------------------------------------------------------------------- McNemar
def _discordant(b: int, c: int, concordant: int = 5):
    """Labels where A is right and B wrong on ``b`` patients, the reverse on ``c``."""
    y = ["HGG"] * (b + c + concordant)
    a = ["HGG"] * b + ["LGG"] * c + ["HGG"] * concordant
    other = ["LGG"] * b + ["HGG"] * c + ["HGG"] * concordant
    return y, a, other


@pytest.mark.parametrize(("b", "c", "method"), [(18, 6, "exact"), (18, 7, "chi2_cc")])
def test_mcnemar_switches_to_chi_square_at_exactly_25_discordant(b, c, method):
    """Kills ``b + c < 25`` -> ``b + c <= 25``: 24 discordant patients use the exact test, 25
    the chi-square test, and each p-value is statsmodels' for that test."""
    result = mcnemar(*_discordant(b, c))
    assert (result.b, result.c, result.method) == (b, c, method)
    table = [[5, b], [c, 0]]
    expected = sm_mcnemar(table, exact=method == "exact", correction=True)
    assert result.p_value == pytest.approx(expected.pvalue, rel=1e-9)
    # the exact and chi-square p-values differ here, so the switch is visible in the number
    other = sm_mcnemar(table, exact=method != "exact", correction=True)
    assert abs(expected.pvalue - other.pvalue) > 1e-3


def test_mcnemar_against_the_majority_switches_at_25_too():
    """The same boundary through ``mcnemar_vs_majority`` (the report's verdicts)."""
    y = ["LGG"] * 13 + ["HGG"] * 12 + ["HGG"] * 3
    pred = ["LGG"] * 13 + ["LGG"] * 12 + ["HGG"] * 3
    result = mcnemar_vs_majority(y, pred, "HGG")
    assert (result.b, result.c, result.method) == (13, 12, "chi2_cc")
    assert mcnemar_vs_majority(y[1:], pred[1:], "HGG").method == "exact"


# ------------------------------------------------------------------------------- the runner
class Stages:
    """Three real stages: ``split`` writes a version of its output, ``predict`` writes one file
    per case from it (resuming: keeps files already there unless ``ctx.fresh``) and can be
    interrupted, ``total`` reads them all."""

    CASES = ("c0", "c1", "c2", "c3", "c4")

    def __init__(self, version: str = "v1", stop_at: str | None = None):
        self.version, self.stop_at = version, stop_at
        self.calls: list[str] = []

    def split(self, ctx):
        self.calls.append("split")
        if self.stop_at == "split":
            raise KeyboardInterrupt("simulated interruption")
        (ctx.dir / "version.txt").write_text(self.version)
        return {"version": self.version}

    def predict(self, ctx):
        self.calls.append("predict")
        version = (ctx.stage_dir("split") / "version.txt").read_text()
        out = ctx.dir / "cases"
        out.mkdir(exist_ok=True)
        for case in ctx.cases(list(self.CASES)):
            if (out / case).exists() and not ctx.fresh:
                continue
            if case == self.stop_at:
                self.stop_at = None
                raise KeyboardInterrupt("simulated interruption")
            (out / case).write_text(f"{version}:{case}")
        return {"cases": len(self.CASES)}

    def total(self, ctx):
        self.calls.append("total")
        folder = ctx.stage_dir("predict") / "cases"
        return {"made_from": sorted({(folder / c).read_text().split(":")[0] for c in self.CASES})}

    def stages(self):
        return [
            Stage("split", self.split, config_keys=("seed",)),
            Stage("predict", self.predict, ("split",), ("model",), per_case=True),
            Stage("total", self.total, ("predict",)),
        ]


CONFIG = {"seed": 0, "model": {"scale": 1}}


@pytest.mark.parametrize("forced", ["split", "predict", "total", "all"])
def test_a_forced_stage_runs_although_it_is_done(tmp_path, forced):
    """Kills 'a forced stage is skipped when already done' (dropping ``not redo`` from the skip
    test, or not clearing the forced stage's markers so the whole-cohort stage's re-check under
    its lock finds it done): with an unchanged config, --force STAGE runs STAGE and every stage
    after it, and only those."""
    stages = Stages()
    StageRunner(tmp_path, stages.stages(), CONFIG).run()
    stages.calls.clear()
    StageRunner(tmp_path, stages.stages(), CONFIG).run(force=[forced])
    order = ["split", "predict", "total"]
    assert stages.calls == order[order.index(forced) :] if forced != "all" else order
    done = json.loads((tmp_path / "stages" / "total" / "done.json").read_text())
    assert done["summary"] == {"made_from": ["v1"]}


def test_a_redone_upstream_stage_invalidates_half_done_downstream_work(tmp_path):
    """Kills 'an upstream change does not invalidate half-done downstream work' (``predict``'s
    redo not following its upstream into ``invalidated``, or ``fresh`` ignoring it): predict is
    interrupted half-way, split is then redone with another output; predict must start afresh
    instead of resuming, so no case keeps a file made from the old split."""
    first = Stages("v1", stop_at="c3")
    with pytest.raises(KeyboardInterrupt):
        StageRunner(tmp_path, first.stages(), CONFIG).run()
    cases = tmp_path / "stages" / "predict" / "cases"
    assert sorted(p.name for p in cases.iterdir()) == ["c0", "c1", "c2"]
    second = Stages("v2")
    out = StageRunner(tmp_path, second.stages(), CONFIG).run(force=["split"])
    assert second.calls == ["split", "predict", "total"]
    assert {p.read_text() for p in cases.iterdir()} == {f"v2:{c}" for c in Stages.CASES}
    assert out["total"] == {"made_from": ["v2"]}


def test_a_changed_upstream_config_invalidates_half_done_downstream_work(tmp_path):
    """The same through a config change of the upstream stage (forced, as the runner asks):
    predict's inputs changed, so its half-done cases are thrown away."""
    first = Stages("v1", stop_at="c2")
    with pytest.raises(KeyboardInterrupt):
        StageRunner(tmp_path, first.stages(), CONFIG).run()
    second = Stages("v2")
    config = {**CONFIG, "seed": 1}
    out = StageRunner(tmp_path, second.stages(), config).run(force=["split"])
    cases = tmp_path / "stages" / "predict" / "cases"
    assert {p.read_text() for p in cases.iterdir()} == {f"v2:{c}" for c in Stages.CASES}
    assert out["total"] == {"made_from": ["v2"]}


def test_downstream_work_of_an_older_upstream_is_redone_after_the_upstream_resumes(tmp_path):
    """Kills ``fresh = redo or changed`` -> ``fresh = redo``: a run forced split with a new
    config and was interrupted inside split; the next run resumes split (not "fresh", so nothing
    is invalidated by it) and finds predict done with the old split. predict's inputs changed,
    so it starts afresh: resuming would keep every case made from the old split."""
    StageRunner(tmp_path, Stages("v1").stages(), CONFIG).run()
    config = {**CONFIG, "seed": 1}
    with pytest.raises(KeyboardInterrupt):
        StageRunner(tmp_path, Stages("v2", stop_at="split").stages(), config).run(force=["split"])
    third = Stages("v2")
    out = StageRunner(tmp_path, third.stages(), config).run()
    assert third.calls == ["split", "predict", "total"]
    cases = tmp_path / "stages" / "predict" / "cases"
    assert {p.read_text() for p in cases.iterdir()} == {f"v2:{c}" for c in Stages.CASES}
    assert out["total"] == {"made_from": ["v2"]}


# ------------------------------------------------------------------------------ CNN grading
def _cls(imbalance: str) -> ClsTask:
    train = TrainSettings(epochs=1, batch_size=2, learning_rate=1e-3, num_workers=0)
    return ClsTask(ClsConfig(imbalance=imbalance, train=train))


TARGETS = [1.0] * 9 + [0.0] * 3  # 9 HGG, 3 LGG, as imbalanced as BraTS


def test_balanced_sampler_draws_each_grade_equally_often():
    """Kills inverted balanced-sampler weights (``counts[t]`` instead of ``1 / counts[t]``):
    each grade carries half of the sampling weight, and over many epochs' draws LGG patients
    come about as often as HGG ones (inverted: 1 LGG draw in 10)."""
    data = SimpleNamespace(
        train=[{"i": i} for i in range(len(TARGETS))], train_targets=np.array(TARGETS)
    )
    task = _cls("balanced_sampler")
    loader = _loader(task, data, DistContext(), epoch_seed=0, epoch=0)
    weights = np.asarray(loader.sampler.weights, dtype=float)
    targets = np.asarray(TARGETS)
    assert weights[targets == 0].sum() == pytest.approx(weights[targets == 1].sum())
    assert weights[targets == 0][0] == pytest.approx(3 * weights[targets == 1][0])
    drawn = [i for epoch in range(40) for i in _loader(task, data, DistContext(), epoch, epoch)
             .sampler]  # fmt: skip
    lgg_share = np.mean([TARGETS[i] == 0.0 for i in drawn])
    assert 0.4 < lgg_share < 0.6, lgg_share


def test_weighted_loss_pos_weight_is_lgg_over_hgg():
    """Kills an inverted ``pos_weight`` (#HGG / #LGG instead of #LGG / #HGG): the minority
    grade (LGG, the negative class) must weigh as much in the loss as the majority, so each HGG
    example's positive term is scaled by 3/9."""
    import torch

    loss = _cls("weighted_loss").make_loss(SimpleNamespace(train_targets=TARGETS), "cpu")
    assert loss.pos_weight.tolist() == pytest.approx([3 / 9])
    # at logit 0 every example's BCE is log 2: with the weight, both grades contribute equally
    logits = torch.zeros(len(TARGETS))
    per_example = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, torch.tensor(TARGETS), pos_weight=loss.pos_weight, reduction="none"
    )
    hgg, lgg = per_example[:9].sum().item(), per_example[9:].sum().item()
    assert hgg == pytest.approx(lgg)
    unweighted = _cls("none").make_loss(SimpleNamespace(train_targets=TARGETS), "cpu")
    assert unweighted.pos_weight is None
