"""Evaluation of an in-memory predictor: sliding-window and plain BPB, and the validity audit.

The predictor is a `TieredLM` (its `.transformer` gives `hidden(ids)`, `head_weight`, `softcap`,
`copy_logits(h, ids, keep)`, the copy head's sparse logits or None, `with_copy`, and `prior_scales(h)`, the prior
gate's weights of the prior rows at those positions or None; its
`.prior_tables` [R, V] fp32 and `.lowrank`, a factored tier 1 or None) plus a `prior_rows` callable
(x [B, T] -> int32 [B, T, K], the rows for the token AFTER each position, built from x alone; K = 0 for the
baseline). `python -m golf.eval` loads an artifact into
these and calls this module. BPB itself is computed only by golf.data (ByteTables, BpbMeter).

Window plan (`window_plan`)
    A val stream of N tokens has N-1 targets: target i (1 <= i <= N-1) is token i, predicted from tokens < i.
    A window is a row (start, length, score_from): the model reads x = tokens[start : start+length] and
    position j of x predicts target start+j+1; the window scores positions score_from .. length-1.
    Sliding (stride < window), with T = N-1 targets:
      * T <= window: one window (0, T, 0) that scores everything (the only window shorter than `window`);
      * otherwise the first window (0, window, 0) scores its `window` targets, then windows start at
        stride, 2*stride, ... while start + window <= T and score their last `stride` targets;
      * the tail (the r < stride targets after the last of those) is scored by one more full-length window
        ending at the last target, (T - window, window, window - r): every tail target keeps at least
        window - r >= window - stride tokens of context, and the window batches with the others.
      Every target 1..N-1 is scored exactly once (ANCHOR §4's fixed variant, without the records' tail re-scores;
      the records' fix scores the tail with shorter windows from the stride grid instead, which gives the tail
      targets the same or less context).
    Plain (stride >= window): the challenge's non-overlapping eval, as golf.data.load_val_tokens(seq_len) cuts
      the stream (golf.train's periodic, tiers-only, final and roundtrip evals): windows (k*window, window, 0)
      for k < (N-1) // window; the (N-1) % window targets after the last whole window are not scored. Pass a
      stream already truncated by load_val_tokens(seq_len=window) (N-1 a multiple of window) and plain eval also
      scores every target once.

evaluate(lm, prior_rows, val_tokens, *, window, stride, byte_tables, batch_windows, dist=None, device="cpu",
         amp=None, score=None, plan=window_plan, progress=True, hidden=None) -> EvalResult
    Windows of one length run in batches of `batch_windows`: transformer.hidden over the whole window, then
    only the scored positions' hidden states, prior rows, targets and prior weights go through `score`
    (default `scorer(lm)`: golf::score_windows, with a factored tier 1 on chunks that bring their own
    tier-1 rows);
    bytes via BpbMeter (the previous token of a target is the stream token before it, i.e. x[j]). Sums in
    float64. Distributed (`dist` with .rank/.world_size, or torch.distributed when initialised): rank r takes
    the contiguous slice [n*r/W, n*(r+1)/W) of the plan's n windows; the sums are all-reduced.

audit(lm, prior_rows, val_tokens, *, window, stride, positions=32, seed=0, plan=window_plan,
      score=None, predict=None, device="cpu", ...) -> {condition: {"ok", "detail", ...}}
    Checks ANCHOR §8's conditions on real val windows of the plan; every ingredient can be swapped:
    `predict` (x [B, T] -> float64 log-probabilities [B, T, V], default `full_log_probs(lm, prior_rows)`: the
    full tiered logits l0 + l1 + softcap(l2), log-softmaxed), `plan` and `score`.
      causality      for sampled scored positions j of sampled windows, the tokens from j+1 on (the target
                     included) are replaced by other random tokens: predict's whole distribution at j must not
                     change against an unperturbed copy of the window in the same batch (max |delta log p| <=
                     causal_tol; 0 by default: the same batch shape makes a causal model bit-exact on any device).
      normalisation  at those positions sum_v p(v) = 1 +- norm_tol (1e-4) for predict's distribution AND for the
                     scoring path (score called with every vocabulary id as the target): a scorer that raises
                     only the target's probability cannot pass.
      single_pass    the plan actually used scores each of the N-1 targets exactly once (coverage counted).
      consistency    score's NLL at every scored position of the sampled windows equals -log p(target) of
                     predict within consistency_tol (1e-4 nats: the two paths differ only in fp32 GEMM order).

audit_method(run, val_tokens, *, vocab, bos_id, reruns=4, ...) -> {condition: {"ok", "detail", ...}}
    The same four conditions for any method, stateful ones (golf.ttt) included, measured on what the method
    actually scored (`run(tokens, record)`: every scoring event as `Scored`) and on reruns with one token
    changed: every target scored before that token keeps its score; see its docstring.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch

from golf import ops
from golf.data import BpbMeter, ByteTables
from golf.errors import ConfigError, DataError
from golf.progress import Progress
from golf.tiers import prior_logits

PLAN_COLUMNS = ("start", "length", "score_from")


# --- window plan ---------------------------------------------------------------------------------------

def window_plan(num_tokens: int, window: int, stride: int) -> np.ndarray:
    """int64 [W, 3] rows (start, length, score_from) for a stream of num_tokens tokens; see the module docstring."""
    if window < 1:
        raise ConfigError(f"window: expected >= 1, found {window}")
    if stride < 1:
        raise ConfigError(f"stride: expected >= 1, found {stride}")
    targets = num_tokens - 1
    if targets < 1:
        raise DataError("validation stream has no target to score", field="num_tokens", expected=">= 2",
                        found=num_tokens)
    if stride >= window:
        count = targets // window
        if count == 0:
            raise DataError(f"validation stream is too short for one plain window of {window}", field="num_tokens",
                            expected=f">= {window + 1}", found=num_tokens)
        starts = np.arange(count, dtype=np.int64) * window
        return np.stack([starts, np.full_like(starts, window), np.zeros_like(starts)], 1)
    if targets <= window:
        return np.array([[0, targets, 0]], dtype=np.int64)
    later = np.arange(stride, targets - window + 1, stride, dtype=np.int64)  # starts with start + window <= T
    rows = [np.array([[0, window, 0]], dtype=np.int64),
            np.stack([later, np.full_like(later, window), np.full_like(later, window - stride)], 1)]
    covered = window + (int(later[-1]) if len(later) else 0)  # targets 1..covered are scored
    tail = targets - covered
    if tail:
        rows.append(np.array([[targets - window, window, window - tail]], dtype=np.int64))
    return np.concatenate(rows)


def plan_coverage(plan: np.ndarray, num_tokens: int) -> np.ndarray:
    """int64 [num_tokens]: how many times the plan scores each target (index 0 is never a target).

    DataError if a window reads outside the stream or scores no position it holds."""
    plan = np.asarray(plan, dtype=np.int64).reshape(-1, 3)
    start, length, score_from = plan[:, 0], plan[:, 1], plan[:, 2]
    bad = (start < 0) | (length < 1) | (start + length > num_tokens - 1) | (score_from < 0) | (score_from >= length)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError("window outside the stream or scoring nothing", field=f"plan[{i}] (start, length, score_from)",
                        expected=f"0 <= start, start+length <= {num_tokens - 1}, 0 <= score_from < length",
                        found=tuple(int(v) for v in plan[i]))
    # Difference array: +1 at the first scored target, -1 after the last.
    delta = np.zeros(num_tokens + 1, dtype=np.int64)
    np.add.at(delta, start + score_from + 1, 1)
    np.add.at(delta, start + length + 1, -1)
    return np.cumsum(delta)[:num_tokens]


def _window_tokens(tokens: np.ndarray, starts: np.ndarray, length: int) -> torch.Tensor:
    """int64 [B, length+1]: tokens[s : s+length+1] for each start (inputs and their targets)."""
    idx = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(length + 1, dtype=np.int64)[None, :]
    return torch.from_numpy(tokens[idx].astype(np.int64))


def _batches(plan: np.ndarray, batch_windows: int):
    """Consecutive runs of plan rows with one window length, at most batch_windows each."""
    i = 0
    while i < len(plan):
        j = i + 1
        while j < len(plan) and j - i < batch_windows and plan[j, 1] == plan[i, 1]:
            j += 1
        yield plan[i:j]
        i = j


# --- evaluation ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EvalResult:
    val_loss: float      # mean NLL per target, nats
    val_bpb: float
    targets: int
    bytes: int
    seconds: float       # wall time of this rank's loop (the all-reduce included)
    tokens_per_s: float  # scored targets (all ranks) per second
    window: int
    stride: int
    windows: int         # windows in the plan (all ranks); TTT: document groups
    nll_sum: float
    method: str = "sliding"
    info: dict | None = None  # the method's own facts (golf.scoring adds the budget's)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Scored:
    """One scoring event of a method, for the audit: the targets' stream positions [n], their NLL [n] as
    metered, and a callable giving the full float64 log-probabilities [n, V] they were taken from (the
    predictor as it was at that moment)."""
    positions: torch.Tensor
    nll: torch.Tensor
    log_probs: Callable[[], torch.Tensor]


def _rank_world(dist) -> tuple[int, int]:
    if dist is not None:
        rank, world = int(dist.rank), int(dist.world_size)
    elif torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    else:
        return 0, 1
    if world > 1 and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise ConfigError(f"dist: world_size={world} but torch.distributed is not initialised")
    return rank, world


def _as_tokens(val_tokens) -> np.ndarray:
    tokens = val_tokens.cpu().numpy() if isinstance(val_tokens, torch.Tensor) else np.asarray(val_tokens)
    if tokens.ndim != 1:
        raise DataError("val_tokens must be one 1-D stream", field="val_tokens", expected="1-D", found=tokens.shape)
    return tokens


def _tables_of(lm) -> torch.Tensor:
    return lm.prior_tables.detach().float()


def lowrank_scorer(lowrank, chunk_rows: int = 1024) -> Callable:
    """A scorer with score_windows' signature for a predictor whose tier 1 is factored (golf.tiers.LowRank):
    golf::score_windows on chunks of `chunk_rows` positions, each with its own tier-1 rows after the dense
    ones (LowRank.batch_tables: at most 2 * chunk_rows rows of V floats at a time)."""

    def score(hidden, head_weight, tables, rows, targets, softcap, extra=None, prior_scales=None):
        out = []
        for lo in range(0, hidden.shape[0], chunk_rows):
            hi = min(lo + chunk_rows, hidden.shape[0])
            chunk_tables, chunk_rows_ = lowrank.batch_tables(tables, rows[lo:hi])
            part = None
            if extra is not None:
                r, c, v = extra
                here = (r >= lo) & (r < hi)
                part = (r[here] - lo, c[here], v[here])
            out.append(_score(ops.score_windows, hidden[lo:hi], head_weight, chunk_tables, chunk_rows_,
                              targets[lo:hi], softcap, part, None if prior_scales is None else prior_scales[lo:hi]))
        return torch.cat(out) if out else hidden.new_empty((0,), dtype=torch.float32)

    return score


def scorer(lm) -> Callable:
    """The scoring path of a predictor: golf::score_windows, or `lowrank_scorer` with a factored tier 1."""
    lowrank = getattr(lm, "lowrank", None)
    return ops.score_windows if lowrank is None else lowrank_scorer(lowrank)


def _score(score: Callable, hidden, head, tables, rows, targets, softcap: float, extra, scales=None) -> torch.Tensor:
    """score(...) with the copy head's sparse logits and the prior gate's weights when the model has them
    (scorers without the `extra` or `prior_scales` argument still serve models without them)."""
    kwargs = {}
    if extra is not None:
        kwargs["extra"] = extra
    if scales is not None:
        kwargs["prior_scales"] = scales
    return score(hidden, head, tables, rows, targets, softcap, **kwargs)


def _copy_at(transformer, hidden: torch.Tensor, x: torch.Tensor, positions: torch.Tensor, repeat: int = 1):
    """The copy head's sparse logits at `positions` (ascending) of the one window x [1, T], each row repeated
    `repeat` times in a row (as hidden.repeat_interleave(repeat, 0) repeats rows); None without a copy head."""
    keep = torch.zeros_like(x, dtype=torch.bool)
    keep[0, positions] = True
    extra = transformer.copy_logits(hidden, x, keep)
    if extra is None or repeat == 1:
        return extra
    rows, cols, vals = extra
    new_rows = (rows[:, None] * repeat + torch.arange(repeat, device=rows.device)).reshape(-1)
    order = torch.argsort(new_rows, stable=True)
    return new_rows[order], cols.repeat_interleave(repeat)[order], vals.repeat_interleave(repeat)[order]


@torch.no_grad()
def evaluate(lm, prior_rows: Callable, val_tokens, *, window: int, stride: int, byte_tables: ByteTables,
             batch_windows: int, dist=None, device="cpu", amp=None, score: Callable | None = None,
             plan: Callable = window_plan, progress: bool = True, hidden: Callable | None = None,
             record: Callable[[Scored], None] | None = None) -> EvalResult:
    """BPB of `lm` over val_tokens with the plan's windows; see the module docstring. `hidden` replaces
    lm.transformer.hidden (e.g. a torch.compile'd one: the same function, faster); `record` receives every
    batch's scores (`Scored`)."""
    if batch_windows < 1:
        raise ConfigError(f"batch_windows: expected >= 1, found {batch_windows}")
    device = torch.device(device)
    score = score or scorer(lm)
    rank, world = _rank_world(dist)
    tokens = _as_tokens(val_tokens)
    windows = np.asarray(plan(len(tokens), window, stride), dtype=np.int64).reshape(-1, 3)
    mine = windows[len(windows) * rank // world: len(windows) * (rank + 1) // world]
    transformer = lm.transformer
    hidden_of = hidden or transformer.hidden
    head, tables, softcap = transformer.head_weight.detach(), _tables_of(lm), transformer.softcap
    amp = amp or contextlib.nullcontext
    meter = BpbMeter(byte_tables)
    start_time = time.perf_counter()
    bar = Progress(f"eval window={window} stride={stride}", total=len(mine), unit="windows") \
        if progress and rank == 0 else None
    for batch in _batches(mine, batch_windows):
        length = int(batch[0, 1])
        chunk = _window_tokens(tokens, batch[:, 0], length).to(device)
        x, y = chunk[:, :-1], chunk[:, 1:]
        scored = torch.arange(length, device=device)[None, :] >= torch.from_numpy(batch[:, 2]).to(device)[:, None]
        with amp():
            h = hidden_of(x)
        rows = prior_rows(x)
        extra = transformer.copy_logits(h, x, scored)
        h_scored = h[scored]
        nll = _score(score, h_scored, head, tables, rows[scored].to(torch.int32), y[scored], softcap, extra,
                     transformer.prior_scales(h_scored))
        meter.add(nll, x[scored], y[scored])
        if record is not None:
            positions = (torch.from_numpy(batch[:, 0])[:, None] + torch.arange(length)[None, :] + 1)[scored.cpu()]
            record(Scored(positions, nll.detach().cpu(),
                          lambda x=x, scored=scored: full_log_probs(lm, prior_rows)(x)[scored]))
        if bar is not None:
            elapsed = time.perf_counter() - start_time
            bar.update(len(batch), targets=meter.targets, targets_per_s=f"{meter.targets / max(elapsed, 1e-9):.0f}")
    ops.check_device_indices(device)
    if world > 1:
        meter.all_reduce()
    seconds = time.perf_counter() - start_time
    if bar is not None:
        bar.close()
    return EvalResult(val_loss=meter.val_loss, val_bpb=meter.bpb, targets=meter.targets, bytes=meter.bytes,
                      seconds=seconds, tokens_per_s=meter.targets / seconds if seconds > 0 else math.inf,
                      window=window, stride=stride, windows=len(windows), nll_sum=meter.nll_sum)


# --- audit ---------------------------------------------------------------------------------------------

def full_log_probs(lm, prior_rows: Callable) -> Callable:
    """x [B, T] -> float64 [B, T, V]: log-softmax over the whole vocabulary of the tiered logits
    sum_k s_k T[rows_k] + softcap(l2) that the model uses at each position (s: the prior gate's weights, 1
    without one; plain PyTorch, fp32 logits)."""
    transformer = lm.transformer

    def predict(x: torch.Tensor) -> torch.Tensor:
        h = transformer.hidden(x).float()
        l2 = transformer.with_copy(h @ transformer.head_weight.detach().float().T, h, x)
        cap = transformer.softcap
        z = cap * torch.tanh(l2 / cap) if cap > 0 else l2
        prior = prior_logits(_tables_of(lm), prior_rows(x), transformer.prior_scales(h), getattr(lm, "lowrank", None))
        return torch.log_softmax((z + prior).double(), dim=-1)

    return predict


def _check(ok: bool, detail: str, **numbers) -> dict:
    return {"ok": bool(ok), "detail": detail, **numbers}


def _single_pass(plan_rows: np.ndarray, num_tokens: int) -> dict:
    try:
        counts = plan_coverage(plan_rows, num_tokens)[1:]
    except DataError as exc:
        return _check(False, f"the plan is malformed: {exc}", windows=len(plan_rows))
    twice, missed = np.flatnonzero(counts > 1) + 1, np.flatnonzero(counts == 0) + 1
    ok = not len(twice) and not len(missed)
    detail = (f"all {len(counts)} targets scored exactly once by {len(plan_rows)} windows" if ok else
              f"{len(twice)} targets scored more than once (first {twice[:5].tolist()}), "
              f"{len(missed)} targets never scored (first {missed[:5].tolist()}) of {len(counts)}")
    return _check(ok, detail, targets=len(counts), windows=len(plan_rows), duplicated=len(twice), missed=len(missed),
                  max_count=int(counts.max()) if len(counts) else 0)


@torch.no_grad()
def audit(lm, prior_rows: Callable, val_tokens, *, window: int, stride: int, positions: int = 32, seed: int = 0,
          plan: Callable = window_plan, score: Callable | None = None, predict: Callable | None = None,
          device="cpu", causal_tol: float = 0.0, norm_tol: float = 1e-4, consistency_tol: float = 1e-4,
          batch: int = 4) -> dict[str, dict]:
    """The four validity conditions on real val windows; see the module docstring."""
    if positions < 1:  # zero samples would FAIL consistency, as if the model were invalid
        raise ConfigError(f"audit positions: expected >= 1, found {positions}")
    device = torch.device(device)
    score = score or scorer(lm)
    tokens = _as_tokens(val_tokens)
    transformer = lm.transformer
    head, tables, softcap = transformer.head_weight.detach(), _tables_of(lm), transformer.softcap
    vocab = int(head.shape[0])
    predict = predict or full_log_probs(lm, prior_rows)
    plan_rows = np.asarray(plan(len(tokens), window, stride), dtype=np.int64).reshape(-1, 3)
    result = {"causality": None, "normalisation": None, "single_pass": _single_pass(plan_rows, len(tokens)),
              "consistency": None}

    # Sampled positions: up to `per_window` from each window, the first and the last (the tail) window always,
    # then random windows until `positions` are drawn. Position j predicts x[j+1]; only j with x[j+1] inside
    # the window can have its target perturbed, so scored j < length-1 (any j < length-1 when none is).
    rng = np.random.default_rng(seed)
    per_window = max(1, math.ceil(positions / max(2, positions // 4)))
    extra = rng.choice(len(plan_rows), size=min(len(plan_rows), 4 * positions + 2), replace=False).tolist()
    order = list(dict.fromkeys([0, len(plan_rows) - 1] + extra)) if len(plan_rows) else []
    sampled: dict[int, np.ndarray] = {}
    drawn = 0
    for w in order:
        if drawn >= positions:
            break
        start, length, score_from = (int(v) for v in plan_rows[w])
        if start < 0 or start + length > len(tokens) - 1 or not 0 <= score_from < length or length < 2:
            continue  # a malformed window is single_pass's finding; nothing to run here
        lo = score_from if score_from < length - 1 else 0
        take = min(per_window, length - 1 - lo, positions - drawn)
        sampled[w] = np.sort(rng.choice(np.arange(lo, length - 1), size=take, replace=False))
        drawn += take
    gen = torch.Generator().manual_seed(seed)

    causal_diff, causal_checked = 0.0, 0
    norm_pred, norm_score, norm_checked = 0.0, 0.0, 0
    cons_diff, cons_checked, cons_where = 0.0, 0, None
    for w, cand in sorted(sampled.items()):
        start, length, score_from = (int(v) for v in plan_rows[w])
        chunk = _window_tokens(tokens, np.array([start]), length).to(device)
        x, y = chunk[:, :-1], chunk[0, 1:]
        logp = predict(x)[0]                                                   # [T, V] float64
        hidden, rows_all = transformer.hidden(x)[0], prior_rows(x)[0].to(torch.int32)  # the scoring path's inputs
        scales_all = transformer.prior_scales(hidden)                          # [T, K] or None

        # causality: perturb x[j+1:] (the target included) and compare the whole distribution at j with that of
        # an unperturbed copy in the same batch (row 0): one batch shape for both, so kernels whose arithmetic
        # depends on the batch (GPU GEMMs) still give a difference of exactly 0 to a causal model.
        for b in range(0, len(cand), batch):
            js = cand[b:b + batch]
            xs = x.repeat(len(js) + 1, 1)
            for i, j in enumerate(js.tolist(), start=1):
                shift = torch.randint(1, vocab, (length - j - 1,), generator=gen).to(device)
                xs[i, j + 1:] = (xs[i, j + 1:] + shift) % vocab
            changed = predict(xs)
            for i, j in enumerate(js.tolist(), start=1):
                causal_diff = max(causal_diff, float((changed[i, j] - changed[0, j]).abs().max()))
                causal_checked += 1

        # normalisation: predict's distribution, and the scoring path asked about every vocabulary id.
        if len(cand):
            js = torch.from_numpy(cand).to(device)
            norm_pred = max(norm_pred, float((logp[js].exp().sum(-1) - 1).abs().max()))
            h, rows = hidden[js], rows_all[js]
            every = torch.arange(vocab, device=device).repeat(len(js))
            nll_all = _score(score, h.repeat_interleave(vocab, 0), head, tables, rows.repeat_interleave(vocab, 0),
                             every, softcap, _copy_at(transformer, hidden, x, js, repeat=vocab),
                             None if scales_all is None else scales_all[js].repeat_interleave(vocab, 0))
            total = torch.exp(-nll_all.double()).view(len(js), vocab).sum(-1)
            norm_score = max(norm_score, float((total - 1).abs().max()))
            norm_checked += len(js)

        # consistency: the scoring op against predict at every scored position of the window.
        pos = torch.arange(score_from, length, device=device)
        nll = _score(score, hidden[pos], head, tables, rows_all[pos], y[pos], softcap,
                     _copy_at(transformer, hidden, x, pos), None if scales_all is None else scales_all[pos]).double()
        ref = -logp[pos, y[pos]]
        diff = (nll - ref).abs()
        if float(diff.max()) > cons_diff:
            cons_diff, cons_where = float(diff.max()), start + int(pos[int(diff.argmax())]) + 1
        cons_checked += len(pos)

    result["causality"] = _check(
        causal_checked > 0 and causal_diff <= causal_tol,
        f"{causal_checked} positions in {len(sampled)} windows: replacing the target and every later token changed "
        f"log p at the position by at most {causal_diff:.3g} (tolerance {causal_tol:g})",
        max_abs_diff=causal_diff, tolerance=causal_tol, positions=causal_checked)
    result["normalisation"] = _check(
        norm_checked > 0 and norm_pred <= norm_tol and norm_score <= norm_tol,
        f"{norm_checked} positions: |sum_v p(v) - 1| <= {norm_pred:.3g} for the model's distribution and "
        f"<= {norm_score:.3g} for the scoring op over all {vocab} ids (tolerance {norm_tol:g})",
        max_abs_error_predict=norm_pred, max_abs_error_score=norm_score, tolerance=norm_tol, positions=norm_checked)
    result["consistency"] = _check(
        cons_checked > 0 and cons_diff <= consistency_tol,
        f"{cons_checked} scored targets: |score nll + log p(target)| <= {cons_diff:.3g} nats"
        + (f" (largest at target {cons_where})" if cons_where is not None else "")
        + f" (tolerance {consistency_tol:g})",
        max_abs_diff=cons_diff, tolerance=consistency_tol, positions=cons_checked)
    return result


# --- the audit of a whole method -----------------------------------------------------------------------

def _by_target(events: list[Scored], num_tokens: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(count, order, nll) per stream position: how often it was scored, the event that scored it (-1: none),
    its NLL there."""
    count = np.zeros(num_tokens, dtype=np.int64)
    order = np.full(num_tokens, -1, dtype=np.int64)
    nll = np.full(num_tokens, np.nan)
    for e, ev in enumerate(events):
        pos = ev.positions.cpu().numpy().astype(np.int64)
        np.add.at(count, pos, 1)
        order[pos], nll[pos] = e, ev.nll.double().cpu().numpy()
    return count, order, nll


def audit_method(run: Callable, val_tokens, *, vocab: int, bos_id: int, reruns: int = 4, events: int = 8,
                 seed: int = 0, causal_tol: float = 0.0, norm_tol: float = 1e-4,
                 consistency_tol: float = 1e-4) -> dict[str, dict]:
    """ANCHOR §8's conditions for any scoring method, stateful ones (test-time training) included, measured on
    what it actually scored: `run(tokens, record) -> EvalResult` runs the method on a stream and passes every
    scoring event (`Scored`) to record.
      causality      score first: for `reruns` sampled positions s, the stream with token s replaced by
                     another non-BOS id is scored again; every target scored before target s (or in the same
                     event and earlier in the stream) must keep its NLL (max |delta| <= causal_tol, 0 by
                     default: the same shapes make a CPU run bit-exact). A method that learns from a chunk
                     before scoring it fails.
      normalisation  at `events` sampled events, sum_v p(v) = 1 +- norm_tol for the distributions scored.
      single_pass    the events score each of the N-1 targets exactly once.
      consistency    the metered NLL at those events equals -log p(target) of their distribution, and the
                     result's NLL sum is the sum of what the events scored."""
    tokens = _as_tokens(val_tokens).astype(np.int64)
    n = len(tokens)
    rng = np.random.default_rng(seed)
    seen: list[Scored] = []
    result = run(tokens, seen.append)
    count, order, nll = _by_target(seen, n)
    result_single = _single_pass_counts(count[1:], len(seen))

    # normalisation and consistency on sampled events: the first, the last, then random ones.
    picks = list(dict.fromkeys([0, len(seen) - 1] + rng.permutation(len(seen)).tolist()))[:events] if seen else []
    norm_err, cons_err, checked = 0.0, 0.0, 0
    for e in picks:
        ev = seen[e]
        with torch.no_grad():
            logp = ev.log_probs().double().cpu()
        norm_err = max(norm_err, float((logp.exp().sum(-1) - 1).abs().max()))
        targets = torch.from_numpy(tokens[ev.positions.cpu().numpy()])
        ref = -logp.gather(1, targets[:, None])[:, 0]
        cons_err = max(cons_err, float((ev.nll.double().cpu() - ref).abs().max()))
        checked += len(targets)
    recorded = float(np.nansum(nll))
    sum_err = abs(result.nll_sum - recorded) / max(abs(recorded), 1.0)

    # causality: one token changed at a time.
    candidates = np.flatnonzero(tokens[1:] != bos_id) + 1
    changed = rng.choice(candidates, size=min(reruns, len(candidates)), replace=False) if len(candidates) else []
    causal_diff, compared, where = 0.0, 0, None
    idx = np.arange(n)
    for s in sorted(int(v) for v in changed):
        other = tokens.copy()
        new = int(rng.integers(vocab - 2))  # an id other than BOS and the token itself
        for skip in sorted({bos_id, int(tokens[s])}):
            new += new >= skip
        other[s] = new
        again: list[Scored] = []
        run(other, again.append)
        _, order2, nll2 = _by_target(again, n)
        before = (order >= 0) & ((order < order[s]) | ((order == order[s]) & (idx < s)))
        if not before.any():
            continue
        same_order = bool((order2[before] == order[before]).all())
        diff = float(np.abs(nll2[before] - nll[before]).max()) if same_order else math.inf
        if diff > causal_diff:
            causal_diff, where = diff, s
        compared += int(before.sum())

    return {
        "causality": _check(
            compared > 0 and causal_diff <= causal_tol,
            f"{len(changed)} reruns with one token changed: the {compared} targets scored before it moved by at "
            f"most {causal_diff:.3g}" + (f" (changing token {where})" if where is not None else "")
            + f" (tolerance {causal_tol:g})",
            max_abs_diff=causal_diff, tolerance=causal_tol, reruns=len(changed), targets=compared),
        "normalisation": _check(
            checked > 0 and norm_err <= norm_tol,
            f"{checked} scored targets in {len(picks)} events: |sum_v p(v) - 1| <= {norm_err:.3g} over all {vocab} "
            f"ids (tolerance {norm_tol:g})", max_abs_error=norm_err, tolerance=norm_tol, positions=checked),
        "single_pass": result_single,
        "consistency": _check(
            checked > 0 and cons_err <= consistency_tol and sum_err <= 1e-9,
            f"{checked} scored targets: |nll + log p(target)| <= {cons_err:.3g} nats (tolerance {consistency_tol:g}); "
            f"the metered NLL sum is the events' to {sum_err:.2g} (relative)",
            max_abs_diff=cons_err, tolerance=consistency_tol, sum_rel_error=sum_err, positions=checked),
    }


def _single_pass_counts(counts: np.ndarray, events: int) -> dict:
    twice, missed = np.flatnonzero(counts > 1) + 1, np.flatnonzero(counts == 0) + 1
    ok = not len(twice) and not len(missed)
    detail = (f"all {len(counts)} targets scored exactly once in {events} scoring events" if ok else
              f"{len(twice)} targets scored more than once (first {twice[:5].tolist()}), "
              f"{len(missed)} targets never scored (first {missed[:5].tolist()}) of {len(counts)}")
    return _check(ok, detail, targets=len(counts), events=events, duplicated=len(twice), missed=len(missed),
                  max_count=int(counts.max()) if len(counts) else 0)
