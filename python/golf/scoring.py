"""One evaluation entry point: which val tokens are scored, by which method, and within which budget.

    spec = EvalSpec(method="sliding", window=2048, stride=64)         # or eval_spec(train_config)
    tokens, files = val_tokens(data_path, vocab_size, spec)            # the one rule for --val-tokens
    result = score_artifact(model, spec, tokens, byte_tables=..., dist=..., device=..., amp=..., hidden=...)

`model` is anything with `.lm` (a TieredLM) and `.prior_rows` (golf.export.LoadedModel, or `Predictor` for a
model still in memory). `golf.train` (its periodic, final and artifact evals), `golf.eval`, `golf.experiment`
and the benches all score through `score_artifact`.

Which tokens (`cut_val`): `val_tokens` N > 0 keeps the first N targets (N+1 tokens) of the val stream, 0 all of
them; the plain eval (stride >= window) then keeps whole windows only, as the challenge truncates the split, so
it scores floor(N / window) * window targets and the sliding and TTT methods N.

Methods (`METHODS`), one signature (`method(model, spec, tokens, ctx) -> EvalResult`) that the audit also runs:
    sliding   golf.evaluate.evaluate over window_plan(window, stride): a fixed predictor (stride >= window: plain)
    ttt       golf.ttt.evaluate_ttt: score-first LoRA test-time training with spec.ttt's settings

The budget: before the pass, `projected_seconds` runs the method on synthetic tokens (never val data) shaped like
one batch of the real work, times it (after a warm-up, so compilation is not counted) and scales it to this
run's work on its ranks; over `budget_seconds` it refuses (BudgetError) unless `over_budget`. After the pass the
measured rate gives `derived_8x_seconds`, the full split of the vocabulary's challenge (FULL_SPLIT_TARGETS) on 8
ranks of this device, labelled derived, and whether that fits the challenge's 600 s.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from golf.data import ByteTables, check_token_ids, find_shards, load_val_tokens
from golf.errors import BudgetError, ConfigError, DataError
from golf.evaluate import EvalResult, Scored, _rank_world, evaluate, window_plan
from golf.runtime import sync
from golf.ttt import TTTConfig, check_config as check_ttt, evaluate_ttt, find_documents, group_cost

METHODS = ("sliding", "ttt")
DEFAULT_BATCH_TOKENS = 65536   # tokens per eval forward per rank, wherever nothing else is set
EVAL_BUDGET_SECONDS = 600.0    # the challenge's eval budget on 8xH100
# Targets of the challenge's full val split per vocabulary (ANCHOR.md §1.1), for the derived 8-GPU time.
FULL_SPLIT_TARGETS = {1024: 62_021_632, 4096: 45_508_608, 8192: 40_540_160}


@dataclass(frozen=True)
class EvalSpec:
    method: str = "sliding"
    window: int = 1024                  # tokens per window (sliding) or context per chunk (ttt, unless ttt.window)
    stride: int = 64                    # sliding: targets scored per window after the first; >= window: plain
    batch_tokens: int = DEFAULT_BATCH_TOKENS
    val_tokens: int = 0                 # score the first N targets (0: the whole split)
    ttt: TTTConfig = field(default_factory=TTTConfig)
    budget_seconds: float = EVAL_BUDGET_SECONDS  # 0: no projection, no refusal
    over_budget: bool = False           # run even when the projected time exceeds the budget

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConfigError(f"eval method: expected one of {', '.join(METHODS)}, found {self.method!r}")
        for name, ok, expected in (("window", self.window >= 1, ">= 1"), ("stride", self.stride >= 1, ">= 1"),
                                   ("batch_tokens", self.batch_tokens >= 1, ">= 1"),
                                   ("val_tokens", self.val_tokens >= 0, ">= 0 (0 = all)"),
                                   ("budget_seconds", self.budget_seconds >= 0, ">= 0 (0 = no budget)")):
            if not ok:
                raise ConfigError(f"eval {name}: expected {expected}, found {getattr(self, name)!r}")
        if self.method == "ttt":
            check_ttt(self.ttt)

    @property
    def plain(self) -> bool:
        return self.method == "sliding" and self.stride >= self.window

    @property
    def batch_windows(self) -> int:
        return max(1, self.batch_tokens // self.window)

    def replace(self, **changes) -> "EvalSpec":
        return dataclasses.replace(self, **changes)


def eval_spec(cfg, method: str | None = None) -> EvalSpec:
    """The spec of a golf.train config (TrainConfig): its artifact eval, or `method` with the same settings."""
    return EvalSpec(method=method or cfg.eval_method, window=cfg.eval_window or cfg.train_seq_len,
                    stride=cfg.eval_stride, batch_tokens=cfg.val_batch_tokens, val_tokens=cfg.val_tokens,
                    ttt=cfg.ttt, budget_seconds=cfg.eval_budget_seconds, over_budget=cfg.eval_over_budget)


def plain_spec(spec: EvalSpec, seq_len: int) -> EvalSpec:
    """The challenge's plain eval (non-overlapping seq_len windows) on the same tokens and batch."""
    return spec.replace(method="sliding", window=seq_len, stride=seq_len)


# --- which tokens --------------------------------------------------------------------------------------

def cut_val(stream: np.ndarray, spec: EvalSpec) -> np.ndarray:
    """The tokens `spec` scores out of the whole val stream; see the module docstring."""
    tokens = stream[:spec.val_tokens + 1] if spec.val_tokens else stream
    if spec.plain:
        usable = (len(tokens) - 1) // spec.window * spec.window
        if usable == 0:
            raise ConfigError(f"val_tokens (--val-tokens)={spec.val_tokens or len(stream) - 1}: less than one plain "
                              f"window of {spec.window} tokens")
        tokens = tokens[:usable + 1]
    if len(tokens) < 2:
        raise DataError("validation stream has no target to score", field="num_tokens", expected=">= 2",
                        found=len(tokens))
    return tokens


def val_tokens(data_path, vocab_size: int, spec: EvalSpec) -> tuple[np.ndarray, list]:
    """(tokens, files): the val shards of data_path cut for `spec`, their ids checked against the vocabulary."""
    files = find_shards(data_path, "val")
    tokens = cut_val(load_val_tokens(files), spec)
    check_token_ids(tokens, vocab_size, files[0])
    return tokens, files


# --- methods -------------------------------------------------------------------------------------------

@dataclass
class Predictor:
    """A model to score: the TieredLM and its prior-row builder (what golf.export.load_model returns, too)."""
    lm: object
    prior_rows: Callable


@dataclass
class Context:
    byte_tables: ByteTables
    dist: object = None
    device: object = "cpu"
    amp: Callable | None = None
    hidden: Callable | None = None      # a compiled transformer.hidden for the sliding method
    progress: bool = True
    record: Callable[[Scored], None] | None = None
    ttt_runner: type | None = None      # golf.ttt.DocTTT or a variant (the audit's tests)


def _sliding(model, spec: EvalSpec, tokens, ctx: Context) -> EvalResult:
    return evaluate(model.lm, model.prior_rows, tokens, window=spec.window, stride=spec.stride,
                    byte_tables=ctx.byte_tables, batch_windows=spec.batch_windows, dist=ctx.dist, device=ctx.device,
                    amp=ctx.amp, progress=ctx.progress, hidden=ctx.hidden, record=ctx.record)


def _ttt(model, spec: EvalSpec, tokens, ctx: Context) -> EvalResult:
    kw = {} if ctx.ttt_runner is None else {"runner": ctx.ttt_runner}
    return evaluate_ttt(model.lm, model.prior_rows, tokens, cfg=spec.ttt, window=spec.window,
                        byte_tables=ctx.byte_tables, dist=ctx.dist, device=ctx.device, amp=ctx.amp,
                        progress=ctx.progress, record=ctx.record, **kw)


RUN = {"sliding": _sliding, "ttt": _ttt}


def run_method(model, spec: EvalSpec, tokens, ctx: Context) -> EvalResult:
    """The method's pass alone (no budget): what score_artifact times and the audit reruns."""
    return RUN[spec.method](model, spec, tokens, ctx)


def score_artifact(model, spec: EvalSpec, tokens, *, byte_tables: ByteTables, dist=None, device="cpu",
                   amp: Callable | None = None, hidden: Callable | None = None, progress: bool = True,
                   log: Callable | None = None) -> EvalResult:
    """BPB of `model` on `tokens` by spec.method, refused first when its projected time exceeds the budget;
    the result's `info` carries the method's own facts, the projection and the derived 8-GPU time."""
    ctx = Context(byte_tables, dist, device, amp, hidden, progress)
    _, world = _rank_world(dist)
    info: dict = {"method": spec.method}
    if spec.budget_seconds > 0:
        projected = projected_seconds(model, spec, tokens, ctx)
        info.update(projected_seconds=projected, budget_seconds=spec.budget_seconds)
        if log is not None:
            log("eval_budget", method=spec.method, projected_seconds=f"{projected:.1f}",
                budget_seconds=spec.budget_seconds, over_budget=spec.over_budget)
        if projected > spec.budget_seconds and not spec.over_budget:
            raise BudgetError(f"eval method {spec.method}: projected {projected:.0f} s for {len(tokens) - 1:,} "
                              f"targets on {world} rank(s), over the budget of {spec.budget_seconds:.0f} s "
                              "(measured on synthetic tokens at the start); score fewer tokens (--val-tokens), use "
                              "more ranks, or allow it (--over-budget)")
    result = run_method(model, spec, tokens, ctx)
    info.update(result.info or {})
    info.update(derived_budget(result, model.lm.transformer.head_weight.shape[0], world))
    return dataclasses.replace(result, method=spec.method, info=info)


def derived_budget(result: EvalResult, vocab_size: int, world: int) -> dict:
    """The full split of this vocabulary on 8 ranks of this device at the measured rate (derived, not measured)."""
    full = FULL_SPLIT_TARGETS.get(vocab_size)
    if full is None or result.seconds <= 0 or result.targets == 0:
        return {"derived_8x_seconds": None, "derived_8x_fits": None}
    per_rank = result.targets / result.seconds / world
    seconds = full / (per_rank * 8)
    return {"derived_8x_seconds": seconds, "derived_8x_fits": seconds <= EVAL_BUDGET_SECONDS,
            "derived_from": f"{per_rank:,.0f} targets/s per rank measured on {result.targets:,} targets; "
                            f"{full:,} targets on 8 ranks"}


# --- the projection ------------------------------------------------------------------------------------

def _synthetic(n: int, vocab: int, bos_id: int, gen: np.random.Generator) -> np.ndarray:
    """Random non-BOS ids (never val data): timing does not depend on the token values."""
    ids = gen.integers(0, vocab - 1, size=n)
    return np.where(ids >= bos_id, ids + 1, ids).astype(np.int64)


def projected_seconds(model, spec: EvalSpec, tokens, ctx: Context) -> float:
    """Seconds the method would take on `tokens` on these ranks: one batch of synthetic work timed after a
    warm-up pass of the same shape, scaled by the real work (windows, or tokens forwarded with TTT); the
    slowest rank's figure on every rank."""
    rank, world = _rank_world(ctx.dist)
    lm = model.lm
    vocab, bos = int(lm.transformer.head_weight.shape[0]), int(lm.transformer.cfg.bos_id)
    gen = np.random.default_rng(1234)
    quiet = dataclasses.replace(ctx, progress=False, record=None, dist=ONE_RANK)
    tokens = np.asarray(tokens)
    if spec.method == "sliding":
        plan = window_plan(len(tokens), spec.window, spec.stride)
        mine = len(plan) * (rank + 1) // world - len(plan) * rank // world
        probe_windows = min(spec.batch_windows, len(plan))
        step = spec.window if spec.plain else spec.stride
        n = (probe_windows - 1) * step + spec.window + 1 if probe_windows > 1 else int(plan[0, 1]) + 1
        probe = _synthetic(n, vocab, bos, gen)
        probe_spec, probe_units = spec, len(window_plan(n, spec.window, spec.stride))
        units = mine
    else:
        window = spec.ttt.window or spec.window
        docs = find_documents(tokens, bos)
        cost = group_cost(docs, np.arange(len(docs)), spec.ttt.chunk, window)  # every document's chunks
        # One group of the median document length (at most the window): the shape most groups have.
        length = int(min(max(np.median(docs[:, 1]), 2), window + 1))
        count = min(spec.ttt.batch_docs, len(docs))
        probe = np.concatenate([np.concatenate([[bos], _synthetic(length - 1, vocab, bos, gen)])
                                for _ in range(count)] + [[bos]])
        probe_spec = spec.replace(ttt=dataclasses.replace(spec.ttt, phases=0))
        pdocs = find_documents(probe, bos)
        probe_units = group_cost(pdocs, np.arange(len(pdocs)), spec.ttt.chunk, window)
        # Phase k trains once on (at most) the shortest prefix_docs * k / phases documents' tokens: counted as
        # tokens forwarded, like the chunks' (both are a forward and a backward per token).
        lengths = np.sort(docs[:, 1])
        sgd = sum(int(lengths[:spec.ttt.prefix_docs * (k + 1) // spec.ttt.phases].sum())
                  for k in range(spec.ttt.phases))
        units = (cost + sgd) / world
    run_method(model, probe_spec, probe, quiet)  # warm-up: compilation, allocator
    device = torch.device(ctx.device)
    sync(device)
    t = time.perf_counter()
    run_method(model, probe_spec, probe, quiet)
    sync(device)
    per_unit = (time.perf_counter() - t) / max(probe_units, 1)
    projected = torch.tensor([per_unit * units], dtype=torch.float64)
    if world > 1:  # the slowest rank decides, on every rank
        nccl = torch.distributed.get_backend() == "nccl"
        projected = projected.cuda() if nccl else projected
        torch.distributed.all_reduce(projected, op=torch.distributed.ReduceOp.MAX)
    return float(projected.cpu())


class _OneRank:
    rank, world_size = 0, 1


ONE_RANK = _OneRank()  # a `dist` for work each rank does alone (the projection's probes, the audit's reruns)
