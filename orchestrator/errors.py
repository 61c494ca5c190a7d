"""One exception hierarchy for the library.

Every message says what was given, what is allowed and how to fix it. The CLI turns these into
one red line and an exit code; the server (later) into OpenAI error envelopes.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence


class OrchestratorError(Exception):
    """Base class of every error this library raises on purpose."""

    exit_code = 1


class UserError(OrchestratorError):
    """The user's input (a file, a flag, a name) is wrong; fixing the input fixes it."""

    exit_code = 2


class ConfigError(UserError):
    """A pool manifest or run preset is invalid."""


class UnknownNameError(UserError):
    """A name (backend, router, aggregator, expert) is not registered."""

    def __init__(self, kind: str, name: str, available: Iterable[str], hint: str = ""):
        self.kind, self.name = kind, name
        self.available = sorted(available)
        close = difflib.get_close_matches(name, self.available, n=1)
        guess = f" Did you mean '{close[0]}'?" if close else ""
        listing = ", ".join(self.available) if self.available else "(none)"
        super().__init__(f"Unknown {kind} '{name}'. Available: {listing}.{guess}{hint}")


class BenchmarkFormatError(UserError):
    """A benchmark file cannot be read: names the file, the line or index and the field."""


class ModelNotFoundError(UserError):
    """A model reference does not resolve to a file, folder or installed package."""


class RoutingError(UserError):
    """A routing request cannot be satisfied (k larger than the pool, unknown expert...)."""


class InvalidRequestError(UserError):
    """A chat request the pool cannot serve as given (HTTP 400); `param` names the field."""

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_request"):
        super().__init__(message)
        self.param, self.code = param, code


class UnknownModelError(UserError):
    """`model` names neither the mixture nor an expert of the pool (HTTP 404)."""

    code = "model_not_found"

    def __init__(self, model: str, available: Sequence[str]):
        shown = model if len(model) <= 64 else model[:61] + "..."
        super().__init__(f"The model '{shown}' does not exist; available: "
                         f"{', '.join(available)}.")
        self.param = "model"


class StoreError(UserError):
    """The generation store cannot be used as given (corrupt, read-only, full, newer schema);
    the message names the file and how to fix it."""


class BackendError(OrchestratorError):
    """A backend failed as a whole (could not load a model, server unreachable...)."""


class ReportError(OrchestratorError):
    """A run report (its plots or report.md) could not be drawn or written."""


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


class QueueFullError(OrchestratorError):
    """The serving queue holds max_queue requests already; retry after `retry_after_s` (HTTP 503)."""

    def __init__(self, name: str, max_queue: int, retry_after_s: float):
        self.max_queue, self.retry_after_s = max_queue, retry_after_s
        super().__init__(
            f"The '{name}' queue is full: {plural(max_queue, 'request')} already waiting "
            f"(max_queue={max_queue}). Retry after {retry_after_s:g}s, or raise max_queue."
        )


class DeadlineExceededError(OrchestratorError):
    """A request did not finish before its deadline; its result, if any, was dropped."""

    def __init__(self, deadline_s: float, stage: str):
        self.deadline_s, self.stage = deadline_s, stage
        super().__init__(
            f"The request missed its deadline of {deadline_s:g}s ({stage}). "
            "Allow a longer deadline, or retry when the server is less loaded."
        )


class ShuttingDownError(OrchestratorError):
    """The server is draining or closed and takes no new work (HTTP 503)."""

    def __init__(self, name: str, detail: str = "it accepts no new requests"):
        super().__init__(f"The '{name}' batcher is shutting down: {detail}. Retry on another instance.")


class MissingExtraError(UserError):
    """An optional dependency is not installed; the message names the extra that brings it."""

    def __init__(self, needed_by: str, modules: Sequence[str], extras: Sequence[str]):
        self.needed_by, self.modules, self.extras = needed_by, tuple(modules), tuple(extras)
        names = " and ".join(f"[{e}]" for e in self.extras)
        spec = ",".join(self.extras)
        super().__init__(
            f"{needed_by[:1].upper()}{needed_by[1:]} needs the {names} "
            f"{'extra' if len(self.extras) == 1 else 'extras'} ({', '.join(self.modules)} not "
            f"installed): pip install 'orchestrator[{spec}]'"
        )


class ModelNotCachedError(ModelNotFoundError):
    """A hub model id that the local Hugging Face cache does not hold."""


class ServerUnreachableError(BackendError):
    """An OpenAI-compatible server did not answer (refused, timed out, or an error status)."""


class ModelNotServedError(UserError):
    """An OpenAI-compatible server answers but does not list the model an expert asks for."""


class FolderNotFoundError(UserError):
    """A folder the manifest names (a LoRA adapter, a LoRA-MoE gate) is missing or incomplete."""


class OutputError(UserError):
    """An output location cannot be used: a file where a folder is needed, not writable, or held
    by another live run. Checked before any work starts."""


class InvalidQuestionError(ConfigError):
    """A question given to the SDK is malformed (empty, options as one string, an unknown
    answer_type...); a ConfigError, as the SDK's earlier checks raised."""
