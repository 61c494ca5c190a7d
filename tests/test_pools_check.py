"""`orchestrate pools check`: every problem that would stop a run, one line each, exit 2; a real
loopback OpenAI-style server for openai_http, a temporary Hugging Face cache (HF_HUB_CACHE) for
hub ids, the CLI run as a subprocess as a user runs it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from orchestrator.extras import installed

from .conftest import ROOT, write_pool

HAS_CPU = installed("torch") and installed("transformers")


def pools_check(pool: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", "from orchestrator.cli.main import main; main()",
         "pools", "check", str(pool), *args],
        capture_output=True, text=True, env=environ, timeout=120)


def problems(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("problem:")]


class _Models(BaseHTTPRequestHandler):
    served: tuple[str, ...] = ("served-model",)

    def do_GET(self):  # noqa: N802 (http.server's naming)
        if self.path != "/v1/models":
            self.send_error(404)
            return
        body = json.dumps({"object": "list", "data": [
            {"id": m, "object": "model", "owned_by": "test"} for m in self.served]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def models_server():
    """A real HTTP server on loopback answering GET /v1/models; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Models)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_expert(eid: str, base_url: str, model: str) -> dict:
    return {"id": eid, "backend": "openai_http", "model": model,
            "options": {"base_url": base_url, "connect_timeout_s": 2.0}}


def test_openai_http_server_up_and_serving_the_model_passes(tmp_path, models_server):
    pool = write_pool(tmp_path / "p.yaml", [http_expert("remote", models_server, "served-model")])
    result = pools_check(pool)
    assert result.returncode == 0, result.stderr
    assert "remote" in result.stdout and result.stdout.rstrip().endswith("ok")
    assert problems(result) == []


def test_openai_http_down_and_model_not_served_are_both_reported(tmp_path, models_server):
    down = f"http://127.0.0.1:{closed_port()}/v1"
    pool = write_pool(tmp_path / "p.yaml", [
        http_expert("gone", down, "served-model"),
        http_expert("wrong", models_server, "other-model"),
        http_expert("fine", models_server, "served-model"),
    ])
    result = pools_check(pool)
    assert result.returncode == 2
    lines = problems(result)
    assert len(lines) == 2, result.stderr
    assert "'gone'" in lines[0] and "does not answer GET" in lines[0] and down in lines[0]
    assert "'wrong'" in lines[1] and "'other-model'" in lines[1] and "served-model" in lines[1]

    report = json.loads(pools_check(pool, "--json").stdout)
    assert report["ok"] is False
    assert [(p["expert"], p["kind"]) for p in report["problems"]] == [
        ("gone", "server_unreachable"), ("wrong", "model_not_served")]
    assert [e["problems"] for e in report["experts"]][2] == []


def fake_hub_cache(root: Path, repo_id: str) -> Path:
    """The layout huggingface_hub writes: models--ORG--NAME/{refs/main, snapshots/SHA/...}."""
    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    snapshot = repo / "snapshots" / sha
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    return root


@pytest.mark.skipif(not HAS_CPU, reason="the transformers backend needs the [cpu] extra")
def test_hub_model_present_or_absent_in_the_local_cache(tmp_path):
    cache = fake_hub_cache(tmp_path / "hub", "test-org/cached-model")
    pool = write_pool(tmp_path / "p.yaml", [
        {"id": "cached", "backend": "transformers", "model": "test-org/cached-model"},
        {"id": "absent", "backend": "transformers", "model": "test-org/absent-model"},
    ])
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    result = pools_check(pool, "--json", env=env)
    assert result.returncode == 2
    report = json.loads(result.stdout)
    assert [(p["expert"], p["kind"]) for p in report["problems"]] == [("absent", "model_not_cached")]
    assert str(cache) in report["problems"][0]["message"]
    assert "hf download test-org/absent-model" in report["problems"][0]["message"]

    only_cached = write_pool(tmp_path / "ok.yaml", [report_expert(report, "cached")])
    result = pools_check(only_cached, env=env)
    assert result.returncode == 0, result.stderr


def report_expert(report: dict, eid: str) -> dict:
    expert = next(e for e in report["experts"] if e["id"] == eid)
    return {"id": eid, "backend": expert["backend"], "model": expert["model"]}


@pytest.mark.skipif(installed("vllm"), reason="vllm is installed here")
def test_backend_package_not_installed_names_the_extra(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    pool = write_pool(tmp_path / "p.yaml", [
        {"id": "v1", "backend": "vllm", "model": str(model)},
        {"id": "ok", "backend": "fake", "model": "fake"},
    ])
    result = pools_check(pool)
    assert result.returncode == 2
    assert problems(result) == [
        "problem: expert 'v1': The vllm backend needs the [vllm] extra (vllm not installed): "
        "pip install 'orchestrator[vllm]'"]
    report = json.loads(pools_check(pool, "--json").stdout)
    assert [p["kind"] for p in report["problems"]] == ["missing_package"]


@pytest.mark.skipif(not HAS_CPU, reason="the transformers backend needs the [cpu] extra")
def test_missing_folders_and_model_of_one_expert_are_all_listed(tmp_path):
    pool = write_pool(tmp_path / "p.yaml", [
        {"id": "lora", "backend": "transformers", "model": "no/such/folder",
         "adapter": "adapters/missing"},
        {"id": "moe", "backend": "transformers", "model": "no/such/folder/either",
         "lora_moe": "gates/missing"},
    ])
    result = pools_check(pool, "--json")
    assert result.returncode == 2
    report = json.loads(result.stdout)
    assert [(p["expert"], p["kind"]) for p in report["problems"]] == [
        ("lora", "model_not_found"), ("lora", "folder_missing"),
        ("moe", "model_not_found"), ("moe", "folder_missing")]
    assert "adapters/missing" in report["problems"][1]["message"]
    assert "gates/missing" in report["problems"][3]["message"]
    text = pools_check(pool)
    assert text.returncode == 2 and len(problems(text)) == 4


def test_an_invalid_manifest_is_the_usual_error_or_one_json_problem(tmp_path):
    pool = tmp_path / "p.yaml"
    pool.write_text("name: x\nexperts: []\nextra_key: 1\n")
    result = pools_check(pool)
    assert result.returncode == 2 and result.stderr.startswith("error: Invalid pool manifest")
    assert "extra_key: unknown key" in result.stderr and "Traceback" not in result.stderr
    result = pools_check(pool, "--json")
    assert result.returncode == 2
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["problems"][0]["kind"] == "invalid_manifest"


def test_a_bad_manifest_is_one_line_exit_2(tmp_path):
    pool = write_pool(tmp_path / "p.yaml", [{"id": "a", "backend": "vlm"}])
    result = pools_check(pool)
    assert result.returncode == 2
    assert problems(result) == [
        "problem: expert 'a': Unknown backend 'vlm'. Available: fake, openai_http, replay, "
        "transformers, vllm. Did you mean 'vllm'?"]
    assert "Traceback" not in result.stderr
