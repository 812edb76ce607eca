"""Tiers 0 and 1: classes, the context function, exact tables, normalisation as stored, BPB bars on real data."""

import dataclasses
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from golf.data import bits_per_byte, load_shard
from golf.errors import ConfigError
from golf.tiers import (CLASSES, NONE, NUM_STATES, TierConfig, Vocab, context, context_counts, fit_part,
                        fit_tiers, hash_bucket, pair_bucket, project_tier1, row_counts, stream_nll, tier_parameters,
                        top_pairs)

sys.path.insert(0, str(Path(__file__).parent))
from kn import KneserNey  # noqa: E402


@pytest.fixture(scope="module")
def vocab(sp):
    return Vocab.from_tokenizer(sp)


def cls(name):
    return CLASSES.index(name)


def test_every_id_has_exactly_one_class(vocab, sp):
    assert vocab.classes.shape == (sp.vocab_size(),)
    assert int(vocab.classes.min()) >= 0 and int(vocab.classes.max()) < len(CLASSES)
    expect = {"<s>": "control", "<0x41>": "byte", "\u2581": "space", "\u2581the": "space_lower_word",
              "\u2581T": "space_cap_word", "ing": "lower_word", ".": "sentence_end", ",": "comma", ":": "comma",
              "(": "open", "\u2581(": "open", ")": "close", '"': "quote", "\u2019": "apostrophe", "5": "digit",
              "-": "punct", ").": "sentence_end", "\u201c": "open", "\u201d": "close"}
    for piece, name in expect.items():
        assert CLASSES[int(vocab.classes[sp.piece_to_id(piece)])] == name, piece
    for name in CLASSES:  # every class is used by this vocabulary
        assert (vocab.classes == cls(name)).any(), name


def test_context_resets_at_bos_and_window_start(vocab, sp):
    p = sp.piece_to_id
    ids = torch.tensor([p("\u2581the"), p("("), p("\u2581a"), p(")"), 1, p("\u2581T"), p('"'), p("\u2581x"), p('"')])
    ctx = context(ids, vocab)
    assert ctx.prev1.tolist() == [-1] + ids[:-1].tolist()
    assert ctx.prev2.tolist()[:5] == [-1, -1, ids[0].item(), ids[1].item(), ids[2].item()]
    assert ctx.prev2[5] == -1  # prev1 is BOS: the previous document is out of reach
    assert ctx.prev2[6] == 1
    state = ctx.state.view(-1)
    bracket, quote = (state // 2) % 2, state % 2
    assert bracket.tolist() == [0, 0, 1, 1, 0, 0, 0, 0, 0]
    assert quote.tolist() == [0, 0, 0, 0, 0, 0, 0, 1, 1]
    c1 = state // 4 // (len(CLASSES) + 1)
    assert c1[0] == NONE and c1[5] == cls("control")
    # Batched windows: each row starts afresh.
    two = context(ids.view(1, -1).repeat(2, 1), vocab)
    assert torch.equal(two.state[1], ctx.state) and (two.prev1[:, 0] == -1).all()
    h = hash_bucket(ctx, 97)
    assert ((h >= 0) == (ctx.prev2 >= 0)).all() and int(h.max()) < 97


def test_top_pairs_own_rows_and_the_rest_share_one(vocab, sp):
    p = sp.piece_to_id
    a, b, c, d = p("\u2581the"), p("\u2581a"), p(","), p(".")
    ids = torch.tensor([1, a, b, a, b, a, b, c, d, c, d, a, c])
    ctx = context(ids, vocab)
    v = vocab.vocab_size
    # Pairs (prev2, prev1) by count: (a,b) 3, (b,a) 2, (c,d) 2, then (<s>,a), (b,c), (d,c), (d,a) once each.
    keys = top_pairs(ctx, v, 3)
    assert keys.dtype == torch.int32
    assert keys.tolist() == sorted([a * v + b, b * v + a, c * v + d])
    rows = pair_bucket(ctx, v, 4, keys)
    row_of = {k: i for i, k in enumerate(keys.tolist())}
    for t in range(ids.numel()):
        if ctx.prev2[t] < 0:
            assert rows[t] == -1
        else:
            assert rows[t] == row_of.get(int(ctx.prev2[t]) * v + int(ctx.prev1[t]), 3), t
    assert (rows == 3).sum() == 4  # the four single pairs share the last row
    # Ties in count break towards the smaller key; more rows than pairs keeps every pair.
    assert top_pairs(ctx, v, 2).tolist() == sorted([a * v + b, min(b * v + a, c * v + d)])
    assert top_pairs(ctx, v, 100).numel() == 7


def test_tier0_tables_exact_on_a_hand_made_sequence(vocab, sp):
    p = sp.piece_to_id
    doc = [1] + [p(x) for x in ("\u2581T", "he", "\u2581and", ".", "\u2581T", "he", ",", "\u2581a", ".")]
    assert sp.unk_id() not in doc
    ids = torch.tensor(doc * 50)
    tiers = fit_tiers(ids, vocab, TierConfig(tier1=False, tier0_smoothing=4.0))
    rows = tiers.tier0.rows().double().exp()
    # Independent recount: after "<s> ▁T" the next token is always "he" (class lower_word).
    ctx = context(ids, vocab)
    state = int(ctx.state[2])
    seen = ids[ctx.state == state]
    assert set(seen.tolist()) == {p("he")}
    n = len(seen)
    c = vocab.classes
    n_back = {}
    back = (ctx.state // 4 // (len(CLASSES) + 1)) * 4 + ctx.state % 4  # (c1, flags)
    for k in torch.nonzero(back == back[2]).view(-1).tolist():
        n_back[int(c[ids[k]])] = n_back.get(int(c[ids[k]]), 0) + 1
    n_c = torch.bincount(c[ids], minlength=len(CLASSES)).double()
    p_c = (n_c + 1) / (n_c.sum() + len(CLASSES))
    tot_back = sum(n_back.values())
    p_back = torch.tensor([(n_back.get(k, 0) + 4 * p_c[k]) / (tot_back + 4) for k in range(len(CLASSES))])
    want_class = (torch.nn.functional.one_hot(torch.tensor(cls("lower_word")), len(CLASSES)) * n
                  + 4 * p_back) / (n + 4)
    count_y = torch.bincount(ids, minlength=vocab.vocab_size).double() + 0.5
    class_total = torch.zeros(len(CLASSES), dtype=torch.float64).index_add_(0, c, count_y)
    want = want_class[c] * count_y / class_total[c]
    torch.testing.assert_close(rows[state], want, rtol=2e-3, atol=1e-9)  # fp16 within-class storage


def test_tier0_is_normalised_as_stored(vocab, train_shard):
    ids = torch.from_numpy(np.asarray(load_shard(train_shard)).astype(np.int64))
    tiers = fit_tiers(ids, vocab, TierConfig(tier1=False))
    assert tiers.tier0.log_pc.dtype == torch.float32 and tiers.tier0.log_py.dtype == torch.float16
    assert tiers.tier0.nbytes() <= 64 * 1024
    total = tiers.tier0.rows().double().exp().sum(1)  # no renormalisation anywhere
    assert total.shape == (NUM_STATES,)
    torch.testing.assert_close(total, torch.ones_like(total), rtol=0, atol=1e-5)


def test_context_counts_fold_the_stream_exactly(vocab, train_shard):
    from collections import Counter

    ids = torch.from_numpy(np.asarray(load_shard(train_shard))[:20000].astype(np.int64))
    ctx = context(ids, vocab)
    h = pair_bucket(ctx, vocab.vocab_size, 512, top_pairs(ctx, vocab.vocab_size, 511))
    folded = context_counts(ids, ctx, h, 512, vocab.vocab_size)
    want = Counter((int(ctx.state[t]), int(ctx.prev1[t]), int(h[t]), int(ids[t])) for t in range(1, ids.numel()))
    got = Counter()
    for i in range(folded.state.numel()):
        key = (int(folded.state[i]), int(folded.prev1[i]), int(folded.bucket[i]))
        lo, hi = int(folded.offsets[i]), int(folded.offsets[i + 1])
        assert int(folded.total[i]) == int(folded.pair_count[lo:hi].sum()) and hi > lo
        for y, n in zip(folded.pair_next[lo:hi].tolist(), folded.pair_count[lo:hi].tolist()):
            got[key + (y,)] += int(n)
    assert got == want and int(folded.total.sum()) == ids.numel() - 1


@pytest.mark.parametrize("index", ["top", "hash"])
def test_tier1_rows_give_logits_for_every_id(vocab, train_shard, index):
    ids = torch.from_numpy(np.asarray(load_shard(train_shard)).astype(np.int64))[:200_000]
    tiers = fit_tiers(ids, vocab, TierConfig(prev_rank=16, pair_rank=8, pair_rows=512, pair_index=index))
    tables = tiers.prior_tables()
    assert tables.shape == (NUM_STATES + vocab.vocab_size + 512, vocab.vocab_size)
    assert (tiers.tier1.keys is None) == (index == "hash")
    x = ids[:64].view(2, 32)
    rows = tiers.prior_rows(x)  # row t: for the token after x[:, t]
    assert rows.shape == (2, 32, 3) and rows.dtype == torch.int32
    assert (rows[:, 0, 1] == NUM_STATES + x[:, 0]).all()  # previous token = x[:, 0]
    assert (rows[:, 0, 2] == -1).all()  # window start: no second previous token
    ctx = context(x, vocab)
    want = pair_bucket(ctx, vocab.vocab_size, 512, tiers.tier1.keys)[:, 1:]  # the pair (x[t-1], x[t])
    assert torch.equal(rows[:, :-1, 2].long(), torch.where(want >= 0, NUM_STATES + vocab.vocab_size + want, -1))
    assert torch.equal(rows[..., 0], context(torch.cat([x, x[:, :1]], 1), vocab).state[:, 1:])
    # Tier rows come from the inputs up to t only: changing later tokens leaves earlier rows alone.
    changed = x.clone()
    changed[:, 20:] = 7
    assert torch.equal(tiers.prior_rows(changed)[:, :20], rows[:, :20])
    assert not torch.equal(tiers.prior_rows(changed)[:, 20], rows[:, 20])
    # logits() is the sum of the rows.
    tables = tiers.prior_tables()
    r = rows[0, 5].long()
    want = sum(tables[k] for k in r.tolist() if k >= 0)
    torch.testing.assert_close(tiers.logits(x)[0, 5], want)


@pytest.fixture(scope="module")
def small_fit(vocab, train_shard, val_shard, tables):
    train = torch.from_numpy(np.asarray(load_shard(train_shard)).astype(np.int64))
    val = torch.from_numpy(np.asarray(load_shard(val_shard)).astype(np.int64))
    nbytes = int(tables.target_bytes(val[:-1], val[1:]).sum())
    cfg = TierConfig(prev_rank=64, pair_rank=32, pair_rows=4096, refine_seconds=120, refine_steps=150)
    tiers = fit_tiers(train, vocab, cfg)
    return train, val, nbytes, tiers


def test_tiers_only_bpb_beats_unigram_and_count_bigram(small_fit, vocab):
    train, val, nbytes, tiers = small_fit
    tiers_bpb = bits_per_byte(float(stream_nll(tiers, val).sum()), nbytes)
    uni = torch.bincount(train, minlength=vocab.vocab_size).double() + 0.5
    unigram_bpb = bits_per_byte(float(-(uni / uni.sum())[val[1:]].log().sum()), nbytes)
    bigram_bpb = bits_per_byte(float(-np.log(KneserNey(train, vocab, 2).prob(val)).sum()), nbytes)
    assert tiers_bpb < bigram_bpb < unigram_bpb, (tiers_bpb, bigram_bpb, unigram_bpb)
    assert tiers.projected_bytes()["lzma_bytes"] < 2_000_000


# --- the standalone bar, on the ~9.77M training tokens of the cpu preset ---------------------------------

@pytest.fixture(scope="module")
def standalone(cpu_train_dir, vocab, tables):
    from golf.data import find_shards

    train = torch.from_numpy(np.concatenate([np.asarray(load_shard(f)) for f in find_shards(cpu_train_dir, "train")])
                             .astype(np.int64))
    val = torch.from_numpy(np.asarray(load_shard(cpu_train_dir / "fineweb_val_000000.bin")).astype(np.int64))
    assert train.numel() == 9_770_010
    nbytes = int(tables.target_bytes(val[:-1], val[1:]).sum())
    # tiers.py's defaults (1.87 MB projected) and 1,500 Adam steps (~200 s on 2 cores); a step count, not
    # seconds, so that the result does not depend on the machine's speed.
    tiers = fit_tiers(train, vocab, TierConfig(refine_seconds=float("inf"), refine_steps=1500))
    result = {"tiers": bits_per_byte(float(stream_nll(tiers, val).sum()), nbytes),
              "bytes": tiers.projected_bytes()["lzma_bytes"]}
    for order in (2, 3):
        result[f"kn{order}"] = bits_per_byte(float(-np.log(KneserNey(train, vocab, order).prob(val)).sum()), nbytes)
    print(f"standalone: {result}")
    return result


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_tiers_within_2mb_beat_the_kn_bigram(standalone):
    assert standalone["bytes"] <= 2_000_000
    assert standalone["tiers"] < standalone["kn2"], standalone


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_tiers_within_2mb_come_within_0_05_of_the_kn_trigram(standalone):
    assert standalone["tiers"] <= standalone["kn3"] + 0.05, standalone


def test_bad_tier_settings_are_refused_by_name(vocab):
    from golf.errors import ConfigError

    ids = torch.arange(100) % vocab.vocab_size
    for bad, name in ((dict(pair_index="exact"), "pair_index"), (dict(pair_rows=1), "pair_rows"),
                      (dict(refine_seconds=float("inf")), "refine_steps")):
        with pytest.raises(ConfigError, match=name):
            fit_tiers(ids, vocab, TierConfig(**bad))


def test_refinement_repeats_bit_for_bit_on_two_threads(vocab, train_shard):
    """The tier-1 Adam burst's row gathers would add their gradients in thread order on the CPU; the refit must
    give the same tables (the runs' reproducibility and every --resume rely on it)."""
    tokens = torch.from_numpy(load_shard(train_shard)[:300_000].astype(np.int64))
    cfg = TierConfig(prev_rank=32, pair_rank=16, pair_rows=2048, refine_seconds=float("inf"), refine_steps=8)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        tables = [fit_tiers(tokens, vocab, cfg).prior_tables() for _ in range(3)]
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(tables[0], tables[1]) and torch.equal(tables[0], tables[2])
    assert not torch.are_deterministic_algorithms_enabled()  # switched on for the refinement only


# --- a jointly trained tier 1, projected back to factors (what the artifact stores) -----------------------

def test_row_counts_count_every_row_read(vocab, train_shard):
    ids = torch.from_numpy(np.asarray(load_shard(train_shard))[:65536].astype(np.int64))
    tiers = fit_tiers(ids, vocab, TierConfig(prev_rank=8, pair_rank=8, pair_rows=256, refine_seconds=0))
    rows = tiers.prior_rows(ids).long()
    whole = row_counts(tiers, ids, chunk=ids.numel())
    torch.testing.assert_close(whole, torch.bincount(rows[rows >= 0], minlength=whole.numel()).double())
    assert whole[:NUM_STATES].sum() == ids.numel()  # every position reads one tier-0 state
    assert int((ids == vocab.bos_id).sum()) > 10  # pieces cut before a BOS count as the whole stream does
    torch.testing.assert_close(row_counts(tiers, ids, chunk=4096), whole)


def test_project_tier1_refits_trained_rows_at_the_tier_ranks(vocab, train_shard):
    ids = torch.from_numpy(np.asarray(load_shard(train_shard))[:65536].astype(np.int64))
    tiers = fit_tiers(ids, vocab, TierConfig(prev_rank=8, pair_rank=8, pair_rows=256, refine_seconds=0))
    v, fitted = vocab.vocab_size, tiers.prior_tables()
    trained = fitted + 0.3 * torch.randn(fitted.shape, generator=torch.Generator().manual_seed(0))
    counts = row_counts(tiers, ids)
    low = project_tier1(tiers, trained, counts)
    assert low.tier0 is tiers.tier0 and torch.equal(low.tier1.keys, tiers.tier1.keys)
    assert low.tier1.u1.shape == tiers.tier1.u1.shape and low.tier1.u2.shape == tiers.tier1.u2.shape
    assert torch.equal(low.prior_tables()[:NUM_STATES], fitted[:NUM_STATES])  # tier 0 has no trained form

    def centered(x):  # a per-row constant does not change the softmax
        return x - x.mean(1, keepdim=True)

    # At full rank the projection gives back the trained rows; at the tier ranks, the best weighted fit: closer
    # to them than the rows the training started from, on the rows read most.
    full = project_tier1(dataclasses.replace(tiers, cfg=dataclasses.replace(tiers.cfg, prev_rank=v, pair_rank=v)),
                         trained, counts)
    torch.testing.assert_close(centered(full.tier1.rows()), centered(trained[NUM_STATES:]),
                               atol=5e-3, rtol=0)  # an fp32 SVD
    weight = (counts[NUM_STATES:] + 1).sqrt()[:, None]
    err = lambda rows: float((weight * (centered(rows) - centered(trained[NUM_STATES:]))).norm())  # noqa: E731
    assert err(low.tier1.rows()) < err(fitted[NUM_STATES:])
    with pytest.raises(ConfigError, match="trained rows"):
        project_tier1(tiers, trained[1:], counts)


# --- the fit across processes ---------------------------------------------------------------------------

def test_fit_parts_cut_at_document_starts_and_count_every_position_once(vocab):
    bos = vocab.bos_id
    ids = torch.tensor([5, 6, bos, 7, 8, 9, bos, 10, bos, 11, 12, 13])
    parts = [fit_part(ids, k, 3, bos) for k in range(3)]
    # the cuts: the first BOS at or after 12 * k / 3, i.e. positions 6 and 8
    assert [p.tolist() for p in parts] == [[5, 6, bos, 7, 8, 9, bos], [bos, 10, bos], [bos, 11, 12, 13]]
    # every part after the first drops its position 0 (the previous part's last target): each position once
    assert sum(p.numel() for p in parts) - 2 == ids.numel()
    # more parts than documents: the last ones are empty
    assert [p.tolist() for p in (fit_part(ids[:5], k, 4, bos) for k in range(4))] == [[5, 6, bos], [bos, 7, 8],
                                                                                     [], []]


@pytest.mark.parametrize("index", ["top", "hash"])
def test_a_fit_across_processes_is_the_one_process_fit(vocab, train_shard, index, one_thread):
    """Three fits of three parts of one stream, their counts summed (threads stand in for torchrun's ranks;
    tests/test_train.py runs the real thing over gloo), give every one of them the whole stream's tiers. One
    intra-op thread, as torchrun gives each rank: the counts sum exactly at any thread count, but the dense closed
    form after them (matmuls, low-rank SVDs) is bitwise the same only at the same one, and three Python threads
    sharing a busy intra-op pool would not get it (a loaded CI machine once gave a 0.0025 difference)."""
    ids = torch.from_numpy(load_shard(train_shard)[:200_000].astype(np.int64))
    cfg = TierConfig(pair_rows=2048, prev_rank=16, pair_rank=16, pair_index=index)
    whole = fit_tiers(ids, vocab, cfg)
    parts, barrier, slots = 3, threading.Barrier(3), [None] * 3

    def fit(k):
        def reduce(counts):
            slots[k] = counts
            barrier.wait()
            total = sum(slots[1:], slots[0].clone())  # the same order on every part: the same sum
            barrier.wait()
            return total
        return fit_tiers(fit_part(ids, k, parts, vocab.bos_id), vocab, cfg, reduce=reduce, part=k)

    with ThreadPoolExecutor(parts) as pool:
        fits = list(pool.map(fit, range(parts)))
    for tiers in fits:
        assert torch.equal(tiers.prior_tables(), whole.prior_tables())
        if index == "top":
            assert torch.equal(tiers.tier1.keys, whole.tier1.keys)
    with pytest.raises(ConfigError, match="refine_seconds"):
        fit_tiers(ids, vocab, dataclasses.replace(cfg, refine_seconds=1.0), reduce=lambda t: t)


def test_tier_parameters_are_those_a_fit_stores(vocab):
    """What golf.config counts from the settings alone is what a fit holds."""
    ids = torch.randint(0, vocab.vocab_size, (50_000,), generator=torch.Generator().manual_seed(0))
    for cfg in (TierConfig(pair_rows=256, prev_rank=8, pair_rank=4), TierConfig(pair_index="hash", pair_rows=64),
                TierConfig(tier1=False)):
        tiers = fit_tiers(ids, vocab, cfg)
        stored = {"tier0": sum(t.numel() for t in vars(tiers.tier0).values())}
        if tiers.tier1 is not None:
            stored["tier1"] = sum(t.numel() for t in tiers.tier1.tensors().values())
        assert tier_parameters(cfg, vocab.vocab_size) == stored
