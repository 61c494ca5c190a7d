"""The combination method decided by evidence: `profile` measures every method on the validation
questions routed as the run would; `run` uses the best unless the user names an aggregator, says
which and why, and warns when the pipeline is below the single best expert."""

from __future__ import annotations

import json

import pytest

from orchestrator.cli.render import summary_lines
from orchestrator.config import RunConfig, load_pool
from orchestrator.core import Orchestrator
from orchestrator.evaluation import baselines
from orchestrator.outputs import summary_record
from orchestrator.profiling.methods import MethodOptions
from orchestrator.report.markdown import method_section
from orchestrator.skills import FieldAnnotator

from .conftest import write_pool
from .routing_fixtures import BagOfWordsEmbedder, orchestrator, queries, write_world

RUN = dict(router="topk", k=2, annotator="field")


@pytest.fixture
def world(tmp_path):
    """The tiny world plus two fusion candidates, wrong on every question as experts: agg-good
    fuses to the gold (7), agg-bad to a wrong answer; profiled with the methods table for topk, k=2."""
    data, _ = write_world(tmp_path)
    pool = write_pool(tmp_path / "mixed.yaml", [
        *({"id": m, "backend": "replay", "model": m, "options": {"recordings": data.name}}
          for m in ("mathy", "histy", "meh")),
        {"id": "agg-good", "backend": "fake", "options": {
            "default": "The answer is 1", "script": {"Responses from models": "The answer is 7"}}},
        {"id": "agg-bad", "backend": "fake", "options": {"default": "The answer is 1"}},
    ], resident_limit=5, name="mixed")
    options = MethodOptions(load_pool(pool), RunConfig(router="topk", k=2),
                            fusers=("agg-bad", "agg-good"), fuse_limit=4)
    with orchestrator(pool, router="fixed", k=1) as orch:
        profile = orch.build_profile(queries()[:8], FieldAnnotator(), orch.embedder,
                                     methods=options)
        calls = {e: s.calls for e, s in orch.totals.experts.items()}
    path = profile.save(tmp_path / "profile.json")
    return pool, path, profile, calls


def test_profile_measures_every_method_on_the_routed_validation_questions(world):
    pool, path, profile, calls = world
    record = profile.meta["methods"]
    table = {r["method"]: r for r in record["table"]}
    # the single best expert of the pool (mathy and histy tie at 4/8: the first)
    assert list(table) == ["single:mathy", "first", "vote", "vote-plain", "fuse:agg-bad",
                           "fuse:agg-good"]
    assert table["single:mathy"]["accuracy"] == 0.5 and table["single:mathy"]["n"] == 8
    # topk routes math to mathy and history to histy: every routed method is right
    assert all(table[m]["accuracy"] == 1.0 for m in ("first", "vote", "vote-plain"))
    assert table["fuse:agg-bad"] == {"method": "fuse:agg-bad", "n": 4, "correct": 0,
                                     "accuracy": 0.0, "ci": table["fuse:agg-bad"]["ci"]}
    assert table["fuse:agg-good"]["accuracy"] == 1.0 and table["fuse:agg-good"]["n"] == 4
    lo, hi = table["first"]["ci"]
    assert 0.6 < lo < 1.0 and hi == 1.0  # a 95% interval, not a point
    assert record["best"]["method"] == "first"  # ties go to the cheaper method listed first
    assert record["best_single"]["method"] == "single:mathy"
    assert record["in_sample"] and record["settings"] == {"router": "topk", "k": 2}
    # votes replay the validation answers: each expert answered each question once; only the
    # fusion prompts were generated on top (4 per candidate)
    assert calls == {"mathy": 8, "histy": 8, "meh": 8, "agg-bad": 8 + 4, "agg-good": 8 + 4}
    assert json.loads(path.read_text())["meta"]["methods"] == record  # stored with the profile


def test_run_uses_the_best_method_on_validation_and_says_why(world):
    pool, path, _, _ = world
    with orchestrator(pool, profile=str(path), **RUN) as orch:
        assert orch.config.aggregator == "first" and orch.method.source == "evidence"
        result = orch.evaluate(queries())
        summary = summary_record(result, {"evaluation": baselines(orch.generation, queries(),
                                                                  result.answers)})
    method = summary["method"]
    assert method["method"] == "first" and summary["aggregator"] == "first"
    assert method["reason"].startswith("best on validation: 1.00 vs vote 1.00, vote-plain 1.00")
    assert "8 questions, in-sample" in method["reason"]
    assert method["validation"]["best_single"]["method"] == "single:mathy"
    assert method["warnings"] == []  # 100% routed vs 50% for the best single expert
    lines = summary_lines(summary, "out")
    assert any(line.startswith("method     first: best on validation") for line in lines)
    assert not any(line.startswith("WARN") for line in lines)


def test_a_named_aggregator_wins_over_the_evidence_and_is_warned_about(world):
    pool, path, _, _ = world
    with orchestrator(pool, profile=str(path), aggregator="fuse", aggregator_expert="agg-bad",
                      **RUN) as orch:
        assert orch.method.source == "named" and orch.config.aggregator == "fuse"
        result = orch.evaluate(queries())
        evaluation = baselines(orch.generation, queries(), result.answers)
    summary = summary_record(result, {"evaluation": evaluation})
    method = summary["method"]
    assert method["method"] == "fuse:agg-bad"
    assert method["reason"] == "named by the user (aggregator fuse)"
    assert result.accuracy == 0.0  # agg-bad fused every answer wrongly
    validation, run = method["warnings"]
    assert "scored 0.0% on validation, below the single best expert mathy (50.0%)" in validation
    assert "would use first" in validation
    assert run.startswith("this run's accuracy 0.0% is below the single best expert mathy "
                          "(50.0%) on the same 8 questions (difference -50.0 points")
    # why it ran anyway: what validation said about it
    assert run.endswith("; on the 8 validation questions fuse:agg-bad scored 0.0% and the best "
                        "single expert was mathy (50.0%)")
    warns = [line for line in summary_lines(summary, "out") if line.startswith("WARN")]
    assert len(warns) == 2
    report = "\n".join(method_section(method))
    assert "**Warning:** the chosen method fuse:agg-bad" in report
    assert "| fuse:agg-bad (chosen) | 4 | 0.00%" in report


def test_the_single_best_expert_as_a_method_sends_every_question_to_it(world, tmp_path):
    pool, path, profile, _ = world
    record = profile.meta["methods"]
    single = {**record["best_single"], "method": "single:histy", "accuracy": 1.0}
    record.update(best=single, table=[single, *record["table"][1:]])
    profile.save(tmp_path / "single.json")
    with orchestrator(pool, profile=str(tmp_path / "single.json"), **RUN) as orch:
        assert (orch.config.router, orch.k, orch.config.experts) == ("fixed", 1, ["histy"])
        result = orch.evaluate(queries())
    assert {a.selection.experts for a in result.answers} == {("histy",)}
    assert summary_record(result)["method"]["method"] == "single:histy"


def test_the_reason_says_when_the_run_routes_unlike_the_measurement(world):
    pool, path, _, _ = world
    with orchestrator(pool, profile=str(path), **{**RUN, "k": 3}) as orch:
        assert orch.method.reason.endswith("measured with router topk, k=2, while this run "
                                           "routes with topk, k=3")


def test_without_a_methods_table_the_default_stays_vote(tmp_path):
    _, pool = write_world(tmp_path)
    with Orchestrator.from_files(pool, router="fixed", k=3) as orch:
        assert orch.config.aggregator == "vote" and orch.method.source == "default"
        result = orch.evaluate(queries()[:2])
    assert result.answers[0].aggregator == "vote"
    assert summary_record(result)["method"]["reason"].startswith("no validation evidence")


def test_profile_cli_prints_the_methods_table_as_in_sample(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from orchestrator.cli.main import app

    monkeypatch.setattr("orchestrator.skills.embedder.Embedder",
                        lambda **_: BagOfWordsEmbedder())  # MiniLM is not what this tests

    data, pool = write_world(tmp_path)
    result = CliRunner().invoke(app, [
        "profile", "--pool", str(pool), "--data", str(data), "--out", str(tmp_path / "p.json"),
        "--annotator", "field", "--router", "topk", "--k", "2", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert ("methods on 8 validation questions, routed by topk with k=2 (in-sample: the router "
            "was fitted on them):") in result.output
    assert "first" in result.output and "<- best" in result.output
    assert "fuse" not in result.output  # no --aggregators and no pool aggregator: fuse skipped
    result = CliRunner().invoke(app, [
        "profile", "--pool", str(pool), "--data", str(data), "--out", str(tmp_path / "q.json"),
        "--annotator", "field", "--no-methods", "--no-progress"])
    assert result.exit_code == 0 and "methods on" not in result.output
    assert "methods" not in json.loads((tmp_path / "q.json").read_text())["meta"]
