"""The server's request logs in the store (`orchestrate logs`): each request as received, its
routing and its answer or error, like `llm logs`."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any


def to_json(value: Any) -> str | None:
    """ASCII JSON: any text, lone surrogates included, is stored and read back intact."""
    if value is None:
        return None
    return json.dumps(value, ensure_ascii=True, default=str)


class RequestLogs:
    """Mixed into GenerationStore (its `_write`, `_read` and `path`)."""

    def log_request(self, request: Mapping[str, Any], response: Mapping[str, Any] | None = None,
                    *, routing: Mapping[str, Any] | None = None, error: str | None = None,
                    duration_s: float | None = None, model: str | None = None) -> int:
        """Record one served request (the body as received), its routing and its answer or
        error; returns the log id (`orchestrate logs show ID`)."""
        model = model or (request.get("model") if isinstance(request, Mapping) else None)
        values = (time.time(), model, "error" if error else "ok", duration_s, to_json(request),
                  to_json(routing), to_json(response), error)
        return self._write("logging a request", lambda c: c.execute(
            "INSERT INTO requests (created, model, status, duration_s, request, routing, "
            "response, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", values).lastrowid)

    def list_requests(self, limit: int = 20) -> list[dict[str, Any]]:
        """The latest logged requests, newest first (id, created, model, status, duration_s,
        question: the last user message)."""
        rows = self._read("listing request logs",
                          "SELECT id, created, model, status, duration_s, request, error "
                          "FROM requests ORDER BY id DESC LIMIT ?", (limit,))
        return [{"id": r[0], "created": r[1], "model": r[2], "status": r[3],
                 "duration_s": r[4], "question": _last_user(r[5]), "error": r[6]} for r in rows]

    def get_request(self, log_id: int) -> dict[str, Any] | None:
        rows = self._read("reading a request log",
                          "SELECT id, created, model, status, duration_s, request, routing, "
                          "response, error FROM requests WHERE id = ?", (log_id,))
        if not rows:
            return None
        r = rows[0]
        return {"id": r[0], "created": r[1], "model": r[2], "status": r[3], "duration_s": r[4],
                "request": json.loads(r[5]), "routing": json.loads(r[6]) if r[6] else None,
                "response": json.loads(r[7]) if r[7] else None, "error": r[8]}


def _last_user(body: str) -> str:
    try:
        messages = json.loads(body).get("messages") or []
    except (ValueError, AttributeError):
        return ""
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    content = users[-1].get("content") if users else ""
    if isinstance(content, list):
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""
