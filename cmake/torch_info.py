"""Print the installed torch's build facts as CMake `set()` commands (read by CMakeLists.txt).

Run by CMake with the target environment's site-packages on PYTHONPATH, so it sees the
torch the extension will be loaded into, even inside pip's isolated build environment.
"""
import os
import sys


def cmake_list(paths):
    return ";".join(p.replace("\\", "/") for p in paths)


def main():
    import torch
    from torch.utils import cpp_extension

    torch_dir = os.path.dirname(torch.__file__)
    facts = {
        "GOLF_TORCH_VERSION": torch.__version__,
        "GOLF_TORCH_DIR": torch_dir,
        "GOLF_TORCH_CUDA_VERSION": torch.version.cuda or "",
        "GOLF_TORCH_INCLUDE_DIRS": cmake_list(cpp_extension.include_paths()),
        "GOLF_TORCH_LIBRARY_DIR": os.path.join(torch_dir, "lib"),
        "GOLF_TORCH_CXX11_ABI": str(int(torch._C._GLIBCXX_USE_CXX11_ABI)),
    }
    # CUTLASS headers ship inside the nvidia-cutlass wheel; optional (only kernels that use it need it).
    try:
        import cutlass_library

        root = os.path.join(os.path.dirname(cutlass_library.__file__), "source")
        dirs = [os.path.join(root, "include"), os.path.join(root, "tools", "util", "include")]
        if all(os.path.isdir(d) for d in dirs):
            facts["GOLF_CUTLASS_INCLUDE_DIRS"] = cmake_list(dirs)
    except ImportError:
        pass
    for key, value in facts.items():
        print(f'set({key} "{value}")')


if __name__ == "__main__":
    sys.exit(main())
