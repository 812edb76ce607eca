"""python -m golf.eval ARTIFACT: the BPB of a `model.golf`, built from the artifact alone, by one eval method.

Usage
    python -m golf.eval runs/<id>/model.golf [--data-path DIR] [--tokenizer-path FILE] [--method sliding|ttt]
                        [--window W] [--stride S] [--batch-tokens N] [--val-tokens N] [--ttt KEY=VALUE ...]
                        [--budget-seconds S] [--over-budget] [--audit] [--audit-positions P] [--audit-reruns R]
                        [--audit-tokens N] [--json] [--compile | --no-compile] [--attention auto|NAME]
    torchrun --nproc_per_node=8 -m golf.eval runs/<id>/model.golf      (ranks share the work, sums all-reduced)

Scores the val shards of DATA_PATH (`--data-path`) through golf.scoring.score_artifact, the entry point golf.train
uses too. `--method sliding` (default): window W (default: the training sequence length stored in the artifact),
stride S (default 64): the first window scores all its targets, every later one its last S, and every target of
the stream is scored once (golf.evaluate.window_plan); `--stride` >= W is the challenge's plain eval
(non-overlapping windows, the stream truncated to a multiple of W). `--method ttt`: score-first LoRA test-time
training (golf.ttt, R0611's defaults; `--ttt rank=96 --ttt phases=0` ... sets any golf.ttt.TTTConfig field), the
context per chunk W unless `--ttt window=`. `--val-tokens N` scores the first N targets (plain: whole windows of
them). The tokenizer (TOKENIZER_PATH) gives the BPB byte tables only; its vocabulary must match the artifact's.
The budget: the method's time is projected at the start on synthetic tokens; over `--budget-seconds` (default
600, 0: none) it stops there (exit 2) unless `--over-budget`; the output adds the time the full split of the
challenge would take on 8 ranks of this device at the measured rate (derived_8x_seconds, derived).
On CUDA the transformer's forward is compiled (sliding; ttt runs it eagerly, its LoRA hooked in) and runs under
bf16 autocast (`--no-compile`: eager fp32); the scoring op (golf::score_windows) computes the head and the
softmax in fp32 either way. Attention runs on the
backend golf.attention.choose picks on this machine (`--attention auto`, as golf.train's default), or the one named.
`--audit` checks causality, normalisation, single pass and consistency on the artifact and real val tokens and
exits 3 when any condition FAILs: for sliding on the plan's windows (golf.evaluate.audit); for ttt on the method
itself (golf.evaluate.audit_method: the first `--audit-tokens` val tokens scored `--audit-reruns` more times, one
token changed each time, and every target scored before it must keep its score). `--json` prints one JSON object
on stdout.
Exit codes: 0 ok, 2 bad input (GolfError: missing/corrupt artifact, data, tokenizer mismatch), 3 audit FAIL.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from golf import attention
from golf.config import TrainConfig, parse_value, set_field
from golf.data import ByteTables, load_tokenizer
from golf.errors import ConfigError, GolfError
from golf.evaluate import audit, audit_method
from golf.export import load_model
from golf.runtime import Dist, distributed
from golf.scoring import DEFAULT_BATCH_TOKENS, EVAL_BUDGET_SECONDS, METHODS, ONE_RANK, Context, EvalSpec, \
    run_method, score_artifact, val_tokens
from golf.ttt import TTTConfig

AUDIT_FAILED = 3


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m golf.eval", description=__doc__.split("\n\n")[0])
    p.add_argument("artifact", help="a model.golf written by python -m golf.train")
    p.add_argument("--data-path", default=os.environ.get("DATA_PATH", "data/datasets/fineweb10B_sp1024"),
                   help="folder with the fineweb_val_*.bin shards (env DATA_PATH)")
    p.add_argument("--tokenizer-path", default=os.environ.get("TOKENIZER_PATH", "data/tokenizers/fineweb_1024_bpe.model"),
                   help="the SentencePiece model, for the BPB byte tables (env TOKENIZER_PATH)")
    p.add_argument("--method", default="sliding", choices=METHODS, help="sliding (a fixed predictor) or ttt "
                   "(score-first test-time training)")
    p.add_argument("--window", type=int, default=None,
                   help="window length (default or 0: the training sequence length)")
    p.add_argument("--stride", type=int, default=64, help="targets scored per window after the first (>= window: plain)")
    p.add_argument("--batch-tokens", type=int, default=DEFAULT_BATCH_TOKENS,
                   help="tokens per forward (sliding; default %(default)s)")
    p.add_argument("--batch-windows", type=int, default=None, help="windows per forward (instead of --batch-tokens)")
    p.add_argument("--val-tokens", type=int, default=0, help="score only the first N val targets (0 = all, else >= 1)")
    p.add_argument("--ttt", action="append", default=[], metavar="KEY=VALUE",
                   help="a golf.ttt.TTTConfig setting for --method ttt (repeatable): rank, alpha, lr, chunk, window, "
                   "batch_docs, phases, prefix_docs, ...")
    p.add_argument("--budget-seconds", type=float, default=EVAL_BUDGET_SECONDS,
                   help="refuse at the start when the projected time exceeds this (0: no limit; default %(default)s)")
    p.add_argument("--over-budget", action="store_true", help="run even when the projection exceeds the budget")
    p.add_argument("--audit", action="store_true", help="check the four validity conditions; exit 3 on a FAIL")
    p.add_argument("--audit-positions", type=int, default=32, help="positions the sliding audit samples (>= 1)")
    p.add_argument("--audit-reruns", type=int, default=4,
                   help="ttt audit: reruns with one token changed (>= 1)")
    p.add_argument("--audit-tokens", type=int, default=4096, help="ttt audit: val tokens it scores (>= 2)")
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
            ("--batch-tokens", args.batch_tokens, args.batch_tokens >= 1, ">= 1"),
            ("--batch-windows", args.batch_windows, args.batch_windows is None or args.batch_windows >= 1, ">= 1"),
            ("--val-tokens", args.val_tokens, args.val_tokens >= 0, "0 (all) or >= 1"),
            ("--budget-seconds", args.budget_seconds, args.budget_seconds >= 0, ">= 0 (0: no limit)"),
            ("--audit-positions", args.audit_positions, args.audit_positions >= 1, ">= 1"),
            ("--audit-reruns", args.audit_reruns, args.audit_reruns >= 1, ">= 1"),
            ("--audit-tokens", args.audit_tokens, args.audit_tokens >= 2, ">= 2")):
        if not ok:
            raise ConfigError(f"{flag}: expected {expected}, found {value}")
    ttt_config(args.ttt)


def ttt_config(settings: list[str]) -> TTTConfig:
    """--ttt KEY=VALUE ... over R0611's defaults, parsed as golf.train's --set ttt.KEY=VALUE."""
    cfg = TrainConfig()
    for text in settings:
        key, eq, value = text.partition("=")
        if not eq:
            raise ConfigError(f"--ttt {text}: expected KEY=VALUE")
        try:
            set_field(cfg, f"ttt.{key}", parse_value(value))
        except ConfigError as exc:
            raise ConfigError(f"--ttt {text}: {exc}") from exc
    return cfg.ttt


def eval_spec_of(args, train_seq_len: int) -> EvalSpec:
    window = args.window or train_seq_len
    batch = args.batch_windows * window if args.batch_windows else args.batch_tokens
    return EvalSpec(method=args.method, window=window, stride=args.stride, batch_tokens=batch,
                    val_tokens=args.val_tokens, ttt=ttt_config(args.ttt), budget_seconds=args.budget_seconds,
                    over_budget=args.over_budget)


def run(args, d: Dist) -> tuple[dict, bool]:
    loaded = load_model(args.artifact, d.device)
    vocab = loaded.config["vocab_size"]
    spec = eval_spec_of(args, loaded.config["train_seq_len"])  # an int >= 1: load_model checks the config
    tables = ByteTables.from_tokenizer(load_tokenizer(args.tokenizer_path, vocab, setting=f"{args.artifact}: "
                                                      "config.vocab_size")).to(d.device)
    tokens, _ = val_tokens(args.data_path, vocab, spec)
    backend, _ = attention.choose(d.device, args.attention)  # before the compile below traces it
    attention.use(backend)
    fast = d.device.type == "cuda" if args.compile is None else args.compile
    hidden = torch.compile(loaded.lm.transformer.hidden, dynamic=False) if fast else None
    amp = (lambda: torch.autocast(d.device.type, dtype=torch.bfloat16)) if fast else None
    result = score_artifact(loaded, spec, tokens, byte_tables=tables, dist=d, device=d.device, amp=amp,
                            hidden=hidden)
    out = {k: v for k, v in result.to_dict().items() if k not in ("nll_sum", "info")}
    out.update(result.info)
    out["attention"] = backend
    ok = True
    if args.audit:
        if spec.method == "sliding":
            checks = audit(loaded.lm, loaded.prior_rows, tokens, window=spec.window, stride=spec.stride,
                           positions=args.audit_positions, device=d.device)
        else:
            def method(stream, record):
                ctx = Context(tables, ONE_RANK, d.device, amp, None, False, record)  # each rank audits alone
                return run_method(loaded, spec, stream, ctx)

            checks = audit_method(method, tokens[:args.audit_tokens], vocab=vocab,
                                  bos_id=loaded.config["bos_id"], reruns=args.audit_reruns)
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
