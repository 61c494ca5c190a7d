"""`knn`: instance-level routing. For each query, the experts' success on its nearest validation
questions (cosine of question embeddings), shrunken toward each expert's global accuracy:
estimate[e] = (sum_{j in N(q)} correct[j, e] + m * g_e) / (|N(q)| + m); then top-k.

With k by evidence (the default), k is a cap and each query takes the first j of its ranking,
j chosen per skill on validation (`sizing`); there each validation question is ranked from its
neighbours other than itself, as a new question would be."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..types import Query, Selection
from .base import QueryFeatures, RouterBase, check_k
from .graph import skill_membership
from .policy import Policy, choose, top_k
from .sizing import EvidenceTable, size_table, truncate


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
        self._sizes: dict[int, EvidenceTable] = {}

    def estimates(self, emb: np.ndarray, chunk: int = 2048, *, leave_out: bool = False
                  ) -> tuple[np.ndarray, np.ndarray]:
        """[n, d] -> ([n, E] estimates, [n, K] neighbour indices, nearest first), in chunks.
        `leave_out`: emb are the validation questions themselves, each without itself."""
        import torch

        n = emb.shape[0]
        kk = min(self.neighbors, len(self.val_emb) - 1) if leave_out else self.neighbors
        est = np.empty((n, self.val_correct.shape[1]), dtype=np.float32)
        nbrs = np.empty((n, kk), dtype=np.int64)
        val = torch.from_numpy(self.val_emb)
        for lo in range(0, n, chunk):
            sims = torch.from_numpy(np.ascontiguousarray(emb[lo:lo + chunk])) @ val.T  # [c, N]
            if leave_out:
                rows = torch.arange(sims.shape[0])
                sims[rows, rows + lo] = -torch.inf
            idx = torch.topk(sims, kk, dim=1).indices.numpy()
            succ = self.val_correct[idx].sum(axis=1)  # [c, E]
            est[lo:lo + chunk] = (succ + self.shrinkage * self.accuracy) / (kk + self.shrinkage)
            nbrs[lo:lo + chunk] = idx
        return est, nbrs

    def size_table(self, cap: int) -> EvidenceTable:
        """Its ranking of every validation question (from the other ones) cut at 1..cap."""
        if cap not in self._sizes:
            if len(self.val_emb) < 2:
                est = np.repeat(self.accuracy[None, :], len(self.val_emb), axis=0)
            else:
                est, _ = self.estimates(self.val_emb, leave_out=True)
            membership = skill_membership(self.profile.val_skills, len(self.profile.skills))
            self._sizes[cap] = size_table(
                self.profile, top_k(est, cap), est, membership, self.config)
        return self._sizes[cap]

    def select(self, queries: Sequence[Query], k: int,
               features: QueryFeatures | None = None) -> list[Selection]:
        check_k(k, self.pool)
        est, nbrs = self.estimates(np.asarray(features.embeddings, dtype=np.float32))
        stderr = np.sqrt(est * (1 - est) / (self.neighbors + self.shrinkage))
        chosen = choose(est, stderr, Policy.from_config(k, self.config.routing))
        by_evidence = self.config.routing.k_by_evidence and k > 1
        if by_evidence:
            member = skill_membership(features.skill_ids, len(self.profile.skills))
            chosen = truncate(chosen, self.size_table(k).sizes(member))
        experts, val_ids = self.profile.experts, self.profile.val_ids
        out = []
        for i, q in enumerate(queries):
            ids = tuple(experts[j] for j in chosen[i])
            out.append(Selection(
                q.id, ids, tuple(round(float(est[i, j]), 4) for j in chosen[i]),
                {"neighbors": [val_ids[j] for j in nbrs[i][:5]], "n_neighbors": self.neighbors,
                 "k_chosen_by": "evidence" if by_evidence else "fixed"},
                router=self.name, skills=tuple(features.skills[i]),
                success={experts[j]: round(float(est[i, j]), 4) for j in chosen[i]}))
        return out
