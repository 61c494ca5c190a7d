"""21 assertions taken from vLLM's own OpenAI-server tests (tests/entrypoints/openai/: chat_completion/
test_chat.py, test_chat_error.py, basic/test_basic.py), phrased for this server and run with the
real `openai` client against a live loopback server on a fake pool. Each passes, or is answered
by the documented 400 (README, Serving: what is refused) that names the `param`.
"""

from __future__ import annotations

import httpx
import openai
import pytest

from orchestrator import __version__
from orchestrator.server.settings import Alias

from .test_server import live, make_orch

MODEL = "orchestrator"
USER = [{"role": "system", "content": "you are a helpful assistant"},
        {"role": "user", "content": "what is 1+1?"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    aliases = {"orchestrator-k3": Alias(k=3, router="random")}
    with live(make_orch(tmp_path_factory.mktemp("compat")), aliases=aliases) as s:
        yield s


@pytest.fixture
def client(server) -> openai.OpenAI:
    return server.client()


def bad_request(call, param: str) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as info:
        call()
    assert info.value.param == param, info.value.message
    return info.value


def test_01_no_logprobs(client):  # test_no_logprobs_chat
    reply = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=5, logprobs=False)
    assert reply.choices[0].logprobs is None


def test_02_logprobs_are_a_400_naming_logprobs(client):  # test_some_logprobs_chat
    bad_request(lambda: client.chat.completions.create(
        model=MODEL, messages=USER, max_tokens=5, logprobs=True, top_logprobs=5), "logprobs")
    bad_request(lambda: client.chat.completions.create(
        model=MODEL, messages=USER, max_tokens=5, top_logprobs=5), "top_logprobs")


def test_03_to_05_single_chat_session(client, server):  # test_single_chat_session
    reply = client.chat.completions.create(model=MODEL, messages=USER, max_completion_tokens=10)
    assert reply.id.startswith("chatcmpl-") and len(reply.choices) == 1  # (3)
    message = reply.choices[0].message
    assert message.role == "assistant" and message.content
    usage = reply.usage  # (4)
    assert usage.completion_tokens > 0 and usage.prompt_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    messages = [*USER, {"role": "assistant", "content": message.content},  # (5) multi-turn
                {"role": "user", "content": "express your result in json"}]
    again = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10)
    assert again.choices[0].message.content
    last = server.backend.history[-1].query_id  # the experts the second request reached
    seen = ["\n".join(m.content for m in r.messages) for r in server.backend.history
            if r.query_id == last]
    assert seen and all(message.content in text and "express your result in json" in text
                        for text in seen)


def test_06_streamed_text_equals_the_text_and_one_finish_reason(client):  # test_chat_streaming
    reply = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=10,
                                           temperature=0.0)
    chunks = list(client.chat.completions.create(model=MODEL, messages=USER, max_tokens=10,
                                                 temperature=0.0, stream=True))
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason]
    assert finishes == [reply.choices[0].finish_reason]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == \
        reply.choices[0].message.content


def test_07_a_max_tokens_cut_says_length(client):  # test_single_chat_session (finish_reason)
    reply = client.chat.completions.create(model="a", messages=USER, max_tokens=2)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens <= 2


def test_08_09_include_usage_gives_a_usage_only_last_chunk(client):  # test_chat_completion_stream_options
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=USER, max_tokens=10, stream=True,
        stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == \
        chunks[-1].usage.prompt_tokens + chunks[-1].usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])  # (8)
    for options in ({"include_usage": False}, None):  # (9)
        extra = {"stream_options": options} if options else {}
        chunks = list(client.chat.completions.create(model=MODEL, messages=USER, max_tokens=10,
                                                     stream=True, **extra))
        assert all(c.usage is None and c.choices for c in chunks)


def test_10_continuous_usage_stats_is_a_400(client):
    bad_request(lambda: list(client.chat.completions.create(
        model=MODEL, messages=USER, stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True})),
        "stream_options.continuous_usage_stats")


@pytest.mark.parametrize("response_format", [
    {"type": "json_object"},
    {"type": "json_schema", "json_schema": {"name": "r", "schema": {"type": "object"}}},
])
def test_11_json_response_formats_are_a_400(client, response_format):  # test_response_format_json_*
    bad_request(lambda: client.chat.completions.create(
        model=MODEL, messages=USER, response_format=response_format), "response_format")
    ok = client.chat.completions.create(model=MODEL, messages=USER,
                                        response_format={"type": "text"})
    assert ok.choices[0].message.content


def test_12_extra_fields_in_a_message_are_accepted(client):  # test_extra_fields_allowed
    reply = client.chat.completions.create(model=MODEL, messages=[
        {"role": "user", "content": "what is 1+1?", "extra_field": "0"}])
    assert reply.choices[0].message.content


def test_13_text_parts_equal_the_plain_string(client, server):  # test_complex_message_content
    parts = [{"type": "text", "text": "what is "}, {"type": "text", "text": "1+1?"}]
    a = client.chat.completions.create(model="b", messages=[{"role": "user", "content": parts}])
    b = client.chat.completions.create(model="b", messages=[{"role": "user", "content": "what is 1+1?"}])
    assert a.choices[0].message.content == b.choices[0].message.content
    first, second = server.backend.history[-2:]
    assert first.messages == second.messages


def test_14_an_unknown_role_is_a_400(client):  # test_custom_role (vLLM accepts; we refuse)
    bad_request(lambda: client.chat.completions.create(
        model=MODEL, messages=[{"role": "my-custom-role", "content": "what is 1+1?"}]),
        "messages[0].role")


@pytest.mark.parametrize("seed", [2**63, -(2**63) - 1])
def test_15_a_seed_outside_int64_is_a_400(client, seed):  # test_long_seed
    bad_request(lambda: client.chat.completions.create(model=MODEL, messages=USER, seed=seed),
                "seed")


def test_16_a_non_json_content_type_is_415(client):  # test_request_wrong_content_type
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(
            model=MODEL, messages=USER, max_tokens=10,
            extra_headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert info.value.status_code == 415 and info.value.code == "unsupported_media_type"


def test_17_18_health_and_version(server):  # test_check_health, test_show_version
    assert httpx.get(server.url + "/health").status_code == 200
    response = httpx.get(server.url + "/version")
    assert response.status_code == 200 and response.json() == {"version": __version__}


@pytest.mark.parametrize("body", [b"[]", b'"text"', b"1", b"null", b"true"])
def test_19_a_non_object_body_is_the_400_envelope(server, body):  # test_non_object_body_validation
    response = httpx.post(server.url + "/v1/chat/completions", content=body,
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and "JSON object" in error["message"]


def test_20_n_is_one(client):  # test_chat_completion n
    assert len(client.chat.completions.create(model=MODEL, messages=USER, n=1).choices) == 1
    bad_request(lambda: client.chat.completions.create(model=MODEL, messages=USER, n=2), "n")


@pytest.mark.parametrize("model", [MODEL, "orchestrator-k3", "c"])
def test_21_the_requested_model_is_echoed(client, model):
    reply = client.chat.completions.create(model=model, messages=USER)
    assert reply.model == model
    chunks = list(client.chat.completions.create(model=model, messages=USER, stream=True))
    assert {c.model for c in chunks} == {model}
