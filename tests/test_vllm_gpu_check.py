"""scripts/gpu_check.py's logic against the simulated vLLM (the real run needs a GPU)."""

from __future__ import annotations

import importlib.util
import json
import subprocess

from .conftest import ROOT
from .fake_vllm import fake_vllm_fixture, model_folder  # noqa: F401  (fixture `fake_vllm`)


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_reports_every_figure(fake_vllm, tmp_path):
    machine = fake_vllm.reset(gpus=1, total_gib=80)
    a = model_folder(tmp_path, "a", weights_gib=0.3, cudagraph_gib=0.4)
    b = model_folder(tmp_path, "b", weights_gib=0.3, cudagraph_gib=0.4)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 8, "peft_type": "LORA"}))
    options = {"gpu_memory_utilization": 0.25, "max_model_len": 2048, "enable_sleep_mode": True,
               "max_lora_rank": 8}
    report = load_script().run(a, b, str(adapter), options, n=3)
    json.dumps(report)  # serialisable as printed
    assert report["cold_start_s"] >= 0
    for level in ("1", "2"):
        sleep = report["sleep"][level]
        assert sleep["greedy_identical"] is True
        assert sleep["kept_on_gpu"] == int(0.9 * (1 << 30))  # context + CUDA graphs
        assert sleep["gpu_free_asleep"] > report["gpu_free_before"] - (1 << 30)
    assert report["lora"] == {"seconds": report["lora"]["seconds"], "differs_from_base": True,
                              "engines": 1}
    sleeper = [e for e in report["switch"]["engines"] if e["asleep"]]
    assert len(sleeper) == 1 and sleeper[0]["residual_bytes"] == {"0": int(0.9 * (1 << 30))}
    ratio = report["grouped_vs_naive"]
    assert ratio["grouped_s"] > 0 and ratio["naive_s"] > 0
    assert report["deaths"] == [] and all(g.used == 0 for g in machine.gpus)


def test_gpu_check_scripts_parse():
    subprocess.run(["bash", "-n", str(ROOT / "scripts" / "gpu_check.sh")], check=True)
    compile((ROOT / "scripts" / "gpu_check.py").read_text(), "gpu_check.py", "exec")
