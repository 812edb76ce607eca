"""golf.datatools tokenizer: SentencePiece BPE with the challenge's settings, trained on training documents only,
and byte accounting that does not depend on the tokenizer."""

import json
import subprocess
import sys

import pytest

from golf.data import ByteTables, find_shards, load_tokenizer
from golf.datatools import prepare, split_stats, train_tokenizer
from golf.errors import ConfigError, DataError

from conftest import read_jsonl


def test_has_the_challenges_settings(sp8192_path):
    sp = load_tokenizer(sp8192_path)
    assert sp.vocab_size() == 8192
    assert (sp.pad_id(), sp.bos_id(), sp.eos_id(), sp.unk_id()) == (0, 1, 2, 3)
    assert all(sp.is_byte(i) for i in range(4, 260)) and sp.id_to_piece(4) == "<0x00>"  # byte fallback
    assert sp.encode("2026", out_type=str) == ["2", "0", "2", "6"]                        # split digits
    assert not sp.encode("hello", out_type=str)[0].startswith("\u2581")                   # no dummy prefix
    assert sp.decode(sp.encode("\ufb01ne  two\nlines")) == "fine two lines"               # nmt_nfkc
    side = json.loads(sp8192_path.with_suffix(".json").read_text())
    assert side["settings"]["character_coverage"] == 0.999 and side["docs"] == 971 and side["skipped_too_long"] == 0
    assert len(side["sources"][0]["sha256"]) == 64 and side["excluded"]


def test_same_bytes_under_every_tokenizer(tmp_path, sp8192_path, tokenizer_path, val_docs_jsonl, train_docs_jsonl):
    """The shipped val text has one byte count, whichever tokenizer cuts it: the LUT rule counts the UTF-8 bytes
    of the normalised text (BOS and the first token's leading space add none). The 233 full documents are in
    normalised form already; the truncated last one ends in a U+FFFD that normalisation drops (3 bytes)."""
    texts = [d["text"] for d in read_jsonl(val_docs_jsonl)]
    sp = load_tokenizer(tokenizer_path)
    utf8 = sum(len(sp.normalize(t).replace("\u2581", " ").encode("utf-8")) for t in texts)
    assert utf8 == sum(len(t.encode("utf-8")) for t in texts) - 3
    counts = {}
    for name, tok in (("sp1024", tokenizer_path), ("sp8192", sp8192_path)):
        out = tmp_path / name
        prepare(train_docs_jsonl, tok, out, val_path=val_docs_jsonl)
        counts[name] = split_stats(find_shards(out, "val"), ByteTables.from_tokenizer(tok))
    assert counts["sp1024"]["bytes"] == counts["sp8192"]["bytes"] == utf8 == 638651
    assert counts["sp1024"]["docs"] == counts["sp8192"]["docs"] == 234
    assert counts["sp8192"]["targets"] < 0.7 * counts["sp1024"]["targets"]  # fewer, longer tokens
    stats = subprocess.run([sys.executable, "-m", "golf.datatools", "stats", str(tmp_path / "sp8192"),
                            "--tokenizer", str(sp8192_path)], capture_output=True, text=True)
    assert stats.returncode == 0 and "split=val" in stats.stdout and f"bytes={utf8}" in stats.stdout


def test_refuses_validation_text(tmp_path, val_docs_jsonl, train_docs_jsonl):
    out = subprocess.run([sys.executable, "-m", "golf.datatools", "tokenizer", "--docs", str(train_docs_jsonl),
                          "--docs", str(val_docs_jsonl), "--exclude", str(val_docs_jsonl), "--vocab-size", "512",
                          "--out", str(tmp_path / "tok")], capture_output=True, text=True)
    assert out.returncode == 2 and "document 971 opens like a document of the excluded" in out.stderr
    assert not (tmp_path / "tok").exists()  # refused before anything was written


def test_bad_arguments(tmp_path, train_docs_jsonl, sp8192_path):
    with pytest.raises(ConfigError, match="vocab-size"):
        train_tokenizer(train_docs_jsonl, 70000, tmp_path)
    with pytest.raises(ConfigError, match="already there"):
        train_tokenizer(train_docs_jsonl, 8192, sp8192_path.parent)
    with pytest.raises(DataError, match="no training document of at most 10 bytes"):
        train_tokenizer(train_docs_jsonl, 512, tmp_path, max_sentence_length=10)
    with pytest.raises(DataError, match="not found"):
        train_tokenizer(tmp_path / "missing.jsonl", 512, tmp_path)


def test_prepare_with_a_val_file(sp8192_data, sp8192_path, train_docs_jsonl, val_docs_jsonl, tmp_path):
    tables = ByteTables.from_tokenizer(sp8192_path)
    val = split_stats(find_shards(sp8192_data, "val"), tables)
    train = split_stats(find_shards(sp8192_data, "train"), tables)
    assert (val["docs"], train["docs"]) == (234, 971)
    with pytest.raises(ConfigError, match="--val and --val-docs"):
        prepare(train_docs_jsonl, sp8192_path, tmp_path, val_docs=3, val_path=val_docs_jsonl)
    out = subprocess.run([sys.executable, "-m", "golf.datatools", "prepare", "--docs", str(train_docs_jsonl),
                          "--tokenizer", str(sp8192_path), "--out", str(tmp_path / "x")],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "--val FILE or --val-docs N" in out.stderr
