"""The row arithmetic shared by the CPU ops and the CUDA kernels (kernels/tiered_loss_math.h), through the CPU
ops built on it: golf::tiered_loss (forward, backward) and golf::score_windows, against the references, on the
edge cases a kernel gets wrong first: vocabularies that are not a multiple of 32 (or of the row layout's chunk),
one thread's worth of elements or several warps per row, -inf priors, repeated prior rows, saturated tanh, rows
without priors, CSR rows without entries, and per-row tier scales (prior_scales) of 0, 1 and in between."""

from __future__ import annotations

import pytest
import torch

from golf import ops

CAP = 30.0


def inputs(n: int, v: int, r: int = 7, k: int = 3, seed: int = 0, scales: bool = False):
    g = torch.Generator().manual_seed(seed)
    l2 = torch.randn(n, v, generator=g) * 4
    tables = torch.randn(r, v, generator=g)
    rows = torch.randint(-1, r, (n, k), generator=g, dtype=torch.int32)
    targets = torch.randint(0, v, (n,), generator=g)
    s = torch.rand(n, k, generator=g) * 2 if scales else None
    return l2, tables, rows, targets, s


def grads(fn, l2, tables, rows, targets, scales, upstream):
    """(nll, lse, d l2, d tables, d scales) of sum(upstream[0] * nll + upstream[1] * lse)."""
    l2 = l2.clone().requires_grad_()
    tables = tables.clone().requires_grad_()
    scales = None if scales is None else scales.clone().requires_grad_()
    nll, lse = fn(l2, tables, rows, targets, CAP, scales)
    ((upstream[0] * nll).sum() + (upstream[1] * lse).sum()).backward()
    return nll.detach(), lse.detach(), l2.grad, tables.grad, None if scales is None else scales.grad


@pytest.mark.parametrize("v", [1, 37, 1000, 1024, 2049, 4100])
@pytest.mark.parametrize("scaled", [False, True])
def test_forward_and_backward_match_the_reference(v, scaled):
    """V = 2049 and 4100 take two and three warps per row; 37 and 1000 end in a partial chunk."""
    l2, tables, rows, targets, scales = inputs(24, v, scales=scaled)
    g = torch.Generator().manual_seed(1)
    upstream = (torch.rand(24, generator=g), torch.rand(24, generator=g) - 0.5)  # g_lse != 0 too
    got = grads(torch.ops.golf.tiered_loss, l2, tables, rows, targets, scales, upstream)
    want = grads(ops.ref_tiered_loss, l2, tables, rows, targets, scales, upstream)
    for name, a, b in zip(("nll", "lse", "d l2", "d tables", "d scales"), got, want):
        if b is None:
            assert a is None, name
            continue
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-5, msg=name)


def test_scales_of_one_are_no_scales_and_zero_is_no_row():
    l2, tables, rows, targets, _ = inputs(16, 300)
    plain = torch.ops.golf.tiered_loss(l2, tables, rows, targets, CAP)
    ones = torch.ops.golf.tiered_loss(l2, tables, rows, targets, CAP, torch.ones(16, 3))
    assert all(torch.equal(a, b) for a, b in zip(plain, ones))  # x * 1 is exact
    zero = torch.ones(16, 3)
    zero[:, 1] = 0.0
    without = rows.clone()
    without[:, 1] = -1
    a = torch.ops.golf.tiered_loss(l2, tables, rows, targets, CAP, zero)
    b = torch.ops.golf.tiered_loss(l2, tables, without, targets, CAP)
    assert all(torch.equal(x, y) for x, y in zip(a, b))  # z + 0 * t is z


def test_minus_infinity_priors_give_no_nan():
    """A prior that forbids ids (-inf there) leaves a finite loss and finite gradients; e^-inf is exactly 0."""
    l2, tables, rows, targets, _ = inputs(32, 257)
    tables[:, 5:40] = float("-inf")
    targets = torch.where((targets >= 5) & (targets < 40), targets + 100, targets)
    rows[:, 0] = 2  # every row reads a forbidding table
    got = grads(torch.ops.golf.tiered_loss, l2, tables, rows, targets, None, (torch.ones(32), torch.zeros(32)))
    want = grads(ops.ref_tiered_loss, l2, tables, rows, targets, None, (torch.ones(32), torch.zeros(32)))
    for a, b in zip(got[:4], want[:4]):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-5)
    assert (got[2][:, 5:40] == 0).all()  # a forbidden id gets no gradient
    # A row where every id but the target is forbidden: probability 1, loss 0.
    lone = torch.full((1, 257), float("-inf"))
    lone[0, 7] = 0.0
    nll, lse = torch.ops.golf.tiered_loss(torch.zeros(1, 257), lone, torch.zeros(1, 1, dtype=torch.int32),
                                          torch.tensor([7]), CAP)
    assert float(nll) == 0.0 and float(lse) == 0.0


def test_repeated_prior_rows_and_rows_without_priors():
    l2, tables, rows, targets, scales = inputs(20, 130, scales=True)
    rows[:5] = torch.tensor([3, 3, 3], dtype=torch.int32)  # the same row three times
    rows[5:10] = -1                                         # no prior at all
    got = grads(torch.ops.golf.tiered_loss, l2, tables, rows, targets, scales, (torch.ones(20), torch.zeros(20)))
    want = grads(ops.ref_tiered_loss, l2, tables, rows, targets, scales, (torch.ones(20), torch.zeros(20)))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-5)
    assert (got[4][5:10] == 0).all()  # a missing row's scale gets no gradient
    bare = torch.ops.golf.tiered_loss(l2[5:10], tables, rows[5:10], targets[5:10], CAP)[0]
    z = CAP * torch.tanh(l2[5:10] / CAP)
    torch.testing.assert_close(bare, torch.logsumexp(z, 1) - z.gather(1, targets[5:10, None])[:, 0])


def test_saturated_tanh():
    """|l2| far beyond the cap: z = +-cap exactly in fp32, and d l2 = 0 (1 - tanh^2 underflows to 0)."""
    n, v = 4, 96
    l2 = torch.full((n, v), -1e4)
    l2[:, ::3] = 1e4
    targets = torch.tensor([0, 1, 3, 4])
    tables, rows = torch.zeros(1, v), torch.full((n, 1), -1, dtype=torch.int32)
    nll, lse = torch.ops.golf.tiered_loss(l2, tables, rows, targets, CAP)
    hot = (v + 2) // 3
    expect_lse = CAP + torch.log(torch.tensor(hot + (v - hot) * torch.exp(torch.tensor(-2 * CAP)).item()))
    torch.testing.assert_close(lse, expect_lse.expand(n), rtol=1e-6, atol=1e-6)
    assert torch.isfinite(nll).all() and float(nll[1]) == pytest.approx(float(lse[1]) + CAP, abs=1e-4)
    x = l2.clone().requires_grad_()
    torch.ops.golf.tiered_loss(x, tables, rows, targets, CAP)[0].sum().backward()
    assert (x.grad == 0).all()


def test_lse_of_equal_logits_is_log_v():
    """All logits equal: every thread and warp of the layout holds the same partial, the tree must give log V."""
    for v in (1, 8, 31, 256, 2048, 2050, 8192):
        nll, lse = torch.ops.golf.tiered_loss(torch.zeros(1, v), torch.zeros(1, v),
                                              torch.zeros(1, 0, dtype=torch.int32), torch.tensor([0]), CAP)
        assert float(lse) == pytest.approx(torch.log(torch.tensor(float(v))).item(), rel=2e-7, abs=2e-7), v
        assert float(nll) == float(lse)


@pytest.mark.filterwarnings("ignore:Input #.* is not a double precision")
def test_opcheck_and_gradcheck_with_scales():
    l2, tables, rows, targets, scales = inputs(9, 53, scales=True)
    torch.library.opcheck(torch.ops.golf.tiered_loss,
                          (l2.requires_grad_(), tables.requires_grad_(), rows, targets, CAP,
                           scales.requires_grad_()))
    torch.library.opcheck(torch.ops.golf.tiered_loss, (l2.detach(), tables.detach(), rows, targets, 0.0))

    # fp32 op: finite differences in fp32 with a step and tolerances to match.
    def f(x, s):
        return torch.ops.golf.tiered_loss(x, tables.detach(), rows, targets, CAP, s)[0]

    torch.autograd.gradcheck(f, (l2.detach().clone().requires_grad_(), scales.detach().clone().requires_grad_()),
                             eps=1e-2, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("v", [37, 1000])
def test_score_windows_with_scales_and_empty_csr_rows(v):
    g = torch.Generator().manual_seed(3)
    n, d = 40, 16
    hidden, head = torch.randn(n, d, generator=g), torch.randn(v, d, generator=g)
    _, tables, rows, targets, scales = inputs(n, v, scales=True)
    extra_rows = torch.tensor([0, 0, 5, 5, 5, 39])  # rows 1-4, 6-38: no entries; row 5 repeats a column
    cols = torch.tensor([1, 2, 3, 3, v - 1, 0])
    vals = torch.randn(6, generator=g)
    extra = (extra_rows, cols, vals)
    got = torch.ops.golf.score_windows(hidden, head, tables, rows, targets, CAP, ops.csr_ptr(extra_rows, n), cols,
                                       vals, scales)
    torch.testing.assert_close(got, ops.ref_score_windows(hidden, head, tables, rows, targets, CAP, extra, scales),
                               rtol=2e-5, atol=2e-5)
    # score_windows is the tiered_loss forward on the head's logits (plus the sparse ones).
    l2 = hidden @ head.T
    l2.index_put_((extra_rows, cols), vals, accumulate=True)
    torch.testing.assert_close(got, torch.ops.golf.tiered_loss(l2, tables, rows, targets, CAP, scales)[0],
                               rtol=2e-5, atol=2e-5)
    torch.library.opcheck(torch.ops.golf.score_windows, (hidden, head, tables, rows, targets, CAP,
                                                         ops.csr_ptr(extra_rows, n), cols, vals, scales))
    with pytest.raises(RuntimeError, match=r"prior_scales must be float32 \[40, 3\]"):
        torch.ops.golf.score_windows(hidden, head, tables, rows, targets, CAP, None, None, None, scales[:, :2])


def test_vocabularies_beyond_the_row_layout_are_refused():
    v = 65537
    with pytest.raises(RuntimeError, match="1 to 65536 ids"):
        torch.ops.golf.tiered_loss(torch.zeros(1, v), torch.zeros(1, v), torch.zeros(1, 0, dtype=torch.int32),
                                   torch.tensor([0]), CAP)
