"""What a submission ships, and the self-contained `train_gpt.py` that carries it: the code bytes that count.

    find_source_root(root=None) -> Path        the checkout, or the sources installed with the package (golf/_src)
    shipped_files(root=None) -> [(name, Path)] every file that builds and runs golf, named as in the checkout
    train_gpt(config=None, root=None) -> bytes the launcher: those files minified (golf.minify), as a tar, LZMA,
                                               a latin-1 string, and a resolved config
    code_bytes(config=None, root=None) -> dict bytes (len of train_gpt.py: what the challenge counts), raw (the
                                               shipped files' sizes, for information), files, root

The challenge counts the code of the submission folder, which must run from that folder: golf's is one file,
`train_gpt.py`, that unpacks its sources beside itself, builds golf._C there and runs golf.train with its config
(LAUNCHER says how). Shipped: pyproject.toml, CMakeLists.txt, cmake/, csrc/, kernels/ and python/golf/*.py but
LEFT_OUT (downloading, preparing, inspecting, submitting, experimenting, the command list: not needed to train or
evaluate).
Outside a checkout (golf installed with pip) the same files come from the package: CMake installs the non-Python
ones into golf/_src.
"""

from __future__ import annotations

import io
import json
import lzma
import os
import tarfile
from pathlib import Path

from golf import minify
from golf.errors import ArtifactError

_TOP_FILES = ("CMakeLists.txt", "pyproject.toml")
_DIRS = (("cmake", None), ("csrc", None), ("kernels", None))
# python/golf modules a run never imports
LEFT_OUT = ("datatools.py", "download.py", "info.py", "submit.py", "experiment.py", "stats.py", "__main__.py")
# Build products and editor files that can sit beside the sources.
_BUILD_SUFFIXES = {".o", ".obj", ".so", ".pyd", ".dll", ".dylib", ".a", ".lib", ".pyc", ".pyo", ".ptx",
                   ".cubin", ".fatbin", ".exp", ".ilk", ".pdb"}
_SKIP_DIRS = {"__pycache__", "build"}


def _checkout(path: Path) -> bool:
    return (path / "CMakeLists.txt").is_file() and (path / "csrc").is_dir() and (path / "python" / "golf").is_dir()


def _installed(path: Path) -> bool:
    return (path.name == "_src" and (path / "CMakeLists.txt").is_file() and (path / "csrc").is_dir()
            and (path.parent / "__init__.py").is_file())


def _package_dir() -> Path | None:
    import golf
    return Path(golf.__file__).resolve().parent if getattr(golf, "__file__", None) else None


def find_source_root(root=None) -> Path:
    """`root`, else $GOLF_SOURCE_DIR, else a checkout above golf.__file__ or the cwd, else the installed golf/_src."""
    if root is not None or os.environ.get("GOLF_SOURCE_DIR"):
        where = "root" if root is not None else "GOLF_SOURCE_DIR"
        path = Path(root if root is not None else os.environ["GOLF_SOURCE_DIR"]).expanduser().resolve()
        if not (_checkout(path) or _installed(path)):
            missing = [p for p in ("CMakeLists.txt", "csrc", "python/golf") if not (path / p).exists()]
            raise ArtifactError("not a golf source tree", file=path, field=where,
                                expected="a directory holding CMakeLists.txt, csrc/ and python/golf/",
                                found=f"missing {missing}" if missing else "those paths, but not as files/directories")
        return path
    pkg = _package_dir()
    starts = ([pkg] if pkg else []) + [Path.cwd().resolve()]
    for start in starts:
        for path in (start, *start.parents):
            if _checkout(path):
                return path
    if pkg is not None and _installed(pkg / "_src"):
        return pkg / "_src"
    raise ArtifactError("cannot find golf's sources to count the code bytes (neither a checkout above "
                        f"{' or '.join(str(s) for s in starts)} nor golf/_src beside the installed package); set "
                        "GOLF_SOURCE_DIR to the checkout", field="GOLF_SOURCE_DIR",
                        expected="a directory holding CMakeLists.txt, csrc/ and python/golf/", found="none")


def _walk(top: Path, suffixes) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS and not d.startswith(".")]
        for fname in filenames:
            p = Path(dirpath) / fname
            if fname.startswith(".") or fname.endswith("~") or not p.is_file():
                continue
            if (suffixes is not None and p.suffix not in suffixes) or p.suffix in _BUILD_SUFFIXES or ".so." in fname:
                continue
            files.append(p)
    return files


def shipped_files(root=None) -> list[tuple[str, Path]]:
    """(name in the checkout, file) of everything shipped, sorted by name. Skipped everywhere: __pycache__/ and
    build/ directories, hidden files, editor backups (*~), compiled products (.o, .so, .pyc, ...)."""
    root = find_source_root(root)
    package = root / "python" / "golf" if _checkout(root) else root.parent
    out = [(name, root / name) for name in _TOP_FILES if (root / name).is_file()]
    for sub, suffixes in _DIRS:
        out += [(p.relative_to(root).as_posix(), p) for p in _walk(root / sub, suffixes)]
    for p in _walk(package, (".py",)):
        rel = p.relative_to(package)
        if rel.parts[0] != "_src" and rel.as_posix() not in LEFT_OUT:
            out.append(("python/golf/" + rel.as_posix(), p))
    return sorted(out)


def tar_of(files: list[tuple[str, bytes]]) -> bytes:
    """A reproducible tar of (name, data) pairs: fixed order, times and owners."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _archive(files: list[tuple[str, Path]]) -> bytes:
    """The files minified, in a tar, LZMA-compressed."""
    small = [(name, minify.shipped_text(name, path.read_text(encoding="utf-8")).encode("utf-8"))
             for name, path in files]
    return lzma.compress(tar_of(small), format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, preset=9 | lzma.PRESET_EXTREME)


# The archive's bytes as one latin-1 string literal (a byte a character) inside triple quotes: only the
# backslash, the quote, CR (the source reader would turn it into LF) and NUL (no source may hold one) are escaped,
# about 2% more bytes where base85 took 25%.
_ESCAPES = {ord("\\"): "\\\\", ord('"'): '\\"', ord("\r"): "\\r", 0: "\\x00"}


def train_gpt(config: dict | None = None, root=None) -> bytes:
    """The submission's train_gpt.py, as the bytes of the file: LAUNCHER (a latin-1 source) with the shipped
    files' archive and `config` (a resolved TrainConfig dict; None: the presets' defaults) filled in."""
    blob = _archive(shipped_files(root)).decode("latin-1").translate(_ESCAPES)
    config_text = json.dumps(config or {}, sort_keys=True, separators=(",", ":"))
    return (LAUNCHER.replace("@CONFIG@", repr(config_text))
            .replace("@SOURCES@", blob)).encode("latin-1")


def code_bytes(config: dict | None = None, root=None) -> dict:
    """bytes: the length of train_gpt(config) (the challenge's count), or, in a run that a train_gpt.py started
    ($GOLF_TRAIN_GPT), of that very file; raw: the shipped files' summed sizes (information); files:
    [(name, bytes)]; root."""
    root = find_source_root(root)
    files = shipped_files(root)
    running = os.environ.get("GOLF_TRAIN_GPT")
    if running and Path(running).is_file():
        counted = Path(running).stat().st_size
    else:
        counted = len(train_gpt(config, root))
    return {"bytes": counted, "raw": sum(p.stat().st_size for _, p in files),
            "files": [(name, p.stat().st_size) for name, p in files], "root": str(root)}


LAUNCHER = '''#!/usr/bin/env python3
# -*- coding: latin-1 -*-
"""golf, a Tiered Residual Predictor for OpenAI's Parameter Golf: this file is the submission's whole code.

It carries golf's sources without comments or docstrings (golf.minify; a tar, LZMA, as latin-1: SOURCES; to read
them as written, check out the commit in the run's summary.json, git_sha) and the run's resolved config (CONFIG).
Started as `python train_gpt.py` (CPU) or `torchrun --standalone --nproc_per_node=8 train_gpt.py` (GPUs), it
unpacks the sources beside itself into golf_src/ and builds the golf._C extension there with CMake against the
torch of this environment (once: the first process to lock golf_src.lock builds, the others wait), then runs
golf.train with CONFIG under this command line's flags (flag > environment > CONFIG: DATA_PATH, TOKENIZER_PATH,
SEED, MAX_WALLCLOCK_SECONDS, ... as in the challenge). Nothing is installed into the environment; a failed build
stops here, before any training.
"""
import fcntl
import glob
import hashlib
import io
import lzma
import os
import shutil
import subprocess
import sys
import tarfile

CONFIG = @CONFIG@
SOURCES = """@SOURCES@""".encode("latin-1")  # the archive, a byte a character


def build(src, stamp):
    shutil.rmtree(src, ignore_errors=True)
    with tarfile.open(fileobj=io.BytesIO(lzma.decompress(SOURCES))) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(src, filter="data")
        else:
            tar.extractall(src)
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")  # a venv's own tools first
    cmake, ninja = shutil.which("cmake", path=path), shutil.which("ninja", path=path)
    if cmake is None:
        sys.exit("train_gpt.py: cmake is not on PATH (pip install cmake ninja); golf._C cannot be built")
    out = os.path.join(src, "build")
    generator = ["-G", "Ninja", "-DCMAKE_MAKE_PROGRAM=" + ninja] if ninja else []
    log = os.path.join(src, "build.log")
    with open(log, "w") as f:
        for cmd in ([cmake, "-S", src, "-B", out, "-DCMAKE_BUILD_TYPE=Release",
                     "-DPython_EXECUTABLE=" + sys.executable] + generator,
                    [cmake, "--build", out, "--parallel", str(os.cpu_count() or 2)]):
            print("train_gpt.py: " + " ".join(cmd), flush=True)
            if subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT) != 0:
                f.close()
                sys.stderr.write(open(log).read()[-6000:])
                sys.exit("train_gpt.py: building golf._C failed (log: " + log + "); nothing was trained")
    built = glob.glob(os.path.join(out, "_C*.so"))
    if not built:
        sys.exit("train_gpt.py: the build wrote no _C extension into " + out)
    for path in built:
        shutil.copy2(path, os.path.join(src, "python", "golf"))
    open(stamp, "w").close()


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    src = os.path.join(here, "golf_src")
    digest = hashlib.sha256(SOURCES + CONFIG.encode()).hexdigest()[:16]
    config = os.path.join(src, ".config-" + digest + ".json")
    with open(src + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stamp = os.path.join(src, ".built-" + hashlib.sha256(SOURCES).hexdigest()[:16])
        if not os.path.exists(stamp):
            build(src, stamp)
        if not os.path.exists(config):
            with open(config, "w") as f:
                f.write(CONFIG)
    os.environ["GOLF_TRAIN_GPT"] = os.path.abspath(__file__)  # the code bytes that count: this file
    sys.path.insert(0, os.path.join(src, "python"))
    from golf import train
    sys.exit(train.main(["--config", config] + sys.argv[1:]))


if __name__ == "__main__":
    main()
'''
