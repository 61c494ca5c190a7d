"""`orchestrate lora-moe train|inspect` on a tiny llama folder with two random LoRA experts."""

from __future__ import annotations

import copy
import json

import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from typer.testing import CliRunner  # noqa: E402

from orchestrator.cli.main import app  # noqa: E402

from .conftest import choice_rows  # noqa: E402
from .tiny_model import make_tiny_model_folder  # noqa: E402

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("moe-cli")
    base = make_tiny_model_folder(root / "base")
    experts = []
    for i in range(2):
        torch.manual_seed(10 + i)
        model = AutoModelForCausalLM.from_pretrained(str(base))
        cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                              init_lora_weights=False)
        peft.get_peft_model(copy.deepcopy(model), cfg).save_pretrained(str(root / f"exp{i}"))
        experts.append(root / f"exp{i}")
    data = root / "mixed.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in choice_rows(12)))
    return {"root": root, "base": base, "experts": experts, "data": data}


def train(world, out, *extra):
    return invoke("lora-moe", "train", "--base", world["base"], "--experts",
                  ",".join(map(str, world["experts"])), "--data", world["data"], "--out", out,
                  "--steps", 4, "--batch-size", 3, "--top-k", 1, "--no-progress", *extra)


def test_train_writes_a_seeded_gate_with_its_record_and_inspect_reads_it(world):
    from safetensors.torch import load_file

    out = world["root"] / "moe"
    result = train(world, out)
    assert result.exit_code == 0, result.output
    files = {p.name for p in out.iterdir()}
    assert files == {"gate.safetensors", "lora_moe_config.json", "training.json", "loss.png",
                     "README.md"}
    record = json.loads((out / "training.json").read_text())
    assert len(record["losses"]) == 4 and record["usage_log"][-1]["step"] == 4
    layer_usage = record["usage_log"][-1]["usage"]["model.layers.0.self_attn.q_proj"]
    assert sum(layer_usage) == pytest.approx(1.0, abs=1e-3)
    config = json.loads((out / "lora_moe_config.json").read_text())
    assert config["experts"] == ["../exp0", "../exp1"] and config["top_k"] == 1
    assert "expert usage per layer" in result.output

    again = train(world, world["root"] / "moe2")
    assert again.exit_code == 0, again.output
    first, second = load_file(str(out / "gate.safetensors")), load_file(
        str(world["root"] / "moe2" / "gate.safetensors"))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    before = first["model.layers.0.self_attn.q_proj.gate.weight"]
    fresh_init = torch.Generator().manual_seed(0)  # training moved the gate from its init
    assert not torch.equal(before, torch.randn(before.shape, generator=fresh_init) * 0.02)

    shown = invoke("lora-moe", "inspect", out, "--prompt", "Which letter is the answer?",
                   "--max-tokens", 3, "--layers", "0,1")
    assert shown.exit_code == 0, shown.output
    assert "L0.q_proj" in shown.output and "L1.q_proj" in shown.output
    assert "exp0" in shown.output and "usage shares per layer" in shown.output


def test_user_errors_are_one_line_and_write_nothing(world):
    out = world["root"] / "bad"
    missing = invoke("lora-moe", "train", "--base", world["base"], "--experts",
                     f"{world['experts'][0]},{world['root'] / 'nope'}", "--data", world["data"],
                     "--out", out, "--no-progress")
    assert missing.exit_code == 2 and "not a PEFT adapter folder" in missing.output
    assert "Traceback" not in missing.output and not out.exists()
    too_many = train(world, out, "--top-k", 3)
    assert too_many.exit_code == 2 and "lower top_k" in too_many.output
    (out).mkdir()
    (out / "keep.txt").write_text("mine")
    exists = train(world, out)
    assert exists.exit_code == 2 and "--force" in exists.output
    assert (out / "keep.txt").read_text() == "mine"
    not_moe = invoke("lora-moe", "inspect", world["base"], "--prompt", "hi")
    assert not_moe.exit_code == 2 and "no lora_moe_config.json" in not_moe.output


def test_a_trained_mixture_is_a_pool_expert_of_the_transformers_backend(world, tmp_path):
    from orchestrator.backends.base import BackendContext
    from orchestrator.backends.transformers_backend import TransformersBackend
    from orchestrator.errors import UserError
    from orchestrator.types import ExpertSpec, GenerationRequest, Message, Sampling

    out = world["root"] / "served"
    assert train(world, out, "--top-k", 2).exit_code == 0
    common = {"backend": "transformers", "model": str(world["base"]), "dtype": "float32"}
    moe = ExpertSpec(id="mix", lora_moe=str(out), **common)
    plain = ExpertSpec(id="plain", **common)
    backend = TransformersBackend(BackendContext(threads=1))
    assert "LoRA-MoE" in backend.check(moe) and "top-2" in backend.check(moe)
    for spec in (moe, plain):
        backend.load(spec)
    assert backend.counts.base == 2  # the mixture changes its model in place: its own copy
    prompts = [[Message("user", "which letter is the answer ?")], [Message("user", "solve 2 + 3")]]
    outputs = {}
    for spec in (moe, plain):
        results = backend.generate([GenerationRequest(spec.id, tuple(m), Sampling(max_tokens=6))
                                    for m in prompts])
        assert all(r.ok for r in results)
        outputs[spec.id] = [r.text for r in results]
    layer = backend.loaded("mix").model.get_submodule("model.layers.0.self_attn.q_proj")
    assert type(layer).__name__ == "LoraMoeLinear"
    backend.close()
    assert backend.bases == 0
    with pytest.raises(UserError, match="not a LoRA-MoE folder"):
        backend.check(ExpertSpec(id="bad", lora_moe=str(tmp_path), **common))
