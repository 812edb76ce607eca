"""bench.vocab_compare: the bytes each run's loader served, from its summary.json, under two tokenizers of the
same text; the per-arm table, the Welch rows, the plot; an unknown arm named."""

import json

import numpy as np
import pytest

from bench import vocab_compare
from golf.data import ByteTables, load_shard, load_tokenizer


def fake_run(exp, arm, seed, data, tokenizer, steps, bpb):
    run = exp / "runs" / f"{arm}-s{seed}"
    run.mkdir(parents=True)
    cfg = {"data_path": str(data), "tokenizer_path": str(tokenizer), "train_seq_len": 256,
           "train_batch_tokens": 1024, "seed": seed, "vocab_size": None}
    history = [{"step": 0, "val_bpb": bpb + 1.0, "train_s": 0.0}, {"step": steps, "val_bpb": bpb, "train_s": 1.0}]
    (run / "summary.json").write_text(json.dumps({"config": cfg, "steps": steps, "seed": seed, "val_bpb": bpb,
                                                  "val_history": history}))


def stream_bytes_per_token(shard, tokenizer):
    ids = np.asarray(load_shard(shard)).astype(np.int64)
    import torch

    t = torch.from_numpy(ids)
    return float(ByteTables.from_tokenizer(load_tokenizer(tokenizer)).target_bytes(t[:-1], t[1:]).sum()) / (len(t) - 1)


def test_bytes_served_under_two_tokenizers(tmp_path, capsys, data_path, tokenizer_path, sp8192_data, sp8192_path):
    exp = tmp_path / "exp"
    for seed, (a, b) in enumerate([(2.1, 1.9), (2.2, 1.95)], start=1):
        fake_run(exp, "sp1024", seed, data_path, tokenizer_path, 40, a)
        fake_run(exp, "sp8192", seed, sp8192_data, sp8192_path, 25, b)
    arms = vocab_compare.read_runs(exp)
    assert sorted(arms) == ["sp1024", "sp8192"] and all(len(r) == 2 for r in arms.values())
    # 40 steps of 1,024 tokens are 4% of either stream: their bytes per token is the stream's, within sampling.
    for arm, (data, tok) in {"sp1024": (data_path, tokenizer_path), "sp8192": (sp8192_data, sp8192_path)}.items():
        whole = stream_bytes_per_token(data / "fineweb_train_000000.bin", tok)
        for r in arms[arm]:
            assert r["curve"][-1][0] == r["bytes"] and r["curve"][0][0] == 0
            assert abs(r["bytes"] / r["tokens"] / whole - 1) < 0.1, (arm, r["bytes"] / r["tokens"], whole)
    per_token = {arm: runs[0]["bytes"] / runs[0]["tokens"] for arm, runs in arms.items()}
    assert per_token["sp8192"] > 1.4 * per_token["sp1024"]
    # Another seed draws other windows, and so other bytes.
    assert arms["sp1024"][0]["bytes"] != arms["sp1024"][1]["bytes"]

    vocab_compare.main([str(exp), "--pair", "sp8192:sp1024"])
    text = capsys.readouterr().out
    row = next(line for line in text.splitlines() if line.startswith("| sp8192 | sp1024 |"))
    assert "-0.2250" in row  # 1.925 - 2.15
    assert "| sp1024 | fineweb_1024_bpe.model | 2 | 40 | 40,960 |" in text
    assert (exp / "vocab_bytes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    with pytest.raises(SystemExit, match="no finished runs of arm 'sp4096'"):
        vocab_compare.main([str(exp), "--pair", "sp4096:sp1024"])
