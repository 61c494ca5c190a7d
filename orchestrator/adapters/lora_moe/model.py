"""`LoraMoeModel`: LoRA-MoE layers injected into a Hugging Face causal LM.

Every targeted Linear becomes a `LoraMoeLinear` holding the frozen LoRA experts of that module
and a gate (its own, or one gate shared by all layers). The base and the experts stay frozen;
only the gates train. The wrapped model is still the Hugging Face model, so `generate` uses its
normal KV cache: one forward pass per new token, routing each token as it comes.

A trained mixture is a folder: `lora_moe_config.json` (LoraMoeConfig; expert folders relative
to it) and `gate.safetensors` (the gate weights only; the experts stay in their own folders).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from ...errors import ConfigError
from .config import LoraMoeConfig
from .experts import LoraExpert, read_expert
from .gate import LoraMoeGate
from .layer import LoraMoeLinear, RoutingContext

GATE_FILE = "gate.safetensors"
SHARED_GATE_KEY = "shared_gate.weight"


class LoraMoeModel(nn.Module):
    def __init__(self, model: nn.Module, config: LoraMoeConfig, experts: list[LoraExpert],
                 seed: int = 0):
        super().__init__()
        self.model, self.config = model, config
        self.context = RoutingContext()
        self.expert_names = [e.name for e in experts]
        for param in model.parameters():
            param.requires_grad_(False)
        paths = _target_paths(model, config, experts)
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)  # gate initialisation is seeded; the caller's RNG is restored
        try:
            self.shared_gate = self._shared_gate(model, paths) if config.gate == "shared" else None
            self.layers: dict[str, LoraMoeLinear] = {}
            for path in paths:
                self._inject(path, experts)
        finally:
            torch.random.set_rng_state(generator_state)

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_experts(cls, model: nn.Module, config: LoraMoeConfig, base_dir: Path | None = None,
                     seed: int = 0) -> LoraMoeModel:
        """A fresh (untrained) mixture: the experts are read from their folders."""
        names = config.names()
        experts = [read_expert(path, name)
                   for path, name in zip(config.expert_paths(base_dir), names)]
        return cls(model, config, experts, seed=seed)

    @classmethod
    def load(cls, folder: str | Path, model: nn.Module) -> LoraMoeModel:
        """A trained mixture saved by `save`, on `model` (the base it was trained on)."""
        from safetensors.torch import load_file

        folder = Path(folder)
        config = LoraMoeConfig.load(folder)
        moe = cls.from_experts(model, config, base_dir=folder)
        gate_path = folder / GATE_FILE
        if not gate_path.is_file():
            raise ConfigError(f"LoRA-MoE folder '{folder}' has no {GATE_FILE}; train the gate "
                              "with `orchestrate lora-moe train` first.")
        moe.load_gate_state(load_file(str(gate_path)), source=str(gate_path))
        return moe

    def _shared_gate(self, model: nn.Module, paths: list[str]) -> LoraMoeGate:
        widths = {model.get_submodule(p).in_features for p in paths}
        if len(widths) != 1:
            raise ConfigError(f"A shared gate needs every target module to have the same input "
                              f"width; these have {sorted(widths)}. Use gate: per-layer or target "
                              "only modules that read the hidden state (q_proj, k_proj, v_proj...).")
        return self._new_gate(widths.pop())

    def _new_gate(self, in_features: int) -> LoraMoeGate:
        c = self.config
        return LoraMoeGate(in_features, c.n_choices, top_k=c.top_k, top_p=c.top_p,
                           temperature=c.temperature, renormalize=c.renormalize)

    def _inject(self, path: str, experts: list[LoraExpert]) -> None:
        base = self.model.get_submodule(path)
        rank = max(e.rank for e in experts)
        a = torch.zeros(len(experts), rank, base.in_features)  # [N, r, in]
        b = torch.zeros(len(experts), base.out_features, rank)  # [N, out, r]
        for i, expert in enumerate(experts):
            if path in expert.weights:
                ea, eb = expert.weights[path]
                if ea.shape[1] != base.in_features or eb.shape[0] != base.out_features:
                    raise ConfigError(
                        f"LoRA expert '{expert.name}' was trained on another model: its '{path}' "
                        f"maps {ea.shape[1]} -> {eb.shape[0]} features, the base module "
                        f"{base.in_features} -> {base.out_features}.")
                a[i, : expert.rank] = ea
                b[i, :, : expert.rank] = eb
        scaling = torch.tensor([e.scaling for e in experts])  # [N]
        device = base.weight.device
        gate = self.shared_gate or self._new_gate(base.in_features)
        layer = LoraMoeLinear(base, a.to(device), b.to(device), scaling.to(device),
                              gate.to(device), self.context, name=path)
        parent, _, child = path.rpartition(".")
        setattr(self.model.get_submodule(parent) if parent else self.model, child, layer)
        self.layers[path] = layer

    # -- gates --------------------------------------------------------------------------------

    def gates(self) -> list[LoraMoeGate]:
        if self.shared_gate is not None:
            return [self.shared_gate]
        return [layer.gate for layer in self.layers.values()]

    def gate_parameters(self) -> list[nn.Parameter]:
        params = [g.proj.weight for g in self.gates()]
        for p in params:
            p.requires_grad_(True)
        return params

    def gate_state(self) -> dict[str, torch.Tensor]:
        if self.shared_gate is not None:
            return {SHARED_GATE_KEY: self.shared_gate.proj.weight.detach().cpu().contiguous()}
        return {f"{path}.gate.weight": layer.gate.proj.weight.detach().cpu().contiguous()
                for path, layer in self.layers.items()}

    def load_gate_state(self, state: dict[str, torch.Tensor], source: str = "gate state") -> None:
        expected = self.gate_state()
        if set(state) != set(expected):
            missing = sorted(set(expected) - set(state))[:3]
            extra = sorted(set(state) - set(expected))[:3]
            raise ConfigError(f"{source} does not fit this model and config (missing {missing}, "
                              f"unexpected {extra}); it was trained with other target modules "
                              "or another gate layout.")
        with torch.no_grad():
            for key, gate in self._gates_by_key().items():
                if state[key].shape != gate.proj.weight.shape:
                    raise ConfigError(f"{source}: '{key}' has shape {tuple(state[key].shape)}, "
                                      f"expected {tuple(gate.proj.weight.shape)}.")
                gate.proj.weight.copy_(state[key])

    def _gates_by_key(self) -> dict[str, LoraMoeGate]:
        if self.shared_gate is not None:
            return {SHARED_GATE_KEY: self.shared_gate}
        return {f"{path}.gate.weight": layer.gate for path, layer in self.layers.items()}

    def save(self, folder: str | Path) -> None:
        """Write the config (expert folders relative to `folder` when they can be) and the gate."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file(self.gate_state(), str(folder / GATE_FILE))
        self.config.save(folder)

    def with_experts_relative_to(self, folder: Path, base_dir: Path | None) -> None:
        """Rewrite the config's expert folders relative to `folder` (where it will be saved)."""
        rel = [os.path.relpath(p.resolve(), Path(folder).resolve())
               for p in self.config.expert_paths(base_dir)]
        self.config = self.config.model_copy(update={"experts": rel,
                                                     "expert_names": self.expert_names})

    def force_expert(self, expert: int | None) -> None:
        """Route every token to expert `expert` with weight 1 (None: the learned gates)."""
        for gate in self.gates():
            gate.force(expert)

    # -- running ------------------------------------------------------------------------------

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def get_base_model(self) -> nn.Module:
        """The Hugging Face model (with the LoRA-MoE layers in it), as PeftModel names it."""
        return self.model

    def generate(self, *args, **kwargs):
        return self.model.generate(*args, **kwargs)

    def aux_loss(self) -> torch.Tensor:
        """Mean load-balance loss over the layers since the last call (then cleared)."""
        losses, self.context.aux_losses = self.context.aux_losses, []
        if not losses:
            return torch.zeros(())
        return torch.stack(losses).mean()

    @contextlib.contextmanager
    def training_session(self, seed: int = 0) -> Iterator[None]:
        """Training mode with usage counting (`adapters/steps.py`); eval mode afterwards."""
        self.train()
        self.context.usage = True
        self.reset_usage()
        try:
            yield
        finally:
            self.context.usage = False
            self.context.mask = None
            self.eval()

    @contextlib.contextmanager
    def recording(self, choices: bool = True) -> Iterator[None]:
        """Count each layer's token slots per choice (`layer.usage`) inside the block and, with
        `choices`, keep every forward's choices (`layer.records`)."""
        self.reset_usage()
        self.context.record, self.context.usage = choices, True
        try:
            yield
        finally:
            self.context.record = self.context.usage = False

    def reset_usage(self) -> None:
        for layer in self.layers.values():
            layer.records, layer.usage = [], torch.zeros_like(layer.usage)

    def usage_shares(self) -> dict[str, list[float]]:
        """Per layer, the share of token slots each choice got while recording."""
        out = {}
        for path, layer in self.layers.items():
            total = int(layer.usage.sum())
            out[path] = [int(u) / total if total else 0.0 for u in layer.usage]
        return out

    def choice_names(self) -> list[str]:
        return self.expert_names + [f"null{i}" for i in range(self.config.null_experts)]


def _target_paths(model: nn.Module, config: LoraMoeConfig, experts: list[LoraExpert]) -> list[str]:
    paths = sorted(set().union(*(e.weights for e in experts)),
                   key=lambda p: [int(s) if s.isdigit() else s for s in p.split(".")])
    if config.target_modules is not None:
        wanted = set(config.target_modules)
        paths = [p for p in paths if p.rsplit(".", 1)[-1] in wanted]
        if not paths:
            adapted = sorted(set().union(*(e.target_modules for e in experts)))
            raise ConfigError(f"target_modules {sorted(wanted)} match no module the experts "
                              f"adapt; they adapt {adapted}.")
    for path in paths:
        try:
            module = model.get_submodule(path)
        except AttributeError:
            raise ConfigError(f"The LoRA experts adapt '{path}', which this model does not have; "
                              "were they trained on another base model?") from None
        if not isinstance(module, nn.Linear):
            raise ConfigError(f"'{path}' is a {type(module).__name__}; LoRA-MoE mixes Linear "
                              "layers only.")
    return paths
