"""golf::target_bytes: compiled kernel vs the PyTorch reference (eager and torch.compile).

    python -m bench.target_bytes [--tokens 8388608] [--repeats 15]

The op is memory-bound: it reads two int64 ids and writes one int32 per target (20 bytes; the
vocab tables stay in cache), so the hardware limit is memory bandwidth. On CPU that limit is taken
as the measured bandwidth of a large tensor copy; on CUDA as the H100 SXM's 3.35 TB/s HBM3.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch

from bench.common import DEFAULT_DATA, DEFAULT_TOKENIZER, median_seconds, memory_limit
from golf import ops
from golf.data import ByteTables, load_shard

BYTES_PER_TARGET = 8 + 8 + 4



def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--tokenizer", default=DEFAULT_TOKENIZER)
    parser.add_argument("--tokens", type=int, default=8 * 2**20)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()

    val = np.asarray(load_shard(os.path.join(args.data, "fineweb_val_000000.bin"))).astype(np.int64)
    ids = torch.from_numpy(np.resize(val, args.tokens + 1))  # real ids, tiled to the requested size
    tables = ByteTables.from_tokenizer(args.tokenizer)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"target_bytes over {args.tokens:,} targets (real val ids, tiled), median of {args.repeats}, "
          f"torch {torch.__version__}, {os.cpu_count()} cpus, {torch.get_num_threads()} threads")
    for device in devices:
        t = tables.to(device)
        x, y = ids[:-1].to(device), ids[1:].to(device)
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        args_ = (x, y, t.base_bytes, t.leading_space, t.boundary)
        compiled = torch.compile(ops.ref_target_bytes)
        rows = [("golf kernel", lambda: torch.ops.golf.target_bytes(*args_)) if ops.has_kernel("target_bytes", device)
                else None,
                ("reference eager", lambda: ops.ref_target_bytes(*args_)),
                ("reference torch.compile", lambda: compiled(*args_))]
        rows = [r for r in rows if r is not None]
        limit, limit_name = memory_limit(device, args.tokens * BYTES_PER_TARGET, args.repeats)
        timings = [(name, median_seconds(fn, args.repeats, sync=sync)) for name, fn in rows]
        base = next(s for name, s in timings if name == "reference eager")
        print(f"[{device}] limit: {limit / 1e9:,.1f} GB/s ({limit_name})")
        print(f"{'impl':<26}{'ms':>10}{'Mtargets/s':>14}{'vs eager':>10}{'of limit':>10}")
        for name, s in timings:
            gbps = args.tokens * BYTES_PER_TARGET / s
            print(f"{name:<26}{s * 1e3:>10.2f}{args.tokens / s / 1e6:>14.1f}{base / s:>9.2f}x{gbps / limit:>9.1%}")


if __name__ == "__main__":
    main()
