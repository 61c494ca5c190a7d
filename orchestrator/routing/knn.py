"""`knn`: instance-level routing. For each query, the experts' success on its nearest validation
questions (cosine of question embeddings), shrunken toward each expert's global accuracy:
estimate[e] = (sum_{j in N(q)} correct[j, e] + m * g_e) / (|N(q)| + m); then top-k."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..types import Query, Selection
from .base import QueryFeatures, RouterBase, check_k
from .policy import Policy, choose


class KnnRouter(RouterBase):
    name = "knn"
    needs_profile = True
    needs_embeddings = True

    def __init__(self, pool, config, profile=None):
        super().__init__(pool, config, profile)
        opts = config.routing
        self.neighbors = min(opts.neighbors, len(self.profile.val_ids))
        self.shrinkage = opts.shrinkage
        self.val_emb = self.profile.val_emb.astype(np.float32)  # [N, d]
        self.val_correct = self.profile.val_correct.astype(np.float32)  # [N, E]
        self.accuracy = self.profile.accuracy.astype(np.float32)  # [E]

    def estimates(self, emb: np.ndarray, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
        """[n, d] -> ([n, E] estimates, [n, K] neighbour indices, nearest first), in chunks."""
        import torch

        n, kk = emb.shape[0], self.neighbors
        est = np.empty((n, self.val_correct.shape[1]), dtype=np.float32)
        nbrs = np.empty((n, kk), dtype=np.int64)
        val = torch.from_numpy(self.val_emb)
        for lo in range(0, n, chunk):
            sims = torch.from_numpy(np.ascontiguousarray(emb[lo:lo + chunk])) @ val.T  # [c, N]
            idx = torch.topk(sims, kk, dim=1).indices.numpy()
            succ = self.val_correct[idx].sum(axis=1)  # [c, E]
            est[lo:lo + chunk] = (succ + self.shrinkage * self.accuracy) / (kk + self.shrinkage)
            nbrs[lo:lo + chunk] = idx
        return est, nbrs

    def select(self, queries: Sequence[Query], k: int,
               features: QueryFeatures | None = None) -> list[Selection]:
        check_k(k, self.pool)
        est, nbrs = self.estimates(np.asarray(features.embeddings, dtype=np.float32))
        stderr = np.sqrt(est * (1 - est) / (self.neighbors + self.shrinkage))
        chosen = choose(est, stderr, Policy.from_config(k, self.config.routing))
        experts, val_ids = self.profile.experts, self.profile.val_ids
        out = []
        for i, q in enumerate(queries):
            ids = tuple(experts[j] for j in chosen[i])
            out.append(Selection(
                q.id, ids, tuple(round(float(est[i, j]), 4) for j in chosen[i]),
                {"neighbors": [val_ids[j] for j in nbrs[i][:5]], "n_neighbors": self.neighbors},
                router=self.name, skills=tuple(features.skills[i]),
                success={experts[j]: round(float(est[i, j]), 4) for j in chosen[i]}))
        return out
