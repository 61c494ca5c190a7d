"""Placements: experts on different GPUs or servers run at the same time, each placement
keeps the grouped schedule, and a hung expert delays nobody else."""

from __future__ import annotations

import threading
import time

import pytest
import yaml

from orchestrator import Orchestrator, load_pool
from orchestrator.config import RunConfig
from orchestrator.errors import ConfigError
from orchestrator.types import GenerationRequest, Message, Sampling
from orchestrator.workers import GroupedExecutor

from .conftest import write_pool
from .openai_standin import StandIn

pytestmark = pytest.mark.timeout(30)


def reqs(pairs, max_tokens: int = 16):
    return [GenerationRequest(expert=e, messages=(Message("user", f"prompt {q}"),), query_id=q,
                              index=i, sampling=Sampling(max_tokens=max_tokens))
            for i, (q, e) in enumerate(pairs)]


def fake_orch(tmp_path, n=4, gpus=None, placements=None, batch_s=0.0, resident_limit=1,
              batch_size=16):
    experts = [{"id": f"e{i}", "backend": "fake", "model": f"m{i}",
                "options": {"batch_s": batch_s}} for i in range(n)]
    for e, p in (placements or {}).items():
        experts[int(e[1:])]["placement"] = p
    path = tmp_path / "pool.yaml"
    path.write_text(yaml.safe_dump({"name": "p", "resident_limit": resident_limit,
                                    **({"gpus": gpus} if gpus else {}), "experts": experts}))
    pool = load_pool(path)
    o = Orchestrator(pool, RunConfig(batch_size=batch_size))
    # what core.py does once it passes the pool's gpus to the executor
    o.executor = GroupedExecutor(o.residency, batch_size, gpus=pool.gpus)
    return o


def test_experts_are_packed_onto_gpus_by_expected_work(tmp_path):
    o = fake_orch(tmp_path, n=4, gpus=[0, 1, 2])
    # e0: 4 requests x 100 tokens; e1..e3 one request of 100 each
    batch = reqs([("q0", "e0")] * 4, 100) + reqs([("q1", "e1"), ("q1", "e2"), ("q1", "e3")], 100)
    lanes = o.executor.placements(batch)
    assert lanes["e0"].key == "gpu:0"  # the largest first, alone
    assert {lanes[e].key for e in ("e1", "e2", "e3")} == {"gpu:1", "gpu:2"}
    # the backend sees the GPU it was packed onto
    o.executor.execute(batch)
    fake = o.backends.get("fake")
    assert fake.loaded("e0")[0].placement == 0


def test_named_placements_are_kept_and_overlapping_gpus_share_a_worker(tmp_path):
    o = fake_orch(tmp_path, n=4, gpus=[0, 1, 2, 3],
                  placements={"e0": [0, 1], "e1": 1, "e2": "server-a"})
    lanes = o.executor.placements(reqs([("q", f"e{i}") for i in range(4)]))
    assert lanes["e0"].key == lanes["e1"].key == "gpu:0,1"
    assert lanes["e2"].key == "server-a"
    assert lanes["e3"].key in ("gpu:2", "gpu:3")
    # without gpus, experts that name no placement share the default one
    o2 = fake_orch(tmp_path, n=2)
    assert {lane.key for lane in o2.executor.placements(reqs([("q", "e0"), ("q", "e1")])).values()} \
        == {"default"}


def test_placements_run_concurrently_and_keep_order(tmp_path):
    pairs = [(f"q{i}", f"e{j}") for i in range(3) for j in (3, 1, 0, 2)]
    timings = {}
    for gpus in (None, [0, 1, 2, 3]):
        o = fake_orch(tmp_path, n=4, gpus=gpus, batch_s=0.15)
        t0 = time.perf_counter()
        results, stats = o.executor.execute(reqs(pairs))
        timings[bool(gpus)] = time.perf_counter() - t0
        assert [(r.request.query_id, r.request.expert) for r in results] == pairs
        assert all(r.ok for r in results)
        assert stats.loads_total == 4 and all(s.calls == 3 for s in stats.experts.values())
        assert sum(p.requests for p in stats.placements.values()) == len(pairs)
    assert timings[False] >= 0.6  # 4 experts x one batch of 0.15 s, one after another
    assert timings[False] / timings[True] > 2.5, timings
    o.close()


def test_residency_limit_is_per_placement_and_experts_stay_put(tmp_path):
    o = fake_orch(tmp_path, n=4, gpus=[0, 1], resident_limit=1)
    o.executor.execute(reqs([("q0", "e0"), ("q0", "e1")]))
    first = {e: o.residency.placement_of(e) for e in ("e0", "e1")}
    assert sorted(o.residency.resident) == ["e0", "e1"] and len(set(first.values())) == 2
    # a second call with other work keeps the loaded experts where they are: no reload
    _, stats = o.executor.execute(reqs([("q1", "e1")] * 5 + [("q1", "e0")]))
    assert stats.loads_total == 0
    assert {e: o.residency.placement_of(e) for e in ("e0", "e1")} == first
    o.close()
    assert o.residency.resident == []


def test_on_batch_sees_every_result_once_in_the_calling_thread(tmp_path):
    o = fake_orch(tmp_path, n=3, gpus=[0, 1, 2], batch_size=2)
    seen, threads = [], set()

    def on_batch(results):
        seen.extend(r.request.index for r in results)
        threads.add(threading.get_ident())

    pairs = [(f"q{i}", f"e{i % 3}") for i in range(9)]
    results, _ = o.executor.execute(reqs(pairs), on_batch=on_batch)
    assert sorted(seen) == list(range(9)) and threads == {threading.get_ident()}
    assert all(r.ok for r in results)


def test_the_on_batch_attribute_is_called_too(tmp_path):
    # the generation store sets executor.on_batch; an execute() argument adds to it
    o = fake_orch(tmp_path, n=2, gpus=[0, 1], batch_size=1)
    attribute, argument = [], []
    o.executor.on_batch = lambda results: attribute.extend(results)
    results, _ = o.executor.execute(reqs([("q0", "e0"), ("q0", "e1"), ("q1", "e0")]),
                                    on_batch=lambda results: argument.extend(results))
    assert sorted(r.request.index for r in attribute) == [0, 1, 2]
    assert sorted(r.request.index for r in argument) == [0, 1, 2]


def test_cancel_one_placement_fails_only_its_pending_requests(tmp_path):
    o = fake_orch(tmp_path, n=2, gpus=[0, 1], batch_s=0.1, batch_size=1)
    lanes = o.executor.placements(reqs([("q", "e0"), ("q", "e1")]))
    slow_lane = lanes["e0"].key
    timer = threading.Timer(0.15, o.executor.cancel, args=(slow_lane,))
    timer.start()
    results, _ = o.executor.execute(reqs([(f"q{i}", e) for e in ("e0", "e1") for i in range(6)]))
    timer.join()
    e0 = [r for r in results if r.request.expert == "e0"]
    e1 = [r for r in results if r.request.expert == "e1"]
    assert all(r.ok for r in e1)
    assert 1 <= sum(r.ok for r in e0) < 6
    assert all("cancelled" in r.error for r in e0 if not r.ok)


def test_placement_and_gpus_are_validated(tmp_path):
    for bad in ([], [0, 0], -1, ""):
        path = write_pool(tmp_path / "bad.yaml", [{"id": "a", "backend": "fake",
                                                    "placement": bad}])
        with pytest.raises(ConfigError, match="placement"):
            load_pool(path)
    path = tmp_path / "g.yaml"
    path.write_text("name: g\ngpus: [0, 0]\nexperts: [{id: a, backend: fake}]\n")
    with pytest.raises(ConfigError, match="distinct GPU"):
        load_pool(path)


# --- a hung expert delays nobody else ------------------------------------------------------


@pytest.fixture
def servers():
    healthy = StandIn("healthy-model", batch_latency_s=0.03).start()
    hung = StandIn("hung-model", hang=True).start()
    yield healthy, hung
    healthy.close()
    hung.close()


def http_orch(tmp_path, healthy, hung):
    opts = {"timeout_s": 1.5, "max_retries": 0, "backoff_s": 0.0}
    path = write_pool(tmp_path / "http.yaml", [
        {"id": "healthy", "backend": "openai_http", "model": "healthy-model",
         "options": {"base_url": healthy.url, **opts}},
        {"id": "hung", "backend": "openai_http", "model": "hung-model",
         "options": {"base_url": hung.url, **opts}},
    ])
    return Orchestrator(load_pool(path), RunConfig())


def test_a_hung_server_does_not_delay_a_run_for_healthy_experts(tmp_path, servers):
    healthy, hung = servers
    o = http_orch(tmp_path, healthy, hung)
    latency = {}
    for with_hung in (False, True):
        pairs = [(f"q{i}", "healthy") for i in range(4)] + ([("q0", "hung")] if with_hung else [])
        finished: dict[str, float] = {}
        t0 = time.perf_counter()

        def on_batch(results, t0=t0, finished=finished):
            for r in results:
                finished.setdefault(r.request.expert, time.perf_counter() - t0)

        results, _ = o.executor.execute(reqs(pairs), on_batch=on_batch)
        latency[with_hung] = finished["healthy"]
        assert all(r.ok for r in results if r.request.expert == "healthy")
        if with_hung:
            assert not results[-1].ok and "timeout" in results[-1].error.lower()
    assert latency[False] < 1.0 and latency[True] < 1.0, latency  # nominal 0.03 s


def test_the_multinode_example_manifest_is_valid_and_runs_on_four_placements():
    from .conftest import ROOT

    with Orchestrator.from_files(ROOT / "pools" / "multinode.yaml") as o:
        rows = o.check()  # every expert's options validate; nothing is contacted
        assert {spec.backend for spec, _ in rows} == {"openai_http"}
        lanes = o.executor.placements(reqs([("q", e) for e in o.specs]))
    assert lanes["qwen2.5-7b-instruct"].key == "http://node-c:8000/v1,http://node-d:8000/v1"
    assert lanes["mistral-nemo-math"] == lanes["mistral-nemo-instruct"]  # one engine, one worker
    assert len({lane.key for lane in lanes.values()}) == 4


def test_an_unknown_expert_fails_its_requests_only(tmp_path):
    o = fake_orch(tmp_path, n=2, gpus=[0, 1])
    results, _ = o.executor.execute(reqs([("q", "e0"), ("q", "nope"), ("q", "e1")]))
    assert [r.ok for r in results] == [True, False, True]
    assert "loading expert 'nope' failed" in results[1].error


def test_a_failing_on_batch_stops_every_placement_and_reaches_the_caller(tmp_path):
    o = fake_orch(tmp_path, n=2, gpus=[0, 1], batch_s=0.05, batch_size=1)

    def on_batch(results):
        raise RuntimeError("disk full")

    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match="disk full"):
        o.executor.execute(reqs([(f"q{i}", e) for e in ("e0", "e1") for i in range(20)]),
                           on_batch=on_batch)
    assert time.perf_counter() - t0 < 1.0  # not 20 batches x 0.05 s per placement
    time.sleep(0.2)  # the workers stop at their next batch
    assert len(o.backends.get("fake").history) < 10
