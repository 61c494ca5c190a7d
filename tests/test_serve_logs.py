"""`orchestrate serve` records each chat request, its routing and its answer in the store when
asked (off by default); `orchestrate logs` lists and shows them."""

from __future__ import annotations

import os
import subprocess
import sys

import openai
import pytest

from orchestrator.store import GenerationStore

from .conftest import ROOT
from .test_server import USER, live, make_orch


def test_served_requests_are_recorded_and_listed(tmp_path):
    store = GenerationStore(tmp_path / "logs.sqlite")
    with live(make_orch(tmp_path), request_log=store) as s:
        client = s.client()
        reply = client.chat.completions.create(model="orchestrator", messages=USER)
        with pytest.raises(openai.BadRequestError):  # k beyond the pool: a logged error
            client.chat.completions.create(model="orchestrator", messages=USER,
                                           extra_body={"k": 99})
    rows = store.list_requests()  # newest first
    assert [r["status"] for r in rows] == ["error", "ok"]
    assert "k=99" in store.get_request(rows[0]["id"])["error"]
    record = store.get_request(rows[1]["id"])
    assert record["request"]["messages"] == USER
    assert record["response"]["choices"][0]["message"]["content"] == \
        reply.choices[0].message.content
    assert record["routing"]["router"] and record["routing"]["experts"]
    store.close()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    listed = subprocess.run([sys.executable, "-c", "from orchestrator.cli.main import main; "
                             "main()", "logs", "--store", str(tmp_path / "logs.sqlite")],
                            env=env, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert "What is 6 times 7?" in listed.stdout or str(rows[0]["id"]) in listed.stdout


def test_without_a_request_log_nothing_is_recorded(tmp_path):
    with live(make_orch(tmp_path)) as s:
        s.client().chat.completions.create(model="orchestrator", messages=USER)
        assert s.serving.settings.request_log is None
