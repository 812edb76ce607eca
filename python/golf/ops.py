"""The Python face of golf._C, and the only door to it.

Every op has three implementations held equal by the tests: `ref_<op>` here (plain PyTorch, the
specification), a C++ CPU kernel (csrc/cpu) and a CUDA kernel (kernels/ + csrc/cuda), both reached as
`torch.ops.golf.<op>`. Callers use the public function `<op>`, which runs the compiled kernel for the
tensor's device when one is registered and otherwise the reference, logging that fallback once per
(op, device) at WARNING level so it is never silent.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger("golf.ops")

try:
    from golf import _C

    BUILD_INFO: dict = dict(_C.build_info())
    IMPORT_ERROR: str | None = None
except ImportError as exc:  # source checkout without a build: everything runs on the references
    _C = None
    BUILD_INFO = {"torch_version": None, "cuda": False, "cuda_reason": "golf._C is not built", "cuda_archs": "",
                  "nvcc_version": ""}
    IMPORT_ERROR = str(exc)

_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA"}


def _kernel_table() -> dict[tuple[str, str], bool]:
    """(op, device type) -> compiled kernel registered. Read once: registrations are fixed after import,
    and a plain dict lookup is something torch.compile can trace."""
    if _C is None:
        return {}
    names = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("golf::"))
    return {(n.split("::", 1)[1], device): torch._C._dispatch_has_kernel_for_dispatch_key(n, key)
            for n in names for device, key in _DISPATCH_KEYS.items()}


_KERNELS = _kernel_table()
_fallbacks: set[tuple[str, str]] = set()


def has_kernel(op: str, device_type: str) -> bool:
    """True when golf._C registers a kernel for `golf::<op>` on this device type ("cpu", "cuda")."""
    return _KERNELS.get((op, device_type), False)


def registered_ops() -> dict[str, list[str]]:
    """Every golf::* op in golf._C, with the device types it has compiled kernels for."""
    ops_ = sorted({op for op, _ in _KERNELS})
    return {f"golf::{op}": [d for d in _DISPATCH_KEYS if _KERNELS[(op, d)]] for op in ops_}


def fallbacks() -> set[tuple[str, str]]:
    """The (op, device type) pairs that ran on the reference in this process."""
    return set(_fallbacks)


def _use_kernel(op: str, device: torch.device) -> bool:
    if has_kernel(op, device.type):
        return True
    if (op, device.type) not in _fallbacks:
        _fallbacks.add((op, device.type))
        why = f"golf._C failed to import: {IMPORT_ERROR}" if _C is None else f"no {device.type} kernel in this build"
        log.warning("golf.ops: golf::%s on %s runs the PyTorch reference (%s)", op, device.type, why)
    return False


# --- target_bytes --------------------------------------------------------------------------------------

def ref_target_bytes(prev: torch.Tensor, target: torch.Tensor, base_bytes: torch.Tensor,
                     leading_space: torch.Tensor, boundary: torch.Tensor) -> torch.Tensor:
    """Bytes credited to each target: base_bytes[target] + (leading_space[target] and not boundary[prev]).

    The challenge's BPB denominator: a piece's leading "▁" is one space byte unless the previous
    token is a boundary (BOS), i.e. a document's first token has no leading space to count.
    int32, shaped like `target`.
    """
    if prev.shape != target.shape:
        raise ValueError(f"target_bytes: prev has shape {tuple(prev.shape)} but target has {tuple(target.shape)}")
    space = leading_space[target] & ~boundary[prev]
    return (base_bytes[target] + space.to(torch.int32)).to(torch.int32)


def target_bytes(prev: torch.Tensor, target: torch.Tensor, base_bytes: torch.Tensor,
                 leading_space: torch.Tensor, boundary: torch.Tensor) -> torch.Tensor:
    if _use_kernel("target_bytes", target.device):
        return torch.ops.golf.target_bytes(prev, target, base_bytes, leading_space, boundary)
    return ref_target_bytes(prev, target, base_bytes, leading_space, boundary)


if _C is not None:
    @torch.library.register_fake("golf::target_bytes")
    def _target_bytes_fake(prev, target, base_bytes, leading_space, boundary):
        return torch.empty_like(target, dtype=torch.int32)


# --- count_next ----------------------------------------------------------------------------------------

def ref_count_next(ctx: torch.Tensor, next: torch.Tensor, num_ctx: int, vocab: int) -> torch.Tensor:
    """int64 [num_ctx, vocab]: how often each (ctx[i], next[i]) pair occurs; ctx[i] < 0 is skipped.

    The counting behind tiers 0 and 1 (context state or previous tokens -> next class or token)."""
    if ctx.shape != next.shape:
        raise ValueError(f"count_next: ctx has shape {tuple(ctx.shape)} but next has {tuple(next.shape)}")
    keep = ctx.reshape(-1) >= 0
    c, y = ctx.reshape(-1)[keep].long(), next.reshape(-1)[keep].long()
    if c.numel() and (int(c.max()) >= num_ctx or int(y.min()) < 0 or int(y.max()) >= vocab):
        raise RuntimeError(f"count_next: pair out of range (num_ctx={num_ctx}, vocab={vocab})")
    return torch.bincount(c * vocab + y, minlength=num_ctx * vocab).view(num_ctx, vocab)


def count_next(ctx: torch.Tensor, next: torch.Tensor, num_ctx: int, vocab: int) -> torch.Tensor:
    if _use_kernel("count_next", ctx.device):
        return torch.ops.golf.count_next(ctx, next, num_ctx, vocab)
    return ref_count_next(ctx, next, num_ctx, vocab)


if _C is not None:
    @torch.library.register_fake("golf::count_next")
    def _count_next_fake(ctx, next, num_ctx, vocab):
        return ctx.new_empty((num_ctx, vocab), dtype=torch.int64)


# --- tiered_loss ---------------------------------------------------------------------------------------

def ref_tiered_loss(logits2: torch.Tensor, prior_tables: torch.Tensor, prior_rows: torch.Tensor,
                    targets: torch.Tensor, softcap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of the tiered logits over the full vocabulary: the model's loss, specified.

    z[n] = sum_k prior_tables[prior_rows[n, k]] (rows < 0 add nothing) + softcap*tanh(logits2[n]/softcap)
    (no cap when softcap <= 0); returns (nll [N], lse [N]) in fp32 with nll = logsumexp(z) - z[target].
    Differentiable in logits2 and prior_tables (plain autograd: the spec for the backward kernels)."""
    l2 = logits2.float()
    z = softcap * torch.tanh(l2 / softcap) if softcap > 0 else l2
    rows = prior_rows.long()
    for k in range(rows.shape[1]):
        r = rows[:, k]
        z = z + prior_tables[r.clamp(min=0)] * (r >= 0).to(z.dtype)[:, None]
    lse = torch.logsumexp(z, dim=-1)
    nll = lse - z.gather(1, targets.long()[:, None])[:, 0]
    return nll, lse


def tiered_loss(logits2: torch.Tensor, prior_tables: torch.Tensor, prior_rows: torch.Tensor,
                targets: torch.Tensor, softcap: float) -> tuple[torch.Tensor, torch.Tensor]:
    if _use_kernel("tiered_loss", logits2.device):
        return torch.ops.golf.tiered_loss(logits2, prior_tables, prior_rows, targets, float(softcap))
    return ref_tiered_loss(logits2, prior_tables, prior_rows, targets, softcap)


if _C is not None:
    @torch.library.register_fake("golf::tiered_loss")
    def _tiered_loss_fake(logits2, prior_tables, prior_rows, targets, softcap):
        n = logits2.shape[0]
        return logits2.new_empty((n,), dtype=torch.float32), logits2.new_empty((n,), dtype=torch.float32)

    @torch.library.register_fake("golf::tiered_loss_backward")
    def _tiered_loss_backward_fake(grad_nll, grad_lse, logits2, prior_tables, prior_rows, targets, lse, softcap,
                                   tables_grad):
        rows = prior_tables.shape[0] if tables_grad else 0
        return torch.empty_like(logits2), prior_tables.new_empty((rows, prior_tables.shape[1]))

    def _tiered_loss_setup(ctx, inputs, output):
        logits2, prior_tables, prior_rows, targets, softcap = inputs
        ctx.save_for_backward(logits2, prior_tables, prior_rows, targets, output[1])
        ctx.softcap = softcap

    def _tiered_loss_backward(ctx, grad_nll, grad_lse):
        logits2, prior_tables, prior_rows, targets, lse = ctx.saved_tensors
        grad_nll = torch.zeros_like(lse) if grad_nll is None else grad_nll
        grad_lse = torch.zeros_like(lse) if grad_lse is None else grad_lse
        tables_grad = ctx.needs_input_grad[1]
        grad_l2, grad_tables = torch.ops.golf.tiered_loss_backward(
            grad_nll, grad_lse, logits2, prior_tables, prior_rows, targets, lse, ctx.softcap, tables_grad)
        return (grad_l2 if ctx.needs_input_grad[0] else None, grad_tables if tables_grad else None,
                None, None, None)

    torch.library.register_autograd("golf::tiered_loss", _tiered_loss_backward, setup_context=_tiered_loss_setup)


# --- score_windows -------------------------------------------------------------------------------------

SCORE_CHUNK_ROWS = 256  # the reference holds at most [256, V] fp32 logits at a time


def ref_score_windows(hidden: torch.Tensor, head_weight: torch.Tensor, prior_tables: torch.Tensor,
                      prior_rows: torch.Tensor, targets: torch.Tensor, softcap: float) -> torch.Tensor:
    """Per-target NLL of the tiered logits at the scored positions of eval windows (forward only).

    hidden [N, D] (the final hidden states of the scored positions only), head_weight [V, D],
    prior_tables [R, V] fp32, prior_rows [N, K] int32 (-1 = none), targets [N] int64.
    z = softcap*tanh(hidden @ head_weight^T / softcap) (no cap when softcap <= 0) + sum_k prior_tables[rows];
    returns nll [N] fp32 = logsumexp(z) - z[target]: the forward of tiered_loss on logits2 = hidden @ head_weight^T.
    The GEMM runs in fp32 whatever the input dtypes (bf16 hidden under autocast is upcast first); fp32 out,
    like tiered_loss, and callers sum in float64. Chunked so at most SCORE_CHUNK_ROWS rows of logits exist."""
    if hidden.dim() != 2 or head_weight.dim() != 2 or head_weight.shape[1] != hidden.shape[1]:
        raise ValueError(f"score_windows: hidden must be [N, D] and head_weight [V, D], found "
                         f"{tuple(hidden.shape)} and {tuple(head_weight.shape)}")
    if prior_rows.dim() != 2 or prior_rows.shape[0] != hidden.shape[0] or targets.shape != (hidden.shape[0],):
        raise ValueError(f"score_windows: prior_rows must be [N, K] and targets [N] with N={hidden.shape[0]}, found "
                         f"{tuple(prior_rows.shape)} and {tuple(targets.shape)}")
    w = head_weight.float()
    out = []
    for lo in range(0, hidden.shape[0], SCORE_CHUNK_ROWS):
        hi = lo + SCORE_CHUNK_ROWS
        logits2 = hidden[lo:hi].float() @ w.T
        nll, _ = ref_tiered_loss(logits2, prior_tables, prior_rows[lo:hi], targets[lo:hi], softcap)
        out.append(nll)
    return torch.cat(out) if out else hidden.new_empty((0,), dtype=torch.float32)


def score_windows(hidden: torch.Tensor, head_weight: torch.Tensor, prior_tables: torch.Tensor,
                  prior_rows: torch.Tensor, targets: torch.Tensor, softcap: float) -> torch.Tensor:
    if _use_kernel("score_windows", hidden.device):
        return torch.ops.golf.score_windows(hidden, head_weight, prior_tables, prior_rows, targets, float(softcap))
    return ref_score_windows(hidden, head_weight, prior_tables, prior_rows, targets, softcap)


if _C is not None:
    @torch.library.register_fake("golf::score_windows")
    def _score_windows_fake(hidden, head_weight, prior_tables, prior_rows, targets, softcap):
        return hidden.new_empty((hidden.shape[0],), dtype=torch.float32)
