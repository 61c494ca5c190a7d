"""Skills: vocabularies, annotators (embedding, field, llm) and the sentence embedder."""

from __future__ import annotations

from ..data import DEFAULT_VOCABULARY
from .annotators import Annotator, EmbeddingAnnotator, FieldAnnotator, LLMAnnotator
from .embedder import Embedder
from .vocabulary import Vocabulary, load_vocabulary, map_keywords


def make_annotator(orch) -> Annotator:
    """The annotator named by the orchestrator's config, built over its resources."""
    cfg = orch.config
    if cfg.annotator == "field":
        return FieldAnnotator()
    if cfg.annotator == "llm":
        from ..routing.base import check_experts

        expert = cfg.annotator_expert or next(iter(orch.specs))
        check_experts([expert], orch.pool)
        return LLMAnnotator(orch.generation, expert, seed=cfg.seed)
    vocabulary = load_vocabulary(cfg.vocabulary or DEFAULT_VOCABULARY)
    return EmbeddingAnnotator(vocabulary, orch.embedder, cfg.routing.top_m, cfg.routing.threshold)


__all__ = [
    "DEFAULT_VOCABULARY", "Annotator", "EmbeddingAnnotator", "Embedder", "FieldAnnotator",
    "LLMAnnotator", "Vocabulary", "load_vocabulary", "make_annotator", "map_keywords",
]
