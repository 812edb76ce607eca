"""How far selective +-1 pruning reaches: a preset's tiered artifact, its weights drawn with a chosen tail, pruned
to the cap.
    python -m bench.prune [--preset h100x8] [--dof 1000 --dof 7] [--threads 2]
Per --dof: every transformer matrix drawn Student-t with that many degrees of freedom per row (large = Gaussian:
more of the int6 grid used, more bits per weight; tests/test_sizes.py uses 5), tiers fit on the 1M-token train
shard, RTN int6, the preset's codec. Prints the artifact as it is, with every +-1 zeroed (the most pruning can
save), and as golf.export.prune_to_fit leaves it under the cap minus the code bytes, with its trials and seconds
(each trial is one full compression).
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
from golf.sizes import code_bytes
from golf.config import portable_dict, resolve_config
from golf.data import load_shard, load_tokenizer
from golf.export import export_model, model_state
from golf.model import TieredLM, Transformer
from golf.tiers import TierConfig, Vocab, fit_tiers


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="h100x8")
    p.add_argument("--dof", type=float, action="append", help="Student-t degrees of freedom (repeatable)")
    p.add_argument("--train-shard", default=os.path.join(SHARED, "fineweb10B_sp1024_sample",
                                                         "fineweb_train_000000.bin"))
    p.add_argument("--tokenizer", default=DEFAULT_TOKENIZER)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = resolve_config(["--preset", args.preset, "--run-id", "prune"], env={})
    vocab = Vocab.from_tokenizer(load_tokenizer(args.tokenizer))
    train = torch.from_numpy(np.asarray(load_shard(args.train_shard)).astype(np.int64))
    tiers = fit_tiers(train, vocab, TierConfig(**vars(cfg.tiers)))
    code = code_bytes(portable_dict(cfg))["bytes"]
    limit = cfg.size_cap_bytes - code
    print(f"{args.preset}: code {code:,} bytes, so the artifact may take {limit:,}")
    print(f"{'dof':>6}{'values':>12}{'+-1 values':>12}{'as is':>13}{'all +-1 zeroed':>16}{'pruned to fit':>15}"
          f"{'zeroed':>11}{'trials':>8}{'seconds':>9}")
    for dof in args.dof or [1000.0, 7.0]:
        transformer = Transformer(cfg.model_config(vocab.vocab_size, vocab.bos_id))
        torch.manual_seed(0)
        t = torch.distributions.StudentT(dof)
        with torch.no_grad():
            for w in transformer.parameters():
                if w.dim() == 2:
                    w.copy_(t.sample(w.shape) / w.shape[1] ** 0.5)
        lm = TieredLM(transformer, tiers.prior_tables(), trainable=False)
        arrays, meta = quant.encode_state(model_state(lm, tiers), None, cfg.quant)
        int6 = sum(int(np.prod(m["shape"])) for m in meta.values() if m["scheme"] == "int6")
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            info = export_model(os.path.join(tmp, "m.golf"), lm, tiers, qcfg=cfg.quant,
                                train_seq_len=cfg.train_seq_len, codec=cfg.artifact_codec, max_bytes=limit)
            seconds = time.perf_counter() - t0
        r = info.pruning or {"candidates": len(quant.pm1_candidates(arrays, meta)), "bytes_before": info.file_bytes,
                             "pruned": 0, "trials": 1}
        all_zeroed = r.get("bytes_all_pruned")
        fits = info.file_bytes <= limit
        print(f"{dof:>6g}{int6:>12,}{r['candidates']:>12,}{r['bytes_before']:>13,}"
              f"{(f'{all_zeroed:,}' if all_zeroed else '-'):>16}{(f'{info.file_bytes:,}' if fits else 'out of reach'):>15}"
              f"{r['pruned']:>11,}{r['trials']:>8}{seconds:>9.1f}")


if __name__ == "__main__":
    main()
