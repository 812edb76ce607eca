"""GPTQ int6 over the matrices of an h100x8-size transformer: the C++ op vs the PyTorch reference (and RTN),
plus the quality of each clip-selection rule.

    python -m bench.gptq [--weights student_t|orthogonal] [--tokens 4096] [--repeats 3] [--ref-repeats 1]

The model is golf.config.PRESETS["h100x8"]["model"] at vocab 1024 (11 layers, d 512, 66 int6 matrices). Its
weights are synthetic: `student_t` (default) draws every matrix from a Student-t with 5 degrees of freedom scaled
to std 1/sqrt(in) (heavier tails than a Gaussian, like trained matrices; O and MLP proj included, which start at
zero in a real init); `orthogonal` keeps the real init for Q, K, V, fc and uses the same Student-t for O and proj.
Hessians come from real val tokens through golf.quant.collect_hessians (Q/K/V share theirs).
Seconds are for all 66 matrices, on CPU, median of --repeats.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from bench.common import DEFAULT_DATA, median_seconds
from golf import ops, quant
from golf.config import PRESETS
from golf.data import load_shard
from golf.model import CastedLinear, ModelConfig, Transformer



def h100x8_model(weights: str = "student_t", seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(vocab_size=1024, **PRESETS["h100x8"]["model"]))
    t = torch.distributions.StudentT(5.0)
    t_std = (5.0 / 3.0) ** 0.5
    for name, m in model.named_modules():
        if isinstance(m, CastedLinear) and m.weight.numel() > quant.SMALL_NUMEL:
            if weights == "student_t" or name.endswith((".o", ".proj")):
                m.weight.data = t.sample(m.weight.shape) / t_std / m.weight.shape[1] ** 0.5
    return model


def int6_matrices(model: Transformer, tokens: int, data: str) -> tuple[dict, dict, float]:
    """{name: W} of the int6 scheme, {name: H} from `tokens` real val tokens, and the Hessian seconds."""
    val = np.asarray(load_shard(os.path.join(data, "fineweb_val_000000.bin"))[:tokens]).astype(np.int64)
    seq = min(2048, tokens)
    batches = [torch.from_numpy(val[i:i + seq]).view(1, -1) for i in range(0, tokens - seq + 1, seq)]
    t0 = time.perf_counter()
    hessians = quant.collect_hessians(model, batches)
    seconds = time.perf_counter() - t0
    state = model.state_dict()
    weights = {n: state[n] for n in hessians if quant.scheme_for(n, state[n]) == "int6"}
    return weights, {n: hessians[n] for n in weights}, seconds



def records_selection(w, H, cands):
    """The records' rule: full GPTQ per candidate, one candidate per matrix by unweighted ||W - Q s||^2."""
    best = None
    for c in cands:
        q, s = quant.gptq(w, H, clip_candidates=[c])
        mse = float((w - quant.dequantize(q, s)).square().sum())
        if best is None or mse < best[0]:
            best = (mse, q, s)
    return best[1], best[2]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--weights", choices=["student_t", "orthogonal"], default="student_t")
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ref-repeats", type=int, default=1)
    args = p.parse_args()

    model = h100x8_model(args.weights)
    W, H, h_s = int6_matrices(model, args.tokens, args.data)
    n_w = sum(w.numel() for w in W.values())
    print(f"h100x8 model (vocab 1024), {len(W)} int6 matrices, {n_w:,} weights, {args.weights} weights; "
          f"Hessians from {args.tokens:,} real val tokens in {h_s:.2f} s; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    cands = torch.tensor(quant.DEFAULT_CLIP_CANDIDATES)

    def run_cpp():
        return {n: torch.ops.golf.gptq_quantize(w, H[n], 6, 128, True, 0.01, cands) for n, w in W.items()}

    def run_ref():
        return {n: ops.ref_gptq_quantize(w, H[n], 6, 128, True, 0.01, cands) for n, w in W.items()}

    def run_rtn():
        return {n: quant.quantize_rtn(w) for n, w in W.items()}

    out_cpp = run_cpp()
    rows = [("GPTQ, golf C++ op", median_seconds(run_cpp, args.repeats, warmup=False), args.repeats)]
    out_ref = {}
    rows.append(("GPTQ, PyTorch reference", median_seconds(lambda: out_ref.update(run_ref()), args.ref_repeats, warmup=False),
                 args.ref_repeats))
    rows.append(("RTN (row max)", median_seconds(run_rtn, args.repeats, warmup=False), args.repeats))
    ref_s = rows[1][1]
    print(f"\n{'impl':<26}{'seconds':>10}{'ms/matrix':>12}{'vs reference':>14}{'runs':>6}")
    for name, s, r in rows:
        print(f"{name:<26}{s:>10.2f}{s / len(W) * 1e3:>12.1f}{ref_s / s:>13.2f}x{r:>6}")
    diff = sum(int((out_cpp[n][0] != out_ref[n][0]).sum()) for n in W)
    print(f"C++ vs reference: {diff} of {n_w:,} codes differ")

    rtn = run_rtn()
    rec = {n: records_selection(w, H[n], quant.DEFAULT_CLIP_CANDIDATES) for n, w in W.items()}

    def total(qs):
        return sum(quant.weighted_error(w, quant.dequantize(*qs[n]), H[n]) for n, w in W.items())

    def mse(qs):
        return sum(float((w - quant.dequantize(*qs[n])).square().sum()) for n, w in W.items()) / n_w

    base = total(rtn)
    print(f"\n{'rule':<58}{'weighted err vs RTN':>20}{'plain MSE':>12}")
    for name, qs in (("RTN, row max", rtn),
                     ("GPTQ, records: one clip per matrix by unweighted MSE", rec),
                     ("GPTQ, golf: clip per row by GPTQ loss (H-weighted)", out_cpp)):
        print(f"{name:<58}{total(qs) / base:>20.4f}{mse(qs):>12.3e}")


if __name__ == "__main__":
    main()
