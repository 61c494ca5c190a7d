"""The grouped executor on the fake backend: grouping, loads, order, failures, residency."""

from __future__ import annotations

import re

import pytest

from orchestrator import Orchestrator, load_pool
from orchestrator.config import RunConfig
from orchestrator.types import GenerationRequest, Message

from .conftest import choice_rows


def requests(pairs):
    return [
        GenerationRequest(expert=e, messages=(Message("user", f"prompt {q}"),), query_id=q, index=i)
        for i, (q, e) in enumerate(pairs)
    ]


def orch(pool_path, **cfg):
    return Orchestrator(load_pool(pool_path), RunConfig(**cfg))


def test_grouped_loads_each_expert_once_and_keeps_order(fake_pool):
    o = orch(fake_pool(3), batch_size=2)
    pairs = [(f"q{i}", f"e{j}") for i in range(5) for j in (2, 0, 1)]
    results, stats = o.executor.execute(requests(pairs))
    assert [(r.request.query_id, r.request.expert) for r in results] == pairs
    assert stats.loads_total == 3
    assert {e: s.loads for e, s in stats.experts.items()} == {"e0": 1, "e1": 1, "e2": 1}
    assert all(s.calls == 5 for s in stats.experts.values())
    fake = o.backends.get("fake")
    # all of one expert's prompts were generated back to back (grouped), in batches of 2
    served = [r.expert for r in fake.history]
    assert served == sorted(served, key=lambda e: served.index(e))
    assert fake.load_counts == {"e0": 1, "e1": 1, "e2": 1}


def test_fake_batch_s_is_slept_once_per_generate_call(fake_pool, monkeypatch):
    import orchestrator.backends.fake as fake_module

    slept = []
    monkeypatch.setattr(fake_module.time, "sleep", slept.append)
    o = orch(fake_pool(1, options={"e0": {"batch_s": 0.02}}), batch_size=4)
    _, stats = o.executor.execute(requests([(f"q{i}", "e0") for i in range(8)]))
    fake = o.backends.get("fake")
    assert len(fake.history) == 8 and stats.experts["e0"].calls == 8
    assert slept == [0.02, 0.02]  # 2 calls of 4, not 8 x 0.02


def test_naive_loads_for_every_pair(fake_pool):
    o = orch(fake_pool(3), executor="naive")
    pairs = [(f"q{i}", f"e{j}") for i in range(4) for j in range(3)]
    results, stats = o.executor.execute(requests(pairs))
    assert [(r.request.query_id, r.request.expert) for r in results] == pairs
    assert stats.loads_total == 12
    assert o.residency.resident == []


def test_failed_item_does_not_sink_the_batch(fake_pool):
    o = orch(fake_pool(1, options={"e0": {"fail": ["prompt q1"]}}), batch_size=8)
    results, stats = o.executor.execute(requests([("q0", "e0"), ("q1", "e0"), ("q2", "e0")]))
    assert [r.error is None for r in results] == [True, False, True]
    assert "scripted failure" in results[1].error
    assert stats.experts["e0"].errors == 1 and stats.experts["e0"].calls == 3


def test_failed_load_fails_that_experts_items_only(fake_pool):
    o = orch(fake_pool(2, options={"e1": {"fail_load": True}}))
    results, stats = o.executor.execute(requests([("q0", "e0"), ("q0", "e1"), ("q1", "e1")]))
    assert results[0].ok
    assert not results[1].ok and "loading expert 'e1' failed" in results[1].error
    assert stats.experts["e1"].errors == 2


def test_resident_limit_evicts_least_recently_used(fake_pool):
    o = orch(fake_pool(3, resident_limit=2))
    _, stats = o.executor.execute(requests([("q0", "e0"), ("q0", "e1"), ("q0", "e2")]))
    assert stats.loads_total == 3
    assert o.residency.resident == ["e1", "e2"]
    # a second run reuses the resident experts first: only e0 must be loaded again
    _, stats = o.executor.execute(requests([("q1", "e0"), ("q1", "e1"), ("q1", "e2")]))
    assert stats.loads_total == 1
    assert {e: s.loads for e, s in stats.experts.items()}["e0"] == 1
    assert len(o.residency.resident) == 2
    o.close()
    assert o.residency.resident == []


def test_plan_puts_resident_experts_first(fake_pool):
    o = orch(fake_pool(3, resident_limit=3))
    o.executor.execute(requests([("q0", "e2")]))
    assert o.executor.plan(["e0", "e1", "e2"])[0] == "e2"


def test_run_end_to_end_with_vote(fake_pool):
    opts = {
        "e0": {"script": {"Question number 0": "The answer is (A)."}, "default": "Answer: B"},
        "e1": {"default": "The answer is (B)."},
        "e2": {"fail": ["Question number 1"], "default": "I am not sure."},
    }
    o = orch(fake_pool(3, options=opts), k=3, aggregator="vote")
    rows = choice_rows(2)
    answers = o.run(rows)
    assert [a.query.id for a in answers] == ["q0", "q1"]
    # q0: A, B, none -> tie between A and B goes to the earliest expert (e0: A)
    assert answers[0].final_answer == "A" and answers[0].correct is True
    # q1: B, B -> decided: the third expert cannot change the vote and is not called
    assert answers[1].final_answer == "B" and answers[1].correct is True
    assert [o.expert for o in answers[1].outputs] == ["e0", "e1"] and answers[1].rounds == 1
    assert answers[0].usage.calls == 3 and answers[0].rounds == 2  # A vs B: e2 decides
    everyone = orch(fake_pool(3, options=opts), k=3, aggregator="vote",
                    escalation={"mode": "none"}).run(rows)
    assert [a.final_answer for a in everyone] == ["A", "B"]
    assert everyone[1].outputs[2].error is not None and everyone[1].usage.calls == 3


def test_first_aggregator_skips_failed_and_unreadable(fake_pool):
    opts = {"e0": {"default": "no idea"}, "e1": {"default": "The answer is (C)"}}
    o = orch(fake_pool(2, options=opts), k=2, aggregator="first")
    (answer,) = o.run(choice_rows(1))
    assert answer.final_answer == "C"


def test_random_router_is_seeded_and_per_query_stable(fake_pool):
    o1 = orch(fake_pool(4), router="random", k=2, seed=7)
    rows = choice_rows(6)
    sel1 = o1.router.select([o1.run([r])[0].query for r in rows], 2)
    o2 = orch(fake_pool(4), router="random", k=2, seed=7)
    sel2 = o2.router.select(list(reversed([a.query for a in o2.run(rows)])), 2)
    assert [s.experts for s in sel1] == [s.experts for s in reversed(sel2)]
    assert all(len(set(s.experts)) == 2 for s in sel1)
    o3 = orch(fake_pool(4), router="random", k=2, seed=8)
    sel3 = o3.router.select([a.query for a in o3.run(rows)], 2)
    assert [s.experts for s in sel3] != [s.experts for s in sel1]


def test_queued_responses_are_served_in_order(fake_pool):
    o = orch(fake_pool(1, options={"e0": {"responses": ["The answer is 1", "The answer is 2"]}}))
    answers = o.run(["What is one?", "What is two?", "What is three?"])
    assert [a.outputs[0].text for a in answers[:2]] == ["The answer is 1", "The answer is 2"]


@pytest.mark.parametrize(
    "cfg, message",
    [
        (dict(k=4), "k=4 is outside 1..3"),
        (dict(experts=["e0", "nope"]), "Unknown expert 'nope'"),
        (dict(experts=["e0", "e1"], k=3), "was given 2 experts (e0, e1) but k=3"),
    ],
)
def test_routing_mistakes_are_clear(fake_pool, cfg, message):
    from orchestrator.errors import UserError

    with pytest.raises(UserError, match=re.escape(message)):
        orch(fake_pool(3), **cfg).run(["q?"])


def test_unknown_names_list_what_is_available(fake_pool):
    from orchestrator.errors import UnknownNameError

    expected = "Unknown router .fixd.. Available: ensemble, fixed, knn, random, symbolic-moe, topk"
    with pytest.raises(UnknownNameError, match=expected):
        orch(fake_pool(1), router="fixd")
    with pytest.raises(UnknownNameError, match="Did you mean 'vote'"):
        orch(fake_pool(1), aggregator="vot")


def test_dry_run_swaps_every_backend_for_fake(tmp_path):
    from .conftest import write_pool

    pool = write_pool(tmp_path / "p.yaml", [
        {"id": "real", "backend": "transformers", "model": "does/not-matter"},
    ])
    with Orchestrator.from_files(pool, dry_run=True) as o:
        (answer,) = o.run(choice_rows(1))
    assert answer.outputs[0].text.startswith("The answer is (")
    assert "transformers" not in o.backends.instances()


def test_sdk_context_manager_and_duplicate_ids(fake_pool):
    from orchestrator.errors import ConfigError

    with Orchestrator.from_files(fake_pool(2), k=2) as o:
        answers = o.run(["What is 2 + 2?", {"id": "x", "question": "And 3 + 3?", "gold": "6"}])
        assert [a.query.id for a in answers] == ["q0", "x"]
        assert answers[1].query.answer_type == "numeric" and answers[1].correct is not None
        assert len(o.residency.resident) == 1  # resident_limit 1
        with pytest.raises(ConfigError, match="appears twice"):
            o.run([{"id": "a", "question": "1"}, {"id": "a", "question": "2"}])
    assert o.residency.resident == []


def test_fake_history_is_bounded(fake_pool, monkeypatch):
    import orchestrator.backends.fake as fake_module

    monkeypatch.setattr(fake_module, "HISTORY_LIMIT", 5)
    o = orch(fake_pool(1))
    o.executor.execute(requests([(f"q{i}", "e0") for i in range(23)]))
    history = o.backends.get("fake").history
    assert 5 <= len(history) <= 10 and history[-1].query_id == "q22"
