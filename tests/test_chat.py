"""The chat SDK (`Orchestrator.chat`, `achat`, `complete_calls`): conversations and tasks
through the one pipeline, on the fake backend (whose `history` records what each expert got)."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator.chat import ChatCall, ChatResult, InvalidRequestError, UnknownModelError, complete_calls
from orchestrator.core import Orchestrator
from orchestrator.errors import BackendError
from orchestrator.types import Message

from .conftest import write_pool

USER = [{"role": "user", "content": "What is 6 times 7?"}]


@pytest.fixture
def pool(tmp_path):
    return write_pool(tmp_path / "pool.yaml", [
        {"id": "a", "backend": "fake", "system_prompt": "You are expert A.",
         "options": {"default": "<think>41?</think>The answer is 42"}},
        {"id": "b", "backend": "fake", "options": {"default": "I believe the answer is 41"}},
        {"id": "c", "backend": "fake", "options": {"default": "So the answer is 42",
                                                     "fail": ["explode"]}},
        {"id": "agg", "backend": "fake", "options": {"default": "Fusing: the answer is 42"}},
    ], resident_limit=4)


def sent_to(orch, expert: str):
    return [r for r in orch.backends.get("fake").history if r.expert == expert]


def test_task_mode_answers_like_a_benchmark_question(pool):
    with Orchestrator.from_files(pool, k=3) as orch:
        reply = orch.chat(USER, mode="task")
    assert isinstance(reply, ChatResult) and reply.id.startswith("chatcmpl-")
    assert reply.content == "The answer is 42" and reply.answer == "42"
    info = reply.info
    assert info["mode"] == "task" and [e["id"] for e in info["experts"]] == ["a", "b", "c"]
    assert [e["answer"] for e in info["experts"]] == ["42", "41", "42"]
    assert info["aggregator"] == "vote" and info["early_exit"] is False
    assert reply.total_tokens == reply.prompt_tokens + reply.completion_tokens > 0
    assert reply.usage_exact and reply.finish_reason == "stop"


def test_a_conversation_reaches_each_expert_as_messages(pool):
    messages = [{"role": "system", "content": "Answer in French."},
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": "I have 6 boxes of 7 apples."},
                {"role": "assistant", "content": "Noted."},
                {"role": "user", "content": [{"type": "text", "text": "How many "},
                                             {"type": "text", "text": "apples?"}]}]
    with Orchestrator.from_files(pool, router="fixed", experts=["a", "b"],
                                 escalation={"mode": "none"}) as orch:
        reply = orch.chat(messages)
        got_a, got_b = sent_to(orch, "a")[-1], sent_to(orch, "b")[-1]
    # the expert's own system prompt first, then the client's system and developer messages
    assert got_a.messages[0] == Message("system", "You are expert A.\n\nAnswer in French."
                                                  "\n\nBe brief.")
    assert got_b.messages[0] == Message("system", "Answer in French.\n\nBe brief.")
    assert [m.role for m in got_a.messages[1:]] == ["user", "assistant", "user"]
    assert got_a.messages[-1].content == "How many apples?"  # no benchmark template
    assert "The answer is" not in "".join(m.content for m in got_a.messages)
    assert got_a.question == "How many apples?"  # routing reads the last user turn
    # chat mode never votes: the best-routed expert's reply, reasoning stripped
    assert reply.info["mode"] == "chat" and reply.info["aggregator"] == "first"
    assert reply.content == "The answer is 42" and reply.answer is None


def test_first_calls_the_next_expert_only_when_the_first_fails(pool):
    boom = [{"role": "user", "content": "explode, then say 6 times 7"}]
    with Orchestrator.from_files(pool, router="fixed", experts=["a", "b"]) as orch:
        orch.chat(USER)
        assert [r.expert for r in orch.backends.get("fake").history] == ["a"]
    with Orchestrator.from_files(pool, router="fixed", experts=["c", "b"]) as orch:
        reply = orch.chat(boom)  # c fails: b is asked in a second round
        assert [r.expert for r in orch.backends.get("fake").history] == ["c", "b"]
    assert reply.content == "I believe the answer is 41"
    assert reply.info["failed_experts"] == ["c"]


def test_fuse_writes_one_free_text_reply_for_a_conversation(pool):
    haiku = [{"role": "system", "content": "You write poems."},
             {"role": "user", "content": "Write a haiku about rain"}]
    with Orchestrator.from_files(pool, router="fixed", experts=["a", "b"], aggregator="fuse",
                                 aggregator_expert="agg") as orch:
        reply = orch.chat(haiku)
        fusion = sent_to(orch, "agg")[-1]
    system, user = fusion.messages[0].content, fusion.messages[-1]
    assert "synthesize these responses" in system and "You write poems." in system
    assert "answer format" not in system and "The answer is" not in user.content
    assert user == Message("user", "Write a haiku about rain")
    assert reply.content == "Fusing: the answer is 42" and reply.info["aggregator"] == "fuse"
    assert reply.answer is None


def test_an_expert_by_name_answers_alone(pool):
    with Orchestrator.from_files(pool, k=3) as orch:
        reply = orch.chat(USER, model="b")
        assert reply.content == "I believe the answer is 41" and reply.model == "b"
        assert [e["id"] for e in reply.info["experts"]] == ["b"]


def test_stop_and_max_tokens_reach_the_backend_and_finish_reason(pool):
    with Orchestrator.from_files(pool, router="fixed", experts=["b"]) as orch:
        stopped = orch.chat(USER, stop=["answer"], seed=5)
        cut = orch.chat(USER, max_tokens=2)
        whole = orch.chat(USER, max_tokens=50)
        seeds = {r.sampling.seed for r in sent_to(orch, "b")}
    assert stopped.content == "I believe the" and stopped.finish_reason == "stop"
    assert cut.content == "I believe" and cut.finish_reason == "length"
    assert cut.info["experts"][0]["finish_reason"] == "length"
    assert whole.finish_reason == "stop" and 5 in seeds


@pytest.mark.parametrize("params, error, param", [
    ({"model": "gpt-5"}, UnknownModelError, "model"),
    ({"k": 9}, InvalidRequestError, "k"),
    ({"temperature": 9}, InvalidRequestError, "temperature"),
    ({"top_p": 0}, InvalidRequestError, "top_p"),
    ({"max_tokens": 0}, InvalidRequestError, "max_tokens"),
    ({"seed": 2**63}, InvalidRequestError, "seed"),
    ({"stop": ["a", "b", "c", "d", "e"]}, InvalidRequestError, "stop"),
    ({"router": "smart"}, InvalidRequestError, "router"),
    ({"aggregator": "magic"}, InvalidRequestError, "aggregator"),
    ({"mode": "essay"}, InvalidRequestError, "mode"),
    ({"logprobs": True}, InvalidRequestError, "logprobs"),
])
def test_bad_requests_name_the_parameter(pool, params, error, param):
    with Orchestrator.from_files(pool, k=2) as orch, pytest.raises(error) as info:
        orch.chat(USER, **params)
    assert info.value.param == param and len(str(info.value)) < 300


def test_bad_messages(pool):
    with Orchestrator.from_files(pool, k=2) as orch:
        with pytest.raises(InvalidRequestError, match="no user message") as info:
            orch.chat([{"role": "system", "content": "be nice"}])
        assert info.value.param == "messages"
        with pytest.raises(InvalidRequestError) as info:
            orch.chat([{"role": "wizard", "content": "hi"}, *USER])
        assert info.value.param == "messages.0.role"
        with pytest.raises(InvalidRequestError) as info:
            orch.chat([])
        assert info.value.param == "messages"


def test_a_batch_of_calls_is_one_grouped_execution(pool):
    with Orchestrator.from_files(pool, k=2, escalation={"mode": "none"}) as orch:
        calls = []
        inner = orch.executor.execute
        orch.executor.execute = lambda reqs: calls.append(len(reqs)) or inner(reqs)
        user = (Message("user", "What is 6 times 7?"),)
        out = complete_calls(orch, [
            ChatCall(user, temperature=0.3, max_tokens=5),
            ChatCall(user, model="c"),
            ChatCall(user, k=9),
            ChatCall((Message("user", "What is 2+2?"),), router="random", seed=7),
        ])
        history = orch.backends.get("fake").history
    assert calls == [2 + 1 + 2]  # one execution for every generation of the batch
    assert isinstance(out[0], ChatResult) and isinstance(out[1], ChatResult)
    assert isinstance(out[2], InvalidRequestError) and out[2].param == "k"
    assert isinstance(out[3], ChatResult) and out[3].info["router"] == "random"
    first = [r for r in history if r.question == "What is 6 times 7?" and r.expert != "c"]
    assert {(r.sampling.temperature, r.sampling.max_tokens) for r in first} == {(0.3, 5)}
    assert {r.sampling.seed for r in history if r.question == "What is 2+2?"} == {7}


def test_a_failing_expert_degrades_the_answer_or_fails_it(pool):
    boom = [{"role": "user", "content": "explode, then say 6 times 7"}]
    with Orchestrator.from_files(pool, router="fixed", experts=["a", "b", "c"],
                                 escalation={"mode": "none"}) as orch:
        reply = orch.chat(boom)
    assert reply.info["failed_experts"] == ["c"] and reply.info["experts"][2]["error"]
    with Orchestrator.from_files(pool, router="fixed", experts=["a", "b", "c"],
                                 min_experts_ok=3, escalation={"mode": "none"}) as orch, \
            pytest.raises(BackendError, match="2 of 3 experts answered; at least 3 must"):
        orch.chat(boom)


def test_fused_task_reply_and_early_exit(pool):
    with Orchestrator.from_files(pool, router="fixed", experts=["a", "b"], aggregator="fuse",
                                 aggregator_expert="agg") as orch:
        reply = orch.chat(USER, mode="task")
    assert reply.content == "Fusing: the answer is 42" and reply.info["aggregator"] == "fuse"
    assert reply.answer == "42"
    with Orchestrator.from_files(pool, router="fixed", experts=["a", "c"], aggregator="fuse",
                                 aggregator_expert="agg",
                                 aggregation={"early_exit": True}) as orch:
        reply = orch.chat(USER, mode="task")
    assert reply.info["early_exit"] is True and reply.info["aggregator"] == "fuse"
    assert reply.content == "The answer is 42"


def test_per_call_overrides_leave_the_orchestrator_unchanged(pool):
    with Orchestrator.from_files(pool, k=1) as orch:
        reply = orch.chat(USER, k=3, router="random", aggregator="fuse")
        assert reply.info["k"] == 3 and reply.info["router"] == "random"
        assert orch.k == 1 and orch.config.router == "fixed" and orch.config.aggregator == "vote"


def test_achat(pool):
    async def main():
        with Orchestrator.from_files(pool, k=3) as orch:
            return await orch.achat(USER, mode="task")

    assert asyncio.run(main()).answer == "42"


def test_a_prompt_too_long_for_every_expert_is_a_context_length_error(tmp_path):
    pool = write_pool(tmp_path / "p.yaml", [
        {"id": "x", "backend": "fake", "options": {"script": {"LONG": "x"},
                                                  "fail": ["LONG"]}}])
    with Orchestrator.from_files(pool) as orch:
        from orchestrator.backends.base import failed

        fake = orch.backends.get("fake")
        original = fake.generate
        fake.generate = lambda reqs: [
            failed(r, "This model's maximum context length is 8 tokens; the prompt has 99 "
                   "tokens and max_tokens is 4.") if "LONG" in r.question else res
            for r, res in zip(reqs, original(reqs))]
        with pytest.raises(InvalidRequestError, match="maximum context length is 8") as info:
            orch.chat([{"role": "user", "content": "LONG " * 50}])
    assert info.value.code == "context_length_exceeded" and info.value.param == "messages"
