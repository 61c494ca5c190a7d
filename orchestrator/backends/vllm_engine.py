"""One vLLM engine (`vllm.LLM`) per base model: start, sleep, wake, shut down.

On a GPU an engine that is not needed goes to sleep (vLLM sleep mode) instead of being torn
down: level 1 keeps its weights in host RAM (wake-up is a copy back), level 2 drops them (wake-up
reloads them from disk), so switching base models never pays for a new engine start
(process, profiling, CUDA graphs). Where the platform has no sleep mode (vLLM on CPU), an idle
engine is shut down and its memory released. vllm is imported only here, and only when an
engine starts. An engine whose core died (or ran out of memory) is shut down and marked `dead`;
the backend starts it again on next use.
"""

from __future__ import annotations

import gc
import itertools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .vllm_memory import visible_devices

log = logging.getLogger(__name__)

GiB = 1 << 30
# Host RAM left free after a level-1 sleep parks an engine's weights there.
_RAM_HEADROOM = 4 * GiB
_clock = itertools.count(1)  # recency of use, for least-recently-used eviction


@dataclass(frozen=True)
class EngineStart:
    """One `vllm.LLM` construction (a base-model load)."""

    model: str
    seconds: float
    lora: bool


@dataclass
class Engine:
    key: tuple
    model: str                      # what the manifest named (for messages)
    kwargs: dict[str, Any]
    sleep_level: int | None = None  # None: chosen from host RAM when it goes to sleep
    llm: Any = None
    lora: bool = False
    asleep: int = 0                 # 0 awake, else the sleep level it is in
    users: set[str] = field(default_factory=set)
    gpus: tuple[int, ...] | None = None  # visible GPU indices; None: as the process inherits
    utilization: float = 0.92            # gpu_memory_utilization it starts with
    dead: str | None = None              # why its core died; restarted on next use
    last_used: int = 0
    freed: dict[int, int] = field(default_factory=dict)     # per GPU, by its last sleep
    residual: dict[int, int] = field(default_factory=dict)  # per GPU, held while asleep

    def touch(self) -> None:
        self.last_used = next(_clock)

    @property
    def running(self) -> bool:
        return self.llm is not None

    @property
    def max_model_len(self) -> int:
        return int(self.llm.llm_engine.model_config.max_model_len)

    def tokenizer(self):
        return self.llm.get_tokenizer()

    def start(self) -> EngineStart:
        from vllm import LLM

        begin = time.perf_counter()
        with visible_devices(self.gpus):  # the engine core process inherits it
            self.llm = LLM(**self.kwargs)
        self.lora = bool(self.kwargs.get("enable_lora"))
        self.asleep, self.dead = 0, None
        self.touch()
        seconds = time.perf_counter() - begin
        log.info("vllm engine for %s started in %.1f s", self.model, seconds)
        return EngineStart(self.model, seconds, self.lora)

    @property
    def can_sleep(self) -> bool:
        return bool(self.kwargs.get("enable_sleep_mode"))

    def sleep(self, memory=None) -> None:
        """Level 1 or 2; with `memory` (GpuMemory) the bytes it freed and kept per GPU are
        recorded: waking needs the freed bytes back (vllm/device_allocator/cumem.py)."""
        if self.asleep or self.llm is None:
            return
        level = self.sleep_level or choose_sleep_level(self.kwargs["model"])
        gpus = self.gpus or (0,)
        before = memory.free(gpus) if memory is not None and memory.available else None
        self.llm.sleep(level=level)
        self.asleep = level
        if before is not None:
            for gpu in gpus:
                free, total = memory.info(gpu)
                self.freed[gpu] = max(0, free - before[gpu])
                self.residual[gpu] = max(0, int(self.utilization * total) - self.freed[gpu])
        log.info("vllm engine for %s sleeps (level %d)", self.model, level)

    def wake(self) -> None:
        if not self.asleep:
            return
        if self.asleep == 2:  # the weights were discarded: reload them in place
            self.llm.wake_up(tags=["weights"])
            self.llm.collective_rpc("reload_weights")
            self.llm.wake_up(tags=["kv_cache"])
        else:
            self.llm.wake_up()
        self.llm.reset_prefix_cache()
        self.asleep = 0
        self.touch()
        log.info("vllm engine for %s is awake", self.model)

    def mark_dead(self, why: str) -> None:
        """The core died or ran out of memory: free what is left; the next use starts it."""
        log.warning("vllm engine for %s died (%s); it restarts on next use", self.model, why)
        self.shutdown()
        self.dead = why

    def shutdown(self, collect: bool = True) -> None:
        """Stop the engine-core process and free what the engine held (GPU memory too);
        `collect=False` leaves the final garbage collection to the caller (closing many)."""
        llm, self.llm = self.llm, None
        self.asleep = 0
        self.freed.clear()
        self.residual.clear()
        if llm is None:
            return
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception as err:  # already gone; freeing the rest still matters
            log.debug("engine core shutdown: %s", err)
        del llm
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        if collect:
            cleanup_dist_env_and_memory()
            gc.collect()
        log.info("vllm engine for %s shut down", self.model)


def sleep_mode_available() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_sleep_mode_available())


def model_folder(model: str) -> Path | None:
    """A local folder, or a hub id's snapshot in the local HF cache; None when neither."""
    folder = Path(model)
    if folder.is_dir():
        return folder
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, local_files_only=True))
    except Exception:
        return None


def weight_files(folder: Path) -> list[Path]:
    """The files vLLM loads, as its default loader picks them (vllm/model_executor/
    model_loader/default_loader.py): Mistral's consolidated*.safetensors when present (load
    format auto -> mistral), else the other *.safetensors, else *.bin, else *.pt. A repository
    with both a consolidated file and model-*.safetensors shards is counted once."""
    consolidated = sorted(folder.glob("consolidated*.safetensors"))
    if consolidated:
        return consolidated
    for pattern in ("*.safetensors", "*.bin", "*.pt"):
        files = sorted(folder.glob(pattern))
        if files:
            return files
    return []


def weights_bytes(model: str) -> int | None:
    """Size of a model's weight files: a local folder, or a hub id in the local HF cache."""
    folder = model_folder(model)
    if folder is None:
        return None
    return sum(p.stat().st_size for p in weight_files(folder)) or None


def available_ram() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def choose_sleep_level(model: str) -> int:
    """Level 1 (weights parked in host RAM) when they fit with headroom, else level 2."""
    size, free = weights_bytes(model), available_ram()
    if size is None or free is None:
        return 2
    return 1 if size + _RAM_HEADROOM <= free else 2
