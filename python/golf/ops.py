"""The Python face of golf._C, and the only door to it.

Every op has three implementations held equal by the tests: `ref_<op>` here (plain PyTorch, the
specification), a C++ CPU kernel (csrc/cpu) and a CUDA kernel (kernels/ + csrc/cuda), both reached as
`torch.ops.golf.<op>`. Callers use the public function `<op>`, which runs the compiled kernel for the
tensor's device when one is registered and otherwise the reference, logging that fallback once per
(op, device) at WARNING level so it is never silent.
"""

from __future__ import annotations

import logging
import math

import torch

log = logging.getLogger("golf.ops")

try:
    from golf import _C

    BUILD_INFO: dict = dict(_C.build_info())
    IMPORT_ERROR: str | None = None
except ImportError as exc:  # source checkout without a build: everything runs on the references
    _C = None
    BUILD_INFO = {"torch_version": None, "cuda": False, "cuda_reason": "golf._C is not built", "cuda_archs": "",
                  "nvcc_version": "", "fused_mlp": False}
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


# --- the CUDA kernels' device-side index flag --------------------------------------------------------------

# Which op's kernel set each bit (kernels/index_flag_bits.h).
INDEX_FLAG_OPS = {1: "golf::target_bytes", 2: "golf::tiered_loss", 4: "golf::tiered_loss_backward",
                  8: "golf::score_windows", 16: "golf::tiered_loss_train"}


def has_device_index_flag() -> bool:
    """True when golf._C has CUDA kernels that report bad indices through a device-side flag."""
    return _C is not None and hasattr(_C, "take_index_errors")


def check_device_indices(device) -> None:
    """IndexError if a CUDA kernel met an index out of range on `device` since the last check (the flag is then
    cleared). The CUDA ops do not stop each call to look (a host sync per step); the rows concerned got NaN, and
    this names the ops. A no-op elsewhere. Under GOLF_CHECK_INDICES=1 every CUDA call is checked on the host
    before its launch instead, naming the first bad index."""
    device = torch.device(device)
    if device.type != "cuda" or not has_device_index_flag():
        return
    bits = _C.take_index_errors(device.index if device.index is not None else torch.cuda.current_device())
    if bits:
        names = ", ".join(name for bit, name in INDEX_FLAG_OPS.items() if bits & bit)
        raise IndexError(f"{names} on {device}: an index out of range since the last check (those rows hold NaN); "
                         f"rerun with GOLF_CHECK_INDICES=1 to check every call before its launch and name the index")


# --- the index rule of every op (csrc/checks.h says the same for the C++ side) --------------------------

def check_indices(op: str, arg: str, idx: torch.Tensor, size: int, none: bool = False) -> None:
    """IndexError at the first element of `idx` outside [0, size) (or -1, "none", where `none` is allowed), naming
    the op, the argument, the position and the value: `golf::tiered_loss: prior_rows[3, 1] = -5: expected ...`.
    The references check what the C++ ops check (csrc/checks.h). Skipped on meta tensors (no values) and while
    torch.compile traces: a check that reads values would break the graph, so a compiled reference (a device
    without a kernel) runs unchecked."""
    if idx.numel() == 0 or idx.is_meta or torch.compiler.is_compiling():
        return
    lo = -1 if none else 0
    bad = torch.nonzero(((idx < lo) | (idx >= size)).reshape(-1))
    if bad.numel():
        flat = int(bad[0])
        where = [int(i) for i in torch.unravel_index(torch.tensor(flat), idx.shape)] if idx.dim() else []
        pos = f"[{', '.join(map(str, where))}]" if where else ""
        raise IndexError(f"{op}: {arg}{pos} = {int(idx.reshape(-1)[flat])}: expected "
                         f"{'-1 (none) or ' if none else ''}a value in [0, {size})")


def prior_sum(prior_tables: torch.Tensor, prior_rows: torch.Tensor, prior_scales: torch.Tensor | None = None,
              op: str = "golf::tiered_loss") -> torch.Tensor:
    """[..., V] = sum_k prior_scales[..., k] * prior_tables[prior_rows[..., k]], a row of -1 adding nothing (scales
    absent: 1): the tiers' logits l0 + l1 at each position. The one PyTorch form of this sum (the references, the
    audit's full distribution, golf.tiers); differentiable in the tables and the scales."""
    check_indices(op, "prior_rows", prior_rows, prior_tables.shape[0], none=True)
    if prior_scales is not None and prior_scales.shape != prior_rows.shape:
        raise ValueError(f"{op}: prior_scales must have prior_rows' shape {tuple(prior_rows.shape)}, found "
                         f"{tuple(prior_scales.shape)}")
    rows = prior_rows.long()
    out = prior_tables.new_zeros(*rows.shape[:-1], prior_tables.shape[1])
    for k in range(rows.shape[-1]):
        r = rows[..., k]
        term = prior_tables[r.clamp(min=0)]
        if prior_scales is not None:
            term = prior_scales[..., k, None].to(term.dtype) * term
        out = out + torch.where((r >= 0)[..., None], term, 0.0)
    return out


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
    check_indices("golf::target_bytes", "prev", prev, base_bytes.numel())
    check_indices("golf::target_bytes", "target", target, base_bytes.numel())
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
        return target.new_empty(target.shape, dtype=torch.int32)  # contiguous, as the ops return it


# --- count_next ----------------------------------------------------------------------------------------

def ref_count_next(ctx: torch.Tensor, next: torch.Tensor, num_ctx: int, vocab: int) -> torch.Tensor:
    """int64 [num_ctx, vocab]: how often each (ctx[i], next[i]) pair occurs; ctx[i] = -1 (no context) is skipped.

    The counting behind tiers 0 and 1 (context state or previous tokens -> next class or token)."""
    if ctx.shape != next.shape:
        raise ValueError(f"count_next: ctx has shape {tuple(ctx.shape)} but next has {tuple(next.shape)}")
    if num_ctx <= 0 or vocab <= 0:
        raise ValueError(f"count_next: num_ctx and vocab must be > 0, found {num_ctx} and {vocab}")
    check_indices("golf::count_next", "ctx", ctx, num_ctx, none=True)
    check_indices("golf::count_next", "next", next, vocab)
    keep = ctx.reshape(-1) >= 0
    c, y = ctx.reshape(-1)[keep].long(), next.reshape(-1)[keep].long()
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
                    targets: torch.Tensor, softcap: float, prior_scales: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of the tiered logits over the full vocabulary: the model's loss, specified.

    z[n] = sum_k prior_scales[n, k] * prior_tables[prior_rows[n, k]] (-1 adds nothing; scales absent: 1)
           + softcap*tanh(logits2[n]/softcap) (no cap when softcap <= 0);
    returns (nll [N], lse [N]) in fp32 with nll = logsumexp(z) - z[target]. Differentiable in logits2,
    prior_tables and prior_scales (plain autograd: the spec for the backward kernels)."""
    l2 = logits2.float()
    z = softcap * torch.tanh(l2 / softcap) if softcap > 0 else l2
    z = z + prior_sum(prior_tables, prior_rows, prior_scales)
    check_indices("golf::tiered_loss", "targets", targets, z.shape[1])
    lse = torch.logsumexp(z, dim=-1)
    nll = lse - z.gather(1, targets.long()[:, None])[:, 0]
    return nll, lse


def tiered_loss(logits2: torch.Tensor, prior_tables: torch.Tensor, prior_rows: torch.Tensor,
                targets: torch.Tensor, softcap: float, prior_scales: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    # The forward kernel only where its backward runs on the same device (both are registered together).
    if _use_kernel("tiered_loss", logits2.device) and has_kernel("tiered_loss_backward", logits2.device.type):
        return torch.ops.golf.tiered_loss(logits2, prior_tables, prior_rows, targets, float(softcap), prior_scales)
    return ref_tiered_loss(logits2, prior_tables, prior_rows, targets, softcap, prior_scales)


if _C is not None:
    @torch.library.register_fake("golf::tiered_loss")
    def _tiered_loss_fake(logits2, prior_tables, prior_rows, targets, softcap, prior_scales=None):
        n = logits2.shape[0]
        return logits2.new_empty((n,), dtype=torch.float32), logits2.new_empty((n,), dtype=torch.float32)

    @torch.library.register_fake("golf::tiered_loss_backward")
    def _tiered_loss_backward_fake(grad_nll, grad_lse, logits2, prior_tables, prior_rows, targets, lse, softcap,
                                   tables_grad, prior_scales=None, scales_grad=False):
        rows = prior_tables.shape[0] if tables_grad else 0
        n = logits2.shape[0] if scales_grad else 0
        # The ops return contiguous gradients whatever logits2's strides (empty_like would keep them).
        return (logits2.new_empty(logits2.shape), prior_tables.new_empty((rows, prior_tables.shape[1])),
                logits2.new_empty((n, prior_rows.shape[1]), dtype=torch.float32))

    def _tiered_loss_setup(ctx, inputs, output):
        logits2, prior_tables, prior_rows, targets, softcap, prior_scales = inputs
        ctx.save_for_backward(logits2, prior_tables, prior_rows, targets, output[1], prior_scales)
        ctx.softcap = softcap

    def _tiered_loss_backward(ctx, grad_nll, grad_lse):
        logits2, prior_tables, prior_rows, targets, lse, prior_scales = ctx.saved_tensors
        grad_nll = torch.zeros_like(lse) if grad_nll is None else grad_nll
        grad_lse = torch.zeros_like(lse) if grad_lse is None else grad_lse
        needs = ctx.needs_input_grad  # 5 or 6 entries: prior_scales may be left out of the call
        tables_grad, scales_grad = needs[1], len(needs) > 5 and needs[5]
        grad_l2, grad_tables, grad_scales = torch.ops.golf.tiered_loss_backward(
            grad_nll, grad_lse, logits2, prior_tables, prior_rows, targets, lse, ctx.softcap, tables_grad,
            prior_scales, scales_grad)
        grads = (grad_l2 if needs[0] else None, grad_tables if tables_grad else None, None, None, None,
                 grad_scales if scales_grad else None)
        return grads[:len(needs)]

    torch.library.register_autograd("golf::tiered_loss", _tiered_loss_backward, setup_context=_tiered_loss_setup)

    @torch.library.register_fake("golf::tiered_loss_train")
    def _tiered_loss_train_fake(logits2, prior_tables, prior_rows, targets, softcap, grad_weight, prior_scales=None,
                                scales_grad=False):
        n = logits2.shape[0]
        return (logits2.new_empty((n,), dtype=torch.float32), logits2.new_empty((n,), dtype=torch.float32),
                logits2.new_empty(logits2.shape),  # contiguous, as the ops return it
                logits2.new_empty((n if scales_grad else 0, prior_rows.shape[1]), dtype=torch.float32))

    def _tiered_loss_train_setup(ctx, inputs, output):
        ctx.weight = inputs[5]
        ctx.save_for_backward(output[2], output[3])
        ctx.mark_non_differentiable(output[1], output[2], output[3])
        ctx.set_materialize_grads(False)  # no [N, V] of zeros for the gradient output's own (unused) gradient

    def _tiered_loss_train_backward(ctx, grad_nll, grad_lse, grad_grad_l2, grad_grad_scales):
        """The gradient written in the forward, for grad_nll = weight, scaled to the grad_nll that came (in the
        logits' dtype: a ratio of exactly 1 leaves every bit)."""
        grad_l2, grad_scales = ctx.saved_tensors
        ratio = grad_nll.float() / ctx.weight
        needs = ctx.needs_input_grad
        # On CPU a look at the ratios costs no device sync, and saves a pass over [N, V] when they are all 1 (not
        # while tracing: there values are unknown, and the graph multiplies).
        unit = (type(ratio) is torch.Tensor and ratio.device.type == "cpu" and not torch.compiler.is_compiling()
                and bool((ratio == 1).all()))
        d_l2 = (grad_l2 if unit else grad_l2 * ratio.to(grad_l2.dtype)[:, None]) if needs[0] else None
        d_scales = grad_scales * ratio[:, None] if len(needs) > 6 and needs[6] and grad_scales.numel() else None
        return (d_l2, None, None, None, None, None, d_scales, None)[:len(needs)]

    torch.library.register_autograd("golf::tiered_loss_train", _tiered_loss_train_backward,
                                    setup_context=_tiered_loss_train_setup)


def ref_tiered_loss_train(logits2: torch.Tensor, prior_tables: torch.Tensor, prior_rows: torch.Tensor,
                          targets: torch.Tensor, softcap: float, grad_weight: float,
                          prior_scales: torch.Tensor | None = None, scales_grad: bool = False
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """golf::tiered_loss_train specified: ref_tiered_loss's (nll, lse) and the gradients of grad_weight * sum(nll)
    w.r.t. logits2 (in its dtype) and, with scales_grad, prior_scales ([N, K]; else [0, K]). The tables get none."""
    l2 = logits2.detach().float().requires_grad_()
    scales = None if prior_scales is None else prior_scales.detach().float().requires_grad_(scales_grad)
    with torch.enable_grad():
        nll, lse = ref_tiered_loss(l2, prior_tables.detach(), prior_rows, targets, softcap, scales)
        wrt = [l2] + ([scales] if scales_grad else [])
        grads = torch.autograd.grad(nll.sum() * grad_weight, wrt)
    k = prior_rows.shape[1]
    grad_scales = grads[1] if scales_grad else nll.new_zeros((0, k))
    return nll.detach(), lse.detach(), grads[0].to(logits2.dtype), grad_scales


def tiered_nll(logits2: torch.Tensor, prior_tables: torch.Tensor, prior_rows: torch.Tensor, targets: torch.Tensor,
               softcap: float, grad_weight: float, prior_scales: torch.Tensor | None = None) -> torch.Tensor:
    """The training step's loss: tiered_loss's nll [N], differentiable, for callers whose loss is
    grad_weight * nll.sum() (a mean over N rows and M micro-batches: 1 / (N * M)). Where a kernel exists and the
    prior tables do not train, golf::tiered_loss_train writes the gradient in the forward's pass (the logits are
    read once); the backward then only scales it by grad_nll / grad_weight (exactly 1 for such a loss, so the
    gradient is bit for bit tiered_loss's). Elsewhere it is tiered_loss's nll."""
    scales_grad = prior_scales is not None and prior_scales.requires_grad
    if (torch.is_grad_enabled() and logits2.requires_grad and not prior_tables.requires_grad
            and _use_kernel("tiered_loss_train", logits2.device)):
        return torch.ops.golf.tiered_loss_train(logits2, prior_tables, prior_rows, targets, float(softcap),
                                                float(grad_weight), prior_scales, scales_grad)[0]
    return tiered_loss(logits2, prior_tables, prior_rows, targets, softcap, prior_scales)[0]


# --- score_windows -------------------------------------------------------------------------------------

SCORE_CHUNK_ROWS = 256  # the reference holds at most [256, V] fp32 logits at a time


def ref_score_windows(hidden: torch.Tensor, head_weight: torch.Tensor, prior_tables: torch.Tensor,
                      prior_rows: torch.Tensor, targets: torch.Tensor, softcap: float,
                      extra: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
                      prior_scales: torch.Tensor | None = None) -> torch.Tensor:
    """Per-target NLL of the tiered logits at the scored positions of eval windows (forward only).

    hidden [N, D] (the final hidden states of the scored positions only), head_weight [V, D],
    prior_tables [R, V] fp32, prior_rows [N, K] int32 (-1 = none), targets [N] int64, and optionally
    extra = (rows [E], cols [E], vals [E]): sparse tier-2 logits (the copy head's), rows ascending; and optionally
    prior_scales [N, K] fp32 (each prior row times its scale, as in tiered_loss).
    l2 = hidden @ head_weight^T, plus vals at [rows, cols] (repeats add up);
    z = softcap*tanh(l2 / softcap) (no cap when softcap <= 0) + sum_k prior_scales[:, k] * prior_tables[rows];
    returns nll [N] fp32 = logsumexp(z) - z[target]: the forward of tiered_loss on those logits2.
    The GEMM runs in fp32 whatever the input dtypes (bf16 hidden under autocast is upcast first); fp32 out,
    like tiered_loss, and callers sum in float64. Chunked so at most SCORE_CHUNK_ROWS rows of logits exist."""
    if hidden.dim() != 2 or head_weight.dim() != 2 or head_weight.shape[1] != hidden.shape[1]:
        raise ValueError(f"score_windows: hidden must be [N, D] and head_weight [V, D], found "
                         f"{tuple(hidden.shape)} and {tuple(head_weight.shape)}")
    if prior_rows.dim() != 2 or prior_rows.shape[0] != hidden.shape[0] or targets.shape != (hidden.shape[0],):
        raise ValueError(f"score_windows: prior_rows must be [N, K] and targets [N] with N={hidden.shape[0]}, found "
                         f"{tuple(prior_rows.shape)} and {tuple(targets.shape)}")
    v = head_weight.shape[0]
    check_indices("golf::score_windows", "prior_rows", prior_rows, prior_tables.shape[0], none=True)
    check_indices("golf::score_windows", "targets", targets, v)
    if extra is not None:
        check_sparse_logits(extra, hidden.shape[0], v)
    w = head_weight.float()
    out = []
    for lo in range(0, hidden.shape[0], SCORE_CHUNK_ROWS):
        hi = lo + SCORE_CHUNK_ROWS
        logits2 = hidden[lo:hi].float() @ w.T
        if extra is not None:
            rows, cols, vals = extra
            here = (rows >= lo) & (rows < hi)
            logits2.index_put_((rows[here] - lo, cols[here]), vals[here].float(), accumulate=True)
        scales = None if prior_scales is None else prior_scales[lo:hi]
        nll, _ = ref_tiered_loss(logits2, prior_tables, prior_rows[lo:hi], targets[lo:hi], softcap, scales)
        out.append(nll)
    return torch.cat(out) if out else hidden.new_empty((0,), dtype=torch.float32)


def check_sparse_logits(extra: tuple[torch.Tensor, torch.Tensor, torch.Tensor], n: int, v: int) -> None:
    """score_windows' sparse logits (rows [E], cols [E], vals [E]): rows ascending in [0, n), cols in [0, v)."""
    rows, cols, _ = extra
    check_indices("golf::score_windows", "extra_rows", rows, n)
    check_indices("golf::score_windows", "extra_cols", cols, v)
    if rows.numel() > 1 and not rows.is_meta and not torch.compiler.is_compiling():
        falls = torch.nonzero(rows[1:] < rows[:-1])
        if falls.numel():
            i = int(falls[0]) + 1
            raise IndexError(f"golf::score_windows: extra_rows[{i}] = {int(rows[i])}: expected >= extra_rows[{i - 1}] "
                             f"= {int(rows[i - 1])} (rows ascending)")


def csr_ptr(rows: torch.Tensor, n: int) -> torch.Tensor:
    """int64 [n+1]: where each of rows 0..n-1 starts in an ascending `rows` (CSR row pointers)."""
    return torch.searchsorted(rows.long(), torch.arange(n + 1, device=rows.device))


def score_windows(hidden: torch.Tensor, head_weight: torch.Tensor, prior_tables: torch.Tensor,
                  prior_rows: torch.Tensor, targets: torch.Tensor, softcap: float,
                  extra: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
                  prior_scales: torch.Tensor | None = None) -> torch.Tensor:
    if _use_kernel("score_windows", hidden.device):
        if extra is not None:
            check_sparse_logits(extra, hidden.shape[0], head_weight.shape[0])  # CSR pointers need sorted rows
        csr = (None, None, None) if extra is None else (
            csr_ptr(extra[0], hidden.shape[0]), extra[1].long(), extra[2].float())
        return torch.ops.golf.score_windows(hidden, head_weight, prior_tables, prior_rows, targets, float(softcap),
                                            *csr, prior_scales)
    return ref_score_windows(hidden, head_weight, prior_tables, prior_rows, targets, softcap, extra, prior_scales)


if _C is not None:
    @torch.library.register_fake("golf::score_windows")
    def _score_windows_fake(hidden, head_weight, prior_tables, prior_rows, targets, softcap, extra_ptr=None,
                            extra_cols=None, extra_vals=None, prior_scales=None):
        return hidden.new_empty((hidden.shape[0],), dtype=torch.float32)


# --- leaky_relu2_mlp: the LeakyReLU(s)² MLP with its activation fused into the GEMMs (golf.model.MLP) -------

def _mlp_act(p: torch.Tensor, slope: float) -> torch.Tensor:
    """leaky(p)², leaky(p) = p > 0 ? p : slope·p (kernels/mlp_math.h)."""
    y = torch.where(p > 0, p, slope * p)
    return y * y


def ref_leaky_relu2_mlp(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, slope: float
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The MLP out = leaky_relu2(x·w1ᵀ)·w2ᵀ, specified: x [M, D], w1 [H, D], w2 [D, H] of one dtype;
    returns (out [M, D], pre [M, H], post [M, H]) in that dtype, where acc = x·w1ᵀ in fp32, pre = acc rounded,
    post = leaky(acc)² rounded (from the fp32 accumulator, as the fused epilogue computes it; leaky(p) = p for p > 0,
    slope·p else; slope 0 is relu²) and out = post·w2ᵀ. Differentiable (plain autograd)."""
    dt = x.dtype
    acc = x.float() @ w1.float().t()
    pre, post = acc.to(dt), _mlp_act(acc, slope).to(dt)
    return post @ w2.t(), pre, post


def ref_leaky_relu2_mlp_backward(grad_out: torch.Tensor, x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
                                 pre: torch.Tensor, post: torch.Tensor, slope: float
                                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """golf::leaky_relu2_mlp_backward specified: dpre = (grad_out·w2 in fp32) ⊙ act'(pre) rounded to the dtype,
    act'(p) = p > 0 ? 2p : 2·slope²·p (of the stored pre); returns (grad_x = dpre·w1, grad_w1 = dpreᵀ·x,
    grad_w2 = grad_outᵀ·post)."""
    p = pre.float()
    dpre = ((grad_out.float() @ w2.float()) * torch.where(p > 0, 2.0 * p, (2.0 * slope * slope) * p)).to(pre.dtype)
    return dpre @ w1, dpre.t() @ x, grad_out.t() @ post


_fused_mlp_verdicts: dict[int, bool] = {}


def fused_mlp_available(device) -> bool:
    """True where golf::leaky_relu2_mlp runs its fused CUTLASS GEMMs (a build with them, a CUDA device of compute
    capability 9.0) and they agree with the reference on a small problem, forward and backward (probed once per
    device, the verdict logged); elsewhere the MLP's plain path is as fast."""
    device = torch.device(device)
    if device.type != "cuda" or not has_kernel("leaky_relu2_mlp", "cuda") or not hasattr(_C, "mlp_fused_supported"):
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _fused_mlp_verdicts:
        ok = bool(_C.mlp_fused_supported(index))
        if ok:
            error = _fused_mlp_probe(torch.device("cuda", index))
            ok = error is None
            (log.info if ok else log.warning)(
                "golf.ops: the fused MLP GEMMs on cuda:%d %s", index,
                "agree with the reference" if ok else f"disagree with the reference ({error}): the MLP runs unfused")
        _fused_mlp_verdicts[index] = ok
    return _fused_mlp_verdicts[index]


def _fused_mlp_probe(device: torch.device) -> str | None:
    """None when the op's bf16 forward and backward on `device` (the fused GEMMs: an M residue in the tile, odd
    widths) agree with the references within bf16 rounding; else what disagrees."""
    g = torch.Generator().manual_seed(0)
    m, d, h = 200, 64, 384
    # made on the CPU whatever default device is in force (a model built under torch.device("meta") asks too)
    x, w1, w2, grad = (torch.randn(*shape, generator=g, device="cpu").div(div).to(device, torch.bfloat16)
                       for shape, div in (((m, d), 1), ((h, d), 8), ((d, h), 16), ((m, d), 1)))
    got = torch.ops.golf.leaky_relu2_mlp(x, w1, w2, 0.5)
    got = (*got, *torch.ops.golf.leaky_relu2_mlp_backward(grad, x, w1, w2, got[1], got[2], 0.5))
    with torch.autocast(device.type, enabled=False):
        want = ref_leaky_relu2_mlp(x, w1, w2, 0.5)
        want = (*want, *ref_leaky_relu2_mlp_backward(grad, x, w1, w2, got[1], got[2], 0.5))
    for name, a, b in zip(("out", "pre", "post", "grad_x", "grad_w1", "grad_w2"), got, want):
        err = float((a.float() - b.float()).abs().max())
        scale = float(b.float().abs().max())
        if not err <= 2e-2 * scale:  # a few bf16 roundings; NaN fails too
            return f"{name}: max error {err:.3g} against a largest value {scale:.3g}"
    return None


def leaky_relu2_mlp(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, slope: float) -> torch.Tensor:
    """out [..., D] = leaky_relu2(x·w1ᵀ)·w2ᵀ for x [..., D] (ref_leaky_relu2_mlp), with the op's own backward."""
    flat = x.reshape(-1, x.shape[-1])
    if _use_kernel("leaky_relu2_mlp", x.device):
        out = torch.ops.golf.leaky_relu2_mlp(flat, w1, w2, float(slope))[0]
    else:
        with torch.autocast(x.device.type, enabled=False):  # its precision is its own, as the ops'
            out = ref_leaky_relu2_mlp(flat, w1, w2, slope)[0]
    return out.view(*x.shape[:-1], w2.shape[0])


if _C is not None:
    @torch.library.register_fake("golf::leaky_relu2_mlp")
    def _leaky_relu2_mlp_fake(x, w1, w2, slope):
        m, h = x.shape[0], w1.shape[0]
        return x.new_empty((m, w2.shape[0])), x.new_empty((m, h)), x.new_empty((m, h))

    @torch.library.register_fake("golf::leaky_relu2_mlp_backward")
    def _leaky_relu2_mlp_backward_fake(grad_out, x, w1, w2, pre, post, slope):
        return x.new_empty(x.shape), w1.new_empty(w1.shape), w2.new_empty(w2.shape)

    def _leaky_relu2_mlp_setup(ctx, inputs, output):
        x, w1, w2, slope = inputs
        ctx.slope = slope
        ctx.save_for_backward(x, w1, w2, output[1], output[2])
        ctx.mark_non_differentiable(output[1], output[2])  # pre and post are what the backward reads

    def _leaky_relu2_mlp_backward(ctx, grad_out, grad_pre, grad_post):
        x, w1, w2, pre, post = ctx.saved_tensors
        grads = torch.ops.golf.leaky_relu2_mlp_backward(grad_out.contiguous(), x, w1, w2, pre, post, ctx.slope)
        needs = ctx.needs_input_grad
        return tuple(g if need else None for g, need in zip(grads, needs[:3])) + (None,)

    torch.library.register_autograd("golf::leaky_relu2_mlp", _leaky_relu2_mlp_backward,
                                    setup_context=_leaky_relu2_mlp_setup)


# --- quantisation: hessian_accumulate, gptq_quantize, pack_int6, unpack_int6 (golf.quant) ---------------

# Smallest normal fp16 (2^-14): a stored per-row scale never rounds to zero or to a subnormal. The records
# used 1/31 (R1147) or 1e-10 (later); 2^-14 is the floor that is still exact in the fp16 the artifact stores.
GPTQ_SCALE_FLOOR = 2.0 ** -14


def ref_hessian_accumulate(H: torch.Tensor, X: torch.Tensor) -> None:
    """H [n, n] fp32 += Xᵀ X in place; X [..., n] (fp32/bf16/fp16) flattened to rows, products summed in fp32."""
    if H.dim() != 2 or H.shape[0] != H.shape[1] or H.dtype != torch.float32:
        raise ValueError(f"hessian_accumulate: H must be square [in, in] float32, found {tuple(H.shape)} {H.dtype}")
    if X.dim() < 1 or X.shape[-1] != H.shape[0] or X.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"hessian_accumulate: X must be [..., {H.shape[0]}] float32/bfloat16/float16 to match H, "
                         f"found {tuple(X.shape)} {X.dtype}")
    x = X.reshape(-1, X.shape[-1]).float()
    H.addmm_(x.t(), x)


def hessian_accumulate(H: torch.Tensor, X: torch.Tensor) -> None:
    if _use_kernel("hessian_accumulate", H.device):
        torch.ops.golf.hessian_accumulate(H, X)
    else:
        ref_hessian_accumulate(H, X)


def row_quantiles(absw: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """[C, rows]: per row of absw [rows, cols], the quantile at each p in probs (linear interpolation between
    order statistics, as torch.quantile; written out because torch.quantile refuses inputs above 16M elements).
    p = 1.0 gives the row max exactly."""
    s = absw.sort(dim=1).values
    cols = absw.shape[1]
    out = []
    for p in probs.tolist():
        pos = p * (cols - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, cols - 1)
        vlo = s[:, lo]
        out.append(vlo + (s[:, hi] - vlo) * (pos - lo))
    return torch.stack(out)


def _upper_cholesky_of_inverse(H: torch.Tensor, damp: float) -> torch.Tensor:
    """U with Uᵀ U = (H + d I)⁻¹, d = damp·mean(diag H); ten times the damping per retry (4 tries) when the
    damped H is still not positive definite."""
    base = damp * float(H.diagonal().mean())
    d = base if base > 0 else 1e-6
    for _ in range(4):
        Hd = H.clone()
        Hd.diagonal().add_(d)
        L, info = torch.linalg.cholesky_ex(Hd)
        if int(info) == 0:
            U, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
            if int(info) == 0:
                return U
        d *= 10
    raise RuntimeError(f"gptq_quantize: H is not positive definite even with damping {d / 10:g} "
                       "(is it a Hessian X^T X?)")


def _check_gptq_args(W: torch.Tensor, H: torch.Tensor, bits: int, block: int, damp: float) -> None:
    if W.dim() != 2 or W.numel() == 0 or not W.is_floating_point():
        raise ValueError(f"gptq_quantize: W must be a non-empty 2-D float matrix, found {tuple(W.shape)} {W.dtype}")
    cols = W.shape[1]
    if H.shape != (cols, cols) or H.dtype != torch.float32:
        raise ValueError(f"gptq_quantize: H must be [in, in] = [{cols}, {cols}] float32, found "
                         f"{tuple(H.shape)} {H.dtype}")
    if not 2 <= bits <= 8 or block < 1 or not (math.isfinite(damp) and damp >= 0):
        raise ValueError(f"gptq_quantize: need bits in [2, 8], block >= 1, damp >= 0; found {bits}, {block}, {damp}")


def quantile_scales(W: torch.Tensor, clip_candidates: torch.Tensor, qmax: int) -> torch.Tensor:
    """fp16 [C, rows]: per row of W, max(quantile_p(|w|) / qmax, 2^-14) for each p in clip_candidates."""
    return (row_quantiles(W.abs(), clip_candidates) / qmax).clamp_min(GPTQ_SCALE_FLOOR).half()


def ref_gptq_quantize(W: torch.Tensor, H: torch.Tensor, bits: int, block: int, act_order: bool, damp: float,
                      clip_candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-Hessian GPTQ of W [out, in] given H [in, in] = Σ xᵀx of its inputs: (q int8 [out, in], scale fp16 [out]).

    Dequantised weight = q · scale[:, None], q in [−qmax, qmax], qmax = 2^(bits−1) − 1.
    1. Dead inputs (H_jj = 0) get H_jj = 1 and W[:, j] = 0.
    2. act_order: columns permuted by diag(H) descending (stable), undone at the end.
    3. U = upper Cholesky factor of (H + damp·mean(diag H)·I)⁻¹.
    4. Per row and per clip candidate p: scale = max(quantile_p(|w_row|) / qmax, 2^-14), rounded to fp16 (the
       loop quantizes on the grid that is stored; ``quantile_scales``, of W after step 1). The candidates run as
       extra rows of one matrix: GPTQ never mixes rows.
    5. Blocks of `block` columns: column j is rounded, q = clamp(round(w_j/s), ±qmax), its error
       e = (w_j − q·s)/U_jj is fed back to the block's later columns (w_k −= e·U_jk); after the block, the
       block's errors reach the remaining columns in one GEMM (lazy batch update).
    6. Per row, the candidate with the lowest Hessian-weighted error (w − q·s) H_d (w − q·s)ᵀ wins (H_d = the
       damped H; it equals GPTQ's own Σ e², so it costs nothing). The records chose one candidate per matrix by
       unweighted ‖W − Q·s‖²; per row by the weighted error is what the layer's output sees, and
       bench/gptq.py measures both.
    """
    _check_gptq_args(W, H, bits, block, damp)
    cands = clip_candidates
    if cands.dim() != 1 or cands.numel() == 0 or cands.dtype != torch.float32 or not bool(
            ((cands > 0) & (cands <= 1)).all()):
        raise ValueError(f"gptq_quantize: clip_candidates must be a non-empty 1-D float32 tensor in (0, 1], "
                         f"found {cands.tolist()} {cands.dtype}")
    return _ref_gptq(W, H, bits, block, act_order, damp, lambda Wd, qmax: quantile_scales(Wd, cands, qmax))


def ref_gptq_quantize_scaled(W: torch.Tensor, H: torch.Tensor, scales: torch.Tensor, bits: int, block: int,
                             act_order: bool, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ as ``ref_gptq_quantize`` on given candidate scales: scales fp16 [C, out] (finite, > 0) replace step
    4's quantile scales, and per row the candidate with the least GPTQ loss wins (with C = 1: the given scale).
    SDClip's scales (golf.quant.sdclip_scales) come this way."""
    _check_gptq_args(W, H, bits, block, damp)
    if (scales.dim() != 2 or scales.shape[0] < 1 or scales.shape[1] != W.shape[0] or scales.dtype != torch.float16
            or not bool((torch.isfinite(scales) & (scales > 0)).all())):
        raise ValueError(f"gptq_quantize_scaled: scales must be float16 [C >= 1, {W.shape[0]}], finite and > 0, "
                         f"found {tuple(scales.shape)} {scales.dtype}")
    return _ref_gptq(W, H, bits, block, act_order, damp, lambda Wd, qmax: scales)


def _ref_gptq(W: torch.Tensor, H: torch.Tensor, bits: int, block: int, act_order: bool, damp: float,
              candidate_scales) -> tuple[torch.Tensor, torch.Tensor]:
    """ref_gptq_quantize's steps 1-6, the candidate scales fp16 [C, out] from candidate_scales(W, qmax)."""
    rows, cols = W.shape
    qmax = 2 ** (bits - 1) - 1
    W = W.float().clone()
    H = H.float().clone()
    dead = torch.nonzero(H.diagonal() == 0).squeeze(1)
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    perm = (torch.argsort(H.diagonal(), descending=True, stable=True) if act_order
            else torch.arange(cols, device=W.device))
    Wp = W[:, perm]
    Hp = H[perm][:, perm]
    U = _upper_cholesky_of_inverse(Hp, damp)

    s16 = candidate_scales(W, qmax).to(W.device, torch.float16)
    C = s16.shape[0]
    # Every (candidate, row) pair runs as one row of a stacked matrix (GPTQ never mixes rows), except a pair
    # whose fp16 scale repeats an earlier candidate's for that row: its result would be identical.
    keep = torch.ones(C, rows, dtype=torch.bool, device=W.device)
    for c in range(1, C):
        keep[c] = (s16[c].unsqueeze(0) != s16[:c]).all(0)
    cand_idx, row_idx = keep.nonzero(as_tuple=True)
    S = s16[cand_idx, row_idx].float()
    Ws = Wp[row_idx]
    Q = torch.empty_like(Ws)
    loss = torch.zeros(Ws.shape[0], device=W.device)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        Err = torch.empty(Ws.shape[0], i2 - i1, device=W.device)
        for j in range(i1, i2):
            w = Ws[:, j]
            q = torch.clamp(torch.round(w / S), -qmax, qmax)
            Q[:, j] = q
            err = (w - q * S) / U[j, j]
            Err[:, j - i1] = err
            loss += err * err
            Ws[:, j + 1:i2] -= err[:, None] * U[j, j + 1:i2][None, :]
        if i2 < cols:
            Ws[:, i2:] -= Err @ U[i1:i2, i2:]

    # Σ err² over a row is GPTQ's own loss, (w − q·s) H_d (w − q·s)ᵀ with H_d the damped H (the Cholesky
    # identity behind GPTQ), so choosing per row by it costs nothing extra. Skipped pairs never win a tie.
    full = torch.full((C, rows), float("inf"), device=W.device)
    full[cand_idx, row_idx] = loss
    best = full.argmin(0)
    slot = torch.zeros(C, rows, dtype=torch.long, device=W.device)
    slot[cand_idx, row_idx] = torch.arange(Ws.shape[0], device=W.device)
    rows_all = torch.arange(rows, device=W.device)
    q = torch.empty(rows, cols, device=W.device)
    q[:, perm] = Q[slot[best, rows_all]]
    return q.to(torch.int8), s16[best, rows_all]


def gptq_quantize(W: torch.Tensor, H: torch.Tensor, bits: int, block: int, act_order: bool, damp: float,
                  clip_candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if _use_kernel("gptq_quantize", W.device):
        return torch.ops.golf.gptq_quantize(W, H, int(bits), int(block), bool(act_order), float(damp),
                                            clip_candidates)
    return ref_gptq_quantize(W, H, bits, block, act_order, damp, clip_candidates)


def gptq_quantize_scaled(W: torch.Tensor, H: torch.Tensor, scales: torch.Tensor, bits: int, block: int,
                         act_order: bool, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    if _use_kernel("gptq_quantize_scaled", W.device):
        return torch.ops.golf.gptq_quantize_scaled(W, H, scales, int(bits), int(block), bool(act_order), float(damp))
    return ref_gptq_quantize_scaled(W, H, scales, bits, block, act_order, damp)


def ref_pack_int6(q: torch.Tensor) -> torch.Tensor:
    """int8 values in [−31, 31] (any shape, flattened) → uint8 [ceil(n/4)·3]: codes u = q + 31, four codes per
    24-bit little-endian word u0 | u1<<6 | u2<<12 | u3<<18; the tail is padded with q = 0."""
    if q.dtype != torch.int8:
        raise ValueError(f"pack_int6: q must be int8 (values in [-31, 31]), found {q.dtype}")
    flat = q.reshape(-1).to(torch.int32)
    bad = torch.nonzero((flat < -31) | (flat > 31))
    if bad.numel():
        i = int(bad[0])
        raise ValueError(f"pack_int6: value {int(flat[i])} at flat index {i} is outside [-31, 31]")
    u = torch.nn.functional.pad(flat + 31, (0, (-flat.numel()) % 4), value=31).view(-1, 4)
    word = u[:, 0] | (u[:, 1] << 6) | (u[:, 2] << 12) | (u[:, 3] << 18)
    return torch.stack((word & 255, (word >> 8) & 255, word >> 16), dim=1).to(torch.uint8).reshape(-1)


def ref_unpack_int6(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """The inverse of pack_int6: int8 [numel]. Code 63 (value 32) is never written, so it means corrupt bytes."""
    if packed.dtype != torch.uint8 or packed.dim() != 1:
        raise ValueError(f"unpack_int6: packed must be 1-D uint8, found {packed.dim()}-D {packed.dtype}")
    if numel < 0:
        raise ValueError(f"unpack_int6: numel must be >= 0, found {numel}")
    if packed.numel() != (numel + 3) // 4 * 3:
        raise ValueError(f"unpack_int6: {numel} values need {(max(numel, 0) + 3) // 4 * 3} packed bytes, "
                         f"found {packed.numel()}")
    b = packed.view(-1, 3).to(torch.int32)
    word = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
    u = torch.stack([(word >> (6 * k)) & 63 for k in range(4)], dim=1).reshape(-1)[:numel]
    bad = torch.nonzero(u == 63)
    if bad.numel():
        raise ValueError(f"unpack_int6: code 63 (value 32, outside [-31, 31]) at flat index {int(bad[0])}: "
                         "the packed bytes are corrupt")
    return (u - 31).to(torch.int8)


def pack_int6(q: torch.Tensor) -> torch.Tensor:
    if _use_kernel("pack_int6", q.device):
        return torch.ops.golf.pack_int6(q)
    return ref_pack_int6(q)


def unpack_int6(packed: torch.Tensor, numel: int) -> torch.Tensor:
    if _use_kernel("unpack_int6", packed.device):
        return torch.ops.golf.unpack_int6(packed, int(numel))
    return ref_unpack_int6(packed, numel)


if _C is not None:
    @torch.library.register_fake("golf::hessian_accumulate")
    def _hessian_accumulate_fake(H, X):
        return None

    @torch.library.register_fake("golf::gptq_quantize")
    def _gptq_quantize_fake(W, H, bits, block, act_order, damp, clip_candidates):
        return W.new_empty(W.shape, dtype=torch.int8), W.new_empty((W.shape[0],), dtype=torch.float16)

    @torch.library.register_fake("golf::gptq_quantize_scaled")
    def _gptq_quantize_scaled_fake(W, H, scales, bits, block, act_order, damp):
        return W.new_empty(W.shape, dtype=torch.int8), W.new_empty((W.shape[0],), dtype=torch.float16)

    @torch.library.register_fake("golf::pack_int6")
    def _pack_int6_fake(q):
        return q.new_empty(((q.numel() + 3) // 4 * 3,), dtype=torch.uint8)

    @torch.library.register_fake("golf::unpack_int6")
    def _unpack_int6_fake(packed, numel):
        return packed.new_empty((numel,), dtype=torch.int8)
