"""Placements and replicas on loopback OpenAI-compatible servers (tests/openai_standin.py, a
stand-in for `vllm serve` whose every batch takes `--batch-latency-s`, whatever its size).

1. Four experts, each on its own server: once as four placements (the default for
   openai_http: one executor worker per base URL, all four at once) and once pinned to one
   placement (`placement: one`: the experts run one after another, as on a single GPU).
   Target: four placements >= 3.5x faster, identical answers.
2. One expert with two replicas; one replica is killed (SIGKILL) mid-run. Target: the run
   completes, no result is lost or failed, failovers are counted.

    .venv/bin/python benchmarks/placements.py [--questions 32] [--batch-latency-s 1.0]
        [--batch-size 16] [--kill-after-s 0.5]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator import Orchestrator, load_pool  # noqa: E402
from orchestrator.config import RunConfig  # noqa: E402
from orchestrator.types import GenerationRequest, Message, Sampling  # noqa: E402
from tests.openai_standin import spawn  # noqa: E402

TARGET_RATIO = 3.5


def requests(experts: list[str], questions: int) -> list[GenerationRequest]:
    return [GenerationRequest(expert=e, messages=(Message("user", f"question {q}"),),
                              query_id=f"q{q}", index=i, sampling=Sampling(max_tokens=32))
            for i, (q, e) in enumerate((q, e) for q in range(questions) for e in experts)]


def orchestrator(experts: list[dict], folder: Path, batch_size: int) -> Orchestrator:
    path = folder / f"pool-{len(list(folder.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump({"name": "bench", "experts": experts}, sort_keys=False))
    return Orchestrator(load_pool(path), RunConfig(batch_size=batch_size))


def run(orch: Orchestrator, batch: list[GenerationRequest]) -> dict:
    t0 = time.perf_counter()
    results, stats = orch.executor.execute(batch)
    wall = time.perf_counter() - t0
    return {"wall_s": round(wall, 3), "ok": sum(r.ok for r in results), "results": results,
            "placements": sorted(stats.placements), "failovers": stats.failovers_total}


def placements(args, folder: Path) -> dict:
    servers = [spawn(f"m{i}", "--batch-latency-s", str(args.batch_latency_s)) for i in range(4)]
    opts = {"concurrency": args.batch_size, "max_retries": 0}
    try:
        out = {}
        for name, pin in (("one_placement", "one"), ("four_placements", None)):
            experts = [{"id": f"e{i}", "backend": "openai_http", "model": f"m{i}",
                        "options": {"base_url": url, **opts},
                        **({"placement": pin} if pin else {})}
                       for i, (_, url) in enumerate(servers)]
            with orchestrator(experts, folder, args.batch_size) as orch:
                run(orch, requests([e["id"] for e in experts], 1))  # warm-up: imports, connects
                out[name] = run(orch, requests([e["id"] for e in experts], args.questions))
        texts = [[r.text for r in out[k].pop("results")] for k in list(out)]
        ratio = out["one_placement"]["wall_s"] / out["four_placements"]["wall_s"]
        return {**out, "identical_answers": texts[0] == texts[1], "ratio": round(ratio, 2),
                "target": TARGET_RATIO, "pass": ratio >= TARGET_RATIO and texts[0] == texts[1]}
    finally:
        for proc, _ in servers:
            proc.kill()
            proc.wait(5)


def failover(args, folder: Path) -> dict:
    replicas = [spawn("m", "--batch-latency-s", str(args.batch_latency_s / 3)) for _ in range(2)]
    try:
        experts = [{"id": "r", "backend": "openai_http", "model": "m", "options": {
            "base_url": [url for _, url in replicas], "concurrency": 4, "max_retries": 2,
            "backoff_s": 0.05}}]
        with orchestrator(experts, folder, args.batch_size) as orch:
            victim = replicas[0][0]
            timer = threading.Timer(args.kill_after_s, os.kill, (victim.pid, signal.SIGKILL))
            timer.start()
            batch = requests(["r"], args.questions * 4)
            out = run(orch, batch)
            timer.join()
        results = out.pop("results")
        lost = len(batch) - len(results) + sum(r.request != b for r, b in zip(results, batch))
        return {**out, "requests": len(batch), "lost": lost, "killed": victim.poll() is not None,
                "pass": out["ok"] == len(batch) and lost == 0 and out["failovers"] > 0}
    finally:
        for proc, _ in replicas:
            proc.kill()
            proc.wait(5)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--questions", type=int, default=32)
    p.add_argument("--batch-latency-s", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--kill-after-s", type=float, default=0.5)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = {"placements": placements(args, Path(tmp)), "failover": failover(args, Path(tmp))}
    print(json.dumps(report, indent=2))
    sys.exit(0 if report["placements"]["pass"] and report["failover"]["pass"] else 1)


if __name__ == "__main__":
    main()
