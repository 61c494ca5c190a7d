"""Replicas of one OpenAI-compatible server: which one gets the next request, and which are
cooling down after a failure.

Semantics follow LiteLLM's router (litellm/router_utils/cooldown_handlers.py): a replica that
fails with a connection error, a timeout or a 5xx is put in cooldown (`cooldown_s`, LiteLLM's
default 5 s) and the request fails over at once to another replica; a 4xx other than 408/409/429
is the request's own fault, so it neither fails over nor cools the replica down (408, 409 and
429 fail over at once but cool nothing down). Unlike LiteLLM,
the first such failure already cools a replica down (a dead server fails every request), a
replica that is alone is never cooled down (there is nowhere else to go; the caller's retries
with backoff apply), and a replica whose cooldown ended gets one health probe
(GET {base_url}/models, as `vllm serve` answers) before it takes traffic again.

Requests go to the healthy replica with the least outstanding work (max_tokens of the
requests in flight there), ties to the one that got fewer requests. State is shared by every
expert that lists the same URL, across threads (one lock; nothing slow is done under it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class Replica:
    url: str  # base URL without a trailing slash, e.g. http://10.0.0.5:8000/v1
    outstanding: int = 0  # expected tokens of the requests in flight
    sent: int = 0
    failures: int = 0
    cooldown_until: float = 0.0  # time.monotonic(); 0: never cooled down
    needs_probe: bool = False
    probing: bool = False

    def healthy(self, now: float) -> bool:
        return self.cooldown_until <= now and not self.needs_probe


@dataclass(frozen=True)
class Pick:
    replica: Replica
    probe: bool = False  # probe its health before sending


class ReplicaTable:
    """Every replica a backend talks to, by URL."""

    def __init__(self) -> None:
        self._by_url: dict[str, Replica] = {}
        self.lock = threading.Lock()

    def group(self, urls: Sequence[str]) -> list[Replica]:
        with self.lock:
            return [self._by_url.setdefault(u, Replica(u)) for u in urls]

    def choose(self, group: list[Replica], tried: set[str]) -> Pick:
        """An untried replica whose cooldown just ended (to probe, so that it rejoins); else
        the healthy untried replica with the least outstanding work; else (every replica tried
        or cooling down) the healthy one with the least work, or the one whose cooldown ends
        first."""
        now = time.monotonic()
        with self.lock:
            fresh = [r for r in group if r.url not in tried]
            due = [r for r in fresh if r.needs_probe and r.cooldown_until <= now and not r.probing]
            if due:
                due[0].probing = True
                return Pick(due[0], probe=True)
            healthy = [r for r in fresh if r.healthy(now)]
            if healthy:
                return Pick(min(healthy, key=lambda r: (r.outstanding, r.sent)))
            anyone = [r for r in group if r.healthy(now)] or group
            return Pick(min(anyone, key=lambda r: (r.cooldown_until, r.outstanding, r.sent)))

    def has_alternative(self, group: list[Replica], tried: set[str]) -> bool:
        """Whether an untried replica is healthy or due for a probe (a failover target)."""
        now = time.monotonic()
        with self.lock:
            return any(r.url not in tried and r.cooldown_until <= now and not r.probing
                       for r in group)

    def begin(self, replica: Replica, work: int) -> None:
        with self.lock:
            replica.outstanding += work
            replica.sent += 1

    def end(self, replica: Replica, work: int) -> None:
        with self.lock:
            replica.outstanding -= work

    def probed(self, replica: Replica, ok: bool, cooldown_s: float) -> None:
        with self.lock:
            replica.probing = False
            replica.needs_probe = not ok
            if not ok:
                replica.cooldown_until = time.monotonic() + cooldown_s

    def failed(self, group: list[Replica], replica: Replica, cooldown_s: float) -> None:
        """A connection error, timeout or 5xx: cool the replica down (when it has siblings)."""
        with self.lock:
            replica.failures += 1
            if len(group) > 1:
                replica.cooldown_until = time.monotonic() + cooldown_s
                replica.needs_probe = True
