"""`orchestrate smore train|inspect`: S'MoRE adapters (structural mixtures of residual experts)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import handle_errors, out
from .lora_moe import _short
from .stepbar import StepBar

app = typer.Typer(help="S'MoRE: train a structural mixture of residual experts, inspect it.",
                  no_args_is_help=True)


def _ints(text: str | None, option: str) -> list[int] | None:
    from ..errors import UserError

    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{option} '{text}' must be comma-separated integers, one per level "
                        "(bottom level first), e.g. 4,4.") from None


@app.command("train")
@handle_errors
def train(
    base: Annotated[str, typer.Option(help="Base model: a HF folder, a .gguf file or pkg://PACKAGE/FILE (as in pool manifests).")],
    data: Annotated[list[Path], typer.Option(help="Training questions with gold answers, any format `orchestrate run` reads (repeatable).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Adapter folder to write (atomically).")],
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 100,
    experts: Annotated[str, typer.Option(help="Experts per level, bottom level first (comma-separated; the number of entries is the number of levels).")] = "4,4",
    fan_out: Annotated[Optional[str], typer.Option(help="Children each node picks per level (default 2 per level; ignored by --gate dense).")] = None,
    rank: Annotated[str, typer.Option(help="Rank of each level's experts.")] = "8,8",
    gate: Annotated[str, typer.Option(help="switch, noisy_topk or dense.")] = "switch",
    activation: Annotated[str, typer.Option(help="Expert activation: tanh, relu or identity.")] = "tanh",
    init: Annotated[str, typer.Option(help="w_final_zero, eq_1_layer or b_zero (all start equal to the base).")] = "w_final_zero",
    router_dim: Annotated[int, typer.Option(help="Router projection width d_down.")] = 24,
    key_dim: Annotated[int, typer.Option(help="Router key width k.")] = 32,
    balance: Annotated[float, typer.Option(help="Load-balance coefficient of every router.")] = 0.01,
    modules: Annotated[str, typer.Option(help="Comma-separated module names that get S'MoRE.")] = "gate_proj,up_proj,down_proj",
    layers: Annotated[Optional[int], typer.Option(help="S'MoRE on the top N decoder layers only (cheaper); default all.")] = None,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW; warmup, then cosine).")] = 1e-3,
    batch_size: Annotated[int, typer.Option(help="Examples per step.")] = 8,
    max_length: Annotated[int, typer.Option(help="Drop examples longer than this many tokens.")] = 384,
    system_prompt: Annotated[Optional[str], typer.Option(help="System prompt of the pool expert that will use the adapter.")] = None,
    exclude: Annotated[Optional[list[Path]], typer.Option(help="Benchmark file whose questions are left out of training (repeatable).")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Only the first N questions (after --exclude).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="auto, symbolic-moe, gsm8k or jsonl.")] = "auto",
    dtype: Annotated[str, typer.Option(help="Base weights while training: float32 or bfloat16.")] = "float32",
    seed: Annotated[int, typer.Option(help="Seed of the adapter init, the data order and the gate noise.")] = 0,
    threads: Annotated[Optional[int], typer.Option(help="torch threads (default: all free cores).")] = None,
    force: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train an S'MoRE adapter of BASE on DATA; write it with its loss curve, record and README."""
    from ..adapters.smore.config import SmoreConfig
    from ..adapters.smore.train import SmoreSettings, level_means, train_smore
    from ..config import validate_model
    from ..errors import UserError

    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1 (got {limit}).")
    sizes = _ints(experts, "--experts")
    fans = _ints(fan_out, "--fan-out")
    if fans is None and gate != "dense":
        fans = [min(2, s) for s in sizes]
    config = validate_model(SmoreConfig, {
        "base_model": base, "experts": sizes, "fan_out": fans, "rank": _ints(rank, "--rank"),
        "gate": gate, "activation": activation, "init": init, "router_dim": router_dim,
        "key_dim": key_dim, "balance": balance,
        "target_modules": [m.strip() for m in modules.split(",") if m.strip()],
        "last_layers": layers, "system_prompt": system_prompt}, "S'MoRE options")
    settings = SmoreSettings(steps=steps, learning_rate=lr, batch_size=batch_size,
                             max_length=max_length, seed=seed, dtype=dtype, threads=threads,
                             log_every=max(1, steps // 4))
    bar = StepBar(progress, "smore", ("loss", "balance"))

    def show_usage(step: int, usage) -> None:
        shares = "; ".join(f"level {lv}: " + " ".join(f"{x:.0%}" for x in row)
                           for lv, row in enumerate(level_means(usage)))
        bar.log(f"step {step}: expert usage (mean over {len(usage)} modules): {shares}")

    try:
        result = train_smore(base, data, out_dir, config, settings, fmt=fmt,
                             exclude=exclude or (), limit=limit, force=force,
                             command=_command(config, data, out_dir, settings, exclude, limit, fmt),
                             on_start=bar.start, on_step=bar.step, on_usage=show_usage)
    finally:
        bar.stop()
    out.print(f"adapter: {result.out} ({', '.join(sorted(p.name for p in result.out.iterdir()))})",
              markup=False)
    out.print(f"{result.n_examples} examples ({result.n_too_long} too long), {steps} steps in "
              f"{result.train_seconds:.0f}s; {result.n_params:,} trainable parameters; loss "
              f"{result.losses[0]:.3f} -> {result.losses[-1]:.3f}", markup=False)
    _usage_table(result.usage, "expert usage per level (last steps)")


@app.command("inspect")
@handle_errors
def inspect(
    folder: Annotated[Path, typer.Argument(help="A folder written by `orchestrate smore train`.")],
    prompt: Annotated[str, typer.Option(help="The user message to generate from.")],
    max_tokens: Annotated[int, typer.Option(help="Tokens to generate (greedy).")] = 24,
    layers: Annotated[Optional[str], typer.Option(help="Comma-separated decoder layer numbers to show per token (default: first, middle, last adapted).")] = None,
    module: Annotated[Optional[str], typer.Option(help="Which adapted module of those layers to show (default: the first, e.g. down_proj).")] = None,
    base: Annotated[Optional[str], typer.Option(help="Base model, if not the one recorded in the folder.")] = None,
    threads: Annotated[Optional[int], typer.Option(help="torch threads (default: all free cores).")] = None,
) -> None:
    """Show, per generated token, the path chosen through the expert tree in a few layers, and
    each level's expert usage."""
    from rich.table import Table
    from rich.text import Text

    from ..adapters.smore.inspect import inspect_generation, load_smore, pick_modules
    from ..errors import UserError

    try:
        numbers = [int(n) for n in layers.split(",")] if layers else None
    except ValueError:
        raise UserError(f"--layers '{layers}' must be comma-separated layer numbers, e.g. 0,15,29.") from None
    smore, tokenizer = load_smore(folder, base, threads=threads)
    shown = pick_modules(list(smore.layers), numbers, module)
    result = inspect_generation(smore, tokenizer, prompt, max_tokens=max_tokens, layers=shown)
    c = smore.config
    table = Table(title=f"tree per generated token (levels top first; expert:weight, children in "
                        f"[]; s={c.experts}, f={c.fan()})")
    table.add_column("#", justify="right")
    table.add_column("token")
    for path in shown:
        table.add_column(_short(path))
    for i, row in enumerate(result.tokens):
        table.add_row(str(i), Text(repr(row.token)), *(Text(row.paths[path]) for path in shown))
    out.print(table)
    out.print(f"answer: {result.text}", markup=False)
    _usage_table(result.usage, f"expert usage per level ({result.prompt_tokens} prompt + "
                               f"{len(result.tokens)} generated tokens)")


def _usage_table(usage: dict[str, list[list[float]]], title: str) -> None:
    from rich.table import Table

    if not usage:
        return
    table = Table(title=title)
    table.add_column("module")
    levels = len(next(iter(usage.values())))
    for lv in range(levels):
        table.add_column(f"level {lv}", justify="left")
    for path, rows in usage.items():
        table.add_row(_short(path), *(" ".join(f"{x:.0%}" for x in row) for row in rows))
    out.print(table)


def _command(config, data, out_dir, settings, exclude, limit, fmt) -> str:
    """The command line that reproduces this training (recorded in the adapter's README)."""
    args = ["orchestrate", "smore", "train", "--base", config.base_model]
    for path in data:
        args += ["--data", str(path)]
    args += ["--out", str(out_dir), "--steps", str(settings.steps),
             "--experts", ",".join(map(str, config.experts)), "--rank", ",".join(map(str, config.rank))]
    if config.fan_out is not None:
        args += ["--fan-out", ",".join(map(str, config.fan_out))]
    args += ["--gate", config.gate, "--activation", config.activation, "--init", config.init,
             "--router-dim", str(config.router_dim), "--key-dim", str(config.key_dim),
             "--balance", f"{config.balance:g}", "--modules", ",".join(config.target_modules)]
    if config.last_layers:
        args += ["--layers", str(config.last_layers)]
    args += ["--lr", f"{settings.learning_rate:g}", "--batch-size", str(settings.batch_size),
             "--max-length", str(settings.max_length), "--format", fmt, "--dtype", settings.dtype,
             "--seed", str(settings.seed)]
    if config.system_prompt:
        args += ["--system-prompt", config.system_prompt]
    for path in exclude or ():
        args += ["--exclude", str(path)]
    if limit:
        args += ["--limit", str(limit)]
    return shlex.join(args)
