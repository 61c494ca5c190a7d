"""Skill annotators behind one interface: llm (the Symbolic-MoE recipe, on the fake backend),
embedding (a vocabulary's nearest entries; once with the real MiniLM), field; and the mapping
of free keywords onto a profile's vocabulary."""

from __future__ import annotations

import pytest

from orchestrator.backends.fake import FakeBackend
from orchestrator.core import Orchestrator
from orchestrator.errors import ConfigError
from orchestrator.skills import EmbeddingAnnotator, FieldAnnotator, LLMAnnotator, Vocabulary
from orchestrator.skills.annotators import parse_keywords
from orchestrator.skills.vocabulary import map_keywords
from orchestrator.types import GenerationResult, Query

from .conftest import write_pool
from .routing_fixtures import BagOfWordsEmbedder

# Five sampled replies per question, indexed by the sample's seed (the annotator gives each
# sample round its own seed).
KEYWORD_SAMPLES = {
    "photosynthesis": ["biology, photosynthesis, plant physiology",
                       "Biology, photosynthesis",
                       "photosynthesis, chemistry",
                       "plant biology, cellular respiration and energy metabolism",
                       "biology, chemistry, cellular respiration and energy metabolism"],
    "train": ["arithmetic, word problems", "arithmetic, speed", "Keywords: arithmetic, rates",
              "1. word problems 2. arithmetic", "speed, rates"],
}


class SeededKeywords(FakeBackend):
    """Answers each keyword request with the sample that its seed selects."""

    def generate(self, requests):
        out = []
        for r in requests:
            self.history.append(r)
            topic = "photosynthesis" if "photosynthesis" in r.question else "train"
            out.append(GenerationResult(r, KEYWORD_SAMPLES[topic][r.sampling.seed % 5]))
        return out


QUESTIONS = [Query("bio", "How does photosynthesis store energy?"),
             Query("math", "A train covers 120 km in 2 hours. What is its speed?")]


def test_llm_annotator_keeps_short_keywords_seen_in_two_samples(tmp_path):
    pool = write_pool(tmp_path / "p.yaml", [{"id": "tagger", "backend": "fake"},
                                            {"id": "other", "backend": "fake"}])
    backend = SeededKeywords()
    with Orchestrator.from_files(pool, annotator="llm", annotator_expert="tagger") as orch:
        orch.backends._instances["fake"] = backend
        skills = orch.annotator.annotate(QUESTIONS)
    bio, math = skills
    # biology 3x, photosynthesis 3x, chemistry 2x; the 41-character phrase twice but too long;
    # plant physiology / plant biology once each
    assert set(bio) == {"biology", "photosynthesis", "chemistry"}
    assert bio[0] in {"biology", "photosynthesis"}  # most frequent first
    assert set(math) == {"arithmetic", "word problems", "speed", "rates"}
    assert len(backend.history) == 10 and {r.expert for r in backend.history} == {"tagger"}
    assert {r.sampling.temperature for r in backend.history} == {0.7}
    assert backend.load_counts == {"tagger": 1}  # five sample rounds, one load
    assert orch.annotator.annotate(QUESTIONS[::-1]) == [math, bio]  # memoised: no new requests
    assert len(backend.history) == 10


def test_llm_annotator_prompt_and_parsing():
    annotator = LLMAnnotator(generation=None, expert_id="x", samples=5)
    reqs = annotator.requests(QUESTIONS)
    assert len(reqs) == 10 and len({r.sampling.seed for r in reqs}) == 5
    assert "2 to 5 short keywords" in reqs[0].messages[0].content
    assert parse_keywords("Keywords: Algebra, *geometry*.\n3. number theory") == [
        "algebra", "geometry", "number theory"]
    assert annotator.filter([["a", "b"], ["a"], ["b", "c"], []]) == ("a", "b")


def test_unknown_annotator_expert_is_a_clear_error(tmp_path):
    from orchestrator.errors import UnknownNameError

    pool = write_pool(tmp_path / "p.yaml", [{"id": "tagger", "backend": "fake"}])
    with Orchestrator.from_files(pool, annotator="llm", annotator_expert="taggr") as orch, \
            pytest.raises(UnknownNameError, match="Did you mean 'tagger'"):
        orch.annotator  # noqa: B018


def test_embedding_annotator_top_m_above_threshold():
    vocab = Vocabulary("t", ("sum", "war", "crown"))
    annotator = EmbeddingAnnotator(vocab, BagOfWordsEmbedder(), top_m=2, threshold=0.5)
    got = annotator.annotate([Query("a", "The sum of numbers"), Query("b", "A king's crown war"),
                              Query("c", "Nothing in the list")])
    assert got[0] == ("sum",)
    assert set(got[1]) == {"war", "crown"}
    assert len(got[2]) == 1  # below the threshold: the single nearest, never skill-less


def test_field_annotator_reads_the_domain_and_names_what_is_missing():
    assert FieldAnnotator().annotate([Query("a", "?", domain="Business Law")]) == [("business law",)]
    with pytest.raises(ConfigError, match="question 'b' has none"):
        FieldAnnotator().annotate([Query("b", "?")])


def test_keywords_map_exactly_or_to_the_nearest_vocabulary_entry():
    vocab = ["sum", "war", "crown"]
    ids = map_keywords([["Sum", "battle war"], ["crown", "crown"], []], vocab, BagOfWordsEmbedder())
    assert ids == [(0, 1), (2,), ()]


@pytest.mark.slow
def test_embedding_annotator_with_the_real_minilm():
    from orchestrator.skills import DEFAULT_VOCABULARY, Embedder, load_vocabulary

    embedder = Embedder(threads=2, disk_cache=False)
    annotator = EmbeddingAnnotator(load_vocabulary(DEFAULT_VOCABULARY), embedder, top_m=3)
    skills = annotator.annotate([
        Query("a", "What is the derivative of x^3 + 2x with respect to x?"),
        Query("b", "Which enzyme unwinds the DNA double helix during replication?"),
        Query("c", "Under the UCC, when is a contract for the sale of goods enforceable?"),
    ])
    assert "calculus" in skills[0]
    assert any("genetic" in s or "molecular" in s or "biology" in s for s in skills[1])
    assert any("law" in s or "contract" in s for s in skills[2])
    mapped = map_keywords([["derivatives"]], list(annotator.vocabulary.skills), embedder)
    assert annotator.vocabulary.skills[mapped[0][0]] == "calculus"
