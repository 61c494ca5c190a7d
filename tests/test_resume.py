"""Durable runs through the `orchestrate` process: a run killed part-way (SIGKILL) or stopped
with Ctrl-C (SIGINT) is finished by running the same command again (or --resume DIR), which
generates only what the store lacks, and its results equal an uninterrupted run's."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import ROOT, choice_rows

pytestmark = pytest.mark.timeout(240)

N_QUESTIONS = 16


def command(bench: Path, pool: Path, out: Path, store: Path, *extra: str) -> list[str]:
    return [sys.executable, "-c", "from orchestrator.cli.main import main; main()", "run",
            str(bench), "--pool", str(pool), "--out", str(out), "--store", str(store),
            "--router", "fixed", "--k", "2", "--batch-size", "2", "--no-progress", *extra]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def stored_rows(store: Path) -> int:
    if not store.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT COUNT(*) FROM generations").fetchone()[0]
    except sqlite3.Error:
        return 0


def start_and_wait(cmd: list[str], store: Path, rows: int) -> subprocess.Popen:
    """Start a run and return once at least `rows` generations are committed."""
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 120
    while stored_rows(store) < rows:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run committed nothing in 120 s"
        time.sleep(0.05)
    return proc


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


@pytest.fixture
def world(tmp_path, fake_pool, sample_jsonl):
    """16 questions x 2 experts at 0.25 s per batch of 2: 16 batches, about 4 s."""
    pool = fake_pool(2, resident_limit=2, options={"e0": {"batch_s": 0.25},
                                                   "e1": {"batch_s": 0.25}})
    bench = sample_jsonl(choice_rows(N_QUESTIONS))
    reference = tmp_path / "reference"
    done = subprocess.run(command(bench, pool, reference, tmp_path / "ref.sqlite",
                                  "--no-escalation"), env=env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return bench, pool, reference


def test_sigkill_then_the_same_command_generates_only_what_is_missing(tmp_path, world):
    bench, pool, reference = world
    out, store = tmp_path / "run", tmp_path / "s.sqlite"
    cmd = command(bench, pool, out, store, "--no-escalation")
    proc = start_and_wait(cmd, store, rows=6)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    kept = stored_rows(store)
    assert 6 <= kept < 2 * N_QUESTIONS and not (out / "results.jsonl").exists()
    assert json.loads((out / "run.json").read_text())["state"] == "running"  # killed mid-way

    again = subprocess.run(cmd, env=env(), capture_output=True, text=True)  # the same command
    assert again.returncode == 0, again.stderr
    assert (out / "results.jsonl").read_text() == (reference / "results.jsonl").read_text()
    record = summary(out)["store"]
    assert record["from_store"] == kept  # reused exactly what was committed
    assert record["generated"] == 2 * N_QUESTIONS - kept  # backend calls: only the missing
    assert json.loads((out / "run.json").read_text())["state"] == "complete"


def test_ctrl_c_stops_after_the_batch_and_resume_finishes(tmp_path, world):
    bench, pool, reference = world
    out, store = tmp_path / "run", tmp_path / "s.sqlite"
    proc = start_and_wait(command(bench, pool, out, store, "--no-escalation"), store, rows=4)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    kept = stored_rows(store)
    line = next(x for x in stderr.splitlines() if x.startswith("interrupted:") and "of" in x
                and "planned" in x)
    assert f"{kept} of {2 * N_QUESTIONS} planned generations" in line
    assert f"orchestrate run --resume {out.resolve()}" in line
    assert not (out / "results.jsonl").exists() and not (out / "summary.json").exists()
    state = json.loads((out / "run.json").read_text())
    assert state["state"] == "interrupted" and state["stored"] == kept

    resumed = subprocess.run([sys.executable, "-c",
                              "from orchestrator.cli.main import main; main()", "run",
                              "--resume", str(out)], env=env(), capture_output=True, text=True,
                             cwd=tmp_path)  # from another folder: the options are absolute
    assert resumed.returncode == 0, resumed.stderr
    assert (out / "results.jsonl").read_text() == (reference / "results.jsonl").read_text()
    assert summary(out)["store"]["generated"] == 2 * N_QUESTIONS - kept


def test_another_aggregator_on_the_same_questions_generates_nothing(tmp_path, world):
    bench, pool, _ = world
    store = tmp_path / "s.sqlite"
    first = subprocess.run(command(bench, pool, tmp_path / "vote", store, "--no-escalation"),
                           env=env(), capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    start = time.monotonic()
    second = subprocess.run(command(bench, pool, tmp_path / "first", store, "--no-escalation",
                                    "--aggregator", "first"),
                            env=env(), capture_output=True, text=True)
    seconds = time.monotonic() - start
    assert second.returncode == 0, second.stderr
    record = summary(tmp_path / "first")["store"]
    assert record == {"path": str(store), "from_store": 2 * N_QUESTIONS, "generated": 0}
    assert f"{2 * N_QUESTIONS} from the store, 0 generated" in second.stdout
    assert seconds < 10  # a generation costs 0.125 s: 32 of them would take 4 s alone


def test_resume_of_a_folder_that_is_no_run_is_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-c", "from orchestrator.cli.main import main; main()",
                           "run", "--resume", str(tmp_path)], env=env(), capture_output=True,
                          text=True)
    assert done.returncode == 2 and "holds no run.json" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_ctrl_c_while_the_first_model_loads_keeps_nothing(tmp_path, fake_pool, sample_jsonl):
    """Nothing of the run is in the store yet: Ctrl-C stops at once, and the folder it made
    (with its run.json) is removed: nothing looks like a run."""
    pool = fake_pool(1, options={"e0": {"load_s": 60}})
    out, store = tmp_path / "new" / "run", tmp_path / "s.sqlite"
    cmd = [sys.executable, "-c", "from orchestrator.cli.main import main; main()", "run",
           str(sample_jsonl(choice_rows(4))), "--pool", str(pool), "--out", str(out),
           "--store", str(store), "--router", "fixed", "--k", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 60
    while not (out / "run.json").exists():  # the model is loading now
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1] == "interrupted; nothing was written."
    assert not (tmp_path / "new").exists()


def test_a_folder_made_before_an_option_existed_resumes_with_its_default(tmp_path, world):
    bench, pool, reference = world
    record = json.loads((reference / "run.json").read_text())
    del record["options"]["call_cost"]  # as written by a version without --call-cost
    (reference / "run.json").write_text(json.dumps(record))
    resumed = subprocess.run([sys.executable, "-c",
                              "from orchestrator.cli.main import main; main()", "run",
                              "--resume", str(reference)], env=env(), capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert summary(reference)["store"]["generated"] == 0
