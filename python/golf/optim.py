"""Optimizers for golf: Muon for block matrices, AdamW for the rest, the wall-clock LR schedule, EMA.

The recipe is the records' (ANCHOR.md §2-3): Muon on the 2-D matrices of the transformer blocks, AdamW
(betas 0.9/0.95, eps 1e-8, fused on CUDA) on embeddings/tables and on scalars/vectors, a linear warmdown
to 0 over the end of the wall-clock budget, optional global-norm gradient clipping and an fp32 EMA.

Newton-Schulz and Muon
    newton_schulz(G, steps=5, dtype=torch.bfloat16, eps=1e-7) -> Tensor
        Approximate orthogonalisation of G [..., m, n] (batched over leading dims): Frobenius-normalise,
        transpose when m > n, 5 quintic steps (a, b, c) = (3.4445, -4.7750, 2.0315) in `dtype`.
        Singular values land in roughly [0.5, 1.5], not exactly 1 (by design of the coefficients).
        Same shape and dtype as G. The plain formula, one fresh tensor per product, sum and scale.
    NSWorkspace().newton_schulz(G, steps, dtype, eps, coefficients) -> Tensor
        The same iteration, per step three fused batched products (bmm, baddbmm, baddbmm) into buffers kept
        for the next call (the result is one of them, valid until then); golf.muon_banks steps its banks so.
    Muon(params, lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.0, ns_steps=5, ns_dtype=torch.bfloat16)
        Per parameter p (ndim >= 2; leading dims are a batch of matrices, e.g. parameter banks), grad g:
            buf <- mu*buf + g;   u <- g + mu*buf (Nesterov) or buf
            o   <- newton_schulz(u);   scale = sqrt(max(1, rows/cols)), rows, cols = p.shape[-2:]
            p   <- p*(1 - lr*wd);      p <- p - lr*scale*o
        `momentum` is read from the param group at every step, so the caller drives its warmup.
        muon_direction(g, buf, group, workspace=None) is that rule's o (one place for both Muon and BankedMuon;
        BankedMuon passes each bank's NSWorkspace, so its step allocates nothing of a bank's size).
        Under DDP the gradients arrive already averaged, so every rank computes the same update and
        Muon needs no communication of its own (each rank repeats the Newton-Schulz work).
        OptimConfig.muon_banks builds golf.muon_banks.BankedMuon instead: the same update, banked by shape and
        sharded over the ranks (its gradients then stay out of DDP: Optimizers.banked / .synced).

Configuration and the optimizer bundle
    OptimConfig(...)                       one dataclass with every optimizer knob (validated on creation)
    param_group_of(name, p) -> str         "muon" | "embed" | "scalar" | "frozen" (the grouping rule below)
    build_optimizers(named_params, cfg) -> Optimizers
    Optimizers
        .step(lr_scale, momentum) -> float          set them (golf.schedule computes both), clip, step all
        .zero_grad(set_to_none=True)
        .lr_scale, .momentum                        the last values set by .step
        .groups: dict[str, list[str]]               parameter names per group (for logs)
        .muon, .adam                                the underlying optimizers (None when their group is empty)
        .state_dict() / .load_state_dict(sd)        everything needed to resume bit-identically
    `step` counts optimizer steps already taken (0 for the first); `elapsed_s` is the training-loop timer.

    Grouping rule (first match wins):
      1. an attribute p._golf_group in {"muon", "embed", "table" (= "embed"), "scalar", "frozen"};
      2. p.requires_grad is False -> "frozen";
      3. the name contains "emb" or "table" -> "embed" (AdamW at embed_lr);
      4. a 2-D matrix under a block container (a dotted name component in BLOCK_CONTAINERS) whose smaller
         side is >= MUON_MIN_DIM -> "muon" (so resid_mix (2, d) stays a scalar-group tensor);
      5. anything else (vectors, gains, scalars, matrices outside the blocks) -> "scalar" (AdamW at scalar_lr).
    "frozen" parameters get no optimizer (even if they still require grad) and are left out of clipping.

Schedules (pure functions; units only need to agree, so steps work as well as seconds)
    lr_scale(elapsed_s, budget_s, warmup_s=0.0, warmdown_s=0.0, floor=0.0) -> float
        min(linear warmup 0 -> 1 over warmup_s, linear warmdown 1 -> 0 over the last warmdown_s of the budget,
        not below floor); 0 once elapsed_s >= budget_s.
    warmdown_seconds_from_steps(steps, avg_step_s) -> float   the records' warmdown-in-steps, in seconds
    momentum_at(step, start, end, warmup_steps) -> float      linear Muon momentum warmup
    lr_and_momentum(cfg, step, elapsed_s, budget_s, step_s=None) -> (lr scale, momentum)   both, by cfg's form
        (warmdown_steps at the measured step time, else warmdown_frac of the budget); golf.schedule calls it

EMA
    EMA(model, decay)    fp32 shadow of the parameters and floating buffers (DDP / torch.compile unwrapped)
        .update(model)   shadow <- decay*shadow + (1-decay)*w
        .copy_to(model)  write the shadow into the model (cast to each tensor's dtype)
        .state_dict() / .load_state_dict(sd)
    unwrap_model(model) -> nn.Module   the module under DDP / DataParallel / torch.compile wrappers
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from golf.errors import ConfigError

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
# Polar Express (Amsel et al. 2025; PR #1412's POLAR_EXPRESS=1): one (a, b, c) per iteration, the last repeated
NS_POLAR_EXPRESS = ((8.237312490495558, -23.157747414558205, 16.680568411445918),
                    (4.082441999064834, -2.893047735332586, 0.525284925697565),
                    (3.926347992254655, -2.854746803476530, 0.531802242289499),
                    (3.298218713308514, -2.424541981026706, 0.486320083588441),
                    (2.320007312889811, -1.686216972996763, 0.420680273402352))
NS_SCHEDULES = {"fixed": (NS_COEFFICIENTS,), "polar_express": NS_POLAR_EXPRESS}
NS_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
GROUPS = ("muon", "embed", "scalar", "frozen")
GROUP_ALIASES = {"table": "embed"}
BLOCK_CONTAINERS = ("blocks", "layers")
EMBED_NAME_PARTS = ("emb", "table")
MUON_MIN_DIM = 8  # a "matrix" with fewer rows or columns is a stack of vectors, not a linear map


# --- Newton-Schulz and Muon -----------------------------------------------------------------------------

def newton_schulz(G: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.bfloat16,
                  eps: float = 1e-7, coefficients: str = "fixed") -> torch.Tensor:
    """Approximately orthogonalise G [..., m, n] with the records' quintic Newton-Schulz iteration: the same
    (a, b, c) every step ("fixed"), or one per step (NS_SCHEDULES["polar_express"], its last repeated)."""
    if G.ndim < 2:
        raise ValueError(f"newton_schulz needs a matrix or a batch of matrices, got shape {tuple(G.shape)}")
    schedule = NS_SCHEDULES[coefficients]
    # Normalise in G's own precision, then iterate in `dtype`: ||X||_2 <= ||X||_F = 1 puts every
    # singular value inside the iteration's basin.
    X = (G / (G.norm(dim=(-2, -1), keepdim=True) + eps)).to(dtype)
    tall = G.size(-2) > G.size(-1)
    if tall:  # iterate on the wide orientation: the Gram matrix X X^T is then the small one
        X = X.mT
    for i in range(steps):
        a, b, c = schedule[min(i, len(schedule) - 1)]
        A = X @ X.mT
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    if tall:
        X = X.mT
    return X.to(G.dtype)


class NSWorkspace:
    """newton_schulz for one shape [..., m, n], in buffers kept from call to call (golf.muon_banks.BankedMuon keeps
    one per bank). The same iteration, each step three batched products and nothing else:

        A = X X^T (bmm);   B = b*A + c*A A (baddbmm);   X <- a*X + B X (baddbmm, into the other X buffer)

    newton_schulz allocates eight tensors a step: on a CPU, those of a bank's size (tens of MB) glibc maps fresh
    and each use page-faults them in again; on a GPU each op is a launch. In bf16 a fused product rounds once
    where newton_schulz rounds the product, the scaling and the sum (the result lands nearer the fp32 iteration).
    Layouts (any is free on a GPU): X keeps G's, B takes the other one, and A A reads A once as its transpose
    (A is symmetric), since torch's CPU GEMM for bf16 (without oneDNN, which needs bf16 units) is several times
    faster with the two operands' layouts mixed so."""

    def __init__(self):
        self._buffers: dict[str, torch.Tensor] = {}

    def _buffer(self, name: str, shape: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        t = self._buffers.get(name)
        if t is None or t.shape != shape or t.dtype != dtype or t.device != device:
            t = self._buffers[name] = torch.empty(shape, dtype=dtype, device=device)
        return t

    def input(self, like: torch.Tensor) -> torch.Tensor:
        """The buffer newton_schulz_ takes, of like's shape and dtype (muon_direction builds its update there)."""
        return self._buffer("u", tuple(like.shape), like.dtype, like.device)

    def newton_schulz(self, G: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.bfloat16,
                      eps: float = 1e-7, coefficients: str = "fixed") -> torch.Tensor:
        """newton_schulz(G, ...) in this workspace (G is left as it is); the result is the workspace's."""
        return self.newton_schulz_(self.input(G).copy_(G), steps, dtype, eps, coefficients)

    def newton_schulz_(self, u: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.bfloat16,
                       eps: float = 1e-7, coefficients: str = "fixed") -> torch.Tensor:
        """newton_schulz of u, which must be this workspace's input buffer: overwritten with the result, returned."""
        if u.ndim < 2 or u is not self._buffers.get("u"):
            raise ValueError("NSWorkspace.newton_schulz_ takes the workspace's input buffer (a matrix or a batch)")
        schedule = NS_SCHEDULES[coefficients]
        m, n = u.shape[-2:]
        u3 = u.view(-1, m, n)
        tall = m > n
        r = min(m, n)
        wide = (lambda t: t.mT) if tall else (lambda t: t)  # a [B, m, n] buffer in the wide orientation
        # Normalise in u's own precision, then iterate in `dtype`, as newton_schulz does.
        u3.div_(u3.norm(dim=(-2, -1), keepdim=True).add_(eps))
        shape = tuple(u3.shape)
        if dtype == u.dtype:  # the normalised u is the first X: one buffer fewer, one copy fewer
            X, Xn = u3, self._buffer("x0", shape, dtype, u.device)
        else:
            X = self._buffer("x0", shape, dtype, u.device).copy_(u3)
            Xn = self._buffer("x1", shape, dtype, u.device)
        A = self._buffer("a", (shape[0], r, r), dtype, u.device)
        Bt = self._buffer("b", (shape[0], r, r), dtype, u.device)
        B = Bt if tall else Bt.mT  # the layout opposite to wide(X)'s
        for i in range(steps):
            a, b, c = schedule[min(i, len(schedule) - 1)]
            torch.bmm(wide(X), wide(X).mT, out=A)
            torch.baddbmm(A, A.mT, A, beta=b, alpha=c, out=B)
            torch.baddbmm(wide(X), B, wide(X), beta=a, alpha=1.0, out=wide(Xn))
            X, Xn = Xn, X
        if X.data_ptr() != u3.data_ptr():
            u3.copy_(X)
        return u


class Muon(torch.optim.Optimizer):
    """Muon with the records' update rule (module docstring).

    Ours rather than torch.optim.Muon (present in torch 2.13), because torch's version
      - keeps momentum as an EMA (buf.lerp_(g, 1 - mu)), which equals the records' buf = mu*buf + g only up
        to a factor that changes when mu changes, so the records' momentum warmup takes different steps;
      - rejects anything but 2-D parameters (no 3-D parameter banks);
      - hard-codes bfloat16 for Newton-Schulz (no fp32 option for CPU checks) in a private helper.
    Its shape scaling ("original": sqrt(max(1, A/B))), Nesterov and decoupled weight decay match.
    """

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True,
                 weight_decay: float = 0.0, ns_steps: int = 5, ns_dtype: torch.dtype = torch.bfloat16,
                 row_normalize: bool = False, ns_coefficients: str = "fixed"):
        if lr < 0 or not 0.0 <= momentum < 1.0 or weight_decay < 0 or ns_steps < 1 or \
                ns_coefficients not in NS_SCHEDULES:
            raise ValueError(f"Muon: invalid lr={lr}, momentum={momentum}, weight_decay={weight_decay}, "
                             f"ns_steps={ns_steps} or ns_coefficients={ns_coefficients!r}")
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                        ns_steps=ns_steps, ns_dtype=ns_dtype, row_normalize=row_normalize,
                        ns_coefficients=ns_coefficients)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim < 2:
                    raise ValueError(f"Muon takes matrices (ndim >= 2), got a parameter of shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(g)
                buf = state["momentum_buffer"]
                buf.mul_(mu).add_(g)
                o = muon_direction(g, buf, group)
                scale = math.sqrt(max(1.0, p.size(-2) / p.size(-1)))
                if wd:
                    p.mul_(1.0 - lr * wd)
                p.add_(o, alpha=-lr * scale)
        return loss


def muon_direction(g: torch.Tensor, buf: torch.Tensor, group: dict, workspace: NSWorkspace | None = None
                   ) -> torch.Tensor:
    """The orthogonalised step of gradient g [..., m, n] given its updated momentum buf (the Nesterov mix,
    MuonEq-R, Newton-Schulz), before the shape scale and the LR: one matrix or a batch of them (golf.muon_banks).
    With a workspace (BankedMuon's), built in its buffers with its fused Newton-Schulz, and overwritten by its
    next use; without (Muon's), newton_schulz's plain formula in fresh tensors, which for one matrix are small
    enough for the heap to reuse."""
    mu, steps, dtype, coefficients = group["momentum"], group["ns_steps"], group["ns_dtype"], group["ns_coefficients"]
    if workspace is None:
        u = g.add(buf, alpha=mu) if group["nesterov"] else buf
        if group["row_normalize"]:  # MuonEq-R (PR #1412): every row of the update at unit norm first
            u = u / u.float().norm(dim=-1, keepdim=True).clamp_min(1e-7).to(u.dtype)
        return newton_schulz(u, steps=steps, dtype=dtype, coefficients=coefficients)
    u = workspace.input(g)
    if group["nesterov"]:
        torch.add(g, buf, alpha=mu, out=u)
    else:
        u.copy_(buf)
    if group["row_normalize"]:
        u.div_(u.float().norm(dim=-1, keepdim=True).clamp_min(1e-7).to(u.dtype))
    return workspace.newton_schulz_(u, steps=steps, dtype=dtype, coefficients=coefficients)


# --- configuration -------------------------------------------------------------------------------------

@dataclass
class OptimConfig:
    """Every optimizer knob. Defaults are the naive baseline's (ANCHOR.md §2); presets override them."""

    matrix_lr: float = 0.04                  # Muon, block matrices
    embed_lr: float = 0.05                   # AdamW, embeddings and tables
    scalar_lr: float = 0.04                  # AdamW, vectors, gains, scalars, matrices outside the blocks
    muon_momentum: float = 0.95
    muon_momentum_warmup_start: float = 0.85
    muon_momentum_warmup_steps: int = 500    # linear start -> muon_momentum over these steps; 0 = none
    muon_nesterov: bool = True
    muon_ns_steps: int = 5
    muon_ns_dtype: str = "bfloat16"          # a key of NS_DTYPES
    muon_ns_coefficients: str = "fixed"      # a key of NS_SCHEDULES: "polar_express" is PR #1412's option
    muon_row_normalize: bool = False         # MuonEq-R (PR #1412, on there): rows at unit norm before Newton-Schulz
    muon_banks: bool = False                 # golf.muon_banks: the matrices of a shape as one bank, sharded over
                                             # the ranks (PR #399's parallel Muon); the same update
    min_lr: float = 0.0                      # the warmdown's floor (PR #1412's MIN_LR, 0 there)
    muon_weight_decay: float = 0.0           # decoupled: p <- p*(1 - lr*wd)
    adam_weight_decay: float = 0.0           # decoupled (AdamW), on both AdamW groups as in R1147 and R1063
    embed_weight_decay: float | None = None  # the embed group's own (PR #1412's EMBED_WD); None: adam_weight_decay
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    grad_clip: float = 0.0                   # max global grad norm over optimised params; 0 = off
    grad_clip_local: bool = False            # clip each rank's own gradient before the ranks average (R1147's
                                             # order; golf.train does it), not the averaged one
    warmup_seconds: float = 0.0              # linear LR warmup from 0
    warmdown_frac: float = 0.5               # LR -> 0 linearly over this fraction of the budget, at its end
    warmdown_steps: int = 0                  # > 0: the records' warmdown in steps, converted with the
                                             # average step time so far; takes precedence over warmdown_frac
    ema_decay: float = 0.0                   # 0 = no EMA (the training loop reads this)

    def __post_init__(self):
        def check(name, ok, expected):
            if not ok:
                raise ConfigError(f"OptimConfig.{name} must be {expected}, found {getattr(self, name)!r}")

        for name in ("matrix_lr", "embed_lr", "scalar_lr", "muon_weight_decay", "adam_weight_decay",
                     "grad_clip", "warmup_seconds"):
            check(name, getattr(self, name) >= 0, ">= 0")
        for name in ("muon_momentum", "muon_momentum_warmup_start", "adam_beta1", "adam_beta2", "ema_decay"):
            check(name, 0.0 <= getattr(self, name) < 1.0, "in [0, 1)")
        for name in ("muon_momentum_warmup_steps", "warmdown_steps"):
            check(name, isinstance(getattr(self, name), int) and getattr(self, name) >= 0, "an int >= 0")
        check("muon_ns_steps", isinstance(self.muon_ns_steps, int) and self.muon_ns_steps >= 1, "an int >= 1")
        check("muon_ns_dtype", self.muon_ns_dtype in NS_DTYPES, f"one of {sorted(NS_DTYPES)}")
        check("muon_ns_coefficients", self.muon_ns_coefficients in NS_SCHEDULES, f"one of {sorted(NS_SCHEDULES)}")
        check("muon_banks", isinstance(self.muon_banks, bool), "true or false")
        check("min_lr", 0.0 <= self.min_lr <= 1.0, "in [0, 1]")
        check("adam_eps", self.adam_eps > 0, "> 0")
        check("embed_weight_decay", self.embed_weight_decay is None or (
            isinstance(self.embed_weight_decay, (int, float)) and self.embed_weight_decay >= 0), ">= 0 or null")
        check("warmdown_frac", 0.0 <= self.warmdown_frac <= 1.0, "in [0, 1]")


# --- schedules -----------------------------------------------------------------------------------------

def lr_scale(elapsed_s: float, budget_s: float, warmup_s: float = 0.0, warmdown_s: float = 0.0,
             floor: float = 0.0) -> float:
    """LR multiplier at `elapsed_s` of a `budget_s` run: warmup ramp, plateau at 1, warmdown ramp to 0 (not below
    `floor` before the budget ends: the records' MIN_LR)."""
    if not budget_s > 0:
        raise ConfigError(f"lr_scale: budget_s (the wall-clock budget) must be > 0, found {budget_s!r}")
    if warmup_s < 0 or warmdown_s < 0:
        raise ConfigError(f"lr_scale: warmup_s and warmdown_s must be >= 0, found {warmup_s!r}, {warmdown_s!r}")
    if elapsed_s >= budget_s:
        return 0.0
    up = 1.0 if warmup_s == 0 else min(1.0, max(elapsed_s, 0.0) / warmup_s)
    remaining = budget_s - elapsed_s
    down = 1.0 if remaining >= warmdown_s else max(remaining / warmdown_s, floor)
    return min(up, down)


def warmdown_seconds_from_steps(steps: int, avg_step_s: float) -> float:
    """The records' warmdown length: `steps` iterations at the average step time measured so far."""
    if steps < 0 or avg_step_s < 0:
        raise ConfigError(f"warmdown steps and step time must be >= 0, found {steps!r}, {avg_step_s!r}")
    return steps * avg_step_s


def momentum_at(step: int, start: float, end: float, warmup_steps: int) -> float:
    """Muon momentum after `step` steps: linear from `start` to `end` over `warmup_steps`, then `end`."""
    frac = 1.0 if warmup_steps <= 0 else min(step / warmup_steps, 1.0)
    return start + (end - start) * frac


def lr_and_momentum(cfg: OptimConfig, step: int, elapsed_s: float, budget_s: float, step_s: float | None = None
                    ) -> tuple[float, float]:
    """(lr scale, Muon momentum) for the step about to be taken. step_s: one step's length in elapsed_s's units
    when it is known (1 when elapsed and budget count steps: a run shorter than warmdown_steps then starts inside
    the warmdown, at budget / warmdown_steps, as the records' step schedule does); None, the average so far (the
    wall-clock schedule: unknown before the first step, which then runs at scale 1)."""
    if cfg.warmdown_steps > 0:
        avg_step_s = step_s if step_s is not None else elapsed_s / step if step > 0 else 0.0
        warmdown_s = warmdown_seconds_from_steps(cfg.warmdown_steps, avg_step_s)
    else:
        warmdown_s = cfg.warmdown_frac * budget_s
    scale = lr_scale(elapsed_s, budget_s, cfg.warmup_seconds, warmdown_s, cfg.min_lr)
    return scale, momentum_at(step, cfg.muon_momentum_warmup_start, cfg.muon_momentum, cfg.muon_momentum_warmup_steps)


# --- parameter groups and the optimizer bundle ---------------------------------------------------------

def param_group_of(name: str, p: torch.Tensor) -> str:
    """The group of one parameter by the rule in the module docstring."""
    tag = getattr(p, "_golf_group", None)
    if tag is not None:
        tag = GROUP_ALIASES.get(tag, tag)
        if tag not in GROUPS:
            raise ConfigError(f"parameter {name}: _golf_group must be one of {GROUPS + tuple(GROUP_ALIASES)}, "
                              f"found {getattr(p, '_golf_group')!r}")
        if tag == "muon" and p.ndim < 2:
            raise ConfigError(f"parameter {name}: _golf_group='muon' needs ndim >= 2, found shape {tuple(p.shape)}")
        return tag
    if not p.requires_grad:
        return "frozen"
    if any(part in name for part in EMBED_NAME_PARTS):
        return "embed"
    in_block = any(part in BLOCK_CONTAINERS for part in name.split(".")[:-1])
    if p.ndim == 2 and in_block and min(p.shape) >= MUON_MIN_DIM:
        return "muon"
    return "scalar"


class Optimizers:
    """Muon + AdamW stepped together at the LR scale and momentum golf.schedule gives; built by build_optimizers."""

    def __init__(self, muon, adam: torch.optim.AdamW | None, cfg: OptimConfig,
                 groups: dict[str, list[str]], params: list[torch.Tensor]):
        self.muon, self.adam, self.cfg, self.groups = muon, adam, cfg, groups
        self.params = params  # every optimised parameter, for clipping
        # golf.muon_banks.BankedMuon averages its own gradients across ranks: DDP must leave these out.
        self.banked = list(muon.param_groups[0]["params"]) if cfg.muon_banks and muon is not None else []
        ids = {id(p) for p in self.banked}
        self.synced = [p for p in params if id(p) not in ids]  # what DDP (or a manual all-reduce) averages
        self.lr_scale = 0.0
        self.momentum = cfg.muon_momentum_warmup_start if cfg.muon_momentum_warmup_steps else cfg.muon_momentum

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [o for o in (self.muon, self.adam) if o is not None]

    def step(self, lr_scale: float, momentum: float) -> float:
        """Set this step's LR scale and Muon momentum (golf.schedule decides them), clip the global grad norm,
        step every optimizer; returns the scale."""
        self.lr_scale, self.momentum = lr_scale, momentum
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * self.lr_scale
        if self.muon is not None:
            for group in self.muon.param_groups:
                group["momentum"] = self.momentum
        clip = self.cfg.grad_clip > 0 and not self.cfg.grad_clip_local
        if self.banked:
            coef = self._banked_clip() if clip else 1.0
            self.muon.step(coef)
            if self.adam is not None:
                self.adam.step()
            return self.lr_scale
        if clip:
            # Under DDP the grads are already averaged, so every rank sees the same norm.
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        for opt in self.optimizers:
            opt.step()
        return self.lr_scale

    def _banked_clip(self) -> float:
        """clip_grad_norm_'s coefficient over every averaged gradient, the banks' held in shards across the ranks
        (their squares all-reduced); the other gradients are scaled here, the banks' by muon.step."""
        sq = self.muon.reduce_grads()
        if self.muon.world > 1:
            torch.distributed.all_reduce(sq, group=self.muon.group)
        others = [p.grad for p in self.synced if p.grad is not None]
        if others:
            sq = sq + torch.stack([g.float().square().sum() for g in others]).sum().to(sq.device)
        coef = min(1.0, self.cfg.grad_clip / (float(sq.sqrt()) + 1e-6))
        if others:
            torch._foreach_mul_(others, coef)
        return coef

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict() if self.muon is not None else None,
                "adam": self.adam.state_dict() if self.adam is not None else None,
                "lr_scale": self.lr_scale, "momentum": self.momentum}

    def load_state_dict(self, sd: dict) -> None:
        if self.muon is not None and sd.get("muon") is not None and ("banks" in sd["muon"]) != bool(self.banked):
            raise ConfigError("optimizer state: its Muon state is "
                              f"{'banked' if 'banks' in sd['muon'] else 'per matrix'}; set optim.muon_banks="
                              f"{str('banks' in sd['muon']).lower()} to resume it")
        for key, opt in (("muon", self.muon), ("adam", self.adam)):
            if (opt is None) != (sd.get(key) is None):
                raise ConfigError(f"optimizer state: '{key}' present in one of the saved state and this run only "
                                  f"(was the model or the grouping changed?)")
            if opt is not None:
                opt.load_state_dict(sd[key])
        self.lr_scale, self.momentum = sd["lr_scale"], sd["momentum"]


def build_optimizers(named_params, cfg: OptimConfig) -> Optimizers:
    """Split (name, parameter) pairs into Muon / AdamW groups by param_group_of and build the optimizers."""
    by_group: dict[str, list[tuple[str, torch.Tensor]]] = {g: [] for g in GROUPS}
    seen: set[int] = set()
    for name, p in named_params:
        if id(p) in seen:  # tied weights appear once
            continue
        seen.add(id(p))
        by_group[param_group_of(name, p)].append((name, p))
    groups = {g: [n for n, _ in items] for g, items in by_group.items()}

    muon = None
    if by_group["muon"]:
        cls = Muon
        if cfg.muon_banks:
            from golf.muon_banks import BankedMuon as cls  # it builds on this module
        muon = cls([{"params": [p for _, p in by_group["muon"]], "base_lr": cfg.matrix_lr, "name": "muon"}],
                   lr=cfg.matrix_lr, momentum=cfg.muon_momentum, nesterov=cfg.muon_nesterov,
                   weight_decay=cfg.muon_weight_decay, ns_steps=cfg.muon_ns_steps,
                   ns_dtype=NS_DTYPES[cfg.muon_ns_dtype], row_normalize=cfg.muon_row_normalize,
                   ns_coefficients=cfg.muon_ns_coefficients)

    embed_wd = cfg.adam_weight_decay if cfg.embed_weight_decay is None else cfg.embed_weight_decay
    adam_groups = [{"params": [p for _, p in by_group[g]], "lr": lr, "base_lr": lr, "name": g, "weight_decay": wd}
                   for g, lr, wd in (("embed", cfg.embed_lr, embed_wd), ("scalar", cfg.scalar_lr, cfg.adam_weight_decay))
                   if by_group[g]]
    adam = None
    if adam_groups:
        adam_params = [p for group in adam_groups for p in group["params"]]
        fused = True if all(p.is_cuda for p in adam_params) else None
        adam = torch.optim.AdamW(adam_groups, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps,
                                 weight_decay=cfg.adam_weight_decay, fused=fused)

    if muon is None and adam is None:
        raise ConfigError("build_optimizers: no trainable parameters (all frozen or none given)")
    params = [p for g in ("muon", "embed", "scalar") for _, p in by_group[g]]
    return Optimizers(muon, adam, cfg, groups, params)


# --- EMA -----------------------------------------------------------------------------------------------

def unwrap_model(model: nn.Module) -> nn.Module:
    """The module under DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def _ema_tensors(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Parameters and floating-point buffers by name (integer buffers such as counters are not averaged)."""
    model = unwrap_model(model)
    items = list(model.named_parameters())
    items += [(n, b) for n, b in model.named_buffers() if b.is_floating_point()]
    return items


class EMA:
    """fp32 exponential moving average of a model's weights: shadow <- decay*shadow + (1-decay)*w."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"EMA decay (ema_decay) must be in [0, 1), found {decay!r}")
        self.decay = decay
        items = _ema_tensors(model)
        self.names = [n for n, _ in items]
        with torch.no_grad():
            self.shadow = [t.detach().float().clone() for _, t in items]

    def _current(self, model: nn.Module) -> list[torch.Tensor]:
        items = _ema_tensors(model)
        names = [n for n, _ in items]
        if names != self.names:
            raise ConfigError(f"EMA: the model's tensors differ from the shadow's "
                              f"(expected {len(self.names)} named tensors, found {len(names)})")
        return [t.detach() for _, t in items]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        current = [t.float() for t in self._current(model)]  # no copy for fp32 weights
        torch._foreach_mul_(self.shadow, self.decay)
        torch._foreach_add_(self.shadow, current, alpha=1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        for target, s in zip(self._current(model), self.shadow):
            target.copy_(s)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": dict(zip(self.names, self.shadow))}

    @torch.no_grad()
    def load_state_dict(self, sd: dict) -> None:
        if list(sd["shadow"]) != self.names:
            raise ConfigError("EMA state: tensor names differ from this model's")
        self.decay = sd["decay"]
        for s, saved in zip(self.shadow, sd["shadow"].values()):
            s.copy_(saved)
