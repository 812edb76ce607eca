"""The one-file artifact `model.golf`, and the size accounting (artifact bytes + code bytes <= 16,000,000).

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
                         "meta" is the caller's per-tensor JSON object, present only when the caller gave one
        codec            how to decode the payload, one of
                           {"name": "lzma", "format": "xz", "check": "none", "preset": 0-9, "extreme": bool}
                           {"name": "lzma-raw", "filters": [{"id": "lzma2", "preset": 9, "extreme": true, ...}]}
                           {"name": "brotli", "quality": 0-11, "lgwin": 10-24}
                           {"name": "zstd", "level": 1-22}
        payload_bytes    int, P
        raw_bytes        int, length of the uncompressed payload (= sum of nbytes)
        payload_sha256   hex SHA-256 of the P compressed bytes
        raw_sha256       hex SHA-256 of the uncompressed payload
    Uncompressed payload: each array's bytes, C-contiguous, little-endian, concatenated in table order, no padding.

The default codec is LZMA in an XZ container at preset 9 | PRESET_EXTREME with no XZ integrity check (the two
SHA-256 sums cover it). Writing is deterministic: the same arrays, config, meta and codec give the same bytes.

API
    save(path, arrays, *, config, meta=None, codec="lzma") -> ArtifactInfo    atomic (temp file + os.replace)
    load(path) -> Artifact                 arrays, config, meta, header; every checksum and size verified
    encode(arrays, *, config, meta=None, codec="lzma") -> (bytes, ArtifactInfo)   the file's bytes, unwritten
    write(path, data)                                 encode's bytes to path, atomically as save does
    decode(data, path="<bytes>") -> Artifact
    read_header(path) -> dict              the validated header, without decompressing the payload
    code_files(root=None) -> [Path]        python/golf/**/*.py, csrc/**, kernels/** of the source tree
    code_bytes(root=None) -> dict          raw (the number that counts), lzma (information), files, root
    size_report(artifact_path, code=None, cap=16_000_000) -> dict    artifact + code vs the decimal cap
    check_size(report) -> report           BudgetError when over the cap (the artifact stays written)

Command line: python -m golf.artifact PATH [--cap N] [--check] [--config] [--code]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
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

from golf.errors import ArtifactError, BudgetError, _describe

MAGIC = b"GOLFART\x00"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)
PREAMBLE = struct.Struct("<8sIII")  # magic, format_version, header_len, header_crc32
PREAMBLE_BYTES = PREAMBLE.size  # 20
CAP_BYTES = 16_000_000  # the challenge's cap, decimal bytes (not MiB)

# The dtypes an artifact may hold, by numpy name; stored little-endian whatever the machine.
DTYPES = {name: np.dtype(name).newbyteorder("<") for name in (
    "bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
    "float16", "float32", "float64")}

HEADER_KEYS = ("format_version", "config", "tensors", "codec", "payload_bytes", "raw_bytes",
               "payload_sha256", "raw_sha256")
TENSOR_KEYS = ("name", "dtype", "shape", "offset", "nbytes")


def _error(message: str, *, file=None, field=None, expected=None, found=None) -> ArtifactError:
    """An ArtifactError worded like DataError (file: field: message (expected ..., found ...)), fields kept."""
    err = ArtifactError(_describe(message, file, field, expected, found))
    err.file, err.field, err.expected, err.found = file, field, expected, found
    return err


# --- codecs --------------------------------------------------------------------------------------------

_LZMA_FILTER_IDS = {
    "lzma1": lzma.FILTER_LZMA1, "lzma2": lzma.FILTER_LZMA2, "delta": lzma.FILTER_DELTA,
    "x86": lzma.FILTER_X86, "powerpc": lzma.FILTER_POWERPC, "ia64": lzma.FILTER_IA64,
    "arm": lzma.FILTER_ARM, "armthumb": lzma.FILTER_ARMTHUMB, "sparc": lzma.FILTER_SPARC,
}
_LZMA_MODES = {"fast": lzma.MODE_FAST, "normal": lzma.MODE_NORMAL}
_LZMA_MF = {"hc3": lzma.MF_HC3, "hc4": lzma.MF_HC4, "bt2": lzma.MF_BT2, "bt3": lzma.MF_BT3, "bt4": lzma.MF_BT4}
_LZMA_INT_OPTIONS = ("dict_size", "lc", "lp", "pb", "nice_len", "depth")
_PIP_NAME = {"brotli": "brotli", "zstd": "zstandard"}
CODECS = ("lzma", "lzma-raw", "brotli", "zstd")


def _int_option(spec: Mapping, key: str, default, lo: int, hi: int, *, file, where: str) -> int:
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _error("invalid codec option", file=file, field=f"{where}.{key}",
                     expected=f"an integer in [{lo}, {hi}]", found=repr(value))
    return value


def _check_keys(spec: Mapping, allowed, *, file, where: str) -> None:
    extra = sorted(set(spec) - set(allowed))
    if extra:
        raise _error("unknown codec option", file=file, field=where,
                     expected=f"keys among {sorted(allowed)}", found=extra)


def _normalize_filter(spec, i: int, *, file) -> dict:
    where = f"codec.filters[{i}]"
    if not isinstance(spec, Mapping) or not isinstance(spec.get("id"), str):
        raise _error("an LZMA filter must be an object with a string 'id'", file=file, field=where,
                     expected=f"{{'id': one of {sorted(_LZMA_FILTER_IDS)}, ...}}", found=repr(spec))
    fid = spec["id"].lower()
    if fid not in _LZMA_FILTER_IDS:
        raise _error("unknown LZMA filter", file=file, field=f"{where}.id",
                     expected=f"one of {sorted(_LZMA_FILTER_IDS)}", found=repr(spec["id"]))
    out: dict = {"id": fid}
    if fid in ("lzma1", "lzma2"):
        _check_keys(spec, ("id", "preset", "extreme", "mode", "mf") + _LZMA_INT_OPTIONS, file=file, where=where)
        out["preset"] = _int_option(spec, "preset", 9, 0, 9, file=file, where=where)
        extreme = spec.get("extreme", True)
        if not isinstance(extreme, bool):
            raise _error("invalid codec option", file=file, field=f"{where}.extreme", expected="true or false",
                         found=repr(extreme))
        out["extreme"] = extreme
        for key in _LZMA_INT_OPTIONS:
            if key in spec:
                out[key] = _int_option(spec, key, None, 0, 2**32 - 1, file=file, where=where)
        for key, table in (("mode", _LZMA_MODES), ("mf", _LZMA_MF)):
            if key in spec:
                if spec[key] not in table:
                    raise _error("invalid codec option", file=file, field=f"{where}.{key}",
                                 expected=f"one of {sorted(table)}", found=repr(spec[key]))
                out[key] = spec[key]
    elif fid == "delta":
        _check_keys(spec, ("id", "dist"), file=file, where=where)
        out["dist"] = _int_option(spec, "dist", 1, 1, 256, file=file, where=where)
    else:
        _check_keys(spec, ("id", "start_offset"), file=file, where=where)
        if "start_offset" in spec:
            out["start_offset"] = _int_option(spec, "start_offset", 0, 0, 2**32 - 1, file=file, where=where)
    return out


def _lzma_filters(filters: list) -> list:
    """The JSON filter chain of the header as the lzma module's filter dicts."""
    chain = []
    for f in filters:
        d = {"id": _LZMA_FILTER_IDS[f["id"]]}
        for key, value in f.items():
            if key in ("id", "extreme"):
                continue
            if key == "preset":
                d["preset"] = value | (lzma.PRESET_EXTREME if f.get("extreme") else 0)
            elif key == "mode":
                d["mode"] = _LZMA_MODES[value]
            elif key == "mf":
                d["mf"] = _LZMA_MF[value]
            else:
                d[key] = value
        chain.append(d)
    return chain


def normalize_codec(codec="lzma", *, file=None) -> dict:
    """The full JSON description of a codec ("lzma", "lzma-raw", "brotli", "zstd", or a dict with "name")."""
    if codec is None:
        codec = "lzma"
    if isinstance(codec, str):
        spec: Mapping = {"name": codec}
    elif isinstance(codec, Mapping):
        spec = codec
    else:
        raise _error("invalid codec", file=file, field="codec", expected="a codec name or a dict with 'name'",
                     found=type(codec).__name__)
    name = spec.get("name")
    if name not in CODECS:
        raise _error("unknown codec", file=file, field="codec.name", expected=f"one of {list(CODECS)}",
                     found=repr(name))
    if name == "lzma":
        _check_keys(spec, ("name", "format", "check", "preset", "extreme"), file=file, where="codec")
        # format/check are fixed (recorded so the header alone says how to decode); anything else is refused.
        for key, fixed in (("format", "xz"), ("check", "none")):
            if spec.get(key, fixed) != fixed:
                raise _error("unsupported codec option", file=file, field=f"codec.{key}", expected=repr(fixed),
                             found=repr(spec[key]))
        extreme = spec.get("extreme", True)
        if not isinstance(extreme, bool):
            raise _error("invalid codec option", file=file, field="codec.extreme", expected="true or false",
                         found=repr(extreme))
        return {"name": "lzma", "format": "xz", "check": "none",
                "preset": _int_option(spec, "preset", 9, 0, 9, file=file, where="codec"), "extreme": extreme}
    if name == "lzma-raw":
        _check_keys(spec, ("name", "filters"), file=file, where="codec")
        filters = spec.get("filters", [{"id": "lzma2", "preset": 9, "extreme": True}])
        if not isinstance(filters, (list, tuple)) or not 1 <= len(filters) <= 4:
            raise _error("invalid LZMA filter chain", file=file, field="codec.filters",
                         expected="a list of 1 to 4 filters", found=repr(filters))
        norm = [_normalize_filter(f, i, file=file) for i, f in enumerate(filters)]
        if norm[-1]["id"] not in ("lzma1", "lzma2"):
            raise _error("invalid LZMA filter chain", file=file, field="codec.filters",
                         expected="'lzma1' or 'lzma2' as the last filter", found=repr(norm[-1]["id"]))
        return {"name": "lzma-raw", "filters": norm}
    if name == "brotli":
        _check_keys(spec, ("name", "quality", "lgwin"), file=file, where="codec")
        return {"name": "brotli", "quality": _int_option(spec, "quality", 11, 0, 11, file=file, where="codec"),
                "lgwin": _int_option(spec, "lgwin", 24, 10, 24, file=file, where="codec")}
    _check_keys(spec, ("name", "level"), file=file, where="codec")
    return {"name": "zstd", "level": _int_option(spec, "level", 22, 1, 22, file=file, where="codec")}


def _backend(name: str, *, file=None):
    """The module implementing an optional codec, or an ArtifactError naming the pip package to install."""
    try:
        if name == "brotli":
            import brotli
            return brotli
        try:
            import zstandard
            return zstandard
        except ImportError:
            from compression import zstd  # Python >= 3.14 ships zstd in the standard library
            return zstd
    except ImportError:
        pip = _PIP_NAME[name]
        raise _error(f"codec {name!r} needs the Python package {pip!r}, which is not installed "
                     f"(pip install {pip})", file=file, field="codec.name") from None


def compress(raw: bytes, codec: dict) -> bytes:
    """Compress with a normalized codec (see normalize_codec)."""
    name = codec["name"]
    if name == "lzma":
        preset = codec["preset"] | (lzma.PRESET_EXTREME if codec["extreme"] else 0)
        return lzma.compress(raw, format=lzma.FORMAT_XZ, check=lzma.CHECK_NONE, preset=preset)
    if name == "lzma-raw":
        return lzma.compress(raw, format=lzma.FORMAT_RAW, filters=_lzma_filters(codec["filters"]))
    mod = _backend(name)
    if name == "brotli":
        return mod.compress(raw, quality=codec["quality"], lgwin=codec["lgwin"])
    if mod.__name__ == "zstandard":
        return mod.ZstdCompressor(level=codec["level"]).compress(raw)
    return mod.compress(raw, level=codec["level"])


def decompress(payload: bytes, codec: dict, raw_bytes: int, *, file=None) -> bytes:
    """Decompress; LZMA and zstandard stop at raw_bytes + 1 bytes, so a corrupt size cannot exhaust memory."""
    name = codec["name"]
    try:
        if name in ("lzma", "lzma-raw"):
            if name == "lzma":
                dec = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
            else:
                dec = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_lzma_filters(codec["filters"]))
            out = dec.decompress(payload, max_length=raw_bytes + 1)
            # A raw LZMA2 stream has an end marker; a raw LZMA1 stream may not, so eof is not required there.
            if not dec.eof and len(out) <= raw_bytes and not (name == "lzma-raw"
                                                              and codec["filters"][-1]["id"] == "lzma1"):
                raise _error("payload ends before the end of the compressed stream", file=file, field="payload")
            return out
        mod = _backend(name, file=file)
        if name == "brotli":
            return mod.decompress(payload)
        if mod.__name__ == "zstandard":
            return mod.ZstdDecompressor().decompress(payload, max_output_size=raw_bytes + 1)
        return mod.decompress(payload)
    except ArtifactError:
        raise
    except Exception as exc:  # each backend raises its own error type (LZMAError, brotli.error, ZstdError)
        raise _error(f"payload decompression failed ({type(exc).__name__}: {exc})", file=file, field="payload",
                     expected=f"a valid {name} stream") from exc


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


def codec_label(codec: dict) -> str:
    """A short name for logs: lzma-9e, lzma-raw[delta+lzma2-9e], brotli-11, zstd-22."""
    name = codec["name"]
    if name == "lzma":
        return f"lzma-{codec['preset']}{'e' if codec['extreme'] else ''}"
    if name == "lzma-raw":
        parts = [f"{f['id']}-{f['preset']}{'e' if f['extreme'] else ''}" if "preset" in f else f["id"]
                 for f in codec["filters"]]
        return f"lzma-raw[{'+'.join(parts)}]"
    return f"{name}-{codec['quality'] if name == 'brotli' else codec['level']}"


def _json(value, *, what: str, file=None) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise _error(f"not JSON-serialisable ({exc})", file=file, field=what) from exc


def encode(arrays: Mapping, *, config: Mapping, meta: Mapping | None = None, codec="lzma",
           path=None) -> tuple[bytes, ArtifactInfo]:
    """The artifact file's bytes for these arrays (nothing written); see the module docstring for the layout."""
    if not isinstance(config, Mapping):
        raise _error("config must be a dict", file=path, field="config", expected="dict",
                     found=type(config).__name__)
    meta = dict(meta or {})
    unknown = sorted(set(meta) - set(arrays))
    if unknown:
        raise _error("meta names tensors that are not in arrays", file=path, field="meta",
                     expected=f"names among the {len(arrays)} arrays", found=unknown[:5])
    codec = normalize_codec(codec, file=path)
    table, chunks, offset = [], [], 0
    for name, arr in arrays.items():
        if not isinstance(name, str) or not name:
            raise _error("tensor names must be non-empty strings", file=path, field="arrays",
                         expected="str", found=repr(name))
        if not isinstance(arr, (np.ndarray, np.generic)):
            raise _error("arrays must be numpy arrays (convert torch tensors with .cpu().numpy())", file=path,
                         field=f"arrays[{name!r}]", expected="numpy.ndarray", found=type(arr).__name__)
        arr = np.asarray(arr)
        dname = arr.dtype.name if arr.dtype.fields is None else "structured"
        if dname not in DTYPES or arr.dtype.kind not in "biuf":
            raise _error("unsupported dtype", file=path, field=f"arrays[{name!r}].dtype",
                         expected=f"one of {sorted(DTYPES)}", found=str(arr.dtype))
        data = np.ascontiguousarray(arr, dtype=DTYPES[dname]).tobytes()
        entry = {"name": name, "dtype": dname, "shape": [int(n) for n in arr.shape], "offset": offset,
                 "nbytes": len(data)}
        if name in meta:
            if not isinstance(meta[name], Mapping):
                raise _error("per-tensor meta must be a dict", file=path, field=f"meta[{name!r}]",
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
        raise _error(f"compression failed ({type(exc).__name__}: {exc})", file=path, field="codec",
                     found=codec_label(codec)) from exc
    seconds = time.perf_counter() - t0
    header = {"format_version": FORMAT_VERSION, "config": config, "tensors": table, "codec": codec,
              "payload_bytes": len(payload), "raw_bytes": len(raw),
              "payload_sha256": hashlib.sha256(payload).hexdigest(), "raw_sha256": hashlib.sha256(raw).hexdigest()}
    for key in ("config", "tensors"):  # name the part that is not JSON before dumping the whole header
        _json(header[key], what=key, file=path)
    hbytes = _json(header, what="header", file=path).encode("utf-8")
    if len(hbytes) >= 2**32:
        raise _error("header too large", file=path, field="header_len", expected="< 4 GiB", found=len(hbytes))
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
        raise _error(f"cannot write artifact ({exc.strerror or exc})", file=path) from exc
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
        raise _error("artifact file not found", file=path) from None
    except OSError as exc:
        raise _error(f"cannot read artifact ({exc.strerror or exc})", file=path) from exc


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_header(data: bytes, path) -> tuple[dict, int]:
    """Validate the preamble, header and tensor table; return (header, payload offset)."""
    if len(data) < PREAMBLE_BYTES:
        if not MAGIC.startswith(data[:len(MAGIC)]):
            raise _error("not a golf artifact", file=path, field="magic", expected=repr(MAGIC),
                         found=repr(data[:len(MAGIC)]))
        raise _error("truncated: file is shorter than the preamble", file=path, field="preamble",
                     expected=f"{PREAMBLE_BYTES} bytes", found=f"{len(data)} bytes")
    magic, version, hlen, hcrc = PREAMBLE.unpack_from(data, 0)
    if magic != MAGIC:
        raise _error("not a golf artifact", file=path, field="magic", expected=repr(MAGIC), found=repr(magic))
    if version not in SUPPORTED_VERSIONS:
        raise _error("unsupported format version (written by another golf version?)", file=path,
                     field="format_version", expected=" or ".join(map(str, SUPPORTED_VERSIONS)), found=version)
    end = PREAMBLE_BYTES + hlen
    if len(data) < end:
        raise _error("truncated header", file=path, field="header",
                     expected=f"{hlen} bytes", found=f"{len(data) - PREAMBLE_BYTES} bytes")
    hbytes = data[PREAMBLE_BYTES:end]
    crc = zlib.crc32(hbytes)
    if crc != hcrc:
        raise _error("header checksum mismatch (corrupt header)", file=path, field="header_crc32",
                     expected=f"{hcrc:08x}", found=f"{crc:08x}")
    try:
        header = json.loads(hbytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _error(f"header is not UTF-8 JSON ({exc})", file=path, field="header") from exc
    if not isinstance(header, dict):
        raise _error("header is not a JSON object", file=path, field="header", expected="object",
                     found=type(header).__name__)
    missing = [k for k in HEADER_KEYS if k not in header]
    if missing:
        raise _error("header is missing keys", file=path, field="header", expected=list(HEADER_KEYS),
                     found=f"missing {missing}")
    if header["format_version"] != version:
        raise _error("header and preamble disagree on the format version", file=path, field="format_version",
                     expected=version, found=header["format_version"])
    for key in ("payload_bytes", "raw_bytes"):
        if not _is_int(header[key]) or header[key] < 0:
            raise _error("invalid size", file=path, field=key, expected="an integer >= 0", found=repr(header[key]))
    for key in ("payload_sha256", "raw_sha256"):
        if not isinstance(header[key], str) or len(header[key]) != 64:
            raise _error("invalid checksum", file=path, field=key, expected="64 hex digits",
                         found=repr(header[key]))
    if not isinstance(header["config"], dict):
        raise _error("config is not a JSON object", file=path, field="config", expected="object",
                     found=type(header["config"]).__name__)
    header["codec"] = normalize_codec(header["codec"], file=path)
    _check_table(header, path)
    return header, end


def _check_table(header: dict, path) -> None:
    table = header["tensors"]
    if not isinstance(table, list):
        raise _error("tensor table is not a list", file=path, field="tensors", expected="list",
                     found=type(table).__name__)
    seen, offset = set(), 0
    for i, entry in enumerate(table):
        where = f"tensors[{i}]"
        if not isinstance(entry, dict) or any(k not in entry for k in TENSOR_KEYS):
            raise _error("tensor table entry is incomplete", file=path, field=where, expected=list(TENSOR_KEYS),
                         found=sorted(entry) if isinstance(entry, dict) else repr(entry))
        name = entry["name"]
        where = f"tensors[{i}] ({name!r})"
        if not isinstance(name, str) or name in seen:
            raise _error("tensor name is not a unique string", file=path, field=where + ".name",
                         found=repr(name))
        seen.add(name)
        if entry["dtype"] not in DTYPES:
            raise _error("unknown dtype", file=path, field=where + ".dtype", expected=f"one of {sorted(DTYPES)}",
                         found=repr(entry["dtype"]))
        shape = entry["shape"]
        if not isinstance(shape, list) or not all(_is_int(n) and n >= 0 for n in shape):
            raise _error("invalid shape", file=path, field=where + ".shape", expected="a list of integers >= 0",
                         found=repr(shape))
        if "meta" in entry and not isinstance(entry["meta"], dict):
            raise _error("per-tensor meta is not a JSON object", file=path, field=where + ".meta",
                         expected="object", found=type(entry["meta"]).__name__)
        want = math.prod(shape) * DTYPES[entry["dtype"]].itemsize
        if entry["nbytes"] != want:
            raise _error("tensor table inconsistent: nbytes does not match dtype x shape", file=path,
                         field=where + ".nbytes", expected=f"{want} ({entry['dtype']} {shape})",
                         found=entry["nbytes"])
        if entry["offset"] != offset:
            raise _error("tensor table inconsistent: offsets are not contiguous", file=path,
                         field=where + ".offset", expected=offset, found=entry["offset"])
        offset += want
    if offset != header["raw_bytes"]:
        raise _error("tensor table inconsistent: tensor bytes do not add up to raw_bytes", file=path,
                     field="raw_bytes", expected=offset, found=header["raw_bytes"])


def _check_payload_size(data: bytes, header: dict, start: int, path) -> bytes:
    found, want = len(data) - start, header["payload_bytes"]
    if found < want:
        raise _error("truncated payload", file=path, field="payload_bytes", expected=f"{want} bytes",
                     found=f"{found} bytes")
    if found > want:
        raise _error("trailing bytes after the payload", file=path, field="payload_bytes",
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
        raise _error("payload checksum mismatch (corrupt file)", file=path, field="payload_sha256",
                     expected=header["payload_sha256"], found=digest)
    raw = decompress(payload, header["codec"], header["raw_bytes"], file=path)
    if len(raw) != header["raw_bytes"]:
        raise _error("decompressed payload has the wrong size", file=path, field="raw_bytes",
                     expected=header["raw_bytes"], found=len(raw) if len(raw) <= header["raw_bytes"] else
                     f"more than {header['raw_bytes']}")
    digest = hashlib.sha256(raw).hexdigest()
    if digest != header["raw_sha256"]:
        raise _error("decompressed payload checksum mismatch", file=path, field="raw_sha256",
                     expected=header["raw_sha256"], found=digest)
    arrays, meta = {}, {}
    for e in header["tensors"]:
        dtype = DTYPES[e["dtype"]]
        # A copy per tensor: aligned, writable, and independent of the decompressed buffer.
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


# --- size accounting -----------------------------------------------------------------------------------

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
            raise _error("not a golf source tree", file=path, field=where,
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
    raise _error("cannot find the golf source tree to count code bytes (golf is probably installed as a wheel "
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


def size_report(artifact_path, code=None, cap: int = CAP_BYTES, top: int = 5) -> dict:
    """artifact + code bytes against the cap (decimal bytes). code: a code_bytes() dict, an int, or None (measure).

    The artifact's header and payload size are validated (not decompressed). JSON-able, for summary.json.
    """
    path = Path(artifact_path)
    header = read_header(path)
    artifact = path.stat().st_size
    if code is None:
        code = code_bytes()
    if isinstance(code, Mapping):
        code_raw, code_lzma = int(code["raw"]), code.get("lzma")
        files = sorted(code.get("files", []), key=lambda f: -f[1])[:top]
    elif _is_int(code) and code >= 0:
        code_raw, code_lzma, files = code, None, []
    else:
        raise _error("code must be a code_bytes() dict or a byte count", field="code", found=repr(code))
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m golf.artifact",
                                     description="Verify a model.golf artifact and print its tensors and sizes.")
    parser.add_argument("path", help="the artifact (model.golf)")
    parser.add_argument("--cap", type=int, default=CAP_BYTES, help="size cap in decimal bytes (default 16000000)")
    parser.add_argument("--check", action="store_true", help="exit 1 when artifact + code bytes exceed the cap")
    parser.add_argument("--config", action="store_true", help="also print the stored config as JSON")
    parser.add_argument("--code", action="store_true", help="also list every code file counted, with its bytes")
    args = parser.parse_args(argv)
    try:
        art = load(args.path)
    except ArtifactError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(describe(art))
    if args.config:
        print(json.dumps(art.config, indent=2, sort_keys=True))
    try:
        code = code_bytes()
        report = size_report(args.path, code=code, cap=args.cap)
    except ArtifactError as exc:  # no source tree: the artifact is fine, the code bytes are unknown
        print(f"code_bytes=unknown reason={exc}")
        return 1 if args.check else 0
    if args.code:
        for name, nbytes in code["files"]:
            print(f"code_file={name} bytes={nbytes}")
    print(report_line(report))
    if args.check:
        try:
            check_size(report)
        except BudgetError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
