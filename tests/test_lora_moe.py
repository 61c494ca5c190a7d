"""LoRA-MoE on a tiny randomly initialised llama (built here, no download)."""

from __future__ import annotations

import copy
import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from orchestrator.adapters.lora_moe import LoraMoeConfig, LoraMoeModel  # noqa: E402
from orchestrator.adapters.lora_moe.layer import GATHER_MAX_PAIRS  # noqa: E402
from orchestrator.errors import ConfigError  # noqa: E402

N_EXPERTS = 3


def tiny_llama(seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return transformers.LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def experts(tmp_path_factory):
    """Three PEFT LoRA adapters with random (non-zero) A and B, of two ranks and module sets."""
    root = tmp_path_factory.mktemp("experts")
    base = tiny_llama()
    folders = []
    for i, (rank, modules) in enumerate([(4, ["q_proj", "v_proj"]), (8, ["q_proj", "v_proj"]),
                                         (4, ["q_proj", "v_proj", "down_proj"])]):
        torch.manual_seed(100 + i)
        cfg = peft.LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=modules,
                              init_lora_weights=False)
        model = peft.get_peft_model(copy.deepcopy(base), cfg)
        folder = root / f"expert{i}"
        model.save_pretrained(str(folder))
        folders.append(folder)
    return folders


def make_moe(experts, **overrides):
    config = LoraMoeConfig(base_model="tiny", experts=[str(f) for f in experts], **overrides)
    return LoraMoeModel.from_experts(tiny_llama(), config, seed=0).eval()


def ids(batch: int = 2, length: int = 7, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 96, (batch, length), generator=g)


def test_layers_replace_every_adapted_linear_and_keep_shapes(experts):
    moe = make_moe(experts)
    assert set(moe.layers) == {f"model.layers.{i}.{m}" for i in range(2)
                               for m in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj")}
    q = moe.layers["model.layers.0.self_attn.q_proj"]
    assert q.lora_A.shape == (N_EXPERTS, 8, 32)  # padded to the largest rank
    assert q.lora_B.shape == (N_EXPERTS, 32, 8)
    assert q.gate.proj.weight.shape == (N_EXPERTS, 32)
    down = moe.layers["model.layers.1.mlp.down_proj"]
    assert down.lora_A.shape == (N_EXPERTS, 8, 64)
    assert torch.count_nonzero(down.lora_A[0]) == 0  # expert 0 does not adapt down_proj
    x = torch.randn(2, 5, 32)
    assert q(x).shape == (2, 5, 32)
    logits = moe(input_ids=ids()).logits
    assert logits.shape == (2, 7, 96)


@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("length", [3, 80])  # decode-sized (gather kernel) and prefill (grouped)
def test_only_the_chosen_experts_are_multiplied(experts, top_k, length):
    moe = make_moe(experts, top_k=top_k)
    moe.context.count = True
    batch = 1
    tokens = batch * length
    assert (tokens * top_k <= GATHER_MAX_PAIRS) == (length == 3)
    with torch.no_grad():
        moe(input_ids=ids(batch, length))
    for layer in moe.layers.values():
        assert layer.pairs == tokens * top_k  # never N_EXPERTS per token
    assert top_k < N_EXPERTS


def test_grouped_kernel_skips_null_experts_and_top_p_varies_the_count(experts):
    moe = make_moe(experts, top_k=2, null_experts=2)
    moe.context.count = True
    with moe.recording(), torch.no_grad():
        moe(input_ids=ids(2, 40))
    for layer in moe.layers.values():
        chosen = torch.cat([c for c, _ in layer.records])
        real = int((chosen < N_EXPERTS).sum())
        assert layer.pairs == real < chosen.numel()  # null choices cost nothing
    moe = make_moe(experts, top_k=3, top_p=0.05)  # the best expert alone passes 0.05
    with moe.recording(), torch.no_grad():
        moe(input_ids=ids(2, 9))
    for layer in moe.layers.values():
        chosen = torch.cat([c for c, _ in layer.records])
        assert ((chosen >= 0).sum(dim=-1) == 1).all()
    moe = make_moe(experts, top_k=3, top_p=1.0)
    with moe.recording(), torch.no_grad():
        moe(input_ids=ids(2, 9))
    layer = next(iter(moe.layers.values()))
    assert ((torch.cat([c for c, _ in layer.records]) >= 0).sum(dim=-1) == 3).all()


@pytest.mark.parametrize("top_k", [1, 2])
def test_gradients_reach_only_the_gates(experts, top_k):
    moe = make_moe(experts, top_k=top_k)  # at top-1 too: the weight is the gate probability
    moe.train()
    params = moe.gate_parameters()
    batch = ids(2, 12)
    out = moe(input_ids=batch, labels=batch)
    loss = out.loss + moe.config.aux_loss_coef * moe.aux_loss()
    loss.backward()
    gate_ids = {id(p) for p in params}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    for name, p in moe.named_parameters():
        if id(p) not in gate_ids:
            assert p.grad is None and not p.requires_grad, name
    assert all(not layer.lora_A.requires_grad for layer in moe.layers.values())


def test_weights_are_gate_probabilities_or_renormalized(experts):
    x = torch.randn(5, 32)
    for renormalize in (False, True):
        moe = make_moe(experts, top_k=2, renormalize=renormalize)
        gate = moe.layers["model.layers.0.self_attn.q_proj"].gate
        routing = gate(x)
        top2 = routing.probs.topk(2, dim=-1).values
        expected = top2 / top2.sum(-1, keepdim=True) if renormalize else top2
        torch.testing.assert_close(routing.weight, expected)


def test_balance_loss_is_one_when_balanced_and_grows_when_collapsed():
    from orchestrator.adapters.lora_moe.gate import load_balance_loss

    uniform = torch.full((4, 2), 0.5)
    assert load_balance_loss(uniform, torch.tensor([[0], [1], [0], [1]]),
                             torch.ones(4, 1)).item() == pytest.approx(1.0)
    collapsed = torch.tensor([[0.9, 0.1]] * 4)
    assert load_balance_loss(collapsed, torch.zeros(4, 1, dtype=torch.long),
                             torch.ones(4, 1)).item() == pytest.approx(1.8)


def test_save_and_load_give_identical_logits(experts, tmp_path):
    moe = make_moe(experts, gate="per-layer", null_experts=1)
    with torch.no_grad():
        for gate in moe.gates():
            gate.proj.weight.normal_(std=0.5)  # something a fresh init would not reproduce
        before = moe(input_ids=ids()).logits
    moe.with_experts_relative_to(tmp_path / "moe", None)
    moe.save(tmp_path / "moe")
    saved = json.loads((tmp_path / "moe" / "lora_moe_config.json").read_text())
    assert all(not p.startswith("/") for p in saved["experts"])  # movable with its experts
    loaded = LoraMoeModel.load(tmp_path / "moe", tiny_llama()).eval()
    with torch.no_grad():
        after = loaded(input_ids=ids()).logits
    assert torch.equal(before, after)


def test_shared_gate_round_trip(experts, tmp_path):
    qv = LoraMoeConfig(base_model="tiny", experts=[str(f) for f in experts], gate="shared",
                       target_modules=["q_proj", "v_proj"])
    moe = LoraMoeModel.from_experts(tiny_llama(), qv)
    assert len(moe.gates()) == 1 and len(moe.layers) == 4
    moe.save(tmp_path / "shared")
    loaded = LoraMoeModel.load(tmp_path / "shared", tiny_llama())
    with torch.no_grad():
        assert torch.equal(moe(input_ids=ids()).logits, loaded(input_ids=ids()).logits)


@pytest.mark.parametrize("length", [3, 40])
@pytest.mark.parametrize("expert", range(N_EXPERTS))
def test_gate_forced_one_hot_equals_peft_with_that_adapter(experts, expert, length):
    moe = make_moe(experts)
    moe.force_expert(expert)
    peft_model = peft.PeftModel.from_pretrained(tiny_llama(), str(experts[expert])).eval()
    batch = ids(1, length)
    with torch.no_grad():
        ours = moe(input_ids=batch).logits
        theirs = peft_model(input_ids=batch).logits
        base = tiny_llama()(input_ids=batch).logits
    assert (theirs - base).abs().max() > 1e-3  # the adapter changes the output
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_generation_with_kv_cache_equals_generation_without(experts):
    moe = make_moe(experts, top_k=2)
    prompt = ids(2, 6)
    kwargs = {"max_new_tokens": 10, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        cached = moe.generate(input_ids=prompt, use_cache=True, **kwargs)
        uncached = moe.generate(input_ids=prompt, use_cache=False, **kwargs)
    assert cached.shape == (2, 16)
    assert torch.equal(cached, uncached)


def test_config_and_expert_errors_say_how_to_fix(experts, tmp_path):
    with pytest.raises(ValueError, match="lower top_k"):
        LoraMoeConfig(base_model="m", experts=["a"], top_k=2)
    with pytest.raises(ValueError, match="extra"):
        LoraMoeConfig(base_model="m", experts=["a"], topk=1)
    with pytest.raises(ConfigError, match="no adapter_config.json"):
        make_moe([tmp_path / "missing"], top_k=1)
    dora = tmp_path / "dora"
    dora.mkdir()
    cfg = json.loads((experts[0] / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    with pytest.raises(ConfigError, match="use_dora"):
        make_moe([dora], top_k=1)
    with pytest.raises(ConfigError, match="same input width"):
        make_moe(experts, gate="shared")  # down_proj reads 64 features, q/v read 32
    with pytest.raises(ConfigError, match="match no module"):
        make_moe(experts, target_modules=["o_proj"])
    with pytest.raises(ConfigError, match="no lora_moe_config.json"):
        LoraMoeModel.load(tmp_path, tiny_llama())
