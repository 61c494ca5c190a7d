"""The skill profile: its numbers on a world where they are known, storage, and validation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from orchestrator.errors import ConfigError, UnknownNameError
from orchestrator.profiling.profile import Profile
from orchestrator.skills import FieldAnnotator

from .conftest import write_pool
from .routing_fixtures import orchestrator, queries, write_world


@pytest.fixture
def world(tmp_path):
    _, pool = write_world(tmp_path)
    with orchestrator(pool, router="fixed", k=1) as orch:
        profile = orch.build_profile(queries(), FieldAnnotator(), orch.embedder, prior_strength=10)
    return profile, pool


def test_profile_counts_scores_and_shrunken_estimates(world):
    profile, _ = world
    assert profile.experts == ["mathy", "histy", "meh"]
    assert profile.skills == ["history", "math"]
    np.testing.assert_array_equal(profile.counts, [[4, 4]] * 3)
    np.testing.assert_array_equal(profile.correct, [[0, 4], [4, 0], [1, 2]])
    np.testing.assert_array_equal(profile.scores, [[-4, 4], [4, -4], [-2, 0]])  # +1 / -1 each
    np.testing.assert_allclose(profile.accuracy, [0.5, 0.5, 3 / 8])
    np.testing.assert_array_equal(profile.strength, [0, 0, -2])
    # (correct + m * global accuracy) / (count + m), m = 10
    np.testing.assert_allclose(profile.estimate[0], [5 / 14, 9 / 14])
    np.testing.assert_allclose(profile.estimate[2], [(1 + 3.75) / 14, (2 + 3.75) / 14])
    assert (profile.stderr > 0).all() and (profile.stderr < 0.2).all()
    assert profile.val_correct[:, 0].tolist() == [True] * 4 + [False] * 4
    assert profile.val_skills == [(1,)] * 4 + [(0,)] * 4
    # answer codes for vote-aware routing: 1 = the gold, 2+ = one code per distinct wrong answer
    assert profile.val_answers[:, 0].tolist() == [1] * 4 + [2] * 4
    assert profile.val_answers[:, 2].tolist() == [1, 1, 2, 2, 1, 2, 2, 2]


def test_profile_round_trip_keeps_numbers_and_writes_compact_arrays(world, tmp_path):
    profile, pool = world
    path = profile.save(tmp_path / "prof" / "p.json")
    doc = json.loads(path.read_text())
    assert doc["kind"] == "orchestrator-skill-profile" and doc["version"] == 2
    math = doc["experts"]["mathy"]["skills"]["math"]
    assert math == {"count": 4, "correct": 4, "score": 4, "estimate": round(9 / 14, 4),
                    "stderr": math["stderr"]}
    assert doc["arrays"] == "p.npz" and (tmp_path / "prof" / "p.npz").is_file()
    assert "val_emb" not in path.read_text()  # embeddings live in the .npz, not in JSON
    loaded = Profile.load(path, ["mathy", "histy", "meh", "other"])
    for name in ("counts", "correct", "n", "n_correct", "val_correct", "val_answers"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(profile, name))
    np.testing.assert_allclose(loaded.val_emb, profile.val_emb, atol=1e-3)  # stored as float16
    assert loaded.val_skills == profile.val_skills and loaded.val_ids == profile.val_ids


def test_profile_with_an_expert_missing_from_the_pool_is_rejected(world, tmp_path):
    profile, _ = world
    path = profile.save(tmp_path / "p.json")
    with pytest.raises(UnknownNameError) as info:
        Profile.load(path, ["mathy", "histy", "mehh"])
    message = str(info.value)
    assert "Unknown expert 'meh'" in message and "Did you mean 'mehh'" in message
    assert "build the profile with this pool" in message
    small = write_pool(tmp_path / "small.yaml", [
        {"id": "mathy", "backend": "replay", "model": "mathy",
         "options": {"recordings": "world.jsonl"}}], name="small")
    with pytest.raises(UnknownNameError, match="scores experts that the pool does not have"):
        orchestrator(small, router="topk", k=1, profile=str(path))


def test_profile_version_and_kind_are_checked(world, tmp_path):
    profile, _ = world
    path = profile.save(tmp_path / "p.json")
    doc = json.loads(path.read_text())
    path.write_text(json.dumps({**doc, "version": 99}))
    with pytest.raises(ConfigError, match="version 99; this orchestrator reads version 2"):
        Profile.load(path)
    path.write_text(json.dumps({"kind": "something else"}))
    with pytest.raises(ConfigError, match="is not a skill profile"):
        Profile.load(path)
    with pytest.raises(ConfigError, match="does not exist. Build one with"):
        Profile.load(tmp_path / "absent.json")


def test_profile_needs_gold_answers(tmp_path):
    from orchestrator.types import Query

    _, pool = write_world(tmp_path)
    with orchestrator(pool, router="fixed", k=1) as orch, \
            pytest.raises(ConfigError, match="1 validation questions have no gold"):
        orch.build_profile([Query("math-0", "Add 2 and 3", None)], FieldAnnotator(),
                      orch.embedder)


def test_aggregation_benchmark_has_one_right_and_two_wrong_responses():
    from orchestrator.profiling.aggregators import aggregation_items
    from orchestrator.types import ExpertOutput

    qs = queries()[:3]
    outs = [
        [ExpertOutput("a", "The answer is 7", "7"), ExpertOutput("b", "The answer is 1", "1"),
         ExpertOutput("c", "The answer is 2", "2"), ExpertOutput("d", "x", None, error="boom")],
        [ExpertOutput("a", "The answer is 7", "7"), ExpertOutput("b", "The answer is 7", "7"),
         ExpertOutput("c", "The answer is 2", "2")],  # one wrong only: skipped
        [ExpertOutput("a", "1", "1"), ExpertOutput("b", "2", "2"), ExpertOutput("c", "3", "3")],
    ]  # no right answer: skipped
    items = aggregation_items(qs, outs, seed=0)
    assert [it.query.id for it in items] == ["math-0"]
    assert sorted(o.expert for o in items[0].responses) == ["a", "b", "c"]
    orders = {tuple(o.expert for o in aggregation_items(qs, outs, seed=s)[0].responses)
              for s in range(12)}
    assert len(orders) > 1  # shuffled: the right answer is not always first


def test_profile_ranks_candidate_aggregators(tmp_path):
    data, _ = write_world(tmp_path)
    pool = write_pool(tmp_path / "mixed.yaml", [
        *({"id": m, "backend": "replay", "model": m, "options": {"recordings": data.name}}
          for m in ("mathy", "histy", "meh")),
        {"id": "agg-good", "backend": "fake", "options": {"default": "The answer is 7"}},
        {"id": "agg-bad", "backend": "fake", "options": {"default": "The answer is 1"}},
    ], resident_limit=5, name="mixed")
    with orchestrator(pool, router="fixed", k=1) as orch:
        profile = orch.build_profile(queries(), FieldAnnotator(), orch.embedder,
                                aggregators=["agg-bad", "agg-good"])
        loads = dict(orch.backends.get("fake").load_counts)
    ranked = profile.meta["aggregators"]
    assert [r["expert"] for r in ranked["ranking"]] == ["agg-good", "agg-bad"]
    assert ranked["ranking"][0]["accuracy"] == 1.0 and ranked["ranking"][1]["accuracy"] == 0.0
    assert ranked["n_items"] == 8  # agg-good is always right and agg-bad always wrong
    assert loads == {"agg-bad": 1, "agg-good": 1}  # validation and ranking share one load
    path = profile.save(tmp_path / "p.json")
    from orchestrator.core import Orchestrator

    with Orchestrator.from_files(pool, router="topk", k=1, profile=str(path),
                                 annotator="field", aggregator="fuse") as orch:
        assert orch.aggregator.expert == "agg-good"  # the profile's best aggregator
