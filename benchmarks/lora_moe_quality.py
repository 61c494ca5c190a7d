"""The shipped LoRA-MoE gate (adapters/smol-moe) against its single LoRA experts and the base, on
a held-out mixed set of the experts' domains (never the training files).

Held-out: a seeded sample of N questions from each of GSM8K test, MMLU-Pro test and MedMCQA dev,
skipping the questions of samples/*.jsonl. Variants, each with the system prompt it was trained
under (the base gets the gate's): the base model, each LoRA expert alone (PEFT), and the mixture.
Per variant: the mean loss of the gold answer tokens (teacher-forced, the training objective;
gold answers as `lora train` writes them) over the whole set, and per test set greedy accuracy,
`parsed` and `stated` (see lora_adapters_quality.py), generated through the transformers
backend exactly as a pool expert (`adapter:` / `lora_moe:`).

    .venv/bin/python benchmarks/lora_moe_quality.py [--n 30] [--moe adapters/smol-moe]
        [--json runs/lora_moe_quality.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from lora_adapters_quality import DATA, sample, score  # noqa: E402

from orchestrator.adapters.data import Example, answer_text, question_key, tokenize  # noqa: E402
from orchestrator.backends.base import BackendContext  # noqa: E402
from orchestrator.benchmarks import read_benchmark  # noqa: E402
from orchestrator.benchmarks.prompts import messages_for  # noqa: E402
from orchestrator.types import ExpertSpec, GenerationRequest, Sampling  # noqa: E402

TEST_SETS = [("gsm8k_test.jsonl", 160), ("mmlu_pro_test.json", 16), ("medmcqa_dev.json", 16)]


def variants(moe_dir: Path, dtype: str) -> list[ExpertSpec]:
    from orchestrator.adapters.lora_moe.config import LoraMoeConfig

    moe = LoraMoeConfig.load(moe_dir)
    common = {"backend": "transformers", "model": moe.base_model, "dtype": dtype}
    specs = [ExpertSpec(id="base", system_prompt=moe.system_prompt, **common)]
    for name, folder in zip(moe.names(), moe.expert_paths(moe_dir)):
        record = json.loads((folder / "training.json").read_text())
        specs.append(ExpertSpec(id=name, adapter=str(folder.resolve()),
                                system_prompt=record["system_prompt"], **common))
    specs.append(ExpertSpec(id=moe_dir.name, lora_moe=str(moe_dir.resolve()),
                            system_prompt=moe.system_prompt, **common))
    return specs


def gold_answer_loss(spec: ExpertSpec, queries, dtype: str, batch_size: int) -> float:
    """Mean cross-entropy of the gold answer tokens under `spec`'s model (token-weighted)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from orchestrator.adapters.train import IGNORE, _collate, answer_loss
    from orchestrator.modelref import local_folder, resolve

    folder = local_folder(resolve(spec.model))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype)).eval()
    if spec.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, spec.adapter).eval()
    if spec.lora_moe:
        from orchestrator.adapters.lora_moe import LoraMoeModel

        model = LoraMoeModel.load(spec.lora_moe, model).eval()
    items = [tokenize(tokenizer, Example(q.id, messages_for(q, spec.system_prompt), answer_text(q)))
             for q in queries]
    total, count = 0.0, 0
    with torch.inference_mode():
        for lo in range(0, len(items), batch_size):
            batch = _collate(items[lo: lo + batch_size], tokenizer.pad_token_id or 0)
            n = int((batch["labels"][:, 1:] != IGNORE).sum())  # answer tokens predicted
            total += float(answer_loss(model, batch)) * n
            count += n
    return total / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30, help="questions per test set")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--moe", type=Path, default=ROOT / "adapters" / "smol-moe")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()

    import torch

    from orchestrator.backends.transformers_backend import TransformersBackend

    torch.set_num_threads(args.threads)
    skip = {question_key(q.question) for f in ("demo.jsonl", "validation.jsonl")
            for q in read_benchmark(ROOT / "samples" / f)}
    sets = [(file, tokens, sample(DATA / file, args.n, args.seed, skip)) for file, tokens in TEST_SETS]
    mixed = [q for _, _, qs in sets for q in qs]
    specs = variants(args.moe, args.dtype)
    backend = TransformersBackend(BackendContext(threads=args.threads))
    rows = []
    for spec in specs:
        start = time.perf_counter()
        loss = gold_answer_loss(spec, mixed, "float32", args.batch_size)
        backend.load(spec)
        for file, max_tokens, queries in sets:
            results = []
            for lo in range(0, len(queries), args.batch_size):
                results += backend.generate([
                    GenerationRequest(spec.id, messages_for(q, spec.system_prompt),
                                      Sampling(max_tokens=max_tokens), query_id=q.id)
                    for q in queries[lo: lo + args.batch_size]])
            rows.append({"variant": spec.id, "test_set": file, "answer_loss": round(loss, 4),
                         **score(queries, results)})
        backend.release(spec.id)
        print(f"{spec.id}: answer loss {loss:.3f} ({time.perf_counter() - start:.0f}s)",
              file=sys.stderr, flush=True)
    backend.close()

    print(f"\nheld-out mixed set: {args.n} questions from each of "
          f"{', '.join(f for f, _, _ in sets)}; greedy, {args.dtype}; answer loss in float32\n")
    print("| variant | answer loss (all) | test set | accuracy | parsed | stated | tokens out |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {r['answer_loss']:.3f} | {r['test_set']} | "
              f"{100 * r['accuracy']:.1f}% | {100 * r['parsed']:.0f}% | {100 * r['stated']:.0f}% | "
              f"{r['tokens_out']:.0f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
