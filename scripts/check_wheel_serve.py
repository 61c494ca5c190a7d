"""Part of scripts/check_wheel.sh: `orchestrate serve --dry-run` on a free loopback port answers
/health, /v1/models and one chat completion, then stops on SIGTERM. Standard library only (it
runs in the wheel's fresh venv). Usage: python check_wheel_serve.py ORCHESTRATE POOL"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request


def wait_healthy(server: subprocess.Popen, base: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if server.poll() is not None:
            sys.exit(f"the server exited ({server.returncode}) before answering /health")
        if time.monotonic() > deadline:
            sys.exit(f"no /health 200 within {timeout_s:g} s")
        time.sleep(0.2)


def main(orchestrate: str, pool: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    with open("serve.log", "wb") as log:
        server = subprocess.Popen([orchestrate, "serve", "--pool", pool, "--dry-run",
                                   "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_healthy(server, base)
        with urllib.request.urlopen(base + "/v1/models", timeout=10) as resp:
            models = [m["id"] for m in json.load(resp)["data"]]
        assert models, "no models listed"
        body = json.dumps({"model": models[0], "messages": [{"role": "user", "content": "2+3?"}]})
        request = urllib.request.Request(base + "/v1/chat/completions", body.encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as resp:
            answer = json.load(resp)
        assert answer["choices"][0]["message"]["content"], answer
        server.send_signal(signal.SIGTERM)
        rc = server.wait(timeout=30)
        # uvicorn re-raises the SIGTERM it handled once shut down: -15 is a clean exit too
        assert rc in (0, -signal.SIGTERM), f"serve exited {rc} after SIGTERM"
        print(f"served models: {', '.join(models)}")
    except BaseException:
        with open("serve.log", encoding="utf-8", errors="replace") as log:
            print(log.read(), file=sys.stderr)
        raise
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


if __name__ == "__main__":
    main(*sys.argv[1:3])
