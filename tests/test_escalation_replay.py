"""Lossless escalation on recorded answers of real LLMs (the MMLU-Pro replay pools): the
ensemble router's weighted vote of k experts, asked in rounds, gives the same answer as asking
all k on every question, with fewer calls. A slice of the data and a domain-annotated profile
keep it fast; benchmarks/replay_quality.py measures the whole test set."""

from __future__ import annotations

import pytest

from orchestrator.benchmarks.readers import read_benchmark
from orchestrator.pipeline import Overrides
from orchestrator.skills import FieldAnnotator

from .conftest import ROOT, SHARED_DATA
from .routing_fixtures import orchestrator

REPLAY = SHARED_DATA / "replay"
pytestmark = pytest.mark.skipif(not (REPLAY / "mmlu_pro_replay_test.jsonl").is_file(),
                                reason="needs ../shared/data/replay")


@pytest.fixture(scope="module")
def slices():
    profile_rows = read_benchmark(REPLAY / "mmlu_pro_replay_profile.jsonl")[::12]  # ~820
    test_rows = read_benchmark(REPLAY / "mmlu_pro_replay_test.jsonl")[::5]  # 418
    return profile_rows, test_rows


@pytest.mark.parametrize("pool, k", [("replay-mmlu-pro-small", 3),
                                     ("replay-mmlu-pro-small", 5),
                                     ("replay-mmlu-pro-all", 3)])
def test_lossless_escalation_equals_the_fixed_k_vote_question_by_question(
        slices, tmp_path, monkeypatch, pool, k):
    monkeypatch.chdir(ROOT)  # the manifests name their recordings from the project root
    manifest = ROOT / "pools" / f"{pool}.yaml"
    profile_rows, test_rows = slices
    with orchestrator(manifest, router="fixed", k=1) as orch:
        profile = orch.build_profile(profile_rows, FieldAnnotator(), orch.embedder,
                                     prior_strength=10)
    path = str(profile.save(tmp_path / "profile.json"))
    with orchestrator(manifest, router="ensemble", k=k, profile=path, annotator="field",
                      routing={"k_by_evidence": False}) as orch:
        full = orch.evaluate(test_rows, Overrides(escalation="none")).answers
        rounds = orch.evaluate(test_rows, Overrides(escalation="lossless")).answers
    assert [a.selection.experts for a in rounds] == [a.selection.experts for a in full]
    assert [a.final_answer for a in rounds] == [a.final_answer for a in full]
    assert [a.correct for a in rounds] == [a.correct for a in full]
    for a, b in zip(rounds, full):  # the experts asked are the first of the full vote's
        assert [o.expert for o in a.outputs] == [o.expert for o in b.outputs][:len(a.outputs)]
    calls = sum(len(a.outputs) for a in rounds) / len(rounds)
    assert all(len(a.outputs) == k for a in full)
    assert calls < k - 0.2  # where the first experts agree, the rest are not asked
    assert any(a.rounds > 1 for a in rounds)  # and where they do not, more are
