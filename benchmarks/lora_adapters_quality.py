"""The shipped LoRA adapters (adapters/*) against their base model, on held-out questions of
their own domain: never the training files (GSM8K train, MMLU-Pro / MedMCQA train).

For each adapter, two experts of one shared base (SmolLM2-135M-Instruct, bf16 as in
pools/cpu-demo.yaml): the base and base+adapter, both with the system prompt the adapter was
trained with (from its training.json) and the user prompt the pipeline sends, greedy. A seeded
sample of N questions per test set, skipping the questions of samples/*.jsonl. Prints per test
set and expert: accuracy, `parsed` (share of replies our extractor reads an answer from),
`stated` (share with an explicit 'The answer is ...' statement; the extractor's last-number /
bare-letter fallbacks do not count) and mean output tokens.

    .venv/bin/python benchmarks/lora_adapters_quality.py [--n 40] [--json runs/lora_quality.json]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.adapters.data import question_key  # noqa: E402
from orchestrator.backends.base import BackendContext  # noqa: E402
from orchestrator.benchmarks import extract_answer, is_correct, read_benchmark  # noqa: E402
from orchestrator.benchmarks.prompts import messages_for  # noqa: E402
from orchestrator.types import ExpertSpec, GenerationRequest, Sampling  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "benchmarks"
# adapter -> held-out test sets of its domain (file, max new tokens)
SUITES = {
    "smol-math": [("gsm8k_test.jsonl", 160)],
    "smol-mc": [("mmlu_pro_test.json", 16), ("medmcqa_dev.json", 16)],
}
_STATED = re.compile(r"answer\s+is\s*:?\s*\S", re.I)


def sample(path: Path, n: int, seed: int, skip: set[str]):
    queries = [q for q in read_benchmark(path) if question_key(q.question) not in skip]
    return random.Random(seed).sample(queries, min(n, len(queries)))


def score(queries, results) -> dict:
    rows = []
    for q, r in zip(queries, results):
        answer = extract_answer(r.text, q.answer_type, q.options) if r.ok else None
        rows.append((bool(is_correct(answer, q.gold, q.answer_type)), answer is not None,
                     bool(r.ok and _STATED.search(r.text)), r.tokens_out))
    n = len(rows)
    return {"n": n, "accuracy": sum(r[0] for r in rows) / n, "parsed": sum(r[1] for r in rows) / n,
            "stated": sum(r[2] for r in rows) / n, "tokens_out": sum(r[3] for r in rows) / n,
            "errors": sum(not r.ok for r in results)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40, help="questions per test set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--adapters", default=",".join(SUITES), help="comma-separated adapter names")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()

    from orchestrator.backends.transformers_backend import TransformersBackend

    skip = {question_key(q.question) for f in ("demo.jsonl", "validation.jsonl")
            for q in read_benchmark(ROOT / "samples" / f)}
    backend = TransformersBackend(BackendContext(threads=args.threads))
    rows = []
    for name in args.adapters.split(","):
        folder = ROOT / "adapters" / name
        record = json.loads((folder / "training.json").read_text())
        common = {"backend": "transformers", "model": record["base"], "dtype": args.dtype,
                  "system_prompt": record["system_prompt"]}
        experts = [ExpertSpec(id=f"{name}:base", **common),
                   ExpertSpec(id=name, adapter=str(folder), **common)]
        for spec in experts:
            backend.load(spec)
        for file, max_tokens in SUITES[name]:
            queries = sample(DATA / file, args.n, args.seed, skip)
            for spec in experts:
                start = time.perf_counter()
                results = []
                for lo in range(0, len(queries), args.batch_size):
                    chunk = queries[lo: lo + args.batch_size]
                    results += backend.generate([
                        GenerationRequest(spec.id, messages_for(q, spec.system_prompt),
                                          Sampling(max_tokens=max_tokens), query_id=q.id)
                        for q in chunk])
                row = {"test_set": file, "expert": "base" if spec.adapter is None else f"+{name}",
                       "max_tokens": max_tokens, **score(queries, results),
                       "seconds": round(time.perf_counter() - start, 1)}
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
        for spec in experts:
            backend.release(spec.id)
    backend.close()

    print(f"\nheld-out questions, greedy, {args.dtype}; real loads: {backend.counts.base} base, "
          f"{backend.counts.adapter} adapter\n")
    print("| test set | expert | n | accuracy | parsed | stated | tokens out |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['test_set']} | {r['expert']} | {r['n']} | {100 * r['accuracy']:.1f}% | "
              f"{100 * r['parsed']:.0f}% | {100 * r['stated']:.0f}% | {r['tokens_out']:.0f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
