"""What a transformers expert needs, checked without loading anything (`pools check`, the
checks before a run): the packages, its options, the model (in the local Hugging Face cache when
probing), and the adapter, LoRA-MoE or S'MoRE folder it names; each problem reported on its own.
A mixin of `TransformersBackend` (it reads the backend's `context` and `options`)."""

from __future__ import annotations

from pathlib import Path

from ..errors import FolderNotFoundError, OrchestratorError
from ..extras import require_installed
from ..modelref import check_cached, describe, resolve
from ..types import ExpertSpec
from .base import first_problem, run_checks
from .folders import find_folder


class TransformersChecks:
    def check(self, expert: ExpertSpec, probe: bool = False) -> str:
        return first_problem(self._checks(expert, probe))

    def diagnose(self, expert: ExpertSpec) -> tuple[str, list[OrchestratorError]]:
        return self._checks(expert, probe=True)

    def _checks(self, expert: ExpertSpec, probe: bool) -> tuple[str, list[OrchestratorError]]:
        """Packages, options, model, adapter and LoRA-MoE, each checked on its own."""
        return run_checks([
            lambda: require_installed(self._modules(expert), "the transformers backend"),
            lambda: self.options(expert),
            lambda: self._check_model(expert, probe),
            lambda: expert.adapter and f"LoRA {self._adapter_path(expert)}",
            lambda: expert.lora_moe and self._check_lora_moe(expert),
            lambda: expert.smore and self._check_smore(expert),
        ])

    def _check_model(self, expert: ExpertSpec, probe: bool) -> str:
        ref = resolve(expert.model, self.context.base_dir)
        if probe:
            check_cached(ref)
        return describe(ref)

    def _check_lora_moe(self, expert: ExpertSpec) -> str:
        from ..adapters.lora_moe.config import LoraMoeConfig

        path = self._lora_moe_path(expert)
        config = LoraMoeConfig.load(path)
        missing = [str(p) for p in config.expert_paths(path)
                   if not (p / "adapter_config.json").is_file()]
        if missing:
            raise FolderNotFoundError(
                f"Expert '{expert.id}': LoRA-MoE '{expert.lora_moe}' names LoRA experts that are "
                f"not adapter folders: {', '.join(missing)}. Keep the experts where the gate was "
                "trained, or retrain it.")
        return f"LoRA-MoE {path} ({len(config.experts)} experts, top-{config.top_k})"

    def _check_smore(self, expert: ExpertSpec) -> str:
        from ..adapters.smore.config import SmoreConfig

        path = self._smore_path(expert)
        config = SmoreConfig.load(path)
        return (f"S'MoRE {path} (experts {config.experts}, fan-out {config.fan()}, "
                f"{config.gate} gate)")

    @staticmethod
    def _modules(expert: ExpertSpec) -> tuple[str, ...]:
        """What loading this expert imports."""
        return ("torch", "transformers", *(("peft",) if expert.adapter else ()),
                *(("gguf",) if expert.model.lower().endswith(".gguf") else ()))

    def _adapter_path(self, expert: ExpertSpec) -> Path:
        return find_folder(expert.id, "adapter", expert.adapter, "adapter_config.json",
                           self.context.base_dir, "PEFT adapter", "Give a folder written by "
                           "`orchestrate lora train` or save_pretrained, relative to the pool file.")

    def _smore_path(self, expert: ExpertSpec) -> Path:
        return find_folder(expert.id, "smore", expert.smore, "smore_config.json",
                           self.context.base_dir, "S'MoRE", "Give a folder written by "
                           "`orchestrate smore train`.")

    def _lora_moe_path(self, expert: ExpertSpec) -> Path:
        return find_folder(expert.id, "lora_moe", expert.lora_moe, "lora_moe_config.json",
                           self.context.base_dir, "LoRA-MoE", "Give the --out folder of "
                           "`orchestrate lora-moe train`, relative to the pool file.")
