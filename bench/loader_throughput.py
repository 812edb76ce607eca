"""Loader throughput: golf's DistributedLoader vs the records' contiguous TokenStream loader.

    python -m bench.loader_throughput [--data DIR] [--seq-len 2048] [--global-tokens 786432] [--world 8]

Both produce one rank's int64 (x, y) of a step, on CPU (what feeds the host-to-device copy).
Prints medians over repeats, the ratio, and the headroom over what one rank consumes at the
records' pace (786,432 tokens per 83.3 ms step on 8 GPUs; ANCHOR.md section 3).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

from golf.data import DistributedLoader, TokenStream, find_shards

RECORD_TOKENS_PER_RANK_PER_S = 786_432 / 8 / 0.0833


class ContiguousLoader:
    """The records' baseline: each step takes the next (L+1)*W tokens of the stream; rank r its slice."""

    def __init__(self, files, seq_len, global_tokens, rank, world):
        self.stream, self.seq_len, self.rank, self.world = TokenStream(files), seq_len, rank, world
        self.local = global_tokens // world
        self.pos = 0

    def next_batch(self):
        span = (self.local + 1) * self.world
        if self.pos + span > len(self.stream):
            self.pos = 0
        chunk = self.stream.read(self.pos, span)
        self.pos += span
        t = torch.from_numpy(chunk[self.rank * (self.local + 1):(self.rank + 1) * (self.local + 1)].astype(np.int64))
        return t[:-1].view(-1, self.seq_len), t[1:].view(-1, self.seq_len)


def time_it(fn, steps, repeats):
    fn()  # warm the page cache
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        tokens = sum(fn()[0].numel() for _ in range(steps))
        rates.append(tokens / (time.perf_counter() - t0))
    return statistics.median(rates)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_data = os.environ.get("DATA_PATH", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                                                            "fineweb10B_sp1024_sample"))
    parser.add_argument("--data", default=default_data)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--global-tokens", type=int, default=786_432)
    parser.add_argument("--world", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    files = find_shards(args.data, "train")
    ours = DistributedLoader(files, seq_len=args.seq_len, global_batch_tokens=args.global_tokens,
                             world_size=args.world, rank=args.world - 1, vocab_size=1024)
    step = iter(range(10**9))
    ours_rate = time_it(lambda: ours.batch(next(step)), args.steps, args.repeats)
    base = ContiguousLoader(files, args.seq_len, args.global_tokens, args.world - 1, args.world)
    base_rate = time_it(base.next_batch, args.steps, args.repeats)

    tokens = sum(len(TokenStream([f])) for f in files)
    print(f"loader throughput, one rank of {args.world}: seq_len={args.seq_len} "
          f"global_tokens={args.global_tokens} ({len(files)} shard(s), {tokens:,} tokens), "
          f"median of {args.repeats} x {args.steps} steps, torch {torch.__version__}, {os.cpu_count()} cpus")
    print(f"{'loader':<34}{'tokens/s':>16}{'vs baseline':>14}{'vs records pace':>18}")
    for name, rate in (("golf DistributedLoader (shuffled)", ours_rate), ("records TokenStream (contiguous)", base_rate)):
        print(f"{name:<34}{rate:>16,.0f}{rate / base_rate:>13.2f}x{rate / RECORD_TOKENS_PER_RANK_PER_S:>17.1f}x")
    print(f"records pace per rank: {RECORD_TOKENS_PER_RANK_PER_S:,.0f} tokens/s (786,432 tokens / 83.3 ms / 8 ranks)")


if __name__ == "__main__":
    main()
