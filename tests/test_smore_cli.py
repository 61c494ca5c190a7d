"""`orchestrate smore train|inspect` on a tiny llama folder, and a trained folder served as a
pool expert by the transformers backend."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from typer.testing import CliRunner  # noqa: E402

from orchestrator.cli.main import app  # noqa: E402

from .conftest import choice_rows, write_pool  # noqa: E402
from .tiny_model import make_tiny_model_folder  # noqa: E402

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("smore-cli")
    base = make_tiny_model_folder(root / "base")
    data = root / "mixed.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in choice_rows(12)))
    return {"root": root, "base": base, "data": data}


def train(world, out, *extra):
    return invoke("smore", "train", "--base", world["base"], "--data", world["data"], "--out", out,
                  "--steps", 4, "--batch-size", 3, "--experts", "3,2", "--fan-out", "2,1",
                  "--rank", "2,2", "--router-dim", 4, "--key-dim", 4, "--lr", "0.01",
                  "--no-progress", *extra)


def test_train_writes_a_seeded_adapter_with_its_record_and_inspect_shows_the_tree(world):
    from safetensors.torch import load_file

    out = world["root"] / "smore"
    result = train(world, out)
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {"adapter.safetensors", "smore_config.json",
                                               "training.json", "loss.png", "README.md"}
    record = json.loads((out / "training.json").read_text())
    assert len(record["losses"]) == 4 and record["usage_log"][-1]["step"] == 4
    level0, level1 = record["usage_log"][-1]["usage"]
    assert len(level0) == 3 and len(level1) == 2 and sum(level1) == pytest.approx(1, abs=1e-3)
    assert record["command"].startswith("orchestrate smore train --base")
    config = json.loads((out / "smore_config.json").read_text())
    assert config["experts"] == [3, 2] and config["fan_out"] == [2, 1]
    assert "expert usage per level" in result.output and "trainable parameters" in result.output
    assert "orchestrate smore train" in (out / "README.md").read_text()

    again = train(world, world["root"] / "smore2")
    assert again.exit_code == 0, again.output
    first, second = (load_file(str(p / "adapter.safetensors")) for p in (out, world["root"] / "smore2"))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert first["model.layers.0.mlp.down_proj.proj"].abs().sum() > 0  # P moved from zero

    shown = invoke("smore", "inspect", out, "--prompt", "Which letter is the answer?",
                   "--max-tokens", 3, "--layers", "0,1", "--module", "up_proj")
    assert shown.exit_code == 0, shown.output
    assert "L0.up_proj" in shown.output and "L1.up_proj" in shown.output
    assert "[e" in shown.output and "expert usage per level" in shown.output


def test_user_errors_are_one_line_and_write_nothing(world):
    out = world["root"] / "bad"
    for extra, message in [(("--experts", "4,x"), "comma-separated integers"),
                           (("--fan-out", "5,1"), "fan_out[0] is 5"),
                           (("--gate", "noisy_topk", "--fan-out", "3,1"), "fan_out < experts"),
                           (("--modules", "nope"), "its Linear modules are"),
                           (("--steps", 0), "steps must be at least 1")]:
        result = train(world, out, *extra)
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output
        assert not out.exists()
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    exists = train(world, out)
    assert exists.exit_code == 2 and "--force" in exists.output
    assert (out / "keep.txt").read_text() == "mine"
    not_smore = invoke("smore", "inspect", world["base"], "--prompt", "hi")
    assert not_smore.exit_code == 2 and "no smore_config.json" in not_smore.output


def test_lora_lora_moe_and_smore_share_one_command_shape():
    for group in ("lora", "lora-moe", "smore"):
        shown = invoke(group, "train", "--help")
        for option in ("--base", "--data", "--out", "--steps", "--lr", "--batch-size",
                       "--max-length", "--seed", "--system-prompt", "--exclude", "--limit",
                       "--format", "--dtype", "--threads", "--force", "--progress"):
            assert option in shown.output, (group, option)
    for group in ("lora-moe", "smore"):
        shown = invoke(group, "inspect", "--help")
        for option in ("--prompt", "--max-tokens", "--layers", "--module", "--base", "--threads"):
            assert option in shown.output, (group, option)


def test_a_trained_adapter_is_a_pool_expert_of_the_transformers_backend(world, tmp_path):
    from orchestrator import ConfigError, Orchestrator, load_pool
    from orchestrator.adapters.smore.inspect import load_smore
    from orchestrator.backends.base import BackendContext
    from orchestrator.backends.prompting import render_prompt
    from orchestrator.backends.transformers_backend import TransformersBackend
    from orchestrator.errors import UserError
    from orchestrator.types import ExpertSpec, GenerationRequest, Message, Sampling

    out = world["root"] / "served"
    assert train(world, out, "--lr", "0.05").exit_code == 0
    common = {"backend": "transformers", "model": str(world["base"]), "dtype": "float32"}
    spec = ExpertSpec(id="tree", smore=str(out), **common)
    backend = TransformersBackend(BackendContext(threads=1))
    assert "S'MoRE" in backend.check(spec) and "switch gate" in backend.check(spec)
    backend.load(spec)
    backend.load(ExpertSpec(id="plain", **common))
    assert backend.counts.base == 2  # the adapter changes its model in place: its own copy
    messages = (Message("user", "which letter is the answer ?"),)
    served = backend.generate([GenerationRequest("tree", messages, Sampling(max_tokens=5))])[0]
    assert served.ok
    layer = backend.loaded("tree").model.get_submodule("model.layers.0.mlp.down_proj")
    assert type(layer).__name__ == "SmoreLinear"
    backend.close()

    smore, tokenizer = load_smore(out, threads=1)  # the same greedy text outside the backend
    enc = tokenizer(render_prompt(tokenizer, list(messages)), return_tensors="pt",
                    add_special_tokens=False)
    with torch.no_grad():
        ids = smore.generate(**enc, max_new_tokens=5, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    expected = tokenizer.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert served.text == expected.strip() or served.text == expected
    with pytest.raises(UserError, match="not a S'MoRE folder"):
        backend.check(ExpertSpec(id="bad", smore=str(tmp_path), **common))

    both = write_pool(tmp_path / "both.yaml", [
        {"id": "m", "backend": "transformers", "model": "x", "lora_moe": "g", "smore": "s"}])
    with pytest.raises(ConfigError, match="give only one"):
        load_pool(both)
    fake = write_pool(tmp_path / "fake.yaml", [
        {"id": "m", "backend": "fake", "model": "fake", "smore": str(out)}])
    with Orchestrator.from_files(fake) as orch, pytest.raises(ConfigError, match="sets smore"):
        orch.check()
