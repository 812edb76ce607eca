"""python -m golf.info: what this golf build is and which ops run where."""

from __future__ import annotations

import platform
import sys

import torch

import golf
from golf import ops


def report() -> str:
    b = ops.BUILD_INFO
    lines = [
        f"golf {golf.__version__}  python {platform.python_version()}  torch {torch.__version__}"
        f" (cuda {torch.version.cuda or 'none'})",
    ]
    if ops.IMPORT_ERROR:
        lines.append(f"golf._C: NOT BUILT ({ops.IMPORT_ERROR}); every op runs its PyTorch reference")
    else:
        lines.append(f"golf._C: built against torch {b['torch_version']}")
        if b["torch_version"] != torch.__version__:
            lines.append(f"  WARNING: running under torch {torch.__version__}; rebuild with `pip install .`")
    if b["cuda"]:
        lines.append(f"CUDA kernels: built for archs {b['cuda_archs']} with nvcc {b['nvcc_version']} ({b['cuda_reason']})")
    else:
        lines.append(f"CUDA kernels: not built ({b['cuda_reason']})")
    if b["cuda"]:
        fused = "built" if b.get("fused_mlp") else "not built (needs CUTLASS headers and 90a among the archs)"
        lines.append(f"fused MLP GEMMs (CUTLASS, sm_90a): {fused}")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none visible"
    if torch.cuda.is_available() and b.get("fused_mlp"):
        gpu += f"; the fused MLP runs here: {'yes' if ops.fused_mlp_available('cuda') else 'no'}"
    lines.append(f"GPU: {gpu}")
    lines.append("ops (compiled kernels per device; every op also has a PyTorch reference):")
    for name, devices in ops.registered_ops().items():
        lines.append(f"  {name:<28} {', '.join(devices) if devices else '-'}")
    return "\n".join(lines)


def main() -> int:
    print(report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
