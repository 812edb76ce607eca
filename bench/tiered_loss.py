"""golf::tiered_loss, the training loss: compiled kernel vs the PyTorch reference (eager and torch.compile).
    python -m bench.tiered_loss [--rows 4096] [--repeats 9] [--skip-compile]
One training step's loss at the `cpu` preset's size: N = --rows targets (4,096 tokens per step), V from the
tokenizer, K = 3 prior rows per target into tables of the default tiers' size (tier-0 states + V + pair_rows
rows, 26,624 at V = 1,024), softcap 30, logits2 ~ N(0, 3^2) like a trained head's. Timed: the forward alone,
and forward + backward into logits2 (the tables frozen, as in training). Medians of --repeats after a warm-up.
The limit is memory traffic, fp32 throughout: logits2 read by the forward and again by the backward, its gradient
written, and the K prior rows read by each pass, (3 + 2K) * N * V * 4 bytes for forward + backward; against the
measured copy bandwidth on CPU, the H100's 3.35 TB/s on CUDA.
"""
from __future__ import annotations

import argparse

import torch

from bench.common import DEFAULT_TOKENIZER, median_seconds, memory_limit
from golf import ops
from golf.data import load_tokenizer
from golf.tiers import NUM_STATES, TierConfig

K = 3
SOFTCAP = 30.0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", default=DEFAULT_TOKENIZER)
    p.add_argument("--rows", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--skip-compile", action="store_true")
    args = p.parse_args()

    v = load_tokenizer(args.tokenizer).vocab_size()
    n = args.rows
    table_rows = NUM_STATES + v + TierConfig().pair_rows  # tier-0 states, prev-token rows, previous-two rows
    g = torch.Generator().manual_seed(0)
    logits2 = torch.randn(n, v, generator=g) * 3.0
    tables = torch.randn(table_rows, v, generator=g)
    rows = torch.randint(-1, table_rows, (n, K), generator=g, dtype=torch.int32)
    targets = torch.randint(0, v, (n,), generator=g)
    bytes_fwd_bwd = (3 + 2 * K) * n * v * 4
    print(f"tiered_loss: N {n:,} x V {v:,}, K {K} prior rows of {table_rows:,}, softcap {SOFTCAP}, median of "
          f"{args.repeats}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        sync = torch.cuda.synchronize if device == "cuda" else None
        l2, t, r, y = (x.to(device) for x in (logits2, tables, rows, targets))
        impls = []
        if ops.has_kernel("tiered_loss", device):
            impls.append(("golf kernel", torch.ops.golf.tiered_loss))
        impls.append(("reference eager", ops.ref_tiered_loss))
        if not args.skip_compile:
            impls.append(("reference torch.compile", torch.compile(ops.ref_tiered_loss)))
        limit, limit_name = memory_limit(device, bytes_fwd_bwd, args.repeats)
        results = []
        for name, fn in impls:
            def forward():
                with torch.no_grad():
                    fn(l2, t, r, y, SOFTCAP)

            def forward_backward():
                x = l2.detach().requires_grad_()
                nll, _ = fn(x, t, r, y, SOFTCAP)
                nll.sum().backward()

            results.append((name, median_seconds(forward, args.repeats, sync=sync),
                            median_seconds(forward_backward, args.repeats, sync=sync)))
        base_f, base_fb = next((f, fb) for name, f, fb in results if name == "reference eager")
        print(f"[{device}] limit: {limit / 1e9:,.1f} GB/s ({limit_name}); forward + backward moves at least "
              f"{bytes_fwd_bwd / 1e6:,.0f} MB")
        print(f"{'impl':<26}{'fwd ms':>9}{'vs eager':>10}{'fwd+bwd ms':>12}{'vs eager':>10}{'of limit':>10}")
        for name, f, fb in results:
            print(f"{name:<26}{f * 1e3:>9.2f}{base_f / f:>9.2f}x{fb * 1e3:>12.2f}{base_fb / fb:>9.2f}x"
                  f"{bytes_fwd_bwd / fb / limit:>9.1%}")


if __name__ == "__main__":
    main()
