"""Selective +-1 pruning: the cheapest int6 +-1 values (cost scale^2) are zeroed, the fewest that bring the
artifact under a byte limit; nothing else changes, and a limit out of reach leaves the state as it was."""

import numpy as np
import pytest
import torch

from golf import artifact, quant
from golf.export import prune_to_fit


def encoded(layout="int8"):
    g = torch.Generator().manual_seed(0)
    state = {"a.weight": torch.randn(64, 96, generator=g) * torch.linspace(0.2, 3.0, 64)[:, None],
             "b.weight": torch.randn(48, 64, generator=g), "gain": torch.ones(64)}
    cfg = quant.QuantConfig(small_numel=1024, int6_layout=layout)
    return quant.encode_state(state, None, cfg)


def int6_values(arrays, meta, name):
    return quant.int6_values(arrays, meta[name]).clone()


@pytest.mark.parametrize("layout", ["int8", "packed"])
def test_candidates_are_the_pm1_values_cheapest_first_and_zeroing_touches_only_them(layout):
    arrays, meta = encoded(layout)
    cands = quant.pm1_candidates(arrays, meta)
    assert cands.names == ["a.weight", "b.weight"]
    ones = sum(int((int6_values(arrays, meta, n).abs() == 1).sum()) for n in cands.names)
    assert len(cands) == ones > 100
    assert torch.all(cands.cost[1:] >= cands.cost[:-1])
    for t, name in enumerate(cands.names):  # cost = the row's scale squared
        scale = torch.from_numpy(np.array(arrays[meta[name]["arrays"]["scale"]])).float()
        sel = cands.tensor == t
        cols = int6_values(arrays, meta, name).shape[1]
        assert torch.equal(cands.cost[sel], scale[cands.index[sel] // cols] ** 2)
    before = {n: int6_values(arrays, meta, n) for n in cands.names}
    n = len(cands) // 3
    pruned = quant.zero_pm1(arrays, meta, cands, n)
    changed = 0
    for t, name in enumerate(cands.names):
        old, new = before[name].view(-1), int6_values(pruned, meta, name).view(-1)
        diff = torch.nonzero(old != new).squeeze(1)
        assert torch.all(new[diff] == 0) and torch.all(old[diff].abs() == 1)
        assert set(diff.tolist()) == set(cands.index[:n][cands.tensor[:n] == t].tolist())
        changed += len(diff)
        assert torch.equal(int6_values(arrays, meta, name), before[name])  # the input is not modified
    assert changed == n
    assert pruned["gain"] is arrays["gain"]


def make_encode(meta):
    def encode(arrs, pruning):
        return artifact.encode(arrs, config={"pruning": pruning}, meta={}, codec="lzma")
    return encode


def test_prune_to_fit_finds_a_small_count_that_fits():
    arrays, meta = encoded()
    encode = make_encode(meta)
    full = len(encode(arrays, None)[0])
    assert prune_to_fit(arrays, meta, encode, full)[3] is None  # already fits: nothing pruned
    cands = quant.pm1_candidates(arrays, meta)
    smallest = len(encode(quant.zero_pm1(arrays, meta, cands, len(cands)), None)[0])
    assert smallest < full - 100
    limit = (full + smallest) // 2
    pruned, data, info, record = prune_to_fit(arrays, meta, encode, limit)
    assert len(data) <= limit and info.file_bytes == len(data) and record["bytes_after"] == len(data)
    assert 0 < record["pruned"] < record["candidates"] == len(cands)
    assert record["bytes_before"] == full and 3 <= record["trials"] <= 20
    assert artifact.decode(data).config["pruning"]["pruned"] == record["pruned"]
    # about the fewest: 5% fewer no longer fits (the file shrinks about linearly in the count)
    fewer = int(record["pruned"] * 0.95)
    header = {"pruned": fewer, "candidates": len(cands), "cost": "scale^2"}
    assert len(encode(quant.zero_pm1(arrays, meta, cands, fewer), header)[0]) > limit


def test_a_limit_out_of_reach_keeps_the_unpruned_state():
    arrays, meta = encoded()
    encode = make_encode(meta)
    kept, data, info, record = prune_to_fit(arrays, meta, encode, 1000)
    assert kept is arrays and record["pruned"] == 0 and record["bytes_all_pruned"] > 1000
    assert len(data) == record["bytes_before"] == record["bytes_after"]
