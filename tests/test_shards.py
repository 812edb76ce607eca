"""Shard format: exact header, size and dtype; bad files are refused by name, field, expected and found."""

import numpy as np
import pytest

from golf.data import (HEADER_BYTES, SHARD_MAGIC, TokenStream, find_shards, load_shard, load_val_tokens,
                       read_header, write_shard)
from golf.errors import DataError


def test_roundtrip(tmp_path):
    ids = np.array([1, 5, 65535, 0, 1023], dtype=np.int64)
    path = tmp_path / "fineweb_train_000000.bin"
    assert write_shard(path, ids) == 5
    assert path.stat().st_size == HEADER_BYTES + 2 * 5
    header = np.fromfile(path, dtype="<i4", count=256)
    assert list(header[:3]) == [SHARD_MAGIC, 1, 5] and not header[3:].any()
    assert read_header(path) == 5
    assert np.array_equal(load_shard(path), ids)
    assert not list(tmp_path.glob("*.tmp"))


def test_real_shards_parse(val_shard, train_shard):
    assert read_header(val_shard) == 262_145
    assert read_header(train_shard) == 1_048_576
    assert load_shard(val_shard).dtype == np.dtype("<u2")


def _corrupt(tmp_path, val_shard, offset, value, name="fineweb_val_000000.bin"):
    raw = bytearray(val_shard.read_bytes())
    raw[offset:offset + 4] = np.array([value], dtype="<i4").tobytes()
    path = tmp_path / name
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("offset,value,field", [(0, 20240521, "magic"), (4, 2, "version"),
                                                (8, 262_144, "size"), (8, -3, "num_tokens")])
def test_corrupt_header_is_refused_by_name(tmp_path, val_shard, offset, value, field):
    path = _corrupt(tmp_path, val_shard, offset, value)
    with pytest.raises(DataError) as err:
        read_header(path)
    msg = str(err.value)
    assert str(path) in msg and field in msg and "expected" in msg and "found" in msg
    assert err.value.file == path


def test_truncated_file(tmp_path, val_shard):
    path = tmp_path / "short.bin"
    path.write_bytes(val_shard.read_bytes()[:100])
    with pytest.raises(DataError, match="header"):
        read_header(path)
    path.write_bytes(val_shard.read_bytes()[:-2])
    with pytest.raises(DataError, match="size"):
        load_shard(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="cannot read shard"):
        read_header(tmp_path / "nope.bin")


def test_write_rejects_ids_beyond_uint16(tmp_path):
    with pytest.raises(DataError, match="uint16"):
        write_shard(tmp_path / "x.bin", np.array([1, 70000]))
    assert not (tmp_path / "x.bin").exists()


def test_find_shards(tmp_path, data_path):
    assert [p.name for p in find_shards(data_path, "val")] == ["fineweb_val_000000.bin"]
    assert [p.name for p in find_shards(data_path, "train")] == ["fineweb_train_000000.bin"]
    assert len(find_shards(data_path)) == 2
    assert [p.name for p in find_shards(str(data_path / "fineweb_val_*.bin"))] == ["fineweb_val_000000.bin"]
    with pytest.raises(DataError, match="no train shards"):
        find_shards(tmp_path, "train")
    with pytest.raises(DataError, match="no train shards"):
        find_shards(str(data_path / "fineweb_val_*.bin"), "train")


def test_token_stream_reads_across_shards(tmp_path):
    a, b, c = np.arange(0, 10), np.arange(10, 13), np.arange(13, 30)
    files = [write_shard(tmp_path / f"fineweb_train_{i:06d}.bin", x) for i, x in enumerate((a, b, c))]
    assert files == [10, 3, 17]
    stream = TokenStream(find_shards(tmp_path, "train"))
    assert len(stream) == 30
    assert np.array_equal(stream.read(8, 10), np.arange(8, 18))
    assert np.array_equal(stream.read(0, 30), np.arange(30))
    assert stream.shard_of(12).name == "fineweb_train_000001.bin"
    with pytest.raises(IndexError):
        stream.read(25, 6)


def test_val_tokens_truncate_like_the_challenge(val_shard):
    full = load_val_tokens([val_shard])
    assert len(full) == 262_145
    for seq_len in (1024, 2048, 1000):
        cut = load_val_tokens([val_shard], seq_len)
        assert len(cut) == ((262_145 - 1) // seq_len) * seq_len + 1
        assert np.array_equal(cut, full[:len(cut)])
