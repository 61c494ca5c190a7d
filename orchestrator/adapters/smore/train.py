"""`orchestrate smore train`: fine-tune an S'MoRE adapter of a frozen base model.

Only the adapter (experts, carries, final projection, routers) trains, on next-token loss over
the answer tokens plus the routers' balance losses (each already weighted by rho). Examples come
from benchmark files exactly as `orchestrate lora train` reads them. OUT is written atomically:
adapter.safetensors, smore_config.json, training.json (settings, losses, usage per level),
loss.png and README.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..data import load_examples
from ..lora_moe.train import GateSettings
from ..steps import StepCallback, routed_steps
from ..train import (
    _load_base,
    _tokenize_all,
    check_out,
    loss_ends,
    readme_footer,
    write_trained,
)
from .config import SmoreConfig


@dataclass(frozen=True)
class SmoreSettings(GateSettings):
    learning_rate: float = 1e-3


@dataclass
class SmoreResult:
    out: Path
    losses: list[float]  # answer-token loss per step (without the balance term)
    aux_losses: list[float]
    usage: dict[str, list[list[float]]]  # module -> per level, share per expert (last window)
    usage_log: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    n_examples: int = 0
    n_too_long: int = 0
    n_params: int = 0


def train_smore(
    base: str, data: str | Path | Sequence[str | Path], out: str | Path,
    config: SmoreConfig | None = None, settings: SmoreSettings | None = None, *,
    fmt: str = "auto", exclude: Sequence[str | Path] = (), limit: int | None = None,
    force: bool = False, command: str | None = None,
    on_start: Callable[[int], None] | None = None, on_step: StepCallback | None = None,
    on_usage: Callable[[int, dict], None] | None = None,
) -> SmoreResult:
    """Train an S'MoRE adapter of `base` on `data` and write it to `out`; `config` holds its
    shape (its base_model is replaced by `base`). Inputs are checked before any model loads."""
    from ...modelref import local_folder, resolve

    settings = settings or SmoreSettings()
    settings.validate()
    out = Path(out)
    check_out(out, force)
    config = SmoreConfig.model_validate({**(config.model_dump() if config else {}),
                                         "base_model": base})
    data = [data] if isinstance(data, (str, Path)) else list(data)
    ref = resolve(base)
    examples, _ = load_examples(data, config.system_prompt, fmt, exclude, limit)

    import torch

    from ...backends.base import BackendContext
    from .model import SmoreModel

    torch.set_num_threads(settings.threads or BackendContext().torch_threads())
    model, tokenizer = _load_base(local_folder(ref), settings.dtype, base)
    tokenized, n_too_long = _tokenize_all(tokenizer, examples, settings.max_length)
    smore = SmoreModel(model, config, seed=settings.seed)
    result = SmoreResult(out, [], [], {}, n_examples=len(tokenized), n_too_long=n_too_long,
                         n_params=sum(p.numel() for p in smore.adapter_parameters().values()))
    if on_start is not None:
        on_start(settings.steps)
    start = time.perf_counter()
    routed_steps(smore, smore.trainable_parameters(), tokenizer, tokenized, settings, result,
                 summarize=level_means, on_step=on_step, on_usage=on_usage)
    result.train_seconds = time.perf_counter() - start

    record = _record(config, data, settings, result, command)
    write_trained(out, "S'MoRE adapter", smore.save, record, result.losses,
                  f"{out.name}: S'MoRE s={config.experts} f={config.fan_out} r={config.rank}, "
                  f"{config.gate}", readme(out.name, record))
    return result


def level_means(usage: dict[str, list[list[float]]]) -> list[list[float]]:
    """Per level, each expert's share averaged over the adapted modules."""
    rows = list(usage.values())
    if not rows:
        return []
    return [[round(sum(r[lv][e] for r in rows) / len(rows), 4) for e in range(len(rows[0][lv]))]
            for lv in range(len(rows[0]))]


def _record(config: SmoreConfig, data, settings, result: SmoreResult, command) -> dict:
    return {
        "config": config.model_dump(), "system_prompt": config.system_prompt,
        "data": [str(d) for d in data], "settings": asdict(settings),
        "examples": result.n_examples, "dropped_too_long": result.n_too_long,
        "trainable_parameters": result.n_params,
        "train_seconds": round(result.train_seconds, 1),
        **loss_ends(result.losses),
        "losses": [round(x, 4) for x in result.losses],
        "balance_losses": [round(x, 5) for x in result.aux_losses],
        "usage_log": result.usage_log, "command": command,
    }


def readme(name: str, record: dict) -> str:
    c, s = record["config"], record["settings"]
    usage = record["usage_log"][-1]["usage"] if record["usage_log"] else []
    shown = "; ".join(f"level {lv}: " + ", ".join(f"{x:.0%}" for x in shares)
                      for lv, shares in enumerate(usage))
    layers = "all layers" if c["last_layers"] is None else f"top {c['last_layers']} layers"
    lines = [
        f"# {name}",
        "",
        f"An S'MoRE adapter (structural mixture of residual experts) of `{c['base_model']}`, "
        "trained with `orchestrate smore train` (base frozen; experts and routers trained).",
        "",
        "| setting | value |",
        "|---|---|",
        f"| levels (bottom first) | experts {c['experts']}, fan-out {c['fan_out']}, rank "
        f"{c['rank']} |",
        f"| gate / activation / init | {c['gate']} / {c['activation']} / {c['init']}, router "
        f"d_down {c['router_dim']}, k {c['key_dim']}, balance {c['balance']} |",
        f"| modules | {', '.join(c['target_modules'])} ({layers}); "
        f"{record['trainable_parameters']:,} trainable parameters |",
        f"| data | {', '.join(f'`{d}`' for d in record['data'])}: {record['examples']} examples |",
        f"| steps x batch | {s['steps']} x {s['batch_size']}, lr {s['learning_rate']} |",
        f"| seed | {s['seed']} |",
        f"| training time | {record['train_seconds']:.0f} s |",
        f"| loss | {record['loss_first']:.3f} (first steps) -> {record['loss_last']:.3f} (last "
        "steps) |",
        f"| expert usage per level (mean over modules, last steps) | {shown} |",
    ]
    return "\n".join(lines + readme_footer(
        "System prompt the adapter was trained under (give the pool expert the same one):",
        c["system_prompt"], record["command"]))
