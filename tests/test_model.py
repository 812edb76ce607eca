"""Tier-2 transformer: shapes, causality, BOS hygiene, zero-init identities, XSA, GQA, RoPE, config, params."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import golf.model as gm
from golf.errors import ConfigError
from golf.model import (Attention, ModelConfig, Transformer, apply_rope, bigram_buckets, param_counts,
                        params_by_group, rope_cos_sin)

V, BOS = 64, 1


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=V, num_layers=3, model_dim=32, num_heads=4, num_kv_heads=2, mlp_mult=2)
    base.update(kw)
    return ModelConfig(**base)


ALL_ON = dict(xsa=True, smear_gate=True, bigram_buckets=37, bigram_dim=8, unet_skips=True, rope_dims=4,
              ln_scale=True, activation="leaky_relu2", bos_id=BOS)


def build(cfg: ModelConfig, seed: int = 0, perturb: bool = False) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(cfg)
    if perturb:  # move zero-init params (O, W2, smear, bigram) off zero so every path carries signal
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
    return model


def ids(B=2, T=16, seed=1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, V, (B, T), generator=g)  # avoid BOS unless a test puts it there


def test_shapes_and_hidden_times_head_is_forward():
    model = build(tiny(**ALL_ON), perturb=True)
    x = ids()
    logits = model(x)
    assert logits.shape == (2, 16, V)
    h = model.hidden(x)
    assert h.shape == (2, 16, 32)
    torch.testing.assert_close(h @ model.head_weight.T, logits)
    assert model.head_weight is model.tok_emb.weight
    assert model.softcap == 30.0


@pytest.mark.parametrize("extra", [{}, dict(ve_dim=8, smear_form="channel"), dict(skip_gates=True, layer0_attn=False, attn_gate=True, parallel_residual="two_lane", parallel_start=1),
                                   dict(parallel_residual="gptj", parallel_start=1)],
                         ids=["all_on", "r1147_parts", "r1063_parts", "gptj"])
def test_every_parameter_trains_from_its_init(extra):
    """No parameter is stuck at its init: each has moved after three Adam steps from the unperturbed init (the
    other tests nudge the zero-initialised ones first, so they would not see a pair that keeps each other at
    zero, as BigramHash's table and projection did when both were zero)."""
    model = build(tiny(**ALL_ON, **extra))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = ids(B=4, T=16)
    for _ in range(3):
        loss = F.cross_entropy(model(x[:, :-1]).reshape(-1, V), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert [n for n, p in model.named_parameters() if torch.equal(p, before[n])] == []


def test_untied_head_is_separate_and_tagged():
    model = build(tiny(tied_embedding=False), perturb=True)
    assert model.head_weight is model.head.weight
    assert model.head.weight._golf_group == "embed"
    x = ids()
    torch.testing.assert_close(model.hidden(x) @ model.head.weight.T, model(x))


@pytest.mark.parametrize("num_layers", [3, 4])
def test_causality_every_option_on(num_layers):
    model = build(tiny(num_layers=num_layers, **ALL_ON), perturb=True)
    x = ids(T=24)
    x[0, 5] = BOS
    base = model(x)
    for t in (1, 7, 16):
        y = x.clone()
        y[:, t:] = torch.randint(0, V, y[:, t:].shape, generator=torch.Generator().manual_seed(t))
        y[:, t] = BOS if t == 7 else (y[:, t] + 1) % V  # a BOS in the changed tail must not reach back either
        out = model(y)
        torch.testing.assert_close(out[:, :t], base[:, :t], atol=1e-6, rtol=0)
        assert (out[:, t] - base[:, t]).abs().max() > 1e-4  # the change is visible where it may be


def test_bigram_buckets_reset_at_bos_and_window_start():
    buckets = 37
    a = torch.tensor([[5, 9, BOS, 12, 40]])
    b = torch.tensor([[7, 3, BOS, 12, 40]])  # different first document
    ba, bb = bigram_buckets(a, buckets, BOS), bigram_buckets(b, buckets, BOS)
    assert ba[0, 0] == buckets - 1 and ba[0, 2] == buckets - 1  # window start and BOS: reserved
    assert torch.equal(ba[:, 2:], bb[:, 2:])                   # the new document never sees the old one
    assert ba[0, 1] != bb[0, 1]                                 # but an ordinary pair is hashed
    assert int(ba[0, 1]) == (36313 * 9 ^ 27191 * 5) % (buckets - 1)
    assert ba.min() >= 0 and ba.max() < buckets


def test_embedding_inputs_after_bos_ignore_previous_document():
    model = build(tiny(**ALL_ON), perturb=True)
    a = torch.tensor([[5, 9, 33, BOS, 12, 40, 41]])
    b = torch.tensor([[8, 2, 50, BOS, 12, 40, 41]])
    torch.testing.assert_close(model.embed(a)[:, 3:], model.embed(b)[:, 3:], atol=0, rtol=0)
    # and the same embedding inputs without the BOS mask would differ (the test can fail)
    c = torch.tensor([[5, 9, 33, 7, 12, 40, 41]])
    d = torch.tensor([[8, 2, 50, 7, 12, 40, 41]])
    assert not torch.equal(model.embed(c)[:, 3:], model.embed(d)[:, 3:])


def test_smear_gate_masks_bos_position():
    model = build(tiny(smear_gate=True, bos_id=BOS), perturb=True)
    x = torch.randn(1, 4, 32)
    tok = torch.tensor([[4, BOS, 6, 7]])
    out = model.smear(x, tok)
    torch.testing.assert_close(out[:, 1], x[:, 1])   # BOS: untouched
    assert not torch.allclose(out[:, 2], x[:, 2])    # others mix in their predecessor
    torch.testing.assert_close(out[:, 0], x[:, 0])   # window start: x_{-1} = 0


@pytest.mark.parametrize("option", [dict(smear_gate=True), dict(bigram_buckets=37, bigram_dim=8)])
def test_zero_init_options_are_identity(option):
    plain = build(tiny())
    with_option = build(tiny(**option))
    # copy the shared weights across, so the only difference is the zero-initialised option
    shared = {k: v for k, v in with_option.state_dict().items() if k in plain.state_dict()}
    plain.load_state_dict(shared)
    x = ids()
    torch.testing.assert_close(with_option(x), plain(x), atol=0, rtol=0)


def test_value_embedding_reaches_only_its_layers_values():
    """VE (R1147): scale * P(E[id]) added to the V projection of ve_layers (default: the last two), each times
    its own scale; with those scales at 0 the model is the one without VE, and it has exactly VE's parameters
    more: the table, the projection to the values' width, the scale and one scale per layer."""
    cfg = tiny(ve_dim=8)
    assert cfg.ve_layers == (1, 2)
    with_ve, plain = build(cfg, perturb=True), build(tiny())
    plain.load_state_dict({k: v for k, v in with_ve.state_dict().items() if not k.startswith("ve.")})
    kv = cfg.num_kv_heads * cfg.head_dim
    assert gm.param_counts(with_ve)["ve"] == V * 8 + 8 * kv + 1 + 2
    x = ids()
    assert not torch.allclose(with_ve(x), plain(x))
    with torch.no_grad():
        with_ve.ve.layer_scales.zero_()
    torch.testing.assert_close(with_ve(x), plain(x), atol=0, rtol=0)
    # One layer: the first blocks' outputs are the plain model's until that layer.
    one = build(tiny(ve_dim=8, ve_layers=[2], unet_skips=False), perturb=True)
    base = build(tiny(unet_skips=False))
    base.load_state_dict({k: v for k, v in one.state_dict().items() if not k.startswith("ve.")})
    h_one, h_base = one.embed(x), base.embed(x)
    x_one, x_base = h_one, h_base
    for i in range(2):
        x_one, x_base = one.blocks[i](x_one, h_one), base.blocks[i](x_base, h_base)
    torch.testing.assert_close(x_one, x_base, atol=0, rtol=0)
    assert not torch.allclose(one(x), base(x))
    with pytest.raises(ConfigError, match="ve_layers"):
        tiny(ve_dim=8, ve_layers=[3])
    with pytest.raises(ConfigError, match="no layer 0 when layer0_attn is off"):
        tiny(ve_dim=8, ve_layers=[0, 2], layer0_attn=False)


def test_skip_gates_lerp_the_skip_in_half_and_half_at_init():
    """R1063: lerp(w * skip, x, sigmoid(g)), g zero-init; the decoder stream otherwise adds w * skip."""
    gated, plain = build(tiny(skip_gates=True), perturb=True), build(tiny())
    plain.load_state_dict({k: v for k, v in gated.state_dict().items() if k != "skip_gates"})
    with torch.no_grad():
        gated.skip_gates.zero_()
    x, skip = torch.randn(2, 5, 32), torch.randn(2, 5, 32)
    w = gated.skip_weights[0]
    torch.testing.assert_close(gated.skip(x, skip, 0), 0.5 * x + 0.5 * w * skip)
    torch.testing.assert_close(plain.skip(x, skip, 0), x + w * skip)
    assert gm.param_counts(gated)["skip_gates"] == gm.param_counts(plain)["skip_weights"]


def test_layer0_without_attention_is_mlp_only():
    """R1063's DISABLE_LAYER0_ATTN: block 0 mixes x0 in and runs its MLP; it has no attention parameters."""
    off, on = build(tiny(layer0_attn=False), perturb=True), build(tiny())
    assert off.blocks[0].attn is None and off.blocks[1].attn is not None
    attn_params = sum(p.numel() for p in on.blocks[0].attn.parameters()) + on.blocks[0].attn_scale.numel()
    assert gm.param_counts(on)["total"] - gm.param_counts(off)["total"] == attn_params
    b, x, x0 = off.blocks[0], torch.randn(2, 5, 32), torch.randn(2, 5, 32)
    mixed = b.resid_mix[0] * x + b.resid_mix[1] * x0
    torch.testing.assert_close(b(x, x0), mixed + b.mlp_scale * b.mlp(gm.rms_norm(mixed) * b.in_scale))


def test_the_sparse_attention_gate_scales_each_heads_output():
    """y_h <- sigmoid(scale * W_h . x[:window]) * y_h after XSA, x the attention's input; W zero: half at init."""
    cfg = tiny(attn_gate=True, attn_gate_window=5, attn_gate_scale=2.0, xsa=True)
    torch.manual_seed(0)
    gated, plain = Attention(cfg, xsa=True), Attention(tiny(xsa=True), xsa=True)
    plain.load_state_dict({k: v for k, v in gated.state_dict().items() if k != "gate"})
    x = torch.randn(2, 6, 32)
    torch.testing.assert_close(gated.attend(x)[0], 0.5 * plain.attend(x)[0])
    with torch.no_grad():
        gated.gate.normal_()
    g = torch.sigmoid(2.0 * x[..., :5] @ gated.gate.T)                        # [B, T, H]
    torch.testing.assert_close(gated.attend(x)[0], g.unsqueeze(-1) * plain.attend(x)[0])
    assert gated.gate.numel() == cfg.num_heads * 5


def test_gptj_parallel_blocks_read_one_input():
    """PR #1412's form from parallel_start on: x_in + attn_scale * attn(N(x_in) s) + mlp_scale * mlp(N(x_in) s)."""
    model = build(tiny(parallel_residual="gptj", parallel_start=2), perturb=True)
    assert [b.gptj for b in model.blocks] == [False, False, True]
    b, x, x0 = model.blocks[2], torch.randn(2, 5, 32), torch.randn(2, 5, 32)
    x_in = b.resid_mix[0] * x + b.resid_mix[1] * x0
    n = gm.rms_norm(x_in) * b.in_scale
    torch.testing.assert_close(b(x, x0), x_in + b.attn_scale * b.attn(n) + b.mlp_scale * b.mlp(n))


def test_two_lane_parallel_residuals_are_the_sequential_stack_when_the_lanes_agree():
    """R1063's form: with every lane scale 1, every write weight 1 and x0 mixed into neither read (R1063 mixes
    x0 into what a sub-layer reads, not into the lanes), the two lanes stay equal and the stack is the
    sequential one; the learned weights then let attention and MLP see different streams."""
    lanes = build(tiny(parallel_residual="two_lane", parallel_start=1), perturb=True)
    plain = build(tiny())
    plain.load_state_dict({k: v for k, v in lanes.state_dict().items() if "lane_" not in k})
    assert [b.lanes for b in lanes.blocks] == [False, True, True]
    assert gm.param_counts(lanes)["total"] - gm.param_counts(plain)["total"] == 2 * (2 + 4)
    x = ids()
    with torch.no_grad():
        for b, p in zip(lanes.blocks[1:], plain.blocks[1:]):
            b.lane_resid.fill_(1.0)
            b.lane_post.fill_(1.0)
            b.resid_mix.copy_(torch.stack((torch.ones(32), torch.zeros(32))))
            p.resid_mix.copy_(b.resid_mix)
    torch.testing.assert_close(lanes(x), plain(x), atol=1e-6, rtol=0)
    with torch.no_grad():
        lanes.blocks[1].lane_post[1, 0] = 0.0  # the first parallel MLP no longer writes into attention's lane
    assert not torch.allclose(lanes(x), plain(x), atol=1e-4)
    # One block by the formula: attention reads lane 0, the MLP lane 1.
    b, l0, l1, x0 = lanes.blocks[2], torch.randn(2, 5, 32), torch.randn(2, 5, 32), torch.randn(2, 5, 32)
    with torch.no_grad():
        b.lane_resid.copy_(torch.tensor([0.9, 1.2]))
        b.lane_post.copy_(torch.tensor([[1.0, 0.3], [0.2, 1.5]]))
    a = b.attn_scale * b.attn(gm.rms_norm(b.mix(l0, x0)) * b.in_scale)
    e0, e1 = 0.9 * l0 + a, 0.9 * l1 + 0.3 * a
    m = b.mlp_scale * b.mlp(gm.rms_norm(b.mix(e1, x0)) * b.in_scale)
    got = b.forward_lanes(l0, l1, x0)
    torch.testing.assert_close(got[0], 1.2 * e0 + 0.2 * m)
    torch.testing.assert_close(got[1], 1.2 * e1 + 1.5 * m)


# --- depth recurrence --------------------------------------------------------------------------------------

RECUR = dict(num_layers=4, recur_layers=[1, 2], xsa=[0, 2, 3, 5], ve_dim=8, ve_layers=[2, 5], skip_gates=True,
             smear_gate=True, ln_scale=True, unet_skips=True, rope_dims=4, activation="leaky_relu2", bos_id=BOS)


def test_virtual_maps_are_the_records_stacks():
    """R1063: layers 4-5 of 11 once more (13 virtual); PR #1412: twice more in its last phase (15)."""
    r1063 = ModelConfig(vocab_size=V, num_layers=11, recur_layers=[4, 5])
    assert r1063.virtual_maps() == (tuple(range(11)), (0, 1, 2, 3, 4, 5, 4, 5, 6, 7, 8, 9, 10))
    assert r1063.num_virtual == 13 and r1063.recur_phases == 1
    loops = ModelConfig(vocab_size=V, num_layers=11, recur_layers=[4, 5], recur_passes=2)
    assert loops.virtual_maps()[2] == (0, 1, 2, 3, 4, 5, 4, 5, 4, 5, 6, 7, 8, 9, 10) and loops.num_virtual == 15
    assert ModelConfig(vocab_size=V).virtual_maps() == (tuple(range(9)),)
    for bad in ([1, 3], [2, 1], [4], "1,2"):
        with pytest.raises(ConfigError, match="recur_layers"):
            tiny(recur_layers=bad)
    with pytest.raises(ConfigError, match="recur_passes"):
        tiny(recur_layers=[1], recur_passes=0)
    with pytest.raises(ConfigError, match="xsa"):  # indices over virtual layers: 5 of 5 is out
        tiny(recur_layers=[1, 2], xsa=[5])
    assert tiny(recur_layers=[1, 2], xsa=True).xsa_layers() == frozenset(range(5))


def unrolled(model: Transformer, phase: int) -> Transformer:
    """The plain transformer with one physical layer per virtual layer of `phase`: virtual layer v's scalars, its
    physical layer's matrices (a repeat pass's own MLP when untied), the same embeddings and skips."""
    cfg = model.cfg
    stack = model.virtual_maps[phase]
    ve_layers = [i for i in cfg.ve_layers if i < len(stack)]  # ascending here
    plain = Transformer(ModelConfig(**{**cfg.__dict__, "num_layers": len(stack), "recur_layers": (),
                                       "ve_layers": ve_layers, "xsa": [i for i in cfg.xsa if i < len(stack)]}))
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith(("blocks.", "recur_"))}
    sd["ve.layer_scales"] = model.ve.layer_scales[:len(ve_layers)]
    sd["skip_weights"] = model.skip_weights[:len(stack) // 2]
    sd["skip_gates"] = model.skip_gates[:len(stack) // 2]
    passes = {}
    for v, layer in enumerate(stack):
        n = passes[layer] = passes.get(layer, -1) + 1
        scal, w = model.blocks[v], model.blocks[layer]
        for name in ("attn_scale", "mlp_scale", "resid_mix"):
            if getattr(scal, name) is not None:
                sd[f"blocks.{v}.{name}"] = getattr(scal, name)
        for k, t in w.attn.state_dict().items():
            sd[f"blocks.{v}.attn.{k}"] = t
        sd[f"blocks.{v}.attn.q_gain"] = scal.attn.q_gain if scal.attn is not None else scal.q_gain
        mlp = w.mlp if not n or model.recur_mlps is None else \
            model.recur_mlps[(n - 1) * len(cfg.recur_layers) + layer - cfg.recur_layers[0]]
        for k, t in mlp.state_dict().items():
            sd[f"blocks.{v}.mlp.{k}"] = t
    plain.load_state_dict(sd)
    return plain


@pytest.mark.parametrize("untie", [False, True])
def test_each_phase_is_the_plain_stack_it_unrolls_to(untie):
    """Phase k computes the plain transformer of its virtual stack: per-virtual-layer scalars, LN scale, XSA, VE
    and U-Net over virtual layers, shared (or, untied, per pass) matrices."""
    model = build(tiny(**RECUR, recur_passes=2, recur_untie_mlp=untie), perturb=True)
    x = ids()
    for phase in range(3):
        model.set_phase(phase)
        torch.testing.assert_close(model(x), unrolled(model, phase)(x))
    assert len(model.blocks) == 8 and model.skip_weights.shape == (4, 32)


def test_untied_pass_mlps_start_as_the_base_layers_and_the_phase_travels_in_the_state_dict():
    model = build(tiny(**RECUR, recur_untie_mlp=True), perturb=True)
    x = ids()
    before = model(x)
    assert model.phase == 0 and int(model.recur_phase) == 0
    model.set_phase(1)  # R1063's activation: each repeated layer's MLP copied into its pass's own
    for i, layer in enumerate((1, 2)):
        for k, t in model.blocks[layer].mlp.state_dict().items():
            assert torch.equal(model.recur_mlps[i].state_dict()[k], t)
    with torch.no_grad():
        model.recur_mlps[0].fc.weight.add_(1.0)
    model.set_phase(1)  # no new pass: nothing copied again
    assert not torch.equal(model.recur_mlps[0].fc.weight, model.blocks[1].mlp.fc.weight)
    again = build(tiny(**RECUR, recur_untie_mlp=True))
    again.load_state_dict(model.state_dict())
    assert again.phase == 1
    torch.testing.assert_close(again(x), model(x))
    assert not torch.allclose(model(x), before)
    with pytest.raises(ConfigError, match="phase 2"):
        model.set_phase(2)


def test_a_phase_trains_only_what_it_runs():
    """Phase 0 leaves the virtual-only layers and the pass MLPs without a gradient (DDP runs with
    find_unused_parameters for it); phase 1 reaches every parameter."""
    model = build(tiny(**RECUR, recur_untie_mlp=True), perturb=True)
    x = ids()
    F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten()).backward()
    idle = sorted(n for n, p in model.named_parameters() if p.grad is None)
    assert idle == sorted([f"blocks.{v}.{n}" for v in (4, 5) for n in ("q_gain", "attn_scale", "mlp_scale",
                                                                       "resid_mix")]
                          + [f"recur_mlps.{i}.{m}.weight" for i in (0, 1) for m in ("fc", "proj")])
    model.zero_grad(set_to_none=True)
    model.set_phase(1)
    F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten()).backward()
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in model.parameters())


def test_gptq_hessians_sum_over_the_passes_of_a_shared_matrix():
    """A matrix that runs twice gets one Hessian over both passes' inputs; an untied pass MLP its own."""
    from golf.quant import collect_hessians

    for untie in (False, True):
        model = build(tiny(**RECUR, recur_untie_mlp=untie), perturb=True)
        model.set_phase(1)
        x = ids()
        seen = {}
        mods = {"q": model.blocks[1].attn.q, "fc": model.blocks[1].mlp.fc}
        hooks = [m.register_forward_pre_hook(lambda m_, a, k=k: seen.setdefault(k, []).append(a[0].detach()))
                 for k, m in mods.items()]
        model(x)
        for h in hooks:
            h.remove()
        H = collect_hessians(model, [x])
        assert len(seen["q"]) == 2 and len(seen["fc"]) == (1 if untie else 2)
        for key, name in (("q", "blocks.1.attn.q.weight"), ("fc", "blocks.1.mlp.fc.weight")):
            inputs = torch.cat([a.reshape(-1, a.shape[-1]) for a in seen[key]])
            torch.testing.assert_close(H[name], inputs.T @ inputs / inputs.shape[0], rtol=1e-4, atol=1e-5)
        assert ("recur_mlps.0.fc.weight" in H) == untie


def test_recurrent_model_compiles_per_phase_without_graph_breaks():
    model = build(tiny(**RECUR, recur_untie_mlp=True), perturb=True)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    x = ids()
    for phase in (0, 1):
        model.set_phase(phase)
        torch.testing.assert_close(compiled(x), model(x))


def test_channel_smear_is_r1147s_half_and_half_at_init():
    """R1147's smear, after the embedding norm: (1 - s) x_t + s x_{t-1}, s = sigmoid(0) = 0.5 per channel."""
    model = build(tiny(smear_gate=True, smear_form="channel"))
    assert gm.param_counts(model)["smear"] == 32
    x = ids()
    normed = gm.rms_norm(model.tok_emb(x))
    expect = 0.5 * normed + 0.5 * F.pad(normed[:, :-1], (0, 0, 1, 0))
    torch.testing.assert_close(model.embed(x), expect)


def test_xsa_output_orthogonal_to_own_value():
    cfg = tiny(num_kv_heads=2)
    torch.manual_seed(0)
    x = torch.randn(2, 10, 32)
    on, off = Attention(cfg, xsa=True), Attention(cfg, xsa=False)
    off.load_state_dict(on.state_dict())
    for attn, expect_zero in ((on, True), (off, False)):
        y, v = attn.attend(x)                                   # y [B,T,H,D], v [B,T,Hkv,D]
        v_hat = F.normalize(v, dim=-1).repeat_interleave(cfg.num_heads // cfg.num_kv_heads, dim=2)
        dots = (y * v_hat).sum(-1)
        assert (dots.abs().max() < 1e-5) == expect_zero
    # XSA only removes the own-value component: the orthogonal part is unchanged
    y_on, v = on.attend(x)
    y_off, _ = off.attend(x)
    v_hat = F.normalize(v, dim=-1).repeat_interleave(2, dim=2)
    torch.testing.assert_close(y_on, y_off - (y_off * v_hat).sum(-1, keepdim=True) * v_hat)


def _expand_kv(gqa: Transformer, mha: Transformer, groups: int):
    """Load gqa's weights into an MHA model, K and V rows repeated per query head of each group."""
    state = gqa.state_dict()
    hd = gqa.cfg.head_dim
    for k, w in list(state.items()):
        if k.endswith(("attn.k.weight", "attn.v.weight")):
            state[k] = w.view(-1, hd, w.size(1)).repeat_interleave(groups, dim=0).reshape(-1, w.size(1))
    mha.load_state_dict(state)


@pytest.mark.parametrize("native_gqa", [True, False])
def test_gqa_matches_expanded_mha(monkeypatch, native_gqa):
    from golf import attention

    monkeypatch.setattr(attention, "_GQA", native_gqa and attention._GQA)
    gqa = build(tiny(num_kv_heads=2, xsa=True, rope_dims=4), perturb=True)
    mha = build(tiny(num_kv_heads=4, xsa=True, rope_dims=4))
    _expand_kv(gqa, mha, groups=2)
    x = ids()
    torch.testing.assert_close(gqa(x), mha(x), atol=1e-5, rtol=1e-5)


def test_partial_rope_leaves_tail_dims_position_free():
    T, H, D, r = 8, 2, 16, 6
    x = torch.randn(1, 1, H, D).expand(1, T, H, D)  # the same vector at every position
    cos, sin = rope_cos_sin(T, r, 1e4)
    out = apply_rope(x, cos, sin)
    torch.testing.assert_close(out[..., r:], x[..., r:], atol=0, rtol=0)
    torch.testing.assert_close(out[:, 0], x[:, 0])                 # position 0: no rotation
    assert not torch.allclose(out[:, 3, :, :r], x[:, 3, :, :r])  # rotated dims depend on position
    torch.testing.assert_close(out[..., :r].norm(dim=-1), x[..., :r].norm(dim=-1))  # a rotation


def test_rope_relative_positions():
    T, D = 12, 8
    cos, sin = rope_cos_sin(T, D, 1e4)
    q = torch.randn(1, 1, 1, D).expand(1, T, 1, D)
    k = torch.randn(1, 1, 1, D).expand(1, T, 1, D)
    rq, rk = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    dot = lambda i, j: (rq[0, i, 0] * rk[0, j, 0]).sum()  # noqa: E731
    torch.testing.assert_close(dot(5, 2), dot(9, 6))
    torch.testing.assert_close(dot(3, 3), dot(11, 11))


@pytest.mark.parametrize("kw, field", [
    (dict(model_dim=30), "model_dim"),
    (dict(num_kv_heads=3), "num_kv_heads"),
    (dict(rope_dims=5), "rope_dims"),
    (dict(rope_dims=10), "rope_dims"),
    (dict(activation="gelu"), "activation"),
    (dict(xsa=[0, 7]), "xsa"),
    (dict(recur_layers=[0, 2]), "recur_layers"),
    (dict(bos_id=V), "bos_id"),
    (dict(bigram_buckets=1), "bigram_buckets"),
])
def test_config_errors_name_the_setting(kw, field):
    with pytest.raises(ConfigError, match=rf"ModelConfig\.{field}\b"):
        tiny(**kw)


def test_config_defaults():
    cfg = tiny()
    assert cfg.head_dim == 8 and cfg.rope_dims == 8
    assert tiny(xsa=True).xsa_layers() == {0, 1, 2} and tiny(xsa=[2]).xsa_layers() == {2}
    with pytest.raises(TypeError):
        ModelConfig()  # vocab_size has no default


def test_param_counts_sum_and_baseline_size():
    model = build(tiny(**ALL_ON, tied_embedding=False))
    counts = param_counts(model)
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert sum(v for k, v in counts.items() if k != "total") == counts["total"]
    assert counts["bigram"] == 37 * 8 + 8 * 32 + 1 and counts["smear"] == 12 + 1 and counts["head"] == V * 32
    # the challenge baseline (ANCHOR §2): 9L, d512, 8/4 heads, MLP 2x, V1024, tied -> 17,059,912
    base = param_counts(Transformer(ModelConfig(vocab_size=1024)))
    assert base["total"] == 17_059_912


def test_parameter_tags():
    model = build(tiny(**ALL_ON))
    groups = params_by_group(model)
    assert {id(p) for p in groups["embed"]} == {id(model.tok_emb.weight), id(model.bigram.table)}
    assert all(p.dim() == 2 for p in groups["muon"])
    assert len(groups["muon"]) == 6 * model.cfg.num_layers
    assert any(p is model.bigram.proj.weight for p in groups["scalar"])
    assert all(p.dim() <= 1 or p is model.bigram.proj.weight or p is model.skip_weights
               or p.shape[0] == 2 for p in groups["scalar"])  # resid_mix is (2, d)
    ema = copy.deepcopy(model)  # deepcopy drops Parameter attributes; params_by_group re-tags
    ema_groups = params_by_group(ema)
    assert {g: len(ps) for g, ps in ema_groups.items()} == {g: len(ps) for g, ps in groups.items()}
    assert all(getattr(p, "_golf_group", None) for p in ema.parameters())
    model.blocks[0].extra = torch.nn.Parameter(torch.zeros(3))  # an undeclared parameter is an error
    with pytest.raises(ConfigError, match="blocks.0.extra"):
        params_by_group(model)


def test_backward_reaches_every_parameter():
    x = ids()
    at_init = build(tiny(**ALL_ON))
    F.cross_entropy(at_init(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten()).backward()
    assert all(p.grad is not None for p in at_init.parameters())
    model = build(tiny(**ALL_ON), perturb=True)
    F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, name


def test_bf16_autocast_runs():
    model = build(tiny(**ALL_ON), perturb=True)
    x = ids()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    torch.testing.assert_close(out.float(), model(x), atol=0.1, rtol=0.1)


def test_compiles_without_graph_breaks():
    model = build(tiny(**ALL_ON), perturb=True)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    x = ids()
    torch.testing.assert_close(compiled(x), model(x))


def test_the_fused_mlp_compiles_and_trains_without_graph_breaks():
    model = build(tiny(**ALL_ON, fused_mlp="on"), perturb=True)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    x = ids()
    compiled(x).square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model(x).square().mean().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, msg=n)


def stream_dtypes(model: Transformer, x: torch.Tensor, amp: bool) -> set:
    """The dtypes of every block's output (the residual stream) in one forward."""
    seen = set()
    handles = [b.register_forward_hook(lambda m, a, out: seen.add(out.dtype)) for b in model.blocks]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        model(x)
    for h in handles:
        h.remove()
    return seen


@pytest.mark.parametrize("extra", [{}, dict(parallel_residual="two_lane", parallel_start=1, skip_gates=True)])
def test_the_bf16_stream_is_bf16_under_autocast_and_nothing_else_changes(extra):
    x = ids()
    plain = build(tiny(**ALL_ON, **extra), perturb=True)
    bf16 = build(tiny(**ALL_ON, **extra, bf16_stream=True), perturb=True)
    assert stream_dtypes(plain, x, amp=True) == {torch.float32}
    assert stream_dtypes(bf16, x, amp=True) == {torch.bfloat16}
    assert stream_dtypes(bf16, x, amp=False) == {torch.float32}
    assert torch.equal(bf16(x), plain(x))  # without autocast the option is inert
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = plain(x).float(), bf16(x).float()
    torch.testing.assert_close(b, a, atol=0.1, rtol=0.1)
    assert not torch.equal(a, b)


# --- the prior gate ---------------------------------------------------------------------------------------

def gated_lm(mode: str, seed: int = 0, perturb: bool = True):
    """A perturbed tiny transformer with K = 3 prior rows over random tables, and its inputs."""
    from golf.model import TieredLM
    model = build(tiny(**ALL_ON, prior_gate=mode, prior_columns=3), seed=seed, perturb=perturb)
    g = torch.Generator().manual_seed(2)
    tables = torch.randn(20, V, generator=g)
    x = ids()
    rows = torch.randint(-1, 20, (*x.shape, 3), generator=g).int()
    y = ids(seed=3)
    return TieredLM(model, tables, trainable=False), x, rows, y


@pytest.mark.parametrize("mode", ["fixed", "scalar", "gate"])
def test_a_gate_at_init_is_the_ungated_model(mode):
    """a = 1, w = 0, b = 0: every prior row enters at weight exactly 1, so the loss is the ungated model's, bit
    for bit (the gated model is built from the same seed; the gate's init draws no random numbers)."""
    lm, x, rows, y = gated_lm("off", perturb=False)
    gated, *_ = gated_lm(mode, perturb=False)
    gated.transformer.load_state_dict(lm.transformer.state_dict(), strict=False)
    assert torch.equal(gated.transformer.prior_scales(gated.transformer.hidden(x)), torch.ones(*x.shape, 3))
    assert torch.equal(gated(x, rows, y), lm(x, rows, y))


def test_gate_weights_and_gradients_match_the_plain_reference():
    """The fused loss with the gate's per-position weights equals plain PyTorch (gather, weigh, softcap,
    log-softmax), values and gradients of every gate parameter, through the one-pass training op too."""
    from golf import ops
    lm, x, rows, y = gated_lm("gate")
    t = lm.transformer
    g = t.prior_gate
    assert g.w.shape == (3, 32) and g.scale.shape == (3,) and g.b.shape == (3,)
    assert [n for n, _ in t.named_parameters() if n.startswith("prior_gate")] == \
        ["prior_gate.scale", "prior_gate.w", "prior_gate.b"]
    assert all(p._golf_group == "scalar" for p in g.parameters())

    def reference():
        h = t.hidden(x)
        scales = g.anneal * g.scale * (1 + torch.tanh(h @ g.w.T / 32 ** 0.5 + g.b))
        prior = sum(scales[..., k, None] * torch.where(rows[..., k, None] >= 0, lm.prior_tables[rows[..., k].long()],
                                                        torch.zeros(V)) for k in range(3))
        z = t.softcap * torch.tanh(t(x) / t.softcap) + prior
        return F.cross_entropy(z.flatten(0, 1), y.flatten(), reduction="none")

    want = reference()
    want_grads = torch.autograd.grad(want.sum() / want.numel(), list(g.parameters()))
    for fused in (False, True):
        got = lm(x, rows, y, 1.0 / y.numel()) if fused else lm(x, rows, y)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        grads = torch.autograd.grad(got.sum() / got.numel(), list(g.parameters()))
        for a, b in zip(grads, want_grads):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert ops.has_kernel("tiered_loss_train", "cpu")  # the fused path above ran the C++ kernel


def test_a_prior_free_loss_adds_tier_2_alone_to_the_training_objective_only():
    """prior_free = 0.5: the training objective is CE(priors + l2) + 0.5 CE(l2), values and gradients of every
    transformer parameter as plain PyTorch has them; without grad_weight (scoring) it is the tiered NLL alone."""
    from golf.model import TieredLM
    lm, x, rows, y = gated_lm("gate")
    t = lm.transformer
    aux = TieredLM(t, lm.prior_tables, trainable=False, prior_free=0.5)
    params = [p for p in t.parameters() if p.requires_grad]

    def reference():
        h = t.hidden(x)
        scales = t.prior_gate.scale * (1 + torch.tanh(h @ t.prior_gate.w.T / 32 ** 0.5 + t.prior_gate.b))
        prior = sum(scales[..., k, None] * torch.where(rows[..., k, None] >= 0, lm.prior_tables[rows[..., k].long()],
                                                        torch.zeros(V)) for k in range(3))
        l2 = (t.softcap * torch.tanh(t(x) / t.softcap)).flatten(0, 1)
        return (F.cross_entropy(l2 + prior.flatten(0, 1), y.flatten(), reduction="none")
                + 0.5 * F.cross_entropy(l2, y.flatten(), reduction="none"))

    want = reference()
    got = aux(x, rows, y, 1.0 / y.numel())
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for a, b in zip(torch.autograd.grad(got.sum() / y.numel(), params),
                    torch.autograd.grad(want.sum() / y.numel(), params)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        assert torch.equal(aux(x, rows, y), lm(x, rows, y))


def test_gate_modes_anneal_and_causality():
    lm, x, rows, y = gated_lm("scalar")
    t = lm.transformer
    with torch.no_grad():
        t.prior_gate.scale.copy_(torch.tensor([0.5, 1.0, 2.0]))
        t.prior_gate.anneal.fill_(0.5)
        s = t.prior_scales(t.hidden(x))
    assert s.shape == (*x.shape, 3) and s.is_contiguous()
    assert torch.equal(s[0, 0], torch.tensor([0.25, 0.5, 1.0]))  # scalar mode: one weight per row, any position
    assert "prior_gate.anneal" in t.state_dict()  # the schedule's weight travels with the weights
    assert build(tiny(prior_gate="gate", prior_columns=0)).prior_gate is None  # nothing to weigh: no gate
    assert build(tiny()).prior_scales(torch.zeros(2, 32)) is None
    with pytest.raises(ConfigError, match=r"ModelConfig\.prior_gate"):
        tiny(prior_gate="sometimes", prior_columns=3)
    # The gate reads the hidden state at its own position only: later tokens do not change earlier weights.
    lm, x, rows, y = gated_lm("gate")
    t = lm.transformer
    with torch.no_grad():
        before = t.prior_scales(t.hidden(x))
        x2 = x.clone()
        x2[:, 9:] = (x2[:, 9:] + 5) % V
        after = t.prior_scales(t.hidden(x2))
    assert torch.equal(before[:, :9], after[:, :9]) and not torch.equal(before[:, 9:], after[:, 9:])
