"""The simulated vLLM (`vllm/` here) and the fixture that puts it on sys.path.

    from .fake_vllm import fake_vllm_fixture  # noqa: F401  (registers the fixture `fake_vllm`)

    def test_x(fake_vllm):
        machine = fake_vllm.reset(gpus=2, total_gib=80)   # vllm._sim
        ...

Any real `vllm` already imported is set aside for the test and put back afterwards.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def model_folder(root: Path, name: str, **card) -> str:
    """A model folder the simulation reads: config.json plus sim.json (weights_gib,
    cudagraph_gib, max_model_len, template)."""
    import json

    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    (folder / "sim.json").write_text(json.dumps(card))
    return str(folder)


@pytest.fixture(name="fake_vllm")
def fake_vllm_fixture(monkeypatch):
    saved = {k: v for k, v in sys.modules.items() if k == "vllm" or k.startswith("vllm.")}
    for name in saved:
        del sys.modules[name]
    monkeypatch.syspath_prepend(str(HERE))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    import vllm._sim as sim

    sim.reset()
    yield sim
    for name in [k for k in sys.modules if k == "vllm" or k.startswith("vllm.")]:
        del sys.modules[name]
    sys.modules.update(saved)
