"""The copy head (golf.model.CopyHead): counts exact on a hand-made sequence, causal and reset at BOS; forward ==
head GEMM + a per-position loop; golf::score_windows with sparse extra logits (C++ == reference == tiered_loss
forward, opcheck, errors); sliding eval == brute force and the audit's four conditions on real val tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from golf import ops
from golf.data import load_shard
from golf.evaluate import audit, evaluate, window_plan
from golf.model import ModelConfig, TieredLM, Transformer, copy_counts, make_prior_rows

from test_evaluate import brute_force, tiny_tiers

pytestmark = pytest.mark.usefixtures("one_thread")
BOS = 1


def copy_model(seed: int = 0, vocab: int = 1024) -> Transformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab, num_layers=1, model_dim=32, num_heads=2, num_kv_heads=1, copy_head=True)
    model = Transformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(std=0.3)  # zero-init matrices and the gate weights: give them values that matter
    return model.eval()


def loop_counts(ids: list[int], bos: int) -> dict[tuple[int, int], int]:
    """{(t, v): #{j < t: ids[j] == ids[t], ids[j+1] == v, no BOS in (j, t]}}, one position at a time."""
    out: dict[tuple[int, int], int] = {}
    for t in range(len(ids)):
        for j in range(t - 1, -1, -1):
            if ids[j + 1] == bos:
                break  # a BOS at j+1 <= t: j belongs to an earlier document
            if ids[j] == ids[t]:
                out[(t, ids[j + 1])] = out.get((t, ids[j + 1]), 0) + 1
    return out


def as_dict(n, v, c, offset: int = 0) -> dict[tuple[int, int], int]:
    return {(int(a) - offset, int(b)): int(k) for a, b, k in zip(n, v, c)}


def test_counts_on_a_hand_made_sequence():
    ids = torch.tensor([[5, 7, 5, 9, BOS, 5, 7, 5, 7, 5]])
    n, v, c = copy_counts(ids, BOS, 16)
    # 2: the 5 at 0 was followed by 7. 7: the 5 at 5 by 7 (the 5s at 0 and 2 are in the previous document).
    # 8: the 7 at 6 by 5. 9: the 5s at 5 and 7 both by 7.
    assert as_dict(n, v, c) == {(2, 7): 1, (7, 7): 1, (8, 5): 1, (9, 7): 2}
    assert torch.equal(n, torch.sort(n).values)


def test_counts_equal_a_loop_on_real_tokens(val_shard):
    val = np.asarray(load_shard(val_shard)[:4 * 96]).astype(np.int64).reshape(4, 96)
    n, v, c = copy_counts(torch.from_numpy(val), BOS, 1024)
    for b in range(4):
        here = (n >= b * 96) & (n < (b + 1) * 96)
        assert as_dict(n[here], v[here], c[here], offset=b * 96) == loop_counts(val[b].tolist(), BOS)
    assert len(n) > 50  # real text repeats itself: the test compares something


def test_counts_are_causal():
    torch.manual_seed(1)
    ids = torch.randint(2, 12, (1, 64))
    full = as_dict(*copy_counts(ids, BOS, 16))
    for t in (10, 31, 62):
        changed = ids.clone()
        changed[0, t + 1:] = torch.randint(2, 12, (63 - t,))
        again = as_dict(*copy_counts(changed, BOS, 16))
        assert {k: c for k, c in full.items() if k[0] <= t} == {k: c for k, c in again.items() if k[0] <= t}


def test_forward_is_the_head_plus_gated_log_counts():
    model = copy_model(vocab=16)
    ids = torch.randint(2, 16, (2, 24))
    ids[1, 9] = BOS
    with torch.no_grad():
        h = model.hidden(ids)
        want = h @ model.head_weight.T
        for b in range(2):
            for (t, v), c in loop_counts(ids[b].tolist(), BOS).items():
                want[b, t, v] += (h[b, t] @ model.copy.w + model.copy.b) * np.log1p(c)
        torch.testing.assert_close(model(ids), want, rtol=1e-5, atol=1e-5)


def test_the_gate_learns():
    model = copy_model(vocab=16).train()
    ids = torch.randint(2, 16, (2, 24))
    model(ids).logsumexp(-1).sum().backward()
    assert model.copy.w.grad.abs().sum() > 0 and model.copy.b.grad.abs() > 0
    assert model.copy.w._golf_group == "scalar" and model.copy.b._golf_group == "scalar"


# --- golf::score_windows with the sparse extra logits -------------------------------------------------------

def score_inputs(seed: int = 0):
    torch.manual_seed(seed)
    model = copy_model(seed, vocab=64)
    x = torch.randint(2, 10, (3, 40))
    keep = torch.rand(3, 40) > 0.4
    with torch.no_grad():
        h = model.hidden(x)
        extra = model.copy_logits(h, x, keep)
    n = int(keep.sum())
    tables = torch.randn(10, 64)
    rows = torch.randint(-1, 10, (n, 2), dtype=torch.int32)
    targets = torch.randint(0, 64, (n,))
    return model, x, keep, h[keep].contiguous(), tables, rows, targets, extra


@pytest.mark.parametrize("cap", [30.0, 0.0])
def test_score_windows_extra_cpp_equals_reference_and_tiered_loss(cap):
    model, x, keep, h, tables, rows, targets, extra = score_inputs()
    assert len(extra[0]) > 20
    got = ops.score_windows(h, model.head_weight.detach(), tables, rows, targets, cap, extra=extra)
    ref = ops.ref_score_windows(h, model.head_weight.detach(), tables, rows, targets, cap, extra)
    with torch.no_grad():
        dense, _ = ops.ref_tiered_loss(model(x)[keep], tables, rows, targets, cap)
    assert ops.has_kernel("score_windows", "cpu")
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, dense, rtol=1e-5, atol=1e-5)
    plain = ops.score_windows(h, model.head_weight.detach(), tables, rows, targets, cap)
    assert (got - plain).abs().max() > 1e-3  # the extra logits change the scores


def test_score_windows_extra_opcheck_and_errors():
    model, _, _, h, tables, rows, targets, (r, c, v) = score_inputs()
    head = model.head_weight.detach()
    ptr = ops.csr_ptr(r, h.shape[0])
    torch.library.opcheck(torch.ops.golf.score_windows, (h, head, tables, rows, targets, 30.0, ptr, c, v.float()))
    op = torch.ops.golf.score_windows
    with pytest.raises(RuntimeError, match="together or not at all"):
        op(h, head, tables, rows, targets, 30.0, ptr, c, None)
    with pytest.raises(RuntimeError, match="extra_ptr must be int64"):
        op(h, head, tables, rows, targets, 30.0, ptr[:-1], c, v)
    with pytest.raises(IndexError, match=r"extra_ptr\[0\] = "):
        op(h, head, tables, rows, targets, 30.0, ptr.flip(0), c, v)
    with pytest.raises(RuntimeError, match="extra_vals must be float32"):
        op(h, head, tables, rows, targets, 30.0, ptr, c, v.double())
    bad = c.clone()
    bad[0] = 64
    with pytest.raises(IndexError, match=r"extra_cols\[0\] = 64"):
        op(h, head, tables, rows, targets, 30.0, ptr, bad, v)


# --- evaluation on real val tokens ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def copy_lm(train_shard, sp):
    tiers = tiny_tiers(train_shard, sp)
    return TieredLM(copy_model(), tiers.prior_tables(), trainable=False), tiers


def test_sliding_eval_equals_brute_force(copy_lm, val_shard, tables):
    lm, tiers = copy_lm
    tokens = np.asarray(load_shard(val_shard)[:302])
    got = evaluate(lm, make_prior_rows(tiers), tokens, window=64, stride=16, byte_tables=tables, batch_windows=5,
                   progress=False)
    ref = evaluate(lm, make_prior_rows(tiers), tokens, window=64, stride=16, byte_tables=tables, batch_windows=3,
                   progress=False, score=ops.ref_score_windows)
    nll_sum, bpb = brute_force(lm, make_prior_rows(tiers), tokens, window_plan(len(tokens), 64, 16), tables)
    assert got.nll_sum == pytest.approx(nll_sum, rel=1e-6) and ref.nll_sum == pytest.approx(nll_sum, rel=1e-6)
    assert got.val_bpb == pytest.approx(bpb, rel=1e-6)


def test_audit_passes_with_the_copy_head(copy_lm, val_shard):
    lm, tiers = copy_lm
    val = np.asarray(load_shard(val_shard)[:1203])
    report = audit(lm, make_prior_rows(tiers), val, window=64, stride=16, positions=12, seed=3)
    assert all(check["ok"] for check in report.values()), report
    assert report["causality"]["max_abs_diff"] == 0.0
