"""Rate control for the artifact: the bit width of each matrix (int6 scheme) and, given a loss to calibrate
against, of each table (int8_row scheme: embeddings, tier-1 factors) and a GPTQ'd embedding, chosen so that the
compressed artifact fits a byte budget with the least total error.

    options = tensor_options(state, hessians, cfg, tables)   # per tensor, per width: codes, error, proxy bytes
    exchange = calibrate(state, options, loss)               # errors in nats: one loss per group at its narrowest
    choice = allocate(options, proxy_budget)                 # {name: Option}: least total error within the budget
    arrays, meta, data, info, record = fit(state, hessians, cfg, max_bytes, encode, loss=None)

A tensor's options come from its scheme's handler (golf.quant.HANDLERS): one per width, and with SDClip one per k
step (QuantConfig.sdclip_k_steps: k as a second knob beside the width), each again with LQER's correction for the
matrices the default encoding gave one. Error of a matrix at a width: GPTQ's own loss, tr(ΔW H ΔWᵀ), with H the
layer's calibration Hessian (Σ xᵀx / rows: the expected squared output error per token, so the errors of different
layers add up); H = I and RTN codes for a matrix without one. Of a table: Σ (w − ŵ)² of its RTN rows. The two are in
different units, so tables take part only when `fit` has a loss(state) -> nats (golf.train passes the mean NLL on a
calibration batch): `calibrate` then measures the loss with all matrices at their narrowest width, and with each
table alone at its narrowest, and turns every error into nats by that ratio (Δloss / error; a first-order exchange
rate). Without it, tables keep QuantConfig.table_bits. Proxy bytes: the order-0 entropy of the codes times their
count / 8, plus 2 bytes per fp16 row scale. `allocate` solves the knapsack (least Σ error within Σ bytes) by its
Lagrangian relaxation (per tensor the least error + λ · bytes, λ by bisection) and fills the bytes that leaves with
the best upgrades per byte.

The real coder (LZMA, or whichever codec, over the whole container) does not land exactly on the proxy. `fit`
first compresses the default allocation (matrices at QuantConfig.bits, tables at table_bits); if it fits, it stays
(unless QuantConfig.fill_budget: then the spare bytes buy wider codes). Otherwise it aims the proxy where a line
actual = fixed + c · proxy meets the budget minus AIM_MARGIN: first the line through the first compression and
the rest of the file compressed alone (fixed), then the secant through the last two compressions; at most
MAX_COMPRESSIONS full compressions. Whatever still does not fit goes to golf.export's ±1 pruning, the last resort.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from golf import quant

MAX_COMPRESSIONS = 3
AIM_MARGIN = 0.002  # aim this fraction below the budget: the line through the compressions is an estimate


Option = quant.Option
entropy_bytes = quant.entropy_bytes


def tensor_options(state: dict[str, Tensor], hessians: dict[str, Tensor] | None, cfg: quant.QuantConfig,
                   tables: bool = False, known: dict | None = None, lqer=()) -> dict[str, list[Option]]:
    """For every int6-scheme tensor of `state` (and, with tables, every int8_row one), its options from its
    scheme's handler (quant.HANDLERS): each width of cfg.rate_bits and its default width, each SDClip k step,
    narrowest first, and for the tensors named in `lqer` each of those with LQER's correction too. known:
    {name: (q, scale)} of tensors already quantized at their default, not quantized again."""
    hessians, known = hessians or {}, known or {}
    out: dict[str, list[Option]] = {}
    for name, t in state.items():
        scheme = quant.tensor_scheme(name, t, cfg, hessians)
        if scheme == "int6" or (scheme == "int8_row" and tables):
            out[name] = quant.HANDLERS[scheme].options(name, t, hessians.get(name), cfg, known.get(name),
                                                       lqer=name in lqer)
    return out


def is_matrix(name: str, state: dict[str, Tensor], cfg: quant.QuantConfig) -> bool:
    """A matrix of the transformer's blocks, whose errors share one exchange rate. A GPTQ'd embedding is not: its
    error reaches the logits directly, so it is calibrated alone, like a table."""
    return quant.tensor_scheme(name, state[name], cfg) == "int6"


def calibrate(state: dict[str, Tensor], options: dict[str, list[Option]], loss, cfg: quant.QuantConfig) -> dict:
    """Every option's error in nats (in place): the matrices together and each table alone are set to their narrowest
    width, the loss measured, and error × Δloss / (their error at that width) becomes the error. A Δloss at or below
    0 (quantisation noise under the loss's own) counts as 1e-9 nats: nearly free bytes. Returns what was measured."""
    base = loss(state)
    matrices = [n for n in options if is_matrix(n, state, cfg)]
    groups = ({"matrices": matrices} if matrices else {}) | {n: [n] for n in options if n not in matrices}
    measured = {"loss": base, "groups": {}}
    for group, names in groups.items():
        trial = dict(state)
        for n in names:
            o = options[n][0]
            trial[n] = quant.option_value(o).reshape(state[n].shape)
        delta = loss(trial) - base
        error = sum(options[n][0].error for n in names)
        rate = max(delta, 1e-9) / error if error > 0 else 0.0
        for n in names:
            for o in options[n]:
                o.error *= rate
        measured["groups"][group] = {"bits": options[names[0]][0].bits, "delta_loss": delta, "nats_per_error": rate}
    return measured


def allocate(options: dict[str, list[Option]], budget: float) -> dict[str, Option]:
    """Per tensor one option, total proxy bytes within `budget`, total error as small as this finds: the Lagrangian
    allocation (per tensor the option minimising error + λ · bytes, for the smallest λ that fits; λ by bisection on
    a log scale) and each uniform width that fits, every one then filled greedily with the upgrades that save the
    most error per byte while bytes remain; the best of them. The widest options when they fit; the narrowest when
    nothing fits (the caller's size check then decides)."""
    def pick(lam: float) -> dict[str, Option]:
        return {n: min(opts, key=lambda o: (o.error + lam * o.proxy_bytes, o.proxy_bytes))
                for n, opts in options.items()}

    if _size(pick(0.0)) <= budget:
        return pick(0.0)
    lo, hi = -60.0, 60.0  # log10 λ; errors and bytes differ by many orders of magnitude between models
    if _size(pick(10.0 ** hi)) > budget:
        return {n: min(opts, key=lambda o: o.proxy_bytes) for n, opts in options.items()}
    for _ in range(100):
        mid = (lo + hi) / 2
        if _size(pick(10.0 ** mid)) <= budget:
            hi = mid
        else:
            lo = mid
    starts = [pick(10.0 ** hi)]
    for bits in {o.bits for opts in options.values() for o in opts}:
        uniform = {n: min((o for o in opts if o.bits == bits), key=lambda o: o.error, default=None)
                   for n, opts in options.items()}
        if all(o is not None for o in uniform.values()) and _size(uniform) <= budget:
            starts.append(uniform)
    return min((_fill(options, dict(s), budget) for s in starts), key=_total_error)


def _fill(options: dict[str, list[Option]], choice: dict[str, Option], budget: float) -> dict[str, Option]:
    """Spend what `choice` leaves of the budget: repeatedly the change that saves the most error per extra byte
    and still fits (the Lagrangian allocation stops short of the budget by up to one tensor's step)."""
    used = _size(choice)
    while True:
        best = None
        for n, opts in options.items():
            cur = choice[n]
            for o in opts:
                extra, gain = o.proxy_bytes - cur.proxy_bytes, cur.error - o.error
                if gain > 0 and used + extra <= budget:
                    value = gain / extra if extra > 0 else float("inf")
                    if best is None or value > best[0]:
                        best = (value, n, o, extra)
        if best is None:
            return choice
        _, n, o, extra = best
        choice[n] = o
        used += extra


def _size(choice: dict[str, Option]) -> float:
    return sum(o.proxy_bytes for o in choice.values())


def fit(state: dict[str, Tensor], hessians: dict[str, Tensor] | None, cfg: quant.QuantConfig, max_bytes: int,
        encode, loss=None) -> tuple[dict, dict, bytes, object, dict]:
    """(arrays, meta, data, info, record): the allocation to write. encode(arrays, meta) -> (file bytes, info) is
    one full compression of the container; loss(state) -> nats, when given, brings the tables in (calibrate).
    record (for the log and summary.json): the budget, every compression's proxy and actual bytes, the exchange
    rates, and per tensor its width, method, error and proxy bytes."""
    t0 = time.perf_counter()
    arrays, meta = quant.encode_state(state, hessians, cfg)
    data, info = encode(arrays, meta)
    record = {"max_bytes": int(max_bytes), "default_bits": cfg.bits, "table_bits": cfg.table_bits,
              "rate_bits": list(cfg.rate_bits), "error_units": "gptq",
              "compressions": [{"allocation": f"matrices int{cfg.bits}, tables int{cfg.table_bits}",
                                "actual": len(data)}]}
    if len(data) <= max_bytes and not cfg.fill_budget:
        record.update(used="default", fits=True, actual=len(data), seconds=time.perf_counter() - t0)
        return arrays, meta, data, info, record
    t_options = time.perf_counter()
    known = {n: (quant.int6_values(arrays, e), torch.from_numpy(arrays[e["arrays"]["scale"]].copy()))
             for n, e in meta.items() if e["scheme"] == "int6"}  # the first encoding's codes at their default
    lqer = {n for n, e in meta.items() if "lqer_rank" in e}  # the first encoding's LQER targets
    options = tensor_options(state, hessians, cfg, tables=loss is not None, known=known, lqer=lqer)
    if loss is not None and options:
        record["exchange"] = calibrate(state, options, loss, cfg)
        record["error_units"] = "nats (calibrated)"
    record["options_seconds"] = time.perf_counter() - t_options
    default = {n: next(o for o in opts if o.is_default) for n, opts in options.items()}
    points = [(_size(default), len(data))]  # (proxy, actual) of each compression
    record["compressions"][0]["proxy"] = points[0][0]
    # The rest of the file (tiers, embeddings, small tensors, header) compressed alone: with it, the first
    # compression gives the coder's bytes per proxy byte for the matrices (a small compression, not a full one).
    fixed = {n: e for n, e in meta.items() if n not in options}
    fixed_bytes = len(encode({k: arrays[k] for e in fixed.values() for k in e["arrays"].values()}, fixed)[0])
    record["fixed_bytes"] = fixed_bytes
    best = (arrays, meta, data, info, default) if len(data) <= max_bytes else None
    last = (arrays, meta, data, info, default)
    aim = max_bytes * (1 - AIM_MARGIN)
    while len(record["compressions"]) < MAX_COMPRESSIONS:
        (p1, a1) = points[-1]
        if len(points) >= 2 and points[-2][0] != p1:  # the secant through the last two compressions
            p0, a0 = points[-2]
            slope = (a1 - a0) / (p1 - p0)
        else:  # the line through the fixed part and the first compression
            slope = (a1 - fixed_bytes) / p1 if p1 > 0 else 1.0
        target = p1 + (aim - a1) / max(slope, 1e-3)
        choice = allocate(options, target)
        if all(choice[n] is last[4][n] for n in choice):
            break  # the same allocation again (no width left to give): the compression would repeat itself
        proxy = _size(choice)
        arrays, meta = quant.encode_state(state, hessians, cfg, plan=choice)
        data, info = encode(arrays, meta)
        points.append((proxy, len(data)))
        record["compressions"].append({"allocation": "rate", "proxy_target": target, "proxy": proxy,
                                       "actual": len(data)})
        last = (arrays, meta, data, info, choice)
        if len(data) <= max_bytes and (best is None or _total_error(choice) < _total_error(best[4])):
            best = last
        if len(data) <= max_bytes and len(data) >= aim * (1 - AIM_MARGIN):
            break  # within the margin: more compressions would buy little
    arrays, meta, data, info, choice = best or last
    tables = [n for n in choice if not is_matrix(n, state, cfg)]
    record.update(
        used="rate" if choice is not default else "default", fits=len(data) <= max_bytes, actual=len(data),
        error_total=_total_error(choice), error_default=_total_error(default),
        bits_histogram={b: sum(o.bits == b for n, o in choice.items() if n not in tables)
                        for b in sorted(set(cfg.rate_bits) | {cfg.bits})},
        table_widths={n: choice[n].bits for n in tables},
        tensors={n: {"bits": o.bits, "method": o.method, "clip": o.clip, "lqer": o.lqer is not None,
                     "error": o.error, "proxy_bytes": round(o.proxy_bytes)} for n, o in choice.items()},
        seconds=time.perf_counter() - t0)
    return arrays, meta, data, info, record


def _total_error(choice: dict[str, Option]) -> float:
    return float(sum(o.error for o in choice.values()))
