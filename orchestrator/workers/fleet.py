"""`orchestrate pools up`: serve a pool's vLLM experts as `vllm serve` processes, one per
(placement, engine), and write the equivalent `openai_http` manifest; `pools down` stops them.

Experts whose base model, dtype, engine options and placement agree share one server: the base
under `--served-model-name`, each LoRA expert as `--lora-modules ID=FOLDER` (vLLM serves a LoRA
adapter under its own model name). Servers go onto the GPUs given (`--gpus`): an expert's own
`placement` first, then the rest one per least-used GPU; each process sees only its GPUs
(CUDA_VISIBLE_DEVICES), so vLLM numbers them from 0. Servers sharing a GPU split the memory
share the manifest gives (`gpu_memory_utilization`, vLLM's default 0.9), unless all of them
have `enable_sleep_mode`: then they take turns, as the in-process vllm backend's engines do.
They start one after another, each put to sleep (`POST /sleep`, VLLM_SERVER_DEV_MODE=1) once
healthy, and their experts get `placement: gpu:N` (one executor worker for the GPU) and
`sleep_level` (the openai_http backend wakes a server when its expert loads and sleeps the
idle ones of that GPU first: backends/server_sleep.py). Flags follow vLLM's `vllm serve`
(vllm/entrypoints/openai/cli_args.py, vllm/engine/arg_utils.py). Other experts (openai_http,
transformers, fake, ...) are copied into the new manifest unchanged.

The running servers are recorded in `MANIFEST.state.json` (pids, ports, logs) for `pools down`.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from ..config import PoolConfig
from ..errors import UserError
from ..outputs import atomic_write_text
from ..procs import pid_alive
from .fleet_plan import (  # noqa: F401  (parse_gpus, plan_servers, visible_devices: the API)
    ServerPlan,
    memory_shares,
    parse_gpus,
    plan_servers,
    visible_devices,
)

DEFAULT_COMMAND = "vllm serve {model} {args}"


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


@dataclass
class Running:
    name: str
    pid: int
    url: str  # base URL with /v1
    gpus: list[int]
    log: str
    command: list[str]


def _tail(path: str, lines: int = 5) -> str:
    try:
        text = Path(path).read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def start(pool: PoolConfig, out: Path, gpus: list[int], command: str = DEFAULT_COMMAND,
          host: str = "127.0.0.1", base_port: int = 8100, timeout_s: float = 900.0,
          log=lambda message: None) -> list[Running]:
    """Start the servers, wait until every one answers /health, write `out` (the openai_http
    manifest) and its state file. On any failure the started servers are stopped again."""
    servers = plan_servers(pool, gpus)
    state_path = state_file(out)
    if state_path.exists():
        raise UserError(f"Servers for '{out}' are already recorded in '{state_path}'; run "
                        f"`orchestrate pools down {out}` first.")
    logs = out.parent / f"{out.stem}.logs"
    logs.mkdir(parents=True, exist_ok=True)
    share = memory_shares(servers)
    running: list[Running] = []
    try:
        for wave in range(max(s.wave for s in servers) + 1):
            started = []
            for i, s in enumerate(servers):
                if s.wave == wave:
                    started.append(_launch(s, i, share, logs, command, host, base_port, log))
                    running.append(started[-1])
            _wait(started, timeout_s)
            for s, r in zip([s for s in servers if s.wave == wave], started):
                if s.switching and any(o.wave > wave for o in servers if o.gpus == s.gpus):
                    _post(r.url.removesuffix("/v1") + f"/sleep?level={_level(s)}", r)
                    log(f"{s.name} is asleep (level {_level(s)}) until one of its experts loads")
        atomic_write_text(state_path, json.dumps({"manifest": str(out), "servers": [
            asdict(r) for r in running]}, indent=2))
        atomic_write_text(out, yaml.safe_dump(served_manifest(pool, servers, running),
                                          sort_keys=False))
    except BaseException:
        stop(running)
        raise
    return running


def _level(s: ServerPlan) -> int:
    return int(s.options.get("sleep_level") or 1)


def _post(url: str, r: Running) -> None:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=300):
            pass
    except OSError as err:
        raise UserError(f"POST {url} failed for server {r.name} ({err}); see {r.log}") from None


def _launch(s: ServerPlan, i: int, share: dict[int, int], logs: Path, command: str, host: str,
            base_port: int, log) -> Running:
    """Start one server process (its own session, output in its log file)."""
    s.port = base_port + i if base_port else _free_port(host)
    flags = s.flags(host, max((share[g] for g in s.gpus), default=1))
    try:
        cmd = shlex.split(command.format(model=shlex.quote(s.model),
                                         args=shlex.join(flags), python=sys.executable,
                                         host=host, port=s.port, name=s.name))
    except (KeyError, IndexError, ValueError) as err:
        raise UserError(f"--command '{command}' is not a valid template ({err}); use "
                        "the fields {model} {args} {python} {host} {port} {name}") from None
    env = dict(os.environ)
    if s.gpus:
        env["CUDA_VISIBLE_DEVICES"] = visible_devices(s.gpus, os.environ.get("CUDA_VISIBLE_DEVICES"))
    if s.sleepy:
        env["VLLM_SERVER_DEV_MODE"] = "1"  # exposes /sleep and /wake_up
    log_path = logs / f"{s.name}.log"
    with open(log_path, "wb") as sink:
        try:
            proc = subprocess.Popen(cmd, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as err:
            raise UserError(f"could not start '{cmd[0]}' for server {s.name}: {err}. "
                            "Install vLLM or pass --command.") from None
    url_host = socket.gethostname() if host in ("0.0.0.0", "::") else host
    log(f"started {s.name} (pid {proc.pid}) for {', '.join(s.experts)} on "
        f"{'GPU ' + ','.join(map(str, s.gpus)) if s.gpus else 'the default device'}, "
        f"port {s.port}")
    return Running(s.name, proc.pid, f"http://{url_host}:{s.port}/v1", s.gpus,
                   str(log_path), cmd)


def _wait(running: list[Running], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    waiting = list(running)
    while waiting:
        for r in list(waiting):
            if _healthy(r.url.removesuffix("/v1")):
                waiting.remove(r)
            elif not _alive(r.pid):
                raise UserError(f"server {r.name} exited before it was healthy; last lines of "
                                f"{r.log}: {_tail(r.log) or '(empty)'}")
        if waiting and time.monotonic() > deadline:
            raise UserError(f"server(s) {', '.join(r.name for r in waiting)} not healthy after "
                            f"{timeout_s:g}s (GET /health); see {waiting[0].log}")
        if waiting:
            time.sleep(0.2)


def served_manifest(pool: PoolConfig, servers: list[ServerPlan],
                    running: list[Running]) -> dict[str, Any]:
    url_of = {s.name: r.url for s, r in zip(servers, running)}
    server_of = {e: s for s in servers for e in s.experts}
    lora_ids = {n for s in servers for n, _ in s.loras}
    experts = []
    for e in pool.experts:
        data = e.model_dump(exclude_defaults=True)
        s = server_of.get(e.id)
        if s is not None:
            for key in ("adapter", "lora_moe", "dtype", "placement"):
                data.pop(key, None)
            data["backend"] = "openai_http"
            data["options"] = {"base_url": url_of[s.name],
                               "remote_model": e.id if e.id in lora_ids else s.served_name}
            if s.switching:
                data["placement"] = s.placement
                data["options"]["sleep_level"] = _level(s)
        experts.append(data)
    return {"name": f"{pool.name}-served",
            "description": f"{pool.name} served by `orchestrate pools up` ({len(servers)} vLLM "
                           "servers); stop them with `orchestrate pools down`.",
            "resident_limit": pool.resident_limit,
            **({"aggregator": pool.aggregator} if pool.aggregator else {}),
            "experts": experts}


def state_file(manifest: Path) -> Path:
    return manifest.with_name(manifest.name + ".state.json")


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)  # reaps our own child once it exited
        if waited == pid:
            return False
    except ChildProcessError:
        pass  # not our child (started by another `pools up`): ask the kernel
    return pid_alive(pid)


def stop(running: list[Running], grace_s: float = 30.0) -> list[str]:
    """SIGTERM each server's process group (vLLM's workers with it), SIGKILL after `grace_s`;
    returns the names that were still running."""
    stopped = []
    for r in running:
        if _alive(r.pid):
            stopped.append(r.name)
            try:
                os.killpg(r.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
    deadline = time.monotonic() + grace_s
    for r in running:
        while _alive(r.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(r.pid):
            try:
                os.killpg(r.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    return stopped


def down(manifest: Path, grace_s: float = 30.0) -> list[str]:
    """Stop the servers recorded for `manifest` and forget them."""
    path = state_file(manifest)
    if not path.is_file():
        raise UserError(f"No servers are recorded for '{manifest}' (no '{path}'). Give the "
                        "manifest that `orchestrate pools up --out` wrote.")
    try:
        state = json.loads(path.read_text())
        running = [Running(**r) for r in state["servers"]]
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"'{path}' is not a state file written by `pools up` ({err}).") from None
    stopped = stop(running, grace_s)
    path.unlink()
    return stopped
