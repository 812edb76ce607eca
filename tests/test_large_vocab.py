"""V = 8192, the vocabulary of every record since April: the loss ops at that width, tier 1 factored (the same
predictor as its dense rows, never materialised as [R, V]), the priors' memory at the GPU presets' shapes, and
the whole path (train, export with rate control, golf.eval --audit, golf.submit) on an sp8192 set."""

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import torch

from golf import ops
from golf.config import PRESETS, TrainConfig
from golf.data import ByteTables, load_shard
from golf.evaluate import audit, evaluate
from golf.export import load_model
from golf.model import TieredLM, make_prior_rows
from golf.tiers import C, NUM_STATES, Tier0, Tier1, TierConfig, Tiers, Vocab, fit_tiers, prior_logits

from test_evaluate import tiny_transformer
from test_train import events, read_summary, run_inprocess, subprocess_env, tiny_args


@pytest.mark.parametrize("v", [8192, 8200])
def test_loss_ops_at_large_vocab(v):
    """C++ == reference for the one-pass loss (values, both gradients) and score_windows at V = 8192 and one
    width that is not a multiple of the kernels' 2,048-id warp span."""
    g = torch.Generator().manual_seed(v)
    n, r, d = 24, 7, 16
    logits2 = torch.randn(n, v, generator=g) * 20
    tables = torch.randn(r, v, generator=g)
    rows = torch.randint(-1, r, (n, 3), generator=g, dtype=torch.int32)
    scales = torch.rand(n, 3, generator=g) + 0.5
    targets = torch.randint(0, v, (n,), generator=g)
    nll, lse = torch.ops.golf.tiered_loss(logits2, tables, rows, targets, 30.0, scales)
    ref_nll, ref_lse = ops.ref_tiered_loss(logits2, tables, rows, targets, 30.0, scales)
    torch.testing.assert_close(nll, ref_nll, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-5, atol=1e-4)
    grads = []
    for fn in (torch.ops.golf.tiered_loss, ops.ref_tiered_loss):
        l2, s = logits2.clone().requires_grad_(), scales.clone().requires_grad_()
        fn(l2, tables, rows, targets, 30.0, s)[0].sum().backward()
        grads.append((l2.grad, s.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-4, atol=1e-4)
    l2 = logits2.clone().requires_grad_()  # the training op: the gradient written in the forward pass
    (0.5 * ops.tiered_nll(l2, tables, rows, targets, 30.0, 0.5, scales).sum()).backward()
    torch.testing.assert_close(l2.grad, 0.5 * grads[1][0], rtol=1e-4, atol=1e-6)
    hidden, head = torch.randn(n, d, generator=g), torch.randn(v, d, generator=g)
    torch.testing.assert_close(torch.ops.golf.score_windows(hidden, head, tables, rows, targets, 30.0, None, None,
                                                            None, scales),
                               ops.ref_score_windows(hidden, head, tables, rows, targets, 30.0, None, scales),
                               rtol=1e-5, atol=1e-4)


def _shaped_tiers(v: int, tiers: dict) -> Tiers:
    """Tiers with the shapes a fit of these settings has (zeros: only their sizes matter here)."""
    cfg = TierConfig(**tiers)
    vocab = Vocab(torch.zeros(v, dtype=torch.long), *(torch.zeros(v, dtype=torch.long) for _ in range(3)), bos_id=1)
    tier0 = Tier0(vocab.classes, torch.zeros(NUM_STATES, C), torch.zeros(v, dtype=torch.float16))
    z = torch.zeros
    tier1 = Tier1(z(v, cfg.prev_rank), z(v, cfg.prev_rank), z(cfg.pair_rows, cfg.pair_rank), z(v, cfg.pair_rank))
    return Tiers(vocab, tier0, tier1, cfg)


@pytest.mark.parametrize("preset", ["cpu", "h100x8"])
def test_priors_fit_64_mb_at_8192(preset):
    tiers_cfg = {**dataclasses.asdict(TrainConfig().tiers), **PRESETS[preset].get("tiers", {})}
    big = _shaped_tiers(8192, tiers_cfg)
    assert big.factored  # "auto"
    assert big.prior_nbytes() <= 64 * 2**20, big.prior_nbytes()
    assert big.prior_tables().shape == (NUM_STATES, 8192)  # tier 0's rows only
    assert not _shaped_tiers(1024, tiers_cfg).factored      # sp1024 keeps its dense rows


@pytest.fixture(scope="module")
def two_forms(train_shard, sp):
    """The same fit, dense and factored (V = 1024, small ranks)."""
    tokens = torch.from_numpy(np.asarray(load_shard(train_shard)[:200_000]).astype(np.int64))
    dense = fit_tiers(tokens, Vocab.from_tokenizer(sp), TierConfig(prev_rank=8, pair_rank=8, pair_rows=256,
                                                                   tier1_form="dense"))
    factored = dataclasses.replace(dense, cfg=dataclasses.replace(dense.cfg, tier1_form="factored"))
    assert not dense.factored and factored.factored
    return dense, factored


def test_factored_is_the_dense_predictor(two_forms, val_shard, tables):
    dense, factored = two_forms
    x = torch.from_numpy(np.asarray(load_shard(val_shard)[:513]).astype(np.int64))
    scales = torch.rand(512, 3, generator=torch.Generator().manual_seed(1)) + 0.5
    a = prior_logits(dense.prior_tables(), dense.prior_rows(x[:-1]), scales)
    b = prior_logits(factored.prior_tables(), factored.prior_rows(x[:-1]), scales, factored.lowrank())
    torch.testing.assert_close(a, b, rtol=0, atol=2e-5)
    # The training loss and its gradients, with a prior gate (scales with a gradient) and the copy-free stack.
    out = []
    for tiers in (dense, factored):
        transformer = tiny_transformer(0, "gate", tiers.columns)
        lm = TieredLM.of(transformer, tiers)
        xb, yb = x[:-1].view(2, 256), x[1:].view(2, 256)
        nll = lm(xb, make_prior_rows(tiers)(xb), yb, grad_weight=1.0)
        nll.sum().backward()
        out.append((nll.detach(), [p.grad.clone() for p in transformer.parameters() if p.grad is not None]))
    torch.testing.assert_close(out[0][0], out[1][0], rtol=0, atol=1e-4)
    # Both read the same loss ops; only the rows' fp32 rounding differs (one GEMM over every row vs per position),
    # so the gradients agree to a small fraction of each tensor's largest entry.
    for ga, gb in zip(out[0][1], out[1][1], strict=True):
        torch.testing.assert_close(ga, gb, rtol=0, atol=1e-4 * float(ga.abs().max()))
    # Sliding eval and the audit through the factored scorer.
    val = np.asarray(load_shard(val_shard)[:1203])
    results = [evaluate(TieredLM.of(tiny_transformer(0, "gate", t.columns), t), make_prior_rows(t), val, window=64,
                        stride=16, byte_tables=tables, batch_windows=8, progress=False) for t in (dense, factored)]
    assert abs(results[0].val_bpb - results[1].val_bpb) < 1e-6
    lm = TieredLM.of(tiny_transformer(0, "gate", factored.columns), factored)
    report = audit(lm, make_prior_rows(factored), val, window=64, stride=16, positions=8, seed=3)
    assert all(check["ok"] for check in report.values()), report


def test_batch_tables_hold_each_named_row_once(two_forms, val_shard):
    """A factored batch's tables: tier 0's rows, then each tier-1 row the batch names exactly once (so they
    never outgrow min(N, E) rows per column), the rows it points at equal to u[r] @ w^T, -1 kept."""
    _, factored = two_forms
    lowrank, tables = factored.lowrank(), factored.prior_tables()
    x = torch.from_numpy(np.asarray(load_shard(val_shard)[:4096]).astype(np.int64))
    rows = factored.prior_rows(x).reshape(-1, 3)
    rows[::7, 2] = -1
    out, remapped = lowrank.batch_tables(tables, rows)
    added = out.shape[0] - tables.shape[0]
    assert added == sum(int(torch.unique(rows[:, c]).numel()) for c in (1, 2))  # a -1 counts one unread row
    assert added < x.numel()  # one row per position and column would be 2N
    torch.testing.assert_close(out[: tables.shape[0]], tables, rtol=0, atol=0)
    assert torch.equal(remapped[:, 0], rows[:, 0]) and torch.equal(remapped[:, 2] < 0, rows[:, 2] < 0)
    for c, (embed, basis) in enumerate(zip(lowrank.embeds, lowrank.bases)):
        keep = rows[:, 1 + c] >= 0
        want = embed[rows[keep, 1 + c].long()] @ basis.T
        torch.testing.assert_close(out[remapped[keep, 1 + c].long()], want, rtol=0, atol=1e-5)
    with pytest.raises(IndexError, match=r"prior_rows\[:, 1\]"):
        bad = rows.clone()
        bad[0, 1] = lowrank.embeds[0].shape[0]
        lowrank.batch_tables(tables, bad)


def test_fit_at_8192(sp8192_data, sp8192_path):
    """The closed-form fit at V = 8192 on the 971 train-head documents: factored, and better than tier 0."""
    from golf.data import load_tokenizer
    from golf.tiers import stream_nll

    sp = load_tokenizer(sp8192_path)
    ids = torch.from_numpy(np.asarray(load_shard(sp8192_data / "fineweb_train_000000.bin")).astype(np.int64))
    tiers = fit_tiers(ids, Vocab.from_tokenizer(sp), TierConfig(pair_rows=1024))
    assert tiers.factored and tiers.prior_nbytes() < 48 * 2**20
    val = torch.from_numpy(np.asarray(load_shard(sp8192_data / "fineweb_val_000000.bin")[:20_000]).astype(np.int64))
    both = float(stream_nll(tiers, val).mean())
    tier0 = float(stream_nll(dataclasses.replace(tiers, tier1=None), val).mean())
    assert both < tier0 - 0.3 < np.log(8192), (both, tier0)  # 0.42 nats measured on these 650k tokens


def test_whole_path_at_8192(sp8192_data, sp8192_path, tmp_path):
    """train (factored tier 1) -> artifact under rate control -> golf.eval --audit -> golf.submit, at V = 8192."""
    summary = run_inprocess(tiny_args(sp8192_data, sp8192_path, tmp_path, "v8192", "--iterations", "6",
                                      "--set", "model.num_layers=1", "--eval-stride", "32"))
    assert load_model(tmp_path / "v8192" / "model.golf").config["vocab_size"] == 8192
    assert summary["total_bytes"] <= 16_000_000 and summary["val_bpb"] < summary["tiers_only_bpb"] + 0.05
    model = events(tmp_path, "v8192", "model")[0]
    assert model["tier1_form"] == "factored" and float(model["prior_mib"]) < 40
    env = subprocess_env()
    proc = subprocess.run([sys.executable, "-m", "golf.eval", str(tmp_path / "v8192" / "model.golf"), "--data-path",
                           str(sp8192_data), "--tokenizer-path", str(sp8192_path), "--val-tokens", "4096", "--window",
                           "64", "--stride", "32", "--audit", "--audit-positions", "4"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("=PASS") == 4 and "over all 8192 ids" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "golf.submit", str(tmp_path / "v8192"), "--name", "sp8192 tiered",
                           "--author", "golf", "--github-id", "golf", "--out", str(tmp_path / "submission")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "submission" / "train_gpt.py").is_file()
    assert read_summary(tmp_path, "v8192")["val_bpb"] == summary["val_bpb"]
