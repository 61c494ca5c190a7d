"""Where a vLLM engine runs and what GPU memory it needs, by vLLM's own rules.

- Placement: an expert's `placement` names GPUs (indices into the GPUs this process sees, i.e.
  into CUDA_VISIBLE_DEVICES when it is set). The engine's processes get them through
  CUDA_VISIBLE_DEVICES, set before `vllm.LLM` spawns its engine core (vLLM forks or spawns it and
  its workers inherit the environment; the parent never initialises CUDA: vllm/utils/
  system_utils.py `_maybe_force_spawn` even checks for that). Several GPUs mean tensor
  parallelism over them.
- Memory at start: vLLM's worker refuses to start unless `free >= ceil(total *
  gpu_memory_utilization)` on each of its GPUs (vllm/v1/worker/utils.py `request_memory`, called
  from vllm/v1/worker/gpu_worker.py `init_device`).
- Memory at wake-up: the cuMem allocator maps back every allocation it unmapped at sleep
  (vllm/device_allocator/cumem.py `wake_up`); there is no check first, a short GPU simply fails
  the mapping. So waking needs free what sleeping freed, measured here around `sleep`.
- Memory of a sleeper: what sleep did not unmap. The CUDA context, NCCL buffers and, unless
  `sleep_mode_offload_cudagraph` (vllm/config/model.py, vLLM >= 0.32) puts them in the cuMem
  pool, the CUDA graphs (vllm/device_allocator/sleep_mode_backend.py `CuMemBackend.suspend`).

GPU memory is read through NVML (`vllm.third_party.pynvml`, vLLM's vendored copy), which never
initialises CUDA in this process.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from ..errors import ConfigError

GiB = 1 << 30
DEFAULT_UTILIZATION = 0.92  # LLM(gpu_memory_utilization=...) default, vllm/entrypoints/llm.py


def parse_gpus(expert_id: str, placement) -> tuple[int, ...] | None:
    """`placement` of a vllm expert -> GPU indices: 2 or [0, 1]; None: auto. A string names a
    server (openai_http), never GPUs: the executor would not see them as GPUs."""
    if placement is None:
        return None
    ok = isinstance(placement, int) and not isinstance(placement, bool)
    gpus = [placement] if ok else []
    if isinstance(placement, (list, tuple)) and all(
            isinstance(g, int) and not isinstance(g, bool) for g in placement):
        gpus, ok = list(placement), True
    if not ok or not gpus or min(gpus) < 0 or len(set(gpus)) != len(gpus):
        raise ConfigError(
            f"Expert '{expert_id}' (backend vllm) has placement {placement!r}. A vllm expert's "
            "placement is a GPU index (2) or a list of distinct indices ([0, 1]); a string "
            "names a server (openai_http). Leave it out for auto (GPU 0, or GPUs "
            "0..tensor_parallel_size-1, or where the executor packs it)."
        )
    return tuple(gpus)


def physical_ids(gpus: Sequence[int]) -> list[str]:
    """Indices among the visible GPUs -> entries of this process's CUDA_VISIBLE_DEVICES (ids or
    UUIDs), so a placement means the same GPUs whatever the parent was given."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return [str(g) for g in gpus]
    entries = [v.strip() for v in visible.split(",") if v.strip()]
    missing = [g for g in gpus if g >= len(entries)]
    if missing:
        raise ConfigError(
            f"Placement GPU {missing[0]} is not visible: CUDA_VISIBLE_DEVICES={visible!r} shows "
            f"{len(entries)} GPU(s), numbered 0..{len(entries) - 1}. Use one of those indices."
        )
    return [entries[g] for g in gpus]


@contextmanager
def visible_devices(gpus: Sequence[int] | None) -> Iterator[None]:
    """CUDA_VISIBLE_DEVICES for processes started inside the block (the engine core and its
    workers); the previous value is back afterwards. None: leave it as it is."""
    if gpus is None:
        yield
        return
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(physical_ids(gpus))
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = before


def required_bytes(total: int, utilization: float) -> int:
    """What vLLM asks to be free at start on each GPU: ceil(total * utilization)."""
    return math.ceil(total * utilization)


class GpuMemory:
    """Free and total memory per visible GPU index, read through NVML (no CUDA init here).
    `available` is False where there is no NVML (vLLM on CPU): no budget is enforced then."""

    def __init__(self) -> None:
        self._nvml = None
        self.available = False
        try:
            from vllm.platforms import current_platform
            from vllm.third_party import pynvml

            if current_platform.is_cuda_alike():
                pynvml.nvmlInit()
                self._nvml = pynvml
                self.available = True
        except Exception:
            self._nvml = None

    def info(self, gpu: int) -> tuple[int, int]:
        """(free, total) bytes of visible GPU `gpu`."""
        ident = physical_ids([gpu])[0]
        nvml = self._nvml
        if ident.isdigit():
            handle = nvml.nvmlDeviceGetHandleByIndex(int(ident))
        else:
            handle = nvml.nvmlDeviceGetHandleByUUID(ident)
        mem = nvml.nvmlDeviceGetMemoryInfo(handle)
        return int(mem.free), int(mem.total)

    def free(self, gpus: Sequence[int]) -> dict[int, int]:
        return {g: self.info(g)[0] for g in gpus}

    def close(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass
            self._nvml = None
            self.available = False


def gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB"
