"""One vLLM engine (`vllm.LLM`) per base model: start, sleep, wake, shut down.

On a GPU an engine that is not needed goes to sleep (vLLM sleep mode) instead of being torn
down: level 1 keeps its weights in host RAM (wake-up is a copy back), level 2 drops them (wake-up
reloads them from disk), so switching base models never pays for a new engine start
(process, profiling, CUDA graphs). Where the platform has no sleep mode (vLLM on CPU), an idle
engine is shut down and its memory released. vllm is imported only here, and only when an
engine starts.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

GiB = 1 << 30
# Host RAM left free after a level-1 sleep parks an engine's weights there.
_RAM_HEADROOM = 4 * GiB


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

    @property
    def max_model_len(self) -> int:
        return int(self.llm.llm_engine.model_config.max_model_len)

    def tokenizer(self):
        return self.llm.get_tokenizer()

    def start(self) -> EngineStart:
        from vllm import LLM

        begin = time.perf_counter()
        self.llm = LLM(**self.kwargs)
        self.lora = bool(self.kwargs.get("enable_lora"))
        seconds = time.perf_counter() - begin
        log.info("vllm engine for %s started in %.1f s", self.model, seconds)
        return EngineStart(self.model, seconds, self.lora)

    @property
    def can_sleep(self) -> bool:
        return bool(self.kwargs.get("enable_sleep_mode"))

    def sleep(self) -> None:
        if self.asleep or self.llm is None:
            return
        level = self.sleep_level or choose_sleep_level(self.kwargs["model"])
        self.llm.sleep(level=level)
        self.asleep = level
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
        log.info("vllm engine for %s is awake", self.model)

    def shutdown(self) -> None:
        """Stop the engine-core process and free what the engine held (GPU memory too)."""
        llm, self.llm = self.llm, None
        if llm is None:
            return
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception as err:  # already gone; freeing the rest still matters
            log.debug("engine core shutdown: %s", err)
        del llm
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()
        gc.collect()
        log.info("vllm engine for %s shut down", self.model)


def sleep_mode_available() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_sleep_mode_available())


def weights_bytes(model: str) -> int | None:
    """Size of a model's weight files: a local folder, or a hub id in the local HF cache."""
    folder = Path(model)
    if not folder.is_dir():
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(model, local_files_only=True))
        except Exception:
            return None
    files = [p for pattern in ("*.safetensors", "*.bin", "*.pt") for p in folder.glob(pattern)]
    return sum(p.stat().st_size for p in files) or None


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
