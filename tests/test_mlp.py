"""golf::leaky_relu2_mlp, the MLP with its activation fused into the GEMMs: the CPU op against its reference
(forward and backward specs), its autograd against the plain MLP's, its checks, and the model's MLP with the op on
and off (the same step, the same Hessians). The CUTLASS kernels' host-side facts where the build has them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from golf import ops, quant
from golf.data import load_shard
from golf.model import ModelConfig, Transformer

pytestmark = pytest.mark.skipif(ops._C is None, reason="golf._C is not built")

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def operands(m, d, h, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, d, generator=g).to(dtype)
    w1 = (torch.randn(h, d, generator=g) / d ** 0.5).to(dtype)
    w2 = (torch.randn(d, h, generator=g) / h ** 0.5).to(dtype)
    return x, w1, w2


def plain_mlp(x, w1, w2, slope):
    """The model's unfused MLP (golf.model.MLP's plain path)."""
    h = F.linear(x, w1)
    h = F.leaky_relu(h, slope) if slope else F.relu(h)
    return F.linear(h.square(), w2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("slope", [0.5, 0.0])
def test_cpu_op_is_its_reference(dtype, slope, one_thread):
    x, w1, w2 = operands(37, 64, 192, dtype)
    got = torch.ops.golf.leaky_relu2_mlp(x, w1, w2, slope)
    want = ops.ref_leaky_relu2_mlp(x, w1, w2, slope)
    for name, a, b in zip(("out", "pre", "post"), got, want):
        assert a.dtype == dtype and a.shape == b.shape, name
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)  # the same GEMM calls, the same element math
    # post is act(acc) from the fp32 accumulator, not act of the rounded pre (what the fused epilogue writes)
    acc = x.float() @ w1.float().t()
    assert torch.equal(got[2], ops._mlp_act(acc, slope).to(dtype))

    g = torch.randn(37, 64, generator=torch.Generator().manual_seed(1)).to(dtype)
    grads = torch.ops.golf.leaky_relu2_mlp_backward(g, x, w1, w2, got[1], got[2], slope)
    spec = ops.ref_leaky_relu2_mlp_backward(g, x, w1, w2, got[1], got[2], slope)
    for name, a, b, t in zip(("grad_x", "grad_w1", "grad_w2"), grads, spec, (x, w1, w2)):
        assert a.dtype == dtype and a.shape == t.shape, name
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_autograd_equals_the_plain_mlp(dtype, one_thread):
    x, w1, w2 = operands(50, 32, 96, dtype, seed=3)
    g = torch.randn(50, 32, generator=torch.Generator().manual_seed(4)).to(dtype)
    fused = [t.clone().requires_grad_() for t in (x, w1, w2)]
    plain = [t.clone().requires_grad_() for t in (x, w1, w2)]
    out_f = ops.leaky_relu2_mlp(*fused, 0.5)
    out_p = plain_mlp(*plain, 0.5)
    out_f.backward(g)
    out_p.backward(g)
    # fp32: the same products in the same order (the derivative's factors are powers of two apart); bf16: the
    # plain path rounds pre before the activation and the fused one does not, one bf16 rounding apart.
    tol = dict(rtol=0, atol=0) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2 * float(out_p.detach().abs().max()))
    torch.testing.assert_close(out_f, out_p, **tol)
    for name, a, b in zip(("x", "w1", "w2"), fused, plain):
        scale = float(b.grad.abs().max())
        tol = dict(rtol=0, atol=0) if dtype == torch.float32 else dict(rtol=3e-2, atol=3e-2 * scale)
        torch.testing.assert_close(a.grad, b.grad, msg=f"grad {name}", **tol)


def test_a_wrong_derivative_is_caught(one_thread):
    # The comparison above can fail: the backward spec with relu²'s derivative for a leaky forward is far off.
    x, w1, w2 = operands(20, 16, 48, torch.float32)
    out, pre, post = ops.ref_leaky_relu2_mlp(x, w1, w2, 0.5)
    g = torch.ones_like(out)
    right = ops.ref_leaky_relu2_mlp_backward(g, x, w1, w2, pre, post, 0.5)[0]
    wrong = ops.ref_leaky_relu2_mlp_backward(g, x, w1, w2, pre, post, 0.0)[0]
    assert float((right - wrong).abs().max()) > 1e-2 * float(right.abs().max())


def test_opcheck(one_thread):
    x, w1, w2 = operands(9, 16, 24, torch.float32)
    torch.library.opcheck(torch.ops.golf.leaky_relu2_mlp, (x.requires_grad_(), w1.requires_grad_(),
                                                          w2.requires_grad_(), 0.5))
    out, pre, post = torch.ops.golf.leaky_relu2_mlp(x.detach(), w1.detach(), w2.detach(), 0.5)
    torch.library.opcheck(torch.ops.golf.leaky_relu2_mlp_backward,
                          (torch.randn_like(out), x.detach(), w1.detach(), w2.detach(), pre, post, 0.5))


def test_under_autocast_the_op_keeps_its_precision(one_thread):
    x, w1, w2 = operands(33, 32, 64, torch.bfloat16)
    outside = torch.ops.golf.leaky_relu2_mlp(x, w1, w2, 0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = torch.ops.golf.leaky_relu2_mlp(x, w1, w2, 0.5)
    for a, b in zip(outside, inside):
        assert torch.equal(a, b)


def test_bad_arguments_name_what_is_wrong():
    x, w1, w2 = operands(4, 16, 32, torch.float32)
    with pytest.raises(RuntimeError, match=r"w2 \(the down-projection\) must be \[16, 32\]"):
        torch.ops.golf.leaky_relu2_mlp(x, w1, w2.t(), 0.5)
    with pytest.raises(RuntimeError, match="must share one dtype"):
        torch.ops.golf.leaky_relu2_mlp(x, w1.bfloat16(), w2, 0.5)
    with pytest.raises(RuntimeError, match="slope must be finite"):
        torch.ops.golf.leaky_relu2_mlp(x, w1, w2, float("nan"))
    out, pre, post = torch.ops.golf.leaky_relu2_mlp(x, w1, w2, 0.5)
    with pytest.raises(RuntimeError, match="pre and post must be"):
        torch.ops.golf.leaky_relu2_mlp_backward(out, x, w1, w2, pre[:, :8], post, 0.5)


# --- the model's MLP -------------------------------------------------------------------------------------------

def tiny_model(fused: str, **extra) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=1024, num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1, mlp_mult=3.0,
                      activation="leaky_relu2", fused_mlp=fused, **extra)
    model = Transformer(cfg)
    for block in model.blocks:  # zero-init proj would give the MLP no effect and w1 no gradient
        torch.nn.init.normal_(block.mlp.proj.weight, std=0.05)
    return model


@pytest.fixture(scope="module")
def ids(train_shard):
    tokens = np.asarray(load_shard(train_shard)[:4 * 64 + 1]).astype(np.int64)
    return torch.from_numpy(tokens[:-1]).view(4, 64)


@pytest.mark.parametrize("amp", [False, True])
def test_the_models_step_is_the_same_fused_or_not(ids, amp, one_thread, monkeypatch):
    calls = []
    op = ops.leaky_relu2_mlp
    monkeypatch.setattr(ops, "leaky_relu2_mlp", lambda *a: calls.append(1) or op(*a))
    results = {}
    for fused in ("off", "on"):
        model = tiny_model(fused)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            logits = model(ids)
        loss = F.cross_entropy(logits.float().view(-1, 1024)[:-1], ids.view(-1)[1:])
        loss.backward()
        results[fused] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                          if p.grad is not None})
    assert len(calls) == 2  # once per block, only with the op on
    (loss_off, grads_off), (loss_on, grads_on) = results["off"], results["on"]
    assert grads_off.keys() == grads_on.keys()
    if not amp:
        assert torch.equal(loss_on, loss_off)
    for name in grads_off:
        scale = float(grads_off[name].abs().max()) or 1.0
        tol = 1e-6 if not amp else 5e-2
        torch.testing.assert_close(grads_on[name], grads_off[name], rtol=tol, atol=tol * scale, msg=name)


def test_qat_weights_reach_the_fused_path(ids, one_thread):
    outs = {}
    for fused in ("off", "on"):
        model = tiny_model(fused)
        quant.prepare_qat(model, min_numel=1)
        quant.set_qat(model, True)
        outs[fused] = model(ids)
    assert torch.equal(outs["on"], outs["off"])


def test_hessians_are_collected_with_the_op_on(ids):
    # Calibration runs without grad, so the MLP takes its plain path and the hooks on fc and proj see their inputs.
    hs = quant.collect_hessians(tiny_model("on"), [ids])
    assert {"blocks.0.mlp.fc.weight", "blocks.0.mlp.proj.weight", "blocks.1.mlp.proj.weight"} <= hs.keys()


def test_the_probe_behind_auto_catches_a_wrong_kernel(monkeypatch):
    # fused_mlp_available trusts the fused GEMMs of a device only after this probe: the op (here the CPU one)
    # against the references. A backward that disagrees (relu²'s derivative for the probe's leaky MLP) is caught.
    assert ops._fused_mlp_probe(torch.device("cpu")) is None
    wrong = ops.ref_leaky_relu2_mlp_backward
    monkeypatch.setattr(ops, "ref_leaky_relu2_mlp_backward", lambda *a: wrong(*a[:-1], 0.0))
    assert ops._fused_mlp_probe(torch.device("cpu")).startswith("grad_x: max error")


def test_auto_fuses_only_where_the_fused_kernels_run():
    mlp = tiny_model("auto").blocks[0].mlp
    assert not mlp.fused_everywhere
    assert mlp.fused_on_cuda == (torch.cuda.is_available() and ops.fused_mlp_available("cuda"))
    assert not ops.fused_mlp_available("cpu")


# --- the CUTLASS GEMMs' host-side facts (builds with them: CUDA torch, CUTLASS headers, sm_90a) ------------------

H100X8 = ((98_304, 2048, 512), (8192, 2048, 512), (2048, 1536, 512), (1000, 2048, 512), (1, 2048, 512))


@pytest.mark.skipif(not ops.BUILD_INFO.get("fused_mlp"), reason="golf._C was built without the fused MLP GEMMs")
@pytest.mark.parametrize("kernel", ["up", "down_grad"])
def test_cutlass_gemms_take_the_models_shapes(kernel):
    for m, n, k in H100X8:
        facts = ops._C.mlp_gemm(kernel, m, n, k)
        assert facts["can_implement"], (kernel, m, n, k, facts)
        assert facts["workspace_bytes"] >= 0
    assert 0 < facts["smem_bytes"] <= facts["smem_limit"], facts
    assert facts["threads"] % 128 == 0 and facts["threads"] >= 256, facts  # warp groups: producer + consumers
    # Rows not 16-byte aligned in bf16 (TMA): refused, so the op runs unfused instead of faulting.
    assert not ops._C.mlp_gemm(kernel, 2048, 2048, 510)["can_implement"]
    assert not ops._C.mlp_gemm(kernel, 2048, 2044, 512)["can_implement"]
