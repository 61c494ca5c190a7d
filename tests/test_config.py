"""Pool manifests and run presets: strict validation, clear messages, overrides."""

from __future__ import annotations

import json

import pytest

from orchestrator import ConfigError, load_config, load_pool
from orchestrator.config import RunConfig

from .conftest import ROOT, write_pool


def test_shipped_pool_and_presets_are_valid():
    pool = load_pool(ROOT / "pools" / "cpu-demo.yaml")
    assert pool.expert_ids == ["smol-math", "smol-mc", "smol-reasoner"]
    specs = pool.specs()
    # the three experts really differ: adapters, prompts and decoding
    assert len({s.system_prompt for s in specs.values()}) == 3
    assert len({(s.adapter, s.max_tokens) for s in specs.values()}) == 3
    for spec in specs.values():  # each adapter is shipped, with the prompt it was trained with
        if spec.adapter:
            record = json.loads((pool.base_dir / spec.adapter / "training.json").read_text())
            assert record["system_prompt"] == spec.system_prompt
            assert record["base"] == spec.model
    for preset in (ROOT / "configs").glob("*.yaml"):
        if preset.name == "serve.yaml":  # the serving config, not a run preset
            from orchestrator.server.settings import load_serve_config

            load_serve_config(preset)
        else:
            load_config(preset)


def test_unknown_keys_are_rejected_with_their_location(tmp_path):
    path = write_pool(tmp_path / "p.yaml", [{"id": "a", "backend": "fake", "modle": "x"}])
    with pytest.raises(ConfigError, match=r"experts\.0\.modle: unknown key"):
        load_pool(path)
    preset = tmp_path / "c.yaml"
    preset.write_text("router: fixed\nbatchsize: 4\n")
    with pytest.raises(ConfigError, match="batchsize: unknown key"):
        load_config(preset)


@pytest.mark.parametrize("bad, where", [
    ({"id": "a", "backend": "fake", "temperature": -1}, "temperature"),
    ({"id": "a", "backend": "fake", "max_tokens": 0}, "max_tokens"),
    ({"id": "has space", "backend": "fake"}, "id"),
    ({"id": "a", "backend": "fake", "dtype": "int3"}, "dtype"),
])
def test_bad_values_name_the_field(tmp_path, bad, where):
    with pytest.raises(ConfigError, match=where):
        load_pool(write_pool(tmp_path / "p.yaml", [bad]))


def test_duplicate_ids_and_empty_pools(tmp_path):
    with pytest.raises(ConfigError, match="appears twice"):
        load_pool(write_pool(tmp_path / "p.yaml", [{"id": "a", "backend": "fake"}] * 2))
    with pytest.raises(ConfigError, match="experts"):
        load_pool(write_pool(tmp_path / "p.yaml", []))


def test_yaml_errors_give_line_and_file(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: x\nexperts: [\n  - id: a\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+"):
        load_pool(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_pool(tmp_path / "missing.yaml")


def test_overrides_replace_fields_and_are_validated():
    cfg = RunConfig(k=3, router="fixed")
    assert cfg.with_overrides(k=2, seed=None).k == 2
    assert cfg.with_overrides(k=None).k == 3
    # naming experts without k: k becomes the number named
    assert cfg.with_overrides(experts=["a"]).effective_k() == 1
    with pytest.raises(ConfigError, match="batch_size"):
        cfg.with_overrides(batch_size=0)


def test_relative_model_paths_resolve_against_the_manifest(tmp_path):
    from orchestrator.modelref import resolve

    (tmp_path / "models" / "m").mkdir(parents=True)
    (tmp_path / "models" / "m" / "config.json").write_text("{}")
    pool = load_pool(write_pool(tmp_path / "p.yaml", [
        {"id": "a", "backend": "transformers", "model": "models/m"}]))
    ref = resolve(pool.experts[0].model, pool.base_dir)
    assert ref.kind == "folder" and ref.path.endswith("models/m")


def test_lora_moe_experts_need_a_backend_that_serves_them(tmp_path):
    from orchestrator import Orchestrator

    both = write_pool(tmp_path / "both.yaml", [
        {"id": "m", "backend": "transformers", "model": "x", "adapter": "a", "lora_moe": "g"}])
    with pytest.raises(ConfigError, match="give only lora_moe"):
        load_pool(both)
    fake = write_pool(tmp_path / "fake.yaml", [
        {"id": "m", "backend": "fake", "model": "fake", "lora_moe": "g"}])
    with Orchestrator.from_files(fake) as orch, pytest.raises(ConfigError, match="cannot serve"):
        orch.check()
