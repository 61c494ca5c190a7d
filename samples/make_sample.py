"""Rebuild samples/demo.jsonl and samples/validation.jsonl from ../shared/data (run from the
project root).

demo.jsonl: 12 MMLU-Pro questions (from the replay test file, options as a list), 12 MedMCQA
questions (options parsed out of the question text) and 12 GSM8K test questions, the shortest of
a seeded random draw so that the CPU demo stays quick. validation.jsonl: 8 of each from the
training splits (Symbolic-MoE's MMLU-Pro and MedMCQA train files, GSM8K train), which `make
demo` profiles the CPU pool on. Output: the generic JSONL format (`id`, `question`, `gold`,
optional `options`, `domain`, `source`).
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

DATA = Path("../shared/data")
OUT = Path("samples/demo.jsonl")
VALIDATION = Path("samples/validation.jsonl")
PER_SOURCE = 12
PER_SOURCE_VALIDATION = 8


def shortest(items, key, n, seed):
    pool = random.Random(seed).sample(items, min(len(items), 400))
    return sorted(pool, key=key)[:n]


def mmlu_pro():
    lines = [json.loads(x) for x in (DATA / "replay/mmlu_pro_replay_test.jsonl").open()]
    picked = shortest(lines, lambda x: len(x["question"]) + sum(map(len, x["options"])), PER_SOURCE, 1)
    for x in picked:
        yield {"id": x["id"], "question": x["question"], "gold": x["gold"],
               "options": x["options"], "domain": x["domain"], "source": "mmlu_pro"}


def medmcqa():
    items = json.loads((DATA / "benchmarks/medmcqa_dev.json").read_text())
    picked = shortest(list(enumerate(items)), lambda x: len(x[1]["question"]), PER_SOURCE, 2)
    for i, x in picked:
        stem, _, rest = x["question"].partition(" The options are:")
        options = [o.strip() for o in re.split(r"\([A-D]\)", rest)[1:]]
        yield {"id": f"medmcqa-{i}", "question": stem.strip(), "gold": x["gold_answer"],
               "options": options, "domain": "medicine", "source": "medmcqa"}


def gsm8k():
    lines = [json.loads(x) for x in (DATA / "benchmarks/gsm8k_test.jsonl").open()]
    picked = shortest(list(enumerate(lines, 1)), lambda x: len(x[1]["question"]), PER_SOURCE, 3)
    for lineno, x in picked:
        gold = x["answer"].rsplit("####", 1)[1].strip().replace(",", "")
        yield {"id": f"gsm8k-{lineno}", "question": x["question"], "gold": gold,
               "domain": "math", "source": "gsm8k"}


def inline_choice(name, source, domain_of, letters):
    """Symbolic-MoE train files: options written inline after ' The options are:'."""
    items = json.loads((DATA / f"benchmarks/{name}").read_text())
    picked = shortest(list(enumerate(items)), lambda x: len(x[1]["question"]),
                      PER_SOURCE_VALIDATION, 4)
    for i, x in picked:
        stem, _, rest = x["question"].partition(" The options are:")
        options = [o.strip() for o in re.split(rf"\([{letters}]\)", rest)[1:]]
        yield {"id": f"{source}-train-{i}", "question": stem.strip(), "gold": x["gold_answer"],
               "options": options, "domain": domain_of(x), "source": source}


def gsm8k_train():
    lines = [json.loads(x) for x in (DATA / "benchmarks/gsm8k_train.jsonl").open()]
    picked = shortest(list(enumerate(lines, 1)), lambda x: len(x[1]["question"]),
                      PER_SOURCE_VALIDATION, 5)
    for lineno, x in picked:
        gold = x["answer"].rsplit("####", 1)[1].strip().replace(",", "")
        yield {"id": f"gsm8k-train-{lineno}", "question": x["question"], "gold": gold,
               "domain": "math", "source": "gsm8k"}


def write(path: Path, rows: list[dict]) -> None:
    order = random.Random(0).sample(rows, len(rows))  # interleave the sources
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in order))
    print(f"wrote {len(order)} questions to {path}")


def main() -> None:
    write(OUT, [*mmlu_pro(), *medmcqa(), *gsm8k()])
    write(VALIDATION, [
        *inline_choice("mmlu_pro_train.json", "mmlu_pro", lambda x: x.get("category"), "A-J"),
        *inline_choice("medmcqa_train.json", "medmcqa", lambda x: "medicine", "A-D"),
        *gsm8k_train(),
    ])


if __name__ == "__main__":
    main()
