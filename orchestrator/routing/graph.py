"""The routing graph: skill nodes -> expert nodes, edges weighted by the profile (estimate,
+1/-1 score, count, standard error). Built once per profile; the routers read its dense views
(`estimate`, `scores`: [E, S]) for vectorised scoring and the graph itself for evidence and
load-aware assignment."""

from __future__ import annotations

from collections.abc import Sequence

import networkx as nx
import numpy as np

from ..profiling.profile import Profile


def skill_membership(skill_ids: Sequence[Sequence[int]], n_skills: int) -> np.ndarray:
    """[n, S] indicator of each question's skills."""
    m = np.zeros((len(skill_ids), n_skills), dtype=np.float32)
    for i, ids in enumerate(skill_ids):
        if ids:
            m[i, list(ids)] = 1.0
    return m


class RoutingGraph:
    def __init__(self, profile: Profile):
        self.profile = profile
        self.experts, self.skills = profile.experts, profile.skills
        self.estimate = profile.estimate.astype(np.float32)  # [E, S]
        self.stderr = profile.stderr.astype(np.float32)  # [E, S]
        self.scores = profile.scores.astype(np.float32)  # [E, S]
        self.accuracy = profile.accuracy.astype(np.float32)  # [E]
        n = np.maximum(profile.n.astype(np.float32), 1)
        self.global_stderr = np.sqrt(self.accuracy * (1 - self.accuracy) / n)  # [E]
        g = nx.DiGraph()
        for e, acc in zip(self.experts, self.accuracy):
            g.add_node(("expert", e), accuracy=float(acc))
        for j, s in enumerate(self.skills):
            g.add_node(("skill", s))
            for i, e in enumerate(self.experts):
                if profile.counts[i, j]:
                    g.add_edge(("skill", s), ("expert", e), estimate=float(self.estimate[i, j]),
                               score=int(self.scores[i, j]), count=int(profile.counts[i, j]),
                               stderr=float(self.stderr[i, j]))
        self.graph = g
        self._edges: dict[tuple[str, str], dict] | None = None

    def membership(self, skill_ids: Sequence[Sequence[int]]) -> np.ndarray:
        """[n, S] indicator of each query's skills."""
        return skill_membership(skill_ids, len(self.skills))

    def skill_estimates(self, skill_ids: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """[n, E] mean shrunken estimate over each query's skills (global accuracy if none),
        and the mean standard error of those estimates (the global one if none)."""
        m = self.membership(skill_ids)
        n_sk = m.sum(axis=1, keepdims=True)
        est = (m @ self.estimate.T) / np.maximum(n_sk, 1)
        se = (m @ self.stderr.T) / np.maximum(n_sk, 1)
        return (np.where(n_sk > 0, est, self.accuracy[None, :]),
                np.where(n_sk > 0, se, self.global_stderr[None, :]))

    def evidence(self, skill_ids: Sequence[int], expert: str) -> list[dict]:
        """The profile edges behind a choice: per skill of the query, the edge to `expert`."""
        if self._edges is None:  # read once from the graph, then plain look-ups
            self._edges = {
                (u[1], v[1]): {"skill": u[1], **{k: round(x, 4) if isinstance(x, float) else x
                                                  for k, x in d.items()}}
                for u, v, d in self.graph.edges(data=True)
            }
        return [e for j in skill_ids if (e := self._edges.get((self.skills[j], expert)))]
