"""`orchestrate pools up` / `pools down` with a stand-in for `vllm serve`
(tests/openai_standin.py takes vLLM's command line), since vLLM cannot run here."""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from orchestrator import Orchestrator, load_pool
from orchestrator.cli.main import app
from orchestrator.config import RunConfig
from orchestrator.types import GenerationRequest, Message
from orchestrator.workers.fleet import parse_gpus, plan_servers

from .conftest import write_pool

pytestmark = pytest.mark.timeout(60)
STANDIN = Path(__file__).with_name("openai_standin.py")
COMMAND = f"{{python}} {STANDIN} {{model}} {{args}}"


@pytest.fixture(autouse=True)
def all_gpus_visible(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)  # indices below are physical


def pool(tmp_path: Path) -> Path:
    adapter = tmp_path / "adapters" / "math"
    adapter.mkdir(parents=True, exist_ok=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 8}))
    return write_pool(tmp_path / "pool.yaml", [
        {"id": "base-a", "backend": "vllm", "model": "org/model-a", "max_tokens": 64,
         "options": {"max_model_len": 4096}},
        {"id": "math-a", "backend": "vllm", "model": "org/model-a", "adapter": "adapters/math",
         "options": {"max_model_len": 4096}},
        {"id": "sleepy-b", "backend": "vllm", "model": "org/model-b",
         "options": {"enable_sleep_mode": True, "gpu_memory_utilization": 0.8}},
        {"id": "remote", "backend": "openai_http", "model": "x",
         "options": {"base_url": "http://127.0.0.1:9/v1"}},
    ])


def standin_info(url: str) -> dict:
    with urllib.request.urlopen(url.removesuffix("/v1") + "/standin", timeout=5) as resp:
        return json.load(resp)


def test_plan_groups_experts_into_servers_and_spreads_them(tmp_path):
    servers = plan_servers(load_pool(pool(tmp_path)), [0, 1])
    assert [(s.experts, s.gpus) for s in servers] == [(["base-a", "math-a"], [0]),
                                                     (["sleepy-b"], [1])]
    flags = servers[0].flags("127.0.0.1", 1)
    assert "--enable-lora" in flags and "--enable-sleep-mode" not in flags
    assert f"math-a={tmp_path / 'adapters' / 'math'}" in flags
    one_gpu = plan_servers(load_pool(pool(tmp_path)), [3])
    assert all(s.gpus == [3] for s in one_gpu)
    b = one_gpu[1].flags("127.0.0.1", 2)  # two servers share GPU 3: half the memory each
    assert b[b.index("--gpu-memory-utilization") + 1] == "0.400"
    assert parse_gpus("0-2,5") == [0, 1, 2, 5]


def test_pools_up_serves_the_pool_and_pools_down_stops_it(tmp_path):
    runner = CliRunner()
    served = tmp_path / "served.yaml"
    result = runner.invoke(app, ["pools", "up", str(pool(tmp_path)), "--gpus", "0-1", "--out",
                                 str(served), "--command", COMMAND, "--base-port", "0",
                                 "--timeout-s", "20"])
    assert result.exit_code == 0, result.output
    state = json.loads((tmp_path / "served.yaml.state.json").read_text())
    try:
        manifest = yaml.safe_load(served.read_text())
        experts = {e["id"]: e for e in manifest["experts"]}
        assert {e["backend"] for e in experts.values()} == {"openai_http"}
        assert experts["remote"]["options"]["base_url"] == "http://127.0.0.1:9/v1"  # kept
        assert experts["base-a"]["max_tokens"] == 64
        a, b = (s["url"] for s in state["servers"])
        assert experts["math-a"]["options"] == {"base_url": a, "remote_model": "math-a"}
        info_a, info_b = standin_info(a), standin_info(b)
        assert (info_a["cuda_visible_devices"], info_b["cuda_visible_devices"]) == ("0", "1")
        assert "--enable-lora" in info_a["argv"] and "--enable-sleep-mode" in info_b["argv"]
        assert "--enable-sleep-mode" not in info_a["argv"]
        # the written manifest runs as it is: each expert answers from its server
        o = Orchestrator(load_pool(served), RunConfig())
        batch = [GenerationRequest(expert=e, messages=(Message("user", "hi"),), index=i)
                 for i, e in enumerate(["base-a", "math-a", "sleepy-b"])]
        results, _ = o.executor.execute(batch)
        assert [r.text.split("@")[0] for r in results] == ["base-a", "math-a", "sleepy-b"]
        o.close()
    finally:
        down = runner.invoke(app, ["pools", "down", str(served), "--grace-s", "5"])
    assert down.exit_code == 0, down.output
    assert "stopped 2 servers" in down.output
    assert not (tmp_path / "served.yaml.state.json").exists()
    for s in state["servers"]:
        with pytest.raises(ProcessLookupError):
            os.kill(s["pid"], 0)


def test_a_server_that_dies_fails_pools_up_in_one_line_and_leaves_nothing(tmp_path):
    runner = CliRunner()
    served = tmp_path / "served.yaml"
    result = runner.invoke(app, ["pools", "up", str(pool(tmp_path)), "--out", str(served),
                                 "--command", "{python} -c 'import sys; print(\"no GPU\"); "
                                 "sys.exit(3)'", "--base-port", "0", "--timeout-s", "20"])
    assert result.exit_code == 2
    assert "exited before it was healthy" in result.output and "no GPU" in result.output
    assert not served.exists() and not (tmp_path / "served.yaml.state.json").exists()
    result = runner.invoke(app, ["pools", "down", str(served)])
    assert result.exit_code == 2 and "No servers are recorded" in result.output


def test_bad_gpus_and_pools_without_vllm_experts_are_user_errors(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["pools", "up", str(pool(tmp_path)), "--gpus", "a-b"])
    assert result.exit_code == 2 and "--gpus 'a-b'" in result.output
    plain = write_pool(tmp_path / "plain.yaml", [{"id": "f", "backend": "fake"}])
    result = runner.invoke(app, ["pools", "up", str(plain)])
    assert result.exit_code == 2 and "no vllm expert" in result.output


def test_sleep_mode_servers_on_one_gpu_take_turns(tmp_path):
    engine = {"enable_sleep_mode": True, "gpu_memory_utilization": 0.8}
    path = write_pool(tmp_path / "pool.yaml", [
        {"id": "x", "backend": "vllm", "model": "org/model-x", "options": engine},
        {"id": "y", "backend": "vllm", "model": "org/model-y", "options": engine},
    ])
    runner = CliRunner()
    served = tmp_path / "served.yaml"
    result = runner.invoke(app, ["pools", "up", str(path), "--gpus", "0", "--out", str(served),
                                 "--command", COMMAND, "--base-port", "0", "--timeout-s", "20"])
    assert result.exit_code == 0, result.output
    try:
        urls = [s["url"] for s in json.loads((tmp_path / "served.yaml.state.json")
                                             .read_text())["servers"]]
        info = [standin_info(u) for u in urls]
        # started one after the other: the first sleeps, the last is awake; full memory each
        assert [i["sleeping"] for i in info] == [1, None]
        assert all(i["dev_mode"] == "1" for i in info)
        assert all(i["argv"][i["argv"].index("--gpu-memory-utilization") + 1] == "0.800"
                   for i in info)
        experts = {e["id"]: e for e in yaml.safe_load(served.read_text())["experts"]}
        assert {e["placement"] for e in experts.values()} == {"gpu:0"}
        assert all(e["options"]["sleep_level"] == 1 for e in experts.values())
        o = Orchestrator(load_pool(served), RunConfig())
        for order in (["x", "y"], ["y", "x", "x"]):
            batch = [GenerationRequest(expert=e, messages=(Message("user", "hi"),), index=i)
                     for i, e in enumerate(order)]
            results, _ = o.executor.execute(batch)
            assert all(r.ok for r in results), [r.error for r in results]
            awake = [standin_info(u)["sleeping"] is None for u in urls]
            assert sum(awake) == 1  # one awake engine on the GPU
        o.close()
    finally:
        runner.invoke(app, ["pools", "down", str(served), "--grace-s", "5"])


def test_gpu_indices_count_among_the_visible_devices():
    from orchestrator.errors import UserError
    from orchestrator.workers.fleet import visible_devices

    assert visible_devices([0, 1], None) == "0,1"
    assert visible_devices([0, 2], "4,5,6,7") == "4,6"
    assert visible_devices([1], "GPU-aaaa,GPU-bbbb") == "GPU-bbbb"
    with pytest.raises(UserError, match="GPU 4 is not among the 4 GPUs"):
        visible_devices([4], "4,5,6,7")
