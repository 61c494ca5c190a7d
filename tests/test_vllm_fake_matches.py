"""The simulated vLLM (tests/fake_vllm) keeps the real package's signatures: `make test-vllm`
compares them with the installed vLLM, so the fast tests cannot drift from what they stand for."""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import sys

import pytest

from .fake_vllm import HERE

pytestmark = pytest.mark.vllm


def load_fake():
    spec = importlib.util.spec_from_file_location(
        "fakevllm", HERE / "vllm" / "__init__.py",
        submodule_search_locations=[str(HERE / "vllm")])
    module = importlib.util.module_from_spec(spec)
    sys.modules["fakevllm"] = module
    spec.loader.exec_module(module)
    return module


def params(fn) -> list[tuple[str, object]]:
    return [(p.name, p.kind) for p in inspect.signature(fn).parameters.values()]


def fields(cls) -> set[str]:
    if dataclasses.is_dataclass(cls):
        return {f.name for f in dataclasses.fields(cls)}
    return set(getattr(cls, "__struct_fields__", ())) or set(inspect.signature(cls).parameters)


def test_fake_llm_has_the_real_signatures():
    vllm = pytest.importorskip("vllm")
    from vllm.lora.request import LoRARequest

    fake = load_fake()
    from fakevllm.lora.request import LoRARequest as FakeLoRARequest

    for name in ("generate", "sleep", "wake_up", "collective_rpc", "reset_prefix_cache",
                 "get_tokenizer"):
        assert params(getattr(fake.LLM, name)) == params(getattr(vllm.LLM, name)), name
    real_init = inspect.signature(vllm.LLM.__init__).parameters
    engine_args = {f.name for f in dataclasses.fields(vllm.EngineArgs)}
    for name in inspect.signature(fake.LLM.__init__).parameters:
        if name not in ("self", "kwargs"):
            assert name in real_init or name in engine_args, name
    assert fields(fake.SamplingParams) <= fields(vllm.SamplingParams)
    assert fields(FakeLoRARequest) <= fields(LoRARequest)
    from vllm.third_party import pynvml

    for name in ("nvmlInit", "nvmlShutdown", "nvmlDeviceGetHandleByIndex",
                 "nvmlDeviceGetHandleByUUID", "nvmlDeviceGetMemoryInfo"):
        assert hasattr(pynvml, name), name
