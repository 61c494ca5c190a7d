"""The run viewer and the comparison page in a real headless chromium (Debian's, installed by
scripts/install_browser.sh; driven by playwright's own driver, no browser download), on real
replay runs of pools/replay-mmlu-pro-small.yaml over 42 MMLU-Pro questions (3 per domain)."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli.main import app
from orchestrator.report.html import write_html

from .conftest import ROOT, SHARED_DATA

pytestmark = pytest.mark.browser

CHROMIUM = Path(os.environ.get("ORCHESTRATOR_CHROMIUM", "/usr/bin/chromium"))
if not CHROMIUM.is_file():
    pytest.skip(f"browser tests skipped: no chromium at {CHROMIUM}; install it with `make browser` "
                "as root (apt-get install chromium), or set ORCHESTRATOR_CHROMIUM",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests skipped: playwright is "
                               "not installed; pip install -e '.[test]'")
REPLAY = SHARED_DATA / "replay"
if not (REPLAY / "mmlu_pro_replay_test.jsonl").is_file():
    pytest.skip(f"browser tests skipped: no replay data in {REPLAY}", allow_module_level=True)

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
POOL = ROOT / "pools" / "replay-mmlu-pro-small.yaml"
EVIL = ('</script><script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
        '<b>bold</b> & done')
runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def per_domain(path: Path, out: Path, n: int) -> Path:
    """The first n questions of each domain of a replay file."""
    keep, seen = [], Counter()
    for line in path.read_text().split("\n")[:-1]:
        row = json.loads(line)
        if seen[row["domain"]] < n:
            seen[row["domain"]] += 1
            keep.append(row)
    out.write_text("".join(json.dumps(r) + "\n" for r in keep))
    return out


@pytest.fixture(scope="session")
def replay_runs(tmp_path_factory):
    """Two real replay runs of the same 42 questions: the default router on a field-annotated
    profile (140 profile questions), and 3 random experts. The project root is the working
    directory, as the pool's recording paths are relative to it."""
    tmp = tmp_path_factory.mktemp("replay")
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        bench = per_domain(REPLAY / "mmlu_pro_replay_test.jsonl", tmp / "bench.jsonl", 3)
        data = per_domain(REPLAY / "mmlu_pro_replay_profile.jsonl", tmp / "profile.jsonl", 10)
        invoke("profile", "--pool", POOL, "--data", data, "--out", tmp / "profile.json",
               "--annotator", "field", "--no-progress")
        invoke("run", bench, "--pool", POOL, "--profile", tmp / "profile.json", "--annotator",
               "field", "--k", 3, "--fixed-k", "--aggregator", "vote", "--out", tmp / "routed",
               "--no-progress")  # a named vote: every row has 3 experts, some disagreeing
        invoke("run", bench, "--pool", POOL, "--router", "random", "--k", 3, "--seed", 1,
               "--out", tmp / "random", "--no-progress", "--no-escalation")
    finally:
        os.chdir(cwd)
    return tmp / "routed", tmp / "random"


@pytest.fixture(scope="session")
def browser():
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield chromium
        chromium.close()


class Opened:
    """A page with every request and every script error it made recorded."""

    def __init__(self, browser, path: Path):
        self.url = path.resolve().as_uri()
        self.page = browser.new_page(viewport={"width": 1300, "height": 900})
        self.page.set_default_timeout(20_000)
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(self.url)
        self.page.wait_for_selector("body[data-ready='1']")

    def ids(self, selector="#qbody tr") -> list[str]:
        return self.page.eval_on_selector_all(selector, "rows => rows.map(r => r.dataset.id)")

    def assert_offline(self):
        """Nothing but the page's own file was requested, and no script failed."""
        assert self.requests == [self.url] and self.errors == []


@pytest.fixture
def opened(browser):
    pages = []

    def open_page(path):
        pages.append(Opened(browser, path))
        return pages[-1]

    yield open_page
    for p in pages:
        p.page.close()


def records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "results.jsonl").read_text().split("\n") if line]


def haystack(r: dict) -> str:
    """What the page's search reads, as run.js builds it."""
    parts = [r["id"], r["question"], r.get("gold"), r.get("final_answer"), r.get("domain"),
             *(r.get("options") or [])]
    for o in r["outputs"]:
        parts += [o["expert"], o["text"], o["answer"], o["error"]]
    return "\n".join(str(p) for p in parts if p is not None).lower()


def test_run_page_opens_with_the_counts_of_results_jsonl(replay_runs, opened):
    folder = replay_runs[0]
    rows = records(folder)
    page = opened(folder / "report.html")  # written by `orchestrate run` itself
    assert page.ids() == [r["id"] for r in rows]
    right = sum(bool(r["correct"]) for r in rows)
    count = page.page.text_content("#qcount")
    assert count.startswith(f"{len(rows)} of {len(rows)} questions; {right} of {len(rows)} scored right")
    summary = json.loads((folder / "summary.json").read_text())
    assert page.page.text_content("#accuracy") == f"{100 * summary['accuracy']:.1f}%"
    domains = page.ids("#domain-table tbody tr")
    assert len(domains) == 1 + len({r["domain"] for r in rows}) == 15
    assert page.page.locator("#usage table.usage tbody tr").count() == 14
    page.assert_offline()


def test_filters_and_search_narrow_the_table(replay_runs, opened):
    rows = records(replay_runs[0])
    page = opened(replay_runs[0] / "report.html")
    page.page.select_option("#f-domain", "law")
    assert page.ids() == [r["id"] for r in rows if r["domain"] == "law"]
    page.page.select_option("#f-outcome", "wrong")
    assert page.ids() == [r["id"] for r in rows if r["domain"] == "law" and r["correct"] is False]
    page.page.select_option("#f-domain", "")
    page.page.select_option("#f-outcome", "")
    page.page.check("#f-disagree")
    split = [r["id"] for r in rows if len({o["answer"] for o in r["outputs"]} - {None}) > 1]
    assert 0 < len(split) < len(rows) and page.ids() == split
    page.page.uncheck("#f-disagree")
    expert = rows[0]["experts"][0]
    page.page.select_option("#f-expert", expert)
    chosen = [r["id"] for r in rows if expert in r["experts"]]
    assert 0 < len(chosen) < len(rows) and page.ids() == chosen
    page.page.select_option("#f-relation", "noanswer")
    assert page.ids() == [r["id"] for r in rows if any(
        o["expert"] == expert and o["answer"] is None for o in r["outputs"])]
    page.page.select_option("#f-expert", "")
    page.page.select_option("#f-relation", "chosen")
    word = next(w for w in re.findall(r"[a-z]{6,}", rows[7]["question"].lower()))
    page.page.fill("#search", word.upper())
    found = [r["id"] for r in rows if word in haystack(r)]
    assert rows[7]["id"] in found and len(found) < len(rows) and page.ids() == found
    page.page.fill("#search", rows[5]["id"] + " " + rows[5]["question"].split()[0])
    assert rows[5]["id"] in page.ids() and len(page.ids()) == sum(
        rows[5]["id"] in haystack(r) and rows[5]["question"].split()[0].lower() in haystack(r) for r in rows)
    page.assert_offline()


def test_question_page_shows_every_expert_text_and_keys_move(replay_runs, opened):
    rows = records(replay_runs[0])
    page = opened(replay_runs[0] / "report.html")
    page.page.click(f"#qbody tr[data-id='{rows[2]['id']}']")
    page.page.wait_for_selector("#question[data-index='2']")
    r = rows[2]
    assert page.page.text_content("#qtext") == r["question"]
    assert page.page.text_content("#gold") == r["gold"]
    assert page.page.text_content("#final") == (r["final_answer"] or "(none)")
    outputs = page.page.eval_on_selector_all(
        "#question .output", "els => els.map(e => [e.dataset.expert, e.querySelector('pre').textContent])")
    assert outputs == [[o["expert"], o["text"]] for o in r["outputs"]]
    assert page.page.locator("#question ol.options li").count() == 10  # options from the benchmark
    routing = page.page.eval_on_selector_all("#routing tbody tr", "rs => rs.map(r => r.cells[0].textContent)")
    assert routing == r["experts"]
    page.page.keyboard.press("j")
    page.page.wait_for_selector("#question[data-index='3']")
    page.page.keyboard.press("ArrowLeft")
    page.page.wait_for_selector("#question[data-index='2']")
    page.page.keyboard.press("Escape")
    page.page.wait_for_selector("#list", state="visible")
    page.page.keyboard.press("j")
    page.page.keyboard.press("j")
    page.page.keyboard.press("Enter")
    page.page.wait_for_selector("#question[data-index='1']")
    page.assert_offline()


def test_compare_lists_exactly_the_questions_whose_correctness_differs(replay_runs, opened, tmp_path):
    a, b = replay_runs
    out = tmp_path / "compare.html"
    invoke("view", a, b, "--out", out, "--no-open")
    page = opened(out)
    ra, rb = records(a), records(b)
    differ = [x["id"] for x, y in zip(ra, rb) if x["correct"] != y["correct"]]
    assert 0 < len(differ) < len(ra) and page.ids("#dbody tr") == differ
    diff = 100 * (sum(y["correct"] for y in rb) - sum(x["correct"] for x in ra)) / len(ra)
    cells = page.page.eval_on_selector_all("#pairs-table tbody td", "cs => cs.map(c => c.textContent)")
    assert cells[0] == "random \u2212 routed" and cells[1].startswith(("+" if diff >= 0 else "\u2212")
                                                                       + f"{abs(diff):.2f} points [")
    page.page.click(f"#dbody tr[data-id='{differ[0]}']")
    texts = page.page.eval_on_selector_all("#dbody tr.detail .output pre", "ps => ps.map(p => p.textContent)")
    x, y = ra[[r["id"] for r in ra].index(differ[0])], rb[[r["id"] for r in rb].index(differ[0])]
    assert texts == [o["text"] for o in x["outputs"] + y["outputs"]]
    page.assert_offline()


def test_a_malicious_output_renders_as_text_and_runs_nothing(replay_runs, opened, tmp_path):
    folder = tmp_path / "evil"
    shutil.copytree(replay_runs[0], folder)
    rows = records(folder)
    rows[0]["question"] = "Q? " + EVIL
    rows[0]["outputs"][0]["text"] = EVIL
    rows[0]["outputs"][1]["error"] = EVIL
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    page = opened(write_html(folder))
    assert page.ids()[:2] == [rows[0]["id"], rows[1]["id"]]  # the data block was not cut short
    page.page.fill("#search", "onerror")
    assert page.ids() == [rows[0]["id"]]
    page.page.click(f"#qbody tr[data-id='{rows[0]['id']}']")
    page.page.wait_for_selector("#question")
    assert page.page.text_content("#qtext") == "Q? " + EVIL
    assert page.page.text_content("#question .output pre") == EVIL
    assert EVIL in page.page.text_content("#question .output .error")
    assert page.page.evaluate("window.__pwned") is None
    assert page.page.locator("img, #app b:text('bold')").count() == 0
    assert page.page.evaluate("document.scripts.length") == 2  # the data block and ours
    page.assert_offline()


def test_escalation_filter_and_sweep_frontier_appear_when_the_run_has_them(replay_runs, opened, tmp_path):
    folder = tmp_path / "escalated"
    shutil.copytree(replay_runs[0], folder)
    rows = records(folder)
    for i, r in enumerate(rows):
        r["escalated"] = i % 3 == 0
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    sweep = {"rows": [{"k": k, "accuracy": acc, "calls": 42 * k, "generated": 42, "mean_k": k}
                      for k, acc in ((1, 0.45), (2, 0.44), (3, 0.52), (5, 0.55))]}
    (folder / "sweep.json").write_text(json.dumps(sweep))
    page = opened(write_html(folder))
    page.page.check("#f-escalated")
    assert page.ids() == [r["id"] for r in rows if r["escalated"]]
    assert page.page.locator("svg.frontier circle.pt").count() == 4
    assert page.page.locator("svg.frontier circle.pt.on").count() == 3  # k=2 is dominated by k=1
    assert page.page.locator("svg.frontier circle.here").count() == 1
    page.assert_offline()


def test_a_run_without_escalation_has_no_escalation_filter(replay_runs, opened):
    page = opened(replay_runs[1] / "report.html")
    assert page.page.locator("#f-escalated").count() == 0
    assert page.page.locator("#sweep").count() == 0
    page.assert_offline()


def test_a_long_table_draws_200_rows_then_more_on_demand(replay_runs, opened, tmp_path):
    folder = tmp_path / "long"
    shutil.copytree(replay_runs[0], folder)
    rows = [dict(r, id=f"{r['id']}-{copy}") for copy in range(6) for r in records(replay_runs[0])]
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    page = opened(write_html(folder))
    assert page.ids() == [r["id"] for r in rows[:200]]
    assert page.page.text_content("#qcount").startswith(f"{len(rows)} of {len(rows)} questions")
    assert page.page.text_content("#more") == f"show {len(rows) - 200} more of {len(rows) - 200} not shown"
    page.page.click("#more")
    assert page.ids() == [r["id"] for r in rows] and page.page.is_hidden("#more")
    page.page.select_option("#f-domain", "law")  # a new filter starts from the top again
    assert page.ids() == [r["id"] for r in rows if r["domain"] == "law"]
    page.assert_offline()
