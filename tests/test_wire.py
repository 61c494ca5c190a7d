"""The OpenAI wire of `orchestrate serve` without a server: what a body becomes (a ChatCall),
which options are refused with which `param`, and the completion and chunk shapes."""

from __future__ import annotations

import json

import pytest

from orchestrator.chat import ChatResult
from orchestrator.errors import InvalidRequestError
from orchestrator.server import wire
from orchestrator.types import Message

USER = [{"role": "user", "content": "What is 6 times 7?"}]


MIXTURE = wire.Routing()


def call_of(body: dict, routing: wire.Routing = MIXTURE):
    return wire.to_call(wire.parse_body({"model": "orchestrator", **body}), routing)


def refused(body: dict) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as info:
        call_of(body)
    assert len(str(info.value)) < 300
    return info.value


def test_a_conversation_becomes_typed_messages_with_every_sampling_option():
    call = call_of({"messages": [
        {"role": "system", "content": "Answer in French."},
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "I have 6 boxes of 7 apples.", "name": "ann"},
        {"role": "assistant", "content": None},
        {"role": "user", "content": [{"type": "text", "text": "How many "},
                                     {"type": "text", "text": "apples?"}]}],
        "stop": "\n\n", "seed": -(2**63), "max_completion_tokens": 7, "max_tokens": 99,
        "temperature": 0.2, "top_p": 0.9, "user": "u-1", "metadata": {"team": "a"},
        "k": 2, "router": "random", "aggregator": "first", "mode": "task"})
    assert call.messages == (Message("system", "Answer in French."), Message("developer", "Be brief."),
                             Message("user", "I have 6 boxes of 7 apples."), Message("assistant", ""),
                             Message("user", "How many apples?"))
    assert (call.stop, call.seed, call.max_tokens, call.temperature, call.top_p) == \
        (("\n\n",), -(2**63), 7, 0.2, 0.9)
    assert (call.k, call.router, call.aggregator, call.mode, call.model) == \
        (2, "random", "first", "task", None)
    assert call.user == "u-1" and dict(call.metadata) == {"team": "a"}
    assert call_of({"messages": USER, "stop": ["a", "b"]}).stop == ("a", "b")
    assert call_of({"messages": USER}).mode == "chat"


def test_parts_equal_the_plain_string_and_neutral_values_are_accepted():
    parts = call_of({"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]})
    assert parts.messages == call_of({"messages": [{"role": "user", "content": "Hi"}]}).messages
    neutral = {"logprobs": False, "top_logprobs": 0, "response_format": {"type": "text"},
               "frequency_penalty": 0, "presence_penalty": 0.0, "logit_bias": {}, "n": 1,
               "modalities": ["text"], "tool_choice": "none", "parallel_tool_calls": True,
               "store": False, "service_tier": "auto", "stream": True,
               "stream_options": {"include_usage": True}}
    assert call_of({"messages": USER, **neutral}).messages == (Message("user", USER[0]["content"]),)


def test_an_alias_gives_defaults_the_body_overrides():
    alias = wire.Routing(k=5, router="knn", aggregator="vote", mode="task")
    call = call_of({"messages": USER}, alias)
    assert (call.k, call.router, call.aggregator, call.mode) == (5, "knn", "vote", "task")
    call = call_of({"messages": USER, "k": 2, "mode": "chat"}, alias)
    assert (call.k, call.router, call.mode) == (2, "knn", "chat")
    assert call_of({"messages": USER}, wire.Routing(expert="b")).model == "b"
    with pytest.raises(InvalidRequestError) as info:
        call_of({"messages": USER, "k": 2}, wire.Routing(expert="b"))
    assert info.value.param == "k"


@pytest.mark.parametrize("body, param", [
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"function_call": "auto"}, "function_call"),
    ({"logprobs": True}, "logprobs"),
    ({"top_logprobs": 5}, "top_logprobs"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format"),
    ({"stream": True, "stream_options": {"continuous_usage_stats": True}},
     "stream_options.continuous_usage_stats"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"n": 2}, "n"),
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"frequency_penalty": 0.5}, "frequency_penalty"),
    ({"presence_penalty": -1}, "presence_penalty"),
    ({"seed": 2**63}, "seed"),
    ({"seed": -(2**63) - 1}, "seed"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": ""}, "stop"),
    ({"stop": 5}, "stop"),
    ({"store": True}, "store"),
    ({"reasoning_effort": "high"}, "reasoning_effort"),
    ({"temperature": 3}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_completion_tokens": -1}, "max_completion_tokens"),
    ({"mode": "exam"}, "mode"),
    ({"k": 0}, "k"),
    ({"metadata": {"a": 1}}, "metadata"),
    ({"best_of": 2}, "best_of"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]}, "messages[0].role"),
    ({"messages": [{"role": "my-custom-role", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"content": "x"}]}, "messages[0].role"),
    ({"messages": ["hello"]}, "messages[0]"),
    ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]}, "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}]},
     "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "a\ud800b"}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "\udfff"}]}]},
     "messages[0].content[0]"),
    ({"messages": [*USER, {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]}]},
     "messages[1].tool_calls"),
    ({"messages": [{"role": "system", "content": "be nice"}]}, "messages"),
    ({"stop": "\ud800"}, "stop"),
])
def test_what_the_pool_cannot_do_is_a_400_naming_the_param(body, param):
    err = refused({"messages": USER, **body})
    assert err.param == param, str(err)
    assert "\ud800" not in str(err) and "http://x" not in str(err)  # no echo


def test_a_lone_surrogate_from_json_escapes_is_refused_not_retried():
    body = json.loads('{"model": "orchestrator", "messages": [{"role": "user", "content": "\\ud83d"}]}')
    with pytest.raises(InvalidRequestError) as info:
        wire.to_call(wire.parse_body(body), wire.Routing())
    assert info.value.param == "messages[0].content" and "surrogate" in str(info.value)


def result(content: str = "Forty-two, as you asked: 42.", finish: str = "stop") -> ChatResult:
    return ChatResult(id="chatcmpl-abc", created=1, model="ignored", content=content,
                      finish_reason=finish, prompt_tokens=11, completion_tokens=7,
                      usage_exact=False, info={"router": "fixed", "experts": []})


def test_completion_shape_echoes_the_requested_model():
    body = wire.completion(result(finish="length"), "orchestrator-k5")
    assert body["model"] == "orchestrator-k5" and body["object"] == "chat.completion"
    assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content":
                                                        "Forty-two, as you asked: 42.",
                                                        "refusal": None},
                                "finish_reason": "length", "logprobs": None}]
    assert body["usage"] == {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    assert body["orchestrator"]["usage_exact"] is False


@pytest.mark.parametrize("include_usage", [False, True])
def test_chunks_one_finish_reason_and_usage_only_when_asked(include_usage):
    chunks = list(wire.chunks(result(), "m", include_usage, piece_chars=5))
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == result().content
    finishes = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finishes) == 1 and finishes[0]["choices"][0]["finish_reason"] == "stop"
    assert "orchestrator" in finishes[0]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == "chatcmpl-abc"
               and c["model"] == "m" for c in chunks)
    if include_usage:
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 18
        assert all(c["usage"] is None for c in chunks[:-1])
    else:
        assert all("usage" not in c for c in chunks)
