"""Each profile router's choices on the tiny world, plus adaptive k and load-aware assignment."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.routing.base import QueryFeatures
from orchestrator.routing.policy import Policy, choose, choose_subset
from orchestrator.skills import FieldAnnotator
from orchestrator.types import Query

from .routing_fixtures import orchestrator, queries, write_world

NEW = [Query("n-math", "Multiply the sum of the numbers 9 and 9 by a number", "18",
             domain="math", answer_type="numeric"),
       Query("n-hist", "Which king lost the war and the empire?", "7", domain="history",
             answer_type="numeric")]


@pytest.fixture
def world(tmp_path):
    _, pool = write_world(tmp_path)
    with orchestrator(pool, router="fixed", k=1) as orch:
        profile = orch.build_profile(queries(), FieldAnnotator(), orch.embedder, prior_strength=10)
    path = profile.save(tmp_path / "world-profile.json")
    return pool, str(path)


def route(pool, profile, router, k, queries_=NEW, annotator="field", **routing):
    """Exactly k experts (these tests are about who is chosen) unless a test asks for k by
    evidence."""
    routing = {"k_by_evidence": False, **routing}
    with orchestrator(pool, router=router, k=k, profile=profile, annotator=annotator,
                      routing=routing) as orch:
        return orch.route(queries_)


@pytest.mark.parametrize("router, second", [("topk", "mathy"), ("knn", "meh")])
def test_profile_routers_send_each_question_to_its_specialist(world, router, second):
    pool, profile = world
    math, hist = route(*world, router, 2, neighbors=4)
    # topk: history skill estimates mathy .357 > meh .339; knn: on the 4 history neighbours
    # meh (1 right) beats mathy (0 right)
    assert math.experts == ("mathy", "meh") and hist.experts == ("histy", second)
    assert math.scores[0] > math.scores[1]
    assert math.skills == ("math",) and math.router == router


def test_knn_reads_the_text_not_the_domain_field(world):
    pool, profile = world
    mislabelled = [Query("x", "What is the sum of the numbers 9 and 9?", "18", domain="history")]
    (sel,) = route(pool, profile, "knn", 1, mislabelled, annotator="embedding", neighbors=4)
    assert sel.experts == ("mathy",)
    assert len(set(sel.evidence["neighbors"]) & {f"math-{i}" for i in range(4)}) >= 3


def test_topk_evidence_names_the_profile_edges(world):
    (math, _) = route(*world, "topk", 1)
    (edge,) = math.evidence["profile"]["mathy"]
    assert edge["skill"] == "math" and edge["count"] == 4 and edge["score"] == 4


def test_symbolic_moe_samples_only_positive_local_scores_and_is_reproducible(world):
    pool, profile = world
    first = route(pool, profile, "symbolic-moe", 3)
    again = route(pool, profile, "symbolic-moe", 3)
    assert [s.experts for s in first] == [s.experts for s in again]
    math, hist = first
    assert math.experts == ("mathy",) * 3  # histy (-4) and meh (0) have no positive weight
    assert hist.experts == ("histy",) * 3


def direct(pool, profile, router, seed=0, **routing):
    """A router built directly, to route with hand-made features."""
    from orchestrator.config import RunConfig, load_pool
    from orchestrator.profiling.profile import Profile
    from orchestrator.registry import ROUTERS

    config = RunConfig(router=router, seed=seed, routing={"k_by_evidence": False, **routing})
    return ROUTERS.get(router)(load_pool(pool), config, profile=Profile.load(profile))


def test_symbolic_moe_seed_changes_the_draws_only_where_there_is_a_choice(world):
    pool, profile = world
    mixed = [Query(f"m{i}", f"Question {i}", "1") for i in range(40)]
    no_skills = QueryFeatures([()] * 40, [()] * 40)  # global weights alone
    draws = {seed: [s.experts for s in direct(pool, profile, "symbolic-moe", seed).select(
        mixed, 3, no_skills)] for seed in (0, 1)}
    again = [s.experts for s in direct(pool, profile, "symbolic-moe", 0).select(mixed, 3, no_skills)]
    assert draws[0] == again and draws[1] != draws[0]
    used = [e for sel in draws[1] for e in sel]
    # strength 0, 0, -2 at temperature 0.5: meh is drawn, but less often than each other one
    assert used.count("meh") < min(used.count("mathy"), used.count("histy"))
    assert used.count("meh") > 0


def test_adaptive_k_sends_a_sure_question_to_one_expert(world):
    pool, profile = world
    feats = QueryFeatures([("math",), ("history",), ()], [(1,), (0,), ()])
    qs = [Query(f"q{i}", "?", "1") for i in range(3)]
    router = direct(pool, profile, "topk", adaptive_k=True, confidence=0.6, z=0.0)
    assert [len(s.experts) for s in router.select(qs, 3, feats)] == [1, 1, 3]
    strict = direct(pool, profile, "topk", adaptive_k=True, confidence=0.6, z=3.0)
    assert [len(s.experts) for s in strict.select(qs, 3, feats)] == [3, 3, 3]
    smoe = direct(pool, profile, "symbolic-moe", adaptive_k=True, confidence=0.6, z=0.0)
    assert [s.experts for s in smoe.select(qs, 3, feats)][:2] == [("mathy",), ("histy",)]


def test_load_aware_cap_limits_distinct_experts_per_batch(world):
    pool, profile = world
    batch = NEW
    free = route(pool, profile, "knn", 1, batch, neighbors=4)
    assert {s.experts[0] for s in free} == {"mathy", "histy"}
    capped = route(pool, profile, "knn", 1, batch, neighbors=4, max_experts=1)
    assert len({s.experts[0] for s in capped}) == 1


def test_choose_subset_maximises_the_batch_total():
    est = np.array([[0.9, 0.1, 0.5, 0.2], [0.1, 0.9, 0.5, 0.2], [0.8, 0.2, 0.4, 0.9]])
    assert choose_subset(est, 1, 2).tolist() == [0, 1]  # 0.9 + 0.9 + 0.8
    assert choose_subset(est, 1, 4).tolist() == [0, 1, 2, 3]
    picks = choose(est, None, Policy(k=2, max_experts=3))
    assert all(set(p) <= {0, 1, 2} for p in picks)  # best 3-subset for top-2 sums (4.0)
    many = np.random.default_rng(0).random((50, 30))  # too many subsets: greedy with swaps
    subset = choose_subset(many, 2, 5)
    assert len(subset) == 5 and len(set(subset.tolist())) == 5


def clone_world_profile():
    """a1 and a2 always answer alike (acc .60); b and c are weaker (.55) but right elsewhere:
    the best vote is (a1, b, c) at .85, while the top-3 individuals (a1, a2, b) vote at .60."""
    from orchestrator.profiling.profile import Profile

    n = 20
    right = {"a1": set(range(12)), "a2": set(range(12)),
             "b": set(range(6)) | set(range(12, 17)), "c": set(range(6, 17))}
    experts = list(right)
    codes = np.zeros((n, 4), dtype=np.int16)
    for j, e in enumerate(experts):
        wrong_code = {"a1": 2, "a2": 2, "b": 3, "c": 4}[e]
        codes[:, j] = [1 if i in right[e] else wrong_code for i in range(n)]
    correct = codes == 1
    return Profile(
        pool="clones", annotator={"name": "field"}, experts=experts, skills=["general"],
        counts=np.full((4, 1), n), correct=correct.sum(0)[:, None], n=np.full(4, n),
        n_correct=correct.sum(0), skill_emb=np.ones((1, 2), np.float32),
        val_ids=[f"v{i}" for i in range(n)], val_emb=np.ones((n, 2), np.float32) / np.sqrt(2),
        val_correct=correct, val_skills=[(0,)] * n, val_answers=codes,
    )


def test_ensemble_router_picks_the_best_voting_set_not_the_best_individuals(tmp_path):
    from orchestrator.config import RunConfig
    from orchestrator.routing.ensemble import EnsembleRouter
    from orchestrator.routing.topk import TopKRouter

    from .conftest import write_pool

    pool_path = write_pool(tmp_path / "p.yaml", [{"id": e, "backend": "fake"}
                                                 for e in ("a1", "a2", "b", "c")])
    from orchestrator.config import load_pool

    pool, profile = load_pool(pool_path), clone_world_profile()
    feats = QueryFeatures([("general",)], [(0,)])
    q = [Query("q", "?")]
    (top,) = TopKRouter(pool, RunConfig(k=3, routing={"k_by_evidence": False}), profile
                        ).select(q, 3, feats)
    assert set(top.experts) == {"a1", "a2", "b"} or set(top.experts) == {"a1", "a2", "c"}
    (ens,) = EnsembleRouter(pool, RunConfig(k=3), profile).select(q, 3, feats)
    assert set(ens.experts) == {"a1", "b", "c"}
    assert ens.evidence["ensemble_estimate"] > 0.7  # shrunk toward .85 from the skill's own .85


def test_vote_correct_matches_the_vote_aggregator():
    from orchestrator.aggregation.vote import majority
    from orchestrator.routing.ensemble import vote_correct

    rng = np.random.default_rng(0)
    codes = rng.integers(0, 5, size=(300, 5)).astype(np.int16)  # 0 none, 1 right, 2-4 wrong
    tuples = np.array([[0, 1, 2], [2, 1, 0], [4, 3, 1], [0, 3, 4]])
    got = vote_correct(codes, tuples)
    for i in range(len(codes)):
        for t, tup in enumerate(tuples):
            answers = [None if codes[i, j] == 0 else str(codes[i, j]) for j in tup]
            assert got[i, t] == (majority(answers)[0] == "1")


def test_ensemble_needs_a_profile_with_answers(tmp_path):
    from orchestrator.config import RunConfig, load_pool
    from orchestrator.errors import RoutingError
    from orchestrator.routing.ensemble import EnsembleRouter

    from .conftest import write_pool

    pool = load_pool(write_pool(tmp_path / "p.yaml", [{"id": e, "backend": "fake"}
                                                      for e in ("a1", "a2", "b", "c")]))
    old = clone_world_profile()
    old.val_answers = None
    with pytest.raises(RoutingError, match="rebuild it with `orchestrate profile`"):
        EnsembleRouter(pool, RunConfig(k=3), old)


def test_ensemble_chooses_k_by_evidence_up_to_the_cap(tmp_path):
    """With k as a cap, each query takes the ensemble size whose vote did best on validation:
    the (a1, b, c) vote beats every pair, every quadruple and every single expert; when one
    expert is always right, it alone (a tie with larger ensembles goes to the smaller)."""
    from orchestrator.config import RunConfig, load_pool
    from orchestrator.routing.ensemble import EnsembleRouter

    from .conftest import write_pool

    pool = load_pool(write_pool(tmp_path / "p.yaml", [{"id": e, "backend": "fake"}
                                                      for e in ("a1", "a2", "b", "c")]))
    feats = QueryFeatures([("general",)], [(0,)])
    q = [Query("q", "?")]
    config = RunConfig(k=4, routing={"k_by_evidence": True})
    (ens,) = EnsembleRouter(pool, config, clone_world_profile()).select(q, 4, feats)
    assert set(ens.experts) == {"a1", "b", "c"} and ens.evidence["k_chosen_by"] == "evidence"
    oracle = clone_world_profile()
    oracle.val_answers[:, 2] = 1  # b is always right
    oracle.val_correct = oracle.val_answers == 1
    oracle.n_correct = oracle.val_correct.sum(0)
    oracle.correct = oracle.n_correct[:, None]
    (alone,) = EnsembleRouter(pool, config, oracle).select(q, 4, feats)
    assert alone.experts == ("b",)
    fixed_k = RunConfig(k=4, routing={"k_by_evidence": False})
    (fixed,) = EnsembleRouter(pool, fixed_k, oracle).select(q, 4, feats)
    assert len(fixed.experts) == 4
