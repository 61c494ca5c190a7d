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
from orchestrator.sweep import ROW_KEYS, pareto, parse_ks, parse_modes, run_sweep
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
    assert "| k | escalation | accuracy | 95% interval | expert calls |" in md
    assert md.count("\n| ") == 4
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


def test_parse_modes():
    assert parse_modes("lossless, none,lossless") == ["lossless", "none"]
    for bad in ("", "lossles", "none,all"):
        with pytest.raises(UserError, match="lossless,none"):
            parse_modes(bad)


def test_pareto_frontier():
    points = [(1.0, 0.40), (2.0, 0.50), (2.5, 0.45), (3.0, 0.50), (2.0, 0.50), (4.0, 0.55),
              (5.0, None)]
    # (2.5, .45) is beaten by (2, .5); (3, .5) costs more for the same; equal points both stay
    assert pareto(points) == [True, True, False, False, True, True, False]


def test_sweep_over_escalation_modes_marks_the_frontier(fake_pool, sample_jsonl, tmp_path):
    opts = {"e0": {"default": "The answer is (A)"},
            "e1": {"script": {"number 1?": "The answer is (B)"}, "default": "The answer is (A)"},
            "e2": {"default": "The answer is (B)"}}
    bench, out = sample_jsonl(choice_rows(4)), tmp_path / "sweep"
    result = invoke("sweep", bench, "--pool", fake_pool(3, options=opts), "--k", "1,3",
                    "--router", "fixed", "--escalation", "lossless,none", "--out", out,
                    "--no-progress")
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    assert [(r["k"], r["escalation"]) for r in rows] == [
        (1, "lossless"), (3, "lossless"), (1, "none"), (3, "none")]
    assert all(tuple(r) == ROW_KEYS for r in rows)
    by = {(r["k"], r["escalation"]): r for r in rows}
    # lossless gives the answers of calling all three with fewer calls: 2 + 3 + 2 + 2
    assert by[3, "lossless"]["accuracy"] == by[3, "none"]["accuracy"]
    assert (by[3, "lossless"]["calls"], by[3, "none"]["calls"]) == (9, 12)
    assert by[3, "lossless"]["calls_per_question"] == 2.25
    assert by[3, "lossless"]["pareto"] and not by[3, "none"]["pareto"]
    assert sum(r["generated"] for r in rows) == 12  # the none rows reuse every output
    summary = json.loads((out / "k3-lossless" / "summary.json").read_text())
    assert summary["escalation"]["mode"] == "lossless"
    assert json.loads((out / "k3-none" / "summary.json").read_text())["escalation"] == {
        **summary["escalation"], "mode": "none", "calls_per_question": 3.0, "escalated": 0,
        "rounds": {"1": 4}}
    assert "escalation" in result.output and "k3-none/" in result.output
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = invoke("sweep", bench, "--pool", fake_pool(3), "--k", "1", "--escalation", "some",
                 "--out", tmp_path / "o2", "--no-progress")
    assert bad.exit_code == 2 and "--escalation takes" in bad.output


def test_sweep_money_per_question_from_manifest_prices(sample_jsonl, tmp_path):
    from .conftest import write_pool

    pool = write_pool(tmp_path / "p.yaml", [
        {"id": f"e{i}", "backend": "fake", "options": {"default": "The answer is (A)"},
         "price": {"input_per_mtok": 1.0 * (i + 1), "output_per_mtok": 2.0}} for i in range(3)])
    queries = read_benchmark(sample_jsonl(choice_rows(4)))
    config = RunConfig(router="fixed", k=1, escalation={"mode": "none"})
    with Orchestrator(load_pool(pool), config) as orch:
        rows = run_sweep(orch, queries, [1, 2], tmp_path / "s")
    assert all(r["money"] > 0 for r in rows) and rows[1]["money"] > rows[0]["money"]
    assert rows[0]["money_per_question"] == pytest.approx(rows[0]["money"] / 4, rel=1e-3)
    summary = json.loads((tmp_path / "s" / "k2" / "summary.json").read_text())
    assert summary["cost"]["money"] == rows[1]["money"]


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
    cfg = dict(router="topk", profile=path, annotator="field", escalation={"mode": "none"},
               routing={"k_by_evidence": False})
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
