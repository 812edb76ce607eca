"""Size accounting: artifact bytes + code bytes against the challenge's cap of 16,000,000 decimal bytes.

    CAP_BYTES = 16_000_000
    code_bytes(config=None, root=None) -> dict   golf.bundle's: bytes (the train_gpt.py a submission ships: what
                                                 counts), raw (the shipped sources' sizes), files, root
    size_report(artifact_path, header, code=None, cap=CAP_BYTES) -> dict    artifact + code vs the cap
        (header: golf.artifact.read_header's, for the largest tensors and the codec)
    report_line(report) -> str             the report as one `key=value` log line
    check_size(report) -> report           BudgetError when over the cap (the artifact stays written)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from golf.bundle import code_bytes
from golf.codecs import codec_label
from golf.errors import ArtifactError, BudgetError

CAP_BYTES = 16_000_000  # the challenge's cap, decimal bytes (not MiB)


def size_report(artifact_path, header: dict, code=None, cap: int = CAP_BYTES, top: int = 5) -> dict:
    """artifact + code bytes against the cap (decimal bytes). header: the artifact's (golf.artifact.read_header);
    code: a code_bytes() dict, an int, or None (measure, with the presets' config). JSON-able, for summary.json."""
    path = Path(artifact_path)
    artifact = path.stat().st_size
    if code is None:
        code = code_bytes()
    if isinstance(code, Mapping):
        counted, raw = int(code["bytes"]), code.get("raw")
        files = sorted(code.get("files", []), key=lambda f: -f[1])[:top]
    elif isinstance(code, int) and not isinstance(code, bool) and code >= 0:
        counted, raw, files = code, None, []
    else:
        raise ArtifactError("code must be a code_bytes() dict or a byte count", field="code", found=repr(code))
    tensors = sorted(((e["name"], e["nbytes"]) for e in header["tensors"]), key=lambda t: -t[1])[:top]
    total = artifact + counted
    return {"artifact_path": str(path), "artifact_bytes": artifact, "code_bytes": counted,
            "code_raw_bytes": raw, "total_bytes": total, "cap": int(cap), "margin": int(cap) - total,
            "fits": total <= cap, "raw_bytes": header["raw_bytes"], "payload_bytes": header["payload_bytes"],
            "codec": codec_label(header["codec"]),
            "largest_tensors": [[n, b] for n, b in tensors], "largest_code_files": [[n, b] for n, b in files]}


def report_line(report: dict) -> str:
    """The size report as one `key=value` log line."""
    return (f"artifact_bytes={report['artifact_bytes']} code_bytes={report['code_bytes']} "
            f"code_raw_bytes={report['code_raw_bytes']} total_bytes={report['total_bytes']} cap={report['cap']} "
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
        f"largest shipped sources (uncompressed): {files}. The artifact file is kept.")
