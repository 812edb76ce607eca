"""What a jointly trained tier 1 (`--tier1-train`) is worth once it has to fit in an artifact.
    python -m bench.tier1_joint RUN_DIR [RUN_DIR ...] [--data-path D] [--tokenizer-path T]   (default: the run's)
Each RUN_DIR is a `--tier1-train` run: its checkpoint.pt holds the trained prior rows (dense [R, V], 27M values
in cpu-long: more than the cap) and the closed-form tiers they started from. One plain eval of the
run's trained transformer per row set, side by side:
    trained          the trained rows as they are (the run's float BPB; not storable)
    fitted           the closed-form rows the run started from (storable: what the gain owes to training them)
    t1 projected     tier 0 as fitted, tier 1's trained rows refit to the tier config's ranks by the fit's own
                     count-weighted low-rank projection (golf.tiers.project_tier1): the same factor shapes, so
                     the same bytes as the closed form; what golf.train exports from a --tier1-train run
    t0+t1 projected  as above with tier 0's trained rows kept dense ([states, V]: storable, but not free)
    t1 projected 4x rank   tier 1 projected at four times the ranks: how much of the gain more bytes keep
and how far training moved the rows (relative Frobenius change, tier 0 / previous-token / previous-two).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from golf.config import config_from_dict
from golf.data import ByteTables, find_shards, load_tokenizer, read_fit_prefix
from golf.model import TieredLM, Transformer, make_prior_rows
from golf.optim import EMA
from golf.scoring import Predictor, eval_spec, plain_spec, score_artifact, val_tokens
from golf.tiers import NUM_STATES, Vocab, project_tier1, row_counts, tiers_from_tensors


def load_run(run_dir: Path, args):
    """(cfg, tokenizer, tiers the run started from, its transformer and trained rows as the run scored them:
    the EMA weights when it kept an EMA)."""
    ckpt = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    cfg = config_from_dict(ckpt["config"], where=str(run_dir / "checkpoint.pt"))
    if not cfg.tier1_train:
        raise SystemExit(f"{run_dir}: not a --tier1-train run")
    # Where the run read its data is run-local (config_from_dict leaves it out): take it from the checkpoint.
    cfg.data_path = args.data_path or ckpt["config"]["data_path"]
    sp = load_tokenizer(args.tokenizer_path or ckpt["config"]["tokenizer_path"], cfg.vocab_size)
    tiers = tiers_from_tensors(ckpt["tiers"], Vocab.from_tokenizer(sp), cfg.tiers)
    transformer = Transformer(cfg.model_config(sp.vocab_size(), sp.bos_id(), tiers.columns))
    lm = TieredLM(transformer, tiers.prior_tables().float(), trainable=True)
    transformer.load_state_dict(ckpt["model"])
    with torch.no_grad():
        lm.prior_tables.copy_(ckpt["prior_tables"])
    if ckpt.get("ema") is not None:
        ema = EMA(lm, cfg.optim.ema_decay)
        ema.load_state_dict(ckpt["ema"])
        ema.copy_to(lm)
    transformer.eval()
    return cfg, sp, tiers, transformer, lm.prior_tables.detach().clone(), int(ckpt["step"])


def analyse(run_dir: Path, args) -> dict:
    cfg, sp, tiers, transformer, trained, steps = load_run(run_dir, args)
    fitted = tiers.prior_tables().float()
    if fitted.shape != trained.shape:
        raise SystemExit(f"{run_dir}: trained rows {tuple(trained.shape)} but the run's tiers give "
                         f"{tuple(fitted.shape)}")

    counts = row_counts(tiers, read_fit_prefix(find_shards(cfg.data_path, "train"), cfg.tier_fit_tokens,
                                               sp.vocab_size()))
    projected = project_tier1(tiers, trained, counts)
    wide = project_tier1(dataclasses.replace(tiers, cfg=dataclasses.replace(
        tiers.cfg, prev_rank=4 * tiers.cfg.prev_rank, pair_rank=4 * tiers.cfg.pair_rank)), trained, counts)
    t1 = projected.tier1.rows()
    variants = {"trained": trained, "fitted": fitted,
                "t1 projected": torch.cat([fitted[:NUM_STATES], t1]),
                "t0+t1 projected": torch.cat([trained[:NUM_STATES], t1]),
                "t1 projected 4x rank": torch.cat([fitted[:NUM_STATES], wide.tier1.rows()])}
    tier_bytes = {"t1 projected": projected.projected_bytes()["lzma_bytes"],
                  "t1 projected 4x rank": wide.projected_bytes()["lzma_bytes"]}
    v = tiers.vocab.vocab_size
    parts = {"tier0": slice(0, NUM_STATES), "prev": slice(NUM_STATES, NUM_STATES + v),
             "pair": slice(NUM_STATES + v, None)}
    moved = {k: float((trained[s] - fitted[s]).norm() / fitted[s].norm()) for k, s in parts.items()}

    seq, byte_tables = cfg.train_seq_len, ByteTables.from_tokenizer(sp)
    spec = plain_spec(eval_spec(cfg), seq).replace(budget_seconds=0)
    val, _ = val_tokens(cfg.data_path, sp.vocab_size(), spec)
    bpb = {}
    with torch.no_grad():
        for name, tables in variants.items():
            lm = TieredLM(transformer, tables, trainable=False)
            bpb[name] = score_artifact(Predictor(lm, make_prior_rows(tiers)), spec, val, byte_tables=byte_tables,
                                       progress=False).val_bpb
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"run": run_dir.name, "steps": steps, "summary_float": summary.get("float_val_bpb"),
            "bpb": bpb, "moved": moved, "tier_bytes": tier_bytes}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--data-path")
    p.add_argument("--tokenizer-path")
    args = p.parse_args(argv)
    names = ["trained", "fitted", "t1 projected", "t0+t1 projected", "t1 projected 4x rank"]
    print("| run | steps | " + " | ".join(names) + " | moved: tier0 / prev / pair |")
    print("|---|---|" + "---|" * len(names) + "---|")
    rows = []
    for run_dir in args.runs:
        r = analyse(run_dir, args)
        rows.append(r)
        if r["summary_float"] is not None and abs(r["bpb"]["trained"] - r["summary_float"]) > 1e-4:
            raise SystemExit(f"{run_dir}: trained rows score {r['bpb']['trained']:.5f} here but the run's "
                             f"float_val_bpb is {r['summary_float']:.5f}: not the same model")
        m = r["moved"]
        print(f"| {r['run']} | {r['steps']} | " + " | ".join(f"{r['bpb'][k]:.4f}" for k in names)
              + f" | {m['tier0']:.2f} / {m['prev']:.2f} / {m['pair']:.2f} |", flush=True)
    if len(rows) > 1:
        print("| mean | | " + " | ".join(f"{np.mean([r['bpb'][k] for r in rows]):.4f}" for k in names) + " | |")
    print(f"{rows[-1]['run']}: tiers 0+1 in bytes (int8 factors + LZMA, Tiers.projected_bytes): "
          + ", ".join(f"{k} {v:,}" for k, v in rows[-1]["tier_bytes"].items())
          + " (the closed form has the tier ranks' shapes: the first's)")


if __name__ == "__main__":
    main()
