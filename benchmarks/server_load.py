"""Load test of `orchestrate serve` on a fake pool: latency, coalescing, admission control, memory.

The server is a subprocess (client and server do not share a GIL) on a loopback port: this file
re-run with `--serve-child`, which runs `orchestrate serve` with the `fake` backend replaced by
one that skips `FakeBackend.history` (the fake's test log of every request, ~1 KiB per chat
request at k=2, would read as a leak); `--stock-fake` runs `.venv/bin/orchestrate serve` itself.
The pool (temporary) has 3 fake experts that each sleep `--batch-latency-ms` once per generate
call, whatever the batch size (the fake's `batch_s`); the preset has the fixed router, `--k`
experts per request and executor batches of `--max-batch`, so each server batch makes exactly k
generate calls and costs the backend k x batch latency: the backend's own time of every request
in the batch, measured from /metrics as generate seconds / batches.

Closed-loop httpx async clients (each sends its next request when the last one is answered, at
most `--requests-per-client` each and none started after `--duration-s`) run at each count in
`--clients` against one server, then `--overload-clients` against a second server started with
`--overload-max-queue` (these retry at once on 503, the worst case for the server). Per scenario:
requests, errors by status, throughput, p50/p99/max latency, p50 latency added over the backend's
own time (client side) and mean added time inside the server (its /metrics latency histogram),
generate calls per request and chosen expert (1.00 = no coalescing), mean batch size, server and
client CPU, and the server's RSS (/proc/PID/status) before and after, sampled every 0.25 s.

Targets: at 64 clients 0 errors and p50 added latency <= 5 ms; above the queue limit every
non-200 is a 503 with Retry-After and no request hangs (all finish within `--client-timeout-s`);
RSS flat: at most +2 MiB over the second half of each scenario (new connections' buffers and
allocator arenas grow it once, in the first).

    .venv/bin/python benchmarks/server_load.py [--clients 1,8,64] [--requests-per-client 100]
        [--duration-s 10] [--batch-latency-ms 10] [--window-ms 20] [--max-batch 64] [--k 2]
        [--max-queue 256] [--overload-clients 128] [--overload-max-queue 16]
        [--client-timeout-s 10] [--stock-fake]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXPERTS = ("alpha", "beta", "gamma")
ADDED_P50_TARGET_MS = 5.0
TARGET_CLIENTS = 64
FLAT_MIB = 2.0  # RSS growth allowed over the second half of a scenario (warm-up is the first)
RSS_EVERY_S = 0.25
TICK = os.sysconf("SC_CLK_TCK")
CHILD_FLAG = "--serve-child"  # internal: run the server (see serve_child)
CALLS_ENV = "SERVER_LOAD_CALLS_FILE"  # where the child's fake backend counts generate calls
SAMPLE = re.compile(r"^([a-z_]+)(\{[^}]*\})? (\S+)$")


# -- the server ---------------------------------------------------------------------------------

def write_pool(folder: Path, args) -> tuple[Path, Path]:
    """A pool of fake experts sleeping batch_s per generate call, and a preset: fixed router
    (the first k experts for every request), executor batches as large as server batches."""
    pool = folder / "pool.yaml"
    pool.write_text(yaml.safe_dump({
        "name": "server-load", "resident_limit": len(EXPERTS),
        "experts": [{"id": e, "backend": "fake", "model": "fake",
                     "options": {"default": f"The answer is {40 + i}",
                                 "batch_s": args.batch_latency_ms / 1000}}
                    for i, e in enumerate(EXPERTS)],
    }, sort_keys=False))
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump({"router": "fixed", "k": args.k, "aggregator": "vote",
                                      "batch_size": args.max_batch}))
    return pool, config


def serve_child(argv: list[str]) -> None:
    """`orchestrate serve ARGV` in this process, its `fake` backend replaced by one that does not
    keep every request in `FakeBackend.history` (a test log, ~1 KiB per chat request at k=2,
    which would read as a server leak)."""
    sys.path.insert(0, str(ROOT))
    from orchestrator.backends.fake import FakeBackend
    from orchestrator.cli.main import main as cli
    from orchestrator.registry import BACKENDS

    class Unrecorded(list):
        def append(self, item) -> None:
            pass

    class LeanFake(FakeBackend):
        def __init__(self, context=None):
            super().__init__(context)
            self.history = Unrecorded()
            self.calls = 0
            self.calls_fd = os.open(os.environ[CALLS_ENV], os.O_WRONLY | os.O_CREAT, 0o600)

        def generate(self, requests):
            self.calls += 1  # generate calls so far, for the parent (Server.generate_calls)
            os.pwrite(self.calls_fd, f"{self.calls:>20}".encode(), 0)
            return super().generate(requests)

    BACKENDS.register("fake", LeanFake, replace=True)
    sys.argv = ["orchestrate", "serve", *argv]
    cli()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`orchestrate serve` in a subprocess; `url`, `rss_mib()`, `cpu_s()`, `metrics()`."""

    def __init__(self, pool: Path, config: Path, log: Path, *, window_ms: float, max_batch: int,
                 max_queue: int, stock_fake: bool):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log, self.calls_file = log, None if stock_fake else log.with_suffix(".calls")
        serve = [str(ROOT / ".venv" / "bin" / "orchestrate"), "serve"] if stock_fake else \
            [sys.executable, str(Path(__file__).resolve()), CHILD_FLAG]
        cmd = [*serve, "--pool", str(pool), "--config", str(config), "--port", str(self.port),
               "--window-ms", str(window_ms), "--max-batch", str(max_batch),
               "--max-queue", str(max_queue)]
        env = {k: v for k, v in os.environ.items() if k != "ORCHESTRATOR_API_KEY"}
        if self.calls_file:
            env[CALLS_ENV] = str(self.calls_file)
        with log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                         cwd=ROOT)

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.fail(f"the server did not become healthy within {timeout_s:g}s")

    def fail(self, why: str) -> None:
        self.stop()
        sys.exit(f"{why}; its log ends:\n{self.log.read_text(errors='replace')[-3000:]}")

    def rss_mib(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1)) / 1024

    def generate_calls(self) -> float:
        """Generate calls of the child's fake backend so far (NaN with --stock-fake)."""
        if self.calls_file is None:
            return math.nan
        text = self.calls_file.read_text().strip() if self.calls_file.exists() else ""
        return float(text or 0)

    def cpu_s(self) -> float:
        """User + system seconds of the server process, all threads (/proc/PID/stat 14-15)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK

    def metrics(self) -> dict[str, float]:
        """Samples of /metrics summed over labels, except the chat route's latency."""
        try:
            text = httpx.get(self.url + "/metrics", timeout=10).text
        except httpx.HTTPError as exc:
            self.fail(f"GET /metrics failed ({exc!r}; exit status {self.proc.poll()})")
        out: Counter[str] = Counter()
        for line in text.splitlines():
            m = SAMPLE.match(line)
            if not m:
                continue
            name, labels, value = m.groups()
            if name.startswith("orchestrator_http_request_duration_seconds"):
                if '"/v1/chat/completions"' not in (labels or "") or name.endswith("_bucket"):
                    continue
            out[name] += float(value)
        return dict(out)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- the clients --------------------------------------------------------------------------------

@dataclass
class Outcome:
    latencies_ok: list[float] = field(default_factory=list)  # seconds, 200s only
    latencies_all: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)  # "200", "503", "timeout", ...
    rejected_without_retry_after: int = 0
    retry_after: Counter[str] = field(default_factory=Counter)
    wall_s: float = 0.0
    client_cpu_s: float = 0.0
    rss: list[tuple[float, float]] = field(default_factory=list)  # (seconds in, MiB)


def body(client: int, n: int) -> dict:
    return {"model": "orchestrator", "max_tokens": 16,
            "messages": [{"role": "user", "content": f"Client {client}: what is {n} times 7?"}]}


async def one_client(http: httpx.AsyncClient, url: str, client: int, requests: int,
                     stop_at: float, timeout_s: float, out: Outcome) -> None:
    for n in range(requests):
        if time.monotonic() >= stop_at:
            return
        start = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s):  # in total; httpx's timeouts are per phase
                response = await http.post(url, json=body(client, n))
        except (TimeoutError, httpx.TimeoutException):
            out.statuses["timeout"] += 1  # a hang: no answer within the client timeout
            out.latencies_all.append(time.perf_counter() - start)
            continue
        except httpx.HTTPError as exc:
            out.statuses[type(exc).__name__] += 1
            continue
        seconds = time.perf_counter() - start
        out.latencies_all.append(seconds)
        out.statuses[str(response.status_code)] += 1
        if response.status_code == 200:
            out.latencies_ok.append(seconds)
        elif response.status_code == 503:
            if "retry-after" in response.headers:
                out.retry_after[response.headers["retry-after"]] += 1
            else:
                out.rejected_without_retry_after += 1


async def sample_rss(rss_mib: Callable[[], float], start: float, out: Outcome) -> None:
    while True:
        out.rss.append((time.perf_counter() - start, rss_mib()))
        await asyncio.sleep(RSS_EVERY_S)


async def drive(url: str, clients: int, requests: int, duration_s: float, timeout_s: float,
                rss_mib: Callable[[], float] | None = None) -> Outcome:
    """`clients` closed-loop clients, each with its own httpx client and keep-alive connection
    (one shared pool of many connections costs the client milliseconds of CPU per request)."""
    out = Outcome()
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with contextlib.AsyncExitStack() as stack:
        https = [await stack.enter_async_context(httpx.AsyncClient(limits=limits, timeout=timeout_s))
                 for _ in range(clients)]
        cpu, start = time.process_time(), time.perf_counter()
        stop_at = time.monotonic() + duration_s
        tasks = [asyncio.create_task(one_client(http, url + "/v1/chat/completions", c, requests,
                                                stop_at, timeout_s, out))
                 for c, http in enumerate(https)]
        sampler = asyncio.create_task(sample_rss(rss_mib, start, out)) if rss_mib else None
        done, late = await asyncio.wait(tasks, timeout=duration_s + timeout_s + 5)
        if sampler:
            sampler.cancel()
        for task in late:  # cannot happen while the client timeout holds; counted as hangs
            task.cancel()
        for task in done:
            task.result()  # a bug in this file, not a failed request: raise it
        out.wall_s = time.perf_counter() - start
        out.client_cpu_s = time.process_time() - cpu
    if late:
        out.statuses["stuck"] += len(late)
    return out


# -- a scenario ---------------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def run_scenario(server: Server, name: str, clients: int, args) -> dict:
    rss_before, cpu_before, m0 = server.rss_mib(), server.cpu_s(), server.metrics()
    calls_before = server.generate_calls()
    out = asyncio.run(drive(server.url, clients, args.requests_per_client, args.duration_s,
                            args.client_timeout_s, server.rss_mib))
    m1, cpu_after, calls_after = server.metrics(), server.cpu_s(), server.generate_calls()
    rss_after = server.rss_mib()
    rss_mid = next((mib for t, mib in out.rss if t >= out.wall_s / 2), rss_before)

    def delta(metric: str) -> float:
        return m1.get(metric, 0.0) - m0.get(metric, 0.0)

    batches = delta("orchestrator_batcher_batches_total")
    items = delta("orchestrator_batcher_items_processed_total")
    generate_s = delta("orchestrator_expert_generate_seconds_total")
    served = delta("orchestrator_http_request_duration_seconds_count")
    served_s = delta("orchestrator_http_request_duration_seconds_sum")
    backend_ms = 1000 * generate_s / batches if batches else math.nan  # per batch = per request
    calls = calls_after - calls_before
    if math.isnan(calls):  # --stock-fake: fixed router, executor batch >= server batch
        calls = batches * args.k
    ok = len(out.latencies_ok)
    p50 = 1000 * percentile(out.latencies_ok, 0.50)
    return {
        "name": name, "clients": clients, "requests": sum(out.statuses.values()), "ok": ok,
        "errors": {s: n for s, n in sorted(out.statuses.items()) if s != "200"},
        "rps": ok / out.wall_s, "p50": p50, "p99": 1000 * percentile(out.latencies_ok, 0.99),
        "max_all": 1000 * max(out.latencies_all, default=math.nan),
        "backend_ms": backend_ms, "added_p50": p50 - backend_ms,
        "server_added": (1000 * served_s / served - backend_ms  # the histogram mixes statuses
                         if served and ok == sum(out.statuses.values()) else math.nan),
        "calls_per_req_k": calls / items / args.k if items else math.nan,
        "ms_per_call": 1000 * generate_s / calls if calls else math.nan,
        "batch": items / batches if batches else math.nan,
        "server_cpu": (cpu_after - cpu_before) / out.wall_s,
        "client_cpu": out.client_cpu_s / out.wall_s,
        "rss": (rss_before, rss_mid, rss_after),
        "rss_peak": max([rss_after, *(mib for _, mib in out.rss)]),
        "retry_after": dict(out.retry_after),
        "no_retry_after": out.rejected_without_retry_after, "wall_s": out.wall_s,
    }


def warm_up(server: Server, args) -> None:
    """Loads the experts and the lazily imported modules before any RSS is read."""
    asyncio.run(drive(server.url, 4, 5, 5.0, args.client_timeout_s))


# -- report -------------------------------------------------------------------------------------

def flat(rss: tuple[float, float, float]) -> bool:
    """A leak grows with requests, so also over the second half; warm-up (buffers of new
    connections, allocator arenas) happens in the first."""
    _, mid, after = rss
    return after - mid <= FLAT_MIB


def num(value: float, width: int, digits: int = 1) -> str:
    return f"{'-':>{width}}" if math.isnan(value) else f"{value:>{width}.{digits}f}"


def print_table(rows: list[dict]) -> None:
    head = (f"{'scenario':<10} {'cli':>4} {'reqs':>6} {'errors':<10} {'req/s':>7} {'p50':>6} "
            f"{'p99':>6} {'max':>6} {'backend':>7} {'added':>6} {'in srv':>6} {'gen/rk':>6} "
            f"{'ms/call':>7} {'batch':>5} {'srv cpu':>7} {'cli cpu':>7} {'RSS MiB':>11}")
    print(head)
    print("-" * len(head))
    for r in rows:
        errors = " ".join(f"{s}:{n}" for s, n in r["errors"].items()) or "0"
        rss = f"{r['rss'][0]:.1f}->{r['rss'][2]:.1f}"
        print(f"{r['name']:<10} {r['clients']:>4} {r['requests']:>6} {errors:<10} {r['rps']:>7.1f} "
              f"{num(r['p50'], 6)} {num(r['p99'], 6)} {num(r['max_all'], 6)} "
              f"{num(r['backend_ms'], 7)} {num(r['added_p50'], 6)} {num(r['server_added'], 6)} "
              f"{num(r['calls_per_req_k'], 6, 2)} {num(r['ms_per_call'], 7)} {num(r['batch'], 5)} "
              f"{r['server_cpu']:>7.0%} {r['client_cpu']:>7.0%} {rss:>11}")
    print("ms; p50/p99 of 200s, max of all requests; backend: the fake experts' own time per batch "
          "(= per request, from /metrics);\nadded: p50 - backend (client side); in srv: mean "
          "server-side latency - backend (/metrics; all-200 rows only);\ngen/rk: generate calls "
          "per request and chosen expert (1.00 = no coalescing); ms/call: backend seconds per "
          "generate call;\nbatch: requests per server batch; cpu: share of one core over the "
          "scenario")


def verdicts(rows: list[dict], args) -> list[tuple[str, bool]]:
    checks: list[tuple[str, bool]] = []
    for r in rows:
        if r["name"] == "overload":
            others = {s: n for s, n in r["errors"].items() if s != "503"}
            checks += [
                (f"overload: only 503s besides 200s (got {r['errors'] or 'none'})",
                 not others and "503" in r["errors"]),
                (f"overload: every 503 has Retry-After ({r['no_retry_after']} without; values "
                 f"{r['retry_after'] or '-'})", r["no_retry_after"] == 0),
                (f"overload: no hangs (no timeouts, slowest request {r['max_all']:.0f} ms < "
                 f"{1000 * args.client_timeout_s:.0f} ms)",
                 not ({"timeout", "stuck"} & set(r["errors"]))
                 and r["max_all"] < 1000 * args.client_timeout_s),
            ]
        elif r["clients"] == TARGET_CLIENTS:
            checks += [
                (f"{TARGET_CLIENTS} clients: 0 errors (got {sum(r['errors'].values())})",
                 not r["errors"]),
                (f"{TARGET_CLIENTS} clients: p50 added latency {r['added_p50']:.1f} ms <= "
                 f"{ADDED_P50_TARGET_MS:g} ms", r["added_p50"] <= ADDED_P50_TARGET_MS),
            ]
        before, mid, after = r["rss"]
        checks.append((f"{r['name']}: RSS flat (before/mid/after/peak {before:.1f}/{mid:.1f}/"
                       f"{after:.1f}/{r['rss_peak']:.1f} MiB; second half +{after - mid:.1f} "
                       f"<= {FLAT_MIB:g} MiB)", flat(r["rss"])))
    return checks


# -- main ---------------------------------------------------------------------------------------

def main() -> None:
    if sys.argv[1:2] == [CHILD_FLAG]:
        serve_child(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1,8,64", help="concurrent clients per scenario")
    parser.add_argument("--requests-per-client", type=int, default=100)
    parser.add_argument("--duration-s", type=float, default=10.0, help="per scenario, at most")
    parser.add_argument("--batch-latency-ms", type=float, default=10.0,
                        help="the fake backend's time per generate call (any batch size)")
    parser.add_argument("--window-ms", type=float, default=20.0, help="server micro-batch window")
    parser.add_argument("--max-batch", type=int, default=64,
                        help="server requests per batch (serve's default is 32; 64 lets 64 "
                        "clients share one batch)")
    parser.add_argument("--max-queue", type=int, default=256, help="server queue (scenarios)")
    parser.add_argument("--k", type=int, default=2, choices=range(1, len(EXPERTS) + 1),
                        help="experts per request")
    parser.add_argument("--overload-clients", type=int, default=128, help="0: no overload run")
    parser.add_argument("--overload-max-queue", type=int, default=16)
    parser.add_argument("--client-timeout-s", type=float, default=10.0)
    parser.add_argument("--stock-fake", action="store_true",
                        help="run .venv/bin/orchestrate serve itself, whose fake backend keeps "
                        "every request (FakeBackend.history): RSS then grows ~1 KiB a request")
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",") if c.strip()]
    if max(clients) > args.max_queue:
        parser.error(f"--clients up to {max(clients)} exceed --max-queue {args.max_queue}; "
                     "the scenarios are meant to stay within the queue limit")
    if args.overload_clients and args.overload_clients <= args.overload_max_queue:
        parser.error("--overload-clients must exceed --overload-max-queue")

    print(f"fake pool of {len(EXPERTS)} experts, k={args.k}, {args.batch_latency_ms:g} ms per "
          f"generate call; server window {args.window_ms:g} ms, max batch {args.max_batch}; "
          f"<= {args.requests_per_client} requests per client and <= {args.duration_s:g} s per "
          f"scenario; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="server-load-") as tmp:
        pool, config = write_pool(Path(tmp), args)
        plan = [("main", args.max_queue, [(f"{c} client{'s' * (c != 1)}", c) for c in clients])]
        if args.overload_clients:
            plan.append(("overload", args.overload_max_queue,
                         [("overload", args.overload_clients)]))
        for label, max_queue, scenarios in plan:
            server = Server(pool, config, Path(tmp) / f"{label}.log", window_ms=args.window_ms,
                            max_batch=args.max_batch, max_queue=max_queue,
                            stock_fake=args.stock_fake)
            try:
                server.wait_ready()
                warm_up(server, args)
                for name, n in scenarios:
                    rows.append(run_scenario(server, name, n, args))
            finally:
                server.stop()
    print_table(rows)
    checks = verdicts(rows, args)
    for text, passed in checks:
        print(f"{'PASS' if passed else 'FAIL'}  {text}")
    sys.exit(0 if all(passed for _, passed in checks) else 1)


if __name__ == "__main__":
    main()
