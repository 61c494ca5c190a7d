"""`orchestrate serve`: `build_app(orchestrator)` -> FastAPI, with the OpenAI wire types and
errors (the micro-batcher it uses lives in `orchestrator.workers.batcher`)."""

from .app import build_app

__all__ = ["build_app"]
