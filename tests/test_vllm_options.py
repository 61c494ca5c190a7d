"""The vllm backend's manifest checks: fast, and without importing vllm."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from orchestrator.backends.base import BackendContext
from orchestrator.backends.vllm_backend import VLLMBackend
from orchestrator.config import load_pool
from orchestrator.errors import ConfigError, UserError
from orchestrator.types import ExpertSpec

from .conftest import ROOT


@pytest.fixture
def model_dir(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return folder


def spec(model_dir, **fields) -> ExpertSpec:
    return ExpertSpec(**{"id": "e", "backend": "vllm", "model": str(model_dir), **fields})


def adapter(tmp_path, rank: int = 8):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"r": rank, "peft_type": "LORA"}))
    return folder


def test_importing_the_backend_does_not_import_vllm():
    code = ("import sys, orchestrator, orchestrator.registry, orchestrator.backends.vllm_backend; "
            "from orchestrator.registry import BACKENDS; BACKENDS.get('vllm'); "
            "print('vllm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_unknown_option_is_rejected_with_the_allowed_ones(model_dir):
    with pytest.raises(ConfigError) as err:
        VLLMBackend().check(spec(model_dir, options={"gpu_mem_util": 0.5}))
    message = str(err.value)
    assert "gpu_mem_util: unknown option" in message and "Expert 'e' (backend vllm)" in message
    assert "gpu_memory_utilization" in message and "max_lora_rank" in message


@pytest.mark.parametrize("options, field", [
    ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization"),
    ({"max_lora_rank": 12}, "max_lora_rank"),
    ({"tensor_parallel_size": 0}, "tensor_parallel_size"),
    ({"sleep_level": 3}, "sleep_level"),
    ({"max_model_len": "long"}, "max_model_len"),
])
def test_bad_values_are_rejected(model_dir, options, field):
    with pytest.raises(ConfigError, match=field):
        VLLMBackend().check(spec(model_dir, options=options))


def test_trust_remote_code_is_off_unless_set(model_dir):
    backend = VLLMBackend()
    opts = backend.options(spec(model_dir, options={"enable_sleep_mode": False}))
    kwargs = backend._engine_kwargs(spec(model_dir), opts, lora=False)
    assert kwargs["trust_remote_code"] is False and "enable_lora" not in kwargs
    on = backend.options(spec(model_dir, options={"trust_remote_code": True}))
    assert on.trust_remote_code is True


def test_engine_kwargs_follow_the_manifest(model_dir):
    backend = VLLMBackend(BackendContext(seed=3))
    expert = spec(model_dir, dtype="float32", options={
        "enforce_eager": True, "max_model_len": 1024, "kv_cache_gib": 0.5, "max_lora_rank": 8,
        "enable_sleep_mode": False})
    kwargs = backend._engine_kwargs(expert, backend.options(expert), lora=True)
    assert kwargs["dtype"] == "float32" and kwargs["max_model_len"] == 1024 and kwargs["seed"] == 3
    assert kwargs["kv_cache_memory_bytes"] == 1 << 29 and kwargs["enforce_eager"] is True
    assert kwargs["enable_lora"] is True and kwargs["max_lora_rank"] == 8
    assert "enable_sleep_mode" not in kwargs and "gpu_memory_utilization" not in kwargs


def test_sleep_mode_offload_cudagraph_is_accepted_and_passed_only_when_set(model_dir):
    backend = VLLMBackend()
    on = spec(model_dir, options={"enable_sleep_mode": True, "sleep_mode_offload_cudagraph": True})
    kwargs = backend._engine_kwargs(on, backend.options(on), lora=False)
    assert kwargs["sleep_mode_offload_cudagraph"] is True and kwargs["enable_sleep_mode"] is True
    off = spec(model_dir, options={"enable_sleep_mode": True})
    assert "sleep_mode_offload_cudagraph" not in backend._engine_kwargs(
        off, backend.options(off), lora=False)  # vLLM < 0.32 rejects the keyword


def test_placement_is_part_of_the_engine_key(model_dir):
    backend = VLLMBackend()
    a, b = spec(model_dir, placement=0), spec(model_dir, placement=[1])
    assert backend._key(a, backend.options(a)) != backend._key(b, backend.options(b))
    assert backend._key(b, backend.options(b)) == backend._key(
        spec(model_dir, placement=(1,)), backend.options(b))


def test_adapter_checks(model_dir, tmp_path):
    backend = VLLMBackend(BackendContext(base_dir=tmp_path))
    with pytest.raises(UserError, match="no adapter_config.json"):
        backend.check(spec(model_dir, adapter="missing"))
    adapter(tmp_path, rank=32)
    with pytest.raises(ConfigError, match="rank 32, above options.max_lora_rank 16"):
        backend.check(spec(model_dir, adapter="adapter"))
    with pytest.raises(ConfigError, match="enable_lora is false"):
        backend.check(spec(model_dir, adapter="adapter", options={"enable_lora": False}))
    # relative to the pool's folder; experts on this base start their engine with LoRA on
    shown = backend.check(spec(model_dir, adapter="adapter", options={"max_lora_rank": 32}))
    assert shown.endswith("+ LoRA adapter")
    base = spec(model_dir, options={"max_lora_rank": 32})
    assert backend._key(base, backend.options(base)) in backend._lora_bases


@pytest.mark.parametrize("name", ["gpu-symbolic-moe", "gpu-symbolic-moe-8gpu"])
def test_gpu_manifest_loads_and_checks_without_vllm(name):
    before = "vllm" in sys.modules
    pool = load_pool(ROOT / "pools" / f"{name}.yaml")
    backend = VLLMBackend(BackendContext(base_dir=pool.base_dir))
    specs = pool.specs()
    assert len(specs) == 16 and {s.backend for s in specs.values()} == {"vllm"}
    for expert in specs.values():
        assert backend.check(expert).startswith("hub id")
        opts = backend.options(expert)
        assert opts.enable_sleep_mode is True and opts.gpu_memory_utilization is not None
        assert opts.sleep_mode_offload_cudagraph is True
    assert pool.aggregator in specs
    placements = sorted(s.placement for s in specs.values() if s.placement is not None)
    assert placements == ([] if name == "gpu-symbolic-moe" else sorted(list(range(8)) * 2))
    assert ("vllm" in sys.modules) == before


def test_docs_name_the_driver_the_vllm_extra_needs():
    import tomllib

    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["vllm"]
    assert extra == ["vllm>=0.11,<0.34"]  # widen only after checking the new API (docs/gpu.md)
    text = (ROOT / "docs" / "gpu.md").read_text()
    assert "driver >= 580" in text and "'vllm<0.20'" in text
