"""The extension is built against the installed torch and exposes its ops through the dispatcher."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
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


def test_a_static_cxx_runtime_is_refused(tmp_path):
    """cmake/check_libstdcxx.cmake (run after every GCC build) passes a library that loads libstdc++.so.6 and
    refuses, by name, one linked with a static C++ runtime (such an extension crashes on its first error)."""
    tools = {t: shutil.which(t) for t in ("g++", "cmake", "readelf")}
    if not all(tools.values()):
        pytest.skip(f"needs g++, cmake and readelf: {tools}")
    src = tmp_path / "lib.cpp"
    src.write_text('#include <sstream>\nstd::string f(long x) { std::ostringstream s; s << x; return s.str(); }\n')
    script = Path(__file__).resolve().parents[1] / "cmake" / "check_libstdcxx.cmake"

    def check(name: str, flags: list[str]):
        so = tmp_path / f"lib_{name}.so"
        subprocess.run([tools["g++"], "-shared", "-fPIC", *flags, "-o", str(so), str(src)], check=True)
        run = subprocess.run([tools["cmake"], f"-DSO={so}", f"-DREADELF={tools['readelf']}", f"-DCXX={tools['g++']}",
                              "-P", str(script)], capture_output=True, text=True)
        return run, so.exists()

    run, kept = check("shared", [])
    assert run.returncode == 0 and kept, run.stderr
    run, kept = check("static", ["-static-libstdc++"])
    assert run.returncode != 0
    assert "static C++ runtime" in " ".join(run.stderr.split())
    assert not kept   # removed, so no broken extension gets installed
