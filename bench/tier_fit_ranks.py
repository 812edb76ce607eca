"""The tier fit across ranks (golf.train under torchrun: every rank counts its part of the prefix, the counts are
summed) against one rank fitting the whole prefix alone, on gloo CPU processes with one thread each (what
torchrun's OMP_NUM_THREADS=1 gives every rank).

    python -m bench.tier_fit_ranks [--data DIR] [--tokens 8388608] [--ranks 1,2] [--repeats 2]

The stream is the real train tokens of --data (every train shard), tiled to --tokens. Each line: ranks, the
slowest rank's fit seconds (median of --repeats), the ratio to one rank, and whether every rank's tables equal
the one-process fit bit for bit. A fit is counting (linear in the tokens, split over the ranks) plus a fixed
part (the dense closed form: Kneser-Ney tables, matmuls, two low-rank SVDs) that every rank repeats; a line
at --tokens / 4 on one rank separates the two (t = fixed + per_token * N), from which the seconds of
--derive-tokens on --derive-ranks ranks are derived (a derived number, on these cores).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bench.common import DEFAULT_DATA, DEFAULT_TOKENIZER
from golf.data import find_shards, load_shard, load_tokenizer
from golf.tiers import TierConfig, Vocab, fit_part, fit_tiers


def stream(data: str, tokens: int) -> torch.Tensor:
    ids = np.concatenate([np.asarray(load_shard(f)) for f in find_shards(data, "train")]).astype(np.int64)
    return torch.from_numpy(np.resize(ids, tokens))


def rank_main(rank: int, ranks: int, init: str, args, out: str) -> None:
    torch.set_num_threads(1)
    if ranks > 1:
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=ranks)
    ids = stream(args.data, args.tokens)
    vocab = Vocab.from_tokenizer(load_tokenizer(args.tokenizer))
    cfg = TierConfig(pair_rows=args.pair_rows)

    def reduce(counts):
        dist.all_reduce(counts)
        return counts

    seconds, tables = [], None
    for _ in range(args.repeats):
        part = fit_part(ids, rank, ranks, vocab.bos_id) if ranks > 1 else ids
        if ranks > 1:
            dist.barrier()
        t = time.perf_counter()
        tiers = fit_tiers(part, vocab, cfg, reduce=reduce if ranks > 1 else None, part=rank)
        seconds.append(time.perf_counter() - t)
        tables = tiers.prior_tables()
    torch.save({"seconds": seconds, "tables": tables}, f"{out}.{rank}")
    if ranks > 1:
        dist.destroy_process_group()


def measure(ranks: int, args, tmp: str) -> tuple[float, list[torch.Tensor]]:
    """(the slowest rank's median seconds, every rank's tables)."""
    out = os.path.join(tmp, f"fit{ranks}")
    init = f"file://{os.path.join(tmp, f'pg{ranks}')}"
    if ranks > 1:
        mp.spawn(rank_main, args=(ranks, init, args, out), nprocs=ranks)
    else:
        rank_main(0, 1, init, args, out)
    got = [torch.load(f"{out}.{r}") for r in range(ranks)]
    slowest = [max(g["seconds"][i] for g in got) for i in range(args.repeats)]
    return statistics.median(slowest), [g["tables"] for g in got]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--tokenizer", default=DEFAULT_TOKENIZER)
    p.add_argument("--tokens", type=int, default=8 * 2**20)
    p.add_argument("--ranks", default="1,2")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--pair-rows", type=int, default=16384, help="the h100 presets' tier-1 previous-two rows")
    p.add_argument("--derive-tokens", type=int, default=100_000_000, help="h100x8's tier_fit_tokens")
    p.add_argument("--derive-ranks", type=int, default=8)
    args = p.parse_args()
    ranks = [int(r) for r in args.ranks.split(",")]
    print(f"tier fit of {args.tokens:,} tokens (real train ids, tiled), pair_rows {args.pair_rows}, one thread "
          f"per rank, median of {args.repeats}, torch {torch.__version__}, {os.cpu_count()} cpus")
    with tempfile.TemporaryDirectory() as tmp:
        results = {r: measure(r, args, tmp) for r in ranks}
        base_s, base_tables = results[ranks[0]][0], results[ranks[0]][1][0]
        for r, (s, tables) in results.items():
            same = all(torch.equal(t, base_tables) for t in tables)
            print(f"ranks={r} fit_s={s:.2f} vs_{ranks[0]}_rank={s / base_s:.2f}x same_tables={same}")
        quarter = argparse.Namespace(**{**vars(args), "tokens": args.tokens // 4})
        small_s = measure(1, quarter, tmp)[0]
    one_s = results[1][0] if 1 in results else None
    if one_s is not None:
        per_token = (one_s - small_s) / (args.tokens - args.tokens // 4)
        fixed = one_s - per_token * args.tokens
        derived = fixed + per_token * args.derive_tokens / args.derive_ranks
        alone = fixed + per_token * args.derive_tokens
        print(f"one rank at {args.tokens // 4:,} tokens: {small_s:.2f} s -> fixed {fixed:.2f} s + "
              f"{per_token * 1e6:.3f} s per 1M tokens")
        print(f"derived on these cores: {args.derive_tokens:,} tokens on {args.derive_ranks} ranks ~{derived:.1f} s "
              f"(one rank alone ~{alone:.1f} s)")


if __name__ == "__main__":
    main()
