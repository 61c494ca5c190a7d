"""`orchestrate serve`: `build_app(orchestrator)` -> FastAPI. Modules: app (chat, models, health,
lifespan), route_api (/v1/route), wire (OpenAI chat shapes <-> ChatCall/ChatResult), envelope
(errors, body reading, SSE, the key check), settings (serve.yaml), middleware (request ids,
Host/Origin, shutdown envelope), limits (read timeouts, connection cap, log rate limit), metrics
(prometheus_client), server (uvicorn). The micro-batcher lives in `orchestrator.workers.batcher`."""

from .app import build_app

__all__ = ["build_app"]
