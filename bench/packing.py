"""Compressed size of the int6 matrices of an h100x8-size model: storage layout x entropy coder.

    python -m bench.packing [--weights student_t|orthogonal] [--tokens 4096] [--procs 2]

The codes are GPTQ int6 (golf C++ op, 5 clip candidates) of the 66 matrices built by bench/gptq.py (synthetic
weights, Hessians from real val tokens; see there). Layouts: int8 per value row-major (the records'), int8
column-major, true 6-bit packing (golf.ops.pack_int6, 4 values in 3 bytes), and the packed bytes split into
their 3 byte planes. Coders: xz/LZMA preset 9|extreme; raw LZMA2 (preset 9|extreme) with lc=0 lp=0 pb=0 (no
literal context: the codes are close to independent); a delta filter before that; brotli quality 11 (window 24);
zstd level 22 — the last two only when the module is installed (pip install brotli zstandard, or the `bench`
extra). "records" is the records' own path: torch.save of the int8 tensors, then LZMA preset 9.
Sizes exclude the fp16 scales (identical in every layout). The order-0 entropy of the codes (per matrix, summed)
is the size an ideal coder of independent symbols would reach.
"""

from __future__ import annotations

import argparse
import io
import lzma
import multiprocessing as mp
import time

import numpy as np
import torch

from bench.common import DEFAULT_DATA, brotli, zstandard
from bench.gptq import h100x8_model, int6_matrices
from golf import ops, quant


XZ9E = 9 | lzma.PRESET_EXTREME
LZMA2_LC0 = [{"id": lzma.FILTER_LZMA2, "preset": XZ9E, "lc": 0, "lp": 0, "pb": 0}]
DELTA_LZMA2_LC0 = [{"id": lzma.FILTER_DELTA, "dist": 1}] + LZMA2_LC0


def compress(codec: str, data: bytes) -> int:
    if codec == "xz 9e":
        return len(lzma.compress(data, preset=XZ9E))
    if codec == "lzma2 lc0 lp0 pb0":
        return len(lzma.compress(data, format=lzma.FORMAT_RAW, filters=LZMA2_LC0))
    if codec == "delta + lzma2 lc0":
        return len(lzma.compress(data, format=lzma.FORMAT_RAW, filters=DELTA_LZMA2_LC0))
    if codec == "brotli 11":
        return len(brotli.compress(data, quality=11, lgwin=24))
    if codec == "zstd 22":
        return len(zstandard.ZstdCompressor(level=22).compress(data))
    if codec == "xz 9":
        return len(lzma.compress(data, preset=9))
    raise ValueError(codec)


_BLOBS: dict[str, bytes] = {}


def _job(item):
    layout, codec = item
    t0 = time.perf_counter()
    return layout, codec, compress(codec, _BLOBS[layout]), time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--weights", choices=["student_t", "orthogonal"], default="student_t")
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--procs", type=int, default=2)
    args = p.parse_args()

    model = h100x8_model(args.weights)
    W, H, _ = int6_matrices(model, args.tokens, args.data)
    codes = {n: quant.gptq(w, H[n])[0] for n, w in W.items()}
    n = sum(q.numel() for q in codes.values())
    entropy_bits = 0.0
    for q in codes.values():
        counts = np.bincount(q.numpy().reshape(-1).astype(np.int64) + 31, minlength=63)
        pr = counts[counts > 0] / q.numel()
        entropy_bits += float(-(pr * np.log2(pr)).sum()) * q.numel()

    packed = [ops.pack_int6(q).numpy() for q in codes.values()]
    _BLOBS.update({
        "int8 row-major": b"".join(q.numpy().tobytes() for q in codes.values()),
        "int8 column-major": b"".join(q.t().contiguous().numpy().tobytes() for q in codes.values()),
        "packed 6-bit": b"".join(b.tobytes() for b in packed),
        "packed, 3 byte planes": b"".join(np.concatenate([b.reshape(-1, 3)[:, k] for b in packed]).tobytes()
                                          for k in range(3)),
    })
    buf = io.BytesIO()
    torch.save({name: q for name, q in codes.items()}, buf)
    _BLOBS["records: torch.save"] = buf.getvalue()

    have = ["xz 9e", "lzma2 lc0 lp0 pb0"] + (["brotli 11"] if brotli else []) + (["zstd 22"] if zstandard else [])
    jobs = [("int8 row-major", c) for c in have + ["delta + lzma2 lc0"]]
    jobs += [("int8 column-major", c) for c in ("xz 9e", "lzma2 lc0 lp0 pb0")]
    jobs += [("packed 6-bit", c) for c in have]
    jobs += [("packed, 3 byte planes", c) for c in ("xz 9e", "lzma2 lc0 lp0 pb0")]
    jobs += [("records: torch.save", "xz 9")]
    print(f"{len(codes)} int6 matrices (GPTQ, {args.weights} weights), {n:,} codes; order-0 entropy "
          f"{entropy_bits / n:.4f} bits/weight = {entropy_bits / 8:,.0f} bytes; {args.procs} processes")
    for missing, mod in (("brotli", brotli), ("zstandard", zstandard)):
        if mod is None:
            print(f"{missing} is not installed: its rows are skipped (pip install {missing})")
    with mp.get_context("fork").Pool(args.procs) as pool:
        results = pool.map(_job, jobs, chunksize=1)
    print(f"\n{'layout':<24}{'coder':<22}{'bytes':>12}{'bits/weight':>13}{'vs records':>12}{'seconds':>9}")
    records = next(b for layout, _, b, _ in results if layout.startswith("records"))
    for layout, codec, size, secs in sorted(results, key=lambda r: r[2]):
        print(f"{layout:<24}{codec:<22}{size:>12,}{8 * size / n:>13.4f}{size / records:>11.4f}x{secs:>9.1f}")
    best = min(results, key=lambda r: r[2])
    print(f"\nsmallest: {best[0]} + {best[1]}, {best[2]:,} bytes ({records - best[2]:+,} vs the records' way)")
    for layout in ("int8 row-major", "packed 6-bit"):
        size = min(r[2] for r in results if r[0] == layout and r[1].startswith(("xz", "lzma2")))
        print(f"best LZMA for {layout}: {size:,} bytes")

    # int8_row clip: the row max against the baseline's 99.99984th percentile, on the tied embedding (real
    # init, N(0, 0.005)) and on the Student-t matrices.
    emb = model.tok_emb.weight.detach()
    for name, w in (("tok_emb (init)", emb), ("int6 matrices (as int8)", torch.cat([w for w in W.values()
                                                                                  if w.shape[1] == 512]))):
        errs = [float((w - quant.dequantize(*quant.quantize_rtn(w, clip, bits=8))).square().mean())
                for clip in (1.0, 0.9999984)]
        print(f"int8_row clip on {name}: MSE row max {errs[0]:.4e}, p99.99984 {errs[1]:.4e}")


if __name__ == "__main__":
    main()
