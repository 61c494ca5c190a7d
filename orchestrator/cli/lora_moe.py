"""`orchestrate lora-moe train|inspect`: token-level mixtures of LoRA experts inside one model."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import handle_errors, out
from .stepbar import StepBar

app = typer.Typer(help="Token-level LoRA-MoE: train a gate over LoRA experts, inspect it.",
                  no_args_is_help=True)


@app.command("train")
@handle_errors
def train(
    base: Annotated[str, typer.Option(help="Base model the experts were trained on (a HF folder, a .gguf file or pkg://PACKAGE/FILE).")],
    experts: Annotated[str, typer.Option(help="Comma-separated PEFT LoRA adapter folders (the experts).")],
    data: Annotated[list[Path], typer.Option(help="Training questions with gold answers, any format `orchestrate run` reads (repeatable; mix the experts' domains).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write the gate to (atomically).")],
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 100,
    top_k: Annotated[int, typer.Option(help="Experts per token (the most, with --top-p).")] = 2,
    top_p: Annotated[Optional[float], typer.Option(help="Variable experts per token: the fewest whose gate mass reaches this.")] = None,
    null_experts: Annotated[int, typer.Option(help="Experts that compute nothing (a token may use fewer real experts).")] = 0,
    temperature: Annotated[float, typer.Option(help="Gate softmax temperature.")] = 1.0,
    renormalize: Annotated[bool, typer.Option(help="Divide the chosen experts' weights by their sum (Mixtral) instead of using their gate probabilities.")] = False,
    balance: Annotated[float, typer.Option(help="Weight of the load-balance loss.")] = 0.01,
    gate: Annotated[str, typer.Option(help="per-layer (a gate per adapted module) or shared (one gate for all).")] = "per-layer",
    lr: Annotated[float, typer.Option(help="Peak learning rate of the gates (AdamW; warmup, then cosine).")] = 5e-3,
    batch_size: Annotated[int, typer.Option(help="Examples per step.")] = 8,
    max_length: Annotated[int, typer.Option(help="Drop examples longer than this many tokens.")] = 384,
    system_prompt: Annotated[Optional[str], typer.Option(help="System prompt of the pool expert that will serve the mixture.")] = None,
    exclude: Annotated[Optional[list[Path]], typer.Option(help="Benchmark file whose questions are left out of training (repeatable).")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Only the first N questions (after --exclude).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="auto, symbolic-moe, gsm8k or jsonl.")] = "auto",
    dtype: Annotated[str, typer.Option(help="Base weights while training: float32 or bfloat16.")] = "float32",
    seed: Annotated[int, typer.Option(help="Seed of the gate init and the data order.")] = 0,
    threads: Annotated[Optional[int], typer.Option(help="torch threads (default: all free cores).")] = None,
    force: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train only the gates of a LoRA-MoE over frozen EXPERTS of BASE on DATA."""
    from ..extras import require_installed

    require_installed(("torch", "transformers", "peft"), "`orchestrate lora-moe train`")
    from ..adapters.lora_moe.config import LoraMoeConfig
    from ..adapters.lora_moe.train import GateSettings, train_gate
    from ..config import validate_model
    from ..errors import UserError

    folders = [e.strip() for e in experts.split(",") if e.strip()]
    if not folders:
        raise UserError("--experts is empty; give comma-separated LoRA adapter folders.")
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1 (got {limit}).")
    moe = validate_model(LoraMoeConfig, {
        "base_model": base, "experts": folders, "top_k": top_k, "top_p": top_p,
        "null_experts": null_experts, "temperature": temperature, "renormalize": renormalize,
        "aux_loss_coef": balance,
        "gate": gate, "system_prompt": system_prompt}, "LoRA-MoE options")
    settings = GateSettings(steps=steps, learning_rate=lr, batch_size=batch_size,
                            max_length=max_length, seed=seed, dtype=dtype, threads=threads,
                            log_every=max(1, steps // 4))
    bar = StepBar(progress, "gate", ("loss", "balance"))
    names = moe.names() + [f"null{i}" for i in range(null_experts)]

    def show_usage(step: int, usage: dict[str, list[float]]) -> None:
        from ..adapters.lora_moe.train import mean_shares

        shares = ", ".join(f"{n} {x:.0%}" for n, x in zip(names, mean_shares(usage)))
        bar.log(f"step {step}: expert usage (mean over {len(usage)} layers): {shares}")

    try:
        result = train_gate(base, folders, data, out_dir, moe, settings, fmt=fmt,
                            exclude=exclude or (), limit=limit, force=force,
                            command=_command(moe, data, out_dir, settings, exclude, limit, fmt),
                            on_start=bar.start, on_step=bar.step, on_usage=show_usage)
    finally:
        bar.stop()
    out.print(f"gate: {result.out} ({', '.join(sorted(p.name for p in result.out.iterdir()))})",
              markup=False)
    out.print(f"{result.n_examples} examples ({result.n_too_long} too long), {steps} steps in "
              f"{result.train_seconds:.0f}s; loss {result.losses[0]:.3f} -> {result.losses[-1]:.3f}",
              markup=False)
    _usage_table(names, result.usage, title="expert usage per layer (last steps)")


@app.command("inspect")
@handle_errors
def inspect(
    folder: Annotated[Path, typer.Argument(help="A folder written by `orchestrate lora-moe train`.")],
    prompt: Annotated[str, typer.Option(help="The user message to generate from.")],
    max_tokens: Annotated[int, typer.Option(help="Tokens to generate (greedy).")] = 24,
    layers: Annotated[Optional[str], typer.Option(help="Comma-separated decoder layer numbers to show per token (default: first, middle, last).")] = None,
    module: Annotated[Optional[str], typer.Option(help="Which adapted module of those layers to show (default: the first, e.g. q_proj).")] = None,
    base: Annotated[Optional[str], typer.Option(help="Base model, if not the one recorded in the folder.")] = None,
    threads: Annotated[Optional[int], typer.Option(help="torch threads (default: all free cores).")] = None,
) -> None:
    """Show, per generated token, which experts the gate chose in a few layers, and usage."""
    from rich.table import Table

    from ..extras import require_installed

    require_installed(("torch", "transformers", "peft"), "`orchestrate lora-moe inspect`")
    from ..adapters.lora_moe.inspect import inspect_generation, load_mixture, pick_layers
    from ..errors import UserError

    try:
        numbers = [int(n) for n in layers.split(",")] if layers else None
    except ValueError:
        raise UserError(f"--layers '{layers}' must be comma-separated layer numbers, e.g. 0,15,29.") from None
    moe, tokenizer = load_mixture(folder, base, threads=threads)
    shown = pick_layers(list(moe.layers), numbers, module)
    result = inspect_generation(moe, tokenizer, prompt, max_tokens=max_tokens, layers=shown)
    table = Table(title=f"experts chosen per generated token (top-{moe.config.top_k})")
    table.add_column("#", justify="right")
    table.add_column("token")
    for path in shown:
        table.add_column(_short(path))
    for i, row in enumerate(result.tokens):
        table.add_row(str(i), repr(row.token), *(
            " + ".join(f"{name} {w:.2f}" for name, w in row.choices[path]) for path in shown))
    out.print(table)
    out.print(f"answer: {result.text}", markup=False)
    _usage_table(result.names, result.usage,
                 title=f"usage shares per layer ({result.prompt_tokens} prompt + "
                       f"{len(result.tokens)} generated tokens)")


def _usage_table(names: list[str], usage: dict[str, list[float]], title: str) -> None:
    from rich.table import Table

    if not usage:
        return
    table = Table(title=title)
    table.add_column("layer")
    for name in names:
        table.add_column(name, justify="right")
    for path, shares in usage.items():
        table.add_row(_short(path), *(f"{x:.0%}" for x in shares))
    out.print(table)


def _short(path: str) -> str:
    """model.layers.12.self_attn.q_proj -> L12.q_proj"""
    parts = path.split(".")
    number = next((p for p in parts if p.isdigit()), "?")
    return f"L{number}.{parts[-1]}"


def _command(moe, data, out_dir, settings, exclude, limit, fmt) -> str:
    """The command line that reproduces this training (recorded in the gate's README)."""
    args = ["orchestrate", "lora-moe", "train", "--base", moe.base_model,
            "--experts", ",".join(moe.experts)]
    for path in data:
        args += ["--data", str(path)]
    args += ["--out", str(out_dir), "--steps", str(settings.steps), "--top-k", str(moe.top_k)]
    if moe.top_p is not None:
        args += ["--top-p", f"{moe.top_p:g}"]
    if moe.null_experts:
        args += ["--null-experts", str(moe.null_experts)]
    if moe.renormalize:
        args += ["--renormalize"]
    args += ["--temperature", f"{moe.temperature:g}", "--balance", f"{moe.aux_loss_coef:g}",
             "--gate", moe.gate, "--lr", f"{settings.learning_rate:g}",
             "--batch-size", str(settings.batch_size), "--max-length", str(settings.max_length),
             "--format", fmt, "--dtype", settings.dtype, "--seed", str(settings.seed)]
    if moe.system_prompt:
        args += ["--system-prompt", moe.system_prompt]
    for path in exclude or ():
        args += ["--exclude", str(path)]
    if limit:
        args += ["--limit", str(limit)]
    return shlex.join(args)
