"""`orchestrate lora train`: a small seeded LoRA fine-tune (PEFT) on benchmark-format data, CPU
friendly. The adapter is trained into a temporary folder beside OUT and renamed into place only
when complete, so OUT is either absent, the old adapter, or the whole new one.

OUT holds adapter_config.json + adapter_model.safetensors (what `PeftModel.load_adapter`
reads), training.json (settings, data, per-step losses, timings), loss.png and README.md.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import BackendError, UserError
from .data import IGNORE, Example, Tokenized, load_examples, tokenize

log = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16")
DEFAULT_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 100
    rank: int = 8
    alpha: int = 16
    learning_rate: float = 5e-4
    batch_size: int = 8
    max_length: int = 384  # longer examples are dropped, never truncated (that cuts the answer)
    seed: int = 0
    target_modules: tuple[str, ...] = DEFAULT_MODULES
    last_layers: int | None = None  # LoRA on the top N decoder layers only (None: all)
    dtype: str = "float32"
    warmup_steps: int = 10
    threads: int | None = None

    def validate(self) -> None:
        checks = [
            (self.steps >= 1, f"--steps must be at least 1 (got {self.steps})."),
            (self.rank >= 1, f"--rank must be at least 1 (got {self.rank})."),
            (self.alpha >= 1, f"--alpha must be at least 1 (got {self.alpha})."),
            (self.batch_size >= 1, f"--batch-size must be at least 1 (got {self.batch_size})."),
            (self.learning_rate > 0, f"--lr must be positive (got {self.learning_rate})."),
            (self.max_length >= 16, f"--max-length must be at least 16 tokens (got {self.max_length})."),
            (self.warmup_steps >= 0, f"warmup steps must be >= 0 (got {self.warmup_steps})."),
            (self.last_layers is None or self.last_layers >= 1,
             f"--layers must be at least 1 (got {self.last_layers})."),
            (bool(self.target_modules), "--modules must name at least one module (e.g. q_proj,v_proj)."),
            (self.dtype in DTYPES, f"--dtype '{self.dtype}' is not supported; use one of: "
                                   f"{', '.join(DTYPES)}."),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)


@dataclass
class TrainResult:
    out: Path
    losses: list[float]
    train_seconds: float
    total_seconds: float
    n_examples: int
    n_excluded: int
    n_too_long: int
    files: list[str] = field(default_factory=list)


StepCallback = Callable[[int, float], None]


def check_out(out: Path, force: bool) -> None:
    from ..outlock import check_location

    if out.exists() and not out.is_dir():
        raise UserError(f"--out '{out}' is a file; give a folder path for the adapter.")
    check_location(out.parent, flag="--out's folder")  # writable, before any training
    if out.exists() and any(out.iterdir()) and not force:
        raise UserError(
            f"--out '{out}' already exists and is not empty. Choose another folder, or pass "
            "--force to replace it."
        )


def train_adapter(
    base: str, data: str | Path | Sequence[str | Path], out: str | Path, settings: TrainSettings, *,
    system_prompt: str | None = None, fmt: str = "auto", exclude: Sequence[str | Path] = (),
    limit: int | None = None, force: bool = False, command: str | None = None,
    on_start: Callable[[int], None] | None = None, on_step: StepCallback | None = None,
    base_dir: Path | None = None,
) -> TrainResult:
    """Train a LoRA adapter of `base` (any model reference a pool manifest accepts) on `data`
    (one benchmark file or several) and write it to `out`. Everything cheap is validated
    before the model loads."""
    from ..modelref import local_folder, resolve

    start = time.perf_counter()
    settings.validate()
    out = Path(out)
    data = [data] if isinstance(data, (str, Path)) else list(data)
    check_out(out, force)
    ref = resolve(base, base_dir)
    examples, n_excluded = load_examples(data, system_prompt, fmt, exclude, limit)

    import torch

    from ..backends.base import BackendContext

    torch.set_num_threads(settings.threads or BackendContext().torch_threads())
    model, tokenizer = _load_base(local_folder(ref), settings.dtype, base)
    tokenized, n_too_long = _tokenize_all(tokenizer, examples, settings.max_length)
    model = _with_lora(model, settings)
    if on_start is not None:
        on_start(settings.steps)
    t0 = time.perf_counter()
    losses = _train_loop(model, tokenizer, tokenized, settings, on_step)
    train_seconds = time.perf_counter() - t0

    result = TrainResult(out, losses, train_seconds, 0.0, len(tokenized), n_excluded, n_too_long)
    record = _record(base, data, settings, system_prompt, result, command)
    model.peft_config["default"].base_model_name_or_path = base
    write_trained(out, "adapter", lambda tmp: model.save_pretrained(
                      str(tmp), safe_serialization=True, save_embedding_layers=False),
                  record, losses, f"{out.name}: LoRA r={settings.rank} on "
                  f"{', '.join(Path(d).name for d in data)}", readme(out.name, record))
    result.total_seconds = time.perf_counter() - start
    result.files = sorted(p.name for p in out.iterdir())
    log.info("trained %s in %.0fs (%d steps); final loss %.3f", out, train_seconds,
             settings.steps, losses[-1])
    return result


def _load_base(folder: str, dtype: str, reference: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype))
    except (OSError, ValueError) as err:
        raise BackendError(f"Loading base model '{reference}' for training failed: {err}") from err
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _tokenize_all(tokenizer, examples: list[Example], max_length: int):
    tokenized = [tokenize(tokenizer, ex) for ex in examples]
    kept = [t for t in tokenized if len(t.input_ids) <= max_length]
    if not kept:
        shortest = min(len(t.input_ids) for t in tokenized)
        raise UserError(
            f"Every training example is longer than --max-length {max_length} tokens (the "
            f"shortest has {shortest}). Raise --max-length."
        )
    return kept, len(tokenized) - len(kept)


def _with_lora(model, settings: TrainSettings):
    import torch
    from peft import LoraConfig, get_peft_model

    layers = None
    if settings.last_layers is not None:
        total = getattr(model.config, "num_hidden_layers", None)
        if total is None:
            raise UserError("--layers needs a model whose config has num_hidden_layers; drop --layers.")
        # only these layers need gradients: backward stops at the lowest adapted layer
        layers = list(range(max(0, total - settings.last_layers), total))
    config = LoraConfig(
        r=settings.rank, lora_alpha=settings.alpha, lora_dropout=0.0, bias="none",
        target_modules=list(settings.target_modules), layers_to_transform=layers,
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(settings.seed)  # LoRA A matrices are initialised randomly
    try:
        return get_peft_model(model, config)
    except ValueError as err:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                        if isinstance(m, torch.nn.Linear)})
        raise UserError(
            f"--modules {','.join(settings.target_modules)} do not fit this model ({err}). "
            f"Its linear modules are: {', '.join(names)}."
        ) from None


def _batches(n: int, batch_size: int, seed: int):
    """Endless seeded shuffles of range(n), cut into batches of indices."""
    rng, order = random.Random(seed), []
    while True:
        if len(order) < batch_size:
            epoch = list(range(n))
            rng.shuffle(epoch)
            order += epoch
        yield order[:batch_size]
        order = order[batch_size:]


def _collate(items: list[Tokenized], pad_id: int):
    import torch

    width = max(len(t.input_ids) for t in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)  # [batch, width], right pad
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, t in enumerate(items):
        n = len(t.input_ids)
        ids[row, :n] = torch.tensor(t.input_ids)
        labels[row, :n] = torch.tensor(t.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def learning_rate_factor(step: int, settings: TrainSettings) -> float:
    """Linear warmup, then cosine decay to 10% of the peak."""
    warm = min(settings.warmup_steps, settings.steps - 1)
    if step < warm:
        return (step + 1) / (warm + 1)
    progress = (step - warm) / max(1, settings.steps - warm)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def _train_loop(model, tokenizer, data: list[Tokenized], settings: TrainSettings,
                on_step: StepCallback | None) -> list[float]:
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: learning_rate_factor(s, settings))
    batches = _batches(len(data), settings.batch_size, settings.seed)
    model.train()
    losses = []
    for step in range(settings.steps):
        batch = _collate([data[i] for i in next(batches)], tokenizer.pad_token_id)
        loss = answer_loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step + 1, losses[-1])
    model.eval()
    return losses


def answer_loss(model, batch):
    """Mean next-token cross-entropy over the answer tokens (labels != -100). The vocabulary
    projection runs only at those positions: an answer is a few tokens of a ~200-token
    example, and the logits of the rest ([batch, width, vocab]) would cost as much as a
    quarter of the model's forward pass."""
    import torch

    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder, head = getattr(causal, "get_decoder", None), causal.get_output_embeddings()
    if decoder is None or head is None:
        return model(**batch).loss
    labels = batch["labels"][:, 1:]  # [batch, width-1]: token t+1 is predicted at t
    hidden = decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    at = labels != IGNORE
    logits = head(hidden.last_hidden_state[:, :-1][at])  # [n_answer_tokens, vocab]
    return torch.nn.functional.cross_entropy(logits.float(), labels[at])


def write_trained(out: Path, what: str, save: Callable[[Path], None], record: dict,
                  losses: Sequence[float], plot_title: str, readme_text: str) -> None:
    """A trained adapter's folder, written atomically: `save(tmp)` writes the weights into a
    temporary folder beside `out`, then training.json (`record`), loss.png and README.md; the
    folder is renamed into place only when complete. An OSError on the way removes the
    temporary folder and becomes a UserError naming `what` ("S'MoRE adapter")."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        save(tmp)
        (tmp / "training.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        save_loss_plot(list(losses), tmp / "loss.png", title=plot_title)
        (tmp / "README.md").write_text(readme_text, encoding="utf-8")
        _replace(tmp, out)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"Writing the {what} to '{out}' failed: {err}. Check that the folder "
                        "is writable.") from err


def loss_ends(losses: Sequence[float]) -> dict[str, float]:
    """training.json's `loss_first` and `loss_last`: the mean loss of the first and of the
    last k steps (a quarter of them, 1 to 10)."""
    k = max(1, min(10, len(losses) // 4))

    def mean(xs):
        return sum(xs) / len(xs) if xs else float("nan")

    return {"loss_first": round(mean(losses[:k]), 4), "loss_last": round(mean(losses[-k:]), 4)}


def _replace(tmp: Path, out: Path) -> None:
    """Rename the finished folder into place; an old adapter at `out` goes only afterwards."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _record(base, data, settings: TrainSettings, system_prompt, result: TrainResult, command):
    import peft
    import torch
    import transformers

    return {
        "base": base, "data": [str(d) for d in data], "system_prompt": system_prompt,
        "settings": {**asdict(settings), "target_modules": list(settings.target_modules)},
        "examples": result.n_examples, "excluded": result.n_excluded,
        "dropped_too_long": result.n_too_long,
        "train_seconds": round(result.train_seconds, 1),
        **loss_ends(result.losses),
        "losses": [round(x, 4) for x in result.losses],
        "command": command,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__},
    }


def save_loss_plot(losses: list[float], path: Path, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.4), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    steps = list(range(1, len(losses) + 1))
    ax.plot(steps, losses, color="#9ecae1", lw=1, label="per step")
    w = max(1, len(losses) // 10)
    if w > 1:
        smooth = [sum(losses[max(0, i - w + 1): i + 1]) / len(losses[max(0, i - w + 1): i + 1])
                  for i in range(len(losses))]
        ax.plot(steps, smooth, color="#3182bd", lw=2, label=f"mean of last {w}")
    ax.set(xlabel="step", ylabel="loss (answer tokens)", title=title)
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path)


def readme(name: str, record: dict) -> str:
    s = record["settings"]
    prompt = record["system_prompt"]
    layers = "all layers" if s["last_layers"] is None else f"top {s['last_layers']} layers"
    lines = [
        f"# {name}",
        "",
        f"A LoRA adapter for `{record['base']}`, trained with `orchestrate lora train`.",
        "",
        "| setting | value |",
        "|---|---|",
        f"| data | {', '.join(f'`{d}`' for d in record['data'])}: {record['examples']} examples "
        f"({record['excluded']} excluded, {record['dropped_too_long']} longer than "
        f"{s['max_length']} tokens dropped) |",
        f"| steps x batch | {s['steps']} x {s['batch_size']} |",
        f"| rank / alpha | {s['rank']} / {s['alpha']}, modules {', '.join(s['target_modules'])} "
        f"({layers}) |",
        f"| learning rate | {s['learning_rate']} (warmup {s['warmup_steps']}, cosine) |",
        f"| base dtype | {s['dtype']} |",
        f"| seed | {s['seed']} |",
        f"| training time | {record['train_seconds']:.0f} s |",
        f"| loss | {record['loss_first']:.3f} (first steps) -> {record['loss_last']:.3f} (last steps) |",
    ]
    return "\n".join(lines + readme_footer(
        "System prompt used to render the training prompts (give the pool expert the same one):",
        prompt, record["command"]))


def readme_footer(prompt_title: str, prompt: str | None, command: str | None) -> list[str]:
    """The system prompt, the command and the loss curve: the end of every trained folder's
    README (adapters and LoRA-MoE gates)."""
    return ["", prompt_title, "", f"> {prompt}" if prompt else "> (none)", "", "Command:", "",
            "```", command or "(called from Python)", "```", "", "![loss curve](loss.png)", ""]
