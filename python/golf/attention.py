"""Causal attention, through one backend chosen at the start of a run (or an eval) and used by every forward.

    causal(q, k, v) -> y     q [B, T, H, D], k and v [B, T, Hkv, D] (Hkv divides H: grouped-query attention),
                             y [B, T, H, D]: softmax(q k^T / sqrt(D)) v over positions <= t, by the backend in use
    BACKENDS                 "fa3"    FlashAttention-3, flash_attn_interface.flash_attn_func (the records' kernel;
                                      Hopper, bf16/fp16)
                             "fa4"    FlashAttention-4, flash_attn.cute.flash_attn_func (the flash-attn-4 package)
                             "cudnn", "flash", "efficient", "math"
                                      torch's scaled_dot_product_attention held to that one kernel
                             "sdpa"   scaled_dot_product_attention choosing for itself (the CPU's path)
    choose(device, want="auto") -> (name, tried)
                             "auto": on CUDA the first of fa3, fa4, cudnn, flash that imports, runs a small
                             problem forward and backward in bf16 and agrees with the math kernel on it; on a CPU,
                             "sdpa". A backend asked for by name must pass the same probe (ConfigError if not).
                             tried: {name: "ok" | why it was passed over}, for the log.
    use(name)                make it the backend of causal(); golf.train and golf.eval call it once, before any
                             torch.compile (the name is read at trace time)
    current() -> str

The layouts differ: the flash-attn packages take [B, T, H, D] as golf's attention holds it; SDPA takes
[B, H, T, D] (the transposes are views).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from golf.errors import ConfigError

BACKENDS = ("fa3", "fa4", "cudnn", "flash", "efficient", "math", "sdpa")
AUTO_ORDER = ("fa3", "fa4", "cudnn", "flash")
_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)  # SDPA's enable_gqa
_current = "sdpa"


def _flash_fn(name: str):
    """The flash-attn package's function for fa3 / fa4 (ImportError when it is not installed)."""
    if name == "fa3":
        from flash_attn_interface import flash_attn_func
    else:
        from flash_attn.cute import flash_attn_func
    return flash_attn_func


def _sdpa(q, k, v, backend: str):
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    H, Hkv = q.size(2), k.size(2)
    if not _GQA and Hkv != H:
        kt, vt = kt.repeat_interleave(H // Hkv, dim=1), vt.repeat_interleave(H // Hkv, dim=1)
    gqa = dict(enable_gqa=Hkv != H) if _GQA else {}
    if backend == "sdpa":
        y = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, **gqa)
    else:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        kernel = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
                  "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}[backend]
        with sdpa_kernel([kernel]):
            y = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, **gqa)
    return y.transpose(1, 2)


def attend_with(name: str, q, k, v):
    """causal() through the named backend."""
    if name in ("fa3", "fa4"):
        y = _flash_fn(name)(q, k, v, causal=True)
        return y[0] if isinstance(y, tuple) else y  # some versions also return the log-sum-exp
    return _sdpa(q, k, v, name)


def causal(q, k, v):
    return attend_with(_current, q, k, v)


def use(name: str) -> None:
    global _current
    if name not in BACKENDS:
        raise ConfigError(f"attention backend: expected one of {', '.join(BACKENDS)}, found {name!r}")
    _current = name


def current() -> str:
    return _current


def probe(name: str, device) -> str:
    """"ok", or why `name` cannot serve on `device`: a small causal GQA problem, forward and backward, against
    the math kernel in float32."""
    device = torch.device(device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(2, 128, h, 64, generator=g).to(device, dtype).requires_grad_() for h in (4, 2, 2))
    try:
        y = attend_with(name, q, k, v)
        y.float().square().sum().backward()
    except ImportError as exc:
        return f"not installed ({exc.name or exc})"
    except Exception as exc:  # a kernel that does not run here (arch, dtype, shape): passed over, with why
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
    want = _sdpa(q.detach().float(), k.detach().float(), v.detach().float(), "math")
    err = float((y.detach().float() - want).abs().max())
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
    return "ok" if err <= tol else f"differs from the math kernel by {err:.3g} (> {tol:g})"


def choose(device, want: str = "auto") -> tuple[str, dict[str, str]]:
    device = torch.device(device)
    if want != "auto":
        if want not in BACKENDS:
            raise ConfigError(f"attention: expected auto or one of {', '.join(BACKENDS)}, found {want!r}")
        why = probe(want, device)
        if why != "ok":
            raise ConfigError(f"attention={want} cannot run on {device}: {why}")
        return want, {want: why}
    if device.type != "cuda":
        return "sdpa", {"sdpa": "ok"}
    tried = {}
    for name in AUTO_ORDER:
        tried[name] = probe(name, device)
        if tried[name] == "ok":
            return name, tried
    tried["sdpa"] = "ok"
    return "sdpa", tried
