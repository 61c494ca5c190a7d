from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# Real-model tests share the machine's cores; never let torch take more than two.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(autouse=True)
def _own_generation_store(tmp_path, monkeypatch):
    """Every test gets its own generation store: the CLI's default (the per-user store) must
    neither leak answers between tests nor touch the developer's cache."""
    monkeypatch.setenv("ORCHESTRATOR_STORE", str(tmp_path / "default-store.sqlite"))


def write_pool(path: Path, experts: list[dict], resident_limit: int = 1, name: str = "test") -> Path:
    path.write_text(yaml.safe_dump(
        {"name": name, "resident_limit": resident_limit, "experts": experts}, sort_keys=False
    ))
    return path


@pytest.fixture
def fake_pool(tmp_path):
    """A pool of fake experts: fake_pool(3, resident_limit=1, options={"e1": {...}})."""

    def make(n: int = 3, resident_limit: int = 1, options: dict | None = None) -> Path:
        experts = [
            {"id": f"e{i}", "backend": "fake", "model": "fake",
             "options": (options or {}).get(f"e{i}", {})}
            for i in range(n)
        ]
        return write_pool(tmp_path / "pool.yaml", experts, resident_limit)

    return make


@pytest.fixture
def sample_jsonl(tmp_path):
    def make(rows: list[dict]) -> Path:
        import json

        path = tmp_path / "bench.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path

    return make


def choice_rows(n: int) -> list[dict]:
    return [
        {"id": f"q{i}", "question": f"Question number {i}?", "gold": "ABCD"[i % 4],
         "options": ["w", "x", "y", "z"]}
        for i in range(n)
    ]
