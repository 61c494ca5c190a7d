"""A stand-in OpenAI-compatible server on loopback (stdlib only): for replica, placement and
`pools up` tests and benchmarks/placements.py, where vLLM cannot run.

It answers `POST /v1/chat/completions` like a continuously batching engine: requests that wait
together form one batch, and every batch takes `--batch-latency-s` whatever its size. It also
answers `GET /v1/models` (the served model and LoRA names), `GET /health`, vLLM's sleep-mode
routes (`POST /sleep?level=N`, `POST /wake_up`, `GET /is_sleeping`; a sleeping server answers
chat requests with 503), and `GET /standin` (its argv, CUDA_VISIBLE_DEVICES and counters). `--hang`: accept
connections and never answer (a hung upstream). It takes `vllm serve`'s command line: the
model first, then `--host --port --served-model-name --lora-modules name=path ...`; other vLLM
flags are accepted and only recorded.

    python tests/openai_standin.py MODEL --port 8001 [--batch-latency-s 0.1] [--hang]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Engine:
    """One batch at a time: everything waiting when a batch starts is in it."""

    def __init__(self, batch_latency_s: float):
        self.latency = batch_latency_s
        self.cond = threading.Condition()
        self.waiting: list[dict[str, Any]] = []
        self.batches = 0
        self.requests = 0
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while True:
            with self.cond:
                while not self.waiting:
                    self.cond.wait()
                batch, self.waiting = self.waiting, []
            time.sleep(self.latency)
            with self.cond:
                self.batches += 1
                self.requests += len(batch)
                for slot in batch:
                    slot["done"] = True
                self.cond.notify_all()

    def run(self) -> None:
        slot: dict[str, Any] = {"done": False}
        with self.cond:
            self.waiting.append(slot)
            self.cond.notify_all()
            while not slot["done"]:
                self.cond.wait()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # as uvicorn: no 40 ms delayed-ACK stalls per request
    server: StandIn

    def _send(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (stdlib name)
        s = self.server
        s.log.append(("GET", self.path))
        if s.hang:
            s.stop.wait()
            return
        if self.path == "/health":
            self._send(200, {})
        elif self.path == "/v1/models":
            self._send(200, {"object": "list", "data": [
                {"id": name, "object": "model", "owned_by": "standin"} for name in s.names]})
        elif self.path == "/is_sleeping":
            self._send(200, {"is_sleeping": s.sleeping is not None})
        elif self.path == "/standin":
            self._send(200, {"argv": s.argv, "cuda_visible_devices":
                             os.environ.get("CUDA_VISIBLE_DEVICES"), "port": s.port,
                             "batches": s.engine.batches, "requests": s.engine.requests,
                             "sleeping": s.sleeping, "dev_mode": os.environ.get(
                                 "VLLM_SERVER_DEV_MODE")})
        else:
            self._send(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:  # noqa: N802
        s = self.server
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        s.log.append(("POST", self.path))
        if s.hang:
            s.stop.wait()
            return
        if self.path.startswith("/sleep"):
            s.sleeping = int(self.path.partition("level=")[2] or 1)
            self._send(200, {})
            return
        if self.path == "/wake_up":
            s.sleeping = None
            self._send(200, {})
            return
        if s.sleeping is not None:
            self._send(503, {"error": {"message": "the engine is sleeping"}})
            return
        if s.fail_status is not None:
            self._send(s.fail_status, {"error": {"message": f"standin fails with {s.fail_status}"}})
            return
        if self.path != "/v1/chat/completions":
            self._send(404, {"error": {"message": f"no route {self.path}"}})
            return
        if body.get("model") not in s.names:
            self._send(404, {"error": {"message": f"The model `{body.get('model')}` does not "
                                                  "exist.", "type": "NotFoundError"}})
            return
        s.engine.run()
        text = f"{body['model']}@{s.port}: {body['messages'][-1]['content']}"
        self._send(200, {
            "id": "chatcmpl-standin", "object": "chat.completion", "created": 0,
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        })

    def log_message(self, *args: Any) -> None:
        pass


class StandIn(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 256  # listen backlog (socketserver's 5 drops concurrent connects)

    def __init__(self, model: str, host: str = "127.0.0.1", port: int = 0,
                 batch_latency_s: float = 0.0, hang: bool = False,
                 served_names: list[str] | None = None, loras: list[str] | None = None,
                 argv: list[str] | None = None):
        super().__init__((host, port), Handler)
        self.port = self.server_address[1]
        self.url = f"http://{host}:{self.port}/v1"
        self.names = (served_names or [model]) + [m.split("=", 1)[0] for m in loras or []]
        self.engine = Engine(batch_latency_s)
        self.hang = hang
        self.stop = threading.Event()
        self.argv = argv or []
        self.fail_status: int | None = None  # set: every chat request gets this status
        self.sleeping: int | None = None  # the sleep level, None when awake
        self.log: list[tuple[str, str]] = []  # (method, path) of every request
        self._thread: threading.Thread | None = None

    def handle_error(self, request, client_address) -> None:
        pass  # clients that gave up (timeouts, failovers) are expected

    def start(self) -> StandIn:
        """Serve in a daemon thread (in-process use)."""
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self.stop.set()
        self.shutdown()
        self.server_close()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, timeout_s: float = 10.0) -> bool:
    """Poll GET {url}/health (url without /v1) until it answers 200."""
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=0.5) as resp:
                if resp.status == 200:
                    return True
        except OSError:
            time.sleep(0.05)
    return False


def spawn(model: str = "m", *flags: str):
    """This script as a subprocess on a free loopback port: (Popen, base URL with /v1)."""
    import subprocess

    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, model, "--port", str(port), *flags],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not wait_healthy(f"http://127.0.0.1:{port}"):
        proc.kill()
        raise RuntimeError(f"the stand-in server on port {port} did not start")
    return proc, f"http://127.0.0.1:{port}/v1"


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served-model-name", nargs="+", default=None)
    p.add_argument("--lora-modules", nargs="+", default=[])
    p.add_argument("--batch-latency-s", type=float, default=0.0)
    p.add_argument("--hang", action="store_true")
    args, _ = p.parse_known_args(argv)  # other vLLM flags: recorded in argv only
    server = StandIn(args.model, args.host, args.port, args.batch_latency_s, args.hang,
                     args.served_model_name, args.lora_modules, argv)
    print(f"standin serving {server.names} on {server.url}", flush=True)
    server.serve_forever(0.05)


if __name__ == "__main__":
    main(sys.argv[1:])
