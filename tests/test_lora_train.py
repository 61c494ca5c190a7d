"""`orchestrate lora train` and its data preparation, on a tiny random llama (seconds)."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from typer.testing import CliRunner  # noqa: E402

from orchestrator.adapters.data import IGNORE, answer_text, load_examples, tokenize  # noqa: E402
from orchestrator.backends.prompting import render_prompt  # noqa: E402
from orchestrator.cli.main import app  # noqa: E402

from .tiny_model import make_tiny_model_folder  # noqa: E402

GSM8K_ROWS = [
    {"question": f"how many of {i} and {i + 1} ?",
     "answer": f"add {i} + {i + 1} = <<{i}+{i + 1}={2 * i + 1}>>{2 * i + 1}\n#### {2 * i + 1}"}
    for i in range(6)
]
CHOICE_ROWS = [
    {"id": f"q{i}", "question": f"which number is {i} ?", "gold": "ABCD"[i % 4],
     "options": [str(i), "1", "2", "3"]}
    for i in range(6)
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    gsm = root / "gsm8k_train.jsonl"
    gsm.write_text("".join(json.dumps(r) + "\n" for r in GSM8K_ROWS))
    choice = root / "choice.jsonl"
    choice.write_text("".join(json.dumps(r) + "\n" for r in CHOICE_ROWS))
    return {"model": make_tiny_model_folder(root / "base"), "gsm8k": gsm, "choice": choice,
            "root": root}


def run(*args):
    return CliRunner().invoke(app, ["lora", "train", *map(str, args)])


def train_args(files, out, *extra):
    return ("--base", files["model"], "--data", files["gsm8k"], "--data", files["choice"],
            "--out", out, "--steps", 3, "--batch-size", 2, "--threads", 1, "--no-progress",
            "--system-prompt", "solve step then finish", *extra)


def test_targets_are_short_answers_in_the_extractors_format(files):
    from orchestrator.benchmarks import extract_answer, read_benchmark

    gsm, choice = read_benchmark(files["gsm8k"])[0], read_benchmark(files["choice"])[1]
    assert answer_text(gsm) == "add 0 + 1 = 1\nThe answer is 1."  # calculator notes removed
    assert answer_text(choice) == "The answer is (B)."
    assert extract_answer(answer_text(gsm), "numeric") == "1"
    assert extract_answer(answer_text(choice), "choice") == "B"


def test_prompts_render_as_at_inference_and_only_the_answer_has_labels(files):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(files["model"]))
    examples, excluded = load_examples(files["choice"], "solve step")
    assert excluded == 0 and examples[0].messages[0].content == "solve step"
    t = tokenize(tok, examples[1])
    prompt_ids = tok(render_prompt(tok, examples[1].messages), add_special_tokens=False)["input_ids"]
    assert t.input_ids[: len(prompt_ids)] == prompt_ids
    assert t.labels[: len(prompt_ids)] == [IGNORE] * len(prompt_ids)
    answer = tok.decode([i for i, lab in zip(t.input_ids, t.labels) if lab != IGNORE])
    assert answer.replace(" ", "") == "theansweris(b).<|end|>"  # ends the turn: learns to stop


def test_exclude_drops_questions_seen_in_another_file(files, tmp_path):
    held_out = tmp_path / "val.jsonl"
    held_out.write_text(json.dumps({"id": "v", "question": CHOICE_ROWS[2]["question"],
                                    "gold": "C"}) + "\n")
    examples, excluded = load_examples(files["choice"], None, exclude=[held_out])
    assert excluded == 1 and len(examples) == 5


def test_train_writes_a_complete_adapter_atomically_and_is_seeded(files, tmp_path):
    out = tmp_path / "adapters" / "tiny-lora"
    result = run(*train_args(files, out))
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    assert names == ["README.md", "adapter_config.json", "adapter_model.safetensors", "loss.png",
                     "training.json"]
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads((out / "training.json").read_text())
    assert len(record["losses"]) == 3 and record["examples"] == 12
    assert record["system_prompt"] == "solve step then finish"
    assert "--steps 3" in (out / "README.md").read_text()
    assert [p.name for p in out.parent.iterdir()] == ["tiny-lora"]  # no temporary folder left

    again = tmp_path / "again"
    assert run(*train_args(files, again)).exit_code == 0
    other_seed = tmp_path / "seed1"
    assert run(*train_args(files, other_seed, "--seed", 1)).exit_code == 0
    from safetensors.torch import load_file

    a, b, c = (load_file(str(p / "adapter_model.safetensors")) for p in (out, again, other_seed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)

    # existing output: refused, then replaced with --force
    refused = run(*train_args(files, out))
    assert refused.exit_code == 2 and "already exists" in refused.output
    assert run(*train_args(files, out, "--force", "--steps", 2)).exit_code == 0
    assert len(json.loads((out / "training.json").read_text())["losses"]) == 2


def test_a_trained_adapter_runs_in_the_backend_on_a_shared_base(files, tmp_path):
    from orchestrator.backends.base import BackendContext
    from orchestrator.backends.transformers_backend import TransformersBackend
    from orchestrator.types import ExpertSpec, GenerationRequest, Message, Sampling

    out = tmp_path / "tiny-lora"
    assert run(*train_args(files, out, "--steps", 4, "--lr", "0.05")).exit_code == 0
    backend = TransformersBackend(BackendContext(threads=1))
    common = {"backend": "transformers", "model": str(files["model"]), "dtype": "float32",
              "system_prompt": "solve step then finish"}
    backend.load(ExpertSpec(id="base", **common))
    backend.load(ExpertSpec(id="lora", adapter=str(out), **common))
    msgs = (Message("system", "solve step then finish"), Message("user", "which number is 3 ?"))
    batch = [GenerationRequest(e, msgs, Sampling(max_tokens=6)) for e in ("base", "lora")]
    results = backend.generate(batch)
    assert all(r.ok for r in results) and results[0].text != results[1].text
    assert backend.counts.base == 1
    backend.close()


@pytest.mark.parametrize("change, message", [
    ({"--steps": 0}, "--steps must be at least 1 (got 0)"),
    ({"--rank": 0}, "--rank must be at least 1"),
    ({"--lr": -1}, "--lr must be positive"),
    ({"--dtype": "int8"}, "--dtype 'int8' is not supported; use one of: float32, bfloat16"),
    ({"--data": "missing.jsonl"}, "Benchmark file 'missing.jsonl' does not exist"),
    ({"--base": "no/such/folder/x"}, "was not found"),
    ({"--modules": "nope_proj"}, "Its linear modules are:"),
    ({"--max-length": 20}, "Every training example is longer than --max-length 20"),
])
def test_bad_input_is_one_clear_line_and_exit_2(files, tmp_path, change, message):
    args = list(map(str, train_args(files, tmp_path / "out")))
    for flag, value in change.items():
        i = args.index(flag) if flag in args else None
        if i is None:
            args += [flag, str(value)]
        else:
            args[i + 1] = str(value)
            if flag == "--data":  # drop the second --data too
                j = args.index("--data", i + 1)
                del args[j: j + 2]
    result = CliRunner().invoke(app, ["lora", "train", *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()) and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_unreadable_data_names_the_file_and_line(files, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "question": "q", "gold": "A"}\nnot json\n')
    result = run("--base", files["model"], "--data", bad, "--out", tmp_path / "out", "--no-progress")
    assert result.exit_code == 2 and "bad.jsonl: line 2: not valid JSON" in result.output
