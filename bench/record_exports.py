"""The records' export methods, re-implemented from ANCHOR.md for bench.export_methods (no record code): each maps
a state dict (golf's artifact names) and its GPTQ Hessians to (compressed bytes, decoded fp32 state).

R1147 (`2026-03-25_ValCalib_GPTQ_XSA_BigramHash3072`):
  - float tensors of <= 65,536 elements: fp16 (small_numel: a smaller model's own threshold, so that the methods
    quantize the same tensors); integer tensors as they are;
  - attention and MLP matrices: GPTQ int6 (act-order, blocks of 128, damping 0.01), the clip one of the
    quantiles (0.999, 0.9995, 0.9999, 0.99999, 1.0) per matrix, the one whose codes have the least plain MSE;
    scale = max(clip / 31, 1/31) in fp16 (the record's floor);
  - every other large tensor (embeddings, tables): int8 per row, clip at the 99.99984th percentile, scale
    max(clip / 127, 1/127) in fp16;
  - torch.save of the codes, scales and passthroughs, then LZMA preset 9.
R0611 (`2026-04-27_SP8192_LQER_SparseGate_BOSSmearFix_9HpStack_1.0611`, its run's settings):
  - the same passthroughs;
  - every large matrix through GPTQ on SDClip's scale k · std(row) / (2^(b−1) − 1): the tied embedding at int7
    with k 14 (its Hessian from the final norm's output), MLP k 11.5, attention k 13, anything else k 12.85, int6;
  - LQER: for the 3 GPTQ'd tensors of largest ‖W − Ŵ‖_F, E = W − Ŵ at rank 4 by SVD, A = U·S as int2 in
    [−2, 1] with one fp16 scale max|A| / 1.5, B = Vᵀ as int4 in [−8, 7] in groups of 64 (scale group max / 7.5);
    decoded Ŵ + A·B;
  - torch.save, then brotli quality 11. The record then coded its int8 groups with lrzip (ZPAQ), which this
    machine does not have; PR #1851's entry kept plain brotli, as here.
Tensors the records never had (golf's tiers: tier0.*, tier1.*, vocab.*) are stored as golf stores them
(golf.quant's schemes) in every method, inside the same blob, so that the methods differ only where the records'
own methods apply.
"""

from __future__ import annotations

import io
import lzma

import torch
from torch import Tensor

from bench.common import brotli
from golf import ops, quant

R1147_QUANTILES = (0.999, 0.9995, 0.9999, 0.99999, 1.0)
R1147_INT8_CLIP = 0.9999984
R0611_K = {"embed": 14.0, "mlp": 11.5, "attn": 13.0, "other": 12.85}
R0611_EMBED_BITS = 7
LQER_TOP, LQER_RANK, LQER_GROUP = 3, 4, 64


def _transformer_name(name: str) -> str | None:
    return name[len("transformer."):] if name.startswith("transformer.") else None


def _golf_part(state: dict[str, Tensor]) -> tuple[dict, dict]:
    """The tensors the records never had, encoded as golf encodes them."""
    rest = {n: t for n, t in state.items() if _transformer_name(n) is None}
    return quant.encode_state(rest, None, quant.QuantConfig())


def _blob(payload: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def _gptq(w: Tensor, H: Tensor, scale: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    return ops.gptq_quantize_scaled(w.float(), H.float(), scale[None], bits, 128, True, 0.01)


def _kind(name: str) -> str:
    if "tok_emb" in name or "lm_head" in name:
        return "embed"
    if ".mlp." in name or "recur_mlps." in name:
        return "mlp"
    return "attn" if ".attn." in name else "other"


def _encode(state, hessians, quantize_matrix, quantize_other, small_numel) -> tuple[dict, dict[str, Tensor]]:
    """(payload, decoded): every transformer tensor by the method's rules, the rest as golf stores it."""
    arrays, meta = _golf_part(state)
    payload = {"golf": {"arrays": {k: torch.from_numpy(v) for k, v in arrays.items()}, "meta": meta}, "w": {}}
    decoded = quant.decode_state(arrays, meta)
    for name, t in state.items():
        if _transformer_name(name) is None:
            continue
        if not t.is_floating_point() or t.numel() <= small_numel:
            payload["w"][name] = t.half() if t.is_floating_point() else t
            decoded[name] = t.half().float() if t.is_floating_point() else t
            continue
        stored, w_hat = quantize_matrix(name, t, hessians.get(name)) if t.dim() == 2 else (None, None)
        if stored is None:
            stored, w_hat = quantize_other(name, t)
        payload["w"].update(stored)
        decoded[name] = w_hat.reshape(t.shape)
    return payload, decoded


def r1147(state: dict[str, Tensor], hessians: dict[str, Tensor], small_numel: int = 65_536,
          floored: list | None = None) -> tuple[int, dict[str, Tensor]]:
    """floored: when a list, gets (rows whose chosen scale is the 1/31 floor, rows) of the GPTQ'd matrices."""
    def matrix(name, t, H):
        if _kind(name) not in ("attn", "mlp") or H is None:
            return None, None
        w = t.float()
        clip = ops.row_quantiles(w.abs(), torch.tensor(R1147_QUANTILES))
        live = w * (H.diagonal() != 0)  # the record measured the MSE against W with dead inputs zeroed
        best = None
        for c in clip:
            scale = (c / 31).clamp_min(1 / 31).half()
            q, s = _gptq(w, H, scale, 6)
            mse = float(((live - quant.dequantize(q, s)) ** 2).mean())
            if best is None or mse < best[0]:
                best = (mse, q, s)
        _, q, s = best
        if floored is not None:
            floored.append((int((s == torch.tensor(1 / 31).half()).sum()), s.numel()))
        return {f"{name}.q": q, f"{name}.scale": s}, quant.dequantize(q, s)

    def other(name, t):
        rows = t.float().reshape(t.shape[0], -1)
        clip = ops.row_quantiles(rows.abs(), torch.tensor([R1147_INT8_CLIP]))[0]
        scale = (clip / 127).clamp_min(1 / 127).half()
        q = torch.clamp(torch.round(torch.maximum(torch.minimum(rows, clip[:, None]), -clip[:, None])
                                    / scale.float()[:, None]), -127, 127).to(torch.int8)
        return {f"{name}.q": q, f"{name}.scale": scale}, quant.dequantize(q, scale)

    payload, decoded = _encode(state, hessians, matrix, other, small_numel)
    return len(lzma.compress(_blob(payload), preset=9)), decoded


def r0611(state: dict[str, Tensor], hessians: dict[str, Tensor], k_scale: float = 1.0, lqer: bool = True,
          small_numel: int = 65_536) -> tuple[int, dict[str, Tensor]]:
    """k_scale multiplies every k: the method's own size knob (bench.export_methods sweeps it)."""
    errors = {}

    def matrix(name, t, H):
        if H is None:
            return None, None
        kind = _kind(name)
        bits = R0611_EMBED_BITS if kind == "embed" else 6
        w = t.float()
        scale = quant.sdclip_scales(w, R0611_K[kind] * k_scale, bits)
        q, s = _gptq(w, H, scale, bits)
        w_hat = quant.dequantize(q, s)
        errors[name] = (w - w_hat, float((w - w_hat).norm()))
        return {f"{name}.q": q, f"{name}.scale": s}, w_hat

    def other(name, t):
        q, s = quant.quantize_rtn(t.float().reshape(t.shape[0], -1), 1.0, 8)
        return {f"{name}.q": q, f"{name}.scale": s}, quant.dequantize(q, s)

    payload, decoded = _encode(state, hessians, matrix, other, small_numel)
    if lqer:
        for name, (E, _) in sorted(errors.items(), key=lambda kv: -kv[1][1])[:LQER_TOP]:
            factors = quant.lqer_factors(E, LQER_RANK, LQER_GROUP)  # the same definition, golf.quant's
            if factors is None:
                continue  # the record's symmetric fallback never ran at its shapes
            payload["w"].update({f"{name}.lqer.{k}": v for k, v in zip("ABCD", factors)})
            decoded[name] = decoded[name] + quant.lqer_value(*factors).reshape(decoded[name].shape)
    if brotli is None:
        raise SystemExit("bench.export_methods: the R0611 method needs brotli (pip install brotli)")
    return len(brotli.compress(_blob(payload), quality=11)), decoded
