"""The plan of `orchestrate pools up` (workers/fleet.py runs it): which `vllm serve` processes a
pool needs (experts sharing a base model, dtype, engine options and placement share one
server, LoRA experts as `--lora-modules`), on which GPUs, with which memory share or sleep
turns, and the command-line flags of each (vllm/entrypoints/openai/cli_args.py,
vllm/engine/arg_utils.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..config import PoolConfig
from ..errors import ConfigError, UserError

VLLM_DEFAULT_MEMORY = 0.9  # vllm/config/cache.py gpu_memory_utilization


@dataclass
class ServerPlan:
    name: str
    model: str  # what `vllm serve` loads: a local folder or a hub id
    served_name: str
    experts: list[str]
    loras: list[tuple[str, str]]  # (served name = expert id, adapter folder)
    options: dict[str, Any]
    dtype: str | None
    gpus: list[int] = field(default_factory=list)
    port: int = 0
    wave: int = 0  # start order on a GPU shared by sleeping servers (0: at once)
    switching: bool = False  # takes turns with other servers on its GPUs (sleep mode)

    @property
    def sleepy(self) -> bool:
        return bool(self.options.get("enable_sleep_mode"))

    @property
    def placement(self) -> str:
        return "gpu:" + ",".join(map(str, self.gpus))

    def flags(self, host: str, share: int) -> list[str]:
        """`vllm serve` flags; `share`: servers on this server's busiest GPU."""
        o = self.options
        out = ["--host", host, "--port", str(self.port), "--served-model-name", self.served_name]
        if self.dtype and self.dtype != "auto":
            out += ["--dtype", self.dtype]
        if o.get("max_model_len"):
            out += ["--max-model-len", str(o["max_model_len"])]
        memory = o.get("gpu_memory_utilization") or VLLM_DEFAULT_MEMORY
        if share > 1 or o.get("gpu_memory_utilization"):
            out += ["--gpu-memory-utilization", f"{memory / share:.3f}"]
        tp = max(int(o.get("tensor_parallel_size") or 1), len(self.gpus) or 1)
        if tp > 1:
            out += ["--tensor-parallel-size", str(tp)]
        if o.get("enforce_eager"):
            out.append("--enforce-eager")
        if o.get("trust_remote_code"):
            out.append("--trust-remote-code")
        if self.loras or o.get("enable_lora"):
            out += ["--enable-lora", "--max-loras", str(o.get("max_loras", 4)),
                    "--max-lora-rank", str(o.get("max_lora_rank", 16))]
            if self.loras:
                out += ["--lora-modules", *(f"{n}={p}" for n, p in self.loras)]
        if o.get("enable_sleep_mode"):
            out.append("--enable-sleep-mode")
        return out


def parse_gpus(text: str | None) -> list[int]:
    """'0-3,6' -> [0, 1, 2, 3, 6]."""
    if not text:
        return []
    gpus: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            gpus += list(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise UserError(f"--gpus '{text}' is not a list of GPU indices; write e.g. 0-7 or "
                        "0,1,4") from None
    if len(set(gpus)) != len(gpus) or min(gpus) < 0:
        raise UserError(f"--gpus '{text}' must name distinct GPU indices >= 0")
    return gpus


def plan_servers(pool: PoolConfig, gpus: list[int]) -> list[ServerPlan]:
    """One server per engine (base model + options + placement) of the pool's vllm experts."""
    from ..backends.folders import find_folder
    from ..backends.vllm_backend import VLLMBackend
    from ..modelref import resolve

    backend = VLLMBackend()
    plans: dict[str, ServerPlan] = {}
    for e in pool.experts:
        if e.backend != "vllm":
            continue
        opts = backend.options(e.to_spec()).model_dump()
        ref = resolve(e.model, pool.base_dir)
        model = ref.path if ref.kind != "hub" else ref.reference
        placement = [e.placement] if isinstance(e.placement, int) else e.placement
        if isinstance(placement, str):
            raise ConfigError(f"Expert '{e.id}': placement '{placement}' names a server, but a "
                              "vllm expert is placed on GPUs: give an index or a list")
        engine = {k: v for k, v in opts.items() if k not in ("enable_lora", "max_loras")}
        key = json.dumps([model, e.dtype, engine, placement], sort_keys=True, default=str)
        plan = plans.get(key)
        if plan is None:
            plan = plans[key] = ServerPlan(f"s{len(plans)}", model, e.id if not e.adapter
                                           else f"{e.id}-base", [], [], opts, e.dtype,
                                           list(placement or []))
        plan.experts.append(e.id)
        if e.adapter:
            folder = find_folder(e.id, "adapter", e.adapter, "adapter_config.json",
                                 pool.base_dir, "PEFT adapter", "Give the folder written by "
                                 "save_pretrained, relative to the pool manifest or absolute.")
            plan.loras.append((e.id, str(folder)))
            plan.options["enable_lora"] = True
    if not plans:
        raise ConfigError(f"Pool '{pool.name}' has no vllm expert; `pools up` starts vLLM "
                          "servers for vllm experts only.")
    servers = list(plans.values())
    _place(servers, gpus)
    _turns(servers)
    return servers


def _turns(servers: list[ServerPlan]) -> None:
    """Servers on the same GPUs that all have sleep mode take turns (see the module doc)."""
    groups: dict[tuple[int, ...], list[ServerPlan]] = {}
    for s in servers:
        if s.gpus:
            groups.setdefault(tuple(s.gpus), []).append(s)
    for group in groups.values():
        if len(group) > 1 and all(s.sleepy for s in group):
            for wave, s in enumerate(group):
                s.wave, s.switching = wave, True


def memory_shares(servers: list[ServerPlan]) -> dict[int, int]:
    """GPU -> engines holding memory there at once (servers taking turns count once)."""
    users: dict[int, set] = {}
    for s in servers:
        for g in s.gpus:
            users.setdefault(g, set()).add(s.placement if s.switching else s.name)
    return {g: len(u) for g, u in users.items()}


def _place(servers: list[ServerPlan], gpus: list[int]) -> None:
    used = {g: 0 for g in gpus}
    for s in servers:
        for g in s.gpus:
            if gpus and g not in used:
                raise ConfigError(f"Expert '{s.experts[0]}' is placed on GPU {g}, which --gpus "
                                  f"({','.join(map(str, gpus))}) does not include")
            used[g] = used.get(g, 0) + 1
    for s in servers:
        if s.gpus or not gpus:
            continue
        tp = int(s.options.get("tensor_parallel_size") or 1)
        if tp > 1:
            raise ConfigError(f"Expert '{s.experts[0]}' has tensor_parallel_size {tp}: name its "
                              f"{tp} GPUs with placement: [..] so that no two engines overlap")
        g = min(used, key=used.__getitem__)
        s.gpus = [g]
        used[g] += 1


def visible_devices(gpus: list[int], parent: str | None) -> str:
    """CUDA_VISIBLE_DEVICES for a server on `gpus`, indices among the GPUs this process sees
    (under CUDA_VISIBLE_DEVICES=4,5,6,7, GPU 0 is physical GPU 4), as the vllm backend counts."""
    if not parent or not parent.strip():
        return ",".join(map(str, gpus))
    seen = [d.strip() for d in parent.split(",") if d.strip()]
    if max(gpus) >= len(seen):
        raise UserError(f"GPU {max(gpus)} is not among the {len(seen)} GPUs this process sees "
                        f"(CUDA_VISIBLE_DEVICES={parent}); placements and --gpus count from 0 "
                        "among those")
    return ",".join(seen[g] for g in gpus)
