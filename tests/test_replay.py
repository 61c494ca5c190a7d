"""The replay backend: recorded answers looked up by id or question text, read back through the
normal extraction path; a question without a recording fails alone."""

from __future__ import annotations

import json

import pytest

from orchestrator.backends.base import BackendContext
from orchestrator.backends.replay import ReplayBackend, answer_text, question_keys
from orchestrator.benchmarks.extract import extract_answer
from orchestrator.core import Orchestrator
from orchestrator.errors import BenchmarkFormatError, ConfigError, ModelNotFoundError
from orchestrator.types import ExpertSpec, GenerationRequest, Message, Query

from .conftest import ROOT, SHARED_DATA, write_pool

ROWS = [
    {"id": "m-1", "question": "Which gas do plants absorb?", "options": ["O2", "CO2", "N2"],
     "gold": "B", "models": {"good": {"answer": "B", "correct": True},
                             "bad": {"answer": None, "correct": False}}},
    {"id": "m-2", "question": "What is 12 * 12?", "gold": "144",
     "models": {"good": {"answer": "144", "correct": True},
                "bad": {"answer": "124", "correct": False}}},
    {"id": "m-3", "question": "Write a function that returns its argument.", "gold": "x",
     "models": {"good": {"answer": "def f(x):\n    return x", "correct": True},
                "bad": {"answer": "C", "correct": False}}},
]


@pytest.fixture
def replay_file(tmp_path):
    path = tmp_path / "rec.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def backend_for(path, model="good", **extra):
    backend = ReplayBackend(BackendContext(base_dir=path.parent))
    spec = ExpertSpec(id=f"x-{model}", backend="replay", model=model,
                      options={"recordings": [path.name], **extra})
    return backend, spec


def request(spec, qid, question):
    return GenerationRequest(expert=spec.id, messages=(Message("user", question),),
                             query_id=qid, question=question)


def test_lookup_by_id_then_by_normalised_text_then_missing(replay_file):
    backend, spec = backend_for(replay_file)
    backend.load(spec)
    results = backend.generate([
        request(spec, "m-1", "reworded, but the id matches"),
        request(spec, "other-id", "  which GAS do plants\n absorb?  "),
        request(spec, "other-id-2", "Which gas do plants absorb? The options are: (A) O2 (B) CO2"),
        request(spec, "nope", "A question nobody recorded"),
        request(spec, "m-2", ""),
    ])
    assert [r.text for r in results[:3]] == ["The answer is (B)."] * 3
    assert results[3].error is not None and "nope" in results[3].error
    assert "looked up by id and by question text" in results[3].error
    assert results[4].ok and results[4].text == "The answer is 144"


def test_recorded_answers_read_back_through_extraction(replay_file):
    backend, spec = backend_for(replay_file, model="bad")
    backend.load(spec)
    no_answer, wrong_number, letter = backend.generate(
        [request(spec, r["id"], r["question"]) for r in ROWS])
    assert extract_answer(no_answer.text, "choice", ("O2", "CO2", "N2")) is None
    assert extract_answer(wrong_number.text, "numeric") == "124"
    assert extract_answer(letter.text, "text") == "(C)"
    good, good_spec = backend_for(replay_file)
    good.load(good_spec)
    code = good.generate([request(good_spec, "m-3", ROWS[2]["question"])])[0]
    assert extract_answer(code.text, "text") == "def f(x):\n    return x"


def test_answer_text_and_question_keys():
    assert answer_text("J") == "The answer is (J)."
    assert answer_text("-3.5") == "The answer is -3.5"
    assert extract_answer(answer_text(None), "choice") is None
    assert extract_answer(answer_text(None), "numeric") is None
    keys = question_keys("Pick one. (a) is wrong here. The options are: (A) x (B) y")
    assert keys[0].endswith("(b) y") and "pick one. (a) is wrong here." in keys


def test_unknown_model_and_missing_file_are_clear(replay_file, tmp_path):
    backend, spec = backend_for(replay_file, model="godo")
    with pytest.raises(ConfigError, match="'godo' is not recorded.*Did you mean 'good'"):
        backend.check(spec)
    with pytest.raises(ConfigError, match="Recorded models: bad, good"):
        backend.load(spec)
    backend, spec = backend_for(tmp_path / "absent.jsonl")
    with pytest.raises(ModelNotFoundError, match="replay file 'absent.jsonl' not found"):
        backend.check(spec)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q"}\n')
    backend, spec = backend_for(bad)
    with pytest.raises(BenchmarkFormatError, match="line 1: a replay line needs"):
        backend.load(spec)


def test_options_model_overrides_and_several_files(replay_file, tmp_path):
    extra = tmp_path / "more.jsonl"
    extra.write_text(json.dumps({"id": "n-1", "question": "New?", "gold": "1",
                                 "models": {"good": {"answer": "1"}}}) + "\n")
    backend = ReplayBackend(BackendContext(base_dir=tmp_path))
    spec = ExpertSpec(id="e", backend="replay", model="",
                      options={"recordings": [str(replay_file), "more.jsonl"], "model": "good"})
    backend.load(spec)
    texts = [r.text for r in backend.generate([request(spec, "n-1", "New?"),
                                               request(spec, "m-2", "")])]
    assert texts == ["The answer is 1", "The answer is 144"]


def test_a_run_scores_recorded_answers(replay_file, tmp_path):
    pool = write_pool(tmp_path / "pool.yaml", [
        {"id": m, "backend": "replay", "model": m, "options": {"recordings": replay_file.name}}
        for m in ("good", "bad")], resident_limit=2)
    queries = [Query("m-1", ROWS[0]["question"], "B", tuple(ROWS[0]["options"]),
                     answer_type="choice"),
               Query("m-2", ROWS[1]["question"], "144", answer_type="numeric"),
               Query("zz", "Unrecorded?", "1", answer_type="numeric")]
    for model, expected in (("good", [True, True, False]), ("bad", [False, False, False])):
        with Orchestrator.from_files(pool, router="fixed", experts=[model]) as orch:
            answers = orch.run(queries)
        assert [a.correct for a in answers] == expected
        assert answers[2].outputs[0].error is not None


@pytest.mark.skipif(not (SHARED_DATA / "replay").is_dir(), reason="needs ../shared/data/replay")
def test_fixed_router_reproduces_the_recorded_accuracy(monkeypatch):
    from orchestrator.benchmarks.readers import read_benchmark

    monkeypatch.chdir(ROOT)  # the pool's recordings are relative to the project root
    queries = read_benchmark(SHARED_DATA / "replay" / "mmlu_pro_replay_test.jsonl")
    with Orchestrator.from_files(ROOT / "pools" / "replay-mmlu-pro-small.yaml", router="fixed",
                                 experts=["meta-llama-3-1-8b-instruct"]) as orch:
        result = orch.evaluate(queries)
    assert len(result.answers) == 2090
    assert sum(a.correct for a in result.answers) == 975  # 46.65%, as recorded
    assert round(100 * result.accuracy, 2) == 46.65


def test_generation_cache_keeps_questions_of_one_text_apart(tmp_path):
    from orchestrator.workers.cache import CachingExecutor

    path = tmp_path / "twins.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "t-1", "question": "Same words?", "gold": "1", "models": {"m": {"answer": "1"}}},
        {"id": "t-2", "question": "Same words?", "gold": "2", "models": {"m": {"answer": "2"}}},
    ]))
    pool = write_pool(tmp_path / "p.yaml", [
        {"id": "m", "backend": "replay", "model": "m", "options": {"recordings": path.name}}])
    queries = [Query("t-1", "Same words?", "1", answer_type="numeric"),
               Query("t-2", "Same words?", "2", answer_type="numeric")]
    with Orchestrator.from_files(pool, router="fixed", experts=["m"]) as orch:
        cache = CachingExecutor(orch.executor)
        pipeline = orch.pipeline.using(cache)
        first = orch.evaluate(queries, pipeline=pipeline).answers
        again = orch.evaluate(queries, pipeline=pipeline).answers
    assert [a.final_answer for a in first] == ["1", "2"] == [a.final_answer for a in again]
    assert cache.misses == 2 and cache.hits == 2
