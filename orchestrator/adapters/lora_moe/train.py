"""`orchestrate lora-moe train`: learn the gates of a LoRA-MoE model over frozen LoRA experts.

The base model and the experts stay frozen; only the gates train, on next-token loss over the
answer tokens plus `aux_loss_coef` x the load-balance loss. Examples come from benchmark files
exactly as `orchestrate lora train` reads them (same prompt rendering, loss on the answer only).
OUT is written atomically: gate.safetensors, lora_moe_config.json (expert folders relative to
OUT), training.json (settings, losses, expert usage per layer), loss.png and README.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ...errors import UserError
from ..data import load_examples
from ..steps import StepCallback, routed_steps
from ..train import (
    TrainSettings,
    _load_base,
    _tokenize_all,
    check_out,
    loss_ends,
    readme_footer,
    write_trained,
)
from .config import LoraMoeConfig


@dataclass(frozen=True)
class GateSettings:
    steps: int = 100
    learning_rate: float = 5e-3
    batch_size: int = 8
    max_length: int = 384
    seed: int = 0
    dtype: str = "float32"
    warmup_steps: int = 5
    threads: int | None = None
    log_every: int = 25

    def validate(self) -> None:
        as_lora = TrainSettings(steps=self.steps, learning_rate=self.learning_rate,
                                batch_size=self.batch_size, max_length=self.max_length,
                                seed=self.seed, dtype=self.dtype, warmup_steps=self.warmup_steps)
        as_lora.validate()
        if self.log_every < 1:
            raise UserError(f"log_every must be at least 1 (got {self.log_every}).")

    def schedule(self) -> TrainSettings:
        return TrainSettings(steps=self.steps, warmup_steps=self.warmup_steps)


@dataclass
class GateResult:
    out: Path
    losses: list[float]  # next-token loss per step (without the balance term)
    aux_losses: list[float]
    usage: dict[str, list[float]]  # layer -> share of token slots per choice, last log window
    usage_log: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    n_examples: int = 0
    n_too_long: int = 0


def train_gate(
    base: str, experts: Sequence[str | Path], data: str | Path | Sequence[str | Path],
    out: str | Path, moe: LoraMoeConfig | None = None, settings: GateSettings | None = None, *,
    fmt: str = "auto", exclude: Sequence[str | Path] = (), limit: int | None = None,
    force: bool = False, command: str | None = None,
    on_start: Callable[[int], None] | None = None, on_step: StepCallback | None = None,
    on_usage: Callable[[int, dict[str, list[float]]], None] | None = None,
) -> GateResult:
    """Train the gates of a LoRA-MoE over `experts` (PEFT adapter folders of `base`) on `data`;
    `moe` holds the mixture's settings (top_k, top_p, null experts...; its base and experts are
    replaced by the arguments). Inputs are checked before any model loads."""
    from ...modelref import local_folder, resolve

    settings = settings or GateSettings()
    settings.validate()
    out = Path(out)
    check_out(out, force)
    expert_paths = [Path(e) for e in experts]
    for path in expert_paths:
        if not (path / "adapter_config.json").is_file():
            raise UserError(f"--experts: '{path}' is not a PEFT adapter folder (no "
                            "adapter_config.json). Give folders written by `orchestrate lora train`.")
    template = moe or LoraMoeConfig(base_model=base, experts=[str(p) for p in expert_paths],
                                    top_k=min(2, len(expert_paths)))
    config = LoraMoeConfig.model_validate({**template.model_dump(), "base_model": base,
                                           "experts": [str(p) for p in expert_paths]})
    data = [data] if isinstance(data, (str, Path)) else list(data)
    ref = resolve(base)
    examples, _ = load_examples(data, config.system_prompt, fmt, exclude, limit)

    import torch

    from ...backends.base import BackendContext
    from .model import LoraMoeModel

    torch.set_num_threads(settings.threads or BackendContext().torch_threads())
    model, tokenizer = _load_base(local_folder(ref), settings.dtype, base)
    tokenized, n_too_long = _tokenize_all(tokenizer, examples, settings.max_length)
    mixture = LoraMoeModel.from_experts(model, config, seed=settings.seed)
    result = GateResult(out, [], [], {}, n_examples=len(tokenized), n_too_long=n_too_long)
    if on_start is not None:
        on_start(settings.steps)
    start = time.perf_counter()
    routed_steps(mixture, mixture.gate_parameters(), tokenizer, tokenized, settings, result,
                 aux_weight=mixture.config.aux_loss_coef, summarize=_rounded, on_step=on_step,
                 on_usage=on_usage)
    result.train_seconds = time.perf_counter() - start

    mixture.with_experts_relative_to(out, None)
    record = _record(mixture.config, data, settings, result, command)
    write_trained(out, "LoRA-MoE gate", mixture.save, record, result.losses,
                  f"{out.name}: gate over {len(expert_paths)} LoRA experts, top-{config.top_k}",
                  readme(out.name, record))
    return result


def _rounded(usage: dict[str, list[float]]) -> dict[str, list[float]]:
    return {layer: [round(x, 4) for x in shares] for layer, shares in usage.items()}


def _record(config: LoraMoeConfig, data, settings: GateSettings, result: GateResult, command):
    return {
        "config": config.model_dump(), "data": [str(d) for d in data],
        "settings": asdict(settings), "examples": result.n_examples,
        "dropped_too_long": result.n_too_long, "train_seconds": round(result.train_seconds, 1),
        **loss_ends(result.losses),
        "losses": [round(x, 4) for x in result.losses],
        "balance_losses": [round(x, 4) for x in result.aux_losses],
        "usage_log": result.usage_log, "command": command,
    }


def mean_shares(usage: dict[str, list[float]]) -> list[float]:
    """The share of each choice averaged over layers."""
    if not usage:
        return []
    rows = list(usage.values())
    return [sum(r[i] for r in rows) / len(rows) for i in range(len(rows[0]))]


def readme(name: str, record: dict) -> str:
    c, s = record["config"], record["settings"]
    names = c["expert_names"] or c["experts"]
    last = record["usage_log"][-1]["usage"] if record["usage_log"] else {}
    shares = mean_shares(last)
    usage = ", ".join(f"{n} {x:.0%}" for n, x in zip(
        names + [f"null{i}" for i in range(c["null_experts"])], shares))
    lines = [
        f"# {name}",
        "",
        f"A LoRA-MoE gate over {len(c['experts'])} LoRA experts of `{c['base_model']}`, trained "
        "with `orchestrate lora-moe train` (base and experts frozen, only the gates trained).",
        "",
        "| setting | value |",
        "|---|---|",
        f"| experts | {', '.join(f'`{e}`' for e in c['experts'])} |",
        f"| routing | top_k {c['top_k']}, top_p {c['top_p']}, null experts {c['null_experts']}, "
        f"temperature {c['temperature']}, {c['gate']} gate |",
        f"| data | {', '.join(f'`{d}`' for d in record['data'])}: {record['examples']} examples |",
        f"| steps x batch | {s['steps']} x {s['batch_size']}, lr {s['learning_rate']}, "
        f"balance coefficient {c['aux_loss_coef']} |",
        f"| seed | {s['seed']} |",
        f"| training time | {record['train_seconds']:.0f} s |",
        f"| loss | {record['loss_first']:.3f} (first steps) -> {record['loss_last']:.3f} (last "
        "steps) |",
        f"| expert usage (mean over layers, last steps) | {usage} |",
    ]
    return "\n".join(lines + readme_footer(
        "System prompt the gate was trained under (give the pool expert the same one):",
        c["system_prompt"], record["command"]))
