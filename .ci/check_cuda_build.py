"""CI check of the CUDA build on a machine without a GPU: it imports, every op that a CUDA source registers
(`m.impl("<op>", ...)` in csrc/cuda/*.cpp) has its CUDA kernel registered (and its CPU one), every op but
count_next has one, the device-side index flag is exposed, and calling a CUDA op fails only for want of a driver."""

import re
import sys
from pathlib import Path

import torch

from golf import info, ops

print(info.report())
failures = []
if not torch.version.cuda:
    failures.append(f"torch {torch.__version__} is not a CUDA build")
if not ops.BUILD_INFO["cuda"]:
    failures.append(f"golf._C was built without CUDA kernels: {ops.BUILD_INFO['cuda_reason']}")
registered = ops.registered_ops()
sources = (Path(__file__).resolve().parents[1] / "csrc" / "cuda").glob("*.cpp")
with_cuda = sorted({op for src in sources for op in re.findall(r'm\.impl\("(\w+)"', src.read_text())})
if not registered or not with_cuda:
    failures.append(f"no golf ops registered ({registered}) or no CUDA sources ({with_cuda})")
for op in with_cuda:
    devices = registered.get(f"golf::{op}", [])
    if "cuda" not in devices or "cpu" not in devices:
        failures.append(f"golf::{op} has kernels for {devices}, expected cpu and cuda")
if ops.BUILD_INFO["cuda"] and not ops.has_device_index_flag():
    failures.append("golf._C has no take_index_errors (the CUDA ops' device-side index flag)")
# Every op has a CUDA kernel but count_next (tier fitting counts on the CPU).
missing = sorted(n for n, d in registered.items() if "cuda" not in d and n != "golf::count_next")
if missing:
    failures.append(f"ops without a CUDA kernel: {missing}")
print("CUDA kernels registered:", ", ".join(with_cuda))
print("reference on CUDA (count_next by design: tier fitting counts on the CPU):", ", ".join(n for n, d in registered.items() if "cuda" not in d) or "none")
if not torch.cuda.is_available():
    ids = torch.zeros(4, dtype=torch.long)
    try:
        torch.ops.golf.target_bytes(ids.cuda(), ids.cuda(), torch.zeros(8, dtype=torch.int32).cuda(),
                                    torch.zeros(8, dtype=torch.bool).cuda(), torch.zeros(8, dtype=torch.bool).cuda())
        failures.append("calling a CUDA op without a GPU did not raise")
    except (RuntimeError, AssertionError) as exc:
        if "NVIDIA driver" not in str(exc):
            failures.append(f"unexpected error calling a CUDA op without a GPU: {exc}")
        else:
            print("calling golf::target_bytes on cuda: 'Found no NVIDIA driver' (expected without a GPU)")
for f in failures:
    print(f"FAIL: {f}", file=sys.stderr)
sys.exit(1 if failures else 0)
