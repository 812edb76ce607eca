"""The artifact payload's coders: how a codec is described in the header (JSON), checked, and run.

    normalize_codec(codec="lzma", *, file=None) -> dict   the full JSON description of a codec
        {"name": "lzma", "format": "xz", "check": "none", "preset": 0-9, "extreme": bool}
        {"name": "lzma-raw", "filters": [{"id": "lzma2", "preset": 9, "extreme": true, ...}]}
        {"name": "brotli", "quality": 0-11, "lgwin": 10-24}          (pip install brotli)
        {"name": "zstd", "level": 1-22}                               (pip install zstandard)
    compress(raw, codec) -> bytes
    decompress(payload, codec, raw_bytes, *, file=None) -> bytes    bounded: a corrupt size cannot exhaust memory
    codec_label(codec) -> str                                         lzma-9e, lzma-raw[lzma2-9e], brotli-11, ...
Every failure is an ArtifactError naming the file and the codec field.
"""

from __future__ import annotations

import lzma
from collections.abc import Mapping

from golf.errors import ArtifactError

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
        raise ArtifactError("invalid codec option", file=file, field=f"{where}.{key}",
                     expected=f"an integer in [{lo}, {hi}]", found=repr(value))
    return value


def _check_keys(spec: Mapping, allowed, *, file, where: str) -> None:
    extra = sorted(set(spec) - set(allowed))
    if extra:
        raise ArtifactError("unknown codec option", file=file, field=where,
                     expected=f"keys among {sorted(allowed)}", found=extra)


def _normalize_filter(spec, i: int, *, file) -> dict:
    where = f"codec.filters[{i}]"
    if not isinstance(spec, Mapping) or not isinstance(spec.get("id"), str):
        raise ArtifactError("an LZMA filter must be an object with a string 'id'", file=file, field=where,
                     expected=f"{{'id': one of {sorted(_LZMA_FILTER_IDS)}, ...}}", found=repr(spec))
    fid = spec["id"].lower()
    if fid not in _LZMA_FILTER_IDS:
        raise ArtifactError("unknown LZMA filter", file=file, field=f"{where}.id",
                     expected=f"one of {sorted(_LZMA_FILTER_IDS)}", found=repr(spec["id"]))
    out: dict = {"id": fid}
    if fid in ("lzma1", "lzma2"):
        _check_keys(spec, ("id", "preset", "extreme", "mode", "mf") + _LZMA_INT_OPTIONS, file=file, where=where)
        out["preset"] = _int_option(spec, "preset", 9, 0, 9, file=file, where=where)
        extreme = spec.get("extreme", True)
        if not isinstance(extreme, bool):
            raise ArtifactError("invalid codec option", file=file, field=f"{where}.extreme", expected="true or false",
                         found=repr(extreme))
        out["extreme"] = extreme
        for key in _LZMA_INT_OPTIONS:
            if key in spec:
                out[key] = _int_option(spec, key, None, 0, 2**32 - 1, file=file, where=where)
        for key, table in (("mode", _LZMA_MODES), ("mf", _LZMA_MF)):
            if key in spec:
                if spec[key] not in table:
                    raise ArtifactError("invalid codec option", file=file, field=f"{where}.{key}",
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
        raise ArtifactError("invalid codec", file=file, field="codec", expected="a codec name or a dict with 'name'",
                     found=type(codec).__name__)
    name = spec.get("name")
    if name not in CODECS:
        raise ArtifactError("unknown codec", file=file, field="codec.name", expected=f"one of {list(CODECS)}",
                     found=repr(name))
    if name == "lzma":
        _check_keys(spec, ("name", "format", "check", "preset", "extreme"), file=file, where="codec")
        # format/check are fixed (recorded so the header alone says how to decode); anything else is refused.
        for key, fixed in (("format", "xz"), ("check", "none")):
            if spec.get(key, fixed) != fixed:
                raise ArtifactError("unsupported codec option", file=file, field=f"codec.{key}", expected=repr(fixed),
                             found=repr(spec[key]))
        extreme = spec.get("extreme", True)
        if not isinstance(extreme, bool):
            raise ArtifactError("invalid codec option", file=file, field="codec.extreme", expected="true or false",
                         found=repr(extreme))
        return {"name": "lzma", "format": "xz", "check": "none",
                "preset": _int_option(spec, "preset", 9, 0, 9, file=file, where="codec"), "extreme": extreme}
    if name == "lzma-raw":
        _check_keys(spec, ("name", "filters"), file=file, where="codec")
        filters = spec.get("filters", [{"id": "lzma2", "preset": 9, "extreme": True}])
        if not isinstance(filters, (list, tuple)) or not 1 <= len(filters) <= 4:
            raise ArtifactError("invalid LZMA filter chain", file=file, field="codec.filters",
                         expected="a list of 1 to 4 filters", found=repr(filters))
        norm = [_normalize_filter(f, i, file=file) for i, f in enumerate(filters)]
        if norm[-1]["id"] not in ("lzma1", "lzma2"):
            raise ArtifactError("invalid LZMA filter chain", file=file, field="codec.filters",
                         expected="'lzma1' or 'lzma2' as the last filter", found=repr(norm[-1]["id"]))
        return {"name": "lzma-raw", "filters": norm}
    if name == "brotli":
        _check_keys(spec, ("name", "quality", "lgwin"), file=file, where="codec")
        return {"name": "brotli", "quality": _int_option(spec, "quality", 11, 0, 11, file=file, where="codec"),
                "lgwin": _int_option(spec, "lgwin", 24, 10, 24, file=file, where="codec")}
    _check_keys(spec, ("name", "level"), file=file, where="codec")
    return {"name": "zstd", "level": _int_option(spec, "level", 22, 1, 22, file=file, where="codec")}


def backend(name: str, *, file=None):
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
        raise ArtifactError(f"codec {name!r} needs the Python package {pip!r}, which is not installed "
                     f"(pip install {pip})", file=file, field="codec.name") from None


def compress(raw: bytes, codec: dict) -> bytes:
    """Compress with a normalized codec (see normalize_codec)."""
    name = codec["name"]
    if name == "lzma":
        preset = codec["preset"] | (lzma.PRESET_EXTREME if codec["extreme"] else 0)
        return lzma.compress(raw, format=lzma.FORMAT_XZ, check=lzma.CHECK_NONE, preset=preset)
    if name == "lzma-raw":
        return lzma.compress(raw, format=lzma.FORMAT_RAW, filters=_lzma_filters(codec["filters"]))
    mod = backend(name)
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
                raise ArtifactError("payload ends before the end of the compressed stream", file=file, field="payload")
            return out
        mod = backend(name, file=file)
        if name == "brotli":
            return mod.decompress(payload)
        if mod.__name__ == "zstandard":
            return mod.ZstdDecompressor().decompress(payload, max_output_size=raw_bytes + 1)
        return mod.decompress(payload)
    except ArtifactError:
        raise
    except Exception as exc:  # each backend raises its own error type (LZMAError, brotli.error, ZstdError)
        raise ArtifactError(f"payload decompression failed ({type(exc).__name__}: {exc})", file=file, field="payload",
                     expected=f"a valid {name} stream") from exc


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
