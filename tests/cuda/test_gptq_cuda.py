"""GPTQ and the int6 packing on CUDA against their CPU ops (runs only with a GPU and a CUDA build). The column loop
shares kernels/gptq_math.h with the CPU op; the Cholesky factors (cuSOLVER vs LAPACK) and the lazy-update GEMMs
(cuBLAS vs the CPU BLAS) round differently, so a few codes may differ: how many is printed, and the GPTQ loss of
the GPU's codes must stay within 1e-4 of the CPU's."""

from __future__ import annotations

import pytest
import torch

from golf import ops
from golf.quant import DEFAULT_CLIP_CANDIDATES

pytestmark = pytest.mark.cuda


def hessian_of(cols: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8 * cols, cols, generator=g) * torch.linspace(0.2, 2.0, cols)
    return x.T @ x / x.shape[0]


def gptq_loss(w, q, scale, h):
    e = w - q.float() * scale.float()[:, None]
    return torch.einsum("ri,ij,rj->r", e.double(), h.double(), e.double())


@pytest.mark.parametrize("shape", [(512, 512), (1536, 512), (512, 1536)])
def test_gptq_matches_the_cpu_op(shape):
    rows, cols = shape
    g = torch.Generator().manual_seed(1)
    w = torch.randn(rows, cols, generator=g) * 0.02
    h = hessian_of(cols)
    cands = torch.tensor(DEFAULT_CLIP_CANDIDATES, dtype=torch.float32)
    q_cpu, s_cpu = torch.ops.golf.gptq_quantize(w, h, 6, 128, True, 0.01, cands)
    q_gpu, s_gpu = torch.ops.golf.gptq_quantize(w.cuda(), h.cuda(), 6, 128, True, 0.01, cands)
    differ = int((q_gpu.cpu() != q_cpu).sum())
    print(f"gptq {shape}: {differ} of {q_cpu.numel()} codes differ, "
          f"{int((s_gpu.cpu() != s_cpu).sum())} of {rows} scales")
    assert differ <= 1e-3 * q_cpu.numel()
    ratio = float(gptq_loss(w, q_gpu.cpu(), s_gpu.cpu(), h).sum() / gptq_loss(w, q_cpu, s_cpu, h).sum())
    assert ratio <= 1 + 1e-4, ratio


def test_hessian_accumulate_matches_the_cpu_op():
    x = torch.randn(3, 700, 256).bfloat16()
    h_cpu = torch.zeros(256, 256)
    h_gpu = torch.zeros(256, 256, device="cuda")
    torch.ops.golf.hessian_accumulate(h_cpu, x)
    torch.ops.golf.hessian_accumulate(h_gpu, x.cuda())
    torch.testing.assert_close(h_gpu.cpu(), h_cpu, rtol=1e-5, atol=1e-4)


def test_int6_packing_matches_the_cpu_op_and_refuses_bad_values():
    q = torch.randint(-31, 32, (10_001,), dtype=torch.int8)
    packed = torch.ops.golf.pack_int6(q.cuda())
    assert torch.equal(packed.cpu(), torch.ops.golf.pack_int6(q))
    assert torch.equal(torch.ops.golf.unpack_int6(packed, q.numel()).cpu(), q)
    bad = q.clone()
    bad[17] = 32
    with pytest.raises(RuntimeError, match="value 32 at flat index 17"):
        torch.ops.golf.pack_int6(bad.cuda())
    corrupt = packed.clone()
    corrupt[3:6] = 255  # codes 63
    with pytest.raises(RuntimeError, match="code 63 .* at flat index 4"):
        torch.ops.golf.unpack_int6(corrupt, q.numel())
    assert ops.has_kernel("pack_int6", "cuda") and ops.has_kernel("gptq_quantize", "cuda")
