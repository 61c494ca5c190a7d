"""vllm/v1/engine/exceptions.py: raised by every call after the engine core died."""


class EngineDeadError(Exception):
    def __init__(self, *args):
        super().__init__("EngineCore encountered an issue. See stack trace (above) for the "
                         "root cause.", *args)
