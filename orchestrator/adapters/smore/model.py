"""`SmoreModel`: S'MoRE modules injected into a Hugging Face causal LM.

Every targeted Linear (the config's module names, in the top `last_layers` decoder layers or all)
becomes a `SmoreLinear`; the base stays frozen and only the adapters (experts, carries, final
projection, routers) train. The wrapped model is still the Hugging Face model, so `generate`
uses its normal KV cache: routing is per token, so a cached step routes its one new token.

A trained adapter is a folder: `smore_config.json` (SmoreConfig) and `adapter.safetensors` (the
adapter parameters, keyed `<module path>.<parameter>`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from ...errors import ConfigError
from .config import SmoreConfig
from .layer import SmoreContext, SmoreLinear

WEIGHTS_FILE = "adapter.safetensors"


class SmoreModel(nn.Module):
    def __init__(self, model: nn.Module, config: SmoreConfig, seed: int = 0):
        super().__init__()
        self.model, self.config = model, config
        self.context = SmoreContext()
        for param in model.parameters():
            param.requires_grad_(False)
        paths = target_paths(model, config)
        state = torch.random.get_rng_state()
        torch.manual_seed(seed)  # adapter init is seeded; the caller's RNG is restored
        try:
            self.layers: dict[str, SmoreLinear] = {}
            for path in paths:
                base = model.get_submodule(path)
                layer = SmoreLinear(base, config, self.context, name=path).to(base.weight.device)
                parent, _, child = path.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, child, layer)
                self.layers[path] = layer
        finally:
            torch.random.set_rng_state(state)

    @classmethod
    def load(cls, folder: str | Path, model: nn.Module) -> SmoreModel:
        """A trained adapter saved by `save`, on `model` (the base it was trained on)."""
        from safetensors.torch import load_file

        folder = Path(folder)
        config = SmoreConfig.load(folder)
        path = folder / WEIGHTS_FILE
        if not path.is_file():
            raise ConfigError(f"S'MoRE folder '{folder}' has no {WEIGHTS_FILE}; train it with "
                              "`orchestrate smore train` first.")
        smore = cls(model, config)
        smore.load_adapter_state(load_file(str(path)), source=str(path))
        return smore

    # -- parameters ---------------------------------------------------------------------------

    def adapter_parameters(self) -> dict[str, nn.Parameter]:
        return {f"{path}.{name}": p for path, layer in self.layers.items()
                for name, p in layer.named_parameters() if not name.startswith("base.")}

    def trainable_parameters(self) -> list[nn.Parameter]:
        params = list(self.adapter_parameters().values())
        for p in params:
            p.requires_grad_(True)
        return params

    def adapter_state(self) -> dict[str, torch.Tensor]:
        return {k: p.detach().cpu().contiguous() for k, p in self.adapter_parameters().items()}

    def load_adapter_state(self, state: dict[str, torch.Tensor], source: str = "state") -> None:
        params = self.adapter_parameters()
        if set(state) != set(params):
            missing = sorted(set(params) - set(state))[:3]
            extra = sorted(set(state) - set(params))[:3]
            raise ConfigError(f"{source} does not fit this model and config (missing {missing}, "
                              f"unexpected {extra}); it was trained on another base model.")
        with torch.no_grad():
            for key, p in params.items():
                if state[key].shape != p.shape:
                    raise ConfigError(f"{source}: '{key}' has shape {tuple(state[key].shape)}, "
                                      f"this model needs {tuple(p.shape)}; wrong base model?")
                p.copy_(state[key])

    def save(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file(self.adapter_state(), str(folder / WEIGHTS_FILE))
        self.config.save(folder)

    # -- running ------------------------------------------------------------------------------

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def get_base_model(self) -> nn.Module:
        """The Hugging Face model (with the S'MoRE layers in it), as PeftModel names it."""
        return self.model

    def generate(self, *args, **kwargs):
        return self.model.generate(*args, **kwargs)

    def force_path(self, path: list[int] | None) -> None:
        """Route every node of every module to expert path[l] at level l with weight 1."""
        for layer in self.layers.values():
            layer.router.force(path)

    def aux_loss(self) -> torch.Tensor:
        """Sum of every module's balance losses since the last call (then cleared); each already
        carries the factor rho (spec 3.4)."""
        losses, self.context.aux_losses = self.context.aux_losses, []
        return torch.stack(losses).sum() if losses else torch.zeros(())

    @contextlib.contextmanager
    def training_session(self, seed: int = 0) -> Iterator[None]:
        """Training mode with balance losses and usage counting (`adapters/steps.py`); the
        noisy gate's noise seeded by `seed`, the caller's RNG state restored afterwards."""
        generator = torch.random.get_rng_state()
        torch.manual_seed(seed)
        self.train()
        self.context.collect_aux = self.context.usage = True
        self.reset_usage()
        try:
            yield
        finally:
            self.context.collect_aux = self.context.usage = False
            self.context.mask = None
            torch.random.set_rng_state(generator)
            self.eval()

    @contextlib.contextmanager
    def recording(self, routes: bool = True) -> Iterator[None]:
        """Count selections per expert per level (`layer.usage`) inside the block and, with
        `routes`, keep every forward's routing (`layer.records`)."""
        self.reset_usage()
        self.context.record, self.context.usage = routes, True
        try:
            yield
        finally:
            self.context.record = self.context.usage = False

    def reset_usage(self) -> None:
        for layer in self.layers.values():
            layer.records = []
            layer.usage = [torch.zeros_like(u) for u in layer.usage]

    def usage_shares(self) -> dict[str, list[list[float]]]:
        """Per module, per level (bottom first), each expert's share of that level's nodes."""
        out = {}
        for path, layer in self.layers.items():
            out[path] = [[int(c) / max(1, int(u.sum())) for c in u] for u in layer.usage]
        return out


def target_paths(model: nn.Module, config: SmoreConfig) -> list[str]:
    """The Linear modules named in `target_modules`, in the top `last_layers` decoder layers."""
    linear = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    wanted = set(config.target_modules)
    paths = [p for p in linear if p.rsplit(".", 1)[-1] in wanted]
    if not paths:
        names = sorted({p.rsplit(".", 1)[-1] for p in linear})
        raise ConfigError(f"target_modules {sorted(wanted)} match no Linear module of this "
                          f"model; its Linear modules are: {', '.join(names)}.")
    if config.last_layers is not None:
        total = getattr(getattr(model, "config", None), "num_hidden_layers", None)
        if total is None:
            raise ConfigError("last_layers needs a model whose config has num_hidden_layers; "
                              "leave it out.")
        paths = [p for p in paths if _layer_number(p) >= total - config.last_layers]
    return sorted(paths, key=lambda p: [int(s) if s.isdigit() else s for s in p.split(".")])


def _layer_number(path: str) -> int:
    return next((int(s) for s in path.split(".") if s.isdigit()), -1)
