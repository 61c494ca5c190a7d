"""Where each expert runs: placements (lanes) and the packing of experts that name none.

A placement is one worker of the grouped executor: a GPU (or a set of GPUs: experts whose
GPU placements overlap share one worker, so two engines never fight over one device), a
server, or `default`. An expert's placement comes from its manifest entry (`placement:`), else
from its backend (`default_placement(spec)`: openai_http answers with its base URL), else it
is packed: onto the pool's `gpus` by expected work (requests x max_tokens, longest first onto
the least loaded GPU; Graham's LPT rule), or onto `default` when the pool names no GPUs.
An expert already loaded somewhere stays there (moving it would cost a load).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from ..types import ExpertSpec
from .residency import DEFAULT_PLACEMENT


@dataclass(frozen=True)
class Lane:
    key: str  # "gpu:0", "gpu:0,1", a server name or URL, "default"
    gpus: tuple[int, ...] = ()


def gpu_lane(gpus) -> Lane:
    ordered = tuple(sorted(set(gpus)))
    return Lane("gpu:" + ",".join(map(str, ordered)), ordered)


def explicit_lane(spec: ExpertSpec, backend: object) -> Lane | None:
    """The lane an expert names (or its backend implies); None: packed by the executor."""
    p = spec.placement
    if isinstance(p, bool):  # YAML `true` is no GPU index
        return None
    if isinstance(p, int):
        return gpu_lane([p])
    if isinstance(p, (list, tuple)):
        return gpu_lane(p)
    if isinstance(p, str):
        return Lane(p)
    default = getattr(backend, "default_placement", None)
    key = default(spec) if callable(default) else None
    return Lane(key) if key else None


class _GPUGroups:
    """Union-find over GPU indices: overlapping GPU placements become one lane."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, g: int) -> int:
        self.parent.setdefault(g, g)
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, gpus: Sequence[int]) -> None:
        for g in gpus[1:]:
            self.parent[self.find(g)] = self.find(gpus[0])

    def lane(self, g: int) -> Lane:
        root = self.find(g)
        return gpu_lane([x for x in self.parent if self.find(x) == root])


def assign(
    work: Mapping[str, float],
    specs: Mapping[str, ExpertSpec],
    backend_of: Callable[[ExpertSpec], object],
    gpus: Sequence[int] | None = None,
    current: Callable[[str], str | None] = lambda e: None,
) -> dict[str, Lane]:
    """expert -> lane for the experts in `work` (expert -> expected work, in plan order)."""
    explicit = {e: explicit_lane(specs[e], backend_of(specs[e])) for e in work}
    groups = _GPUGroups()
    for g in gpus or ():
        groups.find(g)
    for lane in explicit.values():
        if lane is not None and lane.gpus:
            groups.union(list(lane.gpus))
    out: dict[str, Lane] = {}
    for e, lane in explicit.items():
        if lane is not None:
            out[e] = groups.lane(lane.gpus[0]) if lane.gpus else lane
    auto = [e for e in work if e not in out]
    if not auto:
        return out
    if not gpus:
        return {**out, **{e: Lane(DEFAULT_PLACEMENT) for e in auto}}
    targets = list(dict.fromkeys(groups.lane(g) for g in gpus))
    by_key = {lane.key: lane for lane in targets}
    load = {lane.key: 0.0 for lane in targets}
    for e, lane in out.items():
        if lane.key in load:
            load[lane.key] += work[e]
    for e in auto:  # sticky: a loaded expert stays where it is
        here = current(e)
        if here in by_key:
            out[e] = by_key[here]
            load[here] += work[e]
    for e in sorted((e for e in auto if e not in out), key=lambda e: -work[e]):
        key = min(load, key=load.__getitem__)  # first of the least loaded (stable)
        out[e] = by_key[key]
        load[key] += work[e]
    return out


def resolved_spec(spec: ExpertSpec, lane: Lane) -> ExpertSpec:
    """The spec a backend loads: an expert packed onto a GPU lane gets that GPU."""
    if spec.placement is None and lane.gpus:
        return replace(spec, placement=lane.gpus[0])
    return spec
