"""Sliding-window evaluation: golf::score_windows vs its reference, and golf.evaluate sliding vs plain.

    python -m bench.eval [--repeats 7] [--eval-tokens 8193] [--skip-compile]

1. The scoring op on an eval-sized workload: the scored positions of 64 windows of 1024 tokens at stride 64
   (4,096 rows), model dim 512, V = 1024, K = 3 prior rows into real tier tables (tiers 0+1 fit on 1M train
   tokens). Rows: the C++ kernel, the chunked reference (eager and torch.compile), and the unfused way (the
   LM head over all 65,536 window positions, then golf::tiered_loss on all of them, as a plain forward would).
2. golf.evaluate.evaluate end to end on a cpu-preset-size model (4 layers, d128, random weights) with those
   tiers over the first `--eval-tokens` val tokens: sliding (window 1024, stride 64) vs plain (1024), and
   the model's training forward (full logits + tiered_loss) for the plain case.
3. With a GPU: the op on CUDA against its references; the sliding eval (window 2048, stride 64) of an
   h100x8-shaped model in eager bf16 for each attention backend (flash, cuDNN, memory-efficient) and 32, 64, 128
   windows per forward; then, at the fastest pair, with its compiled bf16 forward: scored targets/s per GPU, and
   the full val split on 8 GPUs derived from it.
Medians of `--repeats` (op) or 3 (evaluate) runs after a warm-up.
"""

from __future__ import annotations

import argparse
import contextlib
import os

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from golf import ops
from golf.data import BpbMeter, ByteTables, load_shard, load_tokenizer
from bench.common import DEFAULT_DATA, DEFAULT_TOKENIZER, median_seconds
from golf.evaluate import window_plan
from golf.scoring import EvalSpec, Predictor, score_artifact
from golf.model import ModelConfig, TieredLM, Transformer, make_prior_rows
from golf.tiers import TierConfig, Vocab, fit_tiers


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--tokenizer", default=DEFAULT_TOKENIZER)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--eval-tokens", type=int, default=8193)
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument("--gpu-eval-tokens", type=int, default=262_145, help="val tokens of the GPU sliding eval")
    parser.add_argument("--gpu-batch-windows", type=int, default=64, help="windows per forward on the GPU if no attention backend runs eagerly")
    args = parser.parse_args()

    sp = load_tokenizer(args.tokenizer)
    byte_tables = ByteTables.from_tokenizer(sp)
    train = torch.from_numpy(np.asarray(load_shard(os.path.join(args.data, "fineweb_train_000000.bin"))[:1_000_000])
                             .astype(np.int64))
    val = np.asarray(load_shard(os.path.join(args.data, "fineweb_val_000000.bin")))
    tiers = fit_tiers(train, Vocab.from_tokenizer(sp), TierConfig())
    tables = tiers.prior_tables()
    prior_rows = make_prior_rows(tiers)
    print(f"torch {torch.__version__}, {os.cpu_count()} cpus, {torch.get_num_threads()} threads; "
          f"prior_tables {tuple(tables.shape)}")

    # 1. the op ------------------------------------------------------------------------------------------
    windows, length, stride, dim = 64, 1024, 64, 512
    g = torch.Generator().manual_seed(0)
    starts = np.arange(windows) * stride
    x = torch.from_numpy(val[starts[:, None] + np.arange(length + 1)].astype(np.int64))
    x, y = x[:, :-1], x[:, 1:]
    rows_all = prior_rows(x)
    hidden_all = torch.nn.functional.rms_norm(torch.randn(windows, length, dim, generator=g), (dim,))
    head = torch.randn(1024, dim, generator=g) * 0.05
    sel = (slice(None), slice(length - stride, None))
    h, r, t = hidden_all[sel].reshape(-1, dim), rows_all[sel].reshape(-1, 3), y[sel].reshape(-1)
    op_args = (h, head, tables, r, t, 30.0)
    n = t.numel()

    def unfused():
        logits2 = hidden_all.reshape(-1, dim) @ head.T
        nll, _ = ops.tiered_loss(logits2, tables, rows_all.reshape(-1, 3), y.reshape(-1), 30.0)
        return nll.view(windows, length)[sel]

    impls = [("golf::score_windows (C++)", lambda: torch.ops.golf.score_windows(*op_args)),
             ("reference eager (chunked)", lambda: ops.ref_score_windows(*op_args))]
    if not args.skip_compile:
        try:
            compiled = torch.compile(ops.ref_score_windows)
            compiled(*op_args)
            impls.append(("reference torch.compile", lambda: compiled(*op_args)))
        except Exception as exc:  # noqa: BLE001 - report and go on: compile support varies by platform
            print(f"torch.compile of the reference failed: {type(exc).__name__}: {str(exc)[:200]}")
    impls.append(("unfused: head on all positions + tiered_loss", unfused))
    want = ops.ref_score_windows(*op_args)
    for name, fn in impls:
        torch.testing.assert_close(fn().reshape(-1), want, rtol=1e-4, atol=1e-4)
    print(f"\n[score] {n:,} scored rows ({windows} windows x {length}, stride {stride}), D={dim}, V=1024, K=3, "
          f"median of {args.repeats}")
    print(f"{'impl':<48}{'ms':>10}{'k targets/s':>14}{'vs eager':>10}")
    timings = [(name, median_seconds(fn, args.repeats)) for name, fn in impls]
    base = timings[1][1]
    for name, s in timings:
        print(f"{name:<48}{s * 1e3:>10.1f}{n / s / 1e3:>14.1f}{base / s:>9.2f}x")

    # 2. evaluate end to end -----------------------------------------------------------------------------
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=1024, num_layers=4, model_dim=128, num_heads=4, num_kv_heads=2,
                                    mlp_mult=3.0, activation="leaky_relu2", rope_dims=16, ln_scale=True, xsa=True))
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(std=0.05)
    lm = TieredLM(model.eval(), tables, trainable=False)
    tokens = val[:args.eval_tokens]
    print(f"\n[evaluate] cpu-preset-size model ({sum(p.numel() for p in model.parameters()):,} params), "
          f"{len(tokens) - 1:,} val targets, median of 3")
    print(f"{'eval':<44}{'windows':>9}{'s':>9}{'targets/s':>11}{'val_bpb':>10}")
    for name, stride_, batch in (("sliding window 1024 stride 64", 64, 16), ("plain window 1024", 1024, 16)):
        results = []
        spec = EvalSpec(window=1024, stride=stride_, batch_tokens=batch * 1024, budget_seconds=0)
        secs = median_seconds(lambda: results.append(score_artifact(Predictor(lm, prior_rows), spec, tokens,
                                                                    byte_tables=byte_tables, progress=False)), 3)
        res = results[-1]
        print(f"{'evaluate ' + name:<44}{len(window_plan(len(tokens), 1024, stride_)):>9}{secs:>9.2f}"
              f"{res.targets / secs:>11.0f}{res.val_bpb:>10.4f}")
    meters = []
    secs = median_seconds(lambda: meters.append(full_logits_plain(lm, prior_rows, tokens, 1024, 16, byte_tables)), 3)
    print(f"{'plain 1024, full logits + tiered_loss':<44}{(len(tokens) - 1) // 1024:>9}{secs:>9.2f}"
          f"{meters[-1].targets / secs:>11.0f}{meters[-1].bpb:>10.4f}")
    if torch.cuda.is_available():
        cuda_section(args, tables, prior_rows, byte_tables, val, op_args, n)


VAL_TARGETS_SP1024 = 62_021_632  # the challenge's scored val targets at sp1024 (ANCHOR.md)


def cuda_section(args, tables, prior_rows, byte_tables, val, op_args, n):
    """On a GPU: the op against its references, then the sliding eval of an h100x8-shaped model (random weights,
    compiled forward under bf16, as golf.eval runs it) at window 2048, stride 64: scored targets per second per GPU,
    and the full sp1024 val split on 8 GPUs derived from that rate."""
    from golf.config import PRESETS

    sync = torch.cuda.synchronize
    cuda_args = tuple(a.cuda() if torch.is_tensor(a) else a for a in op_args)
    impls = [("golf::score_windows (CUDA)", lambda: torch.ops.golf.score_windows(*cuda_args)),
             ("reference eager (chunked)", lambda: ops.ref_score_windows(*cuda_args))]
    if not args.skip_compile:
        compiled = torch.compile(ops.ref_score_windows)
        impls.append(("reference torch.compile", lambda: compiled(*cuda_args)))
    want = ops.ref_score_windows(*cuda_args)
    for name, fn in impls:
        torch.testing.assert_close(fn().reshape(-1), want, rtol=1e-4, atol=1e-4)
    print(f"\n[score, cuda: {torch.cuda.get_device_name()}] {n:,} scored rows, median of {args.repeats}")
    print(f"{'impl':<48}{'ms':>10}{'k targets/s':>14}{'vs eager':>10}")
    timings = [(name, median_seconds(fn, args.repeats, sync=sync)) for name, fn in impls]
    for name, secs in timings:
        print(f"{name:<48}{secs * 1e3:>10.2f}{n / secs / 1e3:>14.1f}{timings[1][1] / secs:>9.2f}x")

    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=1024, **PRESETS["h100x8"]["model"])).cuda()
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(std=0.05)
    lm = TieredLM(model.eval(), tables.cuda(), trainable=False)
    amp = lambda: torch.autocast("cuda", dtype=torch.bfloat16)  # noqa: E731
    results = []

    def run(tokens, batch, hidden, backend=None):
        with sdpa_kernel(backend) if backend is not None else contextlib.nullcontext():
            spec = EvalSpec(window=2048, stride=64, batch_tokens=batch * 2048, budget_seconds=0)
            results.append(score_artifact(Predictor(lm, prior_rows), spec, tokens, byte_tables=byte_tables,
                                          device="cuda", amp=amp, hidden=hidden, progress=False))

    # Which attention backend, and how many windows per forward: eager bf16 over 512 windows (the attention
    # kernels are the same compiled), then the compiled forward at the best pair.
    probe = val[:512 * 64 + 2048]
    print(f"\n[evaluate, cuda] eager bf16, {len(probe) - 1:,} val tokens: scored targets/s by attention backend and "
          f"windows per forward")
    best = (0.0, None, args.gpu_batch_windows)
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
        for batch in (32, 64, 128):
            try:
                secs = median_seconds(lambda: run(probe, batch, model.hidden, backend), 1, sync=sync)
            except RuntimeError as e:  # a backend this torch/GPU lacks
                print(f"  {backend.name:<22}{batch:>5}  unavailable: {str(e).splitlines()[0][:80]}")
                break
            rate = results[-1].targets / secs
            print(f"  {backend.name:<22}{batch:>5}{rate:>12,.0f}")
            best = max(best, (rate, backend, batch), key=lambda b: b[0])
    _, backend, batch = best
    tokens = val[:args.gpu_eval_tokens]
    hidden = torch.compile(model.hidden, dynamic=False)
    secs = median_seconds(lambda: run(tokens, batch, hidden, backend), 3, sync=sync)
    rate = results[-1].targets / secs
    print(f"[evaluate, cuda] h100x8 model ({sum(p.numel() for p in model.parameters()):,} params), compiled bf16, "
          f"{backend.name if backend else 'default'} attention, window 2048, stride 64, {batch} windows per forward, "
          f"{results[-1].targets:,} targets: {secs:.2f} s, {rate:,.0f} scored targets/s per GPU; derived: the "
          f"{VAL_TARGETS_SP1024:,} sp1024 val targets on 8 GPUs in {VAL_TARGETS_SP1024 / (8 * rate):.0f} s")


@torch.no_grad()
def full_logits_plain(lm, prior_rows, tokens, seq_len: int, batch: int, byte_tables) -> BpbMeter:
    """The baseline: plain windows through the model's training forward (all [B, T, V] logits, then the loss)."""
    meter = BpbMeter(byte_tables)
    windows = (len(tokens) - 1) // seq_len
    for w in range(0, windows, batch):
        e = min(w + batch, windows)
        chunk = torch.from_numpy(tokens[w * seq_len:e * seq_len + 1].astype(np.int64))
        x, y = chunk[:-1].view(e - w, seq_len), chunk[1:].view(e - w, seq_len)
        meter.add(lm(x, prior_rows(x), y).view_as(y), x, y)
    return meter


if __name__ == "__main__":
    main()
