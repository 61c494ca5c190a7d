"""The simulated machine behind the fake vllm: GPUs with memory, and what each engine holds.

Per engine and per GPU of its tensor-parallel group (vLLM 0.33):
- CUDA context + NCCL buffers (`context`), held until shutdown;
- weights / tp, unmapped by sleep at both levels (level 1 keeps a host copy, level 2 drops them:
  `collective_rpc("reload_weights")` restores them, vllm/device_allocator/sleep_mode_backend.py);
- CUDA graphs (none with enforce_eager), kept while asleep unless sleep_mode_offload_cudagraph;
- the KV cache: what is left of ceil(total * gpu_memory_utilization) (or kv_cache_memory_bytes),
  unmapped by sleep.
Start refuses unless free >= ceil(total * gpu_memory_utilization) on each GPU (vllm/v1/worker/
utils.py `request_memory`); wake-up maps back what sleep unmapped and fails when it does not fit
(vllm/device_allocator/cumem.py), which kills the engine core here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

GiB = 1 << 30


@dataclass
class Gpu:
    index: int
    total: int
    used: int = 0

    @property
    def uuid(self) -> str:
        return f"GPU-sim-{self.index}"

    @property
    def free(self) -> int:
        return self.total - self.used


@dataclass
class Machine:
    gpus: list[Gpu] = field(default_factory=list)
    cuda: bool = True
    context: int = GiB // 2
    host_free: int = 512 * GiB
    nvml_inits: int = 0
    engines: list = field(default_factory=list)  # every LLM ever built, in order
    failures: list[tuple[str, str]] = field(default_factory=list)  # (model substring, kind)

    def fail_next(self, model: str, kind: str) -> None:
        """The next generate() of an engine whose model path contains `model` fails: 'dead'
        (the core exits: EngineDeadError) or 'oom' (CUDA out of memory, the core exits too)."""
        assert kind in ("dead", "oom")
        self.failures.append((model, kind))

    def take_failure(self, model: str) -> str | None:
        for i, (pattern, kind) in enumerate(self.failures):
            if pattern in model:
                del self.failures[i]
                return kind
        return None


MACHINE = Machine()


def reset(gpus: int = 1, total_gib: float = 80, cuda: bool = True, context_gib: float = 0.5,
          host_free_gib: float = 512) -> Machine:
    global MACHINE
    MACHINE.gpus = [Gpu(i, int(total_gib * GiB)) for i in range(gpus)]
    MACHINE.cuda = cuda
    MACHINE.context = int(context_gib * GiB)
    MACHINE.host_free = int(host_free_gib * GiB)
    MACHINE.nvml_inits = 0
    MACHINE.engines = []
    MACHINE.failures = []
    return MACHINE


def model_card(path: str) -> dict:
    """sim.json in the model folder: weights_gib, cudagraph_gib, max_model_len, template
    ('plain' | 'no_system' | 'mistral')."""
    try:
        return json.loads((Path(path) / "sim.json").read_text())
    except (OSError, ValueError):
        return {}


def required(total: int, utilization: float) -> int:
    return math.ceil(total * utilization)
