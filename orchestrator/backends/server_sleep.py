"""Sleep and wake vLLM servers that share a GPU, so one engine is awake per GPU at a time
(Symbolic-MoE's schedule with servers instead of in-process engines).

vLLM's server exposes `POST /sleep?level=N`, `POST /wake_up` and `GET /is_sleeping` when
started with `--enable-sleep-mode` and `VLLM_SERVER_DEV_MODE=1`
(vllm/entrypoints/serve/sleep/api_router.py); `orchestrate pools up` starts servers that way.
An openai_http expert with `sleep_level` wakes its server when it is loaded. Servers are not
put to sleep on release (a LoRA expert on the same server would wake it again at once) but
when an expert of another server with the same `placement` (the GPU, e.g. `gpu:3`) is loaded:
every server there with no loaded expert sleeps first, then the new one wakes.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from ..errors import BackendError

log = logging.getLogger(__name__)


@dataclass
class _Server:
    root: str  # http://host:port, without /v1
    placement: str | None
    level: int
    awake: bool | None = None  # None: not known yet
    loaded: set[str] = field(default_factory=set)


def server_root(base_url: str) -> str:
    url = base_url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


class SleepSwitch:
    def __init__(self) -> None:
        self._servers: dict[str, _Server] = {}
        self._lock = threading.Lock()  # held across the HTTP calls: switches are serial

    def wake(self, expert_id: str, base_urls: list[str], placement: str | None, level: int,
             timeout_s: float) -> None:
        """Make the expert's servers awake (sleeping idle ones on its placement first)."""
        import httpx

        roots = [server_root(u) for u in base_urls]
        with self._lock, httpx.Client(timeout=timeout_s) as client:
            for root in roots:
                self._servers.setdefault(root, _Server(root, placement, level))
            if placement is not None:
                for s in self._servers.values():
                    if (s.placement == placement and s.root not in roots and not s.loaded
                            and s.awake is not False):
                        self._call(client, s, "POST", f"/sleep?level={s.level}")
                        s.awake = False
            for root in roots:
                s = self._servers[root]
                if s.awake is None:
                    s.awake = not self._call(client, s, "GET", "/is_sleeping")["is_sleeping"]
                if not s.awake:
                    self._call(client, s, "POST", "/wake_up")
                    s.awake = True
                s.loaded.add(expert_id)

    def released(self, expert_id: str) -> None:
        with self._lock:
            for s in self._servers.values():
                s.loaded.discard(expert_id)

    @staticmethod
    def _call(client, server: _Server, method: str, path: str) -> dict:
        import httpx

        try:
            resp = client.request(method, server.root + path)
            resp.raise_for_status()
            return resp.json() if resp.content else {}
        except (httpx.HTTPError, ValueError) as err:
            raise BackendError(
                f"{method} {server.root}{path} failed ({type(err).__name__}: {err}). A server "
                "used with sleep_level must run with --enable-sleep-mode and "
                "VLLM_SERVER_DEV_MODE=1 (orchestrate pools up starts it so).") from None
