"""The record-scale presets fit the cap: an h100x8-narrow tiered model (tiers 0+1 + transformer) and its --baseline
(no tiers, the transformer widened by config.BASELINE_MODEL) are quantized and written as real model.golf files,
and artifact + code bytes stay within 16,000,000 (decimal), at nearly equal totals (an iso-byte comparison)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from golf.artifact import read_header
from golf.sizes import CAP_BYTES, code_bytes, size_report
from golf.config import BASELINE_MODEL, resolve_config
from golf.data import load_shard
from golf.export import export_model
from golf.model import TieredLM, Transformer
from golf.tiers import TierConfig, Vocab, fit_tiers


def trained_like(transformer: Transformer, seed: int) -> Transformer:
    """Weights with the heavy tails of trained ones: Student-t (5 dof) entries for every matrix. Per-row int6/int8
    grids are scale-free, so only the shape of each row's distribution matters for the compressed bytes; at init
    O and MLP proj are zero and the rest Gaussian-like, which would compress unrealistically well (zeros) or badly
    (Gaussian rows use more of the [-31, 31] grid than the records' trained rows, ~4.5 bits/weight)."""
    torch.manual_seed(seed)
    t5 = torch.distributions.StudentT(5.0)
    with torch.no_grad():
        for p in transformer.parameters():
            if p.dim() == 2:
                p.copy_(t5.sample(p.shape) / p.shape[1] ** 0.5)
    return transformer


def export_size(tmp_path, name: str, baseline: bool, vocab: Vocab, train, code: dict) -> dict:
    cfg = resolve_config(["--preset", "h100x8-narrow"] + (["--baseline"] if baseline else []), env={})
    transformer = trained_like(Transformer(cfg.model_config(vocab.vocab_size, vocab.bos_id)), seed=0)
    tiers = None if baseline else fit_tiers(train, vocab, TierConfig(**vars(cfg.tiers)))
    tables = tiers.prior_tables() if tiers is not None else torch.zeros(0, vocab.vocab_size)
    path = tmp_path / f"{name}.golf"
    export_model(path, TieredLM(transformer, tables, trainable=False), tiers, qcfg=cfg.quant,
                 train_seq_len=cfg.train_seq_len)
    report = size_report(path, read_header(path), code=code)
    weights = sum(p.numel() for p in transformer.parameters())
    print(f"h100x8-narrow {name}: transformer_params={weights} artifact_bytes={report['artifact_bytes']} "
          f"code_bytes={report['code_bytes']} total_bytes={report['total_bytes']} margin={report['margin']}")
    return report


@pytest.mark.slow
def test_h100x8_narrow_tiered_and_baseline_fit_at_equal_bytes(tmp_path, sp, train_shard):
    code = code_bytes()
    vocab = Vocab.from_tokenizer(sp)
    train = torch.from_numpy(np.asarray(load_shard(train_shard)).astype(np.int64))
    tiered = export_size(tmp_path, "tiered", False, vocab, train, code)
    baseline = export_size(tmp_path, "baseline", True, vocab, train, code)
    assert BASELINE_MODEL["h100x8-narrow"]
    for r in (tiered, baseline):
        assert r["fits"] and r["total_bytes"] <= CAP_BYTES, r
    # Iso-byte: the baseline's transformer takes what the tiers take, within 1% of the cap.
    assert abs(tiered["total_bytes"] - baseline["total_bytes"]) <= 0.01 * CAP_BYTES, (tiered, baseline)
