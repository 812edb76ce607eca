"""golf.datatools prepare: the challenge's export ([BOS]+ids per doc, no EOS, first N docs to val)."""

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from golf.data import find_shards, load_shard
from golf import datatools
from golf.datatools import prepare
from golf.errors import DataError

from conftest import read_jsonl


def test_reproduces_the_official_val_ids_for_complete_docs(tmp_path, val_docs_jsonl, tokenizer_path, val_shard):
    out = subprocess.run([sys.executable, "-m", "golf.datatools", "prepare", "--docs", str(val_docs_jsonl),
                          "--tokenizer", str(tokenizer_path), "--out", str(tmp_path), "--val-docs", "234",
                          "--allow-no-train"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "split=val docs=234" in out.stdout and "prepare" in out.stderr  # progress goes to stderr
    assert not list(tmp_path.glob("fineweb_train_*"))  # every doc went to val
    ours = np.asarray(load_shard(tmp_path / "fineweb_val_000000.bin"))
    official = np.asarray(load_shard(val_shard))
    docs = read_jsonl(val_docs_jsonl)
    ours_starts = np.flatnonzero(ours == 1)
    official_starts = np.flatnonzero(official == 1)
    assert len(ours_starts) == len(official_starts) == len(docs) == 234
    full = [k for k, d in enumerate(docs) if d["status"] == "full"]
    assert len(full) == 233
    for k in full:
        a = ours[ours_starts[k]:ours_starts[k + 1] if k + 1 < 234 else len(ours)]
        b = official[official_starts[k]:official_starts[k + 1]]
        assert np.array_equal(a, b), f"doc {k} differs"


def test_splits_and_shard_sizes(tmp_path, val_docs_jsonl, tokenizer_path):
    result = prepare(val_docs_jsonl, tokenizer_path, tmp_path, val_docs=10, shard_tokens=50_000, prefix="extra")
    assert result["val"]["docs"] == 10 and result["train"]["docs"] == 224
    val, train = find_shards(tmp_path, "val"), find_shards(tmp_path, "train")
    val_tokens = np.concatenate([load_shard(f) for f in val])
    train_tokens = np.concatenate([load_shard(f) for f in train])
    assert (val_tokens == 1).sum() == 10 and (train_tokens == 1).sum() == 224
    assert val_tokens[0] == 1 and train_tokens[0] == 1  # splits never share a shard
    assert all(len(load_shard(f)) == 50_000 for f in train[:-1])
    assert len(train_tokens) == result["train"]["tokens"]
    assert [f.name for f in train][:2] == ["extra_train_000000.bin", "extra_train_000001.bin"]


def test_bad_jsonl_line_is_named(tmp_path, tokenizer_path):
    docs = tmp_path / "docs.jsonl"
    docs.write_text(json.dumps({"text": "hello"}) + "\n" + json.dumps({"body": "x"}) + "\n")
    with pytest.raises(DataError, match="line 2"):
        prepare(docs, tokenizer_path, tmp_path / "out", val_docs=1)


def _docs(path, n):
    path.write_text("".join(json.dumps({"text": f"document number {i} of a small test file"}) + "\n"
                            for i in range(n)))
    return path


def _hashes(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_existing_shards_are_refused_unless_overwrite(tmp_path, tokenizer_path, capsys):
    docs, out = _docs(tmp_path / "docs.jsonl", 4), tmp_path / "out"
    out.mkdir()
    for name in ("fineweb_train_000000.bin", "fineweb_train_000001.bin", "pilot_train_000000.bin"):
        (out / name).write_bytes(name.encode())
    before = _hashes(out)
    argv = ["prepare", "--docs", str(docs), "--tokenizer", str(tokenizer_path), "--out", str(out), "--val-docs", "1"]
    assert datatools.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {out}: ") and err.count("\n") == 1
    assert "fineweb_train_000000.bin, fineweb_train_000001.bin" in err and "--overwrite" in err
    assert _hashes(out) == before  # nothing written or changed

    # --overwrite replaces the prefix's shards; the stale one past the new export's end is removed, so two exports
    # never mix; another prefix's shard is untouched.
    assert datatools.main(argv + ["--overwrite"]) == 0
    assert "removed=1" in capsys.readouterr().out
    after = _hashes(out)
    assert sorted(after) == ["fineweb_train_000000.bin", "fineweb_val_000000.bin", "pilot_train_000000.bin"]
    assert after["pilot_train_000000.bin"] == before["pilot_train_000000.bin"]
    assert (np.asarray(load_shard(out / "fineweb_train_000000.bin")) == 1).sum() == 3


def test_val_docs_taking_every_doc_is_refused_unless_allowed(tmp_path, tokenizer_path, capsys):
    docs, out = _docs(tmp_path / "docs.jsonl", 3), tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("already here")
    before = _hashes(out)
    argv = ["prepare", "--docs", str(docs), "--tokenizer", str(tokenizer_path), "--out", str(out)]
    for n in ("3", "5"):
        assert datatools.main(argv + ["--val-docs", n]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --val-docs {n} takes all 3 documents of {docs}") and err.count("\n") == 1
        assert "no training shard would be written" in err and "--allow-no-train" in err
        assert _hashes(out) == before
    assert datatools.main(argv + ["--val-docs", "3", "--allow-no-train"]) == 0
    assert sorted(_hashes(out)) == ["fineweb_val_000000.bin", "notes.txt"]
