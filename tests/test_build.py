"""The extension is built against the installed torch and exposes its ops through the dispatcher."""

import subprocess
import sys

import torch

from golf import ops


def test_extension_is_built_against_the_running_torch():
    assert ops.IMPORT_ERROR is None, f"golf._C did not import: {ops.IMPORT_ERROR}"
    assert ops.BUILD_INFO["torch_version"] == torch.__version__


def test_cuda_build_matches_torch():
    info = ops.BUILD_INFO
    if torch.version.cuda is None:
        assert info["cuda"] is False and "CPU build" in info["cuda_reason"]
    registered = ops.registered_ops()["golf::target_bytes"]
    assert "cpu" in registered
    assert ("cuda" in registered) == info["cuda"]


def test_info_lists_ops_and_devices():
    out = subprocess.run([sys.executable, "-m", "golf.info"], capture_output=True, text=True, check=True).stdout
    assert f"torch {torch.__version__}" in out
    assert "CUDA kernels:" in out
    line = next(line for line in out.splitlines() if "golf::target_bytes" in line)
    assert "cpu" in line
