"""What every benchmark shares: the median timer, where the shared challenge data lives by default, and the
optional coders (brotli, zstandard: the `bench` extra; None when absent)."""

from __future__ import annotations

import importlib
import os
import statistics
import time

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
DEFAULT_DATA = os.environ.get("DATA_PATH", os.path.join(SHARED, "fineweb10B_sp1024_sample"))
DEFAULT_TOKENIZER = os.environ.get("TOKENIZER_PATH", os.path.join(SHARED, "tokenizers", "fineweb_1024_bpe.model"))


def optional_module(name: str):
    """The module, or None when it is not installed (a benchmark then skips its rows and says so)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


brotli = optional_module("brotli")
zstandard = optional_module("zstandard")


def median_seconds(fn, repeats: int, *, warmup: bool = True, sync=None) -> float:
    """Median wall seconds of `repeats` calls of fn (after one untimed call when warmup); `sync` (e.g.
    torch.cuda.synchronize) runs before and after each timed call so device work is inside the clock."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        if sync:
            sync()
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def memory_limit(device: str, nbytes: int, repeats: int) -> tuple[float, str]:
    """Bytes/s a memory-bound op can reach on device, and where the number comes from: the measured bandwidth of
    cloning an nbytes tensor on that device (read + write; device-to-device on a GPU)."""
    import torch

    src = torch.empty(max(nbytes // 4, 1), dtype=torch.int32, device=device)
    sync = torch.cuda.synchronize if src.is_cuda else None
    seconds = median_seconds(lambda: src.clone(), repeats, sync=sync)
    return 2 * src.numel() * 4 / seconds, "measured copy bandwidth" + (" (device to device)" if src.is_cuda else "")
