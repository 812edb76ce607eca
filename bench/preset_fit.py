"""A preset's artifact through rate control, tiered and --baseline side by side: does it fit the cap, and at
what widths?
    python -m bench.preset_fit [--preset h100x8] [--weights student_t|gaussian] [--threads 1] [--set K=V ...]
Per arm: the preset's transformer in its last recurrence phase with every matrix drawn Student-t (5 dof: the
heavy tails of trained weights, as tests/test_sizes.py) or Gaussian (what a short run leaves), the tiers fit on
the 1M-token train shard, GPTQ Hessians from one 1,024-token calibration batch, exported as golf.train exports
(max_bytes = cap - the config's code bytes). Prints the transformer's parameters, the bytes with code, the
widths rate control chose (tensors per width), whether pruning was needed, the total GPTQ error of the
allocation (golf.rate's units: comparable between runs of one preset) and the seconds.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch

from bench.common import DEFAULT_TOKENIZER, SHARED
from golf import quant
from golf.artifact import read_header
from golf.config import portable_dict, resolve_config
from golf.data import load_shard, load_tokenizer
from golf.export import export_model
from golf.model import TieredLM, Transformer
from golf.sizes import CAP_BYTES, code_bytes, size_report
from golf.tiers import TierConfig, Vocab, fit_tiers


def draw(transformer: Transformer, weights: str, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    t5 = torch.distributions.StudentT(5.0)
    with torch.no_grad():
        for p in transformer.parameters():
            if p.dim() == 2:
                sample = t5.sample(p.shape) if weights == "student_t" else torch.randn(p.shape)
                p.copy_(sample / p.shape[1] ** 0.5)
    return transformer


def fit_arm(preset: str, baseline: bool, weights: str, vocab: Vocab, train: torch.Tensor, out: str,
            sets: list[str] = ()) -> dict:
    t0 = time.perf_counter()
    extra = [a for s in sets for a in ("--set", s)]
    cfg = resolve_config(["--preset", preset] + (["--baseline"] if baseline else []) + extra, env={})
    tiers = None if baseline else fit_tiers(train, vocab, TierConfig(**vars(cfg.tiers)))
    columns = 0 if tiers is None else tiers.columns
    transformer = draw(Transformer(cfg.model_config(vocab.vocab_size, vocab.bos_id, columns)), weights)
    transformer.set_phase(len(transformer.virtual_maps) - 1)
    tables = tiers.prior_tables() if tiers is not None else torch.zeros(0, vocab.vocab_size)
    lm = TieredLM(transformer, tables, trainable=False)
    hessians = quant.collect_hessians(lm.transformer, [train[:1024].reshape(2, 512)])
    code = code_bytes(portable_dict(cfg))
    info = export_model(out, lm, tiers, hessians=hessians, qcfg=cfg.quant, train_seq_len=cfg.train_seq_len,
                        codec=cfg.artifact_codec, max_bytes=CAP_BYTES - code["bytes"])
    report = size_report(out, read_header(out), code=code)
    return {"params": sum(p.numel() for p in transformer.parameters()), "total": report["total_bytes"],
            "fits": report["fits"], "widths": info.rate.get("bits_histogram") if info.rate else None,
            "pruned": info.pruning["pruned"] if info.pruning else 0, "seconds": time.perf_counter() - t0,
            "error": info.rate.get("error_total") if info.rate else None,
            "compressions": [(round(c.get("proxy", 0)), c["actual"]) for c in info.rate["compressions"]]
            if info.rate else []}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.preset_fit", description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="h100x8")
    p.add_argument("--weights", choices=("student_t", "gaussian"), default="student_t")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting over the preset's, as golf.train's --set (e.g. quant.clip=sdclip)")
    p.add_argument("--arms", nargs="+", choices=("tiered", "baseline"), default=["tiered", "baseline"])
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    vocab = Vocab.from_tokenizer(load_tokenizer(DEFAULT_TOKENIZER))
    shard = os.path.join(SHARED, "fineweb10B_sp1024_sample", "fineweb_train_000000.bin")
    train = torch.from_numpy(np.asarray(load_shard(shard)).astype(np.int64))
    print(f"{args.preset}, {args.weights} matrices, cap {CAP_BYTES:,} bytes (artifact + code)"
          + (f"; settings {' '.join(args.sets)}" if args.sets else ""))
    print(f"{'arm':10} {'transformer params':>18} {'total bytes':>12} {'fits':>5} {'pruned':>7}  widths (bits: tensors)  "
          "error  s")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.arms:
            r = fit_arm(args.preset, name == "baseline", args.weights, vocab, train, f"{tmp}/{name}.golf", args.sets)
            widths = {b: n for b, n in (r["widths"] or {}).items() if n}
            print(f"{name:10} {r['params']:>18,} {r['total']:>12,} {str(r['fits']):>5} {r['pruned']:>7,}  "
                  f"{widths}  {r['error'] or 0:.4g}  {r['seconds']:.0f}", flush=True)
            print(f"{'':10} rate control's compressions (proxy, actual bytes): {r['compressions']}")


if __name__ == "__main__":
    main()
