"""Aggregators: weighted vote (weights, ties), early exit, and fuse (prompt construction,
batching through the executor, fallbacks)."""

from __future__ import annotations

import math

import pytest

from orchestrator.aggregation.fuse import (
    SYNTHESIS_PROMPT,
    fusion_messages,
    strip_reasoning,
    truncate_words,
)
from orchestrator.aggregation.vote import expert_weight, majority
from orchestrator.core import Orchestrator
from orchestrator.types import Query

from .conftest import write_pool

Q = Query("q1", "What is 6 times 7?", "42", answer_type="numeric")


def test_strip_reasoning_drops_think_blocks():
    assert strip_reasoning("<think>maybe 41?</think>The answer is 42") == "The answer is 42"
    assert strip_reasoning("long musing about 41 </think> The answer is 42") == "The answer is 42"
    assert strip_reasoning("The answer is 42 <think>unfinished") == "The answer is 42"
    assert strip_reasoning("plain") == "plain"


def test_truncate_keeps_the_opening_and_the_final_answer():
    text = " ".join(f"w{i}" for i in range(100)) + " The answer is 42"
    cut = truncate_words(text, 20)
    assert cut.startswith("w0 w1 w2 w3 w4 [...]") and cut.endswith("The answer is 42")
    assert len(cut.split()) == 21  # 20 words and the marker
    assert truncate_words("short reply", 20) == "short reply"


def test_fusion_prompt_lists_cleaned_responses_in_order_then_asks_the_question():
    system, user = fusion_messages(Q, ["<think>hmm</think>It is 42.", "I say 41.", ""], 50)
    assert system.role == "system" and system.content.startswith(SYNTHESIS_PROMPT)
    body = system.content.split("Responses from models:")[1]
    assert body.index("1. It is 42.") < body.index("2. I say 41.") < body.index("3. (empty")
    assert "hmm" not in system.content
    assert user.role == "user" and "What is 6 times 7?" in user.content
    assert "The answer is N" in user.content  # the task's answer format


def test_weighted_majority_weights_and_ties():
    assert majority(["A", "B", "B"])[0] == "B"
    assert majority(["A", "B", "C"])[0] == "A"  # plain tie: the earliest
    assert majority(["A", "B", "B"], [3.0, 1.0, 1.0])[0] == "A"  # one strong expert outweighs
    assert majority(["A", "B", None], [1.0, 2.0, 5.0])[0] == "B"  # no answer, no vote
    assert majority(["A", "B", "B", "A"], [2.0, 1.0, 1.0, 0.5])[0] == "A"  # tie: heaviest
    assert majority([None, None])[0] is None


def test_vote_weights_from_estimated_success():
    assert expert_weight(0.5, 10, "log-odds") == pytest.approx(math.log(9))
    assert expert_weight(0.05, 4, "log-odds") == 0.0  # worse than chance: no say
    assert expert_weight(0.7, 10, "linear") == pytest.approx(0.7)
    assert expert_weight(0.7, 10, "none") == 1.0


def fake_pool(tmp_path, answers: dict[str, str], aggregator_reply: str | None = None):
    experts = [{"id": e, "backend": "fake", "options": {"default": text}}
               for e, text in answers.items()]
    if aggregator_reply is not None:
        experts.append({"id": "agg", "backend": "fake",
                        "options": {"default": aggregator_reply}})
    return write_pool(tmp_path / "pool.yaml", experts, resident_limit=1)


def run(pool, questions, **overrides):
    with Orchestrator.from_files(pool, **overrides) as orch:
        result = orch.evaluate(questions)
        fake = orch.backends.get("fake")
    return result, fake


def test_early_exit_skips_the_aggregator_when_all_agree(tmp_path):
    pool = fake_pool(tmp_path, {"a": "The answer is 42", "b": "Answer: 42"}, "The answer is 7")
    result, fake = run(pool, [Q], router="fixed", experts=["a", "b"], aggregator="fuse",
                       aggregator_expert="agg", aggregation={"early_exit": True})
    (answer,) = result.answers
    assert answer.aggregator == "early-exit" and answer.final_answer == "42" and answer.correct
    assert "agg" not in fake.load_counts  # the aggregator never loaded
    result, fake = run(pool, [Q], router="fixed", experts=["a", "b"], aggregator="fuse",
                       aggregator_expert="agg")
    assert result.answers[0].aggregator == "fuse" and result.answers[0].final_answer == "7"


def test_fuse_batches_all_prompts_with_one_aggregator_load(tmp_path):
    pool = fake_pool(tmp_path, {"a": "The answer is 41", "b": "The answer is 43"},
                     "Weighing both, the answer is 42")
    questions = [Query(f"q{i}", f"What is {i} + 42 - {i}?", "42", answer_type="numeric")
                 for i in range(5)]
    result, fake = run(pool, questions, router="fixed", experts=["a", "b"], aggregator="fuse",
                       aggregator_expert="agg", batch_size=16)
    assert [a.final_answer for a in result.answers] == ["42"] * 5
    assert fake.load_counts["agg"] == 1
    fused = [r for r in fake.history if r.expert == "agg"]
    assert len(fused) == 5
    assert "1. The answer is 41" in fused[0].messages[0].content
    assert result.stats.experts["agg"].calls == 5  # the aggregator's calls are counted


def test_fuse_falls_back_to_the_vote_when_the_fusion_is_unreadable(tmp_path):
    pool = fake_pool(tmp_path, {"a": "The answer is 42", "b": "The answer is 42",
                                "c": "The answer is 5"}, "I am not sure.")
    result, _ = run(pool, [Q], router="fixed", experts=["a", "b", "c"], aggregator="fuse",
                    aggregator_expert="agg")
    (answer,) = result.answers
    assert answer.final_answer == "42" and answer.aggregator == "vote"


def test_fuse_aggregator_choice(tmp_path):
    from orchestrator.errors import UnknownNameError

    pool = fake_pool(tmp_path, {"a": "The answer is 1"}, "The answer is 1")
    with pytest.raises(UnknownNameError, match="Unknown aggregator expert 'ag'"):
        run(pool, [Q], router="fixed", experts=["a"], aggregator="fuse", aggregator_expert="ag")
    with Orchestrator.from_files(pool, router="fixed", experts=["a"], aggregator="fuse") as orch:
        assert orch.aggregator.expert == "a"  # no config, no profile ranking: the first expert


def test_results_keep_the_fused_text(tmp_path):
    import json

    from orchestrator.outputs import write_run

    pool = fake_pool(tmp_path, {"a": "The answer is 41", "b": "The answer is 43"},
                     "Weighing both, the answer is 42")
    result, _ = run(pool, [Q], router="fixed", experts=["a", "b"], aggregator="fuse",
                    aggregator_expert="agg")
    write_run(tmp_path / "out", result)
    (line,) = (tmp_path / "out" / "results.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert record["aggregation"] == {"by": "agg", "text": "Weighing both, the answer is 42"}
    assert record["final_answer"] == "42" and record["aggregator"] == "fuse"


def test_answers_that_say_the_same_vote_together_and_agree(tmp_path):
    """"x = 1/2" and "\\frac{1}{2}" are one answer to the vote, to escalation and to early exit:
    with three experts, 6 comes first but the two halves outvote it, and after the two halves
    the third expert is never asked."""
    half = Query("h", "Solve 2x = 1.", "0.5", answer_type="text")
    pool = fake_pool(tmp_path, {"six": "The answer is 6", "a": "The answer is $x = 1/2$",
                                "b": "\\boxed{\\frac{1}{2}}"}, "The answer is 9")
    result, _ = run(pool, [half], router="fixed", experts=["six", "a", "b"], aggregator="vote",
                    escalation={"mode": "none"})
    (answer,) = result.answers
    assert answer.final_answer == "$x = 1/2$" and answer.correct
    assert answer.detail["votes"] == {"6": 1.0, "$x = 1/2$": 2.0}
    result, fake = run(pool, [half], router="fixed", experts=["a", "b", "six"], aggregator="vote")
    assert [o.expert for o in result.answers[0].outputs] == ["a", "b"]  # decided after two
    assert "six" not in fake.load_counts
    result, fake = run(pool, [half], router="fixed", experts=["a", "b"], aggregator="fuse",
                       aggregator_expert="agg", aggregation={"early_exit": True})
    assert result.answers[0].aggregator == "early-exit" and "agg" not in fake.load_counts
