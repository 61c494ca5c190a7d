"""What a trained gate does: per generated token, the experts chosen in a few layers, and each
layer's usage shares (`orchestrate lora-moe inspect`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...errors import UserError
from ...types import Message


@dataclass
class TokenRow:
    token: str
    choices: dict[str, list[tuple[str, float]]]  # layer -> [(expert name, weight)], best first


@dataclass
class Inspection:
    names: list[str]  # the choices: LoRA experts, then null experts
    layers: list[str]  # the layers shown per token
    tokens: list[TokenRow]
    usage: dict[str, list[float]]  # every layer -> share of token slots per choice
    text: str
    prompt_tokens: int


def load_mixture(folder: str | Path, base: str | None = None, dtype: str = "float32",
                 threads: int | None = None):
    """(LoraMoeModel, tokenizer) of a trained folder on its base (or `base`)."""
    import torch

    from ...backends.base import BackendContext
    from ...modelref import local_folder, resolve
    from ..train import _load_base
    from .config import LoraMoeConfig
    from .model import LoraMoeModel

    config = LoraMoeConfig.load(folder)
    reference = base or config.base_model
    torch.set_num_threads(threads or BackendContext().torch_threads())
    model, tokenizer = _load_base(local_folder(resolve(reference)), dtype, reference)
    return LoraMoeModel.load(folder, model.eval()), tokenizer


def pick_layers(paths: list[str], layers: list[int] | None, module: str | None) -> list[str]:
    """Paths of the chosen decoder layers' `module` (default: first, middle and last layer, the
    first module type the mixture adapts)."""
    by_layer: dict[int, list[str]] = {}
    for path in paths:
        parts = path.split(".")
        number = next((int(p) for p in parts if p.isdigit()), 0)
        by_layer.setdefault(number, []).append(path)
    numbers = sorted(by_layer)
    if layers is None:
        layers = sorted({numbers[0], numbers[len(numbers) // 2], numbers[-1]})
    unknown = [n for n in layers if n not in by_layer]
    if unknown:
        raise UserError(f"--layers {','.join(map(str, unknown))}: no such layer with LoRA-MoE; "
                        f"layers are {numbers[0]}..{numbers[-1]}.")
    modules = sorted({p.rsplit(".", 1)[-1] for p in paths})
    module = module or modules[0]
    if module not in modules:
        raise UserError(f"--module '{module}' is not mixed by this model; it mixes "
                        f"{', '.join(modules)}.")
    return [p for n in layers for p in by_layer[n] if p.rsplit(".", 1)[-1] == module]


def inspect_generation(moe, tokenizer, prompt: str, *, max_tokens: int = 24,
                       layers: list[str] | None = None) -> Inspection:
    """Generate greedily from `prompt` (rendered with the gate's system prompt and the chat
    template, as the backend does) while recording every layer's choices."""
    import torch

    from ...backends.prompting import render_prompt

    if not prompt.strip():
        raise UserError("--prompt is empty; give the text to generate from.")
    if max_tokens < 1:
        raise UserError(f"--max-tokens must be at least 1 (got {max_tokens}).")
    system = moe.config.system_prompt
    messages = ([Message("system", system)] if system else []) + [Message("user", prompt)]
    enc = tokenizer(render_prompt(tokenizer, messages), return_tensors="pt",
                    add_special_tokens=False)
    layers = layers or list(moe.layers)
    names = moe.choice_names()
    with moe.recording(), torch.no_grad():
        out = moe.generate(**enc, max_new_tokens=max_tokens, do_sample=False,
                           pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        new = out[0, enc["input_ids"].shape[1]:].tolist()
        rows = []
        for step, token in enumerate(new):  # forward `step` produced token `step`
            choices = {}
            for path in layers:
                index, weight = moe.layers[path].records[step]  # [T, k] each; last position
                choices[path] = [(names[int(i)], float(w)) for i, w in zip(index[-1], weight[-1])
                                 if int(i) >= 0]
            rows.append(TokenRow(tokenizer.decode([token]), choices))
        usage = moe.usage_shares()
    text = tokenizer.decode(new, skip_special_tokens=True)
    return Inspection(names, layers, rows, usage, text, int(enc["input_ids"].shape[1]))
