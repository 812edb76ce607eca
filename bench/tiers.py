"""Tier fitting: BPB, projected bytes and fit seconds of tier 0 and tiers 0+1 against Kneser-Ney references,
and the counting op (golf::count_next, C++) against its PyTorch reference.

    python -m bench.tiers [--data data/cpu] [--prev-rank 128] [--pair-rank 64] [--pair-rows 24576]
                          [--pair-index top|hash] [--refine-steps 1500] [--refine-seconds inf]

Fits on every train shard of --data (e.g. the `make data` set: train head shard + 2,997 FineWeb docs,
9.77M tokens) and scores the val shard there as one stream. The KN references (interpolated, D=0.75,
unbounded tables) come from tests/kn.py and see exactly the same contexts.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

from bench.common import median_seconds
from golf import ops
from golf.data import ByteTables, bits_per_byte, find_shards, load_shard, load_tokenizer
from golf.tiers import NUM_STATES, TierConfig, Vocab, context, fit_tiers, stream_nll

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from kn import KneserNey  # noqa: E402



def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("DATA_PATH", "data/cpu"))
    parser.add_argument("--tokenizer", default=os.environ.get("TOKENIZER_PATH", os.path.join(
        os.path.dirname(__file__), "..", "..", "shared", "data", "tokenizers", "fineweb_1024_bpe.model")))
    parser.add_argument("--prev-rank", type=int, default=TierConfig.prev_rank)
    parser.add_argument("--pair-rank", type=int, default=TierConfig.pair_rank)
    parser.add_argument("--pair-rows", type=int, default=TierConfig.pair_rows)
    parser.add_argument("--pair-index", choices=("top", "hash"), default=TierConfig.pair_index)
    parser.add_argument("--refine-steps", type=int, default=1500, help="Adam steps on tier 1 (the standalone test's)")
    parser.add_argument("--refine-seconds", type=float, default=float("inf"), help="and/or a time limit")
    args = parser.parse_args()

    sp = load_tokenizer(args.tokenizer)
    vocab, tables = Vocab.from_tokenizer(sp), ByteTables.from_tokenizer(sp)
    train = torch.from_numpy(np.concatenate([np.asarray(load_shard(f)) for f in find_shards(args.data, "train")])
                             .astype(np.int64))
    val = torch.from_numpy(np.concatenate([np.asarray(load_shard(f)) for f in find_shards(args.data, "val")])
                           .astype(np.int64))
    nbytes = int(tables.target_bytes(val[:-1], val[1:]).sum())
    print(f"train {train.numel():,} tokens ({args.data}); val {val.numel() - 1:,} targets, {nbytes:,} bytes; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    ctx = context(train, vocab)
    cls = vocab.classes[train]
    v = vocab.vocab_size
    print(f"\ncounting {train.numel():,} pairs, median of 5:")
    print(f"{'table':<28}{'golf C++ Mtok/s':>17}{'reference Mtok/s':>18}{'ratio':>8}")
    for name, c, y, n_ctx, n_next in (("tier 0: state -> class", ctx.state, cls, NUM_STATES, len(vocab.classes.unique())),
                                     ("tier 1: prev -> next", ctx.prev1, train, v, v)):
        ours = median_seconds(lambda: torch.ops.golf.count_next(c, y, n_ctx, n_next), 5)
        ref = median_seconds(lambda: ops.ref_count_next(c, y, n_ctx, n_next), 5)
        print(f"{name:<28}{train.numel() / ours / 1e6:>17.1f}{train.numel() / ref / 1e6:>18.1f}{ref / ours:>7.2f}x")

    rows = []
    for order, name in ((2, "KN bigram (unbounded)"), (3, "KN trigram (unbounded)")):
        t0 = time.perf_counter()
        p = KneserNey(train, vocab, order).prob(val)
        rows.append((name, bits_per_byte(float(-np.log(p).sum()), nbytes), None, time.perf_counter() - t0))
    tier1 = TierConfig(prev_rank=args.prev_rank, pair_rank=args.pair_rank, pair_rows=args.pair_rows,
                       pair_index=args.pair_index)
    refined = TierConfig(**{**vars(tier1), "refine_steps": args.refine_steps, "refine_seconds": args.refine_seconds})
    for name, cfg in (("tier 0", TierConfig(tier1=False)), ("tiers 0+1 closed form", tier1),
                      ("tiers 0+1 + Adam on tier 1", refined)):
        t0 = time.perf_counter()
        tiers = fit_tiers(train, vocab, cfg)
        fit = time.perf_counter() - t0
        bpb = bits_per_byte(float(stream_nll(tiers, val).sum()), nbytes)
        name += f" ({tiers.refine_steps} steps)" if tiers.refine_steps else ""
        rows.append((name, bpb, tiers.projected_bytes()["lzma_bytes"], fit))
    print(f"\nval BPB (ranks {args.prev_rank}/{args.pair_rank}, {args.pair_rows} previous-two rows by "
          f"{args.pair_index!r}; bytes = int8 rows + fp16 scales + the keys, through LZMA):")
    print(f"{'predictor':<42}{'val BPB':>9}{'bytes':>12}{'fit s':>8}")
    for name, bpb, size, secs in rows:
        print(f"{name:<42}{bpb:>9.4f}{size if size is not None else 'unbounded':>12}{secs:>8.1f}")


if __name__ == "__main__":
    main()
