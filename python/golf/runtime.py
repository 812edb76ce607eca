"""What golf.train and golf.eval share: the process group, the run log, and small collectives.

    with distributed(device="auto") as d:      # torchrun or a single process; d: Dist(rank, world_size, ...)
        ...                                    # every rank leaves together (barrier, then teardown)
    setup_distributed(device, env) -> Dist     the setup alone: the device of LOCAL_RANK (cuda:LOCAL_RANK, made
                                               current with torch.cuda.set_device, so that .cuda() and NCCL use it),
                                               NCCL on CUDA, gloo on the CPU
    broadcast_object(obj, d)                   rank 0's obj on every rank
    all_gather_object(obj, d) -> list          every rank's obj, in rank order, on every rank
    all_reduce_sum(t, d) -> Tensor             the sum of a tensor over the ranks
    RunLog(path)                               `event=NAME k=v ...` lines to stdout and log.txt (rank 0 only)
    sync(device), seed_everything(seed), peak_mem_bytes(device), git_sha(), write_json(path, obj)
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import resource
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_dist

from golf.errors import ConfigError


@dataclass
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _env_int(env, name: str, default: int) -> int:
    text = env.get(name, str(default))
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"environment {name}={text!r}: expected an integer") from None


def setup_distributed(device: str = "auto", env=None) -> Dist:
    """This process's rank and device from torchrun's WORLD_SIZE / RANK / LOCAL_RANK, and the process group.

    device: "auto" (cuda:LOCAL_RANK when CUDA is available, else cpu), "cuda" (cuda:LOCAL_RANK), or any torch
    device string. A CUDA device becomes the current one before the group forms, so NCCL and every `.cuda()`
    (golf.data.BpbMeter's all-reduce) use this rank's GPU and not cuda:0."""
    env = os.environ if env is None else env
    world, rank, local = (_env_int(env, n, d) for n, d in (("WORLD_SIZE", 1), ("RANK", 0), ("LOCAL_RANK", 0)))
    if device == "auto":
        dev = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    elif device == "cuda":
        dev = torch.device(f"cuda:{local}")
    else:
        dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device (--device): {device} requested but CUDA is not available")
        count = torch.cuda.device_count()
        index = dev.index if dev.index is not None else local
        if index >= count:
            raise ConfigError(f"device: cuda:{index} (LOCAL_RANK={local}) but only {count} GPU(s) are visible")
        dev = torch.device("cuda", index)
        torch.cuda.set_device(dev)
    if world > 1 and not torch_dist.is_initialized():
        torch_dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, local, dev)


def teardown(d: Dist, together: bool = True) -> None:
    """Leave the process group; with `together`, after a barrier (a rank tearing gloo down while a peer still
    reduces can abort the peer). A failing rank leaves at once: its peers then fail on their next collective."""
    if d.enabled and torch_dist.is_initialized():
        if together:
            torch_dist.barrier()
        torch_dist.destroy_process_group()


@contextlib.contextmanager
def distributed(device: str = "auto", env=None):
    """setup_distributed, then teardown when the block ends (together when it ends without an error)."""
    d = setup_distributed(device, env)
    ok = False
    try:
        yield d
        ok = True
    finally:
        teardown(d, together=ok)


def broadcast_object(obj, d: Dist):
    """Rank 0's `obj` on every rank."""
    if not d.enabled:
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    """The sum of `t` over every rank, on t's device (through this rank's device, which NCCL needs)."""
    if not d.enabled:
        return t
    out = t.to(d.device)
    torch_dist.all_reduce(out, op=torch_dist.ReduceOp.SUM)
    return out.to(t.device)


def all_gather_object(obj, d: Dist) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    if not d.enabled:
        return [obj]
    out = [None] * d.world_size
    torch_dist.all_gather_object(out, obj)
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def peak_mem_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def write_json(path: Path, obj) -> None:
    """Atomically (a temp file, then os.replace): a reader never sees half a file, and a failed write (a full disk)
    leaves the previous file and no temp file."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v).replace(" ", "_")


class RunLog:
    """`event=NAME k=v ...` lines (and `# text` lines: .lines) to stdout and log.txt; a RunLog(None) (the other
    ranks') writes nothing."""

    def __init__(self, path: Path | None):
        self.file = open(path, "a", encoding="utf-8") if path is not None else None

    def event(self, event: str, **fields) -> None:
        if self.file is None:
            return
        self._write(" ".join([f"event={event}"] + [f"{k}={_fmt(v)}" for k, v in fields.items()]))

    def lines(self, lines: list[str]) -> None:
        """Free text (a table), each line as `# line`: the key=value readers skip it."""
        for line in lines:
            self._write(f"# {line}")

    def _write(self, line: str) -> None:
        if self.file is None:
            return
        print(line, flush=True)
        self.file.write(line + "\n")
        self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
