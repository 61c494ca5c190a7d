"""LoRA experts in the transformers backend, on a tiny random llama (built here in seconds):
one shared base per (model, dtype, device, options), adapters switched by name, refcounted
release."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from orchestrator.backends.base import BackendContext  # noqa: E402
from orchestrator.backends.transformers_backend import TransformersBackend  # noqa: E402
from orchestrator.errors import BackendError, UserError  # noqa: E402
from orchestrator.types import ExpertSpec, GenerationRequest, Message, Sampling  # noqa: E402

from .tiny_model import make_tiny_model_folder  # noqa: E402

GREEDY = Sampling(max_tokens=6, temperature=0.0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny model folder and two random (non-zero) LoRA adapters of it: a0 (q,v), a1 (q,v,o)."""
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("lora")
    folder = make_tiny_model_folder(root / "base")
    base = AutoModelForCausalLM.from_pretrained(str(folder))
    adapters = []
    for i, modules in enumerate([["q_proj", "v_proj"], ["q_proj", "v_proj", "o_proj"]]):
        torch.manual_seed(100 + i)
        cfg = peft.LoraConfig(r=4, lora_alpha=64, target_modules=modules, init_lora_weights=False)
        model = peft.get_peft_model(copy.deepcopy(base), cfg)
        model.save_pretrained(str(root / f"a{i}"))
        adapters.append(root / f"a{i}")
    return folder, adapters


def spec(expert_id: str, folder, adapter=None, dtype="float32", **options) -> ExpertSpec:
    return ExpertSpec(id=expert_id, backend="transformers", model=str(folder),
                      adapter=None if adapter is None else str(adapter), dtype=dtype,
                      options=options)


def prompts(expert: str, n: int = 3) -> list[GenerationRequest]:
    texts = ["what is 2 + 3 ?", "choose one letter : a b c", "how many of the options are 4 ?"]
    return [GenerationRequest(expert, (Message("system", "solve step"), Message("user", texts[i])),
                              GREEDY, query_id=f"q{i}", index=i) for i in range(n)]


def texts(backend, expert: str) -> list[str]:
    results = backend.generate(prompts(expert))
    assert [r.error for r in results] == [None] * len(results)
    return [r.text for r in results]


@pytest.fixture
def backend():
    b = TransformersBackend(BackendContext(threads=1))
    yield b
    b.close()


def test_experts_on_one_base_share_one_load_and_switch_without_reload(tiny, backend):
    folder, (a0, a1) = tiny
    backend.load(spec("base", folder))
    base_alone = texts(backend, "base")
    backend.load(spec("e0", folder, a0))
    backend.load(spec("e1", folder, a1))
    assert (backend.counts.base, backend.counts.adapter, backend.bases) == (1, 2, 1)

    first = {e: texts(backend, e) for e in ("e0", "e1", "base")}
    # a mixed batch: grouped per expert, in order, same texts as alone
    mixed = backend.generate([r for e in ("e1", "base", "e0") for r in prompts(e)])
    assert [r.request.expert for r in mixed] == ["e1"] * 3 + ["base"] * 3 + ["e0"] * 3
    assert [r.text for r in mixed] == first["e1"] + first["base"] + first["e0"]
    again = {e: texts(backend, e) for e in ("e1", "e0", "base")}
    assert again == first
    assert (backend.counts.base, backend.counts.adapter) == (1, 2)  # no reload on switching

    assert first["e0"] != first["base"] and first["e1"] != first["base"]
    assert first["e0"] != first["e1"]
    assert first["base"] == base_alone  # adapters are disabled for the base expert


def test_release_drops_the_adapter_and_frees_the_base_with_its_last_expert(tiny, backend):
    folder, (a0, a1) = tiny
    for s in (spec("e0", folder, a0), spec("e1", folder, a1), spec("base", folder)):
        backend.load(s)
    e1_before, base_before = texts(backend, "e1"), texts(backend, "base")

    backend.release("e0")
    assert (backend.counts.adapter_released, backend.bases) == (1, 1)
    assert not backend.is_loaded("e0") and "e0" not in backend.loaded("e1").model.peft_config
    assert texts(backend, "e1") == e1_before

    backend.release("e1")  # the last adapter: the base goes back to a plain model
    assert backend.counts.adapter_released == 2 and backend.bases == 1
    assert not isinstance(backend.loaded("base").model, peft.PeftModel)
    assert texts(backend, "base") == base_before

    backend.release("base")
    assert (backend.bases, backend.counts.base_released) == (0, 1)
    backend.load(spec("e0", folder, a0))  # a fresh load after the base was freed
    assert (backend.counts.base, backend.counts.adapter, backend.bases) == (2, 3, 1)


def test_a_different_dtype_or_option_is_a_different_base(tiny, backend):
    folder, (a0, _) = tiny
    backend.load(spec("f32", folder))
    backend.load(spec("bf16", folder, a0, dtype="bfloat16"))
    backend.load(spec("ctx", folder, max_context=64))  # max_context is per expert: shared
    assert (backend.counts.base, backend.bases) == (2, 2)
    assert backend.loaded("ctx").base is backend.loaded("f32").base
    long = [GenerationRequest("ctx", (Message("user", "the " * 70),), GREEDY)]
    assert "maximum context length is 64 tokens" in backend.generate(long)[0].error


def test_a_missing_adapter_folder_is_a_user_error_and_leaks_nothing(tiny, backend, tmp_path):
    folder, _ = tiny
    with pytest.raises(UserError, match=r"adapter '.*nowhere' is not a PEFT adapter folder"):
        backend.load(spec("bad", folder, tmp_path / "nowhere"))
    assert backend.bases == 0 and backend.counts.base == 0  # checked before loading the base
    assert "LoRA" in backend.check(spec("ok", folder, tiny[1][0]))


def test_an_adapter_of_another_model_fails_clearly_and_frees_its_base(tiny, backend, tmp_path):
    from transformers import AutoModelForCausalLM

    folder, _ = tiny
    other = make_tiny_model_folder(tmp_path / "other")
    model = AutoModelForCausalLM.from_pretrained(str(other))
    model.model.layers[0].self_attn.q_proj = torch.nn.Linear(32, 48, bias=False)  # another shape
    peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False)) \
        .save_pretrained(str(tmp_path / "wrong"))
    with pytest.raises(BackendError, match="does not fit model"):
        backend.load(spec("wrong", folder, tmp_path / "wrong"))
    assert backend.bases == 0 and not backend.is_loaded("wrong")


def test_the_grouped_executor_loads_one_base_for_a_pool_of_adapters(tiny, tmp_path):
    from orchestrator import Orchestrator, load_pool
    from orchestrator.config import RunConfig

    from .conftest import write_pool

    folder, (a0, a1) = tiny
    experts = [{"id": "base", "backend": "transformers", "model": str(folder), "dtype": "float32"}]
    experts += [{"id": f"e{i}", "backend": "transformers", "model": str(folder), "dtype": "float32",
                 "adapter": str(a)} for i, a in enumerate((a0, a1))]
    pool = write_pool(tmp_path / "pool.yaml", experts, resident_limit=3)
    with Orchestrator(load_pool(pool), RunConfig(batch_size=2, threads=1)) as o:
        requests = [r for e in ("e0", "base", "e1") for r in prompts(e)]
        results, stats = o.executor.execute(requests)
        backend = o.backends.get("transformers")
        assert all(r.ok for r in results)
        assert (backend.counts.base, backend.counts.adapter) == (1, 2)
        assert sum(s.loads for s in stats.experts.values()) == 3
