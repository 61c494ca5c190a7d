"""vllm.platforms.current_platform: CUDA (with sleep mode) or CPU, as the simulation says."""

from .. import _sim


class _Platform:
    def is_cuda_alike(self) -> bool:
        return _sim.MACHINE.cuda

    def is_sleep_mode_available(self) -> bool:
        return _sim.MACHINE.cuda


current_platform = _Platform()
