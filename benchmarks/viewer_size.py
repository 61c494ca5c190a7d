"""The run viewer at full size: report.html of the 2,090-question replay run (13-model pool,
default router, k=3), its file size and its time to first render in headless chromium.

Profiles and runs as the README shows (the profile cached as runs/small.json, the run in
runs/small/, both reused when present), then opens DIR/report.html from the file system
several times: time to first render = from navigation start until the table is drawn
and laid out (performance.now() at the first frame after the page marks itself ready;
the table draws 200 rows, more on demand), plus opening a question page and a
full-text search. Optional screenshots of the summary, the table and a question page.

Targets: <= 10 MB and <= 2 s to first render.

    .venv/bin/python benchmarks/viewer_size.py [--repeats 5] [--screenshots /tmp/viewer]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REPLAY = Path("..") / "shared" / "data" / "replay"  # relative to ROOT, as the README writes it
POOL = Path("pools") / "replay-mmlu-pro-small.yaml"
PROFILE = Path("runs") / "small.json"
RUN = Path("runs") / "small"
CHROMIUM = os.environ.get("ORCHESTRATOR_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
TARGET_MB, TARGET_S = 10.0, 2.0
# ms from navigation start to the first frame drawn after the page built itself
FRAME = "new Promise(done => requestAnimationFrame(() => setTimeout(() => done(performance.now()))))"


def orchestrate(*args: object) -> None:
    """`orchestrate ARGS` in a fresh process, from the project root, this checkout's package."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-c", "from orchestrator.cli.main import main; main()",
                    *map(str, args)], cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)


def ensure_run() -> Path:
    if not (ROOT / PROFILE).is_file():
        start = time.perf_counter()
        orchestrate("profile", "--pool", POOL, "--data", REPLAY / "mmlu_pro_replay_profile.jsonl",
                    "--out", PROFILE, "--no-progress")
        print(f"profile    {PROFILE} built in {time.perf_counter() - start:.1f} s")
    if not (ROOT / RUN / "results.jsonl").is_file():
        orchestrate("run", REPLAY / "mmlu_pro_replay_test.jsonl", "--pool", POOL, "--profile",
                    PROFILE, "--k", 3, "--out", RUN, "--no-progress")
    return ROOT / RUN


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--screenshots", type=Path, help="folder for summary/table/question PNGs")
    opts = parser.parse_args()

    from playwright.sync_api import sync_playwright

    from orchestrator.report.html import write_html
    from orchestrator.report.rundir import read_run_dir

    run = read_run_dir(ensure_run())
    start = time.perf_counter()
    page_path = write_html(run)
    build_s = time.perf_counter() - start
    size_mb = page_path.stat().st_size / 1e6
    print(f"run        {len(run.records)} questions x k={run.summary['k']}, "
          f"results.jsonl {(run.path / 'results.jsonl').stat().st_size / 1e6:.2f} MB")
    print(f"page       {page_path.relative_to(ROOT)}: {size_mb:.2f} MB (target <= {TARGET_MB:.0f} MB), "
          f"built in {build_s:.2f} s")
    url = page_path.resolve().as_uri()
    renders, walls, opens, searches = [], [], [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        for i in range(opts.repeats):
            page = browser.new_page(viewport={"width": 1300, "height": 1000})
            requests: list[str] = []
            page.on("request", lambda r, requests=requests: requests.append(r.url))
            start = time.perf_counter()
            page.goto(url)
            page.wait_for_selector("body[data-ready='1']", timeout=60_000)
            renders.append(page.evaluate(FRAME) / 1000)
            walls.append(time.perf_counter() - start)
            assert page.text_content("#qcount").startswith(f"{len(run.records)} of {len(run.records)}")
            assert page.locator("#qbody tr").count() == min(200, len(run.records))  # then on demand
            assert requests == [url], requests
            if opts.screenshots and i == 0:
                opts.screenshots.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(opts.screenshots / "summary.png"))
                page.evaluate("document.getElementById('questions').scrollIntoView()")
                page.screenshot(path=str(opts.screenshots / "table.png"))
            start = time.perf_counter()
            page.fill("#search", "enzyme")  # the table is filtered within the input event
            searches.append(time.perf_counter() - start)
            assert 0 < page.locator("#qbody tr").count() < len(run.records)
            page.fill("#search", "")
            start = time.perf_counter()
            page.evaluate("location.hash = 'q=1000'")
            page.wait_for_selector("#question[data-index='1000']")
            opens.append(time.perf_counter() - start)
            if opts.screenshots and i == 0:
                page.screenshot(path=str(opts.screenshots / "question.png"))
            page.close()
        browser.close()
    med = statistics.median(renders)
    print(f"render     first render {med:.2f} s median of {len(renders)} "
          f"(min {min(renders):.2f}, max {max(renders):.2f}; target <= {TARGET_S:.0f} s); "
          f"goto + render wall {statistics.median(walls):.2f} s")
    print(f"interact   search over all texts {1000 * statistics.median(searches):.0f} ms, "
          f"question page {1000 * statistics.median(opens):.0f} ms (medians)")
    print(f"targets    size {'met' if size_mb <= TARGET_MB else 'MISSED'}, "
          f"render {'met' if med <= TARGET_S else 'MISSED'}; network requests: none")


if __name__ == "__main__":
    main()
