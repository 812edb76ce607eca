"""golf.evaluate: the window plan (every target once), sliding BPB == a brute-force per-token loop, plain ==
the training loss, batching and the C++/reference scorers agree, 2 gloo ranks == 1 process."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from golf import ops
from golf.data import ByteTables, bits_per_byte, load_shard, load_val_tokens
from golf.errors import ConfigError, DataError
from golf.evaluate import EvalResult, evaluate, plan_coverage, window_plan
from golf.model import ModelConfig, TieredLM, Transformer, make_prior_rows
from golf.tiers import TierConfig, Vocab, fit_tiers

pytestmark = pytest.mark.usefixtures("one_thread")


# --- tiny predictors on real data (shared with test_audit.py) -------------------------------------------

def tiny_transformer(seed: int = 0, prior_gate: str = "off", prior_columns: int = 0) -> Transformer:
    """2 layers, d32, with SmearGate and BigramHash (both mix t-1 into t). The zero-initialised matrices and
    gates are given random values: at init the blocks are identities and the model would ignore the context
    (and a prior gate would weigh every row 1)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=1024, num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1, smear_gate=True,
                      bigram_buckets=64, bigram_dim=8, prior_gate=prior_gate, prior_columns=prior_columns)
    model = Transformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(std=0.3)
    return model.eval()


def tiny_tiers(train_shard, sp):
    tokens = torch.from_numpy(np.asarray(load_shard(train_shard)[:200_000]).astype(np.int64))
    return fit_tiers(tokens, Vocab.from_tokenizer(sp), TierConfig(prev_rank=8, pair_rank=8, pair_rows=256))


def tiny_lm(train_shard, sp, *, baseline: bool = False, seed: int = 0, prior_gate: str = "off"):
    """(TieredLM, prior_rows): real tiers fit on 200k train tokens, or the baseline (K = 0)."""
    tiers = None if baseline else tiny_tiers(train_shard, sp)
    tables = torch.zeros(1, 1024) if tiers is None else tiers.prior_tables()
    transformer = tiny_transformer(seed, prior_gate, 0 if tiers is None else tiers.columns)
    return TieredLM(transformer, tables, trainable=False), make_prior_rows(tiers)


@pytest.fixture(scope="module")
def tiered(train_shard, sp):
    return tiny_lm(train_shard, sp)


@pytest.fixture(scope="module")
def gated(train_shard, sp):
    """The tiny model with a prior gate whose weights vary by position (random w, b, a)."""
    return tiny_lm(train_shard, sp, prior_gate="gate")


@pytest.fixture(scope="module")
def val(val_shard):
    return np.asarray(load_shard(val_shard)[:2000])


# --- plan ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("num_tokens,window,stride", [
    (1000, 64, 16), (1001, 64, 16), (1000, 64, 48), (130, 64, 7), (65, 64, 16), (66, 64, 16), (40, 64, 16),
    (2, 64, 16), (500, 64, 1), (97, 8, 3), (1000, 64, 64), (1025, 64, 64)])
def test_plan_scores_every_target_exactly_once(num_tokens, window, stride):
    plan = window_plan(num_tokens, window, stride)
    counts = plan_coverage(plan, num_tokens)
    start, length, score_from = plan.T
    assert (start >= 0).all() and (start + length <= num_tokens - 1).all() and (score_from < length).all()
    if stride < window:
        assert (counts[1:] == 1).all() and counts[0] == 0
        # Each target's context: its window's tokens before it; the full window once the stream allows it.
        first = start + score_from + 1
        assert first.tolist() == sorted(first.tolist())
        if num_tokens - 1 >= window:
            assert (length == window).all()
            assert (score_from[1:] >= window - stride).all()  # >= window - stride tokens of context
        else:
            assert plan.tolist() == [[0, num_tokens - 1, 0]]
    else:  # plain: whole windows only, as load_val_tokens(seq_len) truncates
        usable = (num_tokens - 1) // window * window
        assert (counts[1:usable + 1] == 1).all() and (counts[usable + 1:] == 0).all()
        assert (length == window).all() and (score_from == 0).all()
        assert usable + 1 == len(load_val_tokens_like(num_tokens, window))


def load_val_tokens_like(num_tokens: int, window: int) -> np.ndarray:
    """What load_val_tokens(seq_len=window) keeps of a stream of num_tokens (same rule, no file)."""
    return np.arange(num_tokens)[: (num_tokens - 1) // window * window + 1]


def test_plain_plan_matches_load_val_tokens(val_shard):
    full = np.asarray(load_shard(val_shard))
    kept = load_val_tokens([val_shard], seq_len=1024)
    counts = plan_coverage(window_plan(len(full), 1024, 1024), len(full))
    assert counts[1:].sum() == len(kept) - 1 and (counts[1:len(kept)] == 1).all()


def test_plan_rejects_bad_arguments():
    with pytest.raises(ConfigError, match="window"):
        window_plan(100, 0, 1)
    with pytest.raises(ConfigError, match="stride"):
        window_plan(100, 8, 0)
    with pytest.raises(DataError, match="num_tokens"):
        window_plan(1, 8, 4)
    with pytest.raises(DataError, match="num_tokens.*expected >= 65"):
        window_plan(40, 64, 64)  # plain eval needs one whole window
    with pytest.raises(DataError, match=r"plan\[1\]"):
        plan_coverage(np.array([[0, 8, 0], [5, 8, 2]]), 12)


# --- evaluate --------------------------------------------------------------------------------------------

def brute_force(lm, prior_rows, tokens: np.ndarray, plan: np.ndarray, tables: ByteTables) -> tuple[float, float]:
    """(nll_sum, bpb) scoring each target alone: the model reads exactly the tokens of its plan window before
    it, the full logits go through the reference tiered loss; float64 sums."""
    ids = torch.from_numpy(tokens.astype(np.int64))
    nll_sum = byte_sum = 0.0
    with torch.no_grad():
        for start, length, score_from in plan.tolist():
            for target in range(start + score_from + 1, start + length + 1):
                x = ids[start:target][None]
                logits2 = lm.transformer(x)[0, -1:]
                scales = lm.transformer.prior_scales(lm.transformer.hidden(x)[0, -1:])
                nll, _ = ops.ref_tiered_loss(logits2, lm.prior_tables, prior_rows(x)[0, -1:], ids[target:target + 1],
                                             lm.transformer.softcap, scales)
                nll_sum += float(nll.double())
                byte_sum += int(tables.target_bytes(ids[target - 1:target], ids[target:target + 1]))
    return nll_sum, bits_per_byte(nll_sum, byte_sum)


@pytest.mark.parametrize("window,stride,model", [(64, 16, "tiered"), (48, 48, "tiered"), (64, 16, "gated")])
def test_evaluate_equals_brute_force_per_token_loop(request, val, tables, window, stride, model):
    lm, prior_rows = request.getfixturevalue(model)
    tokens = val[:422]  # 421 targets: not a multiple of the stride, so the tail window is used
    got = evaluate(lm, prior_rows, tokens, window=window, stride=stride, byte_tables=tables, batch_windows=5,
                   progress=False)
    nll_sum, bpb = brute_force(lm, prior_rows, tokens, window_plan(len(tokens), window, stride), tables)
    assert got.targets == (421 if stride < window else 421 // 48 * 48)
    assert got.nll_sum == pytest.approx(nll_sum, rel=1e-6)
    assert got.val_bpb == pytest.approx(bpb, rel=1e-6)


def test_sliding_uses_context_and_differs_from_plain(tiered, val, tables):
    """The tiny model reads its context: the same tokens scored with other contexts give another BPB (so the
    equalities in this file are not those of a context-blind model)."""
    lm, prior_rows = tiered
    tokens = load_val_tokens_like(len(val), 64)
    tokens = val[:len(tokens)]
    sliding = evaluate(lm, prior_rows, tokens, window=64, stride=16, byte_tables=tables, batch_windows=8,
                       progress=False)
    plain = evaluate(lm, prior_rows, tokens, window=64, stride=64, byte_tables=tables, batch_windows=8,
                     progress=False)
    assert sliding.targets == plain.targets == len(tokens) - 1 and sliding.bytes == plain.bytes
    assert abs(sliding.val_bpb - plain.val_bpb) > 1e-3


@pytest.mark.parametrize("model", ["tiered", "gated"])
def test_plain_equals_the_training_loss(request, val, tables, model):
    """Plain eval (stride >= window: every eval of golf.train) scores what the training forward's loss says."""
    lm, prior_rows = request.getfixturevalue(model)
    windows = (len(val) - 1) // 64
    chunk = torch.from_numpy(val[:windows * 64 + 1].astype(np.int64))
    x, y = chunk[:-1].view(windows, 64), chunk[1:].view(windows, 64)
    with torch.no_grad():
        nll = lm(x, prior_rows(x), y).double()
    nbytes = int(tables.target_bytes(x, y).sum())
    for stride in (64, 100):  # stride >= window is plain eval
        got = evaluate(lm, prior_rows, val, window=64, stride=stride, byte_tables=tables, batch_windows=6,
                       progress=False)
        assert (got.targets, got.bytes) == (windows * 64, nbytes)
        assert got.val_loss == pytest.approx(float(nll.mean()), rel=1e-6)
        assert got.val_bpb == pytest.approx(bits_per_byte(float(nll.sum()), nbytes), rel=1e-6)
        assert got.windows == windows and got.stride == stride


def test_batching_scorers_and_baseline_agree(tiered, train_shard, sp, val, tables):
    lm, prior_rows = tiered
    kw = dict(window=64, stride=24, byte_tables=tables, progress=False)
    one = evaluate(lm, prior_rows, val, batch_windows=1, **kw)
    many = evaluate(lm, prior_rows, val, batch_windows=7, **kw)
    ref = evaluate(lm, prior_rows, val, batch_windows=7, score=ops.ref_score_windows, **kw)
    assert isinstance(one, EvalResult) and one.targets == len(val) - 1
    assert many.val_bpb == pytest.approx(one.val_bpb, rel=1e-7)
    assert ref.val_bpb == pytest.approx(many.val_bpb, rel=1e-6)
    assert json.loads(json.dumps(one.to_dict()))["window"] == 64
    base_lm, base_rows = tiny_lm(train_shard, sp, baseline=True)
    base = evaluate(base_lm, base_rows, val, batch_windows=7, **kw)
    assert base.targets == one.targets and base.val_bpb != pytest.approx(one.val_bpb, rel=1e-3)
    short = evaluate(base_lm, base_rows, val[:200], batch_windows=3, **kw)  # K = 0 prior rows
    assert short.val_bpb == pytest.approx(brute_force(base_lm, base_rows, val[:200], window_plan(200, 64, 24),
                                                      tables)[1], rel=1e-6)


def test_short_stream_is_one_window(tiered, val, tables):
    lm, prior_rows = tiered
    got = evaluate(lm, prior_rows, val[:30], window=64, stride=16, byte_tables=tables, batch_windows=4,
                   progress=False)
    assert got.targets == 29 and got.windows == 1
    assert got.val_bpb == pytest.approx(brute_force(lm, prior_rows, val[:30], window_plan(30, 64, 16), tables)[1],
                                        rel=1e-6)


def test_world_size_without_process_group_is_a_config_error(tiered, val, tables):
    lm, prior_rows = tiered

    class TwoRanks:
        rank, world_size = 0, 2

    with pytest.raises(ConfigError, match="world_size=2"):
        evaluate(lm, prior_rows, val, window=64, stride=16, byte_tables=tables, batch_windows=4, dist=TwoRanks(),
                 progress=False)
    with pytest.raises(ConfigError, match="batch_windows"):
        evaluate(lm, prior_rows, val, window=64, stride=16, byte_tables=tables, batch_windows=0, progress=False)


def _rank_main(rank: int, world: int, init_file: str, model_path: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        saved = torch.load(model_path, weights_only=False)
        result = evaluate(saved["lm"], make_prior_rows(saved["tiers"]), saved["tokens"], window=64, stride=24,
                          byte_tables=saved["tables"], batch_windows=5, progress=False)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(result.to_dict(), f)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process(train_shard, sp, val, tables, tmp_path):
    tiers = tiny_tiers(train_shard, sp)
    lm = TieredLM(tiny_transformer(), tiers.prior_tables(), trainable=False)
    tokens = val[:1500]  # 61 windows: rank 0 takes the first 30, rank 1 the last 31
    one = evaluate(lm, make_prior_rows(tiers), tokens, window=64, stride=24, byte_tables=tables, batch_windows=5,
                   progress=False)
    torch.save({"lm": lm, "tiers": tiers, "tokens": tokens, "tables": tables}, tmp_path / "model.pt")
    torch.multiprocessing.spawn(_rank_main, args=(2, str(tmp_path / "init"), str(tmp_path / "model.pt"),
                                                  str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r in ranks:
        assert (r["targets"], r["bytes"], r["windows"]) == (one.targets, one.bytes, one.windows)
        assert r["val_bpb"] == pytest.approx(one.val_bpb, rel=1e-9)
    assert ranks[0]["nll_sum"] == ranks[1]["nll_sum"]  # all-reduced: every rank holds the same sums
