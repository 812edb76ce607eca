"""The model.golf container and the size accounting: bit-exact round trips, every corruption refused by name,
atomic writes, code bytes of the real source tree, and the decimal 16,000,000-byte cap."""

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

import golf
from golf import artifact as A
from golf import bundle as B
from golf import codecs as C
from golf import sizes as S
from golf.errors import ArtifactError, BudgetError

ROOT = Path(__file__).resolve().parents[1]
FAST = {"name": "lzma", "preset": 0, "extreme": False}  # most tests need a valid stream, not a small one


def _arrays():
    rng = np.random.default_rng(0)
    floats = np.array([0.0, -0.0, np.inf, -np.inf, 1e-8, 65504.0], dtype=np.float32)
    nan_bits = np.array([0x7FC00001, 0xFFC12345], dtype=np.uint32).view(np.float32)  # NaN payloads must survive
    return {
        "i8": rng.integers(-128, 128, size=(17, 33), dtype=np.int8),
        "u8": rng.integers(0, 256, size=(5, 4, 3), dtype=np.uint8),
        "i16": rng.integers(-2**15, 2**15, size=(64,), dtype=np.int16),
        "u16": np.array([0, 1, 65535], dtype=np.uint16),
        "i32": rng.integers(-2**31, 2**31, size=(3, 7), dtype=np.int32),
        "u32": np.array([2**32 - 1], dtype=np.uint32),
        "i64": np.array([-2**63, 2**63 - 1, 0], dtype=np.int64),
        "u64": np.array([2**64 - 1], dtype=np.uint64),
        "f16": rng.standard_normal((9, 11)).astype(np.float16),
        "f32": np.concatenate([floats, nan_bits]),
        "f64": rng.standard_normal(5),
        "bool": rng.random((4, 6)) < 0.5,
        "scalar": np.array(3.25, dtype=np.float32),
        "scalar_np": np.int16(-7),
        "empty": np.zeros((0,), dtype=np.float16),
        "empty_3d": np.zeros((3, 0, 2), dtype=np.int32),
        "large": rng.integers(-31, 32, size=(256, 1024), dtype=np.int8),
        "transposed": np.arange(24, dtype=np.int32).reshape(4, 6).T,  # not C-contiguous
        "big_endian": np.arange(10, dtype=">i4"),
        "fortran": np.asfortranarray(rng.standard_normal((3, 5)).astype(np.float32)),
    }


def _assert_same(loaded, original):
    assert list(loaded) == list(original)  # table order is insertion order
    for name, arr in original.items():
        arr = np.asarray(arr)
        got = loaded[name]
        assert got.dtype == arr.dtype.newbyteorder("<"), name
        assert got.shape == arr.shape, name
        assert got.tobytes() == np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes(), name
        assert got.flags.c_contiguous and got.flags.writeable, name


def _save(path, arrays=None, codec=FAST, **kw):
    kw.setdefault("config", {"model": {"dim": 8}})
    return A.save(path, _arrays() if arrays is None else arrays, codec=codec, **kw)


# --- round trip ----------------------------------------------------------------------------------------

def test_roundtrip_bit_exact_default_codec(tmp_path):
    arrays = _arrays()
    config = {"vocab_size": 1024, "tiers": {"t1": [1, 2.5, None, True]}, "name": "héllo ✓", "lr": 0.1 + 0.2}
    meta = {"i8": {"scheme": "int6-gptq", "scale": "f16", "rows": 17}, "f16": {}}
    path = tmp_path / "model.golf"
    info = A.save(path, arrays, config=config, meta=meta)
    assert info.file_bytes == path.stat().st_size
    assert info.raw_bytes == sum(np.asarray(a).nbytes for a in arrays.values()) == sum(info.tensor_bytes.values())
    assert info.tensor_bytes["large"] == 256 * 1024 and info.payload_bytes < info.raw_bytes
    assert info.codec == {"name": "lzma", "format": "xz", "check": "none", "preset": 9, "extreme": True}
    art = A.load(path)
    _assert_same(art.arrays, arrays)
    assert art.config == config and art.meta == meta  # meta only for the tensors given one
    assert art.header["tensors"][0] == {"name": "i8", "dtype": "int8", "shape": [17, 33], "offset": 0,
                                        "nbytes": 17 * 33, "meta": meta["i8"]}
    assert f"artifact_bytes={info.file_bytes}" in info.log_line()


def test_float_arrays_as_byte_planes_round_trip(tmp_path):
    """planes=True: float arrays of 2+ bytes an element are stored as byte planes (flagged per tensor) and come back
    bit for bit; integers, 1-byte and 1-element arrays are stored as they are; a bad flag is refused."""
    rng = np.random.default_rng(0)
    arrays = {"s16": rng.standard_normal(301).astype(np.float16), "f32": rng.standard_normal((7, 5)).astype(np.float32),
              "q": rng.integers(-31, 32, 64).astype(np.int8), "one": np.array([1.5], np.float32),
              "i32": np.arange(9, dtype=np.int32)}
    data, _ = A.encode(arrays, config={}, planes=True)
    art = A.decode(data)
    for name, a in arrays.items():
        assert art.arrays[name].dtype == a.dtype and art.arrays[name].tobytes() == a.tobytes(), name
    flags = {e["name"]: e.get("planes", False) for e in art.header["tensors"]}
    assert flags == {"s16": True, "f32": True, "q": False, "one": False, "i32": False}
    assert A.to_planes(arrays["s16"].tobytes(), 2)[:301] == arrays["s16"].view(np.uint8)[0::2].tobytes()
    plain, _ = A.encode(arrays, config={})
    assert all("planes" not in e for e in A.decode(plain).header["tensors"])
    hlen = struct.unpack_from("<I", data, 12)[0]
    header = json.loads(data[20:20 + hlen])
    header["tensors"][0]["planes"] = 1
    hbytes = json.dumps(header, separators=(",", ":")).encode()
    bad = A.PREAMBLE.pack(A.MAGIC, 1, len(hbytes), zlib.crc32(hbytes)) + hbytes + data[20 + hlen:]
    with pytest.raises(ArtifactError, match="planes"):
        A.decode(bad)


def test_format_layout_and_determinism(tmp_path):
    a, b = tmp_path / "a.golf", tmp_path / "b.golf"
    _save(a)
    _save(b)
    data = a.read_bytes()
    assert data == b.read_bytes()  # same inputs, same bytes
    magic, version, hlen, crc = struct.unpack_from("<8sIII", data)
    assert magic == b"GOLFART\x00" and version == 1 and crc == zlib.crc32(data[20:20 + hlen])
    header = json.loads(data[20:20 + hlen])
    assert set(header) == set(A.HEADER_KEYS)
    assert len(data) == 20 + hlen + header["payload_bytes"]
    assert A.read_header(a) == header


def test_encode_matches_save(tmp_path):
    data, info = A.encode(_arrays(), config={}, codec=FAST)
    path = tmp_path / "m.golf"
    assert _save(path, config={}).file_bytes == len(data) == info.file_bytes
    assert path.read_bytes() == data
    _assert_same(A.decode(data).arrays, _arrays())


@pytest.mark.parametrize("codec", [
    "lzma-raw",
    {"name": "lzma-raw", "filters": [{"id": "delta", "dist": 1}, {"id": "LZMA2", "preset": 6, "extreme": False,
                                                                  "lc": 0, "pb": 0, "mf": "bt4", "mode": "normal"}]},
    {"name": "lzma-raw", "filters": [{"id": "lzma1", "preset": 1}]},
])
def test_lzma_raw_roundtrip(tmp_path, codec):
    arrays = {k: v for k, v in _arrays().items() if k != "large"}
    path = tmp_path / "m.golf"
    info = A.save(path, arrays, config={}, codec=codec)
    art = A.load(path)
    _assert_same(art.arrays, arrays)
    assert art.codec == info.codec and art.codec["name"] == "lzma-raw"
    assert C.normalize_codec(art.codec) == art.codec  # the header alone says how to decode


@pytest.mark.parametrize("name,pip", [("brotli", "brotli"), ("zstd", "zstandard")])
def test_optional_codecs(tmp_path, name, pip):
    arrays = {"w": np.arange(1000, dtype=np.int16)}
    path = tmp_path / "m.golf"
    try:
        C.backend(name)
    except ArtifactError as exc:
        assert pip in str(exc) and f"pip install {pip}" in str(exc)
        with pytest.raises(ArtifactError, match=f"pip install {pip}"):
            A.save(path, arrays, config={}, codec=name)
        assert not path.exists()
        return
    A.save(path, arrays, config={}, codec=name)
    _assert_same(A.load(path).arrays, arrays)


@pytest.mark.parametrize("codec,match", [
    ("gzip", "codec.name"),
    ({"name": "lzma", "preset": 10}, r"codec\.preset.*\[0, 9\]"),
    ({"name": "lzma", "level": 3}, "unknown codec option"),
    ({"name": "lzma-raw", "filters": [{"id": "lzma2"}, {"id": "delta"}]}, "last filter"),
    ({"name": "lzma-raw", "filters": [{"id": "rot13"}]}, "unknown LZMA filter"),
    ({"name": "lzma-raw", "filters": [{"id": "lzma2", "mf": "bt9"}]}, "mf"),
    (42, "codec"),
])
def test_bad_codec_is_refused(tmp_path, codec, match):
    with pytest.raises(ArtifactError, match=match):
        A.save(tmp_path / "m.golf", {"w": np.zeros(3, np.int8)}, config={}, codec=codec)


@pytest.mark.parametrize("value,field", [
    (np.zeros(3, dtype=np.complex64), "dtype"),
    (np.array(["a", "b"]), "dtype"),
    (np.array([object()], dtype=object), "dtype"),
    ([1, 2, 3], "numpy.ndarray"),
])
def test_unsupported_arrays_are_refused(tmp_path, value, field):
    with pytest.raises(ArtifactError, match=field) as err:
        A.save(tmp_path / "m.golf", {"w": value}, config={})
    assert "arrays['w']" in str(err.value) and str(tmp_path / "m.golf") in str(err.value)


def test_bad_config_and_meta_are_refused(tmp_path):
    path = tmp_path / "m.golf"
    w = {"w": np.zeros(3, np.int8)}
    with pytest.raises(ArtifactError, match="config: not JSON-serialisable"):
        A.save(path, w, config={"x": object()})
    with pytest.raises(ArtifactError, match="config must be a dict"):
        A.save(path, w, config=[1, 2])
    with pytest.raises(ArtifactError, match=r"meta names tensors.*'v'"):
        A.save(path, w, config={}, meta={"v": {}})
    with pytest.raises(ArtifactError, match="tensors: not JSON-serialisable"):
        A.save(path, w, config={}, meta={"w": {"scale": np.float32(1)}})
    assert not path.exists()


# --- corruption --------------------------------------------------------------------------------------

def _parts(path):
    data = path.read_bytes()
    hlen = struct.unpack_from("<I", data, 12)[0]
    return data, json.loads(data[20:20 + hlen]), data[20 + hlen:]


def _rebuild(path, header=None, payload=None, header_bytes=None):
    """Write a file with a valid preamble and CRC around a (tampered) header/payload."""
    data = path.read_bytes()
    old_payload = data[20 + struct.unpack_from("<I", data, 12)[0]:]
    hb = header_bytes if header_bytes is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<8sIII", A.MAGIC, 1, len(hb), zlib.crc32(hb)) + hb
                     + (old_payload if payload is None else payload))
    return path


@pytest.fixture()
def good(tmp_path):
    path = tmp_path / "good.golf"
    _save(path, {"a": np.arange(300, dtype=np.int16).reshape(10, 30), "b": np.ones(7, np.float32)})
    return path


def _refused(path, *needles):
    with pytest.raises(ArtifactError) as err:
        A.load(path)
    msg = str(err.value)
    assert str(path) in msg, msg
    for needle in needles:
        assert needle in msg, msg
    return err.value


def test_missing_file(tmp_path):
    _refused(tmp_path / "nope.golf", "not found")


def test_bad_magic(good):
    data = bytearray(good.read_bytes())
    data[1] ^= 0xFF
    good.write_bytes(bytes(data))
    err = _refused(good, "magic", "not a golf artifact", "expected", "found")
    assert err.field == "magic" and err.file == good


def test_wrong_version(good):
    data = bytearray(good.read_bytes())
    data[8:12] = struct.pack("<I", 7)
    good.write_bytes(bytes(data))
    _refused(good, "format_version", "unsupported format version", "expected 1, found 7")


@pytest.mark.parametrize("cut", ["magic", "preamble", "header", "payload_start", "payload_mid", "last_byte"])
def test_truncation(good, cut):
    data, header, payload = _parts(good)
    hlen = len(data) - 20 - len(payload)
    at = {"magic": 5, "preamble": 15, "header": 20 + hlen // 2, "payload_start": 20 + hlen,
          "payload_mid": 20 + hlen + len(payload) // 2, "last_byte": len(data) - 1}[cut]
    good.write_bytes(data[:at])
    if cut in ("magic", "preamble"):
        _refused(good, "preamble", "truncated", f"found {at} bytes")
    elif cut == "header":
        _refused(good, "truncated header", f"expected {hlen} bytes, found {at - 20} bytes")
    else:
        _refused(good, "truncated payload", f"expected {len(payload)} bytes, found {at - 20 - hlen} bytes")


def test_trailing_bytes(good):
    good.write_bytes(good.read_bytes() + b"\0")
    _refused(good, "trailing bytes")


def test_flipped_header_byte(good):
    data = bytearray(good.read_bytes())
    i = data.index(b'"dim":8') + 6  # a digit of the config: still valid JSON, caught by the CRC
    data[i] = ord("9")
    good.write_bytes(bytes(data))
    _refused(good, "header_crc32", "header checksum mismatch")


def test_flipped_payload_byte(good):
    data = bytearray(good.read_bytes())
    data[-3] ^= 0x01
    good.write_bytes(bytes(data))
    _refused(good, "payload_sha256", "payload checksum mismatch")


def test_header_not_json(good):
    _rebuild(good, header_bytes=b'{"format_version": 1, "config": ')
    _refused(good, "header is not UTF-8 JSON")
    _rebuild(good, header_bytes=b"\xff\xfe[]")
    _refused(good, "header is not UTF-8 JSON")
    _rebuild(good, header_bytes=b"[1, 2]")
    _refused(good, "header is not a JSON object")


def test_header_missing_keys(good):
    _, header, _ = _parts(good)
    del header["raw_sha256"], header["codec"]
    _rebuild(good, header)
    _refused(good, "missing keys", "codec", "raw_sha256")


@pytest.mark.parametrize("tamper,needles", [
    (lambda h: h["tensors"][0].update(nbytes=599), ["tensors[0] ('a').nbytes", "expected 600", "found 599"]),
    (lambda h: h["tensors"][1].update(offset=0), ["tensors[1] ('b').offset", "not contiguous", "expected 600"]),
    (lambda h: h["tensors"][1].update(shape=[8]), ["nbytes does not match", "expected 32"]),
    (lambda h: h.update(raw_bytes=h["raw_bytes"] + 4), ["raw_bytes", "do not add up", "expected 628, found 632"]),
    (lambda h: h["tensors"][0].update(dtype="bfloat16"), ["unknown dtype", "'bfloat16'"]),
    (lambda h: h["tensors"][0].update(shape=[10, -30]), ["invalid shape"]),
    (lambda h: h["tensors"][1].update(name="a"), ["not a unique string"]),
    (lambda h: h["tensors"][0].pop("offset"), ["tensors[0]", "incomplete"]),
    (lambda h: h.update(codec={"name": "lz4"}), ["codec.name", "unknown codec", "'lz4'"]),
    (lambda h: h.update(format_version=2), ["disagree", "format_version"]),
])
def test_inconsistent_header_is_refused(good, tamper, needles):
    _, header, _ = _parts(good)
    tamper(header)
    _rebuild(good, header)
    _refused(good, *needles)


@pytest.mark.parametrize("kind", ["garbage", "cut_stream"])
def test_decompression_failure(good, kind):
    _, header, payload = _parts(good)
    # checksum and sizes consistent, the stream itself broken
    junk = (bytes(range(256)) * 8)[: len(payload)] if kind == "garbage" else payload[:-40]
    header.update(payload_sha256=hashlib.sha256(junk).hexdigest(), payload_bytes=len(junk))
    _rebuild(good, header, payload=junk)
    _refused(good, "payload", "decompression failed" if kind == "garbage" else "ends before the end")


def test_raw_checksum_mismatch(good):
    _, header, _ = _parts(good)
    header["raw_sha256"] = "0" * 64
    _rebuild(good, header)
    _refused(good, "raw_sha256", "decompressed payload checksum mismatch")


# --- atomic write --------------------------------------------------------------------------------------

def test_failed_save_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "model.golf"
    arrays = {"w": np.arange(50, dtype=np.int8)}
    _save(path, arrays)
    before = path.read_bytes()
    with pytest.raises(ArtifactError):
        _save(path, {"w": np.zeros(3, np.complex64)})

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(ArtifactError, match="cannot write artifact.*No space left") as err:
        _save(path, {"w": np.ones(99, np.int8)})
    assert str(path) in str(err.value)
    assert path.read_bytes() == before
    _assert_same(A.load(path).arrays, arrays)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.golf"]  # no temp file left behind


def test_saved_file_mode_follows_umask(tmp_path):
    old = os.umask(0o022)
    try:
        _save(tmp_path / "m.golf", {"w": np.zeros(1, np.int8)})
    finally:
        os.umask(old)
    assert (tmp_path / "m.golf").stat().st_mode & 0o777 == 0o644


# --- code bytes ----------------------------------------------------------------------------------------

def test_shipped_files_of_the_real_tree():
    names = [n for n, _ in B.shipped_files(ROOT)]
    for must in ("python/golf/artifact.py", "python/golf/__init__.py", "python/golf/bundle.py", "csrc/bindings.cpp",
                 "csrc/ops.h", "kernels/target_bytes.cu", "CMakeLists.txt", "pyproject.toml",
                 "cmake/torch_info.py"):
        assert must in names
    assert names == sorted(names)
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".so", ".o"))]
    assert not [n for n in names if n.startswith(("tests/", "bench/", "build/"))]
    assert all(n.endswith(".py") for n in names if n.startswith("python/"))
    for left_out in B.LEFT_OUT:  # downloading, preparing, inspecting, submitting: not needed to train
        assert f"python/golf/{left_out}" not in names


def _fake_tree(root):
    for rel in ["CMakeLists.txt", "pyproject.toml", "cmake/x.cmake", "csrc/ops.h", "csrc/cpu/op.cpp",
                "csrc/build/op.o", "csrc/cpu/op.cpp~", "kernels/k.cu", "kernels/k.h", "kernels/k.cubin",
                "kernels/.k.cu.swp", "python/golf/__init__.py", "python/golf/sub/x.py", "python/golf/notes.txt",
                "python/golf/download.py", "python/golf/_C.cpython-311-x86_64-linux-gnu.so",
                "python/golf/__pycache__/x.cpython-311.pyc", "python/golf/__pycache__/stale.py", "tests/test_x.py",
                "bench/b.py"]:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x" * (len(rel) * 7))
    return root


SHIPPED_OF_FAKE = ["CMakeLists.txt", "cmake/x.cmake", "csrc/cpu/op.cpp", "csrc/ops.h", "kernels/k.cu", "kernels/k.h",
                   "pyproject.toml", "python/golf/__init__.py", "python/golf/sub/x.py"]


def test_shipped_files_skip_build_outputs_and_what_a_run_never_imports(tmp_path):
    root = _fake_tree(tmp_path / "src")
    assert [n for n, _ in B.shipped_files(root)] == SHIPPED_OF_FAKE
    report = B.code_bytes(root=root)
    assert report["raw"] == sum(len(r) * 7 for r in SHIPPED_OF_FAKE) == sum(b for _, b in report["files"])
    assert [f for f, _ in report["files"]] == SHIPPED_OF_FAKE and report["root"] == str(root.resolve())
    assert report["bytes"] == len(B.train_gpt(root=root))


def test_the_installed_sources_ship_the_same_files(tmp_path, monkeypatch):
    """golf installed with pip, run outside the checkout: CMake installed the non-Python sources into golf/_src,
    and the package's own modules are the rest; the same names, the same bytes."""
    checkout = _fake_tree(tmp_path / "src")
    site = tmp_path / "site-packages" / "golf"
    shutil.copytree(checkout / "python" / "golf", site)
    for rel in ("CMakeLists.txt", "pyproject.toml", "cmake", "csrc", "kernels"):
        src, dst = checkout / rel, site / "_src" / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
    monkeypatch.delenv("GOLF_SOURCE_DIR", raising=False)
    monkeypatch.setattr(golf, "__file__", str(site / "__init__.py"))
    monkeypatch.chdir(tmp_path)
    assert B.find_source_root() == site / "_src"
    assert [n for n, _ in B.shipped_files()] == SHIPPED_OF_FAKE
    assert B.code_bytes()["bytes"] == B.code_bytes(root=checkout)["bytes"]


def test_code_bytes_of_the_real_tree():
    report = B.code_bytes(root=ROOT)
    files = B.shipped_files(ROOT)
    assert report["raw"] == sum(p.stat().st_size for _, p in files)
    assert len(report["files"]) == len(files)
    assert 0 < report["bytes"] < report["raw"] / 2  # shipped compressed


def test_train_gpt_carries_any_bytes_through_its_latin1_string(monkeypatch):
    """Every byte value, and the runs the escapes exist for (quotes, backslashes, CR, CRLF, NUL), come back."""
    blob = bytes(range(256)) * 3 + b'"""\\\r\n\r\x00\x001"' + b"\\"
    monkeypatch.setattr(B, "_archive", lambda files: blob)
    text = B.train_gpt({}, root=ROOT)
    assert len(text) < len(blob) * 1.05 + len(B.LAUNCHER) + 100
    launcher = {"__name__": "not_main"}
    exec(compile(text, "train_gpt.py", "exec"), launcher)
    assert launcher["SOURCES"] == blob


def test_train_gpt_carries_the_archive_and_the_config():
    text = B.train_gpt({"seed": 7}, root=ROOT)
    launcher = {"__name__": "not_main"}
    exec(compile(text, "train_gpt.py", "exec"), launcher)  # defines, does not run
    assert launcher["SOURCES"] == B._archive(B.shipped_files(ROOT))  # every byte, through the escapes
    assert json.loads(launcher["CONFIG"]) == {"seed": 7}


def test_source_root_discovery(tmp_path, monkeypatch):
    monkeypatch.delenv("GOLF_SOURCE_DIR", raising=False)
    assert B.find_source_root(ROOT) == ROOT
    # an installed wheel without its _src, run outside the checkout: nothing to count
    monkeypatch.setattr(golf, "__file__", str(tmp_path / "site-packages" / "golf" / "__init__.py"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ArtifactError, match="GOLF_SOURCE_DIR"):
        B.shipped_files()
    monkeypatch.chdir(ROOT / "python" / "golf")  # the cwd inside the checkout finds it
    assert B.find_source_root() == ROOT
    monkeypatch.setenv("GOLF_SOURCE_DIR", str(_fake_tree(tmp_path / "src")))
    assert B.find_source_root() == (tmp_path / "src").resolve()
    monkeypatch.setenv("GOLF_SOURCE_DIR", str(tmp_path / "site-packages"))
    with pytest.raises(ArtifactError, match=r"GOLF_SOURCE_DIR.*not a golf source tree.*missing.*CMakeLists"):
        B.shipped_files()


# --- size report and the cap ---------------------------------------------------------------------------

def test_size_report_under_and_over_the_cap(tmp_path):
    path = tmp_path / "model.golf"
    _save(path, {"small": np.zeros(10, np.int8), "big": np.arange(4000, dtype=np.int32)})
    code = S.code_bytes(root=ROOT)
    size = path.stat().st_size
    report = S.size_report(path, A.read_header(path), code=code)
    assert report["artifact_bytes"] == size and report["code_bytes"] == code["bytes"]
    assert report["code_raw_bytes"] == code["raw"] > code["bytes"]
    assert report["total_bytes"] == size + code["bytes"] and report["cap"] == 16_000_000
    assert report["margin"] == 16_000_000 - report["total_bytes"] and report["fits"] is True
    assert report["largest_tensors"][0] == ["big", 16000]
    json.dumps(report)  # it goes into summary.json
    assert S.check_size(report) is report
    assert "fits=yes" in S.report_line(report)

    at_cap = S.size_report(path, A.read_header(path), code=100, cap=size + 100)  # the cap itself fits
    assert at_cap["margin"] == 0 and at_cap["fits"]
    over = S.size_report(path, A.read_header(path), code=code, cap=size + 1000)
    assert not over["fits"] and over["margin"] == size + 1000 - over["total_bytes"] < 0
    with pytest.raises(BudgetError) as err:
        S.check_size(over)
    msg = str(err.value)
    assert f"by {-over['margin']:,} bytes" in msg and f"{over['total_bytes']:,}" in msg
    assert f"{size + 1000:,}" in msg and "big=16,000" in msg and "python/golf/" in msg and str(path) in msg
    assert path.exists()  # the artifact stays written


def test_size_report_reads_the_default_tree(tmp_path):
    path = tmp_path / "model.golf"
    _save(path, {"w": np.zeros(10, np.int8)})
    assert S.size_report(path, A.read_header(path))["code_bytes"] == S.code_bytes()["bytes"]


# --- command line --------------------------------------------------------------------------------------

def test_cli_prints_the_table(tmp_path, capsys):
    path = tmp_path / "model.golf"
    _save(path, {"blocks.0.attn.q": np.zeros((4, 8), np.int8), "scales": np.ones(4, np.float16)},
          meta={"blocks.0.attn.q": {"scheme": "int6"}})
    assert A.main([str(path), "--config"]) == 0
    out = capsys.readouterr().out
    assert "blocks.0.attn.q" in out and "int6" in out and "[4,8]" in out and "float16" in out
    assert "checksum=ok" in out and "raw_bytes=40" in out and "codec=lzma-0" in out
    assert f"file_bytes={path.stat().st_size}" in out and "fits=yes" in out and '"dim": 8' in out
    assert A.main([str(path), "--check", "--cap", "10"]) == A.CHECK_FAILED == 3  # a failed check, not bad input
    assert "over the size cap" in capsys.readouterr().err


def test_cli_module_entry_point(tmp_path):
    path = tmp_path / "model.golf"
    _save(path, {"w": np.zeros((2, 3), np.int8)}, meta={"w": {"scheme": "int8"}})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(golf.__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    ok = subprocess.run([sys.executable, "-m", "golf.artifact", str(path)], capture_output=True, text=True,
                        env=env, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    assert "int8" in ok.stdout and "checksum=ok" in ok.stdout
    data = bytearray(path.read_bytes())
    data[-2] ^= 0x10
    path.write_bytes(bytes(data))
    bad = subprocess.run([sys.executable, "-m", "golf.artifact", str(path)], capture_output=True, text=True,
                         env=env, cwd=ROOT)
    assert bad.returncode == 2 and "payload checksum mismatch" in bad.stderr and str(path) in bad.stderr
