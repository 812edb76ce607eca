"""golf::score_windows: C++ CPU == PyTorch reference == tiered_loss forward on the same logits; opcheck; errors."""

import pytest
import torch

from golf import ops

pytestmark = pytest.mark.usefixtures("one_thread")


def make(n=150, d=24, v=53, r=11, k=3, seed=0, dtype=torch.float32, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(n, d, generator=g) * scale).to(dtype)
    head = torch.randn(v, d, generator=g).to(dtype)
    tables = torch.randn(r, v, generator=g)
    rows = torch.randint(-1, r, (n, k), generator=g, dtype=torch.int32)
    targets = torch.randint(0, v, (n,), generator=g)
    return hidden, head, tables, rows, targets


def test_kernel_is_built():
    assert ops.has_kernel("score_windows", "cpu")


@pytest.mark.parametrize("softcap", [30.0, 0.0])
@pytest.mark.parametrize("k", [3, 0])
def test_matches_reference_and_tiered_loss(softcap, k):
    hidden, head, tables, rows, targets = make(k=k)
    nll = torch.ops.golf.score_windows(hidden, head, tables, rows, targets, softcap)
    assert nll.dtype == torch.float32 and nll.shape == targets.shape
    ref = ops.ref_score_windows(hidden, head, tables, rows, targets, softcap)
    torch.testing.assert_close(nll, ref, rtol=1e-5, atol=1e-5)
    tiered, _ = ops.tiered_loss(hidden @ head.T, tables, rows, targets, softcap)
    torch.testing.assert_close(nll, tiered, rtol=1e-5, atol=1e-5)
    # Only the scored rows go in: any subset gives the same per-row numbers.
    sub = torch.tensor([149, 3, 64, 65, 0])
    torch.testing.assert_close(torch.ops.golf.score_windows(hidden[sub], head, tables, rows[sub], targets[sub],
                                                            softcap), nll[sub], rtol=1e-6, atol=1e-6)


def test_reference_chunking_is_invisible():
    args = make(n=600)
    whole = ops.ref_tiered_loss(args[0] @ args[1].T, *args[2:], 30.0)[0]
    torch.testing.assert_close(ops.ref_score_windows(*args, 30.0), whole, rtol=1e-6, atol=1e-6)


def test_large_logits_stay_finite_and_exact():
    hidden, head, tables, rows, targets = make(scale=200.0)  # logits in the thousands before the softcap
    for cap in (30.0, 0.0):
        nll = torch.ops.golf.score_windows(hidden, head, tables, rows, targets, cap)
        assert torch.isfinite(nll).all()
        torch.testing.assert_close(nll, ops.ref_score_windows(hidden, head, tables, rows, targets, cap),
                                   rtol=1e-5, atol=1e-3)


def test_bf16_hidden_is_scored_in_fp32():
    hidden, head, tables, rows, targets = make(dtype=torch.bfloat16)
    nll = torch.ops.golf.score_windows(hidden, head.float(), tables, rows, targets, 30.0)
    ref = ops.ref_tiered_loss(hidden.float() @ head.float().T, tables, rows, targets, 30.0)[0]
    torch.testing.assert_close(nll, ref, rtol=1e-5, atol=1e-5)


def test_public_wrapper_and_empty_input():
    args = make()
    torch.testing.assert_close(ops.score_windows(*args, 30.0), torch.ops.golf.score_windows(*args, 30.0))
    hidden, head, tables, rows, targets = make(n=0)
    assert torch.ops.golf.score_windows(hidden, head, tables, rows, targets, 30.0).shape == (0,)
    assert ops.ref_score_windows(hidden, head, tables, rows, targets, 30.0).shape == (0,)


def test_normalised_over_the_full_vocabulary():
    hidden, head, tables, rows, targets = make(n=5)
    v = head.shape[0]
    nll = torch.ops.golf.score_windows(hidden.repeat_interleave(v, 0), head, tables, rows.repeat_interleave(v, 0),
                                       torch.arange(v).repeat(5), 30.0)
    total = torch.exp(-nll.double()).view(5, v).sum(1)
    torch.testing.assert_close(total, torch.ones_like(total), rtol=0, atol=1e-5)


def test_opcheck():
    hidden, head, tables, rows, targets = make(n=9, d=8, v=17, r=5)
    torch.library.opcheck(torch.ops.golf.score_windows, (hidden, head, tables, rows, targets, 30.0))
    torch.library.opcheck(torch.ops.golf.score_windows, (hidden, head, tables, rows, targets, 0.0))


def test_bad_inputs_are_named():
    hidden, head, tables, rows, targets = make()
    with pytest.raises(RuntimeError, match="prior_rows must be int32"):
        torch.ops.golf.score_windows(hidden, head, tables, rows.long(), targets, 30.0)
    with pytest.raises(RuntimeError, match="head_weight must be .*\\[V, 24\\]"):
        torch.ops.golf.score_windows(hidden, head[:, :-1], tables, rows, targets, 30.0)
    with pytest.raises(RuntimeError, match="prior_tables must be float32 \\[R, 53\\]"):
        torch.ops.golf.score_windows(hidden, head, tables[:, :-1], rows, targets, 30.0)
    with pytest.raises(RuntimeError, match="targets must be int64 \\[150\\]"):
        torch.ops.golf.score_windows(hidden, head, tables, rows, targets[:-1], 30.0)
    with pytest.raises(RuntimeError, match="hidden must be"):
        torch.ops.golf.score_windows(hidden.long(), head, tables, rows, targets, 30.0)
    bad_rows = rows.clone()
    bad_rows[7, 2] = tables.shape[0]
    with pytest.raises(IndexError, match=r"prior_rows\[7, 2\] = 11:"):
        torch.ops.golf.score_windows(hidden, head, tables, bad_rows, targets, 30.0)
    bad_targets = targets.clone()
    bad_targets[100] = head.shape[0]
    with pytest.raises(IndexError, match=r"targets\[100\] = "):
        torch.ops.golf.score_windows(hidden, head, tables, rows, bad_targets, 30.0)
    with pytest.raises(ValueError, match="head_weight"):
        ops.ref_score_windows(hidden, head[:, :-1], tables, rows, targets, 30.0)
