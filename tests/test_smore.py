"""S'MoRE on a tiny randomly initialised llama (built here, no download): the spec's testable
properties (../shared/reference/smore.md section 7), each against an independent computation."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from orchestrator.adapters.smore import SmoreConfig, SmoreModel  # noqa: E402
from orchestrator.adapters.smore.gate import Routing  # noqa: E402
from orchestrator.adapters.smore.layer import SmoreContext, SmoreLinear  # noqa: E402
from orchestrator.errors import ConfigError  # noqa: E402

GATES = [("switch", [2, 2]), ("noisy_topk", [2, 2]), ("dense", None)]


def tiny_llama(seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return transformers.LlamaForCausalLM(config).eval()


def config(**kw) -> SmoreConfig:
    values = {"base_model": "tiny", "experts": [4, 4], "fan_out": [2, 2], "rank": [3, 5],
              "router_dim": 6, "key_dim": 5}
    return SmoreConfig(**{**values, **kw})


def layer(cfg: SmoreConfig, d_in: int = 12, d_out: int = 10, seed: int = 0) -> SmoreLinear:
    torch.manual_seed(seed)
    return SmoreLinear(torch.nn.Linear(d_in, d_out), cfg, SmoreContext()).eval()


def randomize(module: SmoreLinear, seed: int = 1) -> SmoreLinear:
    """Non-zero P, biases and carries, so that every term of the forward matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if not name.startswith(("base.", "router.")):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return module


def delta(module: SmoreLinear, x: torch.Tensor) -> torch.Tensor:
    return module(x) - module.base(x)


def node_form(module: SmoreLinear, x: torch.Tensor, routing: Routing) -> torch.Tensor:
    """Spec 2.5 literally: per token, recurse over the routed tree node by node, multiplying
    only the selected experts' own matrices. x [N, d_in] -> [N, d_out]."""
    phi = module.phi or (lambda t: t)
    levels = len(module.experts)

    def out_of(tok, lvl, node, expert):
        a, a_b = module.level_a(lvl)
        low = module.up[lvl][expert] @ (a[expert] @ x[tok] + a_b[expert]) + module.up_bias[lvl][expert]
        low = low * module.scales[lvl]
        if lvl == 0:
            return phi(low)
        z = children_sum(tok, lvl - 1, node)
        return phi(low + module.carry[lvl - 1] @ z + module.carry_bias[lvl - 1])

    def children_sum(tok, lvl, parent):
        ids, w = routing.ids[lvl][tok, parent], routing.weights[lvl][tok, parent]
        fan = ids.shape[0]
        return sum(w[j] * out_of(tok, lvl, parent * fan + j, int(ids[j])) for j in range(fan))

    rows = [module.proj @ children_sum(t, levels - 1, 0) + module.proj_bias
            for t in range(x.shape[0])]
    return torch.stack(rows)


def route(module: SmoreLinear, x: torch.Tensor) -> Routing:
    hidden = torch.nn.functional.linear(x, module.down, module.down_bias)
    return module.router(hidden[:, : module.router_dim])


# -- T1, T3: identity at init, only the adapter trains ----------------------------------------

@pytest.mark.parametrize("gate,fan", GATES)
@pytest.mark.parametrize("init", ["w_final_zero", "eq_1_layer", "b_zero"])
def test_a_fresh_adapter_leaves_the_logits_bit_identical(gate, fan, init):
    base = tiny_llama()
    ids = torch.randint(3, 96, (2, 9))
    with torch.no_grad():
        expected = base(ids).logits
        smore = SmoreModel(copy.deepcopy(base), config(gate=gate, fan_out=fan, init=init)).eval()
        assert torch.equal(smore(ids).logits, expected)
    half = copy.deepcopy(base).to(torch.bfloat16)
    with torch.no_grad():
        expected = half(ids).logits
        assert torch.equal(SmoreModel(half, config(gate=gate, fan_out=fan)).eval()(ids).logits,
                           expected)


def test_only_adapter_and_router_parameters_train_and_step_zero_reaches_only_p():
    smore = SmoreModel(tiny_llama(), config())
    params = smore.trainable_parameters()
    trainable = {n for n, p in smore.model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in smore.model.named_parameters()
                         if ".mlp." in n and not n.endswith(".base.weight")}
    assert len(params) == len(trainable) and all(".base." not in n for n in trainable)
    smore.train()
    loss = smore(torch.randint(3, 96, (2, 7))).logits.logsumexp(-1).mean()
    loss.backward()
    for name, p in smore.model.named_parameters():
        if not p.requires_grad:
            assert p.grad is None, name
        elif name.endswith(("proj.proj", "proj.proj_bias")):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:  # P = 0: nothing below it receives gradient from the task loss (aux is off)
            assert p.grad is None or not p.grad.any(), name


# -- T2: parameter count ------------------------------------------------------------------------

@pytest.mark.parametrize("gate,fan", GATES)
def test_parameter_count_matches_the_closed_form(gate, fan):
    cfg = config(gate=gate, fan_out=[2, 1] if fan else None, experts=[4, 3], rank=[3, 5])
    d_in, d_out, d_down, k = 12, 10, 6, 5
    module = layer(cfg, d_in, d_out)
    numel = sum(p.numel() for n, p in module.named_parameters() if not n.startswith("base."))
    widths = [0, 12, 12 + 15]  # D_1 = 4*3, D_2 = D_1 + 3*5
    weights = (d_in + d_out) * widths[2] + widths[1] ** 2 + widths[2] ** 2  # spec 4.1
    biases = 12 + 15 + (4 * widths[1] + 3 * widths[2]) + widths[2] + d_out  # a, u, c_1, p
    g = [d_down + k, d_down]  # router inputs of levels 0, 1
    router = d_in * d_down + d_down + sum(gl * k + 2 * k + k * k + s * k for gl, s in zip(g, [4, 3]))
    if gate == "noisy_topk":
        router += g[0] * 4 + g[1] * 3
    assert numel == weights + biases + router == cfg.parameter_count(d_in, d_out)
    smore = SmoreModel(tiny_llama(), cfg)
    assert sum(p.numel() for p in smore.trainable_parameters()) == sum(
        cfg.parameter_count(m.in_features, m.out_features) for m in smore.layers.values())
    # Table 1 of the paper: d = 4096, s = 4, r = 8, L = 2 -> Delta = 5,120 over 2 d D_L
    big = SmoreConfig(base_model="x", experts=[4, 4], rank=[8, 8], fan_out=[2, 2])
    biases = 2 * 4 * 8 + (4 * 32 + 4 * 64) + 64 + 4096  # a, u, c_1, p
    router = 4096 * 24 + 24 + sum(g * 32 + 2 * 32 + 32 * 32 + 4 * 32 for g in (24 + 32, 24))
    assert big.parameter_count(4096, 4096) - biases - router - 2 * 4096 * 64 == 5120


# -- forward against the node form; FLOPs (T11) -------------------------------------------------

@pytest.mark.parametrize("gate,fan", GATES)
@pytest.mark.parametrize("activation", ["tanh", "relu", "identity"])
def test_dense_then_gather_equals_the_node_by_node_tree(gate, fan, activation):
    cfg = config(gate=gate, fan_out=[2, 1, 1] if fan else None, activation=activation,
                 experts=[3, 4, 2], rank=[2, 3, 4], alpha=[4.0, 3.0, 2.0])
    module = randomize(layer(cfg))
    x = torch.randn(5, 12)
    with torch.no_grad():
        routing = route(module, x)
        assert torch.allclose(delta(module, x), node_form(module, x, routing), atol=1e-5)
    for lvl, (ids, w) in enumerate(zip(routing.ids, routing.weights)):  # T9 shapes
        fans = cfg.fan()
        assert ids.shape == (5, cfg.nodes()[lvl + 1], fans[lvl])
        assert all(len(set(row.tolist())) == row.numel() for row in ids.reshape(-1, fans[lvl]))
        if gate == "dense" or (gate == "switch" and fans[lvl] > 1):
            assert torch.allclose(w.sum(-1), torch.ones(()))


def test_multiply_adds_per_token_are_the_closed_form_and_within_the_spec_bound():
    from torch.utils.flop_counter import FlopCounterMode

    for cfg in (config(), config(gate="dense", fan_out=None), config(experts=[2, 4], fan_out=[2, 2])):
        d_in, d_out = 12, 10
        module = randomize(layer(cfg, d_in, d_out))
        x = torch.randn(1, d_in)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(x)
        macs = counter.get_total_flops() // 2 - d_in * d_out  # minus the base Linear
        nodes, widths = cfg.nodes(), cfg.widths()
        sums = sum(nodes[lv] * widths[lv + 1] for lv in range(cfg.levels))  # beta-weighted sums
        assert macs == cfg.multiply_adds(d_in, d_out) + sums
        experts_only = cfg.multiply_adds(d_in, d_out, router=False)
        # spec 4.2: distinct experts min(s_l, F_l) per level, C_l per node, P once
        sparse = sum(min(s, f) * r * (d_in + widths[lv + 1]) for lv, (s, f, r) in
                     enumerate(zip(cfg.experts, nodes, cfg.rank)))
        sparse += sum(nodes[lv] * widths[lv] * widths[lv + 1] for lv in range(1, cfg.levels))
        sparse += widths[-1] * d_out
        lora = widths[-1] * (d_in + d_out)  # a LoRA of rank D_L
        bound = sum(nodes[lv] * widths[lv + 1] * (widths[lv] + cfg.rank[lv])
                    for lv in range(cfg.levels))
        assert 0 <= sparse - lora <= bound
        # dense-then-gather evaluates all s_l experts: more only where a level has s_l > F_l
        assert experts_only - sparse == sum(
            (s - min(s, f)) * r * (d_in + widths[lv + 1])
            for lv, (s, f, r) in enumerate(zip(cfg.experts, nodes, cfg.rank)))


# -- reductions (T5, T6, T7) --------------------------------------------------------------------

def test_one_level_is_the_existing_sparse_lora_moe_with_b_equal_p_u():
    from orchestrator.adapters.lora_moe.gate import LoraMoeGate
    from orchestrator.adapters.lora_moe.gate import Routing as MoeRouting
    from orchestrator.adapters.lora_moe.layer import LoraMoeLinear, RoutingContext

    cfg = config(experts=[4], fan_out=[2], rank=[3], activation="identity")
    module = layer(cfg)
    with torch.no_grad():
        module.proj.normal_()
    x = torch.randn(6, 12)
    a, _ = module.level_a(0)  # [4, 3, 12]
    b = torch.einsum("od,sdr->sor", module.proj, module.up[0])  # B_i = P U_i: [4, 10, 3]
    gate = LoraMoeGate(12, 4, top_k=2)
    moe = LoraMoeLinear(module.base, a.detach(), b.detach(), torch.ones(4), gate, RoutingContext())
    with torch.no_grad():
        routing = route(module, x)
        ids, w = routing.ids[0][:, 0], routing.weights[0][:, 0]  # [N, 2]
        gate.forward = lambda _x: MoeRouting(torch.zeros(6, 4), ids, w)
        assert torch.allclose(delta(module, x), moe(x) - module.base(x), atol=1e-5)


@pytest.mark.parametrize("activation", ["identity", "tanh"])
def test_a_forced_single_path_is_a_chain_of_lora_products(activation):
    cfg = config(experts=[3, 4, 2], fan_out=[2, 2, 1], rank=[2, 3, 4], activation=activation)
    module = layer(cfg)
    with torch.no_grad():
        module.proj.normal_()
        for c in module.carry:
            c.normal_()
    path = [2, 1, 0]
    module.router.force(path)
    x = torch.randn(4, 12)
    mats = [module.level_a(lv)[0][e] for lv, e in enumerate(path)]  # A_{l, i_l}
    ups = [module.up[lv][e] for lv, e in enumerate(path)]  # U_{l, i_l}
    with torch.no_grad():
        if activation == "identity":
            # sum_l P C_{L-1} ... C_{l+1} U_l A_l x
            expected = 0
            for lv in range(3):
                chain = module.proj
                for up in range(2, lv, -1):
                    chain = chain @ module.carry[up - 1]
                expected = expected + x @ (chain @ ups[lv] @ mats[lv]).T
        else:
            o = torch.tanh(x @ (ups[0] @ mats[0]).T)
            for lv in (1, 2):
                o = torch.tanh(x @ (ups[lv] @ mats[lv]).T + o @ module.carry[lv - 1].T)
            expected = o @ module.proj.T
        assert torch.allclose(delta(module, x), expected, atol=1e-5)


def test_identity_activation_with_eq_1_layer_is_a_flat_multi_order_moe():
    cfg = config(experts=[3, 2], fan_out=[2, 1], rank=[2, 3], activation="identity",
                 init="eq_1_layer")
    module = layer(cfg)
    d_out, x = 10, torch.randn(5, 12)
    # B_bar per (level, expert); P's columns: [top-level blocks | level-0 blocks]
    bbar = {(lv, i): torch.randn(d_out, cfg.rank[lv]) for lv in range(2) for i in range(cfg.experts[lv])}
    with torch.no_grad():
        module.proj.copy_(torch.cat([bbar[(1, 0)], bbar[(1, 1)],
                                     bbar[(0, 0)], bbar[(0, 1)], bbar[(0, 2)]], dim=1))
        routing = route(module, x)
        expected = torch.zeros(5, d_out)
        for t in range(5):
            weight_of = {}
            top_ids, top_w = routing.ids[1][t, 0], routing.weights[1][t, 0]
            for j in range(top_ids.numel()):  # beta-hat: path products summed per expert
                e1 = int(top_ids[j])
                weight_of[(1, e1)] = weight_of.get((1, e1), 0) + top_w[j]
                for c in range(routing.ids[0].shape[-1]):
                    e0 = int(routing.ids[0][t, j, c])
                    weight_of[(0, e0)] = weight_of.get((0, e0), 0) + top_w[j] * routing.weights[0][t, j, c]
            for (lv, i), beta in weight_of.items():
                a = module.level_a(lv)[0][i]
                expected[t] += beta * (bbar[(lv, i)] @ a @ x[t])
        assert torch.allclose(delta(module, x), expected, atol=1e-5)


# -- T8, T10, T12 ---------------------------------------------------------------------------------

@pytest.mark.parametrize("gate,fan", GATES)
def test_relabelling_experts_or_reordering_children_changes_nothing(gate, fan):
    cfg = config(gate=gate, fan_out=fan)
    module = randomize(layer(cfg))
    x = torch.randn(6, 12)
    with torch.no_grad():
        before = delta(module, x)
        routing = route(module, x)
        flipped = Routing([i.flip(-1) for i in routing.ids], [w.flip(-1) for w in routing.weights])
        # children reordered inside every parent: node order at level 0 follows level 1's flip
        flipped.ids[0] = flipped.ids[0].flip(1)
        flipped.weights[0] = flipped.weights[0].flip(1)
        low = torch.nn.functional.linear(x, module.down, module.down_bias)[:, module.router_dim:]
        assert torch.allclose(module.propagate(low, flipped), before, atol=1e-5)
        for lvl in range(2):
            perm = torch.randperm(4)
            a, a_b = module.level_a(lvl)
            a.copy_(a[perm].clone())
            a_b.copy_(a_b[perm].clone())
            module.up[lvl].copy_(module.up[lvl][perm].clone())
            module.up_bias[lvl].copy_(module.up_bias[lvl][perm].clone())
            keys = module.router.levels[lvl].keys
            keys.copy_(keys[perm].clone())
            if module.router.levels[lvl].noise is not None:
                noise = module.router.levels[lvl].noise
                noise.copy_(noise[perm].clone())
        assert torch.allclose(delta(module, x), before, atol=1e-5)


def test_children_are_routed_by_their_ancestors_keys_only():
    module = randomize(layer(config(experts=[4, 4], fan_out=[2, 2])))
    x = torch.randn(8, 12)
    with torch.no_grad():
        before = route(module, x)
        keys = module.router.levels[1].keys  # top level
        chosen = set(before.ids[1].flatten().tolist())
        others = [e for e in range(4) if e not in chosen]
        assert others  # 8 tokens x 2 of 4 experts leave one unused with this seed
        keys[others[0]] += 1e-4  # a key off every chain: the same children, the same weights
        after = route(module, x)
        assert torch.equal(after.ids[1], before.ids[1]) and torch.equal(after.ids[0], before.ids[0])
        assert torch.equal(after.weights[0], before.weights[0])
        keys[others[0]] -= 1e-4
        own = int(before.ids[1][0, 0, 0])  # token 0's first top-level node
        keys[own] += 0.5
        after = route(module, x)
        # token 0's top-level nodes (as a set) stay; their children's weights follow the key
        assert set(after.ids[1][0, 0].tolist()) == set(before.ids[1][0, 0].tolist())
        assert not torch.equal(after.weights[0][0].sort(0).values, before.weights[0][0].sort(0).values)


@pytest.mark.parametrize("gate,fan", [("switch", [1, 2]), ("noisy_topk", [1, 2])])
def test_unselected_experts_get_no_gradient_and_selected_ones_do(gate, fan):
    cfg = config(gate=gate, experts=[6, 6], fan_out=fan, rank=[2, 2], balance=0.0)
    module = randomize(layer(cfg))
    x = torch.randn(2, 12)
    with torch.no_grad():
        routing = route(module, x)
    module.router.forward = lambda *a, **k: routing  # the same routing during backward
    delta(module, x).pow(2).sum().backward()
    for lvl in range(2):
        used = set(routing.ids[lvl].flatten().tolist())
        start = module.router_dim + module.widths[lvl]
        grad_a = module.down.grad[start:start + 12].view(6, 2, 12)
        grad_ab = module.down_bias.grad[start:start + 12].view(6, 2)
        assert len(used) < 6
        for e in range(6):
            grads = [grad_a[e], grad_ab[e], module.up[lvl].grad[e], module.up_bias[lvl].grad[e]]
            if e in used:
                assert any(g.abs().sum() > 0 for g in grads), (lvl, e)
            else:
                assert all(not g.any() for g in grads), (lvl, e)


def test_balance_loss_values_and_padding_invariance():
    module = randomize(layer(config(experts=[4, 4], fan_out=[2, 2])))
    x = torch.randn(5, 12)
    with torch.no_grad():
        hidden = torch.nn.functional.linear(x, module.down, module.down_bias)[:, :6]
        aux = module.router(hidden, aux=True).aux
        padded = torch.cat([hidden, torch.randn(3, 6)])
        valid = torch.tensor([True] * 5 + [False] * 3)
        aux_padded = module.router(padded, valid, aux=True).aux
        assert aux > 0 and torch.allclose(aux, aux_padded)
        full = delta(module, torch.cat([x, torch.randn(3, 12)]))
        assert torch.allclose(full[:5], delta(module, x), atol=1e-6)  # per-token routing
        dense = layer(config(gate="dense", fan_out=None))
        assert dense.router(hidden, aux=True).aux is None
    from orchestrator.adapters.smore.gate import _switch

    uniform = torch.zeros(4, 1, 4)  # equal logits: ties broken evenly by a permutation below
    uniform[torch.arange(4), 0, torch.arange(4)] = 1e-6
    uniform[torch.arange(4), 0, (torch.arange(4) + 1) % 4] = 1e-6
    _, _, loss = _switch(uniform, 2, None, 0.01)
    assert loss == pytest.approx(0.01 * 2, rel=1e-4)  # rho * f when perfectly balanced


# -- model level: KV cache, save/load, config errors ----------------------------------------------

def trained_like(smore: SmoreModel) -> SmoreModel:
    for module in smore.layers.values():
        randomize(module, seed=hash(module.name) % 1000)
        with torch.no_grad():
            module.proj.mul_(0.05)
    return smore


def test_generation_with_the_kv_cache_equals_generation_without():
    smore = trained_like(SmoreModel(tiny_llama(), config())).eval()
    ids = torch.randint(3, 96, (1, 6))
    base = tiny_llama()
    with torch.no_grad():
        outs = [smore.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                               min_new_tokens=8, do_sample=False, use_cache=cache,
                               output_scores=True, return_dict_in_generate=True, pad_token_id=0)
                for cache in (True, False)]
        acts = not torch.allclose(smore(ids).logits, base(ids).logits, atol=1e-3)
    assert torch.equal(outs[0].sequences, outs[1].sequences)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(outs[0].scores, outs[1].scores))
    assert acts  # the adapter changes the model


def test_save_and_load_give_identical_logits(tmp_path):
    smore = trained_like(SmoreModel(tiny_llama(), config(gate="noisy_topk"))).eval()
    ids = torch.randint(3, 96, (2, 7))
    smore.save(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"adapter.safetensors", "smore_config.json"}
    loaded = SmoreModel.load(tmp_path, tiny_llama()).eval()
    with torch.no_grad():
        assert torch.equal(smore(ids).logits, loaded(ids).logits)
    other = SmoreModel(tiny_llama(), config(target_modules=["up_proj"]))
    from safetensors.torch import load_file

    with pytest.raises(ConfigError, match="does not fit"):
        other.load_adapter_state(load_file(str(tmp_path / "adapter.safetensors")))


@pytest.mark.parametrize("values,message", [
    ({"fan_out": [5, 2]}, "fan_out\\[0\\] is 5"),
    ({"rank": [8]}, "rank has 1 entries for 2 levels"),
    ({"gate": "noisy_topk", "fan_out": [4, 2]}, "needs fan_out < experts"),
    ({"gate": "dense", "fan_out": [2, 2]}, "must be left out"),
    ({"gate": "switch", "fan_out": None}, "needs fan_out"),
    ({"levels": 2}, "levels"),
])
def test_config_errors_name_the_field(values, message):
    from orchestrator.config import validate_model

    with pytest.raises(ConfigError, match=message):
        validate_model(SmoreConfig, {"base_model": "x", **values}, "S'MoRE options")


def test_target_modules_and_last_layers_choose_the_wrapped_linears():
    smore = SmoreModel(tiny_llama(), config(target_modules=["down_proj", "q_proj"], last_layers=1))
    assert list(smore.layers) == ["model.layers.1.mlp.down_proj", "model.layers.1.self_attn.q_proj"]
    with pytest.raises(ConfigError, match="its Linear modules are"):
        SmoreModel(tiny_llama(), config(target_modules=["nope"]))
    assert smore.usage_shares()["model.layers.1.mlp.down_proj"] == [[0.0] * 4, [0.0] * 4]
