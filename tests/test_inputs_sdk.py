"""Issue 13, item 8, through the SDK: bad arguments and questions raise typed errors (ConfigError,
InvalidQuestionError, OutputError) before any work; the safe readers and writers underneath."""

from __future__ import annotations

import json
import os
import re
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from orchestrator import Orchestrator
from orchestrator.config import load_pool, read_yaml
from orchestrator.errors import ConfigError, InvalidQuestionError, OutputError, UserError
from orchestrator.inputs import to_queries
from orchestrator.outlock import LOCK_NAME, claim_output
from orchestrator.outputs import atomic_write_text, write_run
from orchestrator.report import read_run_dir
from orchestrator.safeio import read_text, yaml_loads
from orchestrator.types import Query

from .conftest import ROOT, choice_rows, write_pool
from .test_inputs_cli_files import alias_bomb


@pytest.fixture
def orch(fake_pool):
    with Orchestrator.from_files(fake_pool(2), k=1) as o:
        yield o


def generated(o: Orchestrator) -> int:
    fake = o.backends.instances().get("fake")
    return len(fake.history) if fake else 0


# -- from_files and keyword overrides --------------------------------------------------------------


@pytest.mark.parametrize("pool", [None, 123, b"pools/cpu-demo.yaml", {"name": "x"}, ""])
def test_from_files_with_something_that_is_not_a_path_is_a_config_error(pool):
    with pytest.raises(ConfigError, match="must be the path of a YAML file"):
        Orchestrator.from_files(pool)


def test_a_config_that_is_not_a_path_is_a_config_error(fake_pool):
    with pytest.raises(ConfigError, match="config must be the path"):
        Orchestrator.from_files(fake_pool(1), 123)
    with pytest.raises(ConfigError, match="takes a PoolConfig; got str"):
        Orchestrator(str(fake_pool(1)))
    with pytest.raises(ConfigError, match="takes a RunConfig or None; got dict"):
        Orchestrator(load_pool(fake_pool(1)), {"k": 1})


@pytest.mark.parametrize("overrides, message", [
    ({"routing": "x"}, "routing= must be a mapping"),
    ({"aggregation": 3}, "aggregation= must be a mapping"),
    ({"routing": {"neighbours": 3}}, "routing.neighbours: unknown key"),
    ({"ruoter": "fixed"}, "ruoter: unknown key"),
])
def test_bad_keyword_overrides_are_config_errors(fake_pool, overrides, message):
    with pytest.raises(ConfigError, match=message):
        Orchestrator.from_files(fake_pool(1), **overrides)


# -- questions --------------------------------------------------------------------------------------


def test_a_bare_string_is_one_question(orch):
    (answer,) = orch.run("What is 2+2?")
    assert answer.query.question == "What is 2+2?"
    assert [q.question for q in to_queries({"question": "Alone?"})] == ["Alone?"]


BAD_QUESTIONS = [
    ([""], "is empty"),
    (["   "], "is empty"),
    ([{"question": ""}], "is empty"),
    ([{"question": "x?", "options": "abc"}], "'options' is one string"),
    ([{"question": "x?", "options": [1, 2]}], "every option must be a non-empty string"),
    ([{"question": "x?", "options": ["a", ""]}], "every option must be a non-empty string"),
    ([{"question": "x?", "options": list("abcdefghijk")}], "at most 10"),
    ([{"question": "x?", "answer_type": "bogus"}], "allowed: choice, numeric, text"),
    ([{"question": "x?", "gold": {"a": 1}}], "'gold' must be a string or a number"),
    ([{"question": "x?", "id": [1]}], "'id' must be a non-empty string"),
    ([{"question": "x?", "domain": 5}], "'domain' must be a string"),
    ([{"question": "x?", "optoins": ["a"]}], "unknown key"),
    ([{"id": "a"}], "has no 'question'"),
    ([None], "is a NoneType"),
    ([Query("a", "")], "is empty"),
    ([Query("a", "x?", answer_type="bogus")], "unknown answer_type"),  # type: ignore[arg-type]
    (b"abc", "bytes"),
    (5, "got int"),
    ([], "No questions"),
    ([{"id": "a", "question": "1"}, {"id": "a", "question": "2"}], "appears twice"),
]


@pytest.mark.parametrize("items, message", BAD_QUESTIONS)
def test_a_bad_question_is_a_typed_error_before_any_generation(orch, items, message):
    good = [{"id": "ok", "question": "Fine?"}] if isinstance(items, list) and items else []
    with pytest.raises(InvalidQuestionError, match=message):
        orch.run(good + list(items) if good else items)
    assert generated(orch) == 0
    assert isinstance(InvalidQuestionError("x"), ConfigError)  # what the SDK raised before


def test_a_lone_surrogate_fails_its_question_alone(orch):
    answers = orch.run(["One?", "bad \ud800 here", "Three?"])
    errors = [a.outputs[0].error for a in answers]
    assert errors[0] is None and errors[2] is None and "surrogate" in errors[1]


# -- writing any text -------------------------------------------------------------------------------


def test_results_with_a_lone_surrogate_round_trip_exactly(orch, tmp_path):
    result = orch.evaluate([{"id": "s", "question": "x \ud800 y", "gold": "1"}, "Fine?"])
    write_run(tmp_path, result)
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert rows[0]["question"] == "x \ud800 y" and rows[1]["question"] == "Fine?"
    atomic_write_text(tmp_path / "note.md", "caf\xe9 \ud800\n")
    assert (tmp_path / "note.md").read_text(encoding="utf-8") == "caf\xe9 \\ud800\n"


def test_a_new_run_drops_the_earlier_report_and_ignores_an_older_sweep(orch, tmp_path):
    (tmp_path / "report.md").write_text("# report of another run\n")
    (tmp_path / "sweep.json").write_text(json.dumps({"rows": []}))
    past = time.time() - 60
    os.utime(tmp_path / "sweep.json", (past, past))
    write_run(tmp_path, orch.evaluate(["One?"]))
    assert not (tmp_path / "report.md").exists()
    assert read_run_dir(tmp_path).sweep is None
    (tmp_path / "sweep.json").write_text(json.dumps({"rows": []}))  # written after: used
    assert read_run_dir(tmp_path).sweep == {"rows": []}


def test_profile_save_to_a_folder_leaves_no_arrays(tmp_path):
    from orchestrator.profiling.profile import Profile

    z = np.zeros((1, 1))
    prof = Profile("p", {}, ["e"], ["s"], z, z, np.ones(1), z[0], z, ["q"], z, z, [(0,)])
    (tmp_path / "p.json").mkdir()
    with pytest.raises(ConfigError, match="is a folder"):
        prof.save(tmp_path / "p.json")
    assert not list(tmp_path.glob("*.npz")) and not list(tmp_path.glob(".*"))
    loaded = Profile.load(prof.save(tmp_path / "q.json"))
    assert loaded.experts == ["e"] and not list(tmp_path.glob(".*tmp*"))


# -- output locations -------------------------------------------------------------------------------


def test_claim_output_checks_creates_locks_and_cleans_up(tmp_path):
    (tmp_path / "file").write_text("x")
    for bad in (tmp_path / "file", tmp_path / "file" / "sub", Path("/dev/null")):
        with pytest.raises(OutputError):
            with claim_output(bad):
                pass
    out = tmp_path / "a" / "b"
    with claim_output(out):
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
        with pytest.raises(OutputError, match=f"'{out}' is in use by another run"):
            with claim_output(out):
                pass
    assert out.is_dir() and not (out / LOCK_NAME).exists()
    with pytest.raises(RuntimeError):
        with claim_output(tmp_path / "new" / "run"):
            raise RuntimeError("failed before writing anything")
    assert not (tmp_path / "new").exists()  # folders created for a failed run are removed


def test_without_flock_a_dead_pid_does_not_block(tmp_path, monkeypatch):
    import socket
    import subprocess

    import orchestrator.outlock as outlock

    monkeypatch.setattr(outlock, "fcntl", None)
    proc = subprocess.Popen(["true"])
    proc.wait()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": proc.pid, "host": socket.gethostname()}))
    with claim_output(tmp_path):  # the recorded holder is gone: taken over
        pass
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(),
                                                  "started": "then"}))
    with pytest.raises(OutputError, match=f"pid {os.getppid()}"):
        with claim_output(tmp_path):
            pass


# -- reading files ---------------------------------------------------------------------------------


def test_shipped_pools_and_presets_still_load():
    for path in sorted((ROOT / "pools").glob("*.yaml")):
        assert load_pool(path).experts
    for path in sorted((ROOT / "configs").glob("*.yaml")):  # the strict YAML reader
        assert isinstance(read_yaml(path, "Config"), dict)


def test_an_alias_bomb_is_refused_in_under_a_second_and_little_memory(tmp_path):
    pool = tmp_path / "bomb.yaml"
    pool.write_text(alias_bomb())
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=r"aliases expand to \d,\d{3},\d{3},\d{3} values"):
        load_pool(pool)
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert seconds < 1.0 and peak < 20 * 2**20, (seconds, peak)


@pytest.mark.parametrize("text, message", [
    ("a: 1\nb: 2\na: 3\n", "key 'a' appears twice in one mapping (first at line 1)"),
    ("a: &x [*x]\n", "cycle"),
    ("a: " + "[" * 200 + "]" * 200 + "\n", "nested more than 100 deep"),
    ("a: [\n", "not valid YAML"),
])
def test_strict_yaml(text, message):
    with pytest.raises(UserError, match=re.escape(message)):
        yaml_loads(text, "test.yaml")


def test_yaml_anchors_and_merge_keys_still_work():
    data = yaml_loads("base: &b {x: 1, y: 2}\nuse: {<<: *b, y: 3}\nlist: [*b, *b]\n", "t.yaml")
    assert data["use"] == {"x": 1, "y": 3} and data["list"] == [{"x": 1, "y": 2}] * 2


def test_not_utf8_names_file_line_and_column_and_a_bom_is_fine(tmp_path):
    path = tmp_path / "f.txt"
    path.write_bytes(b"ok\nab\xe9\n")
    with pytest.raises(UserError, match=r"f.txt: line 2, column 3: not UTF-8 text \(byte 0xe9\)"):
        read_text(path, "File")
    path.write_bytes("\ufeffname: x\n".encode())
    assert read_text(path, "File") == "name: x\n"


# -- --dry-run validates the real manifest ----------------------------------------------------------


def test_dry_run_checks_the_real_experts(tmp_path):
    bad_option = write_pool(tmp_path / "p.yaml", [
        {"id": "e0", "backend": "transformers", "model": "x/y", "options": {"devise": "cpu"}}])
    with Orchestrator.from_files(bad_option, dry_run=True) as o:
        with pytest.raises(ConfigError, match="devise: unknown option"):
            o.check()
        assert "transformers" not in o.backends.instances()  # checked, never kept or loaded
    unknown = write_pool(tmp_path / "q.yaml", [{"id": "e0", "backend": "transfomers"}])
    with pytest.raises(UserError, match="Unknown backend 'transfomers'"):
        Orchestrator.from_files(unknown, dry_run=True)
    good = write_pool(tmp_path / "r.yaml", [{"id": "e0", "backend": "transformers",
                                             "model": "x/y"}])
    with Orchestrator.from_files(good, dry_run=True) as o:
        o.check()
        (answer,) = o.run(choice_rows(1))
    assert answer.outputs[0].text.startswith("The answer is (")
