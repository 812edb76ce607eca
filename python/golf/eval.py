"""python -m golf.eval ARTIFACT: the sliding-window BPB of a `model.golf`, built from the artifact alone.

Usage
    python -m golf.eval runs/<id>/model.golf [--data-path DIR] [--tokenizer-path FILE] [--window W] [--stride S]
                        [--batch-windows B] [--val-tokens N] [--audit] [--audit-positions P] [--json]
                        [--compile | --no-compile] [--attention auto|NAME]
    torchrun --nproc_per_node=8 -m golf.eval runs/<id>/model.golf      (disjoint windows per rank, summed)

Scores the val shards of DATA_PATH (`--data-path`): window W (default: the training sequence length stored in
the artifact), stride S (default 64): the first window scores all its targets, every later one its last S, and
every target of the stream is scored once (golf.evaluate.window_plan). `--stride` >= W is the challenge's plain
eval (non-overlapping windows, the stream truncated to a multiple of W). The tokenizer (TOKENIZER_PATH) gives
the BPB byte tables only; its vocabulary must match the artifact's.
On CUDA the transformer's forward is compiled and runs under bf16 autocast (`--no-compile`: eager fp32); the
scoring op (golf::score_windows) computes the head and the softmax in fp32 either way. Attention runs on the
backend golf.attention.choose picks on this machine (`--attention auto`, as golf.train's default), or the one named.
`--audit` checks causality, normalisation, single pass and consistency on the artifact and real val tokens
(golf.evaluate.audit) and exits 3 when any condition FAILs. `--json` prints one JSON object on stdout.
Exit codes: 0 ok, 2 bad input (GolfError: missing/corrupt artifact, data, tokenizer mismatch), 3 audit FAIL.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from golf import attention
from golf.data import ByteTables, check_token_ids, find_shards, load_tokenizer, load_val_tokens
from golf.errors import ConfigError, GolfError
from golf.evaluate import audit, evaluate
from golf.export import load_model
from golf.runtime import Dist, distributed

AUDIT_FAILED = 3


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m golf.eval", description=__doc__.split("\n\n")[0])
    p.add_argument("artifact", help="a model.golf written by python -m golf.train")
    p.add_argument("--data-path", default=os.environ.get("DATA_PATH", "data/datasets/fineweb10B_sp1024"),
                   help="folder with the fineweb_val_*.bin shards (env DATA_PATH)")
    p.add_argument("--tokenizer-path", default=os.environ.get("TOKENIZER_PATH", "data/tokenizers/fineweb_1024_bpe.model"),
                   help="the SentencePiece model, for the BPB byte tables (env TOKENIZER_PATH)")
    p.add_argument("--window", type=int, default=None,
                   help="window length (default or 0: the training sequence length)")
    p.add_argument("--stride", type=int, default=64, help="targets scored per window after the first (>= window: plain)")
    p.add_argument("--batch-windows", type=int, default=None, help="windows per forward (default: ~64k tokens)")
    p.add_argument("--val-tokens", type=int, default=0, help="score only the first N val tokens (0 = all, else >= 2)")
    p.add_argument("--audit", action="store_true", help="check the four validity conditions; exit 3 on a FAIL")
    p.add_argument("--audit-positions", type=int, default=32, help="positions the audit samples (>= 1)")
    p.add_argument("--device", default="auto", help="auto (cuda:LOCAL_RANK when present, else cpu), cpu, cuda")
    p.add_argument("--compile", dest="compile", action="store_true", default=None,
                   help="torch.compile the forward and run it under bf16 autocast (default on CUDA)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="eager fp32 forward")
    p.add_argument("--attention", default="auto", help="golf.attention backend: auto, or one of "
                   "fa3, fa4, cudnn, flash, efficient, math, sdpa")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of key=value lines")
    return p


def check_args(args) -> None:
    """The numeric flags, before any work: a bad one is a ConfigError (exit 2), not a traceback or an audit that
    FAILs on zero samples (exit 3)."""
    for flag, value, ok, expected in (
            ("--window", args.window, args.window is None or args.window >= 0,
             ">= 1, or 0 for the training sequence length"),
            ("--stride", args.stride, args.stride >= 1, ">= 1"),
            ("--batch-windows", args.batch_windows, args.batch_windows is None or args.batch_windows >= 1, ">= 1"),
            ("--val-tokens", args.val_tokens, args.val_tokens == 0 or args.val_tokens >= 2, "0 (all) or >= 2"),
            ("--audit-positions", args.audit_positions, args.audit_positions >= 1, ">= 1")):
        if not ok:
            raise ConfigError(f"{flag}: expected {expected}, found {value}")


def val_stream(data_path, window: int, stride: int, val_tokens: int = 0):
    """The val tokens to score: all of them for sliding eval, truncated to whole windows for plain eval."""
    files = find_shards(data_path, "val")
    tokens = load_val_tokens(files, window if stride >= window else None)
    if val_tokens:
        if val_tokens < 2:
            raise ConfigError(f"--val-tokens: expected 0 or >= 2, found {val_tokens}")
        tokens = tokens[:val_tokens + 1]
        if stride >= window:
            tokens = tokens[:(len(tokens) - 1) // window * window + 1]
    return tokens, files


def run(args, d: Dist) -> tuple[dict, bool]:
    loaded = load_model(args.artifact, d.device)
    vocab = loaded.config["vocab_size"]
    window = args.window or loaded.config["train_seq_len"]  # an int >= 1: load_model checks the config
    tables = ByteTables.from_tokenizer(load_tokenizer(args.tokenizer_path, vocab, setting=f"{args.artifact}: "
                                                      "config.vocab_size")).to(d.device)
    tokens, files = val_stream(args.data_path, window, args.stride, args.val_tokens)
    check_token_ids(tokens, vocab, files[0])
    batch = args.batch_windows or max(1, 65536 // window)
    backend, _ = attention.choose(d.device, args.attention)  # before the compile below traces it
    attention.use(backend)
    fast = d.device.type == "cuda" if args.compile is None else args.compile
    hidden = torch.compile(loaded.lm.transformer.hidden, dynamic=False) if fast else None
    amp = (lambda: torch.autocast(d.device.type, dtype=torch.bfloat16)) if fast else None
    result = evaluate(loaded.lm, loaded.prior_rows, tokens, window=window, stride=args.stride, byte_tables=tables,
                      batch_windows=batch, dist=d, device=d.device, amp=amp, hidden=hidden)
    out = {k: v for k, v in result.to_dict().items() if k != "nll_sum"}
    out["attention"] = backend
    ok = True
    if args.audit:
        checks = audit(loaded.lm, loaded.prior_rows, tokens, window=window, stride=args.stride,
                       positions=args.audit_positions, device=d.device)
        out["audit"] = {name: {"result": "PASS" if c["ok"] else "FAIL", "detail": c["detail"]}
                        for name, c in checks.items()}
        ok = all(c["ok"] for c in checks.values())
    return out, ok


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_args(args)
        with distributed(args.device) as d:  # cuda:LOCAL_RANK (NCCL) or gloo; every rank leaves together
            out, ok = run(args, d)
    except GolfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if d.main:
        if args.json:
            print(json.dumps(out))
        else:
            print(" ".join(f"{k}={v}" for k, v in out.items() if k != "audit"))
            for name, c in out.get("audit", {}).items():
                print(f"audit {name}={c['result']} {c['detail']}")
    return 0 if ok else AUDIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
