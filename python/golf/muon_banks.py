"""Muon over parameter banks, sharded across ranks (the records' parallel Muon, PR #399; ANCHOR.md §3).

Muon's update is per matrix, and golf.optim.Muon steps each matrix on its own, on every rank: under DDP each
rank repeats all of them (~30 kernel launches a matrix). `BankedMuon` gives the same update with the work split:

    banks     the matrices grouped by (shape, dtype, device), in the order given: one bank of B matrices [m, n]
              is stepped as one [B, m, n] batch (one Newton-Schulz over the batch, one foreach update);
    shards    with W ranks, rank r owns matrices [r*S, (r+1)*S) of each bank, S = ceil(B / W) (the last shard
              padded with zero matrices, whose update is zero);
    a step    every bank's gradients stacked and reduce-scattered (asynchronously, all banks at once): rank r
              receives the sum of its own matrices' gradients, divided by W (the average DDP would give);
              then bank by bank, as its gradients arrive: momentum, Newton-Schulz on the shard, the update
              all-gathered (asynchronously, while the next bank computes); last, every rank applies every
              bank's gathered update to its matrices, so the weights stay identical across ranks.
    buffers   each bank keeps its [B, m, n] tensors from step to step: the stacked gradients, the gathered
              updates and a golf.optim.NSWorkspace (the Nesterov mix, Newton-Schulz's iterates and products),
              so a step allocates nothing of a bank's size (on a CPU, fresh ones are page-faulted at every
              step; on a GPU, the caching allocator spares that, and the fused products save launches).

The parameters stay the model's own per-layer matrices (the Hessian hooks, the EMA and the artifact see them
as before); their gradients must be each rank's local ones, so they must be left out of DDP. The update rule
is golf.optim.Muon's (momentum, Nesterov, MuonEq-R, Newton-Schulz, shape scale, decoupled weight decay); with
W = 1 it is that optimizer batched. Momentum lives only for the owned shard; `state_dict` gathers it to a
world-size-free form (a collective: every rank calls it), `load_state_dict` takes a rank's shard back.

    BankedMuon(params, lr, momentum, nesterov, weight_decay, ns_steps, ns_dtype, row_normalize, ns_coefficients,
               group=None)
        .param_groups           one group, as torch optimizers have (Optimizers sets "lr" and "momentum")
        .reduce_grads() -> Tensor   launch and finish the reduce-scatters; this rank's share of the squared
                                    global norm of the averaged gradients (all-reduce it with the rest)
        .step(grad_scale=1.0)   the update, the averaged gradients times grad_scale (global-norm clipping)
        .zero_grad(set_to_none=True), .state_dict(), .load_state_dict(sd)
        .banks                  [(shape, number of matrices)] in stepping order
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from golf.optim import NS_SCHEDULES, NSWorkspace, muon_direction


def _world(group) -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    return 0, 1


class _Bank:
    def __init__(self, params: list[torch.Tensor], rank: int, world: int):
        self.params = params
        self.shape = tuple(params[0].shape)
        self.shard = math.ceil(len(params) / world)
        self.lo = rank * self.shard
        self.momentum: torch.Tensor | None = None  # [shard, m, n], created at the first step
        self.grads: torch.Tensor | None = None     # this rank's averaged shard, after reduce_grads
        self.has: list[bool] = []                  # which matrices have a gradient this step
        self.pending = None
        # [shard * world, m, n] each, kept: fresh ones each step cost page faults on a CPU (a GPU's caching
        # allocator spares it): the stacked local gradients, the gathered updates, Newton-Schulz's workspace.
        self.stack: torch.Tensor | None = None
        self.gathered: torch.Tensor | None = None
        self.ns = NSWorkspace()

    def stacked_grads(self, world: int) -> torch.Tensor:
        """[shard * world, m, n]: the local gradients (zeros for a missing one and the padding)."""
        p0 = self.params[0]
        if self.stack is None:  # the padding rows stay zero
            self.stack = torch.zeros((self.shard * world, *self.shape), dtype=p0.dtype, device=p0.device)
        grads = [p.grad for p in self.params]
        self.has = [g is not None for g in grads]
        if all(self.has):
            torch.stack(grads, out=self.stack[: len(grads)])
        else:
            for i, g in enumerate(grads):
                self.stack[i].copy_(g) if g is not None else self.stack[i].zero_()
        return self.stack


class BankedMuon:
    """Muon over banks, sharded across the ranks of `group`; see the module docstring."""

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True,
                 weight_decay: float = 0.0, ns_steps: int = 5, ns_dtype: torch.dtype = torch.bfloat16,
                 row_normalize: bool = False, ns_coefficients: str = "fixed", group=None):
        if lr < 0 or not 0.0 <= momentum < 1.0 or weight_decay < 0 or ns_steps < 1 or \
                ns_coefficients not in NS_SCHEDULES:
            raise ValueError(f"BankedMuon: invalid lr={lr}, momentum={momentum}, weight_decay={weight_decay}, "
                             f"ns_steps={ns_steps} or ns_coefficients={ns_coefficients!r}")
        groups = list(params)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        if len(groups) != 1:
            raise ValueError(f"BankedMuon takes one parameter group, got {len(groups)}")
        self.param_groups = [dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                                  ns_steps=ns_steps, ns_dtype=ns_dtype, row_normalize=row_normalize,
                                  ns_coefficients=ns_coefficients, **groups[0])]
        self.param_groups[0]["params"] = list(self.param_groups[0]["params"])
        self.group = group
        self.rank, self.world = _world(group)
        by_key: dict[tuple, list[torch.Tensor]] = {}
        for p in self.param_groups[0]["params"]:
            if p.ndim != 2:
                raise ValueError(f"BankedMuon takes 2-D matrices, got a parameter of shape {tuple(p.shape)}")
            by_key.setdefault((tuple(p.shape), p.dtype, p.device), []).append(p)
        self._banks = [_Bank(ps, self.rank, self.world) for ps in by_key.values()]
        self._reduced = False

    @property
    def banks(self) -> list[tuple[tuple[int, ...], int]]:
        return [(b.shape, len(b.params)) for b in self._banks]

    # --- the step ---

    @torch.no_grad()
    def reduce_grads(self) -> torch.Tensor:
        """Average each bank's gradients onto the rank that owns them; returns this rank's sum of squares of its
        averaged shards (float32 0-d), whose all-reduce with the other parameters' is the squared global norm."""
        for b in self._banks:
            full = b.stacked_grads(self.world)
            if self.world == 1:
                b.grads, b.pending = full, None
                continue
            if b.grads is None or b.grads.shape[0] != b.shard:
                b.grads = torch.empty((b.shard, *b.shape), dtype=full.dtype, device=full.device)
            b.pending = dist.reduce_scatter_tensor(b.grads, full, group=self.group, async_op=True)
        total = None
        for b in self._banks:
            if b.pending is not None:
                b.pending.wait()
                b.pending = None
                b.grads.div_(self.world)
            sq = torch.linalg.vector_norm(b.grads, dtype=torch.float32).square()  # no [B, m, n] temporary
            total = sq if total is None else total + sq
        self._reduced = True
        return total if total is not None else torch.zeros(())

    @torch.no_grad()
    def step(self, grad_scale: float = 1.0) -> None:
        if not self._reduced:
            self.reduce_grads()
        g = self.param_groups[0]
        lr, mu, wd = g["lr"], g["momentum"], g["weight_decay"]
        gathers = []
        for b in self._banks:
            grads = b.grads if grad_scale == 1.0 else b.grads.mul_(grad_scale)
            if b.momentum is None:
                b.momentum = torch.zeros_like(grads)
            own = b.has[b.lo: b.lo + b.shard]
            if all(own) and len(own) == b.shard:
                b.momentum.mul_(mu).add_(grads)
            else:  # as golf.optim.Muon, a matrix without a gradient keeps its momentum (and its weights)
                keep = torch.tensor(own + [False] * (b.shard - len(own)), device=grads.device)[:, None, None]
                b.momentum.copy_(torch.where(keep, b.momentum * mu + grads, b.momentum))
            o = muon_direction(grads, b.momentum, g, b.ns)  # b.ns's buffer: valid until the bank's next step
            o.mul_(-lr * math.sqrt(max(1.0, b.shape[0] / b.shape[1])))
            if self.world == 1:
                gathers.append((b, o, None))
                continue
            if b.gathered is None:
                b.gathered = torch.empty((b.shard * self.world, *b.shape), dtype=o.dtype, device=o.device)
            gathers.append((b, b.gathered, dist.all_gather_into_tensor(b.gathered, o.contiguous(), group=self.group,
                                                                       async_op=True)))
        for b, update, work in gathers:
            if work is not None:
                work.wait()
            params = [p for p, ok in zip(b.params, b.has) if ok]
            updates = [u for u, ok in zip(update[: len(b.params)].unbind(0), b.has) if ok]
            if params and wd:
                torch._foreach_mul_(params, 1.0 - lr * wd)
            if params:
                torch._foreach_add_(params, updates)
        self._reduced = False

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.param_groups[0]["params"]:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.zero_()

    # --- state ---

    def state_dict(self) -> dict:
        """{"momentum": [per bank: [B, m, n] or None]} for all B matrices, the same on every rank (collective)."""
        out = []
        for b in self._banks:
            if b.momentum is None:
                out.append(None)
                continue
            if self.world == 1:
                full = b.momentum
            else:
                full = torch.empty((b.shard * self.world, *b.shape), dtype=b.momentum.dtype,
                                   device=b.momentum.device)
                dist.all_gather_into_tensor(full, b.momentum.contiguous(), group=self.group)
            out.append(full[: len(b.params)].detach().cpu().clone())
        return {"momentum": out, "banks": self.banks}

    def load_state_dict(self, sd: dict) -> None:
        if [(tuple(shape), int(n)) for shape, n in sd["banks"]] != self.banks:
            raise ValueError(f"BankedMuon state: banks {sd['banks']} differ from this model's {self.banks}")
        for b, m in zip(self._banks, sd["momentum"]):
            if m is None:
                b.momentum = None
                continue
            p0 = b.params[0]
            shard = torch.zeros((b.shard, *b.shape), dtype=p0.dtype, device=p0.device)
            own = m[b.lo: b.lo + b.shard]
            shard[: own.shape[0]] = own.to(shard)
            b.momentum = shard
