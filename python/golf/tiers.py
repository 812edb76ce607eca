"""Tiers 0 and 1 of the Tiered Residual Predictor: priors fit by counting, whose logits are added to tier 2's.

Context (ONE function, `context`, used unchanged by fitting, training, evaluation and the audit)
    For ids [..., T] (a training sequence or an eval window), position t predicts ids[t] from:
      prev1[t] = ids[t-1], or -1 at the window start;
      prev2[t] = ids[t-2], or -1 at the window start or when ids[t-1] is BOS (a new document: what came
                 before its BOS belongs to another document);
      open brackets / open quotes among ids[doc start .. t-1] (the doc start being the last BOS, or the
      window start);
      state[t] = the tier-0 state id built from the classes of prev1 and prev2 and those two flags.

Tier 0, structural prior (`Tier0`)
    Every id has exactly one class (`CLASSES`, derived from the tokenizer's pieces by `token_classes`).
    log p0(y | state) = log p(class(y) | state) + log p(y | class(y)), fit by counting in one pass with
    hierarchical additive smoothing (state -> (prev1 class, flags) -> class unigram). Stored: log p(c|s)
    fp32 [S, C] and log p(y|c) fp16 [V] (63.5 KB at V=1024); each state's distribution over the full
    vocabulary sums to 1 as stored (the fp16 rounding is folded into the fp32 class table).

Tier 1, local lexical prior (`Tier1`)
    Logits for every id from the previous token (rows U1 [V, r1] @ W1 [V, r1]^T) and from the previous two
    (rows U2 [H, r2] @ W2 [V, r2]^T, H = `pair_rows`). Which row a (prev2, prev1) pair reads (`pair_bucket`):
    "top" (default): the H-1 pairs most frequent in training each own a row (their sorted keys prev2*V + prev1
    are stored with the tier), every other pair shares the last one; "hash": the records' BigramHash of the
    pair into H buckets. At equal H, "top" is 0.033 BPB better standalone (bench/RESULTS.md): a hash mixes
    each frequent pair with a dozen others. Closed-form init from counts in one pass: smoothed log-ratios
    (bigram over tier 0; previous-two over the bigram), factorised by a count-weighted truncated SVD; then,
    optionally, a short burst of Adam on the factors (tier 0 frozen) over the training stream folded by context
    (`context_counts`). Size scales with V*r1 + (H + V)*r2 (+ H keys), never V*V.

Both tiers reach the loss through per-position `prior_rows` [N, 3] int32 (-1 = none) in one of two forms
(`TierConfig.tier1_form`, `Tiers.factored`):
  dense     rows of one `prior_tables` [R, V] fp32 (tier-0 states, then tier-1 prev rows, then tier-1
            previous-two rows), as golf::tiered_loss takes them: R * V floats, (S + V + H) * V, which is
            104 MiB at V = 1024 and 1.1 GB at V = 8192;
  factored  `prior_tables` holds the tier-0 rows only (S * V: 32 MiB at V = 8192) and tier 1 its factors
            (`LowRank`, 16 MiB): the tier-1 rows a batch names, u1[prev1] @ w1^T and u2[pair] @ w2^T, each
            once, are materialised by two GEMMs after the tier-0 rows and read by the same loss ops, softcap and
            gates unchanged. "auto" (default) takes dense while its rows fit DENSE_PRIOR_BYTES.
`prior_logits` is the one PyTorch form of what the tiers add to the logits, in either form.
"""

from __future__ import annotations

import contextlib
import dataclasses
import lzma
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from golf import ops
from golf.errors import ConfigError

# --- token classes -------------------------------------------------------------------------------------

CLASSES = ("control", "byte", "space", "digit", "sentence_end", "comma", "open", "close", "quote", "apostrophe",
           "punct", "space_cap_word", "space_lower_word", "cap_word", "lower_word")
C = len(CLASSES)
NONE = C  # context class of a position with no such previous token
OPENERS, CLOSERS = "([{\u201c\u2018", ")]}\u201d"
CURLY_OPEN, CURLY_CLOSE, STRAIGHT_QUOTE = "\u201c", "\u201d", '"'
HASH_A, HASH_B = 36313, 27191  # the records' BigramHash multipliers


def classify_piece(piece: str, *, control: bool, byte: bool) -> int:
    """The class of one SentencePiece piece; the order of the checks decides ties."""
    if control:
        return CLASSES.index("control")
    if byte:
        return CLASSES.index("byte")
    spaced = piece.startswith("\u2581")
    core = piece.lstrip("\u2581")
    if not core.strip():
        return CLASSES.index("space")
    letters = [ch for ch in core if ch.isalpha()]
    if letters:
        cap = letters[0].isupper()
        name = ("space_" if spaced else "") + ("cap_word" if cap else "lower_word")
        return CLASSES.index(name)
    if any(ch.isdigit() for ch in core):
        return CLASSES.index("digit")
    if any(ch in ".!?\u2026" for ch in core):
        return CLASSES.index("sentence_end")
    if any(ch in ",;:" for ch in core):
        return CLASSES.index("comma")
    if any(ch in OPENERS for ch in core):
        return CLASSES.index("open")
    if any(ch in CLOSERS for ch in core):
        return CLASSES.index("close")
    if STRAIGHT_QUOTE in core:
        return CLASSES.index("quote")
    if any(ch in "'\u2019" for ch in core):
        return CLASSES.index("apostrophe")
    return CLASSES.index("punct")


@dataclass(frozen=True)
class Vocab:
    """What the tiers need from the tokenizer, per id: class and bracket/quote deltas."""

    classes: torch.Tensor        # int64 [V]
    bracket_delta: torch.Tensor  # int64 [V]: opening minus closing brackets in the piece
    curly_delta: torch.Tensor    # int64 [V]: opening minus closing curly quotes
    straight: torch.Tensor       # int64 [V]: straight double quotes (each toggles)
    bos_id: int

    @property
    def vocab_size(self) -> int:
        return int(self.classes.numel())

    @classmethod
    def from_tokenizer(cls, sp) -> "Vocab":
        v = sp.vocab_size()
        classes, bracket, curly, straight = (np.zeros(v, dtype=np.int64) for _ in range(4))
        for i in range(v):
            control = bool(sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i))
            piece = "" if control else sp.id_to_piece(i)
            classes[i] = classify_piece(piece, control=control, byte=bool(sp.is_byte(i)))
            if not control and not sp.is_byte(i):
                bracket[i] = sum(ch in "([{" for ch in piece) - sum(ch in ")]}" for ch in piece)
                curly[i] = piece.count(CURLY_OPEN) - piece.count(CURLY_CLOSE)
                straight[i] = piece.count(STRAIGHT_QUOTE)
        t = torch.from_numpy
        return cls(t(classes), t(bracket), t(curly), t(straight), int(sp.bos_id()))


# --- context: the one function -------------------------------------------------------------------------

NUM_STATES = (C + 1) * (C + 1) * 4


@dataclass
class Context:
    prev1: torch.Tensor  # int64, like ids; -1 = none
    prev2: torch.Tensor  # int64, like ids; -1 = none
    state: torch.Tensor  # int64, like ids; in [0, NUM_STATES)


def _since_doc_start(values: torch.Tensor, is_bos: torch.Tensor) -> torch.Tensor:
    """Inclusive running sum of `values` along the last dim, restarted at every BOS."""
    total = values.cumsum(-1)
    pos = torch.arange(values.shape[-1], device=values.device).expand_as(values)
    last_bos = torch.where(is_bos, pos, torch.full_like(pos, -1)).cummax(-1).values
    base = torch.where(last_bos >= 0, total.gather(-1, last_bos.clamp(min=0)), torch.zeros_like(total))
    return total - base


def _shift(x: torch.Tensor, k: int, fill: int) -> torch.Tensor:
    """x delayed by k along the last dim: out[..., t] = x[..., t-k], `fill` for t < k."""
    out = torch.full_like(x, fill)
    out[..., k:] = x[..., :-k]
    return out


def context(ids: torch.Tensor, vocab: Vocab) -> Context:
    """Context features of every position of ids [..., T]; see the module docstring."""
    ids = ids.long()
    is_bos = ids == vocab.bos_id
    prev1 = _shift(ids, 1, -1)
    prev2 = _shift(ids, 2, -1)
    prev2 = torch.where(prev1 == vocab.bos_id, torch.full_like(prev2, -1), prev2)
    dev = ids.device
    bracket = _since_doc_start(vocab.bracket_delta.to(dev)[ids], is_bos) > 0
    curly = _since_doc_start(vocab.curly_delta.to(dev)[ids], is_bos) > 0
    straight = _since_doc_start(vocab.straight.to(dev)[ids], is_bos) % 2 == 1
    quote = curly | straight
    # The flags after token t-1 are the state of position t.
    bracket, quote = _shift(bracket.long(), 1, 0), _shift(quote.long(), 1, 0)
    classes = torch.cat([vocab.classes.to(dev), torch.tensor([NONE], device=dev)])  # index -1 -> NONE
    c1, c2 = classes[prev1], classes[prev2]
    state = ((c1 * (C + 1) + c2) * 2 + bracket) * 2 + quote
    return Context(prev1, prev2, state)


def hash_bucket(ctx: Context, buckets: int) -> torch.Tensor:
    """Tier-1 hash of (prev2, prev1) into [0, buckets), or -1 where prev2 is none."""
    h = torch.bitwise_xor(HASH_A * ctx.prev2, HASH_B * ctx.prev1) % buckets
    return torch.where(ctx.prev2 >= 0, h, torch.full_like(h, -1))


def pair_key_dtype(vocab_size: int) -> torch.dtype:
    return torch.int32 if vocab_size * vocab_size < 2**31 else torch.int64


def top_pairs(ctx: Context, vocab_size: int, n: int, reduce: Callable = lambda t: t) -> torch.Tensor:
    """The keys prev2 * V + prev1 of the n most frequent (prev2, prev1) pairs in ctx, sorted ascending (ties
    in count: the smaller key first, so a fit is reproducible). Counted densely over all V^2 keys (8 bytes
    each), so that `reduce` (fit_tiers) can sum the counts of several processes' parts of one stream."""
    ok = ctx.prev2 >= 0
    count = reduce(torch.bincount((ctx.prev2 * vocab_size + ctx.prev1)[ok], minlength=vocab_size * vocab_size))
    keys = count.nonzero().flatten()
    top = keys[torch.argsort(count[keys], descending=True, stable=True)[:n]]
    return top.sort().values.to(pair_key_dtype(vocab_size))


def pair_bucket(ctx: Context, vocab_size: int, rows: int, keys: torch.Tensor | None) -> torch.Tensor:
    """The row in [0, rows) of tier 1's previous-two table for each position, -1 where prev2 is none. With
    keys (sorted pair keys, `top_pairs`): the pair's index among them, or rows - 1 (the shared row) when it
    is not one of them. Without: the records' hash."""
    if keys is None:
        return hash_bucket(ctx, rows)
    key = ctx.prev2.clamp(min=0) * vocab_size + ctx.prev1.clamp(min=0)
    row = torch.full_like(key, rows - 1)
    if keys.numel():
        keys = keys.to(key.device, torch.int64)
        at = torch.searchsorted(keys, key).clamp(max=keys.numel() - 1)
        row = torch.where(keys[at] == key, at, row)
    return torch.where(ctx.prev2 >= 0, row, torch.full_like(row, -1))


# --- tier 0 --------------------------------------------------------------------------------------------

@dataclass
class Tier0:
    classes: torch.Tensor     # int64 [V]
    log_pc: torch.Tensor      # fp32 [NUM_STATES, C]: log p(class | state), fp16 rounding of log_py folded in
    log_py: torch.Tensor      # fp16 [V]: log p(y | class(y))

    def rows(self) -> torch.Tensor:
        """fp32 [NUM_STATES, V]: log p0(y | state) for every id."""
        return self.log_pc[:, self.classes] + self.log_py.float()[None, :]

    def nbytes(self) -> int:
        return self.log_pc.numel() * 4 + self.log_py.numel() * 2


def fit_tier0(ids: torch.Tensor, ctx: Context, vocab: Vocab, smoothing: float = 4.0,
              reduce: Callable = lambda t: t) -> Tier0:
    """Count (state, class of next) and next-token frequencies over ids [N]; one pass each. reduce: fit_tiers'."""
    v = vocab.vocab_size
    cls = vocab.classes[ids]
    n = reduce(ops.count_next(ctx.state, cls, NUM_STATES, C)).double()   # [S, C]
    p_c = (n.sum(0) + 1.0) / (n.sum() + C)                               # class unigram
    n_back = n.view(C + 1, C + 1, 2, 2, C).sum(1)                        # (c1, flags): drop prev2's class
    p_back = (n_back + smoothing * p_c) / (n_back.sum(-1, keepdim=True) + smoothing)
    p_back = p_back[:, None].expand(C + 1, C + 1, 2, 2, C).reshape(NUM_STATES, C)
    p_state = (n + smoothing * p_back) / (n.sum(-1, keepdim=True) + smoothing)
    count_y = reduce(torch.bincount(ids, minlength=v)).double() + 0.5
    class_total = torch.zeros(C, dtype=torch.float64).index_add_(0, vocab.classes, count_y)
    log_py = (count_y / class_total[vocab.classes]).log().half()
    # Fold the fp16 rounding into the class table so each state sums to 1 exactly as stored.
    z = torch.zeros(C, dtype=torch.float64).index_add_(0, vocab.classes, log_py.double().exp())
    log_pc = (p_state.log() - z.log()[None, :]).float()
    return Tier0(vocab.classes.clone(), log_pc, log_py)


# --- tier 1 --------------------------------------------------------------------------------------------

@dataclass
class TierConfig:
    prev_rank: int = 128         # rank of the previous-token factorisation
    pair_rank: int = 64          # rank of the previous-two factorisation
    pair_rows: int = 24576       # rows of the previous-two table (1.87 MB projected with the ranks above)
    pair_index: str = "top"      # which row a (prev2, prev1) pair reads: "top" or "hash" (module docstring)
    discount: float = 0.75       # absolute discount of the count estimates
    tier0_smoothing: float = 4.0
    tier1: bool = True
    refine_seconds: float = 0.0  # Adam burst on the tier-1 factors after the closed-form fit; 0 = none
    refine_steps: int = 0        # also stop after this many steps (0 = time only); makes a fit reproducible
    refine_lr: float = 1e-3      # constant: a linear decay measured no better (2.174 vs 2.171 BPB at 400 steps)
    refine_batch: int = 4096     # contexts drawn per Adam step (each scored on all its observed continuations)
    refine_seed: int = 0
    tier1_form: str = "auto"     # how tier 1 reaches the logits: "dense" | "factored" | "auto" (module docstring)


TIER1_FORMS = ("auto", "dense", "factored")
# The most bytes of dense fp32 [R, V] prior rows "auto" materialises: V = 1024 with today's row counts (104 MiB)
# is dense, where a row gather costs less than the low-rank GEMM on a CPU; V = 2048 (216 MiB) and up factored.
DENSE_PRIOR_BYTES = 128 << 20


@dataclass
class LowRank:
    """Tier 1 as low-rank factors: the last len(embeds) columns of prior_rows index rows of one embed each
    (-1 = none); column k's row for a position is embeds[k][row] @ bases[k]^T, a [V] logit row. `batch_tables`
    materialises the rows a batch names, each once (two GEMMs [U_k, r_k] x [r_k, V], U_k <= min(N, E_k)),
    after the dense rows: golf::tiered_loss and golf::score_windows then take them as they take any prior rows,
    softcap, scales and their gradients unchanged, and no [R, V] table of every context ever exists."""

    embeds: tuple[torch.Tensor, ...]  # fp32 [E_k, r_k], one per factored column
    bases: tuple[torch.Tensor, ...]   # fp32 [V, r_k]

    @property
    def columns(self) -> int:
        return len(self.embeds)

    def to(self, device) -> "LowRank":
        return LowRank(tuple(e.to(device) for e in self.embeds), tuple(b.to(device) for b in self.bases))

    @torch.compiler.disable  # how many rows a batch needs depends on its ids: no fixed shape to compile
    def batch_tables(self, tables: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(prior_tables, prior_rows) for the loss ops at the positions of rows [N, K]: tables [R, V] followed by
        the rows of each factored column that the batch names, each once (at most min(N, E_k) per column), and
        rows whose factored columns point at them (-1 stays -1)."""
        k = rows.shape[1] - self.columns
        r0 = tables.shape[0]
        used, where = [], []
        for c, embed in enumerate(self.embeds):
            r = rows[:, k + c].long()
            ops.check_indices("tier-1 factors", f"prior_rows[:, {k + c}]", r, embed.shape[0], none=True)
            u, inv = torch.unique(r, return_inverse=True)  # sorted: a -1 comes first and is never read
            used.append(u)
            where.append((r, inv))
        # The GEMMs write straight into the rows they fill (a torch.cat would copy their outputs again); the
        # factors never train, so no autograd is lost.
        out = tables.new_empty(r0 + sum(u.numel() for u in used), tables.shape[1], dtype=torch.float32)
        out[:r0] = tables
        cols, lo = [rows[:, :k]], r0
        # fp32 whatever autocast says: the loss ops read prior rows as fp32.
        with torch.autocast(tables.device.type, enabled=False):
            for embed, basis, u, (r, inv) in zip(self.embeds, self.bases, used, where):
                torch.matmul(embed[u.clamp(min=0)].float(), basis.float().T, out=out[lo:lo + u.numel()])
                cols.append(torch.where(r >= 0, lo + inv, -1).to(rows.dtype)[:, None])
                lo += u.numel()
        return out, torch.cat(cols, 1)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.embeds, *self.bases))


def prior_logits(tables: torch.Tensor, rows: torch.Tensor, scales: torch.Tensor | None = None,
                 lowrank: LowRank | None = None) -> torch.Tensor:
    """fp32 [..., V]: l0 + l1 at each position, sum_k s_k * (the row prior_rows[..., k] names), in either form."""
    if lowrank is None:
        return ops.prior_sum(tables, rows, scales)
    lead, k = rows.shape[:-1], rows.shape[-1]
    tables, flat = lowrank.batch_tables(tables, rows.reshape(-1, k))
    return ops.prior_sum(tables, flat.reshape(*lead, k), scales)


@dataclass
class Tier1:
    u1: torch.Tensor  # fp32 [V, r1]: previous-token embeddings
    w1: torch.Tensor  # fp32 [V, r1]
    u2: torch.Tensor  # fp32 [H, r2]: previous-two embeddings
    w2: torch.Tensor  # fp32 [V, r2]
    keys: torch.Tensor | None = None  # int [<= H-1], sorted: the pairs with their own row ("top"); None = hash

    FACTORS = ("u1", "w1", "u2", "w2")

    def rows(self) -> torch.Tensor:
        """fp32 [V + H, V]: prev-token rows, then previous-two rows."""
        return torch.cat([self.u1 @ self.w1.T, self.u2 @ self.w2.T])

    def tensors(self) -> dict[str, torch.Tensor]:
        """The factors (float) and, with "top", the keys (integer: stored exactly)."""
        out = {k: getattr(self, k) for k in self.FACTORS}
        return out if self.keys is None else {**out, "keys": self.keys}

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor], prefix: str = "") -> "Tier1":
        """The inverse of tensors(), read from t under names prefix + name (e.g. a checkpoint's "tier1.u1")."""
        return cls(*(t[prefix + k].float() for k in cls.FACTORS), keys=t.get(prefix + "keys"))


def tier_parameters(cfg: TierConfig, vocab_size: int) -> dict[str, int]:
    """The values each tier stores, from its settings alone (what a fit of them holds): tier 0's class and
    token tables; tier 1's factors u1, w1 [V, prev_rank], u2 [pair_rows, pair_rank], w2 [V, pair_rank] and,
    with "top", the pair_rows - 1 keys."""
    v = vocab_size
    out = {"tier0": NUM_STATES * C + v + v}  # log_pc, log_py, classes
    if cfg.tier1:
        out["tier1"] = (2 * v * cfg.prev_rank + (cfg.pair_rows + v) * cfg.pair_rank
                        + (cfg.pair_rows - 1 if cfg.pair_index == "top" else 0))
    return out


def _weighted_lowrank(r: torch.Tensor, weight: torch.Tensor, rank: int,
                      centered: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, W) with U @ W.T the rank-`rank` fit of r minimising sum_i weight_i^2 * ||r_i - (UW^T)_i||^2.
    centered: r's rows have mean 0 already (fit_tier1 centres them chunk by chunk, in float64)."""
    # A per-row constant does not change a softmax.
    a = r.float().clone() if centered else (r - r.mean(1, keepdim=True)).float()
    a.mul_(weight.float()[:, None])
    rank = min(rank, min(a.shape))
    if 2 * rank < min(a.shape):  # randomized SVD: a few matmuls instead of a full decomposition
        with torch.random.fork_rng():
            torch.manual_seed(0)
            u, s, v = torch.svd_lowrank(a, q=rank + 16, niter=4)
        vh = v.T
    else:
        u, s, vh = torch.linalg.svd(a, full_matrices=False)
    root = s[:rank].sqrt()
    return u[:, :rank] * root / weight.float()[:, None], vh[:rank].T * root


def _continuation(counts: torch.Tensor) -> torch.Tensor:
    """Kneser-Ney's continuation unigram (float64 [V]) of bigram counts [V, V]: in how many contexts each id follows."""
    cont = (counts > 0).sum(0).double() + 0.5
    return cont / cont.sum()


def _kn_bigram(counts: torch.Tensor, discount: float, cont: torch.Tensor | None = None) -> torch.Tensor:
    """Interpolated Kneser-Ney p(y | x) from bigram counts [rows, V] (float64); empty rows -> the continuation
    unigram `cont` (default: of these counts)."""
    cont = _continuation(counts) if cont is None else cont
    total = counts.sum(1, keepdim=True)
    types = (counts > 0).sum(1, keepdim=True).double()
    safe = total.clamp(min=1)
    p = ((counts - discount).clamp(min=0) + discount * types * cont[None, :]) / safe
    return torch.where(total > 0, p, cont[None, :].expand_as(p))


# The fit's float64 [rows, V] temporaries are made a chunk of rows at a time, each of at most this many entries
# (256 MB): at V = 8192 a previous-two table of 24,576 rows would otherwise hold ~10 GB at once. Every step of
# the fit is row-wise, so the chunks give the one-piece fit's numbers (V = 1024 fits in one chunk).
FIT_CHUNK_ENTRIES = 1 << 25


def _row_chunks(rows: int, v: int) -> list[tuple[int, int]]:
    step = max(1, FIT_CHUNK_ENTRIES // v)
    return [(lo, min(lo + step, rows)) for lo in range(0, rows, step)]


def _centered(r: torch.Tensor) -> torch.Tensor:
    return (r - r.mean(1, keepdim=True)).float()


def fit_tier1(ids: torch.Tensor, ctx: Context, tier0: Tier0, cfg: TierConfig,
              reduce: Callable = lambda t: t) -> Tier1:
    """Tier 1 in closed form from counts over ids [N] (two passes: the pairs' rows need the top pairs' keys).
    reduce: fit_tiers'. Peak memory: the [V, V] bigram counts and, in float32, the bigram and the two
    log-ratio tables, plus one chunk of float64 rows (FIT_CHUNK_ENTRIES)."""
    v, s = tier0.classes.numel(), NUM_STATES
    # Previous token: log p_bigram(y|x) - the average tier-0 logits seen after x.
    bigram = reduce(ops.count_next(ctx.prev1, ids, v, v))
    cont = _continuation(bigram)
    after_x = reduce(ops.count_next(ctx.prev1, ctx.state, v, s)).double()   # [V, S]
    n_x = after_x.sum(1, keepdim=True)
    # The average tier-0 logits after x through the classes (l0[s, y] = log_pc[s, c(y)] + log_py[y]): a [V, S] x
    # [S, C] product instead of [V, S] x [S, V], 137 GFLOP at V = 8192.
    log_pc, log_py, cls = tier0.log_pc.double(), tier0.log_py.double(), tier0.classes
    avg_pc = (after_x @ log_pc) / n_x.clamp(min=1)                              # [V, C]
    avg_pc = torch.where(n_x > 0, avg_pc, log_pc.mean(0, keepdim=True).expand(v, C))
    p_bi = torch.empty(v, v)           # fp32: what the previous-two rows' q needs of it
    ratio = torch.empty(v, v)
    for lo, hi in _row_chunks(v, v):
        p = _kn_bigram(bigram[lo:hi].double(), cfg.discount, cont)
        ratio[lo:hi] = _centered(p.log() - avg_pc[lo:hi, cls] - log_py[None, :])
        p_bi[lo:hi] = p.float()
    del bigram
    u1, w1 = _weighted_lowrank(ratio, (n_x[:, 0] + 1).sqrt(), cfg.prev_rank, centered=True)
    # Previous two: log p(y|row) - log q(y|row), q = the bigram averaged over the pairs sharing the row.
    keys = top_pairs(ctx, v, cfg.pair_rows - 1, reduce) if cfg.pair_index == "top" else None
    h = pair_bucket(ctx, v, cfg.pair_rows, keys)
    ratio = torch.empty(cfg.pair_rows, v)
    n_h = torch.empty(cfg.pair_rows, 1, dtype=torch.float64)
    for lo, hi in _row_chunks(cfg.pair_rows, v):
        hc = torch.where((h >= lo) & (h < hi), h - lo, torch.full_like(h, -1))
        trigram = reduce(ops.count_next(hc, ids, hi - lo, v)).double()   # [rows, V]
        # Which previous tokens each row saw, sparse: a "top" row holds one pair, so one previous token (the
        # shared row and hashed rows a few); a dense [rows, V] x [V, V] product would be 3.3 TFLOP at V = 8192.
        prev_in_bucket = reduce(ops.count_next(hc, ctx.prev1.clamp(min=0), hi - lo, v)).float().to_sparse()
        n = trigram.sum(1, keepdim=True)
        q = torch.sparse.mm(prev_in_bucket, p_bi).double() / n.clamp(min=1)
        q = torch.where(n > 0, q, torch.full_like(trigram, 1.0 / v))
        types = (trigram > 0).sum(1, keepdim=True).double()
        p_tri = ((trigram - cfg.discount).clamp(min=0) + cfg.discount * types * q) / n.clamp(min=1)
        p_tri = torch.where(n > 0, p_tri, q)
        ratio[lo:hi] = _centered(p_tri.log() - q.log())
        n_h[lo:hi] = n
    u2, w2 = _weighted_lowrank(ratio, (n_h[:, 0] + 1).sqrt(), cfg.pair_rank, centered=True)
    return Tier1(u1, w1, u2, w2, keys)


@dataclass
class ContextCounts:
    """The training stream folded by tier-1 context: every distinct (state, prev1, pair row) once, with its
    next-token counts (CSR: the pairs of context i are pair_next/pair_count[offsets[i]:offsets[i+1]])."""

    state: torch.Tensor       # int64 [M]
    prev1: torch.Tensor       # int64 [M]
    bucket: torch.Tensor      # int64 [M], -1 = none
    total: torch.Tensor       # fp32 [M]: positions with this context
    offsets: torch.Tensor     # int64 [M + 1]
    pair_next: torch.Tensor   # int64 [P]
    pair_count: torch.Tensor  # fp32 [P]


def context_counts(ids: torch.Tensor, ctx: Context, h: torch.Tensor, buckets: int, vocab_size: int) -> ContextCounts:
    """Fold positions 1.. of ids [N] by context (position 0 has no previous token), h [N] being each position's
    pair row (`pair_bucket`, < buckets): one sort each for the contexts and the (context, next) pairs. 9.77M
    tokens fold to ~0.39M contexts and ~2.5M pairs."""
    v = vocab_size
    key = ((ctx.state * (v + 1) + ctx.prev1 + 1) * (buckets + 1) + h + 1)[1:]
    contexts, inverse = torch.unique(key, return_inverse=True)
    pairs, pair_count = torch.unique(inverse * v + ids[1:], return_counts=True)
    row = pairs // v
    offsets = torch.zeros(contexts.numel() + 1, dtype=torch.int64)
    offsets[1:] = torch.bincount(row, minlength=contexts.numel()).cumsum(0)
    total = torch.zeros(contexts.numel()).index_add_(0, row, pair_count.float())
    rest = contexts // (buckets + 1)
    return ContextCounts(state=rest // (v + 1), prev1=rest % (v + 1) - 1, bucket=contexts % (buckets + 1) - 1,
                         total=total, offsets=offsets, pair_next=pairs % v, pair_count=pair_count.float())


@contextlib.contextmanager
def deterministic_algorithms():
    """torch's deterministic algorithms, on for the block. On the CPU, the backward of a row gather (index_put
    with accumulate) otherwise adds in thread order, and a refit would not give the same tables bit for bit
    (measured: the refinement is no slower with them on)."""
    was, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was, warn_only=warn_only)


def refine_tier1(tier1: Tier1, tier0: Tier0, ids: torch.Tensor, ctx: Context, cfg: TierConfig,
                 seconds: float) -> int:
    """A short burst of Adam on the tier-1 factors (tier 0 frozen), minimising the training cross-entropy of
    l0 + l1; returns the steps taken. Each step draws `refine_batch` contexts with probability proportional
    to their count, as drawing positions would, but scores each against all its observed continuations (the
    stream folded by `context_counts`): the same expected gradient with less variance. (Drawing contexts
    uniformly instead lets Adam's per-parameter normalisation move the rows of rare contexts as far as those of
    common ones, on one observation each: that overfits.)"""
    if seconds <= 0:
        return 0
    v = tier0.classes.numel()
    folded = context_counts(ids, ctx, pair_bucket(ctx, v, cfg.pair_rows, tier1.keys), cfg.pair_rows, v)
    cumulative = folded.total.double().cumsum(0)
    gen = torch.Generator().manual_seed(cfg.refine_seed)
    params = [torch.nn.Parameter(getattr(tier1, k).clone()) for k in Tier1.FACTORS]
    u1, w1, u2, w2 = params
    opt = torch.optim.Adam(params, lr=cfg.refine_lr)
    l0 = tier0.rows()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds and not (cfg.refine_steps and steps >= cfg.refine_steps):
        draw = torch.rand(cfg.refine_batch, generator=gen, dtype=torch.float64) * cumulative[-1]
        batch = torch.searchsorted(cumulative, draw, right=True).clamp(max=cumulative.numel() - 1)
        p1, hb = folded.prev1[batch], folded.bucket[batch]
        emb = torch.cat([u1[p1.clamp(min=0)] * (p1 >= 0)[:, None], u2[hb.clamp(min=0)] * (hb >= 0)[:, None]], 1)
        z = l0[folded.state[batch]] + emb @ torch.cat([w1, w2], 1).T                    # [B, V]
        # The batch's (context, next, count) pairs: row i owns offsets[batch[i]] .. offsets[batch[i] + 1].
        first, size = folded.offsets[batch], folded.offsets[batch + 1] - folded.offsets[batch]
        local = torch.repeat_interleave(torch.arange(batch.numel()), size)
        pair = first[local] + torch.arange(local.numel()) - torch.repeat_interleave(size.cumsum(0) - size, size)
        share = folded.pair_count[pair] / folded.total[batch][local]        # observed p(next | context)
        nll = torch.logsumexp(z, 1).sum() - (share * z[local, folded.pair_next[pair]]).sum()
        opt.zero_grad(set_to_none=True)
        (nll / batch.numel()).backward()
        opt.step()
        steps += 1
    for k, p in zip(Tier1.FACTORS, params):
        setattr(tier1, k, p.detach())
    return steps


# --- both tiers ----------------------------------------------------------------------------------------

@dataclass
class Tiers:
    vocab: Vocab
    tier0: Tier0
    tier1: Tier1 | None
    cfg: TierConfig
    fit_seconds: dict = field(default_factory=dict)
    refine_steps: int = 0  # Adam steps the tier-1 refinement took

    @property
    def factored(self) -> bool:
        """Tier 1 as a low-rank term (`lowrank`) instead of rows of prior_tables; see the module docstring."""
        if self.tier1 is None:
            return False
        if self.cfg.tier1_form == "auto":
            v = self.vocab.vocab_size
            return (NUM_STATES + v + self.tier1.u2.shape[0]) * v * 4 > DENSE_PRIOR_BYTES
        return self.cfg.tier1_form == "factored"

    def prior_tables(self) -> torch.Tensor:
        """fp32 [R, V]: tier-0 state rows, then (with tier 1, dense) prev-token rows and previous-two rows."""
        rows = [self.tier0.rows()]
        if self.tier1 is not None and not self.factored:
            rows.append(self.tier1.rows())
        return torch.cat(rows)

    def lowrank(self) -> LowRank | None:
        """Factored: tier 1's factors, embeds (u1 [V, r1], u2 [H, r2]) and bases (w1 [V, r1], w2 [V, r2]);
        None when dense."""
        if not self.factored:
            return None
        t = self.tier1
        return LowRank((t.u1.float(), t.u2.float()), (t.w1.float(), t.w2.float()))

    def prior_nbytes(self) -> int:
        """Bytes the priors take in memory as the loss reads them (prior_tables, and the low-rank term)."""
        low = self.lowrank()
        return self.prior_tables().numel() * 4 + (0 if low is None else low.nbytes())

    @property
    def columns(self) -> int:
        """K, the prior rows per position: the tier-0 state, then tier 1's previous-token and previous-two rows."""
        return 1 if self.tier1 is None else 3

    def prior_rows(self, x: torch.Tensor) -> torch.Tensor:
        """int32 [..., T, K]: the prior_tables rows for predicting the token AFTER each position of x
        (-1 = none), aligned with the model's outputs: row t is built from x[..., :t+1] only."""
        # context(ids)[t] predicts ids[t]; a filler after x turns that into "predicts the token after x[t]".
        ctx = context(torch.nn.functional.pad(x.long(), (0, 1), value=0), self.vocab)
        ctx = Context(ctx.prev1[..., 1:], ctx.prev2[..., 1:], ctx.state[..., 1:])
        cols = [ctx.state]
        if self.tier1 is not None:
            v = self.vocab.vocab_size
            # Factored: rows of u1 and of u2 (the low-rank term's embeds); dense: rows of prior_tables.
            base1, base2 = (0, 0) if self.factored else (NUM_STATES, NUM_STATES + v)
            cols.append(torch.where(ctx.prev1 >= 0, base1 + ctx.prev1, torch.full_like(ctx.prev1, -1)))
            h = pair_bucket(ctx, v, self.cfg.pair_rows, self.tier1.keys)
            cols.append(torch.where(h >= 0, base2 + h, torch.full_like(h, -1)))
        return torch.stack(cols, -1).to(torch.int32)

    def logits(self, x: torch.Tensor, tables: torch.Tensor | None = None) -> torch.Tensor:
        """fp32 [..., T, V]: l0 + l1 for the token after each position of x (plain PyTorch)."""
        tables = self.prior_tables() if tables is None else tables
        return prior_logits(tables, self.prior_rows(x), lowrank=self.lowrank())

    def projected_bytes(self) -> dict:
        """Bytes the tiers would take in an artifact: tier 0 as stored; tier-1 factors as int8 per row with
        fp16 row scales; everything through LZMA (preset 9 | extreme). The artifact issue owns the format."""
        raw = [self.tier0.log_pc.numpy().tobytes(), self.tier0.log_py.numpy().tobytes(),
               self.tier0.classes.to(torch.uint8).numpy().tobytes()]
        if self.tier1 is not None:
            for t in self.tier1.tensors().values():
                if not t.is_floating_point():  # the "top" keys, stored exactly
                    raw.append(t.numpy().tobytes())
                    continue
                scale = t.abs().amax(1, keepdim=True).clamp(min=1e-12) / 127
                raw.append(torch.round(t / scale).to(torch.int8).numpy().tobytes())
                raw.append(scale.half().numpy().tobytes())
        blob = b"".join(raw)
        packed = lzma.compress(blob, preset=9 | lzma.PRESET_EXTREME)
        return {"tier0_bytes": self.tier0.nbytes(), "raw_bytes": len(blob), "lzma_bytes": len(packed)}


def fit_tiers(ids: torch.Tensor, vocab: Vocab, cfg: TierConfig | None = None, reduce: Callable | None = None,
              part: int = 0) -> Tiers:
    """Fit tier 0 (and tier 1) on a training token stream ids [N] (one pass each, no SGD).

    Across processes (golf.train under torchrun): each fits `fit_part(stream, part, parts)` of one stream with
    `reduce` summing a count tensor over all of them (the same calls in the same order on each), and every
    process gets the one-process fit of the whole stream, bit for bit: the fit is a function of counts, and
    the parts are cut at document starts, where every context restarts. A part after the first starts with
    the BOS the part before it ends with, whose counts belong there: its position 0 is left out. The
    refinement needs the whole stream in one process: refine_seconds must be 0 across processes."""
    cfg = cfg or TierConfig()
    if reduce is not None and cfg.refine_seconds > 0:
        raise ConfigError("TierConfig: refine_seconds > 0 needs the whole stream in one process (no reduce)")
    reduce = reduce or (lambda t: t)
    if min(cfg.prev_rank, cfg.pair_rank) < 1 or cfg.pair_rows < 2 or cfg.pair_index not in ("top", "hash"):
        raise ConfigError(f"TierConfig: prev_rank ({cfg.prev_rank}) and pair_rank ({cfg.pair_rank}) must be >= 1, "
                          f"pair_rows ({cfg.pair_rows}) >= 2, pair_index ({cfg.pair_index!r}) 'top' or 'hash'")
    if cfg.tier1_form not in TIER1_FORMS:
        raise ConfigError(f"TierConfig: tier1_form must be one of {TIER1_FORMS}, got {cfg.tier1_form!r}")
    if cfg.refine_seconds == float("inf") and cfg.refine_steps <= 0:
        raise ConfigError("TierConfig: refine_seconds is unlimited, so refine_steps must be > 0")
    ids = ids.reshape(-1).long()
    if ids.numel() and int(ids.max()) >= vocab.vocab_size:
        raise ConfigError(f"training ids reach {int(ids.max())} but the tokenizer has {vocab.vocab_size} ids")
    seconds = {}
    t0 = time.perf_counter()
    ctx = context(ids, vocab)
    if part > 0:  # position 0 is the previous part's last target
        ctx = Context(ctx.prev1[1:], ctx.prev2[1:], ctx.state[1:])
        ids = ids[1:]
    tier0 = fit_tier0(ids, ctx, vocab, cfg.tier0_smoothing, reduce)
    seconds["tier0"] = time.perf_counter() - t0
    tier1, steps = None, 0
    if cfg.tier1:
        t1 = time.perf_counter()
        tier1 = fit_tier1(ids, ctx, tier0, cfg, reduce)
        seconds["tier1"] = time.perf_counter() - t1
        if cfg.refine_seconds > 0:
            t2 = time.perf_counter()
            with deterministic_algorithms():
                steps = refine_tier1(tier1, tier0, ids, ctx, cfg, cfg.refine_seconds)
            seconds["tier1_refine"] = time.perf_counter() - t2
    return Tiers(vocab, tier0, tier1, cfg, seconds, steps)


def fit_part(ids: torch.Tensor, part: int, parts: int, bos_id: int) -> torch.Tensor:
    """Part `part` of `parts` of a stream ids [N] for fit_tiers across processes: cut at the BOS nearest after
    each k * N / parts, every part but the last ending with the next part's first token (its BOS). Parts may
    be empty (a stream with few documents); together they count every position once."""
    ids = ids.reshape(-1)
    n = ids.numel()
    bos = torch.nonzero(ids == bos_id).flatten()
    cuts = [0]
    for k in range(1, parts):
        at = int(torch.searchsorted(bos, max(k * n // parts, cuts[-1] + 1)))
        cuts.append(int(bos[at]) if at < bos.numel() else n)
    cuts.append(n)
    lo, hi = cuts[part], cuts[part + 1]
    return ids[lo:min(hi + 1, n)] if lo < hi else ids[:0]


def row_counts(tiers: Tiers, ids: torch.Tensor, chunk: int = 1 << 22) -> torch.Tensor:
    """float64 [R]: how often each prior_tables row is read over a training stream ids [N], as one window. Read
    in pieces of about `chunk` tokens cut before a BOS, where the context restarts anyway: the counts are exact."""
    counts = torch.zeros(tiers.prior_tables().shape[0], dtype=torch.float64)
    ids = ids.reshape(-1).long()
    bos = torch.nonzero(ids == tiers.vocab.bos_id).flatten()
    lo, n = 0, ids.numel()
    while lo < n:
        k = int(torch.searchsorted(bos, lo + chunk))
        hi = int(bos[k]) if lo + chunk < n and k < bos.numel() else n
        rows = tiers.prior_rows(ids[lo:hi]).reshape(-1).long()
        counts += torch.bincount(rows[rows >= 0], minlength=counts.numel()).double()
        lo = hi
    return counts


def project_tier1(tiers: Tiers, trained: torch.Tensor, counts: torch.Tensor) -> Tiers:
    """The tiers with tier 1 refit to trained rows (fp32 [R, V], prior_tables' layout: tier1_train's tables),
    by the count-weighted low-rank projection the closed-form fit uses, at the tier config's ranks; tier 0 as
    fitted (trained tier-0 rows have no stored form). The factors have the closed form's shapes, so the
    artifact stores them at its bytes. counts: `row_counts` over the fit's stream."""
    if tiers.tier1 is None:
        raise ConfigError("project_tier1: these tiers have no tier 1")
    v, s = tiers.vocab.vocab_size, NUM_STATES
    if tuple(trained.shape) != tuple(tiers.prior_tables().shape):
        raise ConfigError(f"project_tier1: trained rows {tuple(trained.shape)}, but these tiers have "
                          f"{tuple(tiers.prior_tables().shape)}")
    rows, weight = trained.detach().float().cpu(), (counts.double().cpu() + 1).sqrt()
    u1, w1 = _weighted_lowrank(rows[s:s + v], weight[s:s + v], tiers.cfg.prev_rank)
    u2, w2 = _weighted_lowrank(rows[s + v:], weight[s + v:], tiers.cfg.pair_rank)
    return dataclasses.replace(tiers, tier1=Tier1(u1, w1, u2, w2, keys=tiers.tier1.keys))


def stream_nll(tiers: Tiers, ids: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """Per-target NLL (nats, float64) of the tiers alone over a stream ids [N] read as one window."""
    tables, lowrank = tiers.prior_tables(), tiers.lowrank()
    rows = tiers.prior_rows(ids.long()[:-1])
    targets = ids.long()[1:]
    out = torch.empty(targets.numel(), dtype=torch.float64)
    if lowrank is not None:  # large V: [chunk, V] float64 logits, and up to chunk tier-1 rows per column
        chunk = max(256, chunk * 1024 // tiers.vocab.vocab_size)
    for lo in range(0, targets.numel(), chunk):
        logits = prior_logits(tables, rows[lo:lo + chunk], lowrank=lowrank)
        out[lo:lo + chunk] = torch.nn.functional.cross_entropy(logits.double(), targets[lo:lo + chunk],
                                                               reduction="none")
    return out


def tier_tensors(tiers: Tiers | None) -> dict | None:
    """Every tensor of tiers 0 and 1 by name (for the checkpoint)."""
    if tiers is None:
        return None
    out = {f"tier0.{k}": v for k, v in vars(tiers.tier0).items() if torch.is_tensor(v)}
    if tiers.tier1 is not None:
        out.update({f"tier1.{k}": v for k, v in tiers.tier1.tensors().items()})
    return out


def tiers_from_tensors(t: dict | None, vocab: Vocab, cfg: TierConfig) -> Tiers | None:
    """The inverse of tier_tensors (a checkpoint's "tiers"), for the tokenizer's vocab and the run's settings."""
    if t is None:
        return None
    tier1 = Tier1.from_tensors(t, "tier1.") if "tier1.u1" in t else None
    return Tiers(vocab, Tier0(t["tier0.classes"], t["tier0.log_pc"], t["tier0.log_py"]), tier1, cfg)
