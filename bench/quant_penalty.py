"""Quantisation penalty of a trained run: GPTQ int6 vs round-to-nearest int6, both through a real model.golf.

    python -m bench.quant_penalty runs/<id> [--calib-batches 8] [--data PATH] [--tokenizer FILE]

Loads runs/<id>/checkpoint.pt (the transformer's final weights and the tier tensors; EMA weights when the run
had EMA), scores the float model (plain eval on the val shards), then writes two artifacts, one with GPTQ
(Hessians from `--calib-batches` training batches, as golf.train gathers them) and one with RTN (no Hessians),
rebuilds each model from its file and scores it the same way. quant_penalty = roundtrip BPB - float BPB. With
tiers, the pair is repeated with the tier-1 factors kept fp32, which leaves only the transformer's int6 error.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from golf.config import TrainConfig, set_field
from golf.data import ByteTables, DistributedLoader, find_shards, load_tokenizer
from golf.export import export_model, load_model
from golf.model import TieredLM, Transformer, make_prior_rows
from golf.optim import EMA
from golf.quant import collect_hessians
from golf.scoring import Predictor, eval_spec, plain_spec, score_artifact, val_tokens
from golf.tiers import Tier1, TierConfig, Tiers, Vocab, tiers_from_tensors


def rebuild(run: Path, sp) -> tuple[TrainConfig, TieredLM, Tiers | None]:
    ckpt = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)
    cfg = TrainConfig()
    for key, value in ckpt["config"].items():
        if key in ("model", "optim", "tiers", "quant"):
            for sub, v in value.items():
                set_field(cfg, f"{key}.{sub}", v)
        else:
            set_field(cfg, key, value)
    tiers = tiers_from_tensors(ckpt["tiers"], Vocab.from_tokenizer(sp), TierConfig(**ckpt["config"]["tiers"]))
    # The prior gate's shape depends on how many prior rows each position reads.
    transformer = Transformer(cfg.model_config(sp.vocab_size(), sp.bos_id(), tiers.columns if tiers else 0))
    transformer.load_state_dict(ckpt["model"])
    lm = TieredLM(transformer, ckpt["prior_tables"], trainable=False)
    if ckpt.get("ema") is not None:  # the run exported its EMA weights
        ema = EMA(lm, cfg.optim.ema_decay)
        ema.load_state_dict(ckpt["ema"])
        ema.copy_to(lm)
    return cfg, lm.eval(), tiers


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--calib-batches", type=int, default=None, help="default: the run's calib_batches")
    parser.add_argument("--clip-candidates", type=float, nargs="+", default=None,
                        help="GPTQ clip quantiles (default: the run's quant.clip_candidates)")
    parser.add_argument("--bits", type=int, default=None, help="bits of the int6 scheme's grid (default: the run's)")
    parser.add_argument("--data", default=None, help="default: the run's data_path")
    parser.add_argument("--tokenizer", default=None, help="default: the run's tokenizer_path")
    args = parser.parse_args()
    ckpt_cfg = torch.load(args.run / "checkpoint.pt", map_location="cpu", weights_only=False)["config"]
    sp = load_tokenizer(args.tokenizer or ckpt_cfg["tokenizer_path"])
    cfg, lm, tiers = rebuild(args.run, sp)
    if args.bits:
        cfg.quant = dataclasses.replace(cfg.quant, bits=args.bits)
    if args.clip_candidates:
        cfg.quant = dataclasses.replace(cfg.quant, clip_candidates=tuple(args.clip_candidates))
    data = args.data or cfg.data_path
    seq = cfg.train_seq_len
    spec = plain_spec(eval_spec(cfg), seq).replace(val_tokens=0, budget_seconds=0)
    val, _ = val_tokens(data, sp.vocab_size(), spec)
    tables = ByteTables.from_tokenizer(sp)

    def plain(model, rows) -> float:
        return score_artifact(Predictor(model, rows), spec, val, byte_tables=tables, progress=False).val_bpb

    float_bpb = plain(lm, make_prior_rows(tiers))
    loader = DistributedLoader(find_shards(data, "train"), seq_len=seq, global_batch_tokens=cfg.train_batch_tokens,
                               seed=cfg.seed)
    n = cfg.calib_batches if args.calib_batches is None else args.calib_batches
    t = time.perf_counter()
    hessians = collect_hessians(lm.transformer, (loader.batch(10_000_000 + i)[0] for i in range(n)))
    calib_s = time.perf_counter() - t
    rows = [("float (no quantisation)", None, float_bpb, 0.0, 0.0)]
    # Tier-1 factors kept fp32 isolates the transformer's int6 error (the part GPTQ changes).
    fp32_tiers = dataclasses.replace(cfg.quant, schemes={f"tier1.{k}": "fp32" for k in Tier1.FACTORS})
    grid = f"int{cfg.quant.bits}"
    variants = [(f"GPTQ {grid}", hessians, cfg.quant), (f"RTN {grid}", None, cfg.quant)]
    if tiers is not None and tiers.tier1 is not None:
        variants += [(f"GPTQ {grid}, tier 1 fp32", hessians, fp32_tiers), (f"RTN {grid}, tier 1 fp32", None, fp32_tiers)]
    for name, h, qcfg in variants:
        path = args.run / "bench_quant_penalty.golf"
        t = time.perf_counter()
        export_model(path, lm, tiers, hessians=h, qcfg=qcfg, train_seq_len=seq)
        seconds = time.perf_counter() - t
        loaded = load_model(path)
        bpb = plain(loaded.lm, loaded.prior_rows)
        rows.append((name, path.stat().st_size, bpb, bpb - float_bpb, seconds))
        path.unlink()
    print(f"run {args.run}: plain eval on {len(val) - 1:,} val targets; Hessians from {n} training batches "
          f"of {cfg.train_batch_tokens:,} tokens in {calib_s:.1f} s; {cfg.quant.bits}-bit grid; GPTQ clip candidates "
          f"{cfg.quant.clip_candidates}")
    print(f"{'model':<28}{'artifact bytes':>16}{'val BPB':>12}{'quant_penalty':>15}{'export s':>10}")
    for name, size, bpb, penalty, seconds in rows:
        print(f"{name:<28}{size if size else '-':>16}{bpb:>12.6f}{penalty:>+15.6f}{seconds:>10.1f}")


if __name__ == "__main__":
    main()
