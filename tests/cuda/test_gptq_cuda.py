"""GPTQ and the int6 packing on CUDA against their CPU ops (runs only with a GPU and a CUDA build). The column loop
shares kernels/gptq_math.h with the CPU op, so on inputs where nothing else can round differently its codes are the
CPU op's bit for bit. In the full pipeline the Cholesky factors (cuSOLVER vs LAPACK) and the lazy-update GEMMs
(cuBLAS vs the CPU BLAS) differ in the last bits, one flipped code moves its error by a whole step and feeds every
later column, and a row that picks another clip candidate changes all its codes: there the differing codes are
printed and the GPU's GPTQ loss must stay within 1e-4 of the CPU's."""

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


@pytest.mark.parametrize("shape", [(64, 96), (512, 512), (1536, 512)])
def test_the_column_loop_equals_the_cpu_op_bit_for_bit(shape):
    """H diagonal with powers of 4 (from 64 up: damp=0's 1e-6 vanishes in fp32), so (H + d)^-1 and its Cholesky
    factor are exact on any device; one block (no lazy-update GEMM); act-order permutes the columns and the clip
    search compares the kernel's losses."""
    rows, cols = shape
    g = torch.Generator().manual_seed(3)
    w = torch.randn(rows, cols, generator=g) * 0.02
    h = torch.diag(4.0 ** torch.randint(3, 9, (cols,), generator=g).float())
    cands = torch.tensor(DEFAULT_CLIP_CANDIDATES, dtype=torch.float32)
    q_cpu, s_cpu = torch.ops.golf.gptq_quantize(w, h, 6, cols, True, 0.0, cands)
    q_gpu, s_gpu = torch.ops.golf.gptq_quantize(w.cuda(), h.cuda(), 6, cols, True, 0.0, cands)
    assert torch.equal(s_gpu.cpu(), s_cpu)
    assert torch.equal(q_gpu.cpu(), q_cpu)


def test_a_block_beyond_the_devices_shared_memory_is_refused():
    w, h = torch.randn(64, 1024, device="cuda"), torch.eye(1024, device="cuda")
    with pytest.raises(RuntimeError, match="bytes of shared memory"):
        torch.ops.golf.gptq_quantize(w, h, 6, 1024, True, 0.01, torch.tensor([1.0]))


@pytest.mark.parametrize("shape", [(512, 512), (1536, 512), (512, 1536)])
def test_gptq_matches_the_cpu_op(shape):
    rows, cols = shape
    g = torch.Generator().manual_seed(1)
    w = torch.randn(rows, cols, generator=g) * 0.02
    h = hessian_of(cols)
    cands = torch.tensor(DEFAULT_CLIP_CANDIDATES, dtype=torch.float32)
    q_cpu, s_cpu = torch.ops.golf.gptq_quantize(w, h, 6, 128, True, 0.01, cands)
    q_gpu, s_gpu = torch.ops.golf.gptq_quantize(w.cuda(), h.cuda(), 6, 128, True, 0.01, cands)
    differ = q_gpu.cpu() != q_cpu
    print(f"gptq {shape}: {int(differ.sum())} of {q_cpu.numel()} codes differ (in {int(differ.any(1).sum())} rows), "
          f"{int((s_gpu.cpu() != s_cpu).sum())} of {rows} scales")
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
