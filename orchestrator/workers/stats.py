"""Per-expert counters of one execution: loads, calls, tokens, seconds; per-placement walls."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field

# merges may come from several threads at once (placement workers, server batches)
_MERGE_LOCK = threading.RLock()


@dataclass
class ExpertStats:
    calls: int = 0
    loads: int = 0
    errors: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    load_s: float = 0.0
    generate_s: float = 0.0
    release_s: float = 0.0
    failovers: int = 0  # requests an openai_http expert moved to another replica

    @property
    def backend_s(self) -> float:
        return self.load_s + self.generate_s + self.release_s

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("load_s", "generate_s", "release_s"):
            d[key] = round(d[key], 4)
        return d


@dataclass
class PlacementStats:
    """One placement's worker in one execution: its requests and how long it was busy."""

    requests: int = 0
    experts: int = 0
    busy_s: float = 0.0


@dataclass
class ExecutionStats:
    experts: dict[str, ExpertStats] = field(default_factory=dict)
    wall_s: float = 0.0
    placements: dict[str, PlacementStats] = field(default_factory=dict)
    from_store: int = 0  # results answered by the generation store, not generated

    def expert(self, expert_id: str) -> ExpertStats:
        return self.experts.setdefault(expert_id, ExpertStats())

    def placement(self, key: str) -> PlacementStats:
        return self.placements.setdefault(key, PlacementStats())

    @property
    def loads_total(self) -> int:
        return sum(s.loads for s in self.experts.values())

    @property
    def failovers_total(self) -> int:
        return sum(s.failovers for s in self.experts.values())

    @property
    def backend_s(self) -> float:
        return sum(s.backend_s for s in self.experts.values())

    def merge(self, other: ExecutionStats) -> None:
        """Add `other`'s counters (safe to call from several threads at once)."""
        with _MERGE_LOCK:
            for name, s in other.experts.items():
                mine = self.expert(name)
                for key, value in asdict(s).items():
                    setattr(mine, key, getattr(mine, key) + value)
            for key, p in other.placements.items():
                mine_p = self.placement(key)
                for attr, value in asdict(p).items():
                    setattr(mine_p, attr, getattr(mine_p, attr) + value)
            self.wall_s += other.wall_s
            self.from_store += other.from_store
