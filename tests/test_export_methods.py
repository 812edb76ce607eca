"""bench.record_exports (the R1147 and R0611 export methods, re-implemented) and bench.export_methods' arithmetic."""

import pytest
import torch

from bench import record_exports
from bench.export_methods import at_penalty
from golf import ops, quant

pytest.importorskip("brotli")


def state_and_hessians():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 128, generator=g) @ (torch.eye(128) + 0.2 * torch.randn(128, 128, generator=g) / 11)
    H = x.t() @ x / x.shape[0]
    state = {"transformer.blocks.0.attn.q.weight": torch.randn(96, 128, generator=g) * 2.0,
             "transformer.blocks.0.mlp.fc.weight": torch.randn(256, 128, generator=g) * 0.03,
             "transformer.tok_emb.weight": torch.randn(512, 128, generator=g) * 0.02,
             "transformer.blocks.0.attn_scale": torch.randn(128, generator=g),
             "tier0.log_pc": torch.randn(4, 8, generator=g)}
    hessians = {n: H for n in state if n.endswith("weight")}
    return state, hessians


def test_r1147_method():
    state, hessians = state_and_hessians()
    floored = []
    size, out = record_exports.r1147(state, hessians, small_numel=4096, floored=floored)
    assert size > 0 and set(out) == set(state)
    q_name = "transformer.blocks.0.attn.q.weight"
    w, H = state[q_name], hessians[q_name]
    # GPTQ int6 with one clip per matrix: the quantile whose codes have the least plain MSE; the 1/31 scale floor
    errs = []
    for c in ops.row_quantiles(w.abs(), torch.tensor(record_exports.R1147_QUANTILES)):
        q, s = ops.gptq_quantize_scaled(w, H, (c / 31).clamp_min(1 / 31).half()[None], 6, 128, True, 0.01)
        errs.append((float(((w - quant.dequantize(q, s)) ** 2).mean()), quant.dequantize(q, s)))
    assert torch.equal(out[q_name], min(errs, key=lambda e: e[0])[1])
    fc = "transformer.blocks.0.mlp.fc.weight"  # 0.03-scale rows: every chosen scale is the floor
    assert floored[1] == (256, 256) and floored[0][0] < 96
    assert torch.equal(out["transformer.blocks.0.attn_scale"], state["transformer.blocks.0.attn_scale"].half().float())
    assert torch.equal(out["tier0.log_pc"], state["tier0.log_pc"])  # golf's tensors stored as golf stores them
    emb = out["transformer.tok_emb.weight"]  # int8 rows, 99.99984th percentile clip, scale floor 1/127
    assert torch.allclose(emb / (1 / 127), torch.round(emb / (1 / 127)), atol=1e-3)
    step = float(torch.tensor(1 / 31).half())
    assert torch.equal(out[fc] / step, torch.round(out[fc] / step))  # on the floor's grid


def test_r0611_method():
    state, hessians = state_and_hessians()
    size, out = record_exports.r0611(state, hessians, small_numel=4096, lqer=False)
    size_lqer, out_lqer = record_exports.r0611(state, hessians, small_numel=4096)
    emb = "transformer.tok_emb.weight"
    w = state[emb]
    q, s = ops.gptq_quantize_scaled(w, hessians[emb], quant.sdclip_scales(w, 14.0, 7)[None], 7, 128, True, 0.01)
    assert torch.equal(out[emb], quant.dequantize(q, s))  # int7, k 14
    changed = [n for n in out if not torch.equal(out[n], out_lqer[n])]
    assert len(changed) == 3 and size_lqer > size  # LQER on the top 3 by ‖W − Ŵ‖, stored
    for n in changed:
        assert float((state[n] - out_lqer[n]).norm()) < float((state[n] - out[n]).norm())
    assert record_exports.r0611(state, hessians, k_scale=1.5, small_numel=4096)[0] < size_lqer  # larger k, fewer bytes


def test_at_penalty_interpolates_inside_the_curve_only():
    curve = [(0.02, 100), (0.01, 200), (0.03, 50)]
    assert at_penalty(curve, 0.015) == pytest.approx(150)
    assert at_penalty(curve, 0.025) == pytest.approx(75)
    assert at_penalty(curve, 0.005) is None and at_penalty(curve, 0.04) is None
