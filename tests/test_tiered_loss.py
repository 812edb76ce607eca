"""golf::tiered_loss: C++ CPU == PyTorch reference, values and gradients (logits2 and prior tables)."""

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
