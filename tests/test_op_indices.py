"""One index rule for every op and implementation (csrc/checks.h, golf.ops.check_indices): ids and targets in
[0, size); prior rows and count_next contexts -1 (none) or in [0, size), anything below -1 an error. A bad index
is an IndexError naming the argument, its position and its value, from the reference and the C++ op alike: no op
returns memory it did not write."""

from __future__ import annotations

import re

import pytest
import torch

from golf import ops

V, R, N, K = 10, 5, 4, 3


def both(ref, kernel):
    """The reference and the compiled CPU op of one call, as (name, callable) pairs."""
    return [("reference", ref), ("cpu", kernel)]


def raises_naming(fn, arg: str, position: str, value: int):
    with pytest.raises(IndexError, match=re.escape(f"{arg}{position} = {value}:")):
        fn()


def loss_inputs():
    torch.manual_seed(0)
    rows = torch.tensor([[0, -1, 4], [1, 2, -1], [-1, -1, -1], [3, 0, 0]], dtype=torch.int32)
    return torch.randn(N, V), torch.randn(R, V), rows, torch.tensor([1, 2, 3, 9])


@pytest.mark.parametrize("impl", ["reference", "cpu"])
@pytest.mark.parametrize("arg,position,value", [("prior_rows", "[2, 1]", -2), ("prior_rows", "[2, 1]", -7),
                                                ("prior_rows", "[0, 2]", R), ("targets", "[3]", -3),
                                                ("targets", "[1]", V)])
def test_tiered_loss_refuses_bad_indices(impl, arg, position, value):
    l2, tables, rows, targets = loss_inputs()
    idx = {"prior_rows": rows, "targets": targets}[arg]
    where = tuple(int(i) for i in position.strip("[]").split(","))
    idx[where] = value
    fn = ops.ref_tiered_loss if impl == "reference" else torch.ops.golf.tiered_loss
    raises_naming(lambda: fn(l2, tables, rows, targets, 30.0), arg, position, value)


def test_tiered_loss_minus_one_means_no_row_everywhere():
    l2, tables, rows, targets = loss_inputs()
    nll_ref, _ = ops.ref_tiered_loss(l2, tables, rows, targets, 30.0)
    nll_cpu, _ = torch.ops.golf.tiered_loss(l2, tables, rows, targets, 30.0)
    torch.testing.assert_close(nll_cpu, nll_ref)
    # Row 2 has no prior at all: the plain softcapped cross-entropy.
    z = 30.0 * torch.tanh(l2[2] / 30.0)
    assert float(nll_cpu[2]) == pytest.approx(float(torch.logsumexp(z, 0) - z[targets[2]]), rel=1e-5)


@pytest.mark.parametrize("arg,position,value", [("prior_rows", "[1, 0]", -3), ("prior_rows", "[1, 0]", R),
                                                ("targets", "[0]", -1), ("targets", "[0]", V + 5)])
def test_tiered_loss_backward_refuses_bad_indices(arg, position, value):
    l2, tables, rows, targets = loss_inputs()
    _, lse = torch.ops.golf.tiered_loss(l2, tables, rows, targets, 30.0)
    idx = {"prior_rows": rows, "targets": targets}[arg]
    idx[tuple(int(i) for i in position.strip("[]").split(","))] = value
    ones = torch.ones(N)
    raises_naming(lambda: torch.ops.golf.tiered_loss_backward(ones, ones, l2, tables, rows, targets, lse, 30.0, True),
                  arg, position, value)
    with pytest.raises(RuntimeError, match="grad_lse must be"):
        torch.ops.golf.tiered_loss_backward(ones, ones[:2], l2, tables, rows.clamp(-1, R - 1), targets.clamp(0, V - 1),
                                            lse, 30.0, False)


def score_inputs():
    torch.manual_seed(1)
    l2, tables, rows, targets = loss_inputs()
    hidden, head = torch.randn(N, 6), torch.randn(V, 6)
    extra = (torch.tensor([0, 0, 2, 3]), torch.tensor([1, 4, 9, 0]), torch.randn(4))
    return hidden, head, tables, rows, targets, extra


@pytest.mark.parametrize("impl", ["reference", "cpu"])
@pytest.mark.parametrize("arg,position,value", [("prior_rows", "[3, 2]", -4), ("prior_rows", "[3, 2]", R + 1),
                                                ("targets", "[2]", -3), ("targets", "[2]", V),
                                                ("extra_cols", "[2]", -1), ("extra_cols", "[2]", V)])
def test_score_windows_refuses_bad_indices(impl, arg, position, value):
    hidden, head, tables, rows, targets, extra = score_inputs()
    idx = {"prior_rows": rows, "targets": targets, "extra_cols": extra[1]}[arg]
    idx[tuple(int(i) for i in position.strip("[]").split(","))] = value
    if impl == "reference":
        fn = lambda: ops.ref_score_windows(hidden, head, tables, rows, targets, 30.0, extra=extra)  # noqa: E731
    else:
        ptr = ops.csr_ptr(extra[0], N)
        fn = lambda: torch.ops.golf.score_windows(hidden, head, tables, rows, targets, 30.0, ptr,  # noqa: E731
                                                  extra[1], extra[2])
    raises_naming(fn, arg, position, value)


@pytest.mark.parametrize("ptr,position,value", [([1, 1, 2, 3, 4], "[0]", 1), ([0, 2, 1, 3, 4], "[2]", 1),
                                                ([0, 2, 2, 3, 3], "[4]", 3), ([0, -1, 2, 3, 4], "[1]", -1)])
def test_score_windows_refuses_bad_row_pointers(ptr, position, value):
    hidden, head, tables, rows, targets, (_, cols, vals) = score_inputs()
    raises_naming(lambda: torch.ops.golf.score_windows(hidden, head, tables, rows, targets, 30.0,
                                                       torch.tensor(ptr), cols, vals), "extra_ptr", position, value)


@pytest.mark.parametrize("rows,position,value", [([0, 0, 2, -1], "[3]", -1), ([0, 0, 2, N], "[3]", N),
                                                 ([0, 2, 1, 3], "[2]", 1)])
def test_score_windows_refuses_bad_sparse_rows(rows, position, value):
    """The sparse logits' rows (COO, ascending) are checked before they become CSR pointers."""
    hidden, head, tables, prior_rows, targets, (_, cols, vals) = score_inputs()
    extra = (torch.tensor(rows), cols, vals)
    for fn in (ops.ref_score_windows, ops.score_windows):
        raises_naming(lambda: fn(hidden, head, tables, prior_rows, targets, 30.0, extra=extra), "extra_rows",
                      position, value)


@pytest.mark.parametrize("impl", ["reference", "cpu"])
@pytest.mark.parametrize("arg,value", [("prev", -3), ("prev", V), ("target", -1), ("target", V + 2)])
def test_target_bytes_refuses_bad_ids(impl, arg, value):
    base = torch.arange(V, dtype=torch.int32)
    lead, boundary = torch.zeros(V, dtype=torch.bool), torch.zeros(V, dtype=torch.bool)
    prev, target = torch.tensor([[1, 2], [3, 4]]), torch.tensor([[2, 3], [4, 5]])
    {"prev": prev, "target": target}[arg][1, 0] = value
    fn = ops.ref_target_bytes if impl == "reference" else torch.ops.golf.target_bytes
    raises_naming(lambda: fn(prev, target, base, lead, boundary), arg, "[1, 0]", value)


@pytest.mark.parametrize("impl", ["reference", "cpu"])
@pytest.mark.parametrize("arg,value", [("ctx", -2), ("ctx", 3), ("next", -1), ("next", V)])
def test_count_next_refuses_bad_pairs_and_sizes(impl, arg, value):
    ctx, nxt = torch.tensor([0, -1, 2, 1, 0]), torch.tensor([1, 2, 3, 4, 5])
    fn = ops.ref_count_next if impl == "reference" else torch.ops.golf.count_next
    assert int(fn(ctx, nxt, 3, V).sum()) == 4  # -1: no context, not counted
    {"ctx": ctx, "next": nxt}[arg][3] = value
    raises_naming(lambda: fn(ctx, nxt, 3, V), arg, "[3]", value)
    with pytest.raises((ValueError, RuntimeError), match="num_ctx"):
        fn(ctx.clamp(-1, 0), nxt.clamp(0, V - 1), 0, V)


@pytest.mark.parametrize("fn", [ops.ref_unpack_int6, torch.ops.golf.unpack_int6])
def test_unpack_int6_refuses_a_negative_count(fn):
    with pytest.raises((ValueError, RuntimeError), match="numel"):
        fn(torch.zeros(3, dtype=torch.uint8), -1)


def test_the_cuda_kernels_index_flag_names_the_ops(monkeypatch):
    """CUDA kernels report a bad index through a device-side flag (no host sync per call); check_device_indices
    reads it (train's log steps, the end of each eval) and names the ops that set it."""

    class FlagOf:
        def __init__(self, bits):
            self.bits, self.asked = bits, []

        def take_index_errors(self, device_index):
            self.asked.append(device_index)
            bits, self.bits = self.bits, 0
            return bits

    fake = FlagOf(2 | 8)
    monkeypatch.setattr(ops, "_C", fake)
    ops.check_device_indices("cpu")  # CPU ops check before they run: nothing to read
    assert fake.asked == []
    with pytest.raises(IndexError, match=r"golf::tiered_loss, golf::score_windows on cuda:1: .*GOLF_CHECK_INDICES=1"):
        ops.check_device_indices("cuda:1")
    ops.check_device_indices("cuda:1")  # read once, then clear
    assert fake.asked == [1, 1]
