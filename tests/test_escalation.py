"""Escalation: lossless rounds give exactly the vote of all k experts, with fewer calls."""

from __future__ import annotations

import random

import pytest

from orchestrator.aggregation.escalation import vote_decided, vote_next_calls
from orchestrator.aggregation.vote import majority
from orchestrator.core import Orchestrator

from .conftest import choice_rows


def escalate(answers, weights, **kw):
    """Simulate rounds over known answers: (winner, experts called)."""
    called = 0
    while True:
        n = vote_next_calls(answers[:called], weights[:called], weights[called:], **kw)
        if n == 0:
            return majority(answers[:called], weights[:called])[0], called
        called += n


@pytest.mark.parametrize("seed", range(40))
def test_lossless_equals_the_full_vote_on_random_ballots(seed):
    rng = random.Random(seed)
    for _ in range(250):
        k = rng.randint(1, 7)
        answers = [rng.choice(["A", "B", "C", None]) for _ in range(k)]
        weights = [rng.choice([1.0, 1.0, 0.0, 0.5, 2.0, round(rng.random() * 3, 2)])
                   for _ in range(k)]
        if rng.random() < 0.3:
            weights = [1.0] * k  # plain majority: ties are frequent
        winner, called = escalate(answers, weights)
        assert winner == majority(answers, weights)[0], (answers, weights)
        assert called <= k


def test_the_savings_of_lossless_escalation():
    ones = [1.0] * 3
    assert escalate(["A", "A", "B"], ones) == ("A", 2)  # two agree: the third cannot change it
    assert escalate(["A", "B", "B"], ones) == ("B", 3)
    assert escalate(["A", "B"], [1.0, 1.0]) == ("A", 1)  # k=2: ties go to the first expert
    assert escalate([None, "B"], [1.0, 1.0]) == ("B", 2)  # ... unless it failed
    assert escalate(["A", "A", "A", "B", "C"], [1.0] * 5) == ("A", 3)
    assert not vote_decided(["A"], [1.0], [0.6, 0.6])  # 0.6 + 0.6 > 1.0
    assert vote_decided(["A"], [2.0], [0.6, 0.6])


def test_confident_stops_at_the_agreement_threshold():
    five = [1.0] * 5
    assert escalate(["A", "A", "B", "B", "B"], five)[1] == 5
    winner, called = escalate(["A", "A", "B", "B", "B"], five, confident=True, agreement=1.0,
                              min_votes=2)
    assert (winner, called) == ("A", 2)  # cheaper, and here wrong: the cost the report shows


def test_runs_call_only_the_experts_that_can_change_the_answer(fake_pool):
    opts = {"e0": {"default": "The answer is (A)"},
            "e1": {"script": {"number 1?": "The answer is (B)"}, "default": "The answer is (A)"},
            "e2": {"default": "The answer is (B)"}}
    rows = choice_rows(4)
    with Orchestrator.from_files(fake_pool(3, options=opts), k=3) as orch:
        cheap = orch.run(rows)
        calls = orch.totals
    with Orchestrator.from_files(fake_pool(3, options=opts), k=3,
                                 escalation={"mode": "none"}) as orch:
        full = orch.run(rows)
    assert [a.final_answer for a in cheap] == [a.final_answer for a in full]
    assert [len(a.outputs) for a in cheap] == [2, 3, 2, 2]  # q1: A vs B, e2 decides
    assert [a.rounds for a in cheap] == [1, 2, 1, 1]
    assert sum(s.calls for s in calls.experts.values()) == 9
    assert calls.experts["e2"].loads == 1  # the second round reuses the grouped execution
