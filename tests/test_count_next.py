"""golf::count_next: C++ CPU == reference; exact on a hand-made sequence; bad pairs are errors."""

import pytest
import torch

from golf import ops


def test_hand_made_counts():
    ctx = torch.tensor([0, 1, 0, -1, 2, 0])
    nxt = torch.tensor([3, 3, 3, 0, 1, 2])
    want = torch.zeros(3, 4, dtype=torch.int64)
    want[0, 3], want[1, 3], want[2, 1], want[0, 2] = 2, 1, 1, 1
    assert torch.equal(torch.ops.golf.count_next(ctx, nxt, 3, 4), want)
    assert torch.equal(ops.ref_count_next(ctx, nxt, 3, 4), want)


@pytest.mark.parametrize("n,num_ctx,vocab", [(0, 5, 7), (1000, 7, 5), (200_000, 64, 128), (200_000, 3000, 1024)])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
def test_matches_reference(n, num_ctx, vocab, dtype):
    g = torch.Generator().manual_seed(n)
    ctx = torch.randint(-1, num_ctx, (n,), generator=g).to(dtype)
    nxt = torch.randint(0, vocab, (n,), generator=g).to(dtype)
    got = torch.ops.golf.count_next(ctx, nxt, num_ctx, vocab)
    assert got.dtype == torch.int64 and got.shape == (num_ctx, vocab)
    assert torch.equal(got, ops.ref_count_next(ctx, nxt, num_ctx, vocab))
    assert int(got.sum()) == int((ctx >= 0).sum())


def test_out_of_range_pairs_are_errors():
    with pytest.raises(IndexError, match=r"ctx\[1\] = 3"):
        torch.ops.golf.count_next(torch.tensor([0, 3]), torch.tensor([1, 1]), 3, 4)
    with pytest.raises(IndexError, match=r"next\[1\] = 4"):
        torch.ops.golf.count_next(torch.tensor([0, 1]), torch.tensor([1, 4]), 3, 4)
    with pytest.raises(RuntimeError, match="same|shape"):
        torch.ops.golf.count_next(torch.tensor([0, 1]), torch.tensor([1]), 3, 4)


def test_opcheck():
    ctx = torch.randint(-1, 6, (300,))
    torch.library.opcheck(torch.ops.golf.count_next, (ctx, torch.randint(0, 9, (300,)), 6, 9))
