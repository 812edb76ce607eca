"""golf::tiered_loss, the training loss: compiled kernel vs the PyTorch reference (eager and torch.compile) and the
records' loss, on every device present.
    python -m bench.tiered_loss [--rows N] [--repeats 9] [--skip-compile]
N = --rows targets (default: the cpu preset's 4,096 tokens per step on CPU, one h100x8 rank's 98,304 on a GPU),
V from the tokenizer, K = 3 prior rows per target into tables of the default tiers' size (tier-0 states + V +
pair_rows rows, 26,624 at V = 1,024), softcap 30, logits2 ~ N(0, 3^2) like a trained head's: fp32 on CPU, bf16
on a GPU (what autocast hands the loss). Timed: the forward alone, and forward + backward into logits2 (the tables
frozen, as in training). "golf kernel, fused" is what training runs (ops.tiered_nll: golf::tiered_loss_train writes
the gradient in the forward's pass; its forward alone is the plain kernel's). Medians of --repeats after a warm-up.
The records' loss is F.cross_entropy on the softcapped logits (no priors: what the loss costs without tiers).
The limit is memory traffic, counted for one pass: the logits read and their gradient written (N * V * (4 + 4) on
CPU in fp32, N * V * (2 + 2) on a GPU in bf16) plus the prior rows read, N * K * V * 4. "of limit": that over the
forward + backward time, against the device's measured copy bandwidth.
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


def records_loss(logits2, tables, rows, targets, softcap):
    """The records' loss: softcap, then cross-entropy over the full vocabulary, no priors."""
    z = softcap * torch.tanh(logits2.float() / softcap)
    return torch.nn.functional.cross_entropy(z, targets, reduction="none"), None


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", default=DEFAULT_TOKENIZER)
    p.add_argument("--rows", type=int, default=0, help="targets (0: 4,096 on CPU, 98,304 on a GPU)")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--skip-compile", action="store_true")
    args = p.parse_args()

    v = load_tokenizer(args.tokenizer).vocab_size()
    table_rows = NUM_STATES + v + TierConfig().pair_rows  # tier-0 states, prev-token rows, previous-two rows
    print(f"tiered_loss: V {v:,}, K {K} prior rows of {table_rows:,}, softcap {SOFTCAP}, median of {args.repeats}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        n = args.rows or (4096 if device == "cpu" else 98_304)
        g = torch.Generator().manual_seed(0)
        dtype = torch.float32 if device == "cpu" else torch.bfloat16
        l2 = (torch.randn(n, v, generator=g) * 3.0).to(device, dtype)
        t = torch.randn(table_rows, v, generator=g).to(device)
        r = torch.randint(-1, table_rows, (n, K), generator=g, dtype=torch.int32).to(device)
        y = torch.randint(0, v, (n,), generator=g).to(device)
        nbytes = n * v * 2 * l2.element_size() + n * K * v * 4
        sync = torch.cuda.synchronize if device == "cuda" else None
        impls = []
        if ops.has_kernel("tiered_loss", device):
            impls.append(("golf kernel", torch.ops.golf.tiered_loss))
        if ops.has_kernel("tiered_loss_train", device):  # loss nll.sum(): grad_weight 1
            impls.append(("golf kernel, fused", lambda *a: (ops.tiered_nll(*a, 1.0), None)))
        impls.append(("reference eager", ops.ref_tiered_loss))
        if not args.skip_compile:
            impls.append(("reference torch.compile", torch.compile(ops.ref_tiered_loss)))
            impls.append(("records' loss, compiled", torch.compile(records_loss)))
        impls.append(("records' loss, eager", records_loss))
        limit, limit_name = memory_limit(device, nbytes, args.repeats)
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
        print(f"[{device}] N {n:,}, logits2 {str(dtype).replace('torch.', '')}; limit: {limit / 1e9:,.1f} GB/s "
              f"({limit_name}); forward + backward moves at least {nbytes / 1e6:,.0f} MB")
        print(f"{'impl':<26}{'fwd ms':>9}{'vs eager':>10}{'fwd+bwd ms':>12}{'vs eager':>10}{'of limit':>10}")
        for name, f, fb in results:
            print(f"{name:<26}{f * 1e3:>9.2f}{base_f / f:>9.2f}x{fb * 1e3:>12.2f}{base_fb / fb:>9.2f}x"
                  f"{nbytes / fb / limit:>9.1%}")


if __name__ == "__main__":
    main()
