"""`orchestrate store stats|export|prune` and `orchestrate logs`, through a subprocess: export
then replay gives the same per-expert answers; every error is one line and exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.core import Orchestrator
from orchestrator.store import GenerationStore, StoredExecutor, query_extractor

from .conftest import ROOT, choice_rows

SHARED_REPLAY = ROOT.parent / "shared" / "data" / "replay" / "mmlu_pro_replay_test.jsonl"


def orchestrate(*args: str, store: Path | None = None, cwd: Path = ROOT):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ORCHESTRATOR_DEBUG": ""}
    if store is not None:
        env["ORCHESTRATOR_STORE"] = str(store)
    return subprocess.run([sys.executable, "-c", "from orchestrator.cli.main import main; main()",
                           *args], env=env,
                          cwd=cwd, capture_output=True, text=True, timeout=120)


def assert_one_line_error(proc, *needles: str) -> None:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def per_expert(result) -> list[list[tuple[str, str | None]]]:
    return [[(o.expert, o.answer) for o in a.outputs] for a in result.answers]


def run_stored(pool: Path, queries, store: Path, **overrides):
    with Orchestrator.from_files(pool, **overrides) as orch, GenerationStore(store) as db:
        orch.executor = StoredExecutor(orch.executor, db, extract=query_extractor(queries))
        result = orch.evaluate(queries)
        keys = orch.executor.keys.keys([orch.generation.request(o.expert, a.query, 0)
                                        for a in result.answers for o in a.outputs])
        stored = db.lookup(keys)
        # the stored answers are the ones the run read
        assert [stored[k].answer for k in keys] == [o.answer for a in result.answers
                                                    for o in a.outputs]
        return result


def test_export_then_replay_gives_the_same_per_expert_answers(tmp_path, fake_pool, sample_jsonl):
    from orchestrator.benchmarks.readers import read_benchmark

    bench = sample_jsonl(choice_rows(12) + [
        {"id": "n1", "question": "How many legs has a spider?", "gold": "8"}])
    pool = fake_pool(3, resident_limit=3)
    store = tmp_path / "s.sqlite"
    queries = read_benchmark(bench)
    original = run_stored(pool, queries, store, router="fixed", k=3,
                          escalation={"mode": "none"})

    proc = orchestrate("store", "export", str(bench), "--pool", str(pool), "--out",
                       str(tmp_path / "out" / "rec.jsonl"), "--pool-out",
                       str(tmp_path / "out" / "replay.yaml"), store=store)
    assert proc.returncode == 0, proc.stderr
    assert "exported 13 of 13 questions x 3 experts" in proc.stderr
    line = json.loads((tmp_path / "out" / "rec.jsonl").read_text().splitlines()[0])
    assert set(line["models"]) == {"e0", "e1", "e2"} and line["gold"] == "A"
    with Orchestrator.from_files(tmp_path / "out" / "replay.yaml", router="fixed", k=3,
                                 escalation={"mode": "none"}) as orch:
        replayed = orch.evaluate(queries)
    assert per_expert(replayed) == per_expert(original)
    assert [a.final_answer for a in replayed.answers] == [a.final_answer for a in original.answers]

    # stats count per expert; prune removes one expert's generations
    stats = json.loads(orchestrate("store", "stats", "--json", store=store).stdout)
    assert {e: s["generations"] for e, s in stats["experts"].items()} == {
        "e0": 13, "e1": 13, "e2": 13}
    proc = orchestrate("store", "prune", "--expert", "e1", store=store)
    assert proc.returncode == 0 and "removed 13 generations, 0 errors" in proc.stdout
    # now a question lacks e1: strict export skips all of it, --partial keeps the others
    proc = orchestrate("store", "export", str(bench), "--pool", str(pool), "--out",
                       str(tmp_path / "none.jsonl"), store=store)
    assert_one_line_error(proc, "Nothing to export", str(bench))
    assert not (tmp_path / "none.jsonl").exists()
    proc = orchestrate("store", "export", str(bench), "--pool", str(pool), "--out",
                       str(tmp_path / "part.jsonl"), "--partial", store=store)
    assert proc.returncode == 0, proc.stderr
    first = json.loads((tmp_path / "part.jsonl").read_text().splitlines()[0])
    assert set(first["models"]) == {"e0", "e2"}
    proc = orchestrate("store", "prune", "--older-than", "0s", "--vacuum", store=store)
    assert "removed 26 generations, 0 errors and 0 request logs" in proc.stdout
    assert "MB ->" in proc.stdout


def test_a_real_replay_pool_exports_to_an_identical_replay_pool(tmp_path):
    from orchestrator.benchmarks.readers import read_benchmark

    if not SHARED_REPLAY.is_file():
        pytest.skip("../shared/data is not present")
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(SHARED_REPLAY.read_text().splitlines(True)[:40]))
    queries = read_benchmark(bench)
    pool = ROOT / "pools" / "replay-mmlu-pro-small.yaml"
    store = tmp_path / "s.sqlite"
    original = run_stored(pool, queries, store, router="fixed", k=13,
                          escalation={"mode": "none"})
    proc = orchestrate("store", "export", str(bench), "--pool", str(pool), "--out",
                       str(tmp_path / "rec.jsonl"), "--pool-out", str(tmp_path / "again.yaml"),
                       store=store)
    assert proc.returncode == 0, proc.stderr
    with Orchestrator.from_files(tmp_path / "again.yaml", router="fixed", k=13,
                                 escalation={"mode": "none"}) as orch:
        replayed = orch.evaluate(queries)
    assert per_expert(replayed) == per_expert(original)
    assert replayed.accuracy == original.accuracy


def test_logs_list_and_show(tmp_path):
    store = tmp_path / "s.sqlite"
    with GenerationStore(store) as db:
        first = db.log_request({"model": "mixture", "messages": [
            {"role": "user", "content": "What is 2+2?"}]}, {"content": "The answer is 4."},
            routing={"experts": ["e0", "e1"]}, duration_s=0.25)
        db.log_request({"model": "e0", "messages": [{"role": "user", "content": "Hi"}]},
                       error="The 'e0' queue is full")
    listed = orchestrate("logs", store=store)
    assert listed.returncode == 0, listed.stderr
    assert "What is 2+2?" in listed.stdout and "queue is full" in listed.stdout
    assert listed.stdout.index("Hi") < listed.stdout.index("What is 2+2?")  # newest first
    shown = orchestrate("logs", "show", str(first), store=store)
    record = json.loads(shown.stdout)
    assert record["routing"] == {"experts": ["e0", "e1"]}
    assert record["response"]["content"] == "The answer is 4." and record["duration_s"] == 0.25
    assert_one_line_error(orchestrate("logs", "show", "99", store=store), "99", str(store))


def test_every_store_error_is_one_line_naming_the_file_and_exit_2(tmp_path, fake_pool,
                                                                   sample_jsonl):
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"definitely not sqlite" * 100)
    for args in (["store", "stats"], ["logs", "show", "1"]):
        assert_one_line_error(orchestrate(*args, "--store", str(corrupt)), str(corrupt),
                              "corrupt")
    future = tmp_path / "future.sqlite"
    with GenerationStore(future) as db:
        db._conn.execute("UPDATE schema_version SET version = 7")
    assert_one_line_error(orchestrate("store", "stats", store=future), str(future), "version 7")
    assert_one_line_error(orchestrate("store", "stats", "--store", str(tmp_path)), str(tmp_path),
                          "folder")
    assert_one_line_error(orchestrate("store", "prune", "--older-than", "soon",
                                      store=tmp_path / "s.sqlite"), "soon")
    bench, pool = sample_jsonl(choice_rows(2)), fake_pool(2)
    assert_one_line_error(orchestrate("store", "export", str(bench), "--pool", str(pool),
                                      "--out", str(tmp_path), store=tmp_path / "s.sqlite"),
                          str(tmp_path))
    assert_one_line_error(orchestrate("store", "export", str(bench), "--pool", str(pool),
                                      "--out", str(tmp_path / "x.jsonl"), "--experts", "e9",
                                      store=tmp_path / "s.sqlite"), "e9")


def test_stats_shows_counts_and_ages(tmp_path):
    from orchestrator.store import Row

    store = tmp_path / "s.sqlite"
    with GenerationStore(store) as db:
        db.put([Row(bytes([i]) * 32, b"e" * 32, "smol-math", f"q{i}", True, "t", tokens_out=4)
                for i in range(3)], [(b"x" * 32, "smol-math", "q9", "boom")])
        db._conn.execute("UPDATE generations SET created = ?", (time.time() - 2 * 86400,))
    proc = orchestrate("store", "stats", store=store)
    assert proc.returncode == 0, proc.stderr
    row = next(line for line in proc.stdout.splitlines() if "smol-math" in line)
    assert [c.strip() for c in row.strip("│ ").split("│")][:6] == [
        "smol-math", "3", "0", "1", "12", "2.0d"]
    assert "3 generations, 1 errors" in proc.stdout
