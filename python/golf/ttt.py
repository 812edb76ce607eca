"""Score-first test-time training (`--method ttt`): R0611's phased LoRA TTT over a fixed predictor.

    result = evaluate_ttt(lm, prior_rows, tokens, cfg=TTTConfig(), window=2048, byte_tables=..., dist=None)

The val stream is cut into documents at BOS (`find_documents`): a document runs from its BOS to the next
document's BOS inclusive, so that BOS is its last target (0 bytes), and every target of the stream belongs to
exactly one document (tokens before the first BOS form a document of their own). Documents are sorted by length,
grouped `batch_docs` at a time, and the groups run longest first; ranks take groups from one shared queue (the
process group's store; R0611 uses a file lock).

Per group, every document has its own LoRA slot (`Adapters`: Q, K, V, an output adapter and an MLP adapter at
every layer the forward runs, the head; rank r, scale alpha / r; A uniform(+-1/sqrt(in)), B zero). The document
is walked in chunks of `chunk` targets; each chunk is scored with up to `window` tokens of earlier context from
the same document (the window recomputed, no cache), and only then does one AdamW step on that chunk's mean
loss move the LoRA: every target is scored by a model that has learned only from targets scored before it. A
document's last chunk takes no step (nothing after it would use it). B and the optimizer state are reset per
group; A is warm-started from the slot's previous group (`warm_start_a`). The tiers stay frozen.

Global phases (`phases` > 0): after the groups holding the first prefix_docs * k / phases documents are scored
(k = 1..phases), every rank stops at the same group boundary and the base transformer is trained by SGD (lr
cosine to 0, momentum, clip) on the scored documents, the shortest prefix_docs * k / phases of them as R0611
keeps; its rows of `window` tokens attend across document boundaries (golf's attention has no varlen path). Then
the LoRA starts afresh, and after the pass the transformer is put back as it was. Which groups are scored before
each phase, and what it trains on, is fixed by the plan, not by timing (R0611's pause is a race): one process is
deterministic; on several ranks only which rank warm-starts which group depends on timing.

Defaults are R0611's run values (ANCHOR.md §6); `window` 0 means the artifact's training sequence length.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from golf import ops
from golf.data import BpbMeter, ByteTables
from golf.errors import ConfigError, DataError
from golf.evaluate import EvalResult, Scored, _as_tokens, _rank_world
from golf.progress import Progress


@dataclass
class TTTConfig:
    rank: int = 80                     # LoRA rank (R0611 TTT_LORA_RANK)
    alpha: float = 144.0               # LoRA scale alpha / rank
    lr: float = 1e-4                   # AdamW on the LoRA
    beta1: float = 0.0
    beta2: float = 0.99
    eps: float = 1e-10
    weight_decay: float = 0.5
    chunk: int = 48                    # targets scored per step
    window: int = 0                    # context per chunk, the chunk included; 0 = the training sequence length
    batch_docs: int = 64               # documents per group (one LoRA slot each)
    warm_start_a: bool = True          # keep each slot's A from its previous group (B and Adam reset)
    phases: int = 3                    # global SGD phases on scored documents (0: none)
    prefix_docs: int = 2500            # documents scored by the last phase
    global_lr: float = 1e-3
    global_momentum: float = 0.9
    global_chunk_tokens: int = 32768   # tokens per SGD step (a multiple of the window; the last chunk is skipped)
    global_grad_clip: float = 1.0
    seed: int = 0                      # the LoRA's A initialisation (each rank adds its rank)


def check_config(cfg: TTTConfig, where: str = "ttt") -> None:
    def need(ok: bool, name: str, expected: str):
        if not ok:
            raise ConfigError(f"{where}.{name}: expected {expected}, found {getattr(cfg, name)!r}")

    need(cfg.rank >= 1, "rank", ">= 1")
    need(cfg.alpha > 0, "alpha", "> 0")
    need(cfg.lr >= 0, "lr", ">= 0")
    need(0 <= cfg.beta1 < 1, "beta1", "in [0, 1)")
    need(0 <= cfg.beta2 < 1, "beta2", "in [0, 1)")
    need(cfg.eps > 0, "eps", "> 0")
    need(cfg.weight_decay >= 0, "weight_decay", ">= 0")
    need(cfg.chunk >= 1, "chunk", ">= 1")
    need(cfg.window >= 0, "window", ">= 0 (0 = the training sequence length)")
    need(cfg.batch_docs >= 1, "batch_docs", ">= 1")
    need(cfg.phases >= 0, "phases", ">= 0")
    need(cfg.prefix_docs >= 0, "prefix_docs", ">= 0")
    need(cfg.global_lr >= 0, "global_lr", ">= 0")
    need(0 <= cfg.global_momentum < 1, "global_momentum", "in [0, 1)")
    need(cfg.global_chunk_tokens >= 1, "global_chunk_tokens", ">= 1")
    need(cfg.global_grad_clip >= 0, "global_grad_clip", ">= 0 (0: no clipping)")


# --- documents and their plan --------------------------------------------------------------------------

def find_documents(tokens: np.ndarray, bos_id: int) -> np.ndarray:
    """int64 [D, 2] rows (start, length): a document's tokens are tokens[start : start+length], its BOS first and
    the next document's BOS last (the last document ends the stream); its targets start+1 .. start+length-1.
    Together they score every target 1 .. N-1 once."""
    n = len(tokens)
    if n < 2:
        raise DataError("validation stream has no target to score", field="num_tokens", expected=">= 2", found=n)
    starts = np.flatnonzero(np.asarray(tokens) == bos_id)
    starts = starts[starts < n - 1]  # a BOS at the very end starts no document (it is the last one's target)
    if not len(starts) or starts[0] != 0:
        starts = np.concatenate([[0], starts])
    ends = np.append(starts[1:], n - 1)  # inclusive: the next document's BOS
    return np.stack([starts, ends - starts + 1], 1).astype(np.int64)


def group_documents(docs: np.ndarray, batch_docs: int) -> list[np.ndarray]:
    """Indices into docs, in groups of batch_docs by ascending length (ties by position), the groups ordered by
    their longest document, longest first (R0611's order: the longest group, holding the remainder, runs first)."""
    order = np.lexsort((docs[:, 0], docs[:, 1]))
    groups = [order[i:i + batch_docs] for i in range(0, len(order), batch_docs)]
    longest = [int(docs[g, 1].max()) for g in groups]
    return [groups[i] for i in sorted(range(len(groups)), key=lambda i: (-longest[i], i))]


def chunk_plan(length: int, chunk: int, window: int) -> list[tuple[int, int, int]]:
    """A document of `length` tokens (length - 1 targets) as rows (win_start, win_len, offset): chunk c reads
    doc[win_start : win_start + win_len] and scores its positions offset .. win_len - 1, the targets
    c*chunk+1 .. min((c+1)*chunk, length-1) of the document; win_len <= window."""
    pred = length - 1
    rows = []
    for c in range(math.ceil(pred / chunk)):
        end = min((c + 1) * chunk, pred)
        start = max(0, end - window)
        rows.append((start, end - start, c * chunk - start))
    return rows


def group_cost(docs: np.ndarray, group: np.ndarray, chunk: int, window: int) -> int:
    """Tokens the group's forwards read (a chunk's window for every document still running): the budget's unit."""
    cost = 0
    for i in group:
        cost += sum(win for _, win, _ in chunk_plan(int(docs[i, 1]), chunk, window))
    return cost


def phase_boundaries(groups: list[np.ndarray], cfg: TTTConfig) -> list[tuple[int, int]]:
    """(groups scored before the phase, documents it trains on) per global phase: phase k starts after the first
    groups holding at least prefix_docs * k / phases documents. Phases past the last group are dropped."""
    if cfg.phases == 0 or cfg.prefix_docs == 0:
        return []
    counts = np.cumsum([len(g) for g in groups])
    out = []
    for k in range(cfg.phases):
        need = cfg.prefix_docs * (k + 1) // cfg.phases
        at = int(np.searchsorted(counts, need))  # the first group whose end reaches `need` documents
        if at >= len(groups) - 1:  # nothing left to score after it
            break
        out.append((at + 1, need))
    return out


# --- the LoRA ------------------------------------------------------------------------------------------

class BatchedLoRA(nn.Module):
    """One LoRA per document slot: x [b, T, in] -> scale * (x A[slots]^T) B[slots]^T, A [S, r, in], B [S, out, r]."""

    def __init__(self, slots: int, d_in: int, d_out: int, rank: int, scale: float, gen: torch.Generator, device):
        super().__init__()
        bound = 1.0 / math.sqrt(d_in)
        a = (torch.rand(slots, rank, d_in, generator=gen) * 2 - 1) * bound
        self.A = nn.Parameter(a.to(device))
        self.B = nn.Parameter(torch.zeros(slots, d_out, rank, device=device))
        self.scale = scale

    def forward(self, x: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        a, b = self.A[slots], self.B[slots]
        return torch.matmul(torch.matmul(x, a.transpose(1, 2).to(x.dtype)), b.transpose(1, 2).to(x.dtype)) * self.scale


class Adapters(nn.Module):
    """The LoRA of every site the forward runs: q, k, v (added to the projections), "o" (reads the attention's
    input, adds to its output, as R0611's), "mlp" (reads the MLP's input, adds to its output), at every call of
    the module (a recurrent layer's passes get their own), and the head. `hooked()` puts them into the forward."""

    def __init__(self, transformer, cfg: TTTConfig, slots: int, gen: torch.Generator, device):
        super().__init__()
        scale = cfg.alpha / cfg.rank
        self.sites = self._sites(transformer)
        self.loras = nn.ModuleList(BatchedLoRA(slots, d_in, d_out, cfg.rank, scale, gen, device)
                                   for _, _, d_in, d_out in self.sites)
        w = transformer.head_weight
        self.head = BatchedLoRA(slots, w.shape[1], w.shape[0], cfg.rank, scale, gen, device)

    @staticmethod
    def _sites(transformer) -> list[tuple[nn.Module, int, int, int]]:
        """(module, call index, d_in, d_out) in the order one forward calls them (found by running one)."""
        from golf.model import MLP, Attention

        targets = {}
        for mod in transformer.modules():
            if isinstance(mod, Attention):
                for lin in (mod.q, mod.k, mod.v):
                    targets[lin] = lin.weight.shape
                targets[mod] = (transformer.cfg.model_dim, transformer.cfg.model_dim)
            elif isinstance(mod, MLP):
                targets[mod] = (transformer.cfg.model_dim, transformer.cfg.model_dim)
        calls: dict[nn.Module, int] = {}
        sites = []

        def seen(mod, _inputs, _output):
            n = calls[mod] = calls.get(mod, -1) + 1
            out_f, in_f = targets[mod]
            sites.append((mod, n, in_f, out_f))

        handles = [m.register_forward_hook(seen) for m in targets]
        try:
            with torch.no_grad():
                transformer.hidden(torch.zeros(1, 2, dtype=torch.long, device=transformer.head_weight.device))
        finally:
            for h in handles:
                h.remove()
        return sites

    @contextlib.contextmanager
    def hooked(self, slots: torch.Tensor):
        """The transformer's forward with each site's LoRA of these document slots added."""
        index = {(id(m), n): i for i, (m, n, _, _) in enumerate(self.sites)}
        calls: dict[int, int] = {}

        def add(mod, inputs, output):
            n = calls[id(mod)] = calls.get(id(mod), -1) + 1
            return output + self.loras[index[(id(mod), n)]](inputs[0], slots).to(output.dtype)

        handles = [m.register_forward_hook(add) for m in {m for m, _, _, _ in self.sites}]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def reset_b(self) -> None:
        with torch.no_grad():
            for lora in list(self.loras) + [self.head]:
                lora.B.zero_()


# --- one group -----------------------------------------------------------------------------------------

class DocTTT:
    """The per-group loop: score each chunk, then step on it. `chunk_step` is the one place that orders the two."""

    def __init__(self, lm, prior_rows: Callable, tokens: np.ndarray, cfg: TTTConfig, window: int, device, amp,
                 meter: BpbMeter, record: Callable[[Scored], None] | None, gen: torch.Generator):
        self.lm, self.prior_rows, self.tokens, self.cfg, self.window = lm, prior_rows, tokens, cfg, window
        self.device, self.amp, self.meter, self.record, self.gen = device, amp, meter, record, gen
        self.adapters: Adapters | None = None

    def fresh_adapters(self) -> None:
        self.adapters = Adapters(self.lm.transformer, self.cfg, self.cfg.batch_docs, self.gen, self.device)

    def run_group(self, docs: np.ndarray) -> int:
        """Score the documents docs [b, 2] (start, length); returns the targets scored."""
        cfg = self.cfg
        if self.adapters is None or not cfg.warm_start_a or len(docs) != cfg.batch_docs:
            self.fresh_adapters()  # R0611: a fresh LoRA for a short group, and after each phase
        else:
            self.adapters.reset_b()
        opt = torch.optim.AdamW(self.adapters.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                                weight_decay=cfg.weight_decay)
        plans = [chunk_plan(int(length), cfg.chunk, self.window) for _, length in docs]
        scored = 0
        for c in range(max(len(p) for p in plans)):
            active = [i for i, p in enumerate(plans) if c < len(p)]
            rows = [plans[i][c] for i in active]
            train = [c < len(plans[i]) - 1 for i in active]  # a document's last chunk takes no step
            scored += self.chunk_step(docs[active], rows, torch.tensor(active, device=self.device), train, opt)
        return scored

    def chunk_step(self, docs: np.ndarray, rows, slots: torch.Tensor, train: list[bool], opt) -> int:
        """Score the chunk, then step on it (score first: the step sees only targets already scored). With lr 0
        a step changes nothing (AdamW's decay is decoupled, times lr), so none is taken."""
        learn = self.cfg.lr > 0
        with torch.set_grad_enabled(learn):
            nll, weight = self.chunk_loss(docs, rows, slots, train)
        if learn and weight.any():
            opt.zero_grad(set_to_none=True)
            (nll * weight).sum().backward()
            opt.step()
        return len(nll)

    def chunk_loss(self, docs: np.ndarray, rows, slots: torch.Tensor, train: list[bool], score: bool = True):
        """The chunk's per-target NLL [n] (with grad) under the LoRA as it is now, scored into the meter (and the
        record) when `score`, and each target's weight in the step's loss (1 / its chunk's length where the
        document trains, else 0)."""
        dev, lm = self.device, self.lm
        t = lm.transformer
        width = max(win for _, win, _ in rows)
        x = torch.zeros(len(rows), width, dtype=torch.long)
        y = torch.zeros(len(rows), width, dtype=torch.long)
        keep = torch.zeros(len(rows), width, dtype=torch.bool)
        first = []
        for b, ((start, _), (ws, win, off)) in enumerate(zip(docs, rows)):
            piece = torch.from_numpy(self.tokens[start + ws: start + ws + win + 1].astype(np.int64))
            x[b, :win], y[b, :win] = piece[:-1], piece[1:]
            keep[b, off:win] = True
            first.append(start + ws + off + 1)  # the stream position of the chunk's first target
        x, y, keep = x.to(dev), y.to(dev), keep.to(dev)
        with self.adapters.hooked(slots), self.amp():
            h = t.hidden(x)
        # The scored columns of each document, left-aligned [b, C]: row-major over `valid` they are h[keep]'s rows.
        counts = keep.sum(1)
        span = torch.arange(int(counts.max()), device=dev)
        valid = span[None, :] < counts[:, None]
        cols = (torch.tensor([off for _, _, off in rows], device=dev)[:, None] + span).clamp(max=width - 1)
        hc = h.gather(1, cols[..., None].expand(-1, -1, h.shape[-1])).float()
        hk = hc[valid]                                                             # [n, d]
        owner = torch.arange(len(rows), device=dev).repeat_interleave(counts)      # each row's document in rows
        l2 = hk @ t.head_weight.detach().float().T + self.adapters.head(hc, slots)[valid]
        extra = t.copy_logits(h, x, keep)
        if extra is not None:
            r, cidx, vals = extra
            l2 = l2.index_put((r, cidx), vals.float(), accumulate=True)
        rows_k = self.prior_rows(x)[keep].to(torch.int32)
        tables, rows_k = lm.tables_for(rows_k)
        scales = t.prior_scales(hk)
        nll = ops.tiered_loss(l2, tables.detach().float(), rows_k, y[keep], t.softcap, scales)[0]
        if score:
            self.meter.add(nll.detach(), x[keep], y[keep])
            if self.record is not None:
                lens = keep.sum(1).tolist()
                positions = torch.cat([torch.arange(f, f + n) for f, n in zip(first, lens)])
                self.record(Scored(positions, nll.detach().cpu(),
                                   lambda: _log_probs(l2.detach(), tables, rows_k, scales, t.softcap)))
        weight = torch.tensor(train, device=dev, dtype=torch.float32) / counts.float()
        return nll, weight[owner]


def _log_probs(l2, tables, rows, scales, softcap: float) -> torch.Tensor:
    """float64 [n, V]: the log-softmax of l0 + l1 + softcap(l2) over the whole vocabulary (plain PyTorch)."""
    from golf.tiers import prior_logits

    z = softcap * torch.tanh(l2 / softcap) if softcap > 0 else l2
    k = rows.shape[-1]
    if k:
        z = z + prior_logits(tables.float(), rows, scales)
    return torch.log_softmax(z.double(), dim=-1)


# --- the global phases ---------------------------------------------------------------------------------

def global_phase(lm, prior_rows: Callable, tokens: np.ndarray, docs: np.ndarray, cfg: TTTConfig, seq: int,
                 rank: int, world: int, device, amp) -> int:
    """SGD on the base transformer over docs [k, 2] (already scored), concatenated: chunks of
    global_chunk_tokens, each split into rows of `seq` over the ranks (contiguous), gradients averaged over the
    ranks and clipped, lr cosine from global_lr to 0 over the chunks; the last chunk is skipped (R0611).
    Returns the SGD steps taken."""
    stream = np.concatenate([tokens[s:s + n] for s, n in docs]) if len(docs) else np.zeros(0, np.int64)
    total = len(stream) - 1
    chunks = math.ceil(total / cfg.global_chunk_tokens) if total > 0 else 0
    steps = chunks - 1
    if steps < 1:
        return 0
    params = [p for p in lm.transformer.parameters()]
    was = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.SGD(params, lr=cfg.global_lr, momentum=cfg.global_momentum)
    try:
        for c in range(steps):
            for group in opt.param_groups:
                group["lr"] = cfg.global_lr * 0.5 * (1 + math.cos(math.pi * c / max(chunks - 1, 1)))
            piece = stream[c * cfg.global_chunk_tokens: (c + 1) * cfg.global_chunk_tokens + 1]
            n_rows = (len(piece) - 1) // seq
            mine = range(n_rows * rank // world, n_rows * (rank + 1) // world)
            opt.zero_grad(set_to_none=False)
            if len(mine):
                idx = np.arange(mine.start * seq, mine.stop * seq + 1)
                chunk = torch.from_numpy(piece[idx].astype(np.int64))
                x = chunk[:-1].view(len(mine), seq).to(device)
                y = chunk[1:].view(len(mine), seq).to(device)
                with amp():
                    loss = lm(x, prior_rows(x), y).mean()
                loss.backward()
            if world > 1:
                for p in params:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    torch.distributed.all_reduce(p.grad)
                    p.grad.div_(world)
            if cfg.global_grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.global_grad_clip)
            opt.step()
    finally:
        for p, w in zip(params, was):
            p.requires_grad_(w)
            p.grad = None
    return steps


# --- the shared queue ----------------------------------------------------------------------------------

class Queue:
    """Group indices lo .. hi-1 handed out once each across the ranks: the process group's store counter
    (atomic add) under torch.distributed, a local counter otherwise."""

    calls = 0  # one key per queue segment, the same on every rank (every rank builds the same segments in order)

    def __init__(self, lo: int, hi: int, world: int):
        Queue.calls += 1
        self.lo, self.hi, self.key = lo, hi, f"golf_ttt_queue_{Queue.calls}"
        self.store = _store() if world > 1 else None
        self.next = lo

    def claim(self) -> int | None:
        if self.store is None:
            i, self.next = self.next, self.next + 1
        else:
            i = self.lo + int(self.store.add(self.key, 1)) - 1
        return i if i < self.hi else None


def _store():
    from torch.distributed import distributed_c10d

    return distributed_c10d._get_default_store()


# --- the method ----------------------------------------------------------------------------------------

def evaluate_ttt(lm, prior_rows: Callable, val_tokens, *, cfg: TTTConfig, window: int, byte_tables: ByteTables,
                 dist=None, device="cpu", amp=None, progress: bool = True,
                 record: Callable[[Scored], None] | None = None, runner: type = DocTTT):
    """BPB of lm over val_tokens with score-first TTT; see the module docstring. The predictor is restored
    afterwards (the global phases train a copy of the transformer's weights, put back at the end)."""
    check_config(cfg)
    device = torch.device(device)
    amp = amp or contextlib.nullcontext
    rank, world = _rank_world(dist)
    tokens = _as_tokens(val_tokens)
    window = cfg.window or window
    t = lm.transformer
    docs = find_documents(tokens, t.cfg.bos_id)
    groups = group_documents(docs, cfg.batch_docs)
    phases = phase_boundaries(groups, cfg)
    if phases and cfg.global_chunk_tokens % window:
        raise ConfigError(f"ttt.global_chunk_tokens={cfg.global_chunk_tokens}: expected a multiple of the window "
                          f"({window})")
    saved = {k: v.detach().clone() for k, v in t.state_dict().items()} if phases else None
    gen = torch.Generator().manual_seed(cfg.seed + rank)
    meter = BpbMeter(byte_tables)
    loop = runner(lm, prior_rows, tokens, cfg, window, device, amp, meter, record, gen)
    total = len(tokens) - 1
    bar = Progress(f"ttt chunk={cfg.chunk} window={window}", total=math.ceil(total / world), unit="targets") \
        if progress and rank == 0 else None
    start_time = time.perf_counter()
    phase_steps = []
    grads = [p.requires_grad for p in t.parameters()]
    for p in t.parameters():
        p.requires_grad_(False)  # only the LoRA learns between phases
    try:
        ends = [at for at, _ in phases] + [len(groups)]
        lo = 0
        for k, hi in enumerate(ends):
            queue = Queue(lo, hi, world)
            while (g := queue.claim()) is not None:
                n = loop.run_group(docs[groups[g]])
                if bar is not None:
                    bar.update(n, docs=len(groups[g]))
            if k < len(phases):
                if world > 1:
                    torch.distributed.barrier()
                scored = np.concatenate(groups[:hi])
                keep = scored[np.lexsort((docs[scored, 0], docs[scored, 1]))][:phases[k][1]]
                phase_steps.append(global_phase(lm, prior_rows, tokens, docs[keep], cfg, window, rank,
                                                world, device, amp))
                loop.adapters = None  # a fresh LoRA after each phase
            lo = hi
        ops.check_device_indices(device)
        if world > 1:
            meter.all_reduce()
    finally:
        for p, g in zip(t.parameters(), grads):
            p.requires_grad_(g)
        if saved is not None:
            t.load_state_dict(saved)
    seconds = time.perf_counter() - start_time
    if bar is not None:
        bar.close()
    info = {"documents": len(docs), "groups": len(groups), "phases": [
        {"after_groups": at, "documents": n, "sgd_steps": s} for (at, n), s in zip(phases, phase_steps)]}
    return EvalResult(val_loss=meter.val_loss, val_bpb=meter.bpb, targets=meter.targets, bytes=meter.bytes,
                      seconds=seconds, tokens_per_s=meter.targets / seconds if seconds > 0 else math.inf,
                      window=window, stride=cfg.chunk, windows=len(groups), nll_sum=meter.nll_sum, method="ttt",
                      info=info)
