"""DistributedLoader: the global batch depends on (seed, step) only; ranks and micro-steps slice it disjointly;
once closed (the training budget is over) it reads nothing."""

import re

import numpy as np
import pytest
import torch

from golf.data import DistributedLoader, TokenStream, read_fit_prefix, write_shard
from golf.errors import BudgetError, ConfigError, DataError

SEQ, GLOBAL = 64, 64 * 16


def loader(files, **kw):
    args = dict(seq_len=SEQ, global_batch_tokens=GLOBAL, seed=7)
    args.update(kw)
    return DistributedLoader(files, **args)


def global_batch(files, step, world_size, grad_accum, **kw):
    """The whole step's (x, y) as all ranks and micro-steps together see it, in slice order."""
    xs, ys = [], []
    for rank in range(world_size):
        ld = loader(files, rank=rank, world_size=world_size, grad_accum=grad_accum, **kw)
        for micro in range(grad_accum):
            x, y = ld.batch(step, micro)
            xs.append(x)
            ys.append(y)
    return torch.cat(xs), torch.cat(ys)


def test_shapes_dtypes_and_shift(train_shard):
    ld = loader([train_shard], world_size=2, grad_accum=2, rank=1)
    x, y = ld.batch(3, micro=1)
    assert x.shape == y.shape == (4, SEQ) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    stream = TokenStream([train_shard])
    starts = ld.global_starts(3)[(1 * 2 + 1) * 4:(1 * 2 + 2) * 4]
    for row, s in zip(x, starts):
        assert np.array_equal(row.numpy(), stream.read(int(s), SEQ).astype(np.int64))


@pytest.mark.parametrize("world_size,grad_accum", [(2, 1), (4, 1), (1, 4), (2, 2), (8, 2)])
def test_global_batch_is_independent_of_world_size_and_accumulation(train_shard, world_size, grad_accum):
    for step in (0, 5, 1000):
        x1, y1 = global_batch([train_shard], step, 1, 1)
        xw, yw = global_batch([train_shard], step, world_size, grad_accum)
        assert torch.equal(x1, xw) and torch.equal(y1, yw)


def test_ranks_take_disjoint_slices(train_shard):
    starts = [set(loader([train_shard], rank=r, world_size=4).global_starts(2)[r * 4:(r + 1) * 4]) for r in range(4)]
    assert all(len(s) == 4 for s in starts)
    assert len(set.union(*starts)) == 16


def test_seed_and_step_determine_the_batch(train_shard):
    a = loader([train_shard]).batch(11)[0]
    assert torch.equal(a, loader([train_shard]).batch(11)[0])
    assert not torch.equal(a, loader([train_shard]).batch(12)[0])
    assert not torch.equal(a, loader([train_shard], seed=8).batch(11)[0])


def test_an_epoch_visits_every_window_once(tmp_path):
    path = tmp_path / "fineweb_train_000000.bin"
    write_shard(path, np.arange(64 * 40 + 17) % 1000)
    ld = DistributedLoader([path], seq_len=64, global_batch_tokens=64 * 8, seed=3)
    n = ld.windows_per_epoch
    assert n == (64 * 40 + 17 - 64) // 64
    starts = np.concatenate([ld.global_starts(s) for s in range(n // 8)])
    assert len(set(starts.tolist())) == len(starts)  # no repeats inside the epoch
    phase = starts[0] % 64
    assert (starts % 64 == phase).all() and starts.max() + 65 <= 64 * 40 + 17
    x, _ = ld.batch(n)  # later epochs keep going, with a new draw
    assert x.shape == (8, 64)


def test_windows_cross_shard_boundaries(tmp_path):
    for i in range(3):
        write_shard(tmp_path / f"fineweb_train_{i:06d}.bin", np.arange(i * 100, (i + 1) * 100))
    ld = DistributedLoader(sorted(tmp_path.glob("*.bin")), seq_len=32, global_batch_tokens=32 * 8, seed=0)
    for step in range(5):
        x, y = ld.batch(step)
        assert torch.equal(y - x, torch.ones_like(x))  # consecutive ids: the stream is read in order


def test_bad_configs(train_shard):
    with pytest.raises(ConfigError, match="not a multiple of seq_len"):
        DistributedLoader([train_shard], seq_len=100, global_batch_tokens=1000 + 1)
    with pytest.raises(ConfigError, match="do not split"):
        DistributedLoader([train_shard], seq_len=64, global_batch_tokens=64 * 6, world_size=4)
    with pytest.raises(ConfigError, match="rank=2"):
        DistributedLoader([train_shard], seq_len=64, global_batch_tokens=64 * 4, rank=2, world_size=2)


def test_ids_beyond_vocab_are_named(tmp_path):
    path = tmp_path / "fineweb_train_000000.bin"
    write_shard(path, np.full(1000, 2000))
    ld = DistributedLoader([path], seq_len=16, global_batch_tokens=64, vocab_size=1024)
    with pytest.raises(DataError, match=str(path)):
        ld.batch(0)


def test_a_closed_loader_refuses_every_read(tmp_path):
    """Once golf.train closes the loader (the training budget is over), no batch and no read of its stream (the
    tier-fit prefix goes through it) comes back: a BudgetError naming the shard the read would touch."""
    paths = [tmp_path / f"fineweb_train_00000{i}.bin" for i in range(2)]
    for i, path in enumerate(paths):
        write_shard(path, np.arange(i * 1000, i * 1000 + 1000) % 1024)
    ld = DistributedLoader(paths, seq_len=16, global_batch_tokens=64, vocab_size=1024)
    before = ld.batch(3)
    assert read_fit_prefix(ld.stream, 100, 1024).numel() == 100
    ld.close()
    ld.close()  # closing twice is harmless
    where = ld.stream.shard_of(int(ld.global_starts(3)[0]))
    with pytest.raises(BudgetError, match=re.escape(f"{where}: the training budget is closed")) as err:
        ld.batch(3)
    assert err.value.file == where and before[0].shape == (4, 16)
    with pytest.raises(BudgetError, match=re.escape(f"{paths[0]}: the training budget is closed")):
        read_fit_prefix(ld.stream, 100, 1024)
    with pytest.raises(BudgetError, match=re.escape(f"{paths[1]}: the training budget is closed")):
        ld.stream.read(1500, 10)
