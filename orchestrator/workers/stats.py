"""Per-expert counters of one execution: loads, calls, tokens, seconds."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


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

    @property
    def backend_s(self) -> float:
        return self.load_s + self.generate_s + self.release_s

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("load_s", "generate_s", "release_s"):
            d[key] = round(d[key], 4)
        return d


@dataclass
class ExecutionStats:
    experts: dict[str, ExpertStats] = field(default_factory=dict)
    wall_s: float = 0.0
    from_store: int = 0  # results answered by the generation store, not generated

    def expert(self, expert_id: str) -> ExpertStats:
        return self.experts.setdefault(expert_id, ExpertStats())

    @property
    def loads_total(self) -> int:
        return sum(s.loads for s in self.experts.values())

    @property
    def backend_s(self) -> float:
        return sum(s.backend_s for s in self.experts.values())

    def merge(self, other: ExecutionStats) -> None:
        for name, s in other.experts.items():
            mine = self.expert(name)
            for key, value in asdict(s).items():
                setattr(mine, key, getattr(mine, key) + value)
        self.wall_s += other.wall_s
        self.from_store += other.from_store
