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
