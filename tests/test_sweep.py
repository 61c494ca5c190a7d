"""The k sweep on the fake backend: every (expert, prompt) generated once across the sweep,
the same answers as standalone runs, the output files, and the cache on its own."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from orchestrator import Orchestrator, load_pool
from orchestrator.benchmarks.readers import read_benchmark
from orchestrator.cli.main import app
from orchestrator.config import RunConfig
from orchestrator.errors import RoutingError, UserError
from orchestrator.sweep import ROW_KEYS, parse_ks, run_sweep
from orchestrator.types import GenerationRequest, GenerationResult, Message, Sampling
from orchestrator.workers import CachingExecutor, ExecutionStats

from .conftest import choice_rows

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def read_jsonl(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


# -- the sweep through the SDK: what the fake backend was asked ----------------------------------


def test_sweep_generates_each_expert_prompt_once(fake_pool, sample_jsonl, tmp_path):
    n = 6
    queries = read_benchmark(sample_jsonl(choice_rows(n)))
    config = RunConfig(router="fixed", k=3, escalation={"mode": "none"})
    with Orchestrator(load_pool(fake_pool(3)), config) as orch:
        rows = run_sweep(orch, queries, [1, 2, 3], tmp_path / "sweep")
        history = orch.backends.get("fake").history
    # the fixed router's experts at k=3 (e0, e1, e2) include those of k=1 and k=2
    pairs = {(r.expert, r.query_id) for r in history}
    assert len(history) == len(pairs) == 3 * n  # not 1n + 2n + 3n
    assert [r["calls"] for r in rows] == [n, 2 * n, 3 * n]
    assert [r["generated"] for r in rows] == [n, n, n]
    assert sum(r["calls"] - r["generated"] for r in rows) == 3 * n  # reused from the cache
    assert orch.k == 3 and orch.config.k == 3  # the sweep mutated nothing
    assert all(tuple(r) == ROW_KEYS for r in rows)
    assert [(r["mean_k"], r["distinct_experts"]) for r in rows] == [(1, 1), (2, 2), (3, 3)]
    for k in (1, 2, 3):
        summary = json.loads((tmp_path / "sweep" / f"k{k}" / "summary.json").read_text())
        assert summary["k"] == k and summary["config"]["k"] == k
        assert summary["sweep"] == {"generated": n, "reused": (k - 1) * n}
        results = read_jsonl(tmp_path / "sweep" / f"k{k}" / "results.jsonl")
        assert [len(r["outputs"]) for r in results] == [k] * n


def test_random_router_sweep_generates_the_union_once(fake_pool, sample_jsonl, tmp_path):
    queries = read_benchmark(sample_jsonl(choice_rows(8)))
    with Orchestrator(load_pool(fake_pool(4)), RunConfig(router="random", k=1, seed=5)) as orch:
        rows = run_sweep(orch, queries, [1, 2, 3], tmp_path / "s")
        history = orch.backends.get("fake").history
    used = {(o["expert"], r["id"]) for k in (1, 2, 3)
            for r in read_jsonl(tmp_path / "s" / f"k{k}" / "results.jsonl") for o in r["outputs"]}
    assert len(history) == len({(r.expert, r.query_id) for r in history}) == len(used)
    assert sum(r["generated"] for r in rows) == len(used)


def test_k_larger_than_the_pool_fails_before_any_generation(fake_pool, sample_jsonl, tmp_path):
    queries = read_benchmark(sample_jsonl(choice_rows(2)))
    with Orchestrator(load_pool(fake_pool(3)), RunConfig(router="fixed", k=1)) as orch:
        with pytest.raises(RoutingError, match="k=5 is outside 1..3"):
            run_sweep(orch, queries, [1, 5], tmp_path / "s")
        assert orch.backends.get("fake").history == []
    assert not (tmp_path / "s").exists()


def test_failed_generations_are_retried_at_the_next_k(fake_pool, sample_jsonl):
    queries = read_benchmark(sample_jsonl(choice_rows(3)))
    pool = fake_pool(2, options={"e0": {"fail": ["Question number 1?"]}})
    with Orchestrator(load_pool(pool), RunConfig(router="fixed", k=1,
                                                 escalation={"mode": "none"})) as orch:
        rows = run_sweep(orch, queries, [1, 2])
        history = orch.backends.get("fake").history
    assert [r["generated"] for r in rows] == [3, 4]  # e0 on q1 failed, so it runs again
    assert sum(r.expert == "e0" and r.query_id == "q1" for r in history) == 2


# -- the command ---------------------------------------------------------------------------------


def test_sweep_command_matches_standalone_runs(fake_pool, sample_jsonl, tmp_path):
    bench, pool = sample_jsonl(choice_rows(12)), fake_pool(3)
    out = tmp_path / "sweep"
    result = invoke("sweep", bench, "--pool", pool, "--k", "3,1,2,2", "--router", "fixed",
                    "--out", out, "--no-progress", "--no-escalation")
    assert result.exit_code == 0, result.output
    record = json.loads((out / "sweep.json").read_text())
    assert set(record) == {"bench", "pool", "router", "rows"}
    assert (record["bench"], record["pool"], record["router"]) == (str(bench), "test", "fixed")
    assert [r["k"] for r in record["rows"]] == [1, 2, 3]
    assert [r["calls"] for r in record["rows"]] == [12, 24, 36]
    assert all(tuple(r) == ROW_KEYS for r in record["rows"])
    accuracies = {r["k"]: r["accuracy"] for r in record["rows"]}
    for k in (1, 2, 3):
        alone = tmp_path / f"run{k}"
        ran = invoke("run", bench, "--pool", pool, "--k", k, "--router", "fixed", "--out", alone,
                     "--no-progress", "--no-escalation")
        assert ran.exit_code == 0, ran.output
        summary = json.loads((alone / "summary.json").read_text())
        assert summary["accuracy"] == accuracies[k]
        strip = [{key: r[key] for key in ("id", "experts", "outputs", "final_answer", "correct")}
                 for r in read_jsonl(alone / "results.jsonl")]
        swept = [{key: r[key] for key in ("id", "experts", "outputs", "final_answer", "correct")}
                 for r in read_jsonl(out / f"k{k}" / "results.jsonl")]
        assert swept == strip
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "sweep.md").read_text()
    assert "| k | accuracy | expert calls |" in md and md.count("\n| ") == 4
    assert "k sweep" in result.output and "generated  36 expert outputs for 72" in result.output
    assert str(out / "sweep.png") in result.output
    assert not list(out.glob(".*.tmp"))


@pytest.mark.parametrize("ks, message", [
    ("1,5", "k=5 is outside 1..3"),
    ("1,two", "--k takes comma-separated positive integers"),
    ("0,1", "--k takes comma-separated positive integers"),
    (",", "--k takes comma-separated positive integers"),
])
def test_sweep_user_mistakes_exit_2_before_running(tmp_path, sample_jsonl, ks, message):
    from .conftest import write_pool

    # a load would fail loudly (exit 1): exit 2 shows the check came first
    pool = write_pool(tmp_path / "p.yaml", [
        {"id": f"e{i}", "backend": "fake", "options": {"fail_load": True}} for i in range(3)])
    out = tmp_path / "out"
    result = invoke("sweep", sample_jsonl(choice_rows(2)), "--pool", pool, "--k", ks,
                    "--out", out, "--no-progress")
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert not out.exists()


def test_parse_ks():
    assert parse_ks("5, 1,3,3,2") == [1, 2, 3, 5]
    assert parse_ks("2") == [2]
    with pytest.raises(UserError):
        parse_ks("1.5")


def test_named_experts_of_the_fixed_router_have_one_k(fake_pool, sample_jsonl, tmp_path):
    preset = tmp_path / "preset.yaml"
    preset.write_text("router: fixed\nexperts: [e1, e2]\n")
    result = invoke("sweep", sample_jsonl(choice_rows(2)), "--pool", fake_pool(3), "--config",
                    preset, "--k", "1,2", "--out", tmp_path / "o", "--no-progress")
    assert result.exit_code == 2 and "has one k" in result.output


# -- a profile router on the tiny replay world ---------------------------------------------------


def test_sweep_with_a_profile_router_on_replay(tmp_path):
    from orchestrator.skills import FieldAnnotator

    from .routing_fixtures import orchestrator, queries, write_world

    _, pool = write_world(tmp_path)
    with orchestrator(pool, router="fixed", k=1) as orch:
        profile = orch.build_profile(queries(), FieldAnnotator(), orch.embedder, prior_strength=10)
    path = str(profile.save(tmp_path / "world-profile.json"))
    qs = queries()
    cfg = dict(router="topk", profile=path, annotator="field", escalation={"mode": "none"})
    with orchestrator(pool, k=1, **cfg) as orch:
        rows = run_sweep(orch, qs, [1, 2, 3], tmp_path / "s")
        generated = sum(s.calls for s in orch.totals.experts.values())
    used = {(o["expert"], r["id"]) for k in (1, 2, 3)
            for r in read_jsonl(tmp_path / "s" / f"k{k}" / "results.jsonl") for o in r["outputs"]}
    assert generated == sum(r["generated"] for r in rows) == len(used) == 3 * len(qs)
    assert rows[0]["accuracy"] == 1.0  # each question's specialist alone
    for row in rows:
        with orchestrator(pool, k=row["k"], **cfg) as alone:
            assert round(alone.evaluate(qs).accuracy, 4) == row["accuracy"]


# -- the cache on its own ------------------------------------------------------------------------


class Recorder:
    """An executor that answers 'ans:<expert>:<prompt>' and fails prompts containing 'bad'."""

    def __init__(self):
        self.seen: list[list[GenerationRequest]] = []
        self.batch_size = 7

    def execute(self, requests):
        self.seen.append(list(requests))
        stats = ExecutionStats()
        results = []
        for r in requests:
            stats.expert(r.expert).calls += 1
            prompt = r.messages[0].content
            results.append(GenerationResult(r, error="boom") if "bad" in prompt
                           else GenerationResult(r, f"ans:{r.expert}:{prompt}", 1, 2))
        return results, stats


def req(expert, prompt, qid, index, temperature=0.0):
    return GenerationRequest(expert, (Message("user", prompt),), Sampling(temperature=temperature),
                             query_id=qid, index=index, question=prompt)


def test_caching_executor_hits_misses_and_rebinding():
    inner = Recorder()
    cache = CachingExecutor(inner)
    first = [req("a", "p1", "q1", 0), req("b", "p1", "q1", 1), req("a", "bad", "q2", 2)]
    results, stats = cache.execute(first)
    assert [r.text for r in results] == ["ans:a:p1", "ans:b:p1", ""]
    assert results[2].error == "boom"
    assert (cache.hits, cache.misses, len(cache)) == (0, 3, 2)  # the failure is not stored
    assert stats.experts["a"].calls == 2

    second = [req("a", "bad", "q2", 0), req("a", "p1", "q9", 1), req("c", "p1", "q1", 2),
              req("a", "p1", "q1", 3, temperature=0.7), req("c", "p1", "q3", 4)]
    results, stats = cache.execute(second)
    assert inner.seen[-1] == [second[0], second[2], second[3]]  # misses only, one per key
    assert (cache.hits, cache.misses) == (2, 6)
    assert {e: s.calls for e, s in stats.experts.items()} == {"a": 2, "c": 1}  # misses only
    hit = results[1]
    assert hit.text == "ans:a:p1" and hit.tokens_out == 2
    assert hit.request is second[1] and (hit.request.index, hit.request.query_id) == (1, "q9")
    assert results[4].text == "ans:c:p1" and results[4].request is second[4]  # in-call repeat
    assert [r.request for r in results] == second
    assert cache.batch_size == 7  # other attributes are the inner executor's

    results, stats = cache.execute([req("b", "p1", "q5", 0)])
    assert results[0].text == "ans:b:p1" and stats.experts == {} and len(inner.seen) == 2
