"""The artifact's coder and layout on whole containers: golf's default (raw LZMA2, no literal context, 1 MiB
dictionary, every matrix's codes first) against brotli 11 and zstd 22, each with the float arrays (fp16 scales,
fp32 tier-0 tables) as stored or split into byte planes ("shuffled": all first bytes, then all second bytes, ...),
or the codes grouped by role across layers and stored column-major (R0611's per-group layout, before its lrzip).

    python -m bench.coders [ARTIFACT ...] [--gaussian-h100x8] [--tokens 1024]

ARTIFACT: model.golf files of trained runs (their arrays as exported). --gaussian-h100x8: an h100x8-size tiered
model with N(0, 1/fan_in) matrices, GPTQ int6 with Hessians from --tokens training tokens (what tests/test_rate.py
exports). Sizes are of the compressed payload; seconds are one compression on this machine. brotli and zstd
rows need `pip install brotli zstandard` (the `bench` extra).
"""

from __future__ import annotations

import argparse
import re
import time

import numpy as np

from bench.common import brotli, zstandard
from golf import artifact, quant
from golf.codecs import compress, normalize_codec
from golf.config import TrainConfig


def payloads(arrays: dict, meta: dict) -> dict[str, bytes]:
    """The container's raw payload in golf's order, and with every float array split into byte planes."""
    ordered = quant.container_order(arrays, meta)
    plain = b"".join(np.ascontiguousarray(a).tobytes() for a in ordered.values())

    def planes(a: np.ndarray) -> bytes:
        a = np.ascontiguousarray(a)
        if a.dtype.kind != "f":
            return a.tobytes()
        return a.view(np.uint8).reshape(-1, a.dtype.itemsize).T.copy().tobytes()

    codes = {e["arrays"]["q"]: name for name, e in meta.items() if e.get("scheme") == "int6"
             and np.asarray(ordered[e["arrays"]["q"]]).ndim == 2}

    def role(key: str) -> tuple:  # R0611's groups: one role across layers (blocks.<i>. dropped), layer order
        layer = re.search(r"\.(\d+)\.", codes[key])
        return re.sub(r"\.\d+\.", ".", codes[key]), int(layer.group(1)) if layer else -1

    grouped = sorted(codes, key=role)
    by_role = b"".join(np.ascontiguousarray(np.asarray(ordered[k]).T).tobytes() for k in grouped) + b"".join(
        np.ascontiguousarray(a).tobytes() for k, a in ordered.items() if k not in codes)
    return {"as stored": plain, "floats shuffled": b"".join(planes(a) for a in ordered.values()),
            "codes by role, column-major": by_role}


def codecs() -> dict[str, dict]:
    out = {"golf default (lzma2 lc0, 1 MiB)": normalize_codec(TrainConfig().artifact_codec)}
    if brotli is not None:
        out["brotli 11 (window 24)"] = normalize_codec({"name": "brotli", "quality": 11, "lgwin": 24})
    if zstandard is not None:
        out["zstd 22"] = normalize_codec({"name": "zstd", "level": 22})
    return out


def gaussian_h100x8(tokens: int):
    import torch

    from bench.common import DEFAULT_DATA, DEFAULT_TOKENIZER
    from golf.config import resolve_config
    from golf.data import find_shards, load_shard, load_tokenizer
    from golf.export import model_state
    from golf.model import TieredLM, Transformer
    from golf.tiers import TierConfig, Vocab, fit_tiers

    cfg = resolve_config(["--preset", "h100x8"], env={})
    vocab = Vocab.from_tokenizer(load_tokenizer(DEFAULT_TOKENIZER))
    train = torch.from_numpy(np.asarray(load_shard(find_shards(DEFAULT_DATA, "train")[0])).astype(np.int64))
    torch.manual_seed(0)
    transformer = Transformer(cfg.model_config(vocab.vocab_size, vocab.bos_id))
    with torch.no_grad():
        for p in transformer.parameters():
            if p.dim() == 2:
                p.normal_(std=p.shape[1] ** -0.5)
    tiers = fit_tiers(train, vocab, TierConfig(**vars(cfg.tiers)))
    lm = TieredLM(transformer, tiers.prior_tables(), trainable=False)
    hessians = {f"transformer.{k}": v for k, v in
                quant.collect_hessians(lm.transformer, [train[:tokens].reshape(-1, min(tokens, 512))]).items()}
    return quant.encode_state(model_state(lm, tiers), hessians, cfg.quant)


def report(name: str, arrays: dict, meta: dict) -> None:
    blobs = payloads(arrays, meta)
    print(f"\n[{name}] {len(blobs['as stored']):,} raw bytes in {len(arrays)} arrays")
    print(f"{'coder':<34}{'layout':<30}{'bytes':>13}{'vs default':>12}{'seconds':>9}")
    rows = []
    for cname, codec in codecs().items():
        for layout, raw in blobs.items():
            t0 = time.perf_counter()
            size = len(compress(raw, codec))
            rows.append((cname, layout, size, time.perf_counter() - t0))
    base = rows[0][2]
    for cname, layout, size, secs in rows:
        print(f"{cname:<34}{layout:<30}{size:>13,}{size / base - 1:>+11.2%}{secs:>9.1f}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artifacts", nargs="*")
    p.add_argument("--gaussian-h100x8", action="store_true")
    p.add_argument("--tokens", type=int, default=1024)
    args = p.parse_args()
    for missing, mod in (("brotli", brotli), ("zstandard", zstandard)):
        if mod is None:
            print(f"{missing} is not installed: its rows are skipped (pip install {missing})")
    for path in args.artifacts:
        art = artifact.load(path)
        report(path, art.arrays, art.config["state"])
    if args.gaussian_h100x8:
        report("h100x8, Gaussian matrices, GPTQ int6", *gaussian_h100x8(args.tokens))


if __name__ == "__main__":
    main()
