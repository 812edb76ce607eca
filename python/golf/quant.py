"""Quantisation for the artifact: GPTQ (clip search or SDClip), round-to-nearest (RTN), int8 rows, LQER, late-QAT
fake quantisation, and the encoding of a state dict into flat arrays + metadata for the artifact container.

Grids
-----
Every quantized matrix is per row: ``w ≈ q · scale[:, None]`` with ``q`` int8 and ``scale`` fp16 [rows].
``scale = max(clip / qmax, 2^-14)`` rounded to fp16, ``clip`` = a quantile of the row's |w| (1.0 = row max),
or SDClip's ``k · std(row)``; ``q = clamp(round(w / scale), −qmax, qmax)`` with the fp16-rounded scale, so what
is stored is exactly what was rounded to. ``qmax = 2^(bits−1) − 1``: 31 for int6 (63 levels, like the records),
127 for int8.

Schemes (one per tensor: ``tensor_scheme``; a handler each in ``HANDLERS``)
--------------------------------------------------------------------------
A scheme's handler says what it can store at which widths (``options``: golf.rate's choices, each with its error
and proxy bytes), what it stores without rate control (``default``), and how (``encode`` / ``decode``); rate
control asks it once per tensor, and ``encode_state`` stores the Option it chose. A new scheme is one handler.

``int6``      2-D float weights with > 65,536 elements that are not embeddings or prior tables (Q, K, V, O,
              MLP fc/proj, an untied head), and with ``QuantConfig.embed_gptq`` the tied embedding (its Hessian
              is the head's). GPTQ (``gptq``: act-order, blocks of 128, damping 0.01·mean diag H) when a Hessian
              for the name is given, else RTN at ``QuantConfig.rtn_clip`` (default 1.0 = row max: the same grid
              as ``fake_quant_int6``, so a QAT-trained model exports onto the grid it trained on). GPTQ's clip:
              ``clip="search"``, the records' 5 quantiles, chosen per row by GPTQ's own Hessian-weighted loss (the
              records chose one per matrix by unweighted MSE; bench/gptq.py compares), or ``clip="sdclip"``,
              ``sdclip_scales`` (PR #1394; Hessian-aware with ``sdclip_lambda``, PR #1412) with k by group
              (``sdclip_group``: attention, MLP, embedding). Width: ``bits`` (``embed_bits`` for the embedding).
              LQER (``lqer_rank`` > 0, R0611): the ``lqer_top`` matrices of largest ‖W − Ŵ‖_F also store a rank-r
              correction of their error, ``lqer_factors`` (A int2, B int4 in groups), decoded Ŵ + A·B. Arrays
              ``<name>.q`` (int8 [rows, cols] or, with ``int6_layout="packed"``, uint8 4-values-per-3-bytes from
              ``golf.ops.pack_int6``), ``<name>.scale`` (fp16 [rows]) and, with LQER, ``<name>.lqer_a``,
              ``.lqer_a_scale``, ``.lqer_b``, ``.lqer_b_scale``. ``int6_layout="auto"`` is int8: bench/packing.py
              measured it 10% smaller under LZMA than true 6-bit packing, which splits codes across byte
              boundaries and hides their statistics from a byte-wise coder (bench/RESULTS.md, "Quantisation").
``int8_row``  embeddings and prior tables: names containing ``tok_emb``, ``bigram.table``, ``tier1.`` or
              ``prior_tables`` (and any other float tensor of > 2 dims above 65,536 elements), as
              ``[shape[0], -1]`` rows. int8 in [−127, 127] (``QuantConfig.table_bits``, or the width golf.rate
              chose: qmax = 2^(bits−1) − 1, ``bits`` in the meta) with fp16 per-row scales, clip = row max
              (``QuantConfig.int8_clip``; the baseline's 99.99984th percentile gave an MSE within 0.05% of the
              row max's in bench/packing.py: on 512-wide rows it is the max in all but name).
``fp16``      float tensors with ≤ 65,536 elements (gains, scales, mixes, the bigram projection, ...).
``fp32``      kept exactly: names starting with ``tier0.`` (tier 0's log-probabilities, a few kilobytes).
``raw``       integer and bool tensors (class maps, ...), stored in their own dtype.
``meta[name]`` = ``{"scheme", "shape", "dtype", "arrays": {role: array name}}`` plus ``bits`` (int6, int8_row),
``method`` (gptq/gptq-sdclip/rtn), ``layout`` (int8/packed), ``clip`` (SDClip's k) and ``lqer_rank`` for int6. A
tensor is at its default width unless golf.rate gave it another (``QuantConfig.rate_bits``) to fit the artifact
into its byte budget. ``decode_state(*encode_state(s, h, cfg))`` gives fp32 tensors (integer ones in their dtype)
equal to ``option_value`` of each stored Option, bit for bit.

Hessians
--------
``collect_hessians(model, batches)`` hooks the input of every ``CastedLinear`` and the final norm's output (the
head's input: tok_emb's Hessian when tied, else the head's): H = Σ xᵀx / (rows seen) in fp32 through
``golf.ops.hessian_accumulate``. Q, K and V read the same tensor, so they get one shared H (the same
tensor object; treat it as read-only); O sees the post-XSA head outputs and MLP proj the post-activation hidden,
because those are their inputs. Damping is not applied here: ``gptq`` adds ``damp · mean(diag H)`` once.

Selective +-1 pruning
---------------------
``pm1_candidates(arrays, meta)``: every int6 value at +-1 of an encoded state, ordered by cost = scale[row]^2
(the squared error zeroing it adds), cheapest first. ``zero_pm1(arrays, meta, cands, n)`` zeroes the n cheapest;
zeros compress better than +-1s, and golf.export searches the smallest n that brings the artifact under the cap.

Late QAT
--------
``fake_quant_int6(w)``: forward value = the int6 RTN grid above (row max, fp16 scale, [−31, 31]), gradient =
identity (straight-through). ``prepare_qat(model)`` gives every large ``CastedLinear`` a tensor switch (a
non-persistent buffer, 0 = off) and ``set_qat(model, True)`` writes 1 into it. The switch is data, not a Python
attribute, so a compiled forward reads its current value on every call: no recompilation, and no constant-folded
flag (the records' class-attribute switch was frozen by torch.compile and QAT silently never ran).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch
from torch import Tensor, nn

from golf import ops
from golf.errors import ArtifactError, ConfigError
from golf.model import CastedLinear

QMAX = 31
INT8_QMAX = 127
SMALL_NUMEL = 65_536
DEFAULT_CLIP_CANDIDATES = (0.999, 0.9995, 0.9999, 0.99999, 1.0)
EMBEDDING_PATTERNS = ("tok_emb", "bigram.table", "tier1.", "prior_tables")
FP32_PATTERNS = ("tier0.",)
SCHEMES = ("int6", "int8_row", "fp16", "fp32", "raw")
INT6_LAYOUTS = ("auto", "packed", "int8")
CLIP_MODES = ("search", "sdclip")
LQER_ROLES = ("lqer_a", "lqer_a_scale", "lqer_b", "lqer_b_scale")
INT6_AUTO_LAYOUT = "int8"  # measured smaller under LZMA than packed (bench/packing.py, bench/RESULTS.md)


@dataclass
class QuantConfig:
    bits: int = 6                         # int6 scheme: qmax = 2^(bits-1) - 1
    block: int = 128                      # GPTQ columns per lazy-update block
    act_order: bool = True                # GPTQ columns in order of diag(H), largest first
    damp: float = 0.01                    # GPTQ damping, times mean(diag H)
    clip_candidates: tuple[float, ...] = DEFAULT_CLIP_CANDIDATES  # GPTQ per-row clip quantiles (1.0 = max)
    rtn_clip: float = 1.0                 # int6 without a Hessian: clip quantile (1.0 = the QAT grid)
    int8_clip: float = 1.0                # int8_row clip quantile
    int6_layout: str = "auto"             # auto (= INT6_AUTO_LAYOUT) | packed | int8
    small_numel: int = SMALL_NUMEL        # float tensors up to this many elements stay fp16
    schemes: dict[str, str] = field(default_factory=dict)  # explicit scheme per tensor name (over scheme_for)
    table_bits: int = 8                   # int8_row scheme: the width of embeddings and prior tables (qmax 127 at 8)
    rate_bits: tuple[int, ...] = (4, 5, 6, 7, 8)  # widths golf.rate may give a matrix or a table to fit the cap
    fill_budget: bool = False             # golf.rate: spend the bytes left under the cap on wider codes
    clip: str = "search"                  # GPTQ's clip: search (clip_candidates, per row) | sdclip (k · std(row))
    sdclip_attn: float = 13.0             # SDClip k of attention and other matrices (R0611)
    sdclip_mlp: float = 11.5              # SDClip k of MLP matrices (R0611)
    sdclip_embed: float = 14.0            # SDClip k of a GPTQ'd embedding or untied head (R0611, at int7)
    sdclip_lambda: float = 0.0            # PR #1412's Hessian-aware SDClip (0.175 there; 0 = plain SDClip)
    sdclip_k_steps: tuple[float, ...] = (1.0,)  # golf.rate: k multipliers a tensor may take beside its width
    embed_gptq: bool = False              # the tied embedding through GPTQ (the head's Hessian), scheme int6
    embed_bits: int = 7                   # its width then (R0611: int7)
    lqer_rank: int = 0                    # LQER (R0611: 4): a rank-r correction of the quantisation error; 0 = off
    lqer_top: int = 3                     # ... offered to the tensors of largest ‖W − Ŵ‖ (R0611: 3)
    lqer_group: int = 64                  # ... B's int4 scale groups (R0611: 64)

    def __post_init__(self):
        def need(ok: bool, name: str, expected: str):
            if not ok:
                raise ConfigError(f"QuantConfig.{name}: expected {expected}, found {getattr(self, name)!r}")

        need(isinstance(self.bits, int) and 2 <= self.bits <= 8, "bits", "an int in [2, 8]")
        need(isinstance(self.block, int) and self.block >= 1, "block", "an int >= 1")
        need(isinstance(self.damp, (int, float)) and 0 <= self.damp < float("inf"), "damp", "a finite float >= 0")
        need(_numbers(self.clip_candidates), "clip_candidates", "a non-empty sequence of quantiles in (0, 1]")
        self.clip_candidates = tuple(float(c) for c in self.clip_candidates)
        need(len(self.clip_candidates) > 0 and all(0 < c <= 1 for c in self.clip_candidates), "clip_candidates",
             "a non-empty sequence of quantiles in (0, 1]")
        need(0 < self.rtn_clip <= 1, "rtn_clip", "a quantile in (0, 1]")
        need(0 < self.int8_clip <= 1, "int8_clip", "a quantile in (0, 1]")
        need(self.int6_layout in INT6_LAYOUTS, "int6_layout", f"one of {INT6_LAYOUTS}")
        need(self.layout == "int8" or self.bits <= 6, "int6_layout", f"'int8' or 'auto' when bits={self.bits} > 6")
        need(isinstance(self.small_numel, int) and self.small_numel >= 0, "small_numel", "an int >= 0")
        need(isinstance(self.schemes, dict), "schemes", "a dict {tensor name: scheme}")
        bad = {k: v for k, v in self.schemes.items() if v not in SCHEMES}
        need(not bad, "schemes", f"values in {SCHEMES} (bad: {bad})")
        need(isinstance(self.table_bits, int) and 2 <= self.table_bits <= 8, "table_bits", "an int in [2, 8]")
        need(_numbers(self.rate_bits, whole=True), "rate_bits", f"a sequence of widths in [2, 8] that includes "
                                                                 f"bits={self.bits}")
        self.rate_bits = tuple(int(b) for b in self.rate_bits)
        need(all(2 <= b <= 8 for b in self.rate_bits) and self.bits in self.rate_bits, "rate_bits",
             f"widths in [2, 8] that include bits={self.bits}")
        need(self.clip in CLIP_MODES, "clip", f"one of {CLIP_MODES}")
        for k in ("sdclip_attn", "sdclip_mlp", "sdclip_embed"):
            need(isinstance(getattr(self, k), (int, float)) and 0 < getattr(self, k) < float("inf"), k,
                 "a finite float > 0 (the clip in row standard deviations)")
        need(isinstance(self.sdclip_lambda, (int, float)) and 0 <= self.sdclip_lambda <= 1, "sdclip_lambda",
             "a float in [0, 1]")
        need(_numbers(self.sdclip_k_steps) and len(self.sdclip_k_steps) > 0 and 1.0 in self.sdclip_k_steps
             and all(0 < k < float("inf") for k in self.sdclip_k_steps), "sdclip_k_steps",
             "a sequence of k multipliers > 0 that includes 1.0")
        self.sdclip_k_steps = tuple(float(k) for k in self.sdclip_k_steps)
        need(isinstance(self.embed_gptq, bool), "embed_gptq", "true or false")
        need(isinstance(self.embed_bits, int) and 2 <= self.embed_bits <= 8, "embed_bits", "an int in [2, 8]")
        need(isinstance(self.lqer_rank, int) and self.lqer_rank >= 0, "lqer_rank", "an int >= 0 (0 = off)")
        need(isinstance(self.lqer_top, int) and self.lqer_top >= 1, "lqer_top", "an int >= 1")
        need(isinstance(self.lqer_group, int) and self.lqer_group >= 1, "lqer_group", "an int >= 1")

    @property
    def layout(self) -> str:
        return INT6_AUTO_LAYOUT if self.int6_layout == "auto" else self.int6_layout

    def sdclip_k(self, name: str) -> float:
        """SDClip's k for a tensor, by its group (sdclip_group)."""
        return {"attn": self.sdclip_attn, "mlp": self.sdclip_mlp, "embed": self.sdclip_embed}[sdclip_group(name)]


def _numbers(values, whole: bool = False) -> bool:
    """values is a list or tuple of numbers (whole numbers if `whole`), as QuantConfig's sequence fields need:
    a string or a number there comes from a bad --set or config file and must not reach int() or float()."""
    return isinstance(values, (list, tuple)) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and (not whole or float(v).is_integer())
        for v in values)


# ---------------------------------------------------------------------------------------------------- grids

def row_scale(w: Tensor, qmax: int, clip: float = 1.0) -> Tensor:
    """fp16 [rows]: max(quantile_clip(|w_row|) / qmax, 2^-14) per row of a 2-D w; clip 1.0 is the row max."""
    a = w.detach().float().abs()
    c = a.amax(dim=1) if clip >= 1.0 else ops.row_quantiles(a, torch.tensor([clip]))[0]
    return (c / qmax).clamp_min(ops.GPTQ_SCALE_FLOOR).half()


def quantize_rtn(w: Tensor, clip: float = 1.0, bits: int = 6) -> tuple[Tensor, Tensor]:
    """Round-to-nearest per row: (q int8 [rows, cols] in [−qmax, qmax], scale fp16 [rows])."""
    if w.dim() != 2:
        raise ValueError(f"quantize_rtn: w must be 2-D [rows, cols], found shape {tuple(w.shape)}")
    qmax = 2 ** (bits - 1) - 1
    scale = row_scale(w, qmax, clip)
    q = torch.clamp(torch.round(w.detach().float() / scale.float()[:, None]), -qmax, qmax)
    return q.to(torch.int8), scale


def dequantize(q: Tensor, scale: Tensor) -> Tensor:
    """fp32 [rows, cols] = q · scale[:, None]."""
    return q.float() * scale.float()[:, None]


def gptq(w: Tensor, H: Tensor, *, bits: int = 6, block: int = 128, act_order: bool = True, damp: float = 0.01,
         clip_candidates: Iterable[float] = DEFAULT_CLIP_CANDIDATES) -> tuple[Tensor, Tensor]:
    """Full-Hessian GPTQ of a 2-D weight (golf.ops.gptq_quantize): (q int8 [rows, cols], scale fp16 [rows]) on w's
    device, computed where H lives (the CUDA kernel when the Hessians were collected on a GPU)."""
    cands = torch.tensor(list(clip_candidates), dtype=torch.float32)
    q, scale = ops.gptq_quantize(w.detach().to(H.device), H.float(), bits, block, act_order, damp, cands)
    return q.to(w.device), scale.to(w.device)


def weighted_error(w: Tensor, w_hat: Tensor, H: Tensor) -> float:
    """tr((w − ŵ) H (w − ŵ)ᵀ): the summed squared output error of the layer on the calibration inputs (× rows)."""
    e = (w.float() - w_hat.float()).to(H.device)
    return float(((e @ H.float()) * e).sum())


# ---------------------------------------------------------------------------------------------------- Hessians

def collect_hessians(model: nn.Module, batches: Iterable[Tensor]) -> dict[str, Tensor]:
    """{"<module>.weight": H} for every CastedLinear of a Transformer (or a TieredLM, through its .transformer),
    and for the head (tok_emb when tied: its input is the final norm's output, as PR #1412 and R0611 collect it):
    H = Σ xᵀx / rows over the layer's inputs while the model reads `batches` (int64 token tensors [B, T]).
    Names follow `model`'s own state dict. Pass the plain module (a torch.compile wrapper is unwrapped here; the
    compiled graph would not call the hooks)."""
    model = getattr(model, "_orig_mod", model)
    net = getattr(model, "transformer", model)
    device = next(model.parameters()).device
    sums: dict[str, Tensor] = {}
    rows: dict[str, int] = {}
    shared: dict[str, str] = {}
    last: dict[str, object] = {"x": None, "name": None}

    def hook_for(name: str):
        def hook(module, args):
            x = args[0]
            if x is last["x"]:  # q, k, v read one tensor: one Hessian for the three
                shared[name] = last["name"]
                return
            last["x"], last["name"] = x, name
            if name not in sums:
                sums[name] = torch.zeros(x.shape[-1], x.shape[-1], dtype=torch.float32, device=x.device)
                rows[name] = 0
            ops.hessian_accumulate(sums[name], x.detach())
            rows[name] += x.numel() // x.shape[-1]
        return hook

    handles = [m.register_forward_pre_hook(hook_for(name)) for name, m in model.named_modules()
               if isinstance(m, CastedLinear)]
    if hasattr(net, "final_norm"):  # the head (tok_emb when tied) reads the final norm's output through F.linear
        head = next(name.removesuffix("final_norm") + ("tok_emb" if net.head is None else "head")
                    for name, m in model.named_modules() if m is net.final_norm)
        head_hook = hook_for(head)
        handles.append(net.final_norm.register_forward_hook(lambda module, args, out: head_hook(module, (out,))))
    try:
        with torch.no_grad():
            for ids in batches:
                net(ids.to(device))
                last["x"] = None  # never match across forwards
    finally:
        for h in handles:
            h.remove()
    out = {f"{name}.weight": H / max(rows[name], 1) for name, H in sums.items()}
    for name, owner in shared.items():
        out[f"{name}.weight"] = out[f"{owner}.weight"]
    return out


# ---------------------------------------------------------------------------------------------------- late QAT

def fp16_grid(x: Tensor) -> Tensor:
    """fp32 x rounded to the nearest fp16 value (ties to even), for x in fp16's normal range, with integer ops.

    Equal to x.half().float() there, but torch.compile (inductor) drops a float->half->float round trip as a
    no-op, which put compiled QAT on a different grid than the export; bit operations it keeps."""
    i = x.contiguous().view(torch.int32)
    i = (i + 0x0FFF + ((i >> 13) & 1)) & ~0x1FFF  # 23 -> 10 mantissa bits, round half to even
    return i.view(torch.float32)


def _int6_rtn_value(w: Tensor) -> Tensor:
    """The int6 RTN grid value of w (row max clip, fp16 scale), no gradient: callers add it as a detached delta."""
    w = w.detach()
    s = fp16_grid((w.float().abs().amax(dim=-1, keepdim=True) / QMAX).clamp_min(ops.GPTQ_SCALE_FLOOR))
    return (torch.clamp(torch.round(w.float() / s), -QMAX, QMAX) * s).to(w.dtype)


def fake_quant_int6(w: Tensor) -> Tensor:
    """Forward: w on the int6 export grid (== dequantize(*quantize_rtn(w))); backward: identity (STE)."""
    return w + (_int6_rtn_value(w) - w).detach()


class QATLinear(CastedLinear):
    """A CastedLinear whose weight goes through fake_quant_int6 while its `qat` buffer holds 1 (0: plain float).

    `w + qat * (grid(w) − w).detach()`: with qat = 1 that is fake_quant_int6(w) exactly, with qat = 0 it is w
    exactly, and the gradient reaches the float weight either way."""

    def weight_as(self, dtype: torch.dtype) -> Tensor:
        w = self.weight
        return (w + self.qat * (_int6_rtn_value(w) - w).detach()).to(dtype)


def prepare_qat(model: nn.Module, min_numel: int = SMALL_NUMEL) -> list[str]:
    """Turn every CastedLinear with more than `min_numel` weights (the int6 matrices) into a QATLinear with QAT
    off. Call before torch.compile and before wrapping in DDP; the state dict does not change. Returns the names."""
    names = []
    for name, m in model.named_modules():
        if type(m) is CastedLinear and m.weight.numel() > min_numel:
            m.__class__ = QATLinear
            m.register_buffer("qat", torch.zeros((), device=m.weight.device), persistent=False)
            names.append(name)
    return names


def set_qat(model: nn.Module, enabled: bool) -> int:
    """Switch fake quantisation on or off in every QATLinear (an in-place tensor write, seen by compiled graphs).
    Returns how many layers were switched; ConfigError when prepare_qat was never called on this model."""
    n = 0
    for m in model.modules():
        if isinstance(m, QATLinear):
            m.qat.fill_(1.0 if enabled else 0.0)
            n += 1
    if n == 0:
        raise ConfigError("set_qat: the model has no QAT layers (expected prepare_qat(model) before compiling, "
                          "found none)")
    return n


# ---------------------------------------------------------------------------------------------------- state encoding

def scheme_for(name: str, tensor: Tensor, small_numel: int = SMALL_NUMEL) -> str:
    """The default scheme of a state-dict entry (see the module docstring)."""
    if not tensor.is_floating_point():
        return "raw"
    if any(name.startswith(p) or f".{p}" in name for p in FP32_PATTERNS):
        return "fp32"
    if tensor.numel() <= small_numel:
        return "fp16"
    if is_embedding(name) or tensor.dim() != 2:
        return "int8_row"
    return "int6"


def is_embedding(name: str) -> bool:
    return any(p in name for p in EMBEDDING_PATTERNS)


def tensor_scheme(name: str, tensor: Tensor, cfg: QuantConfig, hessians: dict | None = None) -> str:
    """The scheme a tensor gets under cfg: cfg.schemes[name], else scheme_for; an embedding with a Hessian (the
    tied one: golf.quant.collect_hessians gives it the head's) goes through GPTQ, scheme int6, with
    cfg.embed_gptq."""
    scheme = cfg.schemes.get(name) or scheme_for(name, tensor, cfg.small_numel)
    if (scheme == "int8_row" and cfg.embed_gptq and hessians and name in hessians and tensor.dim() == 2
            and name not in cfg.schemes):
        return "int6"
    return scheme


def default_width(name: str, scheme: str, cfg: QuantConfig) -> int:
    """The width a quantized tensor gets unless golf.rate chooses: cfg.bits for a matrix, cfg.embed_bits for a
    GPTQ'd embedding, cfg.table_bits for an int8_row table."""
    if scheme == "int6":
        return cfg.embed_bits if (cfg.embed_gptq and is_embedding(name)) else cfg.bits
    return cfg.table_bits


def sdclip_group(name: str) -> str:
    """SDClip's tensor group: "embed" (embeddings, an untied head), "mlp", or "attn" (attention and the rest)."""
    if is_embedding(name) or name.endswith("head.weight"):
        return "embed"
    return "mlp" if (".mlp." in name or "recur_mlps." in name) else "attn"


def sdclip_scales(w: Tensor, k: float, bits: int, H: Tensor | None = None, lam: float = 0.0,
                  damp: float = 0.01) -> Tensor:
    """SDClip's scale (PR #1394): fp16 [rows] = max(k · std(row) / qmax, 2^-14), std with Bessel's correction as
    the records' torch.std. With lam > 0, PR #1412's Hessian-aware variant: × [1 + lam · (r_i − 1)], r_i = mean_j
    |w_ij| · d_j / mean(d) over the row, normalised to mean 1 over the rows, d = diag(H) as GPTQ damps it (dead
    inputs 1, + damp · mean). The records floor at 1e-10; 2^-14 keeps the stored fp16 normal."""
    w = w.detach().float()
    s = k * w.std(dim=1)
    if lam:
        if H is None:
            raise ConfigError("sdclip_scales: the Hessian-aware variant (lam > 0) needs the layer's Hessian")
        d = H.diagonal().float().to(w.device).clone()
        d[d == 0] = 1.0
        d = d + damp * d.mean()
        r = (w.abs() * (d / d.mean())).mean(dim=1)
        s = s * (1 + lam * (r / r.mean().clamp_min(1e-30) - 1))
    return (s / (2 ** (bits - 1) - 1)).clamp_min(ops.GPTQ_SCALE_FLOOR).half()


@dataclass
class Option:
    """One tensor at one width (and SDClip k): its codes and fp16 row scales, how they were made, their error and
    proxy bytes. golf.rate chooses among a tensor's options; encode_state stores the chosen one."""
    bits: int
    q: Tensor
    scale: Tensor
    method: str                 # gptq | gptq-sdclip | rtn
    error: float
    proxy_bytes: float
    clip: float | None = None   # SDClip's k (gptq-sdclip)
    is_default: bool = False    # the encoding without rate control: the default width, k as configured
    lqer: tuple | None = None   # LQER's (qA, sA, qB, sB) (lqer_factors), added to q · scale when decoded


def entropy_bytes(q: Tensor) -> float:
    """The order-0 entropy of int8 codes, in bytes for all of them: what an ideal byte-wise coder would need."""
    counts = torch.bincount(q.reshape(-1).to(torch.int64) + 128, minlength=256).double()
    p = counts[counts > 0] / q.numel()
    return float(-(p * p.log2()).sum()) * q.numel() / 8


def _option(w: Tensor, q: Tensor, scale: Tensor, H: Tensor | None, bits: int, method: str, clip=None,
            is_default=False, lqer=None) -> Option:
    """An Option with its error (H-weighted with a Hessian, else squared) and proxy bytes (order-0 entropy of the
    codes, 2 bytes per fp16 scale)."""
    option = Option(bits, q, scale, method, 0.0, entropy_bytes(q) + 2 * scale.numel(), clip, is_default, lqer)
    w_hat = option_value(option)
    option.error = weighted_error(w, w_hat, H) if H is not None else float(((w.float() - w_hat) ** 2).sum())
    if lqer is not None:
        qA, sA, qB, sB = lqer
        option.proxy_bytes += entropy_bytes(qA) + entropy_bytes(qB) + 2 * (sA.numel() + sB.numel())
    return option


def lqer_factors(E: Tensor, rank: int, group: int) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
    """R0611's asymmetric LQER of a quantisation error E [rows, cols] (SVD at rank r): A = U·S as int2 in [−2, 1]
    with one fp16 scale max|A| / 1.5, B = Vᵀ flattened as int4 in [−8, 7] with an fp16 scale per group of
    `group` values (group max / 7.5). (qA int8 [rows, r], sA fp16 [1], qB int8 [r, cols], sB fp16 [r·cols /
    group]); None when r·cols is not a multiple of group."""
    U, S, Vh = torch.linalg.svd(E.float(), full_matrices=False)
    r = min(rank, S.numel())
    if (r * E.shape[1]) % group:
        return None
    A, B = U[:, :r] * S[:r], Vh[:r]
    sA = (A.abs().amax().clamp_min(1e-10) / 1.5).half().reshape(1)
    qA = torch.clamp(torch.round(A / sA.float()), -2, 1).to(torch.int8)
    g = B.reshape(-1, group)
    sB = (g.abs().amax(dim=1).clamp_min(1e-10) / 7.5).half()
    qB = torch.clamp(torch.round(g / sB.float()[:, None]), -8, 7).to(torch.int8).reshape(B.shape)
    return qA, sA, qB, sB


def lqer_value(qA: Tensor, sA: Tensor, qB: Tensor, sB: Tensor) -> Tensor:
    """A · B of stored LQER factors: fp32 [rows, cols]."""
    group = qB.numel() // sB.numel()
    B = (qB.reshape(-1, group).float() * sB.float()[:, None]).reshape(qB.shape)
    return (qA.float() * sA.float()) @ B


def option_value(option: Option) -> Tensor:
    """What an Option decodes to: q · scale, plus A · B with LQER."""
    w_hat = dequantize(option.q, option.scale)
    return w_hat if option.lqer is None else w_hat + lqer_value(*option.lqer)


def with_lqer(w: Tensor, option: Option, H: Tensor | None, cfg: QuantConfig) -> Option:
    """The option with LQER's correction of its error (error and proxy bytes with the factors); the option itself
    when its shape has none (lqer_factors)."""
    factors = lqer_factors(w.float() - dequantize(option.q, option.scale), cfg.lqer_rank, cfg.lqer_group)
    if factors is None:
        return option
    return _option(w, option.q, option.scale, H, option.bits, option.method, option.clip, option.is_default, factors)


def lqer_targets(state: dict[str, Tensor], options: dict[str, Option], cfg: QuantConfig) -> set[str]:
    """The cfg.lqer_top matrices (options: their defaults) of largest ‖W − Ŵ‖_F (R0611's rule); none with LQER
    off."""
    if not cfg.lqer_rank:
        return set()
    norms = {n: float((state[n].float() - dequantize(o.q, o.scale)).norm()) for n, o in options.items()}
    return set(sorted(norms, key=lambda n: -norms[n])[:cfg.lqer_top])


class MatrixScheme:
    """int6: a 2-D matrix per row at any width, GPTQ with its Hessian (the clip searched over
    cfg.clip_candidates, or SDClip's k · std with cfg.clip = "sdclip"), else RTN at cfg.rtn_clip."""
    name = "int6"
    quantized = True

    def check(self, name: str, t: Tensor) -> None:
        if t.dim() != 2:
            raise ConfigError(f"encode_state: {name}: scheme 'int6' needs a 2-D tensor, found shape {tuple(t.shape)}")

    def quantize(self, name: str, t: Tensor, H: Tensor | None, bits: int, cfg: QuantConfig,
                 k_step: float = 1.0) -> tuple[Tensor, Tensor, str, float | None]:
        """(q, scale, method, SDClip k or None) at `bits`, SDClip's k times k_step."""
        if H is None:
            q, scale = quantize_rtn(t, cfg.rtn_clip, bits)
            return q, scale, "rtn", None
        if cfg.clip == "sdclip":
            k = cfg.sdclip_k(name) * k_step
            scales = sdclip_scales(t, k, bits, H, cfg.sdclip_lambda, cfg.damp)
            q, scale = ops.gptq_quantize_scaled(t.detach().to(H.device), H.float(), scales[None].to(H.device), bits,
                                                cfg.block, cfg.act_order, cfg.damp)
            return q.to(t.device), scale.to(t.device), "gptq-sdclip", k
        q, scale = gptq(t, H, bits=bits, block=cfg.block, act_order=cfg.act_order, damp=cfg.damp,
                        clip_candidates=cfg.clip_candidates)
        return q, scale, "gptq", None

    def options(self, name: str, t: Tensor, H: Tensor | None, cfg: QuantConfig, known=None,
                lqer: bool = False) -> list[Option]:
        """Every width of cfg.rate_bits (and the default), each SDClip k step (cfg.sdclip_k_steps) with SDClip;
        with lqer, each of those again with LQER's correction (the default then is the corrected one, as
        encode_state's). known: the default option's (q, scale), not quantized again."""
        w = t.detach().float()
        default = default_width(name, self.name, cfg)
        steps = cfg.sdclip_k_steps if (cfg.clip == "sdclip" and H is not None) else (1.0,)
        out = []
        for bits in sorted(set(cfg.rate_bits) | {default}):
            for step in steps:
                is_default = bits == default and step == 1.0
                if is_default and known is not None:
                    q, scale = known
                    method, clip = self.label(name, H, cfg)
                else:
                    q, scale, method, clip = self.quantize(name, t, H, bits, cfg, step)
                plain = _option(w, q, scale, H, bits, method, clip, is_default)
                corrected = with_lqer(w, plain, H, cfg) if lqer else plain
                if corrected is not plain:
                    plain.is_default = False  # the default is the corrected one, as encode_state's
                    out.append(plain)
                out.append(corrected)
        return out

    def label(self, name: str, H: Tensor | None, cfg: QuantConfig) -> tuple[str, float | None]:
        """(method, SDClip k) of the default quantisation."""
        if H is None:
            return "rtn", None
        return ("gptq-sdclip", cfg.sdclip_k(name)) if cfg.clip == "sdclip" else ("gptq", None)

    def default(self, name: str, t: Tensor, H: Tensor | None, cfg: QuantConfig) -> Option:
        bits = default_width(name, self.name, cfg)
        q, scale, method, clip = self.quantize(name, t, H, bits, cfg)
        return Option(bits, q, scale, method, float("nan"), float("nan"), clip, True)

    def encode(self, name: str, option: Option, cfg: QuantConfig, put) -> dict:
        layout = cfg.layout if option.bits <= 6 else "int8"  # 4-in-3 packing holds 6-bit codes at most
        stored = ops.pack_int6(option.q.cpu()) if layout == "packed" else option.q
        entry = {"bits": option.bits, "method": option.method, "layout": layout,
                 "arrays": {"q": put(f"{name}.q", _np(stored)), "scale": put(f"{name}.scale", _np(option.scale))}}
        if option.clip is not None:
            entry["clip"] = option.clip
        if option.lqer is not None:
            entry["lqer_rank"] = int(option.lqer[0].shape[1])
            for role, value in zip(LQER_ROLES, option.lqer):
                entry["arrays"][role] = put(f"{name}.{role}", _np(value))
        return entry

    def decode(self, name: str, entry: dict, get, shape) -> Tensor:
        q, scale = get("q"), get("scale")
        if entry.get("layout") == "packed":
            q = ops.unpack_int6(q, _numel(shape))
        w_hat = _dequantize_rows(name, q, scale, shape)
        if "lqer_rank" not in entry:
            return w_hat
        qA, sA, qB, sB = (get(role) for role in LQER_ROLES)
        r = entry["lqer_rank"]
        if (len(shape) != 2 or qA.shape != (shape[0], r) or sA.numel() != 1 or qB.shape != (r, shape[1])
                or sB.numel() == 0 or qB.numel() % sB.numel()):
            raise ArtifactError(f"decode_state: {name}: LQER factors of shapes {list(qA.shape)}, {list(qB.shape)} "
                                f"({sB.numel()} group scales) do not fit rank {r} of shape {list(shape)}")
        return w_hat + lqer_value(qA, sA, qB, sB)


class RowScheme:
    """int8_row: an embedding or table as [shape[0], -1] rows, RTN at the row max (cfg.int8_clip)."""
    name = "int8_row"
    quantized = True

    def check(self, name: str, t: Tensor) -> None:
        pass

    def options(self, name: str, t: Tensor, H: Tensor | None, cfg: QuantConfig, known=None,
                lqer: bool = False) -> list[Option]:
        rows = _rows(t)
        default = default_width(name, self.name, cfg)
        return [_option(rows, *quantize_rtn(rows, cfg.int8_clip, bits), None, bits, "rtn", None, bits == default)
                for bits in sorted(set(cfg.rate_bits) | {default})]

    def default(self, name: str, t: Tensor, H: Tensor | None, cfg: QuantConfig) -> Option:
        bits = default_width(name, self.name, cfg)
        q, scale = quantize_rtn(_rows(t), cfg.int8_clip, bits)
        return Option(bits, q, scale, "rtn", float("nan"), float("nan"), None, True)

    def encode(self, name: str, option: Option, cfg: QuantConfig, put) -> dict:
        return {"bits": option.bits,
                "arrays": {"q": put(f"{name}.q", _np(option.q)), "scale": put(f"{name}.scale", _np(option.scale))}}

    def decode(self, name: str, entry: dict, get, shape) -> Tensor:
        return _dequantize_rows(name, get("q"), get("scale"), shape)


class FloatScheme:
    """fp16 / fp32: the value as it is, in that dtype."""
    quantized = False

    def __init__(self, name: str, dtype: torch.dtype):
        self.name, self.dtype = name, dtype

    def check(self, name: str, t: Tensor) -> None:
        if self.dtype == torch.float16 and t.numel() and float(t.detach().abs().max()) > 65504:
            raise ConfigError(f"encode_state: {name}: values up to {float(t.abs().max()):g} overflow fp16 "
                              "(max 65504); give it scheme 'fp32' in QuantConfig.schemes")

    def encode_value(self, name: str, t: Tensor, put) -> dict:
        return {"arrays": {"value": put(name, _np(t.to(self.dtype)))}}

    def decode(self, name: str, entry: dict, get, shape) -> Tensor:
        return get("value").float().reshape(shape)


class RawScheme:
    """raw: integer and bool tensors in their own dtype."""
    name = "raw"
    quantized = False

    def check(self, name: str, t: Tensor) -> None:
        if t.dtype == torch.bfloat16:
            raise ConfigError(f"encode_state: {name}: scheme 'raw' cannot store bfloat16 (numpy has no such "
                              "dtype); use fp16 or fp32")

    def encode_value(self, name: str, t: Tensor, put) -> dict:
        return {"arrays": {"value": put(name, _np(t))}}

    def decode(self, name: str, entry: dict, get, shape) -> Tensor:
        return get("value").reshape(shape)


HANDLERS = {"int6": MatrixScheme(), "int8_row": RowScheme(), "fp16": FloatScheme("fp16", torch.float16),
            "fp32": FloatScheme("fp32", torch.float32), "raw": RawScheme()}


def _num_rows(shape) -> int:
    """Rows of the per-row grid: dim 0 of a tensor with >= 2 dims; a 0-D or 1-D tensor is one row."""
    return shape[0] if len(shape) >= 2 else 1


def _numel(shape) -> int:
    return int(np.prod(shape)) if len(shape) else 1


def _rows(t: Tensor) -> Tensor:
    return t.detach().float().reshape(_num_rows(t.shape), -1)


def _dequantize_rows(name: str, q: Tensor, scale: Tensor, shape) -> Tensor:
    numel, rows = _numel(shape), _num_rows(shape)
    if q.numel() != numel or scale.numel() != rows:
        raise ArtifactError(f"decode_state: {name}: expected {numel} values and {rows} scales for shape "
                            f"{list(shape)}, found {q.numel()} and {scale.numel()}")
    return dequantize(q.reshape(rows, -1), scale).reshape(shape)


def _np(t: Tensor) -> np.ndarray:
    return t.detach().cpu().contiguous().numpy()


def encode_state(state: dict[str, Tensor], hessians: dict[str, Tensor] | None,
                 cfg: QuantConfig | None = None, plan: dict | None = None
                 ) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """(arrays, meta) for the artifact container: flat numpy arrays by name, and per tensor its scheme, shape,
    dtype and array names, as its scheme's handler (HANDLERS) encodes it. A quantized tensor is stored as
    plan[name] (a golf.quant.Option golf.rate chose) or else at its default (default_width; GPTQ with a Hessian
    in `hessians`, else RTN)."""
    cfg = cfg or QuantConfig()
    hessians = hessians or {}
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, dict] = {}

    def put(key: str, value: np.ndarray) -> str:
        if key in arrays:
            raise ConfigError(f"encode_state: array name {key!r} is used twice (rename the state entry)")
        arrays[key] = value
        return key

    schemes = {name: tensor_scheme(name, t, cfg, hessians) for name, t in state.items()}
    chosen: dict[str, Option] = {}
    for name, t in state.items():
        handler = HANDLERS[schemes[name]]
        if schemes[name] != "raw" and not t.is_floating_point():
            raise ConfigError(f"encode_state: {name}: scheme {schemes[name]!r} needs a float tensor, found {t.dtype}")
        handler.check(name, t)
        if handler.quantized:
            chosen[name] = plan[name] if plan is not None and name in plan else handler.default(
                name, t, hessians.get(name), cfg)
    if plan is None:  # the default encoding: LQER on the tensors of largest error, as R0611
        for name in lqer_targets(state, {n: o for n, o in chosen.items() if schemes[n] == "int6"}, cfg):
            chosen[name] = with_lqer(state[name].detach().float(), chosen[name], hessians.get(name), cfg)
    for name, t in state.items():
        handler = HANDLERS[schemes[name]]
        entry = {"scheme": schemes[name], "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
        entry |= handler.encode(name, chosen[name], cfg, put) if handler.quantized else handler.encode_value(
            name, t, put)
        meta[name] = entry
    return arrays, meta


def container_order(arrays: dict[str, np.ndarray], meta: dict[str, dict]) -> dict[str, np.ndarray]:
    """The arrays in the order the artifact stores them (it reads them by name): the int6-scheme codes first, then
    everything else, each part by name. Codes side by side compress smaller under LZMA than codes interleaved
    with their fp16 scales and the tier tables (bench/RESULTS.md, "Rate control")."""
    codes = {entry["arrays"]["q"] for entry in meta.values() if entry.get("scheme") == "int6"}
    return {k: arrays[k] for k in sorted(arrays, key=lambda k: (k not in codes, k))}


def decode_state(arrays: dict[str, np.ndarray], meta: dict[str, dict]) -> dict[str, Tensor]:
    """The inverse of encode_state: fp32 tensors of the original shapes (raw ones in their stored dtype)."""
    out: dict[str, Tensor] = {}
    for name, entry in meta.items():
        scheme, shape = entry.get("scheme"), tuple(entry.get("shape", ()))
        if scheme not in HANDLERS:
            raise ArtifactError(f"decode_state: {name}: unknown scheme (expected one of {SCHEMES}, found {scheme!r})")

        def get(role: str) -> Tensor:
            key = entry.get("arrays", {}).get(role)
            if key not in arrays:
                raise ArtifactError(f"decode_state: {name}: array {key!r} ({role}) is missing from the artifact")
            return torch.from_numpy(np.array(arrays[key]))

        out[name] = HANDLERS[scheme].decode(name, entry, get, shape)
    return out


# ---------------------------------------------------------------------------------------------- pruning

@dataclass
class Pm1Candidates:
    """Every int6 value at +-1 in an encoded state, cheapest first: zeroing one adds about scale[row]^2 of
    squared weight error (the records' selective pruning cost)."""
    names: list[str]   # the int6 tensors, by index
    tensor: Tensor     # int64 [M]: index into names
    index: Tensor      # int64 [M]: flat index into that tensor's values
    cost: Tensor       # float32 [M], ascending

    def __len__(self) -> int:
        return int(self.cost.numel())


def int6_values(arrays: dict[str, np.ndarray], entry: dict) -> Tensor:
    """An int6 tensor's values q (int8 [rows, cols]) from its artifact arrays, unpacked where packed."""
    q = torch.from_numpy(np.array(arrays[entry["arrays"]["q"]]))
    numel = int(np.prod(entry["shape"]))
    if entry.get("layout") == "packed":
        q = ops.unpack_int6(q, numel)
    return q.reshape(_num_rows(entry["shape"]), -1)


def pm1_candidates(arrays: dict[str, np.ndarray], meta: dict[str, dict]) -> Pm1Candidates:
    names, tensor, index, cost = [], [], [], []
    for name, entry in meta.items():
        if entry.get("scheme") != "int6":
            continue
        q = int6_values(arrays, entry)
        scale = torch.from_numpy(np.array(arrays[entry["arrays"]["scale"]])).float()
        flat = torch.nonzero(q.reshape(-1).abs() == 1).squeeze(1)
        tensor.append(torch.full_like(flat, len(names)))
        index.append(flat)
        cost.append(scale[flat // q.shape[1]] ** 2)
        names.append(name)
    if not names:
        empty = torch.zeros(0, dtype=torch.long)
        return Pm1Candidates([], empty, empty, torch.zeros(0))
    cost_all = torch.cat(cost)
    order = torch.argsort(cost_all, stable=True)
    return Pm1Candidates(names, torch.cat(tensor)[order], torch.cat(index)[order], cost_all[order])


def zero_pm1(arrays: dict[str, np.ndarray], meta: dict[str, dict], cands: Pm1Candidates,
             n: int) -> dict[str, np.ndarray]:
    """A copy of `arrays` with the n cheapest candidates set to 0 (only the arrays that change are copied)."""
    out = dict(arrays)
    tensor, index = cands.tensor[:n], cands.index[:n]
    for t in torch.unique(tensor).tolist():
        entry = meta[cands.names[t]]
        q = int6_values(arrays, entry).clone()
        q.view(-1)[index[tensor == t]] = 0
        out[entry["arrays"]["q"]] = _np(ops.pack_int6(q) if entry.get("layout") == "packed" else q)
    return out


__all__ = ["QMAX", "QuantConfig", "Option", "HANDLERS", "sdclip_scales", "lqer_factors", "lqer_value",
           "option_value", "entropy_bytes", "quantize_rtn", "dequantize", "row_scale", "gptq", "weighted_error",
           "collect_hessians", "fake_quant_int6", "QATLinear", "prepare_qat", "set_qat", "scheme_for",
           "encode_state", "decode_state", "DEFAULT_CLIP_CANDIDATES", "Pm1Candidates", "pm1_candidates",
           "zero_pm1"]
