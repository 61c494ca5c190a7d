"""What the generation store costs: the 2,090-question x 3-expert replay run (the 13-model
replay pool, fixed router, k=3, vote) with the store off, on (each finished batch committed
before the next starts) and on with grouped commits, in one process, interleaved, medians of
`--repeats` runs. Each "on" run starts from a store that knows the recordings' file hashes (as
any store does after its first run) but holds no generation, so all 6,270 rows are written.
"grouped" commits the batches that finish within 50 ms of the last commit together
(`StoredExecutor(group_s=0.05)`): a replay pool finishes hundreds of batches a second, a real
model's batch always commits alone. Also: a run answered entirely from the store, and the
one-time cost of hashing the recordings for a new store.

Overhead is given against the in-process pipeline (route, execute, aggregate: `evaluate`) and
against that plus writing results.jsonl and summary.json. Target: <= 3% of wall time.

    .venv/bin/python benchmarks/store_overhead.py [--repeats 5] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator import Orchestrator  # noqa: E402
from orchestrator.benchmarks.readers import read_benchmark  # noqa: E402
from orchestrator.outputs import write_run  # noqa: E402
from orchestrator.store import GenerationStore, StoredExecutor  # noqa: E402

TEST_DATA = ROOT.parent / "shared" / "data" / "replay" / "mmlu_pro_replay_test.jsonl"
POOL = ROOT / "pools" / "replay-mmlu-pro-small.yaml"
TARGET = 0.03


class TimedStore(GenerationStore):
    """Counts the seconds spent committing rows."""

    put_s = 0.0
    rows = 0

    def put(self, rows, errors=(), experts=None):
        start = time.perf_counter()
        super().put(rows, errors, experts)
        self.put_s += time.perf_counter() - start
        self.rows += len(rows)


def timed_run(orch, queries, out: Path) -> tuple[float, float, float, object]:
    """(evaluate wall s, evaluate + write_run wall s, evaluate CPU s of this process, result)."""
    start, cpu = time.perf_counter(), time.process_time()
    result = orch.evaluate(queries)
    mid, cpu = time.perf_counter(), time.process_time() - cpu
    write_run(out, result)
    return mid - start, time.perf_counter() - start, cpu, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    queries = read_benchmark(TEST_DATA)
    work = Path(tempfile.mkdtemp(prefix="store-overhead-"))
    try:
        with Orchestrator.from_files(POOL, router="fixed", k=3, aggregator="vote",
                                     batch_size=args.batch_size) as orch:
            plain = orch.executor
            orch.evaluate(queries)  # parse the recordings once, as every mode then finds them

            seed = work / "seed.sqlite"
            start = time.perf_counter()
            with GenerationStore(seed) as store:
                keys = StoredExecutor(plain, store).keys
                for expert in orch.specs:
                    keys.expert(expert)  # hashes the two recordings files (28 MB) once
            hashing_s = time.perf_counter() - start

            times: dict[str, list[tuple[float, float, float]]] = {
                "off": [], "on": [], "grouped": []}
            put_s = rows = 0.0
            for i in range(args.repeats):
                for mode in times:
                    if mode == "off":
                        orch.executor = plain
                        e, w, c, result = timed_run(orch, queries, work / "out")
                    else:
                        path = work / f"{mode}-{i}.sqlite"
                        shutil.copy(seed, path)
                        with TimedStore(path) as store:
                            orch.executor = StoredExecutor(
                                plain, store, group_s=0.05 if mode == "grouped" else 0.0)
                            e, w, c, result = timed_run(orch, queries, work / "out")
                            assert result.stats.from_store == 0
                            if mode == "on":
                                put_s, rows = put_s + store.put_s, rows + store.rows
                    times[mode].append((e, w, c))
            with GenerationStore(work / f"on-{args.repeats - 1}.sqlite") as store:
                orch.executor = StoredExecutor(plain, store)
                warm = [timed_run(orch, queries, work / "out") for _ in range(args.repeats)]
            answered = warm[-1][3].stats.from_store
            size_mb = store.size_bytes() / 1e6
    finally:
        shutil.rmtree(work, ignore_errors=True)

    med = {m: tuple(statistics.median(x[i] for x in v) for i in range(3))
           for m, v in times.items()}
    off_e, off_w, off_c = med["off"]
    n = len(queries) * 3
    print(f"replay run: {len(queries):,} questions x 3 experts = {n:,} generations, "
          f"batch size {args.batch_size}, medians of {args.repeats} interleaved runs")
    print(f"{'mode':<14}{'evaluate s':>11}{'overhead':>10}{'+ results s':>13}{'overhead':>10}"
          f"{'CPU s':>8}{'overhead':>10}")
    for mode, (e, w, c) in med.items():
        print(f"{mode:<14}{e:>11.3f}{(e - off_e) / off_e:>10.1%}{w:>13.3f}"
              f"{(w - off_w) / off_w:>10.1%}{c:>8.3f}{(c - off_c) / off_c:>10.1%}")
    warm_e = statistics.median(x[0] for x in warm)
    print(f"{'all stored':<14}{warm_e:>11.3f}{(warm_e - off_e) / off_e:>10.1%}   "
          f"({answered:,} of {n:,} answered by the store)")
    print(f"CPU s: this process's CPU time during evaluate (less disturbed by other load; "
          f"load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    print(f"rows written: {rows / max(put_s, 1e-9):,.0f} rows/s inside the commits "
          f"({rows / args.repeats:,.0f} rows, {put_s / args.repeats * 1000:.0f} ms per run in "
          f"{n // args.batch_size + 3} commits); {n / (med['on'][0]):,.0f} generations/s end to end")
    print(f"store after one run: {size_mb:.2f} MB; a new store hashes the recordings once: "
          f"{hashing_s:.2f} s")
    best = min((med["on"][0] - off_e) / off_e, (med["grouped"][0] - off_e) / off_e)
    print(f"target: overhead <= {TARGET:.0%} of wall time -> "
          f"{'met' if best <= TARGET else 'NOT met'} (best mode {best:.1%} of evaluate)")


if __name__ == "__main__":
    main()
