"""k chosen by evidence for the per-expert routers (topk, knn, symbolic-moe): the vote of the
first j chosen experts is scored on validation exactly as the vote aggregator would decide it,
and each skill takes the size that did best there."""

from __future__ import annotations

import math

import numpy as np
import pytest

from orchestrator.aggregation.vote import expert_weight, majority, vote_weights
from orchestrator.routing.base import QueryFeatures
from orchestrator.routing.sizing import EvidenceTable, cv_shrinkage, prefix_votes_right
from orchestrator.types import Query


def test_prefix_votes_match_the_vote_aggregator_on_random_ballots():
    """Ties (equal weights, equal totals), no-answers and duplicates included."""
    rng = np.random.default_rng(7)
    n, cap = 3000, 5
    codes = rng.integers(0, 4, size=(n, cap)).astype(np.int16)  # 0 none, 1 right, 2-3 wrong
    weights = rng.choice([0.5, 1.0, 1.5, 2.0], size=(n, cap))
    got = prefix_votes_right(codes, weights)
    for i in range(n):
        for size in range(1, cap + 1):
            answers = [None if c == 0 else str(c) for c in codes[i, :size]]
            want = majority(answers, list(weights[i, :size]))[0] == "1"
            assert got[i, size - 1] == want, (codes[i, :size], weights[i, :size])


def test_vote_weights_are_the_aggregators_weights():
    p = np.array([0.0, 0.2, 0.5, 0.73, 1.0])
    for mode in ("log-odds", "linear", "none"):
        for options in (4, 10):
            want = [expert_weight(float(x), options, mode) for x in p]
            assert np.allclose(vote_weights(p, options, mode), want)


def test_the_size_table_shrinks_each_skill_toward_the_pool_wide_size():
    # skill 0: one expert is right, a vote is not; skill 1: only the vote of 3 is right
    right = np.array([[1, 0, 0]] * 4 + [[0, 0, 1]] * 4, dtype=bool)
    member = np.array([[1, 0]] * 4 + [[0, 1]] * 4, dtype=np.float32)
    table = EvidenceTable(right, member, 1.0, np.arange(1, 4))
    assert table.sizes(np.array([[1, 0], [0, 1], [1, 1], [0, 0]], np.float32)).tolist() == [
        1, 3, 1, 1]  # both skills: a tie between 1 and 3 goes to 1; none: the pool-wide tie
    flat = EvidenceTable(right, member, math.inf, np.arange(1, 4))  # the pool-wide choice
    assert flat.sizes(np.array([[0, 1]], np.float32)).tolist() == [1]


def test_cross_validation_keeps_per_skill_choices_only_where_they_hold_up():
    rng = np.random.default_rng(3)
    n, cost = 4000, np.array([1, 3])
    member = np.zeros((n, 2), np.float32)
    member[np.arange(n), rng.integers(0, 2, n)] = 1
    # real specialists: on skill 0 one expert is right 80% and a vote 60%; on skill 1 reversed
    real = np.where(member[:, :1] > 0, rng.random((n, 2)) < [0.8, 0.6],
                    rng.random((n, 2)) < [0.6, 0.8])
    assert math.isfinite(cv_shrinkage(real, member, cost))
    # skills that tell nothing apart: both candidates 70% everywhere, per skill by chance only
    noise = rng.random((n, 2)) < 0.7
    assert cv_shrinkage(noise, member, cost) == math.inf
    assert cv_shrinkage(real[:6], member[:6], cost) == math.inf  # too few to hold any out


def solo_and_crowd_profile():
    """Skill 'solo': expert a is always right and b, c give the same wrong answer, so their
    plain vote outvotes a; skill 'crowd': each expert is wrong on a third of the questions,
    never two at once, so only the vote of all three is always right."""
    from orchestrator.profiling.profile import Profile

    n = 30
    codes = np.zeros((2 * n, 3), dtype=np.int16)
    codes[:n] = [1, 2, 2]
    for i in range(n):
        row = [1, 1, 1]
        row[i % 3] = 2
        codes[n + i] = row
    correct = codes == 1
    member = np.array([[1, 0]] * n + [[0, 1]] * n)
    emb = np.array([[1.0, 0.0]] * n + [[0.0, 1.0]] * n, np.float32)
    return Profile(
        pool="p", annotator={"name": "field"}, experts=["a", "b", "c"], skills=["solo", "crowd"],
        counts=np.full((3, 2), n), correct=correct.T.astype(int) @ member, n=np.full(3, 2 * n),
        n_correct=correct.sum(0), skill_emb=np.eye(2, dtype=np.float32),
        val_ids=[f"v{i}" for i in range(2 * n)], val_emb=emb, val_correct=correct,
        val_skills=[(0,)] * n + [(1,)] * n, val_answers=codes,
        val_options=np.full(2 * n, 4, np.int16))


@pytest.fixture
def pool(tmp_path):
    from orchestrator.config import load_pool

    from .conftest import write_pool

    return load_pool(write_pool(tmp_path / "p.yaml", [{"id": e, "backend": "fake"}
                                                      for e in "abc"]))


FEATURES = QueryFeatures([("solo",), ("crowd",)], [(0,), (1,)],
                         np.array([[1.0, 0.0], [0.0, 1.0]], np.float32))
QUERIES = [Query("solo-q", "?"), Query("crowd-q", "?")]
# 30 validation questions per skill: a prior weight of 1 lets each skill speak for itself
LITTLE_PRIOR = {"neighbors": 10, "evidence_shrinkage": 1.0}
PLAIN = {"weighting": "none"}  # the plain vote (the ensemble router's)


@pytest.mark.parametrize("router", ["topk", "knn", "ensemble"])
def test_each_skill_takes_the_size_its_votes_earned(pool, router):
    from orchestrator.config import RunConfig
    from orchestrator.registry import ROUTERS

    config = RunConfig(router=router, k=3, routing=LITTLE_PRIOR, aggregation=PLAIN)
    solo, crowd = ROUTERS.get(router)(pool, config, solo_and_crowd_profile()).select(
        QUERIES, 3, FEATURES)
    assert solo.experts == ("a",) and len(crowd.experts) == 3
    assert solo.evidence["k_chosen_by"] == crowd.evidence["k_chosen_by"] == "evidence"
    fixed = config.model_copy(update={"routing": config.routing.model_copy(
        update={"k_by_evidence": False})})
    solo, crowd = ROUTERS.get(router)(pool, fixed, solo_and_crowd_profile()).select(
        QUERIES, 3, FEATURES)
    assert len(solo.experts) == len(crowd.experts) == 3
    assert solo.evidence["k_chosen_by"] == "fixed"


def test_symbolic_moe_cuts_its_seeded_draws_to_the_chosen_size(pool):
    from orchestrator.config import RunConfig
    from orchestrator.routing.symbolic_moe import SymbolicMoERouter

    profile = solo_and_crowd_profile()
    router = SymbolicMoERouter(pool, RunConfig(router="symbolic-moe", k=3, routing=LITTLE_PRIOR),
                               profile)
    solo, crowd = router.select(QUERIES, 3, FEATURES)
    assert set(solo.experts) == {"a"}  # only a scores above 0 on 'solo'
    fixed = SymbolicMoERouter(pool, RunConfig(router="symbolic-moe", k=3,
                                              routing={**LITTLE_PRIOR, "k_by_evidence": False}),
                              profile)
    full = fixed.select(QUERIES, 3, FEATURES)[1]
    assert crowd.experts == full.experts[:len(crowd.experts)]  # the first j of the k draws
    assert crowd.evidence["k_chosen_by"] == "evidence"


def test_a_cap_of_one_and_a_profile_without_answer_codes_still_route(pool):
    from orchestrator.config import RunConfig
    from orchestrator.routing.topk import TopKRouter

    profile = solo_and_crowd_profile()
    profile.val_answers = None  # built before per-question answers: wrong answers all differ
    router = TopKRouter(pool, RunConfig(router="topk", k=3, routing=LITTLE_PRIOR,
                                        aggregation=PLAIN), profile)
    solo, crowd = router.select(QUERIES, 3, FEATURES)
    # b's and c's wrong answers now count as two different ones: a wins every vote on 'solo'
    assert solo.experts[0] == "a" and len(crowd.experts) == 3
    assert [len(s.experts) for s in router.select(QUERIES, 1, FEATURES)] == [1, 1]


def test_a_run_reports_the_sizes_evidence_chose(tmp_path):
    """Each specialist is always right on its own skill, so every question takes it alone;
    summary.json and the printed summary say that k was a cap, chosen by evidence."""
    import json

    from orchestrator.cli.render import summary_lines
    from orchestrator.outputs import write_run
    from orchestrator.skills import FieldAnnotator

    from .routing_fixtures import orchestrator, queries, write_world

    _, pool = write_world(tmp_path)
    with orchestrator(pool, router="fixed", k=1) as orch:
        profile = orch.build_profile(queries(), FieldAnnotator(), orch.embedder, prior_strength=10)
    path = str(profile.save(tmp_path / "world-profile.json"))
    with orchestrator(pool, router="topk", k=3, profile=path, annotator="field") as orch:
        result = orch.evaluate(queries())
    assert [a.selection.experts for a in result.answers] == [("mathy",)] * 4 + [("histy",)] * 4
    write_run(tmp_path / "run", result, {})
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["k_chosen"] == {"cap": 3, "chosen_by": "evidence", "mean": 1.0,
                                   "distribution": {"1": 8},
                                   "per_skill": {"history": 1.0, "math": 1.0}}
    assert "k<=3 by evidence (mean 1.00; 1: 8)" in summary_lines(summary, "run")[0]


@pytest.mark.parametrize("call_cost, crowd_size", [(0.1, 3), (0.2, 1)])
def test_a_call_cost_keeps_experts_that_do_not_win_back_their_price(pool, call_cost, crowd_size):
    """On 'crowd' the vote of 3 is right on every question and one expert on 2 of 3: two more
    experts win back 1/3 of the questions, worth it at 0.1 each, not at 0.2."""
    from orchestrator.config import RunConfig
    from orchestrator.routing.topk import TopKRouter

    config = RunConfig(router="topk", k=3, aggregation=PLAIN,
                       routing={**LITTLE_PRIOR, "call_cost": call_cost})
    solo, crowd = TopKRouter(pool, config, solo_and_crowd_profile()).select(QUERIES, 3, FEATURES)
    assert len(solo.experts) == 1 and len(crowd.experts) == crowd_size
