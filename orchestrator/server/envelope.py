"""The HTTP envelope of `orchestrate serve`: OpenAI error envelopes, the status of each library
error, bounded JSON body reading and Server-Sent Events (the chat shapes are in `wire.py`).

Status mapping (shared/reference/serving-behaviours.md 2a): input problems are 4xx so that
clients do not retry them; overload and shutdown are 503 (queue full adds `Retry-After`); a
missed deadline is 504; a pool whose experts all failed is 503 (retryable); only real server
faults are 500, with a generic message (the traceback is logged, never sent). Every message is
cut to MAX_ERROR_CHARS and has server paths masked; request bodies are never echoed.
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from ..errors import (
    BackendError,
    DeadlineExceededError,
    InvalidRequestError,
    OrchestratorError,
    QueueFullError,
    ShuttingDownError,
    UnknownModelError,
    UserError,
)

log = logging.getLogger(__name__)

MAX_ERROR_CHARS = 1000  # vLLM: at most 1,000 chars per error; LiteLLM cuts at 2,000
INTERNAL_MESSAGE = "The server had an error while processing your request. It has been logged."
_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][\w.~@+-]+){2,}[\\/]?")  # /a/b, C:\a\b


class RequestCancelledError(OrchestratorError):
    """The client went away before its request was generated; nothing was sent to a backend."""

    def __init__(self) -> None:
        super().__init__("The client disconnected before the request was generated.")


class APIError(Exception):
    """An error as the server sends it: status, OpenAI envelope fields and extra headers."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = "invalid_request",
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status, sanitize(message), type_, param, code)
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def sanitize(message: str) -> str:
    """Mask filesystem paths and bound the length of a message sent to a client."""
    message = _PATH.sub("<path>", message)
    if len(message) > MAX_ERROR_CHARS:
        message = message[: MAX_ERROR_CHARS - 3] + "..."
    return message


def api_error(exc: BaseException) -> APIError:
    """The status and envelope of an exception raised while serving a request."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, UnknownModelError):
        return APIError(404, str(exc), param="model", code="model_not_found")
    if isinstance(exc, InvalidRequestError):
        return APIError(400, str(exc), param=exc.param, code=exc.code)
    if isinstance(exc, UserError):  # unknown router, k larger than the pool, no profile...
        return APIError(400, str(exc))
    if isinstance(exc, QueueFullError):
        retry = str(max(1, math.ceil(exc.retry_after_s)))
        return APIError(503, str(exc), "overloaded_error", code="queue_full",
                        headers={"Retry-After": retry})
    if isinstance(exc, ShuttingDownError):
        return APIError(503, str(exc), "overloaded_error", code="shutting_down")
    if isinstance(exc, DeadlineExceededError):
        return APIError(504, str(exc), "timeout_error", code="deadline_exceeded")
    if isinstance(exc, BackendError):
        log.warning("experts failed: %s", exc)
        # The first backend error may name files or hosts: keep the counts only.
        return APIError(503, str(exc).split(" First error:")[0], "server_error",
                        code="experts_unavailable")
    if isinstance(exc, RequestCancelledError):
        return APIError(499, str(exc), code="client_closed_request")
    log.error("unexpected error while serving a request", exc_info=exc)
    return APIError(500, INTERNAL_MESSAGE, "server_error", code="internal_error")


# -- request bodies -----------------------------------------------------------------------------

def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def read_json(request: Request, max_bytes: int) -> Any:
    """The JSON body, read at most `max_bytes` far (413 on the declared length and on the bytes
    actually received); 400 for anything that is not UTF-8 JSON, 415 for a non-JSON media type
    (a browser's cross-site "simple" request cannot send application/json without a preflight)."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media and media != "application/json" and not media.endswith("+json"):
        raise APIError(415, "The request body must be JSON: send 'Content-Type: "
                       "application/json'.", code="unsupported_media_type")
    too_large = APIError(413, f"The request body is larger than the limit of {max_bytes} bytes.",
                         code="request_too_large")
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise APIError(400, "The Content-Length header is not a number.")
        if int(declared) > max_bytes:
            raise too_large
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise too_large
            chunks.append(chunk)
    except ClientDisconnect:
        raise RequestCancelledError() from None
    try:
        return json.loads(b"".join(chunks).decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise APIError(400, "The request body is not valid UTF-8.", code="invalid_json") from None
    except (ValueError, RecursionError) as err:
        where = f" (line {err.lineno}, column {err.colno})" if hasattr(err, "lineno") else ""
        raise APIError(400, f"The request body is not valid JSON{where}; send one JSON "
                       "object.", code="invalid_json") from None


def require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        kind = "null" if body is None else type(body).__name__
        raise APIError(400, f"The request body must be a JSON object, not {kind}.")
    return body


# -- Server-Sent Events -------------------------------------------------------------------------

def sse(chunks: Iterable[dict[str, Any]]) -> Iterator[str]:
    """`data: {chunk}` events ending with `data: [DONE]`. An error after the first byte goes
    in-band as an error event, then [DONE] (vLLM's behaviour; the status is already sent)."""
    try:
        for chunk in chunks:
            yield f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n"
    except Exception as exc:
        yield f"data: {json.dumps(api_error(exc).body())}\n\n"
    yield "data: [DONE]\n\n"


# -- handlers -----------------------------------------------------------------------------------

def guarded(handler: Callable[[Request], Awaitable[Response]]):
    """Any exception becomes its OpenAI envelope (unexpected ones: a generic 500, logged)."""

    @functools.wraps(handler)
    async def wrapper(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as exc:
            return api_error(exc).response()

    return wrapper


async def require_api_key(request: Request) -> None:
    key = request.app.state.serving.settings.api_key
    if not key:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise APIError(401, "Missing API key: send it as 'Authorization: Bearer <key>'.",
                       "authentication_error", code="invalid_api_key",
                       headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(given.strip().encode(), key.encode()):
        raise APIError(401, "Incorrect API key provided.", "authentication_error",
                       code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
