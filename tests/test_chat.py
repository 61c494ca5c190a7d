"""The chat SDK (`Orchestrator.chat`, `achat`, `complete_batch`): what the server will
serialise, on the fake backend."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator.chat import (
    ChatCompletion,
    InvalidRequestError,
    UnknownModelError,
    complete_batch,
    parse_chat_request,
)
from orchestrator.core import Orchestrator
from orchestrator.errors import BackendError

from .conftest import write_pool

USER = [{"role": "user", "content": "What is 6 times 7?"}]


@pytest.fixture
def pool(tmp_path):
    return write_pool(tmp_path / "pool.yaml", [
        {"id": "a", "backend": "fake", "options": {"default": "<think>41?</think>The answer is 42"}},
        {"id": "b", "backend": "fake", "options": {"default": "I believe the answer is 41"}},
        {"id": "c", "backend": "fake", "options": {"default": "So the answer is 42",
                                                     "fail": ["explode"]}},
        {"id": "agg", "backend": "fake", "options": {"default": "Fusing: the answer is 42"}},
    ], resident_limit=4)


def test_mixture_answer_with_the_orchestrator_object(pool):
    with Orchestrator.from_files(pool, k=3) as orch:
        reply = orch.chat(USER)
    body = reply.to_openai()
    assert body["object"] == "chat.completion" and body["model"] == "orchestrator"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "The answer is 42"}
    info = body["orchestrator"]
    assert [e["id"] for e in info["experts"]] == ["a", "b", "c"]
    assert [e["answer"] for e in info["experts"]] == ["42", "41", "42"]
    assert info["aggregator"] == "vote" and info["early_exit"] is False
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + \
        body["usage"]["completion_tokens"] > 0


def test_an_expert_by_name_answers_alone(pool):
    with Orchestrator.from_files(pool, k=3) as orch:
        reply = orch.chat(USER, model="b")
        assert reply.content == "I believe the answer is 41" and reply.model == "b"
        assert [e["id"] for e in reply.info["experts"]] == ["b"]


@pytest.mark.parametrize("params, error, param", [
    ({"k": 9}, InvalidRequestError, "k"),
    ({"k": 0}, InvalidRequestError, "k"),
    ({"model": "gpt-5"}, UnknownModelError, "model"),
    ({"temperature": 9}, InvalidRequestError, "temperature"),
    ({"top_p": 0}, InvalidRequestError, "top_p"),
    ({"max_tokens": 0}, InvalidRequestError, "max_tokens"),
    ({"n": 2}, InvalidRequestError, "n"),
    ({"router": "smart"}, InvalidRequestError, "router"),
])
def test_bad_requests_name_the_parameter(pool, params, error, param):
    with Orchestrator.from_files(pool, k=2) as orch, pytest.raises(error) as info:
        orch.chat(USER, **params)
    assert info.value.param == param and len(str(info.value)) < 300


def test_bodies_that_are_not_requests():
    with pytest.raises(InvalidRequestError, match="must be a JSON object, not list"):
        parse_chat_request([1, 2])
    with pytest.raises(InvalidRequestError, match="no user message"):
        parse_chat_request({"messages": [{"role": "system", "content": "be nice"}]})
    with pytest.raises(InvalidRequestError) as info:
        parse_chat_request({"messages": []})
    assert info.value.param == "messages"
    assert len(str(UnknownModelError("x" * 500, ["orchestrator"]))) < 200


def test_a_batch_of_requests_is_one_grouped_execution(pool):
    with Orchestrator.from_files(pool, k=2) as orch:
        calls = []
        inner = orch.executor.execute
        orch.executor.execute = lambda reqs: calls.append(len(reqs)) or inner(reqs)
        bodies = [{"messages": USER, "temperature": 0.3, "max_tokens": 5},
                  {"messages": USER, "model": "c"},
                  {"messages": USER, "k": 9},
                  {"messages": [{"role": "user", "content": "What is 2+2?"}], "router": "random",
                   "seed": 7}]
        out = complete_batch(orch, bodies)
        history = orch.backends.get("fake").history
    assert calls == [2 + 1 + 2]  # one execution for every generation of the batch
    assert isinstance(out[0], ChatCompletion) and isinstance(out[1], ChatCompletion)
    assert isinstance(out[2], InvalidRequestError) and out[2].param == "k"
    assert isinstance(out[3], ChatCompletion) and out[3].info["router"] == "random"
    first = [r for r in history if r.question == "What is 6 times 7?" and r.expert != "c"]
    assert {(r.sampling.temperature, r.sampling.max_tokens) for r in first} == {(0.3, 5)}
    assert {r.sampling.seed for r in history if r.question == "What is 2+2?"} == {7}


def test_a_failing_expert_degrades_the_answer_or_fails_it(pool):
    boom = [{"role": "user", "content": "explode, then say 6 times 7"}]
    with Orchestrator.from_files(pool, router="fixed", experts=["a", "b", "c"]) as orch:
        reply = orch.chat(boom)
    assert reply.info["failed_experts"] == ["c"] and reply.info["experts"][2]["error"]
    with Orchestrator.from_files(pool, router="fixed", experts=["a", "b", "c"],
                                 min_experts_ok=3) as orch, \
            pytest.raises(BackendError, match="2 of 3 experts answered; at least 3 must"):
        orch.chat(boom)


def test_fused_reply_and_early_exit(pool):
    with Orchestrator.from_files(pool, router="fixed", experts=["a", "b"], aggregator="fuse",
                                 aggregator_expert="agg") as orch:
        reply = orch.chat(USER)
    assert reply.content == "Fusing: the answer is 42" and reply.info["aggregator"] == "fuse"
    with Orchestrator.from_files(pool, router="fixed", experts=["a", "c"], aggregator="fuse",
                                 aggregator_expert="agg",
                                 aggregation={"early_exit": True}) as orch:
        reply = orch.chat(USER)
    assert reply.info["early_exit"] is True and reply.info["aggregator"] == "fuse"
    assert reply.content == "The answer is 42"


def test_conversation_history_reaches_the_experts(pool):
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "I have 6 boxes of 7 apples."},
                {"role": "assistant", "content": "Noted."},
                {"role": "user", "content": [{"type": "text", "text": "How many apples?"}]}]
    request = parse_chat_request({"messages": messages})
    assert request.question == "How many apples?"
    assert request.prompt_text().startswith("Conversation so far:\nuser: I have 6 boxes")
    assert request.prompt_text().endswith("Current question: How many apples?")


def test_stream_chunks_and_achat(pool):
    async def main():
        with Orchestrator.from_files(pool, k=3) as orch:
            return await orch.achat(USER)

    reply = asyncio.run(main())
    chunks = list(reply.chunks(piece_chars=4))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == reply.content
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"] == reply.usage() and "orchestrator" in chunks[-1]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == reply.id for c in chunks)


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
