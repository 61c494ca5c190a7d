"""How a score matrix becomes each query's experts, shared by the profile routers.

Given per-query estimates `est[n, E]` of each expert's success (and their uncertainty
`stderr[n, E]`):

- top-k: the k highest estimates, best first (ties: pool order).
- adaptive k (`routing.adaptive_k`): a query whose leading expert is confidently good
  (est - z * stderr >= `routing.confidence`) is sent to that expert alone; the others get k.
  With a majority vote, two experts never outvote the leading one, so the only useful sizes are
  1 and k. The mean k is reported.
- load-aware assignment (`routing.max_experts`): at most that many distinct experts serve the
  whole batch, so a batch loads at most that many models. The subset is chosen over the routing
  graph's expert nodes to maximise the batch's total estimated success of its top-k (exhaustive
  when the subsets are few, otherwise greedy with single swaps), then each query takes its top-k
  inside the subset. The accuracy cost is measured in `benchmarks/replay_quality.py`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

EXHAUSTIVE_LIMIT = 5000  # subsets scored at once when choosing a load-aware subset


@dataclass(frozen=True)
class Policy:
    k: int
    adaptive: bool = False
    confidence: float = 0.8
    z: float = 1.0
    max_experts: int | None = None

    @classmethod
    def from_config(cls, k: int, routing) -> Policy:
        return cls(k, routing.adaptive_k, routing.confidence, routing.z, routing.max_experts)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """[n, E] -> [n, k] column indices, best first (ties: lower index first)."""
    if k == 1:
        return np.argmax(scores, axis=1)[:, None]
    order = np.argsort(-scores, axis=1, kind="stable")
    return order[:, :k]


def _batch_value(est: np.ndarray, k: int) -> float:
    """Total of each query's k best estimates."""
    kk = min(k, est.shape[1])
    part = -np.partition(-est, kk - 1, axis=1)[:, :kk] if kk < est.shape[1] else est
    return float(part.sum())


def choose_subset(est: np.ndarray, k: int, cap: int) -> np.ndarray:
    """Indices of at most `cap` experts (>= k) maximising the batch's total top-k estimate."""
    n_e = est.shape[1]
    cap = max(k, min(cap, n_e))
    if cap >= n_e:
        return np.arange(n_e)
    if math.comb(n_e, cap) <= EXHAUSTIVE_LIMIT:
        best, best_value = None, -np.inf
        for subset in itertools.combinations(range(n_e), cap):
            value = _batch_value(est[:, subset], k)
            if value > best_value:
                best, best_value = subset, value
        return np.array(sorted(best))
    chosen: list[int] = []
    while len(chosen) < cap:  # greedy forward selection
        rest = [e for e in range(n_e) if e not in chosen]
        gains = [_batch_value(est[:, chosen + [e]], k) for e in rest]
        chosen.append(rest[int(np.argmax(gains))])
    improved = True
    while improved:  # single swaps until none helps
        improved = False
        value = _batch_value(est[:, chosen], k)
        for i in range(len(chosen)):
            for e in range(n_e):
                if e in chosen:
                    continue
                trial = chosen[:i] + [e] + chosen[i + 1:]
                if _batch_value(est[:, trial], k) > value + 1e-9:
                    chosen, improved = trial, True
                    break
            if improved:
                break
    return np.array(sorted(chosen))


def confident(est: np.ndarray, stderr: np.ndarray | None, lead: np.ndarray, z: float,
              confidence: float) -> np.ndarray:
    """[n] whether each query's leading expert `lead[i]` is confidently good:
    est - z * stderr >= confidence (adaptive k sends such a query to it alone)."""
    rows = np.arange(est.shape[0])
    spread = stderr[rows, lead] if stderr is not None else 0.0
    return est[rows, lead] - z * spread >= confidence


def choose(est: np.ndarray, stderr: np.ndarray | None, policy: Policy) -> list[np.ndarray]:
    """Each query's expert columns, best first."""
    allowed = np.arange(est.shape[1])
    if policy.max_experts is not None:
        allowed = choose_subset(est, policy.k, policy.max_experts)
    sub = est[:, allowed]
    picked = allowed[top_k(sub, min(policy.k, len(allowed)))]  # [n, k]
    if not policy.adaptive or policy.k == 1:
        return list(picked)
    sure = confident(est, stderr, picked[:, 0], policy.z, policy.confidence)
    return [picked[i, :1] if sure[i] else picked[i] for i in range(len(picked))]
