"""golf::tiered_loss and golf::tiered_loss_train: C++ CPU == PyTorch reference, values and gradients (logits2, prior
tables, prior scales)."""

import pytest
import torch

from golf import ops


def make(n=37, v=53, r=11, k=3, seed=0, dtype=torch.float32, scale=20.0):
    g = torch.Generator().manual_seed(seed)
    logits2 = (torch.randn(n, v, generator=g) * scale).to(dtype)
    tables = torch.randn(r, v, generator=g)
    rows = torch.randint(-1, r, (n, k), generator=g, dtype=torch.int32)
    targets = torch.randint(0, v, (n,), generator=g)
    return logits2, tables, rows, targets


@pytest.mark.parametrize("softcap", [30.0, 0.0])
def test_forward_matches_reference(softcap):
    args = make()
    nll, lse = torch.ops.golf.tiered_loss(*args, softcap)
    ref_nll, ref_lse = ops.ref_tiered_loss(*args, softcap)
    torch.testing.assert_close(nll, ref_nll, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-5, atol=1e-5)


def test_normalised_over_the_full_vocabulary():
    logits2, tables, rows, targets = make()
    nll_all = torch.stack([torch.ops.golf.tiered_loss(logits2, tables, rows, torch.full_like(targets, y), 30.0)[0]
                           for y in range(logits2.shape[1])], 1)
    total = torch.exp(-nll_all.double()).sum(1)
    torch.testing.assert_close(total, torch.ones_like(total), rtol=0, atol=1e-5)  # fp32 lse


@pytest.mark.parametrize("softcap", [30.0, 0.0])
def test_gradients_match_reference(softcap):
    logits2, tables, rows, targets = make()
    weights = torch.rand(logits2.shape[0], generator=torch.Generator().manual_seed(9))
    grads = []
    for fn in (torch.ops.golf.tiered_loss, ops.ref_tiered_loss):
        l2 = logits2.clone().requires_grad_()
        t = tables.clone().requires_grad_()
        nll, lse = fn(l2, t, rows, targets, softcap)
        ((nll * weights).sum() + 0.1 * lse.sum()).backward()
        grads.append((l2.grad, t.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-4, atol=1e-6)


def test_softcap_across_the_whole_range():
    """The kernel's tanh (x = l2 / cap) is a polynomial below |x| = 0.1 and exp-based above, saturating to +-1 in
    fp32 near |x| = 9: values and gradients stay equal to the reference's torch.tanh around each of those points
    and far beyond."""
    cap = 30.0
    edges = torch.tensor([0.0, 1e-6, 0.05, 0.0999, 0.1, 0.1001, 0.5, 2.0, 8.99, 9.0, 9.01, 20.0]) * cap
    values = torch.cat([edges, -edges, torch.linspace(-400, 400, 41)])
    n, v = 8, values.numel()
    g = torch.Generator().manual_seed(3)
    logits2 = values[torch.stack([torch.randperm(v, generator=g) for _ in range(n)])]
    tables = torch.randn(5, v, generator=g)
    rows = torch.randint(-1, 5, (n, 2), generator=g, dtype=torch.int32)
    targets = torch.randint(0, v, (n,), generator=g)
    grads = []
    for fn in (torch.ops.golf.tiered_loss, ops.ref_tiered_loss):
        l2 = logits2.clone().requires_grad_()
        nll, lse = fn(l2, tables, rows, targets, cap)
        (nll.sum() + 0.1 * lse.sum()).backward()
        grads.append((nll.detach(), l2.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-4, atol=1e-6)


def test_frozen_tables_get_no_gradient():
    logits2, tables, rows, targets = make()
    l2 = logits2.clone().requires_grad_()
    torch.ops.golf.tiered_loss(l2, tables, rows, targets, 30.0)[0].sum().backward()
    assert l2.grad is not None and tables.grad is None


def test_bf16_logits():
    logits2, tables, rows, targets = make(dtype=torch.bfloat16)
    nll, _ = torch.ops.golf.tiered_loss(logits2, tables, rows, targets, 30.0)
    torch.testing.assert_close(nll, ops.ref_tiered_loss(logits2, tables, rows, targets, 30.0)[0])
    l2 = logits2.clone().requires_grad_()
    torch.ops.golf.tiered_loss(l2, tables, rows, targets, 30.0)[0].sum().backward()
    assert l2.grad.dtype == torch.bfloat16


def test_opcheck():
    logits2, tables, rows, targets = make(n=9, v=17, r=5)
    torch.library.opcheck(torch.ops.golf.tiered_loss, (logits2.requires_grad_(), tables.requires_grad_(), rows,
                                                       targets, 30.0))
    torch.library.opcheck(torch.ops.golf.tiered_loss, (logits2.detach(), tables.detach(), rows, targets, 0.0))


def test_fakes_return_what_the_ops_return_for_non_contiguous_logits():
    # A transposed [V, N] buffer is dense but not contiguous: empty_like would keep its strides, while every op
    # returns contiguous tensors, and under torch.compile the two would disagree.
    from torch._subclasses.fake_tensor import FakeTensorMode

    logits2, tables, rows, targets = make(n=9, v=17, r=5)
    l2_t = logits2.t().contiguous().t()
    assert not l2_t.is_contiguous()
    scales = torch.rand(9, 3)
    _, lse = torch.ops.golf.tiered_loss(l2_t, tables, rows, targets, 30.0)
    calls = [(torch.ops.golf.tiered_loss_train, (l2_t, tables, rows, targets, 30.0, 0.25, scales, True)),
             (torch.ops.golf.tiered_loss_backward, (torch.rand(9), torch.rand(9), l2_t, tables, rows, targets, lse,
                                                    30.0, True, scales, True)),
             (torch.ops.golf.target_bytes, (targets[None].expand(3, 9).t(), targets[None].expand(3, 9).t().contiguous(),
                                            torch.ones(17, dtype=torch.int32), torch.zeros(17, dtype=torch.bool),
                                            torch.zeros(17, dtype=torch.bool)))]
    for op, args in calls:
        real = op(*args)
        with FakeTensorMode() as mode:
            fake = op(*(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args))
        for r, f in zip(real if isinstance(real, tuple) else (real,), fake if isinstance(fake, tuple) else (fake,)):
            assert (f.shape, f.stride(), f.dtype) == (r.shape, r.stride(), r.dtype), op
        torch.library.opcheck(op, args)
    torch.library.opcheck(torch.ops.golf.tiered_loss, (l2_t.requires_grad_(), tables, rows, targets, 30.0,
                                                       scales.requires_grad_()))


def test_bad_inputs_are_named():
    logits2, tables, rows, targets = make()
    with pytest.raises(RuntimeError, match="prior_rows must be int32"):
        torch.ops.golf.tiered_loss(logits2, tables, rows.long(), targets, 30.0)
    with pytest.raises(RuntimeError, match="prior_tables must be float32"):
        torch.ops.golf.tiered_loss(logits2, tables[:, :-1], rows, targets, 30.0)
    bad_rows = rows.clone()
    bad_rows[3, 1] = tables.shape[0]
    with pytest.raises(IndexError, match=rf"prior_rows\[3, 1\] = {tables.shape[0]}:"):
        torch.ops.golf.tiered_loss(logits2, tables, bad_rows, targets, 30.0)


# --- golf::tiered_loss_train: the forward that writes the gradient in the same pass ---------------------------

@pytest.mark.parametrize("softcap", [30.0, 0.0])
@pytest.mark.parametrize("scaled", [False, True])
def test_train_variant_is_forward_plus_backward_bit_for_bit(softcap, scaled):
    """Its nll and lse are tiered_loss's, its gradients tiered_loss_backward's for grad_nll = grad_weight,
    grad_lse = 0, bit for bit (the same row math, once); and both match the reference."""
    logits2, tables, rows, targets = make(v=1000)
    scales = torch.rand(rows.shape, generator=torch.Generator().manual_seed(4)) if scaled else None
    w = 1 / 37
    got = torch.ops.golf.tiered_loss_train(logits2, tables, rows, targets, softcap, w, scales, scaled)
    nll, lse = torch.ops.golf.tiered_loss(logits2, tables, rows, targets, softcap, scales)
    g_l2, _, g_scales = torch.ops.golf.tiered_loss_backward(torch.full_like(nll, w), torch.zeros_like(nll), logits2,
                                                            tables, rows, targets, lse, softcap, False, scales, scaled)
    for name, a, b in zip(("nll", "lse", "d l2", "d scales"), got, (nll, lse, g_l2, g_scales)):
        assert torch.equal(a, b), name
    want = ops.ref_tiered_loss_train(logits2, tables, rows, targets, softcap, w, scales, scaled)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_tiered_nll_backward_scales_to_any_upstream_gradient():
    """tiered_nll's backward rescales the gradient written for grad_weight: exact (every bit of tiered_loss's)
    for the loss it was written for, and right for any other upstream gradient too."""
    logits2, tables, rows, targets = make()
    scales = torch.rand(rows.shape, generator=torch.Generator().manual_seed(5))
    w = 1 / logits2.shape[0]
    upstream = torch.rand(logits2.shape[0], generator=torch.Generator().manual_seed(6))
    for exact, loss in ((True, lambda nll: nll.sum() * w), (False, lambda nll: (nll * upstream).sum())):
        grads = []
        for fused in (True, False):
            l2, s = logits2.clone().requires_grad_(), scales.clone().requires_grad_()
            nll = (ops.tiered_nll(l2, tables, rows, targets, 30.0, w, s) if fused
                   else ops.tiered_loss(l2, tables, rows, targets, 30.0, s)[0])
            loss(nll).backward()
            grads.append((l2.grad, s.grad))
        if exact:
            assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
        torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-5, atol=1e-7)


def test_tiered_nll_with_trainable_tables_takes_the_two_pass_path():
    logits2, tables, rows, targets = make()
    l2, t = logits2.clone().requires_grad_(), tables.clone().requires_grad_()
    ops.tiered_nll(l2, t, rows, targets, 30.0, 1.0).sum().backward()
    assert l2.grad is not None
    ref_t = tables.clone().requires_grad_()
    ops.ref_tiered_loss(logits2, ref_t, rows, targets, 30.0)[0].sum().backward()
    torch.testing.assert_close(t.grad, ref_t.grad, rtol=1e-4, atol=1e-6)


def test_train_variant_bf16_opcheck_and_errors():
    logits2, tables, rows, targets = make(dtype=torch.bfloat16)
    out = torch.ops.golf.tiered_loss_train(logits2, tables, rows, targets, 30.0, 0.5)
    assert out[2].dtype == torch.bfloat16 and out[3].shape == (0, rows.shape[1])
    want = ops.ref_tiered_loss_train(logits2, tables, rows, targets, 30.0, 0.5)
    torch.testing.assert_close(out[2], want[2])
    small = make(n=9, v=17, r=5)
    torch.library.opcheck(torch.ops.golf.tiered_loss_train, (small[0].requires_grad_(), *small[1:], 30.0, 0.25))
    torch.library.opcheck(torch.ops.golf.tiered_loss_train,
                          (*small, 30.0, 0.25, torch.rand(9, 3).requires_grad_(), True))
    with pytest.raises(RuntimeError, match="golf::tiered_loss_train: grad_weight must be finite"):
        torch.ops.golf.tiered_loss_train(logits2, tables, rows, targets, 30.0, float("nan"))
    with pytest.raises(RuntimeError, match="prior_rows must be int32"):
        torch.ops.golf.tiered_loss_train(logits2, tables, rows.long(), targets, 30.0, 1.0)
