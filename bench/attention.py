"""Causal attention forward + backward through every golf.attention backend that runs here, side by side.

    python -m bench.attention [--batch B] [--seq T] [--heads H] [--kv-heads HKV] [--head-dim D] [--repeats N]
                              [--device auto|cpu|cuda]

Defaults: the h100x8 model's attention per sequence (seq 2048, 8 heads, 4 KV heads, head dim 64), bf16 on CUDA
and fp32 on a CPU, one sequence (use --batch 48 for one H100's share of an h100x8 step). A backend that fails
golf.attention.probe is listed with the reason and left out. Ratios are against the math kernel.
"""
from __future__ import annotations

import argparse

import torch

from bench.common import median_seconds
from golf import attention


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    shape = (args.batch, args.seq)
    q = torch.randn(*shape, args.heads, args.head_dim, device=device, dtype=dtype, requires_grad=True)
    k, v = (torch.randn(*shape, args.kv_heads, args.head_dim, device=device, dtype=dtype, requires_grad=True)
            for _ in range(2))
    dy = torch.randn_like(q)
    # causal attention: 2 matmuls of T*T/2*D per head forward, 5 backward (FlashAttention's count)
    flops = 3.5 * 4 * args.batch * args.heads * args.seq ** 2 * args.head_dim / 2
    print(f"device={device} dtype={dtype} B={args.batch} T={args.seq} H={args.heads} Hkv={args.kv_heads} "
          f"D={args.head_dim} auto={attention.choose(device)[0]}")
    rows = {}
    for name in attention.BACKENDS:
        why = attention.probe(name, device)
        if why != "ok":
            print(f"{name:10s} skipped: {why}")
            continue

        def step():
            for t in (q, k, v):
                t.grad = None
            attention.attend_with(name, q, k, v).backward(dy)

        rows[name] = median_seconds(step, args.repeats, sync=sync)
    base = rows.get("math")
    print("| backend | forward + backward ms | TFLOP/s | vs math |")
    print("|---|---|---|---|")
    for name, sec in rows.items():
        vs = f"{base / sec:.2f}x" if base else "-"
        print(f"| {name} | {sec * 1e3:.2f} | {flops / sec / 1e12:.3f} | {vs} |")


if __name__ == "__main__":
    main()
