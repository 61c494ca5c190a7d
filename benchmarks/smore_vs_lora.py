"""LoRA vs LoRA-MoE vs S'MoRE on SmolLM2-135M-Instruct at equal trainable parameters: held-out
gold-answer loss after identical training, and decode-step time relative to the base.

All three adapt the FFN projections (gate, up, down) of the top --layers decoder layers, train
from the same seed on the same examples in the same order (the bundled GSM8K, MMLU-Pro and
MedMCQA training splits, minus samples/*.jsonl), for the same steps, batch and learning rate:
- LoRA: PEFT, rank R, alpha 2R (the paper's baseline setting), R picked to match the budget;
- LoRA-MoE: the project's LoraMoeLinear with 8 rank-2 experts whose A and B train together
  with its gate (MixLoRA-style: standard LoRA init, top-2, renormalised, balance 0.01);
- S'MoRE: 2 levels of 4 rank-2 experts, fan-out (2, 2), switch gate, tanh (the paper's 4-4
  configuration, paired with MixLoRA(8) at equal expert rank).
The script checks that the three trainable counts are within 5% of each other.

Held-out measure (as benchmarks/lora_moe_quality.py): the token-weighted mean cross-entropy of
the gold answers (teacher-forced) on a seeded sample of --n questions from each of GSM8K test,
MMLU-Pro test and MedMCQA dev. Speed: greedy decode step, (t_N - t_1) / (N - 1), median over
--repeats interleaved rounds, float32 weights as trained, at batch 1 and 8.

    .venv/bin/python benchmarks/smore_vs_lora.py [--steps 60] [--batch-size 4] [--layers 6]
        [--n 30] [--threads 1] [--json runs/smore_vs_lora.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from lora_adapters_quality import DATA, sample  # noqa: E402
from lora_moe_quality import TEST_SETS  # noqa: E402
from lora_moe_speed import PROMPTS, SMOLLM2, timed_generate  # noqa: E402

from orchestrator.adapters.data import Example, answer_text, load_examples, question_key, tokenize  # noqa: E402
from orchestrator.benchmarks import read_benchmark  # noqa: E402
from orchestrator.benchmarks.prompts import messages_for  # noqa: E402

FFN = ("gate_proj", "up_proj", "down_proj")
TRAIN = ["gsm8k_train.jsonl", "mmlu_pro_train.json", "medmcqa_train.json"]
SYSTEM = ("You are a careful expert. For a math problem, work through it in a few short steps and "
          "finish with 'The answer is N'. For a multiple-choice question, reply with one line of "
          "the form 'The answer is (X)'.")
TARGET_SPEED = 1.6


def build_lora(model, rank: int, layers: int, seed: int):
    from orchestrator.adapters.train import TrainSettings, _with_lora

    settings = TrainSettings(rank=rank, alpha=2 * rank, target_modules=FFN, last_layers=layers,
                             seed=seed)
    peft_model = _with_lora(model, settings)
    return peft_model, [p for p in peft_model.parameters() if p.requires_grad], lambda: 0.0


def build_lora_moe(model, experts: int, rank: int, layers: int, seed: int, tmp: Path):
    """The project's LoRA-MoE layer over `experts` fresh LoRA experts (A random, B = 0) whose
    matrices are made trainable next to the gate."""
    import torch
    from peft import LoraConfig, get_peft_model

    from orchestrator.adapters.lora_moe import LoraMoeConfig, LoraMoeModel

    total = model.config.num_hidden_layers
    cfg = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(FFN),
                     layers_to_transform=list(range(total - layers, total)))
    template = get_peft_model(copy.deepcopy(model), cfg)
    folders = []
    for i in range(experts):  # standard LoRA init per expert: A seeded kaiming, B = 0
        torch.manual_seed(seed * 100 + i)
        for module in template.modules():
            if hasattr(module, "reset_lora_parameters") and "default" in getattr(module, "lora_A", {}):
                module.reset_lora_parameters("default", True)
        template.save_pretrained(str(tmp / f"e{i}"))
        folders.append(str(tmp / f"e{i}"))
    del template
    config = LoraMoeConfig(base_model=SMOLLM2, experts=folders, top_k=2, renormalize=True)
    moe = LoraMoeModel.from_experts(model, config, seed=seed)
    params = moe.gate_parameters()
    for layer in moe.layers.values():
        for name in ("lora_A", "lora_B"):
            tensor = layer._buffers.pop(name)
            setattr(layer, name, torch.nn.Parameter(tensor.contiguous()))
            params.append(getattr(layer, name))
    return moe, params, lambda: config.aux_loss_coef * moe.aux_loss()


def build_smore(model, layers: int, seed: int):
    from orchestrator.adapters.smore import SmoreConfig, SmoreModel

    config = SmoreConfig(base_model=SMOLLM2, experts=[4, 4], fan_out=[2, 2], rank=[2, 2],
                         router_dim=4, key_dim=8, last_layers=layers, system_prompt=SYSTEM)
    smore = SmoreModel(model, config, seed=seed)
    smore.context.collect_aux = True
    return smore, smore.trainable_parameters(), smore.aux_loss


def fit(model, params, aux, data, pad_id: int, args) -> tuple[list[float], float]:
    import torch

    from orchestrator.adapters import train as loop

    schedule_of = loop.TrainSettings(steps=args.steps, warmup_steps=max(1, args.steps // 10))
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: loop.learning_rate_factor(s, schedule_of))
    batches = loop._batches(len(data), args.batch_size, args.seed)
    context = getattr(model, "context", None)
    torch.manual_seed(args.seed)
    model.train()
    losses, start = [], time.perf_counter()
    for step in range(args.steps):
        batch = loop._collate([data[i] for i in next(batches)], pad_id)
        if context is not None:
            context.mask = batch["attention_mask"].flatten().bool()
        loss = loop.answer_loss(model, batch)
        (loss + aux()).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if (step + 1) % max(1, args.steps // 5) == 0:
            print(f"  step {step + 1}: loss {losses[-1]:.3f}", file=sys.stderr, flush=True)
    if context is not None:
        context.mask = None
        if hasattr(context, "collect_aux"):
            context.collect_aux = False
    model.eval()
    return losses, time.perf_counter() - start


def held_out_loss(model, items, pad_id: int, batch_size: int = 8) -> float:
    import torch

    from orchestrator.adapters.train import IGNORE, _collate, answer_loss

    total, count = 0.0, 0
    with torch.inference_mode():
        for lo in range(0, len(items), batch_size):
            batch = _collate(items[lo: lo + batch_size], pad_id)
            n = int((batch["labels"][:, 1:] != IGNORE).sum())
            total += float(answer_loss(model, batch)) * n
            count += n
    return total / count


def decode_steps(models: dict, tokenizer, batches: list[int], new_tokens: int, repeats: int):
    out = {}
    tokenizer.padding_side = "left"
    for batch in batches:
        prompts = (PROMPTS * batch)[:batch]
        enc = tokenizer(prompts, return_tensors="pt", padding=True)
        steps = {name: [] for name in models}
        for _ in range(repeats):
            for name, model in models.items():  # interleaved: noise hits all alike
                long = timed_generate(model, enc, new_tokens, tokenizer.pad_token_id, True)
                short = timed_generate(model, enc, 1, tokenizer.pad_token_id, True)
                steps[name].append((long - short) / (new_tokens - 1))
        out[batch] = {name: statistics.median(v) for name, v in steps.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-length", type=int, default=192)
    parser.add_argument("--layers", type=int, default=6, help="adapt the top N decoder layers")
    parser.add_argument("--n", type=int, default=30, help="held-out questions per test set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import torch

    from orchestrator.adapters.train import _load_base, _tokenize_all
    from orchestrator.modelref import local_folder, resolve

    torch.set_num_threads(args.threads)
    base, tokenizer = _load_base(local_folder(resolve(SMOLLM2)), "float32", SMOLLM2)
    base.eval()
    pad = tokenizer.pad_token_id
    skip = [ROOT / "samples" / f for f in ("validation.jsonl", "demo.jsonl")]
    examples, _ = load_examples([DATA / f for f in TRAIN], SYSTEM, exclude=skip)
    train, _ = _tokenize_all(tokenizer, examples, args.max_length)
    held = {question_key(q.question) for f in skip for q in read_benchmark(f)}
    tests = {}
    for file, _tokens in TEST_SETS:
        queries = sample(DATA / file, args.n, 1, held)
        tests[file] = [tokenize(tokenizer, Example(q.id, messages_for(q, SYSTEM), answer_text(q)))
                       for q in queries]

    rows, models = [], {"base": base}
    with tempfile.TemporaryDirectory() as tmp:
        smore = build_smore(copy.deepcopy(base), args.layers, args.seed)
        budget = sum(p.numel() for p in smore[1])
        per_rank = sum(m.in_features + m.out_features for m in smore[0].layers.values())
        rank = round(budget / per_rank)
        builders = {
            f"LoRA r={rank}": lambda: build_lora(copy.deepcopy(base), rank, args.layers, args.seed),
            "LoRA-MoE 8x r=2 top-2": lambda: build_lora_moe(copy.deepcopy(base), 8, 2, args.layers,
                                                            args.seed, Path(tmp)),
            "S'MoRE 4-4 r=(2,2) f=(2,2)": lambda: smore,
        }
        counts = {}
        for name, build in builders.items():
            model, params, aux = build()
            counts[name] = sum(p.numel() for p in params)
            print(f"{name}: {counts[name]:,} trainable parameters; training", file=sys.stderr, flush=True)
            losses, seconds = fit(model, params, aux, train, pad, args)
            held_losses = {file: held_out_loss(model, items, pad) for file, items in tests.items()}
            every = [i for items in tests.values() for i in items]
            rows.append({"variant": name, "trainable": counts[name], "train_seconds": round(seconds),
                         "train_loss_last10": round(sum(losses[-10:]) / len(losses[-10:]), 4),
                         "held_out_loss": round(held_out_loss(model, every, pad), 4),
                         **{f"loss_{f.split('.')[0]}": round(v, 4) for f, v in held_losses.items()}})
            print(f"  held-out loss {rows[-1]['held_out_loss']:.4f}", file=sys.stderr, flush=True)
            models[name] = model
        spread = max(counts.values()) / min(counts.values()) - 1
        if spread > 0.05:
            raise SystemExit(f"trainable counts differ by {spread:.1%} (> 5%): {counts}")
        base_items = [i for items in tests.values() for i in items]
        rows.insert(0, {"variant": "base", "trainable": 0, "held_out_loss": round(
            held_out_loss(base, base_items, pad), 4), **{
            f"loss_{f.split('.')[0]}": round(held_out_loss(base, items, pad), 4)
            for f, items in tests.items()}})
        speed = decode_steps(models, tokenizer, [1, 8], args.new_tokens, args.repeats)

    print(f"\nSmolLM2-135M-Instruct, FFN of the top {args.layers} layers, {args.steps} steps x "
          f"{args.batch_size}, lr {args.lr:g}, seed {args.seed}; trainable counts within "
          f"{spread:.1%}; held-out: {args.n} questions from each of "
          f"{', '.join(f for f, _ in TEST_SETS)}\n")
    print("| variant | trainable | held-out loss (all) | GSM8K | MMLU-Pro | MedMCQA | "
          "step b=1 (x base) | step b=8 (x base) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        name = r["variant"]
        r["step_ms"] = {b: round(1000 * speed[b][name], 2) for b in speed}
        r["step_ratio"] = {b: round(speed[b][name] / speed[b]["base"], 3) for b in speed}
        sets = [r[f"loss_{f.split('.')[0]}"] for f, _ in TEST_SETS]
        print(f"| {name} | {r['trainable']:,} | {r['held_out_loss']:.4f} | "
              + " | ".join(f"{x:.4f}" for x in sets)
              + f" | {r['step_ms'][1]:.1f} ms ({r['step_ratio'][1]:.2f}x) | "
              f"{r['step_ms'][8]:.1f} ms ({r['step_ratio'][8]:.2f}x) |")
    smore_row = rows[-1]
    others = [r["held_out_loss"] for r in rows[1:-1]]
    print(f"\nS'MoRE held-out loss below both others: {smore_row['held_out_loss'] < min(others)}; "
          f"decode step at batch 1 <= {TARGET_SPEED}x base: "
          f"{smore_row['step_ratio'][1] <= TARGET_SPEED}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)},
                                         "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
