"""Byte tables and BPB follow the challenge's formula exactly, checked on the real val shard and docs."""

import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from golf.data import BpbMeter, ByteTables, bits_per_byte, load_shard, load_tokenizer, write_shard
from golf.datatools import split_stats
from golf.errors import DataError

from conftest import read_jsonl


def test_table_layout(tables, sp):
    assert tables.vocab_size == sp.vocab_size() == 1024
    assert tables.bos_id == 1
    assert tables.boundary[:4].all() and not tables.boundary[4:].any()  # pad, bos, eos, unk
    assert (tables.base_bytes[:4] == 0).all()
    assert (tables.base_bytes[4:260] == 1).all()  # <0x00>..<0xFF>
    space = sp.piece_to_id("\u2581")
    assert tables.leading_space[space] and tables.base_bytes[space] == 0


def test_val_shard_totals_638652_bytes(val_shard, tables):
    stats = split_stats([val_shard], tables)
    assert stats["targets"] == 262_144
    assert stats["bytes"] == 638_652
    assert stats["docs"] == 234


def test_table_bytes_equal_decoded_utf8_for_every_complete_doc(val_shard, val_docs_jsonl, tables, sp):
    ids = np.asarray(load_shard(val_shard)).astype(np.int64)
    starts = np.flatnonzero(ids == tables.bos_id)
    docs = read_jsonl(val_docs_jsonl)
    checked = 0
    for k, (lo, doc) in enumerate(zip(starts, docs)):
        hi = starts[k + 1] if k + 1 < len(starts) else len(ids)
        if doc["status"] != "full":
            continue
        doc_ids = torch.from_numpy(ids[lo:hi])  # [BOS] + pieces
        table = int(tables.target_bytes(doc_ids[:-1], doc_ids[1:]).sum())
        assert table == len(sp.decode(doc_ids[1:].tolist()).encode("utf-8")), f"doc {k}"
        checked += 1
    assert checked == 233


def test_uniform_predictor_gives_log2_vocab_times_tokens_per_byte(val_shard, tables):
    ids = torch.from_numpy(np.asarray(load_shard(val_shard)).astype(np.int64))
    meter = BpbMeter(tables)
    v = tables.vocab_size
    for lo in range(0, len(ids) - 1, 65_536):  # in chunks, as an eval would
        x, y = ids[lo:lo + 65_536], ids[lo + 1:lo + 65_537]
        x = x[:len(y)]
        logits = torch.zeros(len(y), v, dtype=torch.float64)  # exact log(V) per target
        nll = torch.nn.functional.cross_entropy(logits, y, reduction="none")
        meter.add(nll, x, y)
    meter.all_reduce()  # no process group: a no-op
    assert meter.targets == 262_144 and meter.bytes == 638_652
    expected = math.log2(v) * 262_144 / 638_652
    assert meter.bpb == pytest.approx(expected, rel=1e-12)
    assert meter.val_loss == pytest.approx(math.log(v), rel=1e-12)


def test_bits_per_byte_formula():
    assert bits_per_byte(math.log(2) * 10, 10) == pytest.approx(1.0)
    assert bits_per_byte(2.0727 * 62_021_632, 62_021_632 / 0.410521) == pytest.approx(
        2.0727 / math.log(2) * 0.410521)


def test_vocab_mismatch_is_a_data_error(tokenizer_path, sp):
    with pytest.raises(DataError, match="vocab_size.*expected 8192, found 1024"):
        load_tokenizer(tokenizer_path, vocab_size=8192)
    with pytest.raises(DataError, match="expected 2048, found 1024"):
        ByteTables.from_tokenizer(sp, vocab_size=2048)


def test_not_a_tokenizer(tmp_path, val_shard):
    with pytest.raises(DataError, match="not a SentencePiece model"):
        load_tokenizer(val_shard)
    with pytest.raises(DataError, match="not found"):
        load_tokenizer(tmp_path / "missing.model")


def test_id_beyond_vocab_in_a_shard_is_named(tmp_path, tables):
    path = tmp_path / "fineweb_val_000000.bin"
    write_shard(path, np.array([1, 5, 1024, 7]))
    with pytest.raises(DataError) as err:
        split_stats([path], tables)
    assert str(path) in str(err.value) and "token[2]" in str(err.value) and "1024" in str(err.value)


def run_stats(*args):
    return subprocess.run([sys.executable, "-m", "golf.datatools", "stats", *map(str, args)], capture_output=True,
                          text=True)


def test_stats_cli_prints_val_bytes(data_path, tokenizer_path):
    out = run_stats(data_path, "--tokenizer", tokenizer_path)
    assert out.returncode == 0, out.stderr
    val = next(line for line in out.stdout.splitlines() if line.startswith("split=val"))
    assert "tokens=262145" in val and "docs=234" in val and "targets=262144" in val and "bytes=638652" in val
    train = next(line for line in out.stdout.splitlines() if line.startswith("split=train"))
    assert "bytes=2557436" in train


def test_stats_cli_refuses_a_corrupt_shard_by_name(tmp_path, val_shard, train_shard, tokenizer_path):
    shutil.copy(train_shard, tmp_path / train_shard.name)
    bad = tmp_path / "fineweb_val_000000.bin"
    raw = bytearray(val_shard.read_bytes())
    raw[0] ^= 0xFF
    bad.write_bytes(bytes(raw))
    out = run_stats(tmp_path, "--tokenizer", tokenizer_path)
    assert out.returncode != 0
    assert str(bad) in out.stderr and "magic" in out.stderr


def _meter_worker(rank, world, init_file, val_shard, tokenizer_path, out_file):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        tables = ByteTables.from_tokenizer(tokenizer_path)
        ids = torch.from_numpy(np.asarray(load_shard(val_shard)).astype(np.int64))
        x, y = ids[:-1], ids[1:]
        part = slice(rank * len(y) // world, (rank + 1) * len(y) // world)  # disjoint targets per rank
        meter = BpbMeter(tables)
        meter.add(torch.full((len(y[part]),), 1.5, dtype=torch.float64), x[part], y[part])
        meter.all_reduce()
        if rank == 0:
            torch.save(meter.sums, out_file)
    finally:
        torch.distributed.destroy_process_group()


def test_two_ranks_sum_to_one_rank(tmp_path, val_shard, tokenizer_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "sums.pt"
    torch.multiprocessing.spawn(_meter_worker, args=(2, tmp_path / "init", val_shard, tokenizer_path, out), nprocs=2)
    sums = torch.load(out)
    assert sums.tolist() == [1.5 * 262_144, 262_144, 638_652]
