"""The transformer under different settings at equal steps, over one fit of the tiers.
    python -m bench.residual_sweep --data data/cpu --steps 600 \\
        --variant preset --variant "mlp1:model.mlp_mult=1.0" --variant "base:baseline=true" [--out sweep.png]
The tiers are fit once with the preset's tier settings, their refinement stopped by step count
(--refine-steps) so the fit is the same every time. Each variant then trains its transformer from the same seed
for --steps steps, the learning rate decaying over the steps (the `steps` schedule), and the float model is
scored on the whole val split. No clock enters a result, so variants compare without the machine's noise;
ms/step is the median step time, for the cost side.
A variant is NAME or NAME:KEY=VALUE;KEY=VALUE with the keys of `--set` (model.*, optim.*, train_seq_len,
train_batch_tokens, ...; not tiers.*, which the shared fit fixes); baseline=true turns the tiers off.
Prints one row per variant (float BPB, its difference from the first variant, ms/step) and, with --out, plots
val BPB against step (evals every --eval-every steps on the first --eval-tokens val tokens).
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import numpy as np
import torch

from bench.common import DEFAULT_TOKENIZER
from golf.config import resolve_config
from golf.data import ByteTables, DistributedLoader, TokenStream, find_shards, load_tokenizer
from golf.model import TieredLM, Transformer, make_prior_rows
from golf.optim import build_optimizers, lr_and_momentum
from golf.tiers import Vocab, fit_tiers
from golf.runtime import seed_everything
from golf.scoring import Predictor, eval_spec, plain_spec, score_artifact, val_tokens


def parse_variant(spec: str) -> tuple[str, list[str], bool]:
    """NAME[:K=V;K=V] -> (name, --set arguments, baseline)."""
    name, _, rest = spec.partition(":")
    sets, baseline = [], False
    for item in filter(None, rest.split(";")):
        key, eq, value = item.partition("=")
        if not eq:
            raise SystemExit(f"--variant {spec!r}: {item!r} is not KEY=VALUE")
        if key.startswith("tiers."):
            raise SystemExit(f"--variant {spec!r}: {key} would change the tiers, which all variants share")
        if key == "baseline":
            baseline = value.lower() == "true"
        else:
            sets += ["--set", f"{key}={value}"]
    return name, sets, baseline


def train_variant(cfg, tiers, baseline: bool, files, val: np.ndarray, byte_tables: ByteTables, steps: int,
                  eval_every: int, eval_tokens: int) -> dict:
    vocab_size = byte_tables.vocab_size
    seed_everything(cfg.seed)
    transformer = Transformer(cfg.model_config(vocab_size, byte_tables.bos_id))
    tables = tiers.prior_tables().float() if not baseline else torch.zeros(0, vocab_size)
    lm = TieredLM(transformer, tables, trainable=False)
    prior_rows = make_prior_rows(None if baseline else tiers)
    opt = build_optimizers(lm.named_parameters(), cfg.optim)
    loader = DistributedLoader(files, seq_len=cfg.train_seq_len, global_batch_tokens=cfg.train_batch_tokens,
                               seed=cfg.seed, vocab_size=vocab_size)

    def score(tokens: np.ndarray) -> float:
        lm.eval()
        seq = cfg.train_seq_len
        spec = plain_spec(eval_spec(cfg), seq).replace(budget_seconds=0)
        result = score_artifact(Predictor(lm, prior_rows), spec, tokens, byte_tables=byte_tables, progress=False)
        lm.train()
        return result.val_bpb

    head = val[: max(eval_tokens // cfg.train_seq_len, 1) * cfg.train_seq_len + 1]
    curve, step_s = [], []
    for step in range(steps):
        if eval_every and step % eval_every == 0:
            curve.append((step, score(head)))
        t0 = time.perf_counter()
        x, y = loader.batch(step)
        lm(x, prior_rows(x), y).mean().backward()
        opt.step(*lr_and_momentum(opt.cfg, step, float(step), float(steps), step_s=1.0))
        opt.zero_grad(set_to_none=True)
        step_s.append(time.perf_counter() - t0)
        print(f"\r  step {step + 1}/{steps}  {1000 * step_s[-1]:.0f} ms", end="", flush=True)
    print("\r", end="")
    if eval_every:
        curve.append((steps, score(head)))
    return {"float_bpb": score(val), "ms_per_step": 1000 * statistics.median(step_s), "curve": curve,
            "params": sum(p.numel() for p in transformer.parameters())}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="a DATA_PATH: train and val shards")
    p.add_argument("--tokenizer", default=DEFAULT_TOKENIZER)
    p.add_argument("--preset", default="cpu")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--refine-steps", type=int, default=220, help="tier-1 Adam steps of the shared fit")
    p.add_argument("--variant", action="append", required=True, help="NAME[:KEY=VALUE;KEY=VALUE] (repeatable)")
    p.add_argument("--eval-every", type=int, default=100, help="steps between curve points; 0 = none")
    p.add_argument("--eval-tokens", type=int, default=65536, help="val tokens of a curve point")
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    p.add_argument("--out", help="PNG of val BPB against step")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    variants = [parse_variant(v) for v in args.variant]
    common = ["--preset", args.preset, "--data-path", args.data, "--tokenizer-path", args.tokenizer,
              "--run-id", "sweep"]
    configs = [resolve_config(common + sets, env={}) for _, sets, _ in variants]
    sp = load_tokenizer(args.tokenizer)
    byte_tables = ByteTables.from_tokenizer(sp)
    files = find_shards(args.data, "train")
    plain = plain_spec(eval_spec(configs[0]), configs[0].train_seq_len).replace(val_tokens=0, budget_seconds=0)
    val, _ = val_tokens(args.data, sp.vocab_size(), plain)

    t0 = time.perf_counter()
    tiers = None
    if not all(baseline for _, _, baseline in variants):
        stream = TokenStream(files)
        n = configs[0].tier_fit_tokens or len(stream)
        ids = torch.from_numpy(stream.read(0, min(n, len(stream))).astype(np.int64))
        tier_cfg = dataclasses.replace(configs[0].tiers, refine_steps=args.refine_steps,
                                       refine_seconds=1e9 if args.refine_steps else 0.0)
        tiers = fit_tiers(ids, Vocab.from_tokenizer(sp), tier_cfg)
        print(f"tiers fit on {len(ids):,} tokens in {time.perf_counter() - t0:.1f} s "
              f"({tiers.refine_steps} refinement steps)")

    results = []
    for (name, _, baseline), cfg in zip(variants, configs):
        print(f"{name}: training {args.steps} steps")
        val_cut = val[: (len(val) - 1) // cfg.train_seq_len * cfg.train_seq_len + 1]
        results.append((name, train_variant(cfg, tiers, baseline, files, val_cut, byte_tables, args.steps,
                                            args.eval_every, args.eval_tokens)))

    first = results[0][1]["float_bpb"]
    print(f"\n{'variant':<16}{'params':>10}{'float BPB':>11}{'vs ' + results[0][0]:>16}{'ms/step':>9}")
    for name, r in results:
        print(f"{name:<16}{r['params']:>10,}{r['float_bpb']:>11.4f}{r['float_bpb'] - first:>+16.4f}"
              f"{r['ms_per_step']:>9.1f}")

    if args.out:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for name, r in results:
            if r["curve"]:
                ax.plot(*zip(*r["curve"]), marker="o", ms=3, label=name)
        ax.set_xlabel("step")
        ax.set_ylabel(f"val BPB (first {args.eval_tokens:,} tokens)")
        ax.set_title(f"{args.steps} steps per variant, one fit of the tiers")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.out, dpi=120)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
