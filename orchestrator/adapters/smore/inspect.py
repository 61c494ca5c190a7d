"""What a trained S'MoRE adapter does: per generated token, the tree of experts it was routed
through in a few modules, and each level's expert usage (`orchestrate smore inspect`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...errors import UserError
from ...types import Message


@dataclass
class TokenRow:
    token: str
    paths: dict[str, str]  # module path -> the routed tree, top level first


@dataclass
class Inspection:
    layers: list[str]  # the modules shown per token
    tokens: list[TokenRow]
    usage: dict[str, list[list[float]]]  # module -> per level, share of nodes per expert
    text: str
    prompt_tokens: int


def load_smore(folder: str | Path, base: str | None = None, dtype: str = "float32",
               threads: int | None = None):
    """(SmoreModel, tokenizer) of a trained folder on its base (or `base`)."""
    import torch

    from ...backends.base import BackendContext
    from ...modelref import local_folder, resolve
    from ..train import _load_base
    from .config import SmoreConfig
    from .model import SmoreModel

    config = SmoreConfig.load(folder)
    reference = base or config.base_model
    torch.set_num_threads(threads or BackendContext().torch_threads())
    model, tokenizer = _load_base(local_folder(resolve(reference)), dtype, reference)
    return SmoreModel.load(folder, model.eval()), tokenizer


def tree_text(ids: list, weights: list, token: int = -1) -> str:
    """One token's routed tree, top level first: `e2:.61[e0:.55 e3:.45] e1:.39[...]`. ids and
    weights per level (bottom first) are [N, F_{l+1}, f_l]."""

    def node(level: int, parent: int) -> str:
        parts = []
        for j in range(ids[level].shape[-1]):
            text = f"e{int(ids[level][token, parent, j])}:{float(weights[level][token, parent, j]):.2f}"
            if level > 0:
                text += f"[{node(level - 1, parent * ids[level].shape[-1] + j)}]"
            parts.append(text)
        return " ".join(parts)

    return node(len(ids) - 1, 0)


def inspect_generation(smore, tokenizer, prompt: str, *, max_tokens: int = 24,
                       layers: list[str] | None = None) -> Inspection:
    """Generate greedily from `prompt` (rendered with the adapter's system prompt and the chat
    template, as the backend does) while recording every module's routing."""
    import torch

    from ...backends.prompting import render_prompt

    if not prompt.strip():
        raise UserError("--prompt is empty; give the text to generate from.")
    if max_tokens < 1:
        raise UserError(f"--max-tokens must be at least 1 (got {max_tokens}).")
    system = smore.config.system_prompt
    messages = ([Message("system", system)] if system else []) + [Message("user", prompt)]
    enc = tokenizer(render_prompt(tokenizer, messages), return_tensors="pt",
                    add_special_tokens=False)
    layers = layers or list(smore.layers)
    with smore.recording(), torch.no_grad():
        out = smore.generate(**enc, max_new_tokens=max_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        new = out[0, enc["input_ids"].shape[1]:].tolist()
        rows = []
        for step, token in enumerate(new):  # forward `step` produced token `step`
            paths = {path: tree_text(*smore.layers[path].records[step]) for path in layers}
            rows.append(TokenRow(tokenizer.decode([token]), paths))
        usage = smore.usage_shares()
    text = tokenizer.decode(new, skip_special_tokens=True)
    return Inspection(layers, rows, usage, text, int(enc["input_ids"].shape[1]))


def pick_modules(paths: list[str], layers: list[int] | None, module: str | None) -> list[str]:
    """Paths of the chosen decoder layers' `module` (default: first, middle and last adapted
    layer, the first module name), as `lora-moe inspect` picks them."""
    from ..lora_moe.inspect import pick_layers

    numbers = sorted({next((int(p) for p in path.split(".") if p.isdigit()), 0) for path in paths})
    unknown = [n for n in layers or () if n not in numbers]
    if unknown:
        raise UserError(f"--layers {','.join(map(str, unknown))}: no S'MoRE module in that layer; "
                        f"adapted layers are {', '.join(map(str, numbers))}.")
    return pick_layers(paths, layers, module)
