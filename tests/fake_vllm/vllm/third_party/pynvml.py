"""vllm/third_party/pynvml.py (NVML) over the simulated GPUs: physical indices, never affected
by CUDA_VISIBLE_DEVICES, as the real library."""

from dataclasses import dataclass

from .. import _sim


class NVMLError(Exception):
    pass


@dataclass
class _Memory:
    total: int
    free: int
    used: int


def nvmlInit() -> None:
    if not _sim.MACHINE.cuda:
        raise NVMLError("NVML Shared Library Not Found")
    _sim.MACHINE.nvml_inits += 1


def nvmlShutdown() -> None:
    pass


def nvmlDeviceGetCount() -> int:
    return len(_sim.MACHINE.gpus)


def nvmlDeviceGetHandleByIndex(index: int):
    if not 0 <= index < len(_sim.MACHINE.gpus):
        raise NVMLError("Invalid Argument")
    return _sim.MACHINE.gpus[index]


def nvmlDeviceGetHandleByUUID(uuid: str):
    for gpu in _sim.MACHINE.gpus:
        if gpu.uuid == uuid:
            return gpu
    raise NVMLError("Not Found")


def nvmlDeviceGetMemoryInfo(handle, version=None) -> _Memory:
    return _Memory(handle.total, handle.total - handle.used, handle.used)
