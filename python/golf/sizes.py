"""Size accounting: artifact bytes + code bytes against the challenge's cap of 16,000,000 decimal bytes.

    CAP_BYTES = 16_000_000
    code_files(root=None) -> [Path]        python/golf/**/*.py, csrc/**, kernels/** of the source tree
    code_bytes(root=None) -> dict          raw (the number that counts), lzma (information), files, root
    size_report(artifact_path, header, code=None, cap=CAP_BYTES) -> dict    artifact + code vs the cap
        (header: golf.artifact.read_header's, for the largest tensors and the codec)
    report_line(report) -> str             the report as one `key=value` log line
    check_size(report) -> report           BudgetError when over the cap (the artifact stays written)
"""

from __future__ import annotations

import lzma
import os
from collections.abc import Mapping
from pathlib import Path

from golf.codecs import codec_label
from golf.errors import ArtifactError, BudgetError

CAP_BYTES = 16_000_000  # the challenge's cap, decimal bytes (not MiB)

# Build products that can sit beside the sources; they are not code a reader needs.
_BUILD_SUFFIXES = {".o", ".obj", ".so", ".pyd", ".dll", ".dylib", ".a", ".lib", ".pyc", ".pyo", ".ptx",
                   ".cubin", ".fatbin", ".exp", ".ilk", ".pdb"}
_SKIP_DIRS = {"__pycache__", "build"}
# (directory, suffixes counted or None for every source file)
_CODE_DIRS = (("python/golf", (".py",)), ("csrc", None), ("kernels", None))


def _is_source_root(path: Path) -> bool:
    return (path / "CMakeLists.txt").is_file() and (path / "csrc").is_dir() and (path / "python" / "golf").is_dir()


def _package_file() -> str | None:
    import golf
    return getattr(golf, "__file__", None)


def find_source_root(root=None) -> Path:
    """The source tree: `root`, else $GOLF_SOURCE_DIR, else upward from golf.__file__, else upward from cwd."""
    if root is not None or os.environ.get("GOLF_SOURCE_DIR"):
        where = "root" if root is not None else "GOLF_SOURCE_DIR"
        path = Path(root if root is not None else os.environ["GOLF_SOURCE_DIR"]).expanduser().resolve()
        if not _is_source_root(path):
            missing = [p for p in ("CMakeLists.txt", "csrc", "python/golf") if not (path / p).exists()]
            raise ArtifactError("not a golf source tree", file=path, field=where,
                         expected="a directory holding CMakeLists.txt, csrc/ and python/golf/",
                         found=f"missing {missing}" if missing else "those paths, but not as files/directories")
        return path
    starts = []
    pkg = _package_file()
    if pkg:
        starts.append(Path(pkg).resolve().parent)
    starts.append(Path.cwd().resolve())
    for start in starts:
        for path in (start, *start.parents):
            if _is_source_root(path):
                return path
    raise ArtifactError("cannot find the golf source tree to count code bytes (golf is probably installed as a wheel "
                 "and run outside its checkout); set GOLF_SOURCE_DIR to the checkout (the directory holding "
                 "CMakeLists.txt, csrc/ and python/golf/)", field="GOLF_SOURCE_DIR",
                 expected="a directory holding CMakeLists.txt, csrc/ and python/golf/",
                 found=f"none above {' or '.join(str(s) for s in starts)}")


def code_files(root=None) -> list[Path]:
    """Every source file needed to train and evaluate: python/golf/**/*.py, csrc/**, kernels/** (sorted).

    Skipped: __pycache__ and build/ directories, hidden files and directories, editor backups (*~) and
    compiled products (.o, .so, .pyc, .ptx, ...).
    """
    root = find_source_root(root)
    files = []
    for sub, suffixes in _CODE_DIRS:
        top = root / sub
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS and not d.startswith(".")]
            for fname in filenames:
                p = Path(dirpath) / fname
                if fname.startswith(".") or fname.endswith("~") or not p.is_file():
                    continue
                if suffixes is not None and p.suffix not in suffixes:
                    continue
                if p.suffix in _BUILD_SUFFIXES or ".so." in fname:
                    continue
                files.append(p)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def code_bytes(root=None) -> dict:
    """Code bytes of the source tree: raw (the sum of file sizes, the number that counts) and lzma (info)."""
    root = find_source_root(root)
    files = code_files(root)
    blobs = [p.read_bytes() for p in files]
    return {"raw": sum(len(b) for b in blobs),
            "lzma": len(lzma.compress(b"".join(blobs), format=lzma.FORMAT_XZ, check=lzma.CHECK_NONE,
                                      preset=9 | lzma.PRESET_EXTREME)),
            "files": [(p.relative_to(root).as_posix(), len(b)) for p, b in zip(files, blobs)],
            "root": str(root)}


def size_report(artifact_path, header: dict, code=None, cap: int = CAP_BYTES, top: int = 5) -> dict:
    """artifact + code bytes against the cap (decimal bytes). header: the artifact's (golf.artifact.read_header);
    code: a code_bytes() dict, an int, or None (measure). JSON-able, for summary.json."""
    path = Path(artifact_path)
    artifact = path.stat().st_size
    if code is None:
        code = code_bytes()
    if isinstance(code, Mapping):
        code_raw, code_lzma = int(code["raw"]), code.get("lzma")
        files = sorted(code.get("files", []), key=lambda f: -f[1])[:top]
    elif isinstance(code, int) and not isinstance(code, bool) and code >= 0:
        code_raw, code_lzma, files = code, None, []
    else:
        raise ArtifactError("code must be a code_bytes() dict or a byte count", field="code", found=repr(code))
    tensors = sorted(((e["name"], e["nbytes"]) for e in header["tensors"]), key=lambda t: -t[1])[:top]
    total = artifact + code_raw
    return {"artifact_path": str(path), "artifact_bytes": artifact, "code_bytes": code_raw,
            "code_lzma_bytes": code_lzma, "total_bytes": total, "cap": int(cap), "margin": int(cap) - total,
            "fits": total <= cap, "raw_bytes": header["raw_bytes"], "payload_bytes": header["payload_bytes"],
            "codec": codec_label(header["codec"]),
            "largest_tensors": [[n, b] for n, b in tensors], "largest_code_files": [[n, b] for n, b in files]}


def report_line(report: dict) -> str:
    """The size report as one `key=value` log line."""
    return (f"artifact_bytes={report['artifact_bytes']} code_bytes={report['code_bytes']} "
            f"code_lzma_bytes={report['code_lzma_bytes']} total_bytes={report['total_bytes']} cap={report['cap']} "
            f"margin={report['margin']} fits={'yes' if report['fits'] else 'no'}")


def check_size(report: dict) -> dict:
    """Raise BudgetError when total > cap, naming the biggest tensors and code files; return the report otherwise."""
    if report["fits"]:
        return report
    tensors = ", ".join(f"{n}={b:,}" for n, b in report["largest_tensors"]) or "-"
    files = ", ".join(f"{n}={b:,}" for n, b in report["largest_code_files"]) or "-"
    raise BudgetError(
        f"{report['artifact_path']}: total_bytes: over the size cap by {-report['margin']:,} bytes "
        f"(expected <= {report['cap']:,} decimal bytes, found {report['total_bytes']:,} = artifact "
        f"{report['artifact_bytes']:,} + code {report['code_bytes']:,}); largest tensors (uncompressed): {tensors}; "
        f"largest code files: {files}. The artifact file is kept.")
