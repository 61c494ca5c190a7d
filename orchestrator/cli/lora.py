"""`orchestrate lora train`: fine-tune a small LoRA adapter on a benchmark file (CPU friendly)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import handle_errors, out
from .stepbar import StepBar

app = typer.Typer(help="Train LoRA adapters for pool experts.", no_args_is_help=True)


@app.command("train")
@handle_errors
def train(
    base: Annotated[str, typer.Option(help="Base model: a HF folder, a .gguf file or pkg://PACKAGE/FILE (as in pool manifests).")],
    data: Annotated[list[Path], typer.Option(help="Training questions with gold answers, any format `orchestrate run` reads (repeatable).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Adapter folder to write (atomically).")],
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 100,
    rank: Annotated[int, typer.Option(help="LoRA rank r.")] = 8,
    alpha: Annotated[int, typer.Option(help="LoRA alpha (scale = alpha / r).")] = 16,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW; warmup, then cosine).")] = 5e-4,
    batch_size: Annotated[int, typer.Option(help="Examples per step.")] = 8,
    max_length: Annotated[int, typer.Option(help="Drop examples longer than this many tokens.")] = 384,
    layers: Annotated[Optional[int], typer.Option(help="LoRA on the top N decoder layers only (cheaper backward); default all.")] = None,
    modules: Annotated[str, typer.Option(help="Comma-separated module names that get LoRA.")] = "q_proj,k_proj,v_proj,o_proj",
    system_prompt: Annotated[Optional[str], typer.Option(help="System prompt of the pool expert that will use the adapter (prompts are rendered exactly as at inference).")] = None,
    exclude: Annotated[Optional[list[Path]], typer.Option(help="Benchmark file whose questions are left out of training (repeatable), e.g. samples/validation.jsonl.")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Only the first N questions (after --exclude).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="auto, symbolic-moe, gsm8k or jsonl.")] = "auto",
    dtype: Annotated[str, typer.Option(help="Base weights while training: float32 or bfloat16.")] = "float32",
    seed: Annotated[int, typer.Option(help="Seed of the LoRA init and the data order.")] = 0,
    threads: Annotated[Optional[int], typer.Option(help="torch threads (default: all free cores).")] = None,
    force: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train a LoRA adapter of BASE on DATA; write it with its loss curve, record and README."""
    from ..extras import require_installed

    require_installed(("torch", "transformers", "peft"), "`orchestrate lora train`")
    from ..adapters.train import TrainSettings, train_adapter
    from ..errors import UserError

    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1 (got {limit}).")
    settings = TrainSettings(
        steps=steps, rank=rank, alpha=alpha, learning_rate=lr, batch_size=batch_size,
        max_length=max_length, seed=seed, dtype=dtype, threads=threads, last_layers=layers,
        target_modules=tuple(m.strip() for m in modules.split(",") if m.strip()),
    )
    command = _command(base, data, out_dir, steps, rank, alpha, lr, batch_size, max_length, modules,
                       system_prompt, exclude, limit, fmt, dtype, seed, layers)
    bar = StepBar(progress)
    try:
        result = train_adapter(
            base, data, out_dir, settings, system_prompt=system_prompt, fmt=fmt,
            exclude=exclude or (), limit=limit, force=force, command=command,
            on_start=bar.start, on_step=bar.step,
        )
    finally:
        bar.stop()
    out.print(f"adapter: {result.out} ({', '.join(result.files)})", markup=False)
    out.print(f"{result.n_examples} examples ({result.n_excluded} excluded, {result.n_too_long} too "
              f"long), {steps} steps in {result.train_seconds:.0f}s; loss {result.losses[0]:.3f} -> "
              f"{result.losses[-1]:.3f}", markup=False)


def _command(base, data, out_dir, steps, rank, alpha, lr, batch_size, max_length, modules,
             system_prompt, exclude, limit, fmt, dtype, seed, layers) -> str:
    args = ["orchestrate", "lora", "train", "--base", base]
    for path in data:
        args += ["--data", str(path)]
    args += ["--out", str(out_dir),
            "--steps", str(steps), "--rank", str(rank), "--alpha", str(alpha), "--lr", f"{lr:g}",
            "--batch-size", str(batch_size), "--max-length", str(max_length), "--modules", modules,
            "--format", fmt, "--dtype", dtype, "--seed", str(seed)]
    if system_prompt:
        args += ["--system-prompt", system_prompt]
    for path in exclude or ():
        args += ["--exclude", str(path)]
    if limit:
        args += ["--limit", str(limit)]
    if layers:
        args += ["--layers", str(layers)]
    return shlex.join(args)
