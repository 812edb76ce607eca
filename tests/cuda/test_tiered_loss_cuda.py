"""golf::tiered_loss, its backward, golf::tiered_loss_train and golf::score_windows on CUDA against their CPU ops (runs only with a GPU and a
CUDA build). The kernels and the CPU ops share kernels/tiered_loss_math.h and its order of sums, and neither
contracts a*b+c into an FMA, so the row kernels equal the CPU ops bit for bit on the same fp32 inputs; the
LM head's GEMM (score_windows) is cuBLAS's, so there the comparison allows its rounding."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from golf import ops

from test_row_math import inputs  # noqa: E402  (tests/ is on sys.path)

pytestmark = pytest.mark.cuda
CAP = 30.0


def case(n: int, v: int, scales: bool = False):
    return inputs(n, v, r=300, scales=scales)


def cuda(*ts):
    return tuple(None if t is None else t.cuda() for t in ts)


# Rows of 96 threads (V 4,097-6,144: two rows a block) and of 160, 192 and 224 threads (V 8,193-14,336: one row
# a block): the plans that once let a block's leftover threads write the next block's first row.
UNEVEN_ROWS = [4100, 6144, 8200, 10_000, 14_336]


@pytest.mark.parametrize("v", [1024, 8192, 1000, 37, 20000, *UNEVEN_ROWS])
@pytest.mark.parametrize("scaled", [False, True])
def test_forward_and_backward_equal_the_cpu_op_bit_for_bit(v, scaled):
    """V = 1024 (the challenge's), 8192 (four warps per row), 1000 and 37 (partial chunks, scalar loads), 20000
    (rows of their own block, logits recomputed), and the uneven row sizes."""
    n = 4096 if v <= 8192 else 256
    l2, tables, rows, targets, scales = case(n, v, scales=scaled)
    cpu = torch.ops.golf.tiered_loss(l2, tables, rows, targets, CAP, scales)
    gpu = torch.ops.golf.tiered_loss(*cuda(l2, tables, rows, targets), CAP, *cuda(scales))
    for a, b in zip(cpu, gpu):
        assert torch.equal(a, b.cpu())
    g = torch.Generator().manual_seed(1)
    g_nll, g_lse = torch.rand(n, generator=g), torch.rand(n, generator=g) - 0.5
    args = (g_nll, g_lse, l2, tables, rows, targets, cpu[1], CAP, True, scales, scaled)
    want = torch.ops.golf.tiered_loss_backward(*args)
    got = torch.ops.golf.tiered_loss_backward(*cuda(*args[:7]), CAP, True, *cuda(scales), scaled)
    for name, a, b in zip(("d l2", "d tables", "d scales"), want, got):
        assert torch.equal(a, b.cpu()), name


@pytest.mark.parametrize("v", [1024, 8192, 1000, 20000, *UNEVEN_ROWS])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_train_variant_equals_the_cpu_op_bit_for_bit(v, dtype):
    """golf::tiered_loss_train at N = 98,304 rows (the h100 step's) for V = 1024 (logits and tanh kept in registers),
    8192 (the gradient pass rereads the row), 1000 (partial chunks), 20000 (rows of their own block), and the uneven
    row sizes (twice: the same bits each time)."""
    n = 98_304 if v <= 1024 else (8192 if v <= 8192 else 256)
    l2, tables, rows, targets, scales = case(n, v, scales=True)
    l2 = l2.to(dtype)
    w = 1 / n
    cpu = torch.ops.golf.tiered_loss_train(l2, tables, rows, targets, CAP, w, scales, True)
    gpu = torch.ops.golf.tiered_loss_train(*cuda(l2, tables, rows, targets), CAP, w, *cuda(scales), True)
    for name, a, b in zip(("nll", "lse", "d l2", "d scales"), cpu, gpu):
        assert torch.equal(a, b.cpu()), name
    again = torch.ops.golf.tiered_loss_train(*cuda(l2, tables, rows, targets), CAP, w, *cuda(scales), True)
    assert all(torch.equal(a, b) for a, b in zip(gpu, again))


def test_bf16_logits_match_the_cpu_op_on_the_same_values():
    """Training feeds bf16 logits: the kernel reads them 8 at a time, the CPU op upcasts; the same fp32 values."""
    l2, tables, rows, targets, _ = case(98_304 // 24, 1024)
    l2 = l2.bfloat16()
    cpu = torch.ops.golf.tiered_loss(l2, tables, rows, targets, CAP)
    gpu = torch.ops.golf.tiered_loss(*cuda(l2, tables, rows, targets), CAP)
    assert all(torch.equal(a, b.cpu()) for a, b in zip(cpu, gpu))
    x = l2.cuda().requires_grad_()
    torch.ops.golf.tiered_loss(x, *cuda(tables, rows, targets), CAP)[0].sum().backward()
    assert x.grad.dtype == torch.bfloat16
    y = l2.clone().requires_grad_()
    torch.ops.golf.tiered_loss(y, tables, rows, targets, CAP)[0].sum().backward()
    assert torch.equal(x.grad.cpu(), y.grad)


def test_runs_are_bitwise_reproducible():
    l2, tables, rows, targets, scales = case(4096, 1024, scales=True)
    args = cuda(l2, tables, rows, targets)
    first = torch.ops.golf.tiered_loss(*args, CAP, *cuda(scales))
    again = torch.ops.golf.tiered_loss(*args, CAP, *cuda(scales))
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_score_windows_matches_the_cpu_op():
    g = torch.Generator().manual_seed(2)
    n, d, v = 4096, 512, 1024
    hidden, head = torch.randn(n, d, generator=g) * 0.1, torch.randn(v, d, generator=g) * 0.1
    _, tables, rows, targets, scales = case(n, v, scales=True)
    extra_rows = torch.arange(0, n, 3).repeat_interleave(2)
    cols = torch.randint(0, v, (extra_rows.numel(),), generator=g)
    vals = torch.randn(extra_rows.numel(), generator=g)
    ptr = ops.csr_ptr(extra_rows, n)
    cpu = torch.ops.golf.score_windows(hidden, head, tables, rows, targets, CAP, ptr, cols, vals, scales)
    gpu = torch.ops.golf.score_windows(*cuda(hidden, head, tables, rows, targets), CAP, *cuda(ptr, cols, vals, scales))
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-4)


def test_opcheck_on_cuda():
    l2, tables, rows, targets, scales = cuda(*case(64, 257, scales=True))
    torch.library.opcheck(torch.ops.golf.tiered_loss, (l2.requires_grad_(), tables, rows, targets, CAP,
                                                       scales.requires_grad_()))
    torch.library.opcheck(torch.ops.golf.tiered_loss_train, (l2, tables, rows, targets, CAP, 0.5, scales, True))


def test_a_bad_index_poisons_its_row_and_raises_the_flag():
    l2, tables, rows, targets, _ = case(8, 64)
    rows[3, 1] = -7
    targets[5] = 64
    nll, lse = torch.ops.golf.tiered_loss(*cuda(l2, tables, rows, targets), CAP)
    assert torch.isnan(nll[3]) and torch.isnan(nll[5]) and torch.isfinite(nll[[0, 1, 2, 4, 6, 7]]).all()
    with pytest.raises(IndexError, match=r"golf::tiered_loss on cuda"):
        ops.check_device_indices(nll.device)
    ops.check_device_indices(nll.device)  # cleared


def test_golf_check_indices_checks_every_call_on_the_host():
    code = ("import torch, golf.ops\n"
            "l2 = torch.zeros(4, 16, device='cuda'); t = torch.zeros(2, 16, device='cuda')\n"
            "rows = torch.tensor([[0], [-7], [1], [0]], dtype=torch.int32, device='cuda')\n"
            "torch.ops.golf.tiered_loss(l2, t, rows, torch.zeros(4, dtype=torch.long, device='cuda'), 30.0)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, GOLF_CHECK_INDICES="1"), timeout=120)
    assert proc.returncode != 0 and "prior_rows[1, 0] = -7" in proc.stderr, proc.stderr[-2000:]
