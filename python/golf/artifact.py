"""The one-file artifact `model.golf`: its file format, reading, writing, and `python -m golf.artifact`.

This module is a container: it stores named numpy arrays, a JSON config and JSON per-tensor metadata, and it
knows nothing about quantization schemes (those live in quant.py and travel in the per-tensor meta).

File format, version 1 (all integers little-endian)
    offset  size  field
    0       8     magic            b"GOLFART\\x00"
    8       4     format_version   uint32, = 1
    12      4     header_len       uint32, H = length of the header in bytes
    16      4     header_crc32     uint32, zlib.crc32 of the H header bytes (a flipped config digit is caught)
    20      H     header           UTF-8 JSON object, compact (no whitespace), keys below
    20+H    P     payload          the compressed payload, P = header["payload_bytes"]
    The file is exactly 20 + H + P bytes; trailing bytes are an error.

    Header keys
        format_version   int, equal to the preamble's
        config           the caller's JSON object (model config, tier config, vocab size, ...)
        tensors          ordered list of {"name", "dtype", "shape", "offset", "nbytes"[, "meta"]}:
                         dtype one of DTYPES (numpy names), shape a list of ints (0-d = []), offset and nbytes
                         the place in the *uncompressed* payload; offsets are contiguous in table order
                         (offset_0 = 0, offset_i+1 = offset_i + nbytes_i), nbytes = prod(shape) * itemsize;
                         "meta" is the caller's per-tensor JSON object, present only when the caller gave one;
                         "planes": true when the array's bytes are stored as byte planes (all first bytes,
                         then all second bytes, ...: a float's exponent bytes side by side compress better)
        codec            how to decode the payload, one of
                           {"name": "lzma", "format": "xz", "check": "none", "preset": 0-9, "extreme": bool}
                           {"name": "lzma-raw", "filters": [{"id": "lzma2", "preset": 9, "extreme": true, ...}]}
                           {"name": "brotli", "quality": 0-11, "lgwin": 10-24}
                           {"name": "zstd", "level": 1-22}
        payload_bytes    int, P
        raw_bytes        int, length of the uncompressed payload (= sum of nbytes)
        payload_sha256   hex SHA-256 of the P compressed bytes
        raw_sha256       hex SHA-256 of the uncompressed payload
    Uncompressed payload: each array's bytes, C-contiguous, little-endian (as byte planes where "planes"),
    concatenated in table order, no padding.

The default codec is LZMA in an XZ container at preset 9 | PRESET_EXTREME with no XZ integrity check (the two
SHA-256 sums cover it). Writing is deterministic: the same arrays, config, meta and codec give the same bytes.

API
    save(path, arrays, *, config, meta=None, codec="lzma") -> ArtifactInfo    atomic (temp file + os.replace)
    load(path) -> Artifact                 arrays, config, meta, header; every checksum and size verified
    encode(arrays, *, config, meta=None, codec="lzma", planes=False) -> (bytes, ArtifactInfo)   the file's bytes,
                                                      unwritten (planes: float arrays as byte planes)
    write(path, data)                                 encode's bytes to path, atomically as save does
    decode(data, path="<bytes>") -> Artifact
    read_header(path) -> dict              the validated header, without decompressing the payload
The payload's coders live in golf.codecs; the size accounting (artifact + code bytes <= 16,000,000) in golf.sizes.

Command line: python -m golf.artifact PATH [--cap N] [--check] [--config] [--code]
    exit 0 ok, 2 bad input (a missing, truncated or altered file: ArtifactError, one `error:` line), 3 --check
    over the cap
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import secrets
import struct
import sys
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from golf import sizes
from golf.codecs import codec_label, compress, decompress, normalize_codec
from golf.errors import ArtifactError, BudgetError, ConfigError

MAGIC = b"GOLFART\x00"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)
PREAMBLE = struct.Struct("<8sIII")  # magic, format_version, header_len, header_crc32
PREAMBLE_BYTES = PREAMBLE.size  # 20

# The dtypes an artifact may hold, by numpy name; stored little-endian whatever the machine.
DTYPES = {name: np.dtype(name).newbyteorder("<") for name in (
    "bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
    "float16", "float32", "float64")}

HEADER_KEYS = ("format_version", "config", "tensors", "codec", "payload_bytes", "raw_bytes",
               "payload_sha256", "raw_sha256")
TENSOR_KEYS = ("name", "dtype", "shape", "offset", "nbytes")


# --- encode / decode -----------------------------------------------------------------------------------

@dataclass
class ArtifactInfo:
    """What save()/encode() produced. file_bytes is the artifact's size in the challenge's accounting."""

    path: Path | None
    file_bytes: int
    header_bytes: int
    payload_bytes: int
    raw_bytes: int
    tensor_bytes: dict  # name -> bytes in the uncompressed payload, in table order
    codec: dict
    payload_sha256: str
    raw_sha256: str
    compress_seconds: float
    pruning: dict | None = None  # golf.export.prune_to_fit's record when it zeroed int6 +-1 values to fit
    rate: dict | None = None     # golf.rate.fit's record when export_model fitted the file into a byte budget

    def log_line(self) -> str:
        ratio = self.raw_bytes / self.payload_bytes if self.payload_bytes else float("nan")
        return (f"artifact={self.path} artifact_bytes={self.file_bytes} header_bytes={self.header_bytes} "
                f"payload_bytes={self.payload_bytes} raw_bytes={self.raw_bytes} ratio={ratio:.3f} "
                f"tensors={len(self.tensor_bytes)} codec={codec_label(self.codec)} "
                f"compress_s={self.compress_seconds:.2f}")


@dataclass
class Artifact:
    """A loaded artifact: arrays (little-endian, C-contiguous, writable), the config, per-tensor meta, header."""

    path: Path | None
    arrays: dict
    config: dict
    meta: dict  # name -> the caller's meta, only for tensors saved with one
    header: dict = field(repr=False)
    file_bytes: int = 0

    @property
    def codec(self) -> dict:
        return self.header["codec"]


def _json(value, *, what: str, file=None) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"not JSON-serialisable ({exc})", file=file, field=what) from exc


def to_planes(data: bytes, itemsize: int) -> bytes:
    """An array's bytes as byte planes: every element's first byte, then every second byte, ..."""
    return np.frombuffer(data, np.uint8).reshape(-1, itemsize).T.tobytes()


def from_planes(data: bytes, itemsize: int) -> bytes:
    return np.frombuffer(data, np.uint8).reshape(itemsize, -1).T.tobytes()


def encode(arrays: Mapping, *, config: Mapping, meta: Mapping | None = None, codec="lzma",
           path=None, planes: bool = False) -> tuple[bytes, ArtifactInfo]:
    """The artifact file's bytes for these arrays (nothing written); see the module docstring for the layout.
    planes: every float array of more than one byte per element stored as byte planes (to_planes)."""
    if not isinstance(config, Mapping):
        raise ArtifactError("config must be a dict", file=path, field="config", expected="dict",
                     found=type(config).__name__)
    meta = dict(meta or {})
    unknown = sorted(set(meta) - set(arrays))
    if unknown:
        raise ArtifactError("meta names tensors that are not in arrays", file=path, field="meta",
                     expected=f"names among the {len(arrays)} arrays", found=unknown[:5])
    codec = normalize_codec(codec, file=path)
    table, chunks, offset = [], [], 0
    for name, arr in arrays.items():
        if not isinstance(name, str) or not name:
            raise ArtifactError("tensor names must be non-empty strings", file=path, field="arrays",
                         expected="str", found=repr(name))
        if not isinstance(arr, (np.ndarray, np.generic)):
            raise ArtifactError("arrays must be numpy arrays (convert torch tensors with .cpu().numpy())", file=path,
                         field=f"arrays[{name!r}]", expected="numpy.ndarray", found=type(arr).__name__)
        arr = np.asarray(arr)
        dname = arr.dtype.name if arr.dtype.fields is None else "structured"
        if dname not in DTYPES or arr.dtype.kind not in "biuf":
            raise ArtifactError("unsupported dtype", file=path, field=f"arrays[{name!r}].dtype",
                         expected=f"one of {sorted(DTYPES)}", found=str(arr.dtype))
        data = np.ascontiguousarray(arr, dtype=DTYPES[dname]).tobytes()
        entry = {"name": name, "dtype": dname, "shape": [int(n) for n in arr.shape], "offset": offset,
                 "nbytes": len(data)}
        if planes and arr.dtype.kind == "f" and arr.dtype.itemsize > 1 and arr.size > 1:
            data, entry["planes"] = to_planes(data, arr.dtype.itemsize), True
        if name in meta:
            if not isinstance(meta[name], Mapping):
                raise ArtifactError("per-tensor meta must be a dict", file=path, field=f"meta[{name!r}]",
                             expected="dict", found=type(meta[name]).__name__)
            entry["meta"] = meta[name]
        table.append(entry)
        chunks.append(data)
        offset += len(data)
    raw = b"".join(chunks)
    del chunks
    t0 = time.perf_counter()
    try:
        payload = compress(raw, codec)
    except ArtifactError:
        raise
    except Exception as exc:  # e.g. an LZMA filter chain the library refuses
        raise ArtifactError(f"compression failed ({type(exc).__name__}: {exc})", file=path, field="codec",
                     found=codec_label(codec)) from exc
    seconds = time.perf_counter() - t0
    header = {"format_version": FORMAT_VERSION, "config": config, "tensors": table, "codec": codec,
              "payload_bytes": len(payload), "raw_bytes": len(raw),
              "payload_sha256": hashlib.sha256(payload).hexdigest(), "raw_sha256": hashlib.sha256(raw).hexdigest()}
    for key in ("config", "tensors"):  # name the part that is not JSON before dumping the whole header
        _json(header[key], what=key, file=path)
    hbytes = _json(header, what="header", file=path).encode("utf-8")
    if len(hbytes) >= 2**32:
        raise ArtifactError("header too large", file=path, field="header_len", expected="< 4 GiB", found=len(hbytes))
    data = PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(hbytes), zlib.crc32(hbytes)) + hbytes + payload
    info = ArtifactInfo(path=Path(path) if path is not None else None, file_bytes=len(data),
                        header_bytes=len(hbytes), payload_bytes=len(payload), raw_bytes=len(raw),
                        tensor_bytes={e["name"]: e["nbytes"] for e in table}, codec=codec,
                        payload_sha256=header["payload_sha256"], raw_sha256=header["raw_sha256"],
                        compress_seconds=seconds)
    return data, info


def save(path, arrays: Mapping, *, config: Mapping, meta: Mapping | None = None, codec="lzma") -> ArtifactInfo:
    """Write the artifact atomically: a temp file in the same directory, fsync, then os.replace.

    Any failure (bad input, compression, disk) leaves a previous file at `path` untouched and no temp file behind.
    """
    path = Path(path)
    data, info = encode(arrays, config=config, meta=meta, codec=codec, path=path)
    write(path, data)
    return info


def write(path, data: bytes) -> None:
    """Write encoded artifact bytes atomically (what save does after encode)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        # os.open with 0o666 honours the umask, as a plain open() would (mkstemp would leave 0600).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise ArtifactError(f"cannot write artifact ({exc.strerror or exc})", file=path) from exc
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise


def _read(path) -> bytes:
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ArtifactError("artifact file not found", file=path) from None
    except OSError as exc:
        raise ArtifactError(f"cannot read artifact ({exc.strerror or exc})", file=path) from exc


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_header(data: bytes, path) -> tuple[dict, int]:
    """Validate the preamble, header and tensor table; return (header, payload offset)."""
    if len(data) < PREAMBLE_BYTES:
        if not MAGIC.startswith(data[:len(MAGIC)]):
            raise ArtifactError("not a golf artifact", file=path, field="magic", expected=repr(MAGIC),
                         found=repr(data[:len(MAGIC)]))
        raise ArtifactError("truncated: file is shorter than the preamble", file=path, field="preamble",
                     expected=f"{PREAMBLE_BYTES} bytes", found=f"{len(data)} bytes")
    magic, version, hlen, hcrc = PREAMBLE.unpack_from(data, 0)
    if magic != MAGIC:
        raise ArtifactError("not a golf artifact", file=path, field="magic", expected=repr(MAGIC), found=repr(magic))
    if version not in SUPPORTED_VERSIONS:
        raise ArtifactError("unsupported format version (written by another golf version?)", file=path,
                     field="format_version", expected=" or ".join(map(str, SUPPORTED_VERSIONS)), found=version)
    end = PREAMBLE_BYTES + hlen
    if len(data) < end:
        raise ArtifactError("truncated header", file=path, field="header",
                     expected=f"{hlen} bytes", found=f"{len(data) - PREAMBLE_BYTES} bytes")
    hbytes = data[PREAMBLE_BYTES:end]
    crc = zlib.crc32(hbytes)
    if crc != hcrc:
        raise ArtifactError("header checksum mismatch (corrupt header)", file=path, field="header_crc32",
                     expected=f"{hcrc:08x}", found=f"{crc:08x}")
    try:
        header = json.loads(hbytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ArtifactError(f"header is not UTF-8 JSON ({exc})", file=path, field="header") from exc
    if not isinstance(header, dict):
        raise ArtifactError("header is not a JSON object", file=path, field="header", expected="object",
                     found=type(header).__name__)
    missing = [k for k in HEADER_KEYS if k not in header]
    if missing:
        raise ArtifactError("header is missing keys", file=path, field="header", expected=list(HEADER_KEYS),
                     found=f"missing {missing}")
    if header["format_version"] != version:
        raise ArtifactError("header and preamble disagree on the format version", file=path, field="format_version",
                     expected=version, found=header["format_version"])
    for key in ("payload_bytes", "raw_bytes"):
        if not _is_int(header[key]) or header[key] < 0:
            raise ArtifactError("invalid size", file=path, field=key, expected="an integer >= 0", found=repr(header[key]))
    for key in ("payload_sha256", "raw_sha256"):
        if not isinstance(header[key], str) or len(header[key]) != 64:
            raise ArtifactError("invalid checksum", file=path, field=key, expected="64 hex digits",
                         found=repr(header[key]))
    if not isinstance(header["config"], dict):
        raise ArtifactError("config is not a JSON object", file=path, field="config", expected="object",
                     found=type(header["config"]).__name__)
    header["codec"] = normalize_codec(header["codec"], file=path)
    _check_table(header, path)
    return header, end


def _check_table(header: dict, path) -> None:
    table = header["tensors"]
    if not isinstance(table, list):
        raise ArtifactError("tensor table is not a list", file=path, field="tensors", expected="list",
                     found=type(table).__name__)
    seen, offset = set(), 0
    for i, entry in enumerate(table):
        where = f"tensors[{i}]"
        if not isinstance(entry, dict) or any(k not in entry for k in TENSOR_KEYS):
            raise ArtifactError("tensor table entry is incomplete", file=path, field=where, expected=list(TENSOR_KEYS),
                         found=sorted(entry) if isinstance(entry, dict) else repr(entry))
        name = entry["name"]
        where = f"tensors[{i}] ({name!r})"
        if not isinstance(name, str) or name in seen:
            raise ArtifactError("tensor name is not a unique string", file=path, field=where + ".name",
                         found=repr(name))
        seen.add(name)
        if entry["dtype"] not in DTYPES:
            raise ArtifactError("unknown dtype", file=path, field=where + ".dtype", expected=f"one of {sorted(DTYPES)}",
                         found=repr(entry["dtype"]))
        shape = entry["shape"]
        if not isinstance(shape, list) or not all(_is_int(n) and n >= 0 for n in shape):
            raise ArtifactError("invalid shape", file=path, field=where + ".shape", expected="a list of integers >= 0",
                         found=repr(shape))
        if "planes" in entry and entry["planes"] is not True:
            raise ArtifactError("invalid planes flag", file=path, field=where + ".planes", expected="true or absent",
                         found=repr(entry["planes"]))
        if "meta" in entry and not isinstance(entry["meta"], dict):
            raise ArtifactError("per-tensor meta is not a JSON object", file=path, field=where + ".meta",
                         expected="object", found=type(entry["meta"]).__name__)
        want = math.prod(shape) * DTYPES[entry["dtype"]].itemsize
        if entry["nbytes"] != want:
            raise ArtifactError("tensor table inconsistent: nbytes does not match dtype x shape", file=path,
                         field=where + ".nbytes", expected=f"{want} ({entry['dtype']} {shape})",
                         found=entry["nbytes"])
        if entry["offset"] != offset:
            raise ArtifactError("tensor table inconsistent: offsets are not contiguous", file=path,
                         field=where + ".offset", expected=offset, found=entry["offset"])
        offset += want
    if offset != header["raw_bytes"]:
        raise ArtifactError("tensor table inconsistent: tensor bytes do not add up to raw_bytes", file=path,
                     field="raw_bytes", expected=offset, found=header["raw_bytes"])


def _check_payload_size(data: bytes, header: dict, start: int, path) -> bytes:
    found, want = len(data) - start, header["payload_bytes"]
    if found < want:
        raise ArtifactError("truncated payload", file=path, field="payload_bytes", expected=f"{want} bytes",
                     found=f"{found} bytes")
    if found > want:
        raise ArtifactError("trailing bytes after the payload", file=path, field="payload_bytes",
                     expected=f"{want} bytes", found=f"{found} bytes")
    return data[start:]


def read_header(path) -> dict:
    """The validated header (tensor table included) and payload size; the payload is not decompressed."""
    data = _read(path)
    header, start = _parse_header(data, path)
    _check_payload_size(data, header, start, path)
    return header


def decode(data: bytes, path="<bytes>") -> Artifact:
    """Parse and verify artifact bytes: preamble, header CRC, table, payload SHA-256, decompression, raw SHA-256."""
    header, start = _parse_header(data, path)
    payload = _check_payload_size(data, header, start, path)
    digest = hashlib.sha256(payload).hexdigest()
    if digest != header["payload_sha256"]:
        raise ArtifactError("payload checksum mismatch (corrupt file)", file=path, field="payload_sha256",
                     expected=header["payload_sha256"], found=digest)
    raw = decompress(payload, header["codec"], header["raw_bytes"], file=path)
    if len(raw) != header["raw_bytes"]:
        raise ArtifactError("decompressed payload has the wrong size", file=path, field="raw_bytes",
                     expected=header["raw_bytes"], found=len(raw) if len(raw) <= header["raw_bytes"] else
                     f"more than {header['raw_bytes']}")
    digest = hashlib.sha256(raw).hexdigest()
    if digest != header["raw_sha256"]:
        raise ArtifactError("decompressed payload checksum mismatch", file=path, field="raw_sha256",
                     expected=header["raw_sha256"], found=digest)
    arrays, meta = {}, {}
    for e in header["tensors"]:
        dtype = DTYPES[e["dtype"]]
        # A copy per tensor: aligned, writable, and independent of the decompressed buffer.
        if e.get("planes"):
            chunk = from_planes(raw[e["offset"]:e["offset"] + e["nbytes"]], dtype.itemsize)
            flat = np.frombuffer(chunk, dtype=dtype)
        else:
            flat = np.frombuffer(raw, dtype=dtype, count=e["nbytes"] // dtype.itemsize, offset=e["offset"]) \
                if e["nbytes"] else np.empty(0, dtype=dtype)
        arrays[e["name"]] = flat.reshape(e["shape"]).copy()
        if "meta" in e:
            meta[e["name"]] = e["meta"]
    return Artifact(path=None if path == "<bytes>" else Path(path), arrays=arrays, config=header["config"],
                    meta=meta, header=header, file_bytes=len(data))


def load(path) -> Artifact:
    """Read and verify an artifact; every failure is an ArtifactError naming the file and the field."""
    path = Path(path)
    return decode(_read(path), path)


# --- command line --------------------------------------------------------------------------------------

def _fmt_shape(shape) -> str:
    return "[" + ",".join(str(n) for n in shape) + "]"


def describe(art: Artifact) -> str:
    """The artifact as a table plus `key=value` summary lines."""
    h = art.header
    rows = [("name", "scheme", "dtype", "shape", "bytes", "share")]
    raw = h["raw_bytes"] or 1
    for e in h["tensors"]:
        scheme = str(e.get("meta", {}).get("scheme", "-"))
        rows.append((e["name"], scheme, e["dtype"], _fmt_shape(e["shape"]), f"{e['nbytes']:,}",
                     f"{100 * e['nbytes'] / raw:.1f}%"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    ratio = h["raw_bytes"] / h["payload_bytes"] if h["payload_bytes"] else float("nan")
    lines.append(f"artifact={art.path} format_version={h['format_version']} tensors={len(h['tensors'])} "
                 f"codec={codec_label(h['codec'])}")
    lines.append(f"file_bytes={art.file_bytes} header_bytes={art.file_bytes - PREAMBLE_BYTES - h['payload_bytes']} "
                 f"payload_bytes={h['payload_bytes']} raw_bytes={h['raw_bytes']} ratio={ratio:.3f}")
    lines.append(f"checksum=ok payload_sha256={h['payload_sha256']} raw_sha256={h['raw_sha256']}")
    return "\n".join(lines)


CHECK_FAILED = 3  # --check over the cap: a failed check, as golf.eval's audit FAIL, not bad input (2)


def main(argv=None) -> int:
    """Exit codes: 0 ok, 2 bad input (a missing, truncated or altered file; a bad --cap; with --check, code bytes
    that cannot be counted), 3 --check over the cap."""
    parser = argparse.ArgumentParser(prog="python -m golf.artifact",
                                     description="Verify a model.golf artifact and print its tensors and sizes.",
                                     epilog="Exit codes: 0 ok, 2 bad input (error: line on stderr), 3 --check over "
                                            "the cap.")
    parser.add_argument("path", help="the artifact (model.golf)")
    parser.add_argument("--cap", type=int, default=sizes.CAP_BYTES, help="size cap in decimal bytes (default 16000000)")
    parser.add_argument("--check", action="store_true",
                        help=f"exit {CHECK_FAILED} when artifact + code bytes exceed the cap")
    parser.add_argument("--config", action="store_true", help="also print the stored config as JSON")
    parser.add_argument("--code", action="store_true", help="also list every code file counted, with its bytes")
    args = parser.parse_args(argv)
    try:
        if args.cap < 1:
            raise ConfigError("the size cap must be positive", field="--cap", expected=">= 1", found=args.cap)
        art = load(args.path)
    except (ArtifactError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(describe(art))
    if args.config:
        print(json.dumps(art.config, indent=2, sort_keys=True))
    try:
        code = sizes.code_bytes()
        report = sizes.size_report(args.path, art.header, code=code, cap=args.cap)
    except ArtifactError as exc:  # no source tree: the artifact is fine, the code bytes are unknown
        print(f"code_bytes=unknown reason={exc}")
        if args.check:  # the check cannot be made: not a pass, and not a measured overshoot either
            print(f"error: --check: cannot count the code bytes ({exc})", file=sys.stderr)
            return 2
        return 0
    if args.code:
        for name, nbytes in code["files"]:
            print(f"code_file={name} bytes={nbytes}")
    print(sizes.report_line(report))
    if args.check:
        try:
            sizes.check_size(report)
        except BudgetError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return CHECK_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
