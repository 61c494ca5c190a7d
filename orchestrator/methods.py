"""The combination method a run uses, and why.

`aggregator: auto` (the default) means: by evidence when the profile has a methods table
(`orchestrate profile` measures one: `profiling.methods`), else `vote`. Any other aggregator
(a preset's `aggregator:`, `--aggregator`, the SDK's `aggregator=`) is named by the user and
wins over the evidence; the record still compares it with the validation table and warns when
it was below the single best expert there.

Methods and the settings they stand for:
  single:E    router fixed, experts [E], k 1, aggregator first (every question to E)
  first       aggregator first
  vote        aggregator vote, log-odds weights;  vote-plain: unweighted
  fuse:E      aggregator fuse with E as the aggregator expert
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import PoolConfig, RunConfig
from .errors import ConfigError

AUTO = "auto"
DEFAULT = "vote"  # without evidence


@dataclass(frozen=True)
class MethodChoice:
    method: str  # a methods-table name (module docstring)
    source: str  # named | evidence | default
    reason: str
    evidence: dict[str, Any] | None = None  # the profile's meta["methods"]

    def row(self, method: str | None = None) -> dict[str, Any] | None:
        method = method or self.method
        table = (self.evidence or {}).get("table") or []
        return next((r for r in table if r["method"] == method), None)

    def apply(self, config: RunConfig) -> RunConfig:
        """`config` with the settings the method stands for (named methods change nothing)."""
        if self.source == "named":
            return config
        if self.source == "default":  # no evidence: the vote as configured (weighting: auto)
            return config.model_copy(update={"aggregator": "vote"})
        kind, _, expert = self.method.partition(":")
        update: dict[str, Any] = {"aggregator": "vote" if kind == "vote-plain" else kind}
        if kind == "single":
            update.update(router="fixed", experts=[expert], k=1, aggregator="first")
        elif kind == "fuse":
            update["aggregator_expert"] = expert
        if kind in ("vote", "vote-plain"):
            update["aggregation"] = config.aggregation.model_copy(
                update={"weighting": "none" if kind == "vote-plain" else "log-odds"})
        return config.model_copy(update=update)

    def warnings(self) -> list[str]:
        """A line when the method that runs was below the single best expert on validation."""
        chosen, single = self.row(), (self.evidence or {}).get("best_single")
        if not chosen or not single or chosen["accuracy"] >= single["accuracy"]:
            return []
        return [f"the chosen method {self.method} scored {_pct(chosen['accuracy'])} on "
                f"validation, below the single best expert {single['method'][7:]} "
                f"({_pct(single['accuracy'])}); `--aggregator auto` would use "
                f"{self.evidence['best']['method']}"]

    def record(self) -> dict[str, Any]:
        ev = self.evidence or {}
        return {"method": self.method, "source": self.source, "reason": self.reason,
                "validation": ({k: ev.get(k) for k in ("n", "in_sample", "settings", "table",
                                                       "best", "best_single")} if ev else None),
                "warnings": self.warnings()}


def named_method(config: RunConfig, pool: PoolConfig, profile) -> str:
    """The table name of an aggregator the user named."""
    if config.aggregator == "fuse":
        from .aggregation.fuse import choose_aggregator

        return f"fuse:{choose_aggregator(config, pool, profile)}"
    if config.aggregator == "vote" and config.aggregation.weighting == "none":
        return "vote-plain"
    return config.aggregator


def choose_method(config: RunConfig, profile, pool: PoolConfig) -> MethodChoice:
    evidence = (profile.meta.get("methods") if profile is not None else None) or None
    if config.aggregator != AUTO:
        return MethodChoice(named_method(config, pool, profile), "named",
                            f"named by the user (aggregator {config.aggregator})", evidence)
    if not evidence:
        return MethodChoice(DEFAULT, "default", "no validation evidence (no profile, or one "
                            "built without the methods table); vote by default")
    best = evidence["best"]
    expert = best["method"].partition(":")[2]
    if expert and expert not in pool.expert_ids:
        raise ConfigError(f"The profile's best method {best['method']} names expert "
                          f"'{expert}', which pool '{pool.name}' does not have; rebuild the "
                          "profile with this pool or name an aggregator (--aggregator vote).")
    others = sorted((r for r in evidence["table"] if r["method"] != best["method"]),
                    key=lambda r: -(r["accuracy"] or 0.0))
    vs = ", ".join(f"{r['method']} {r['accuracy']:.2f}"
                   + (f" (on {r['n']})" if r["n"] != evidence["n"] else "") for r in others[:4])
    reason = (f"best on validation: {best['accuracy']:.2f} vs {vs} "
              f"({evidence['n']} questions, in-sample)")
    measured = evidence.get("settings") or {}
    now = {"router": config.resolved().router, "k": config.effective_k()}
    if measured and measured != now:
        reason += (f"; measured with router {measured['router']}, k={measured['k']}, while this "
                   f"run routes with {now['router']}, k={now['k']}")
    return MethodChoice(best["method"], "evidence", reason, evidence)


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"
