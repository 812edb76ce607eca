"""Export methods side by side on the same weights: golf's export with each option on and off, against the R1147
and R0611 methods (bench.record_exports, re-implemented from ANCHOR.md).

    python -m bench.export_methods RUN_DIR [--calib-batches 8] [--val-tokens 65536] [--sweep 0.3 0.45 0.6 0.8 1 1.3]
    python -m bench.export_methods --gaussian h100x8      (bytes only: the preset's transformer, Gaussian weights)

RUN_DIR: a golf run (checkpoint.pt; the EMA weights when the run had EMA). GPTQ Hessians from --calib-batches
training batches, as golf.train collects them (the head's from the final norm's output), shared by every method.
Per method: the compressed bytes (golf: the whole model.golf file; the records': their compressed blob), bits per
stored parameter (bytes · 8 / float elements of the state), the quantisation penalty (val BPB of the decoded
weights − the float model's, plain eval on the first --val-tokens val tokens) and the export's seconds.
Then bytes at equal penalty: golf's SDClip export and the R0611 method with every k times each --sweep factor
(size falls monotonically in k), and golf's bytes interpolated at each record method's penalty; and penalty at
equal bytes: golf's export fitted by its rate control (quant.fill_budget) to each record method's bytes; and
rate control at --budgets (clip search against SDClip, whose k may move beside the width).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench import record_exports
from bench.common import DEFAULT_TOKENIZER, SHARED
from golf import quant
from golf.data import ByteTables, DistributedLoader, find_shards, load_shard, load_tokenizer
from golf.export import build_lm, export_model, load_model, model_state
from golf.model import make_prior_rows
from golf.scoring import Predictor, eval_spec, plain_spec, score_artifact, val_tokens

BROTLI = {"name": "brotli", "quality": 11}
K_STEPS = (0.5, 0.7, 1.0, 1.4)


def golf_variants(run: quant.QuantConfig, codec) -> list[tuple[str, quant.QuantConfig, object]]:
    """(label, quant config, codec): golf's export with every new option off (the run's other settings), then
    each option."""
    base = dataclasses.replace(run, clip="search", sdclip_lambda=0.0, embed_gptq=False, lqer_rank=0)
    sd = dataclasses.replace(base, clip="sdclip")
    emb = dataclasses.replace(sd, embed_gptq=True, embed_bits=7)
    return [
        ("golf: clip search, embedding int8 RTN", base, codec),
        ("golf: + SDClip", sd, codec),
        ("golf: + SDClip, Hessian-aware 0.175", dataclasses.replace(sd, sdclip_lambda=0.175), codec),
        ("golf: clip search + embedding GPTQ int7", dataclasses.replace(base, embed_gptq=True, embed_bits=7), codec),
        ("golf: + SDClip + embedding GPTQ int7", emb, codec),
        ("golf: + SDClip + embedding GPTQ int7 + LQER", dataclasses.replace(emb, lqer_rank=4), codec),
        ("golf: + SDClip + embedding GPTQ int7 + LQER, brotli", dataclasses.replace(emb, lqer_rank=4), BROTLI),
    ]


def scaled_k(cfg: quant.QuantConfig, m: float) -> quant.QuantConfig:
    return dataclasses.replace(cfg, sdclip_attn=cfg.sdclip_attn * m, sdclip_mlp=cfg.sdclip_mlp * m,
                               sdclip_embed=cfg.sdclip_embed * m)


def at_penalty(curve: list[tuple[float, int]], penalty: float) -> float | None:
    """Bytes on a (penalty, bytes) curve at `penalty`, linear between its two neighbours; None outside it."""
    pts = sorted(curve)
    for (p0, b0), (p1, b1) in zip(pts, pts[1:]):
        if p0 <= penalty <= p1:
            return b0 + (b1 - b0) * (penalty - p0) / (p1 - p0) if p1 > p0 else min(b0, b1)
    return None


def run_dir(args) -> None:
    from bench.quant_penalty import rebuild

    ckpt_cfg = torch.load(args.run / "checkpoint.pt", map_location="cpu", weights_only=False)["config"]
    sp = load_tokenizer(args.tokenizer or ckpt_cfg["tokenizer_path"])
    cfg, lm, tiers = rebuild(args.run, sp)
    data = args.data or cfg.data_path
    seq = cfg.train_seq_len
    spec = plain_spec(eval_spec(cfg), seq).replace(val_tokens=args.val_tokens, budget_seconds=0)
    val, _ = val_tokens(data, sp.vocab_size(), spec)
    byte_tables = ByteTables.from_tokenizer(sp)

    def bpb(model, rows) -> float:
        return score_artifact(Predictor(model, rows), spec, val, byte_tables=byte_tables, progress=False).val_bpb

    loader = DistributedLoader(find_shards(data, "train"), seq_len=seq, global_batch_tokens=cfg.train_batch_tokens,
                               seed=cfg.seed)
    batches = [loader.batch(10_000_000 + i) for i in range(args.calib_batches)]
    hessians = quant.collect_hessians(lm.transformer, (x for x, _ in batches))
    calib = batches[0]  # rate control's loss batch, as golf.train keeps its first calibration batch
    state = model_state(lm, tiers)
    params = sum(t.numel() for t in state.values() if t.is_floating_point())
    float_bpb = bpb(lm, make_prior_rows(tiers))
    print(f"run {args.run}: {params:,} float parameters; Hessians from {args.calib_batches} training batches of "
          f"{cfg.train_batch_tokens:,} tokens; plain eval on {len(val) - 1:,} val tokens: float BPB {float_bpb:.5f}")
    rows, config = [], None
    with tempfile.TemporaryDirectory() as tmp:
        def golf(label, qcfg, codec, max_bytes=None):
            nonlocal config
            path = Path(tmp) / "m.golf"
            t0 = time.perf_counter()
            export_model(path, lm, tiers, hessians=hessians, qcfg=qcfg, train_seq_len=seq, codec=codec,
                         max_bytes=max_bytes, calib=calib if max_bytes else None)
            seconds = time.perf_counter() - t0
            loaded = load_model(path)
            config = config or loaded.config
            return label, path.stat().st_size, bpb(loaded.lm, loaded.prior_rows) - float_bpb, seconds

        def record(label, method, **kw):
            t0 = time.perf_counter()
            size, decoded = method(state, {f"transformer.{k}": v for k, v in hessians.items()}, **kw)
            seconds = time.perf_counter() - t0
            model, tiers2 = build_lm(decoded, config)
            return label, size, bpb(model, make_prior_rows(tiers2)) - float_bpb, seconds

        small = cfg.quant.small_numel  # the records' methods quantize the tensors golf does
        floored = []
        for label, qcfg, codec in golf_variants(cfg.quant, cfg.artifact_codec):
            rows.append(golf(label, qcfg, codec))
        rows.append(record("R1147 method", record_exports.r1147, small_numel=small, floored=floored))
        rows.append(record("R0611 method (LQER, brotli)", record_exports.r0611, small_numel=small))
        rows.append(record("R0611 method without LQER", record_exports.r0611, lqer=False, small_numel=small))
        print(f"{'method':<54}{'bytes':>11}{'bits/param':>11}{'penalty BPB':>13}{'seconds':>9}")
        for label, size, penalty, seconds in rows:
            print(f"{label:<54}{size:>11,}{size * 8 / params:>11.3f}{penalty:>+13.5f}{seconds:>9.1f}", flush=True)
        if floored:
            print(f"(R1147: its scale floor 1/31 holds {sum(f for f, _ in floored):,} of "
                  f"{sum(n for _, n in floored):,} GPTQ'd rows; float tensors of <= {small:,} elements stay fp16)")

        best = golf_variants(cfg.quant, cfg.artifact_codec)[-1]
        curves = {"golf": [], "R0611 method": []}
        print(f"\nk sweep (every SDClip k times m): bytes, penalty; golf is {best[0]!r}")
        for m in args.sweep:
            _, size, penalty, _ = golf(best[0], scaled_k(best[1], m), best[2])
            curves["golf"].append((penalty, size))
            _, r_size, r_penalty, _ = record("R0611", record_exports.r0611, k_scale=m, small_numel=small)
            curves["R0611 method"].append((r_penalty, r_size))
            print(f"  m {m:<5} golf {size:>10,} {penalty:+.5f}    R0611 {r_size:>10,} {r_penalty:+.5f}", flush=True)
        print(f"\nequal bytes: {best[0]!r} fitted by rate control to each record method's bytes (fill_budget: the "
              "spare bytes buy wider codes; the first calibration batch calibrates its errors)")
        for label, size, penalty, _ in rows[-3:]:
            fitted = golf(best[0], dataclasses.replace(best[1], fill_budget=True), best[2], max_bytes=size)
            print(f"  {label:<36} {size:>10,} {penalty:+.5f}   golf {fitted[1]:>10,} {fitted[2]:+.5f}", flush=True)
        if args.budgets:
            natural = rows[0][1]
            plain = golf_variants(cfg.quant, best[2])[0][1]
            base = dataclasses.replace(plain, embed_gptq=True, embed_bits=7, lqer_rank=4)
            sd = dataclasses.replace(base, clip="sdclip")
            fits = [("clip search, embedding int8 RTN, no LQER", plain),
                    ("clip search, no LQER", dataclasses.replace(base, lqer_rank=0)),
                    ("clip search", base), ("SDClip, widths alone", sd),
                    ("SDClip, k steps 0.5-1.4 beside widths", dataclasses.replace(sd, sdclip_k_steps=K_STEPS)),
                    ("SDClip x0.5, k steps beside widths",
                     dataclasses.replace(scaled_k(sd, 0.5), sdclip_k_steps=(0.7, 1.0, 1.4, 2.0)))]
            print(f"\nrate control at budgets (fractions of {rows[0][0]!r}'s {natural:,} bytes): golf's export with "
                  f"the embedding GPTQ int7 and LQER unless said, {best[2]['name']}")
            for fraction in args.budgets:
                for label, qcfg in fits:
                    _, size, penalty, seconds = golf(label, qcfg, best[2], max_bytes=int(natural * fraction))
                    print(f"  {fraction:.2f}  {label:<42} {size:>10,} {penalty:+.5f} {seconds:6.1f} s", flush=True)
    golf_curve = curves["golf"]
    print(f"\nbytes at equal penalty ({best[0]}: its curve interpolated at the other method's penalty):")
    for label, size, penalty, _ in rows[-3:]:
        at = at_penalty(golf_curve, penalty)
        print(f"  {label:<36} {size:>10,} at {penalty:+.5f}: golf "
              + (f"{at:>12,.0f} = {at / size:.3f}x" if at is not None else "outside the sweep"))
    for penalty, size in curves["R0611 method"]:
        at = at_penalty(golf_curve, penalty)
        print(f"  R0611 on its k sweep {size:>10,} at {penalty:+.5f}: golf "
              + (f"{at:>12,.0f} = {at / size:.3f}x" if at is not None else "outside the sweep"))


def gaussian(args) -> None:
    """Bytes only: the preset's transformer (last recurrence phase) with Gaussian matrices, as bench.preset_fit."""
    from bench.preset_fit import draw
    from golf.config import resolve_config
    from golf.model import TieredLM, Transformer
    from golf.tiers import TierConfig, Vocab, fit_tiers

    cfg = resolve_config(["--preset", args.gaussian], env={})
    vocab = Vocab.from_tokenizer(load_tokenizer(args.tokenizer or DEFAULT_TOKENIZER))
    shard = os.path.join(SHARED, "fineweb10B_sp1024_sample", "fineweb_train_000000.bin")
    train = torch.from_numpy(np.asarray(load_shard(shard)).astype(np.int64))
    tiers = fit_tiers(train, vocab, TierConfig(**vars(cfg.tiers)))
    transformer = draw(Transformer(cfg.model_config(vocab.vocab_size, vocab.bos_id, tiers.columns)), "gaussian")
    transformer.set_phase(len(transformer.virtual_maps) - 1)
    lm = TieredLM(transformer, tiers.prior_tables(), trainable=False)
    hessians = quant.collect_hessians(lm.transformer, [train[:1024].reshape(2, 512)])
    state = model_state(lm, tiers)
    params = sum(t.numel() for t in state.values() if t.is_floating_point())
    print(f"{args.gaussian}, Gaussian matrices, tiered: {params:,} float parameters (bytes only)")
    print(f"{'method':<54}{'bytes':>12}{'bits/param':>11}{'seconds':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for label, qcfg, codec in golf_variants(cfg.quant, cfg.artifact_codec):
            t0 = time.perf_counter()
            info = export_model(Path(tmp) / "m.golf", lm, tiers, hessians=hessians, qcfg=qcfg,
                                train_seq_len=cfg.train_seq_len, codec=codec)
            print(f"{label:<54}{info.file_bytes:>12,}{info.file_bytes * 8 / params:>11.3f}"
                  f"{time.perf_counter() - t0:>9.1f}", flush=True)
    h = {f"transformer.{k}": v for k, v in hessians.items()}
    for label, method in (("R1147 method", record_exports.r1147),
                          ("R0611 method (LQER, brotli)", record_exports.r0611)):
        t0 = time.perf_counter()
        size, _ = method(state, h)
        print(f"{label:<54}{size:>12,}{size * 8 / params:>11.3f}{time.perf_counter() - t0:>9.1f}", flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.export_methods", description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, nargs="?", help="a golf run directory (checkpoint.pt)")
    p.add_argument("--gaussian", metavar="PRESET", help="instead of a run: the preset's model, Gaussian weights")
    p.add_argument("--calib-batches", type=int, default=8)
    p.add_argument("--val-tokens", type=int, default=65_536)
    p.add_argument("--sweep", type=float, nargs="*", default=[0.3, 0.45, 0.6, 0.8, 1.0, 1.3])
    p.add_argument("--budgets", type=float, nargs="*", default=[0.8, 0.9],
                   help="rate control at these fractions of golf's natural size: clip search vs SDClip, widths "
                        "alone vs k steps beside them")
    p.add_argument("--data", default=None, help="default: the run's data_path")
    p.add_argument("--tokenizer", default=None, help="default: the run's tokenizer_path")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if (args.run is None) == (args.gaussian is None):
        p.error("give a run directory or --gaussian PRESET")
    if args.run is not None and not (args.run / "checkpoint.pt").is_file():
        p.error(f"{args.run}: no checkpoint.pt (a golf run directory has one)")
    gaussian(args) if args.gaussian else run_dir(args)


if __name__ == "__main__":
    main()
