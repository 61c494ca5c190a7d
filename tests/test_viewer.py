"""The HTML viewer without a browser: report.html written beside every run, its data block and
Content-Security-Policy, `orchestrate view` comparing runs and refusing bad input in one line.
The page's behaviour in a real browser is in test_viewer_browser.py."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil

import pytest
from typer.testing import CliRunner

from orchestrator.cli import view as view_cli
from orchestrator.cli.main import app
from orchestrator.report.html_compare import compare_payload, read_runs
from orchestrator.report.html_page import asset, embed_json

from .routing_fixtures import write_world

runner = CliRunner()
ASSETS = ("common.js", "svg.js", "run.js", "compare.js", "viewer.css")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def world_runs(tmp_path_factory):
    """Two runs of the 8 world questions: `mathy` alone (right on math) and `meh` alone."""
    tmp_path = tmp_path_factory.mktemp("world")
    data, pool = write_world(tmp_path)
    outs = []
    for expert in ("mathy", "meh"):
        out = tmp_path / expert
        result = invoke("run", data, "--pool", pool, "--router", "fixed", "--experts", expert,
                        "--k", 1, "--out", out, "--no-progress")
        assert result.exit_code == 0, result.output
        outs.append(out)
    return outs


def records(folder):
    return [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]


def blocks(page):
    """(data JSON text, script text, style text) of a written page."""
    data = re.search(r'<script type="application/json" id="data">(.*?)</script>', page, re.S).group(1)
    script = re.search(r"<script>(.*?)</script>", page, re.S).group(1)
    style = re.search(r"<style>(.*?)</style>", page, re.S).group(1)
    return data, script, style


def sha256(text):
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def test_run_writes_a_self_contained_report_html(world_runs):
    folder = world_runs[0]
    page = (folder / "report.html").read_text()
    data, script, style = blocks(page)
    payload = json.loads(data)
    assert [r["id"] for r in payload["records"]] == [r["id"] for r in records(folder)]
    assert payload["accuracy"]["correct"] == 4 and payload["accuracy"]["n"] == 8
    assert payload["accuracy"]["low"] < 0.5 < payload["accuracy"]["high"]
    # only the two inline blocks may run or style, nothing may be fetched
    policy = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page).group(1)
    assert policy.startswith("default-src 'none'; ")
    assert f"script-src {sha256(script)};" in policy and f"style-src {sha256(style)};" in policy
    assert not re.search(r"\b(src|href)\s*=\s*[\"']?(https?:)?//", page)
    assert "@import" not in style and "url(" not in style


def test_report_command_redraws_report_html(world_runs):
    folder = world_runs[0]
    (folder / "report.html").unlink()
    result = invoke("report", folder)
    assert result.exit_code == 0, result.output
    assert (folder / "report.html").read_text().startswith("<!DOCTYPE html>")


def test_data_block_cannot_be_closed_by_an_output():
    payload = {"text": "</script><script>alert(1)</script><!-- \u2028 </SCRIPT >"}
    text = embed_json(payload)
    assert "<" not in text and "\u2028" not in text
    assert json.loads(text) == payload


def test_assets_never_build_markup_from_strings():
    for name in ASSETS:
        code = re.sub(r"^\s*(//|/\*).*$", "", asset(name), flags=re.M)  # comments may name them
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                     "new Function", "http://", "https://", "fetch(", "XMLHttpRequest"):
            assert sink not in code.replace("http://www.w3.org/2000/svg", ""), (name, sink)


def test_compare_lists_the_questions_whose_correctness_differs(world_runs, tmp_path):
    a, b = world_runs
    result = invoke("view", a, b, "--out", tmp_path / "cmp.html", "--no-open")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(tmp_path / "cmp.html")
    payload = json.loads(blocks((tmp_path / "cmp.html").read_text())[0])
    ra, rb = records(a), records(b)
    expected = [x["id"] for x, y in zip(ra, rb) if x["correct"] != y["correct"]]
    assert expected and [q["id"] for q in payload["questions"]] == expected
    pair = payload["pairs"][0]
    diff = sum(map(bool, (y["correct"] for y in rb))) / 8 - sum(map(bool, (x["correct"] for x in ra))) / 8
    assert pair["estimate"] == pytest.approx(diff) and pair["low"] <= diff <= pair["high"]
    assert pair["method"] == "paired bootstrap (10000 resamples, seed 0)"
    assert payload == compare_payload(read_runs([a, b]))  # seeded: the same page every time


def write_other_benchmark(folder, target):
    shutil.copytree(folder, target)
    lines = [dict(r, id="other-" + r["id"]) for r in records(folder)]
    (target / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


@pytest.mark.parametrize("setup, message", [
    (lambda a, d: d.mkdir(), "summary.json is missing"),
    (lambda a, d: None, "does not exist"),
    (lambda a, d: write_other_benchmark(a, d), "no question id is in all of"),
    (lambda a, d: (shutil.copytree(a, d), (d / "results.jsonl").write_bytes(
        (a / "results.jsonl").read_bytes().replace(b"Which king", b"Which k\xe9ing"))), "not UTF-8 text"),
])
def test_view_of_bad_input_exits_2_with_one_line(world_runs, tmp_path, setup, message):
    bad = tmp_path / "bad"
    setup(world_runs[0], bad)
    result = invoke("view", world_runs[0], bad, "--out", tmp_path / "cmp.html", "--no-open")
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and message in result.output
    assert "Traceback" not in result.output and not (tmp_path / "cmp.html").exists()


def test_view_opens_a_browser_only_when_a_display_exists(world_runs, tmp_path, monkeypatch):
    opened = []
    monkeypatch.setattr("webbrowser.open", opened.append)
    monkeypatch.setattr(view_cli.sys, "platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert invoke("view", *world_runs, "--out", tmp_path / "c.html").exit_code == 0
    assert opened == []
    monkeypatch.setenv("DISPLAY", ":0")
    result = invoke("view", world_runs[0])
    assert result.exit_code == 0 and result.output.strip() == str(world_runs[0] / "report.html")
    assert opened == [(world_runs[0] / "report.html").resolve().as_uri()]


def test_report_of_a_non_utf8_results_file_is_one_line(world_runs, tmp_path):
    bad = tmp_path / "latin1"
    shutil.copytree(world_runs[0], bad)
    (bad / "results.jsonl").write_bytes((bad / "results.jsonl").read_bytes() + b'{"experts": ["\xe9"]}\n')
    result = invoke("report", bad)
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "not UTF-8 text" in result.output and "Traceback" not in result.output
