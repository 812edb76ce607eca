"""Quantisation for the artifact: GPTQ int6, round-to-nearest (RTN), int8 rows, late-QAT fake quantisation, and
the encoding of a state dict into flat arrays + metadata for the artifact container.

Grids
-----
Every quantized matrix is per row: ``w ≈ q · scale[:, None]`` with ``q`` int8 and ``scale`` fp16 [rows].
``scale = max(clip / qmax, 2^-14)`` rounded to fp16, ``clip`` = a quantile of the row's |w| (1.0 = row max),
``q = clamp(round(w / scale), −qmax, qmax)`` with the fp16-rounded scale, so what is stored is exactly what
was rounded to. ``qmax = 2^(bits−1) − 1``: 31 for int6 (63 levels, like the records), 127 for int8.

Schemes (one per tensor: ``scheme_for(name, tensor)``, or ``QuantConfig.schemes[name]`` when given)
--------------------------------------------------------------------------------------------------
``int6``      2-D float weights with > 65,536 elements that are not embeddings or prior tables (Q, K, V, O,
              MLP fc/proj, an untied head). GPTQ (``gptq``: act-order, blocks of 128, damping 0.01·mean diag H,
              the records' 5 clip quantiles, the clip chosen per row by GPTQ's own Hessian-weighted loss — the
              records chose one per matrix by unweighted MSE; bench/gptq.py compares) when a Hessian for the
              name is given, else RTN at
              ``QuantConfig.rtn_clip`` (default 1.0 = row max: the same grid as ``fake_quant_int6``, so a
              QAT-trained model exports onto the grid it trained on). Arrays ``<name>.q`` (int8 [rows, cols]
              or, with ``int6_layout="packed"``, uint8 4-values-per-3-bytes from ``golf.ops.pack_int6``) and
              ``<name>.scale`` (fp16 [rows]). ``int6_layout="auto"`` is int8: bench/packing.py measured it
              10% smaller under LZMA than true 6-bit packing, which splits codes across byte boundaries and
              hides their statistics from a byte-wise coder (bench/RESULTS.md, "Quantisation").
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
``method`` (gptq/rtn) and ``layout`` (int8/packed) for int6. An int6-scheme tensor is int6 unless golf.rate gave it
another width (``bits`` in ``QuantConfig.rate_bits``, qmax = 2^(bits−1) − 1) to fit the artifact into its byte
budget. ``decode_state(*encode_state(s, h, cfg))`` gives fp32 tensors (integer ones in their dtype) equal to
``dequantize`` of each scheme's (q, scale), bit for bit.

Hessians
--------
``collect_hessians(model, batches)`` hooks the input of every ``CastedLinear``: H = Σ xᵀx / (rows seen) in fp32
through ``golf.ops.hessian_accumulate``. Q, K and V read the same tensor, so they get one shared H (the same
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

    @property
    def layout(self) -> str:
        return INT6_AUTO_LAYOUT if self.int6_layout == "auto" else self.int6_layout


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
    """{"<module>.weight": H} for every CastedLinear of a Transformer (or a TieredLM, through its .transformer):
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

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        w = w + self.qat * (_int6_rtn_value(w) - w).detach()
        return torch.nn.functional.linear(x, w.to(x.dtype))


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
    if any(p in name for p in EMBEDDING_PATTERNS) or tensor.dim() != 2:
        return "int8_row"
    return "int6"


def tensor_scheme(name: str, tensor: Tensor, cfg: QuantConfig) -> str:
    """The scheme a tensor gets under cfg: cfg.schemes[name], else scheme_for."""
    return cfg.schemes.get(name) or scheme_for(name, tensor, cfg.small_numel)


def _num_rows(shape) -> int:
    """Rows of the per-row grid: dim 0 of a tensor with >= 2 dims; a 0-D or 1-D tensor is one row."""
    return shape[0] if len(shape) >= 2 else 1


def _np(t: Tensor) -> np.ndarray:
    return t.detach().cpu().contiguous().numpy()


def encode_state(state: dict[str, Tensor], hessians: dict[str, Tensor] | None,
                 cfg: QuantConfig | None = None, plan: dict | None = None
                 ) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """(arrays, meta) for the artifact container: flat numpy arrays by name, and per tensor its scheme, shape,
    dtype and array names. GPTQ runs for every int6 tensor with a Hessian in `hessians` (others use RTN). plan:
    {name: golf.rate.Option} for int6 and int8_row tensors already quantized (at their own width: bits, q,
    scale; method for int6)."""
    cfg = cfg or QuantConfig()
    hessians = hessians or {}
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, dict] = {}

    def put(key: str, value: np.ndarray) -> str:
        if key in arrays:
            raise ConfigError(f"encode_state: array name {key!r} is used twice (rename the state entry)")
        arrays[key] = value
        return key

    for name, t in state.items():
        scheme = tensor_scheme(name, t, cfg)
        entry = {"scheme": scheme, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
        if scheme != "raw" and not t.is_floating_point():
            raise ConfigError(f"encode_state: {name}: scheme {scheme!r} needs a float tensor, found {t.dtype}")
        if scheme == "int6":
            if t.dim() != 2:
                raise ConfigError(f"encode_state: {name}: scheme 'int6' needs a 2-D tensor, found shape "
                                  f"{tuple(t.shape)}")
            bits = cfg.bits
            if plan is not None and name in plan:
                chosen = plan[name]
                q, scale, bits, entry["method"] = chosen.q, chosen.scale, chosen.bits, chosen.method
            elif name in hessians:
                q, scale = gptq(t, hessians[name], bits=cfg.bits, block=cfg.block,
                                act_order=cfg.act_order, damp=cfg.damp, clip_candidates=cfg.clip_candidates)
                entry["method"] = "gptq"
            else:
                q, scale = quantize_rtn(t, cfg.rtn_clip, cfg.bits)
                entry["method"] = "rtn"
            layout = cfg.layout if bits <= 6 else "int8"  # 4-in-3 packing holds 6-bit codes at most
            entry["bits"], entry["layout"] = bits, layout
            stored = ops.pack_int6(q.cpu()) if layout == "packed" else q
            entry["arrays"] = {"q": put(f"{name}.q", _np(stored)), "scale": put(f"{name}.scale", _np(scale))}
        elif scheme == "int8_row":
            if plan is not None and name in plan:
                q, scale, entry["bits"] = plan[name].q, plan[name].scale, plan[name].bits
            else:
                q, scale = quantize_rtn(t.reshape(_num_rows(t.shape), -1), cfg.int8_clip, bits=cfg.table_bits)
                entry["bits"] = cfg.table_bits
            entry["arrays"] = {"q": put(f"{name}.q", _np(q)), "scale": put(f"{name}.scale", _np(scale))}
        elif scheme in ("fp16", "fp32"):
            dtype = torch.float16 if scheme == "fp16" else torch.float32
            if scheme == "fp16" and t.numel() and float(t.detach().abs().max()) > 65504:
                raise ConfigError(f"encode_state: {name}: values up to {float(t.abs().max()):g} overflow fp16 "
                                  "(max 65504); give it scheme 'fp32' in QuantConfig.schemes")
            entry["arrays"] = {"value": put(name, _np(t.to(dtype)))}
        else:  # raw
            if t.dtype == torch.bfloat16:
                raise ConfigError(f"encode_state: {name}: scheme 'raw' cannot store bfloat16 (numpy has no such "
                                  "dtype); use fp16 or fp32")
            entry["arrays"] = {"value": put(name, _np(t))}
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

        def get(role: str) -> Tensor:
            key = entry.get("arrays", {}).get(role)
            if key not in arrays:
                raise ArtifactError(f"decode_state: {name}: array {key!r} ({role}) is missing from the artifact")
            return torch.from_numpy(np.array(arrays[key]))

        numel = int(np.prod(shape)) if shape else 1
        if scheme in ("int6", "int8_row"):
            q, scale = get("q"), get("scale")
            if scheme == "int6" and entry.get("layout") == "packed":
                q = ops.unpack_int6(q, numel)
            rows = _num_rows(shape)
            if q.numel() != numel or scale.numel() != rows:
                raise ArtifactError(f"decode_state: {name}: expected {numel} values and {rows} scales for shape "
                                    f"{list(shape)}, found {q.numel()} and {scale.numel()}")
            out[name] = dequantize(q.reshape(rows, -1), scale).reshape(shape)
        elif scheme in ("fp16", "fp32"):
            out[name] = get("value").float().reshape(shape)
        elif scheme == "raw":
            out[name] = get("value").reshape(shape)
        else:
            raise ArtifactError(f"decode_state: {name}: unknown scheme (expected one of {SCHEMES}, found {scheme!r})")
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


__all__ = ["QMAX", "QuantConfig", "quantize_rtn", "dequantize", "row_scale", "gptq", "weighted_error",
           "collect_hessians", "fake_quant_int6", "QATLinear", "prepare_qat", "set_qat", "scheme_for",
           "encode_state", "decode_state", "DEFAULT_CLIP_CANDIDATES", "Pm1Candidates", "pm1_candidates",
           "zero_pm1"]
