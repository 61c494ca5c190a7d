"""The vllm backend against the simulated vLLM (tests/fake_vllm): placements, the switch policy,
sleep levels, the per-GPU memory budget, engine death and the defects of issue 14. Fast, CPU."""

from __future__ import annotations

import os

import pytest

from orchestrator.backends.base import BackendContext
from orchestrator.backends.vllm_backend import VLLMBackend
from orchestrator.errors import BackendError, ConfigError
from orchestrator.types import ExpertSpec, GenerationRequest, Message, Sampling

from .fake_vllm import fake_vllm_fixture, model_folder  # noqa: F401  (fixture `fake_vllm`)

GiB = 1 << 30
SLEEPY = {"enable_sleep_mode": True, "gpu_memory_utilization": 0.8}


def expert(eid: str, model: str, placement=None, **options) -> ExpertSpec:
    return ExpertSpec(eid, "vllm", model, options={**SLEEPY, **options}, placement=placement)


def ask(eid: str, text: str = "What is two plus two?", system: str | None = None,
        index: int = 0, **sampling) -> GenerationRequest:
    messages = ((Message("system", system),) if system else ()) + (Message("user", text),)
    return GenerationRequest(eid, messages, Sampling(**{"max_tokens": 16, **sampling}),
                             f"q{index}", index)


@pytest.fixture
def models(tmp_path):
    def make(n: int, **card) -> list[str]:
        return [model_folder(tmp_path, f"m{i}", **card) for i in range(n)]
    return make


def texts(results) -> list[str]:
    assert all(r.error is None for r in results), [r.error for r in results]
    return [r.text for r in results]


# -- placements -----------------------------------------------------------------------------

def test_each_placement_gets_its_own_engine_on_its_gpus(fake_vllm, models):
    machine = fake_vllm.reset(gpus=4)
    a, b = models(2)
    backend = VLLMBackend()
    backend.load(expert("a0", a, placement=0))
    backend.load(expert("a2", a, placement=2))  # the same model on another GPU: its own engine
    backend.load(expert("b13", b, placement=[1, 3]))
    got = {tuple(e.gpus): e.model for e in machine.engines}
    assert got == {(0,): a, (2,): a, (1, 3): b}
    assert machine.engines[2].gpus == [1, 3] and not any(e.asleep for e in machine.engines)
    assert "CUDA_VISIBLE_DEVICES" not in os.environ  # set only while an engine core starts
    out = backend.generate([ask("a0"), ask("b13"), ask("a2")])
    assert texts(out)[0] == texts(out)[2]  # same model, same greedy prompt, other GPU
    backend.close()
    assert all(g.used == 0 for g in machine.gpus)


def test_tensor_parallel_size_follows_the_placement(fake_vllm, models):
    fake_vllm.reset(gpus=2)
    (a,) = models(1)
    backend = VLLMBackend()
    spec = expert("a", a, placement=[0, 1])
    assert backend._engine_kwargs(spec, backend.options(spec), lora=False)[
        "tensor_parallel_size"] == 2
    with pytest.raises(ConfigError, match="names 2 GPU.*tensor_parallel_size is 4"):
        backend.check(expert("a", a, placement=[0, 1], tensor_parallel_size=4))
    for bad in ("gpu0", [0, 0], -1, "1", [], True):
        with pytest.raises(ConfigError, match="placement"):
            backend.check(expert("a", a, placement=bad))


def test_placement_counts_among_the_gpus_this_process_sees(fake_vllm, models, monkeypatch):
    machine = fake_vllm.reset(gpus=4)
    (a,) = models(1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    backend = VLLMBackend()
    backend.load(expert("a", a, placement=1))
    assert machine.engines[0].gpus == [3]
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,3"  # put back after the start
    with pytest.raises(ConfigError, match="GPU 2 is not visible"):
        backend.load(expert("b", a, placement=2))
    backend.close()


def test_one_awake_engine_per_gpu(fake_vllm, models):
    machine = fake_vllm.reset(gpus=2)
    a, b, c = models(3)
    backend = VLLMBackend()
    backend.load(expert("a", a, placement=0))
    backend.load(expert("c", c, placement=1))
    backend.load(expert("b", b, placement=0))  # a sleeps: same GPU; c stays awake: other GPU
    asleep = {e.model: e.asleep for e in machine.engines}
    assert asleep[a] and not asleep[b] and not asleep[c]
    out = backend.generate([ask("a"), ask("b"), ask("c")])  # wakes a, which puts b to sleep
    texts(out)
    llms = {e.model: e for e in machine.engines}
    assert llms[a].sleep_calls and llms[b].sleep_calls and not llms[c].sleep_calls
    backend.close()


def test_placements_driven_from_threads_keep_their_gpus(fake_vllm, models):
    """The executor runs one worker thread per placement over one backend."""
    from concurrent.futures import ThreadPoolExecutor

    machine = fake_vllm.reset(gpus=2)
    paths = models(4)
    backend = VLLMBackend()
    specs = [expert(f"e{i}", p, placement=i % 2) for i, p in enumerate(paths)]

    def lane(gpu: int) -> list[str]:
        out = []
        for spec in specs[gpu::2]:
            backend.load(spec)
            out += texts(backend.generate([ask(spec.id, index=i) for i in range(3)]))
            backend.release(spec.id)
        return out

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lane, [0, 1]))
    assert all(len(r) == 6 for r in results)
    assert {e.model: tuple(e.gpus) for e in machine.engines} == {
        p: (i % 2,) for i, p in enumerate(paths)}
    backend.close()


# -- sleep levels and the switch policy -----------------------------------------------------

@pytest.mark.parametrize("level", [1, 2])
def test_sleep_and_wake_keep_greedy_outputs(fake_vllm, models, level):
    machine = fake_vllm.reset()
    a, b = models(2)
    backend = VLLMBackend()
    backend.load(expert("a", a, sleep_level=level))
    before = texts(backend.generate([ask("a", index=i, text=f"question {i}") for i in range(3)]))
    backend.load(expert("b", b, sleep_level=level))
    assert machine.engines[0].sleep_calls == [level] and machine.engines[0].asleep == level
    after = texts(backend.generate([ask("a", index=i, text=f"question {i}") for i in range(3)]))
    assert after == before  # level 2 reloads the weights (collective_rpc) before the KV cache
    assert not machine.engines[0].asleep and machine.engines[1].asleep
    assert len(backend.starts) == 2
    backend.close()


def test_a_revisited_expert_is_woken_not_restarted(fake_vllm, models):
    fake_vllm.reset()
    paths = models(3)
    backend = VLLMBackend()
    specs = [expert(f"e{i}", p) for i, p in enumerate(paths)]
    for _ in range(3):
        for spec in specs:
            backend.load(spec)
            texts(backend.generate([ask(spec.id)]))
            backend.release(spec.id)
    assert len(backend.starts) == 3 and backend.pool.evictions == []
    backend.close()


# -- the memory budget ----------------------------------------------------------------------

def sixteen_switches(backend, paths) -> None:
    for i, path in enumerate(paths):
        spec = expert(f"e{i}", path, **backend.extra)
        backend.load(spec)
        texts(backend.generate([ask(spec.id)]))
        backend.release(spec.id)


def test_sleepers_that_crowd_the_gpu_are_shut_down_least_recently_used_first(fake_vllm, models):
    """80 GiB, 0.8 per awake engine, 1.5 GiB of CUDA graphs + 0.5 GiB context per sleeper:
    starting needs 64 GiB free, so at most 8 sleepers fit; the issue's simulation lost 15 of 48
    requests this way, here every request succeeds and the oldest sleepers go."""
    machine = fake_vllm.reset(gpus=1, total_gib=80)
    paths = models(16, weights_gib=15, cudagraph_gib=1.5)
    backend = VLLMBackend()
    backend.extra = {}
    sixteen_switches(backend, paths)
    assert backend.pool.evictions == paths[:7]  # LRU order
    sleepers = [e for e in backend.engines if e.asleep]  # 8 kept + the last one released
    assert len(sleepers) == 9 and all(e.residual[0] == 2 * GiB for e in sleepers)
    assert machine.gpus[0].free >= 0
    # the evicted first expert comes back: started again, same greedy answer
    first = expert("e0", paths[0])
    backend.load(first)
    assert texts(backend.generate([ask("e0")]))[0]
    assert len(backend.starts) == 17
    backend.close()


def test_offloading_cuda_graphs_keeps_every_sleeper(fake_vllm, models):
    machine = fake_vllm.reset(gpus=1, total_gib=80)
    paths = models(16, weights_gib=15, cudagraph_gib=1.5)
    backend = VLLMBackend()
    backend.extra = {"sleep_mode_offload_cudagraph": True}
    sixteen_switches(backend, paths)
    assert backend.pool.evictions == [] and len(backend.engines) == 16
    assert all(e.kwargs["sleep_mode_offload_cudagraph"] for e in machine.engines)
    backend.close()


def test_max_sleeping_caps_the_sleepers_per_gpu(fake_vllm, models):
    fake_vllm.reset()
    paths = models(5)
    backend = VLLMBackend()
    backend.extra = {"max_sleeping": 2}
    sixteen_switches(backend, paths)
    assert backend.pool.evictions == paths[:3]
    assert sum(1 for e in backend.engines if e.asleep) == 2
    backend.close()


def test_a_start_that_cannot_fit_is_refused_with_the_numbers(fake_vllm, models):
    machine = fake_vllm.reset(total_gib=80)
    (a,) = models(1)
    machine.gpus[0].used = 30 * GiB  # another process
    backend = VLLMBackend()
    with pytest.raises(BackendError) as err:
        backend.load(expert("a", a))
    assert "GPU 0 has 50.00 GiB free" in str(err.value) and "64.00 GiB" in str(err.value)
    assert "gpu_memory_utilization" in str(err.value) and machine.engines == []
    backend.load(expert("a", a, gpu_memory_utilization=0.5))  # the advice works
    backend.close()


def test_a_wake_up_that_runs_out_of_memory_fails_its_items_and_restarts_later(fake_vllm, models):
    machine = fake_vllm.reset(total_gib=80)
    a, b = models(2)
    backend = VLLMBackend()
    backend.load(expert("a", a))
    backend.load(expert("b", b))  # a sleeps
    engine_a = next(e for e in backend.engines if e.model == a)
    engine_a.freed[0] = 0  # a stale measurement: the backend lets the wake-up go ahead
    machine.gpus[0].used += 20 * GiB  # and another process took memory meanwhile
    out = backend.generate([ask("a")])
    assert "Waking the vLLM engine" in out[0].error and "out of memory" in out[0].error
    assert engine_a not in backend.engines and engine_a.asleep == 0 and engine_a.dead
    machine.gpus[0].used -= 20 * GiB
    assert texts(backend.generate([ask("a")]))  # started again on next use
    assert len(backend.starts) == 3
    backend.close()


# -- engine death (defect 6) ----------------------------------------------------------------

@pytest.mark.parametrize("kind", ["dead", "oom"])
def test_a_dead_engine_is_removed_and_restarted_on_next_use(fake_vllm, models, kind):
    machine = fake_vllm.reset()
    a, b = models(2)
    backend = VLLMBackend()
    backend.load(expert("a", a))
    backend.load(expert("b", b))
    first = texts(backend.generate([ask("a")]))
    machine.fail_next(a, kind)
    out = backend.generate([ask("a", index=0), ask("a", index=1), ask("b", index=2)])
    assert all("died" in r.error and "restarts on next use" in r.error for r in out[:2])
    assert out[2].error is None
    assert [e.model for e in backend.engines] == [b] and backend.pool.deaths == [a]
    dead = machine.engines[0]
    assert dead.dead and not dead.held  # its memory is back
    again = backend.generate([ask("a")])
    assert texts(again) == first and len(backend.starts) == 3
    backend.close()


# -- defect 1: max_model_len ----------------------------------------------------------------

def test_max_tokens_beyond_the_context_is_clamped_not_refused(fake_vllm, models):
    fake_vllm.reset()
    (a,) = models(1)
    backend = VLLMBackend()
    backend.load(expert("a", a, max_model_len=40))
    words = " ".join(["word"] * 30)  # 30 words + 3 template tokens = 33 of 40
    out = backend.generate([ask("a", text=words, max_tokens=4096),
                            ask("a", text="short", max_tokens=4096, index=1),
                            ask("a", text=" ".join(["w"] * 40), index=2)])
    assert out[0].error is None and out[0].tokens_in == 33 and out[0].tokens_out <= 7
    assert out[1].error is None and out[1].finish_reason == "stop"
    assert "maximum context length is 40 tokens; the prompt has 43" in out[2].error
    backend.close()


def test_the_shipped_pools_math_experts_answer_with_4096_new_tokens(fake_vllm, tmp_path):
    """pools/gpu-symbolic-moe.yaml: 4,096 context and configs/gpu-symbolic-moe.yaml's 4,096 new
    tokens failed every request before."""
    from dataclasses import replace

    from orchestrator.config import load_config, load_pool

    from .conftest import ROOT

    fake_vllm.reset()
    pool = load_pool(ROOT / "pools" / "gpu-symbolic-moe.yaml").specs()
    config = load_config(ROOT / "configs" / "gpu-symbolic-moe.yaml")
    folder = model_folder(tmp_path, "math")
    backend = VLLMBackend()
    for eid in ("qwen2.5-math-7b", "deepseek-math-7b-instruct"):
        spec = replace(pool[eid], model=folder)
        assert backend.options(spec).max_model_len == 4096
        backend.load(spec)
        out = backend.generate([ask(eid, " ".join(["word"] * 200), max_tokens=
                                    config.generation.max_tokens, temperature=0.7)])
        assert out[0].error is None and out[0].finish_reason in ("stop", "length")
    backend.close()


def test_generation_stopped_by_the_context_reports_length(fake_vllm, models):
    fake_vllm.reset()
    (a,) = models(1)
    backend = VLLMBackend()
    backend.load(expert("a", a, max_model_len=36))  # 31 words + 3 = 34: room for 2
    out = backend.generate([ask("a", text=" ".join(["word"] * 31), max_tokens=4096)])
    assert out[0].tokens_out == 2 and out[0].finish_reason == "length"
    backend.close()


# -- defect 2: Mistral repositories ---------------------------------------------------------

def test_mistral_folder_uses_the_hf_tokenizer_with_its_template(tmp_path):
    from orchestrator.backends.vllm_prompts import tokenizer_mode

    folder = tmp_path / "nemo"
    folder.mkdir()
    for name in ("consolidated.safetensors", "tekken.json", "config.json"):
        (folder / name).write_text("{}")
    assert tokenizer_mode(folder, None) is None  # no HF template: vLLM's Mistral tokenizer
    (folder / "tokenizer_config.json").write_text('{"chat_template": "[INST] ..."}')
    assert tokenizer_mode(folder, None) == "hf"
    assert tokenizer_mode(folder, "mistral") == "mistral"  # what the manifest says wins
    (folder / "consolidated.safetensors").unlink()
    assert tokenizer_mode(folder, None) is None  # not a Mistral-format folder


def test_mistral_tokenizer_prompts_carry_bos_and_inst(fake_vllm, models):
    fake_vllm.reset()
    (m,) = models(1, template="mistral")
    backend = VLLMBackend()
    backend.load(expert("m", m))
    tokenizer = backend.engines[0].tokenizer()
    from orchestrator.backends.vllm_prompts import render_ids

    ids = render_ids(tokenizer, ask("m", system="Be brief.").messages)
    assert ids[:2] == [1, tokenizer.word_id("[INST]")]
    assert ids[-1] == tokenizer.word_id("[/INST]")
    out = backend.generate([ask("m", system="Be brief.")])
    assert out[0].error is None and out[0].tokens_in == len(ids)
    backend.close()


def test_weights_are_counted_once_beside_a_consolidated_file(tmp_path):
    from orchestrator.backends.vllm_engine import weights_bytes

    (tmp_path / "consolidated.safetensors").write_bytes(b"x" * 100)
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"x" * 60)
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(b"x" * 40)
    assert weights_bytes(str(tmp_path)) == 100
    (tmp_path / "consolidated.safetensors").unlink()
    assert weights_bytes(str(tmp_path)) == 100
    (tmp_path / "pytorch_model.bin").write_bytes(b"x" * 500)  # ignored beside safetensors
    assert weights_bytes(str(tmp_path)) == 100


# -- defect 4: templates that raise ---------------------------------------------------------

def test_a_template_without_system_role_gets_the_system_prompt_folded(fake_vllm, models):
    fake_vllm.reset()
    gemma, other = models(2)
    import json
    from pathlib import Path

    (Path(gemma) / "sim.json").write_text(json.dumps({"template": "no_system"}))
    backend = VLLMBackend()
    backend.load(expert("gemma", gemma))
    out = backend.generate([ask("gemma", system="You are an expert.", index=0),
                            ask("gemma", index=1)])
    assert [r.error for r in out] == [None, None]
    # folded: the system text leads the first user turn
    assert out[0].tokens_in == out[1].tokens_in + 4  # "You are an expert."
    backend.close()


def test_a_prompt_that_cannot_be_rendered_fails_alone(fake_vllm, models, monkeypatch):
    from orchestrator.backends import vllm_backend

    fake_vllm.reset()
    (a,) = models(1)
    real = vllm_backend.render_ids

    def picky(tokenizer, messages):
        if "bad" in messages[-1].content:
            raise ValueError("Conversation roles must alternate user/assistant")
        return real(tokenizer, messages)

    monkeypatch.setattr(vllm_backend, "render_ids", picky)
    backend = VLLMBackend()
    backend.load(expert("a", a))
    out = backend.generate([ask("a", index=0), ask("a", text="bad", index=1),
                            ask("a", index=2)])
    assert out[0].error is None and out[2].error is None
    assert "chat template failed: ValueError: Conversation roles" in out[1].error
    backend.close()


# -- defect 5: seeds ------------------------------------------------------------------------

def test_a_model_listed_twice_gives_independent_samples(fake_vllm, models):
    fake_vllm.reset()
    (a,) = models(1)
    backend = VLLMBackend(BackendContext(seed=7))
    backend.load(expert("x1", a))
    backend.load(expert("x2", a))
    assert len(backend.engines) == 1  # one engine serves both
    sampled = [ask(e, index=i, text=f"q {i}", temperature=0.7, seed=7)
               for i in range(4) for e in ("x1", "x2")]
    first = texts(backend.generate(sampled))
    assert all(first[2 * i] != first[2 * i + 1] for i in range(4))
    assert texts(backend.generate(sampled)) == first  # the same run seed samples the same again
    greedy = texts(backend.generate([ask("x1"), ask("x2")]))
    assert greedy[0] == greedy[1]
    backend.close()


def test_request_seed_mixes_run_seed_and_expert():
    from orchestrator.backends.vllm_backend import request_seed

    seeds = {request_seed(s, e) for s in (0, 1) for e in ("a", "b")}
    assert len(seeds) == 4 and all(0 <= s < 2**31 for s in seeds)
    assert request_seed(0, "a") == request_seed(0, "a")


# -- vLLM on CPU: no sleep mode, no NVML ----------------------------------------------------

def test_without_sleep_mode_idle_engines_are_shut_down(fake_vllm, models):
    machine = fake_vllm.reset(cuda=False)
    a, b = models(2)
    backend = VLLMBackend()
    specs = [ExpertSpec("a", "vllm", a), ExpertSpec("b", "vllm", b)]
    backend.load(specs[0])
    assert "enable_sleep_mode" not in backend.engines[0].kwargs
    backend.release("a")
    backend.load(specs[1])
    assert [e.model for e in backend.engines] == [b] and machine.nvml_inits == 0
    assert texts(backend.generate([ask("b")]))
    backend.close()
