"""golf::target_bytes: C++ CPU kernel == PyTorch reference, on random ids and on the real val shard."""

import logging

import numpy as np
import pytest
import torch

from golf import ops
from golf.data import load_shard


def random_tables(v, gen):
    base = torch.randint(0, 8, (v,), generator=gen, dtype=torch.int32)
    lead = torch.rand(v, generator=gen) < 0.5
    boundary = torch.rand(v, generator=gen) < 0.1
    return base, lead, boundary


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("shape", [(0,), (1,), (1000,), (7, 129)])
def test_cpu_kernel_matches_reference(dtype, shape):
    gen = torch.Generator().manual_seed(0)
    v = 97
    base, lead, boundary = random_tables(v, gen)
    prev = torch.randint(0, v, shape, generator=gen).to(dtype)
    target = torch.randint(0, v, shape, generator=gen).to(dtype)
    got = torch.ops.golf.target_bytes(prev, target, base, lead, boundary)
    want = ops.ref_target_bytes(prev, target, base, lead, boundary)
    assert got.dtype == torch.int32 and got.shape == target.shape
    assert torch.equal(got, want)


def test_noncontiguous_inputs():
    gen = torch.Generator().manual_seed(1)
    base, lead, boundary = random_tables(50, gen)
    ids = torch.randint(0, 50, (64, 33), generator=gen)
    prev, target = ids[:, :-1], ids[:, 1:]  # views, not contiguous
    assert torch.equal(torch.ops.golf.target_bytes(prev, target, base, lead, boundary),
                       ops.ref_target_bytes(prev, target, base, lead, boundary))


def test_real_val_shard(val_shard, tables):
    ids = torch.from_numpy(np.asarray(load_shard(val_shard)).astype(np.int64))
    args = (ids[:-1], ids[1:], tables.base_bytes, tables.leading_space, tables.boundary)
    got = torch.ops.golf.target_bytes(*args)
    assert torch.equal(got, ops.ref_target_bytes(*args))
    assert int(got.sum()) == 638_652


def test_out_of_range_id_is_an_error():
    base, lead, boundary = random_tables(10, torch.Generator().manual_seed(2))
    with pytest.raises(IndexError, match=r"target\[1\] = 10: expected a value in \[0, 10\)"):
        torch.ops.golf.target_bytes(torch.tensor([1, 2]), torch.tensor([3, 10]), base, lead, boundary)
    with pytest.raises(IndexError, match=r"prev\[0\] = -1"):
        torch.ops.golf.target_bytes(torch.tensor([-1]), torch.tensor([3]), base, lead, boundary)


@pytest.mark.parametrize("bad,match", [
    (lambda a: (a[0][:-1],) + a[1:], "shape"),
    (lambda a: (a[0].float(),) + a[1:], "int64 or int32"),
    (lambda a: a[:2] + (a[2].long(),) + a[3:], "base_bytes must be 1-D int32"),
    (lambda a: a[:3] + (a[3][:-1],) + a[4:], "leading_space must be 1-D bool"),
])
def test_bad_arguments_are_named(bad, match):
    base, lead, boundary = random_tables(10, torch.Generator().manual_seed(3))
    args = (torch.tensor([1, 2, 3]), torch.tensor([3, 4, 5]), base, lead, boundary)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.golf.target_bytes(*bad(args))


def test_opcheck():
    gen = torch.Generator().manual_seed(4)
    base, lead, boundary = random_tables(31, gen)
    ids = torch.randint(0, 31, (5, 17), generator=gen)
    torch.library.opcheck(torch.ops.golf.target_bytes, (ids[:, :-1], ids[:, 1:], base, lead, boundary))


def test_dispatch_uses_kernel_on_cpu_and_logs_fallback_elsewhere(caplog):
    base, lead, boundary = random_tables(10, torch.Generator().manual_seed(5))
    ids = torch.tensor([1, 2, 3, 4])
    assert ops.has_kernel("target_bytes", "cpu")
    ops.target_bytes(ids[:-1], ids[1:], base, lead, boundary)
    assert ("target_bytes", "cpu") not in ops.fallbacks()
    meta = [t.to("meta") for t in (ids[:-1], ids[1:], base, lead, boundary)]
    with caplog.at_level(logging.WARNING, logger="golf.ops"):
        out = ops.target_bytes(*meta)
    assert out.shape == (3,) and out.dtype == torch.int32
    assert ("target_bytes", "meta") in ops.fallbacks()
    assert "runs the PyTorch reference" in caplog.text


def test_compiles_under_torch_compile():
    base, lead, boundary = random_tables(10, torch.Generator().manual_seed(6))
    ids = torch.randint(0, 10, (4, 9), generator=torch.Generator().manual_seed(7))

    def f(x):
        return ops.target_bytes(x[:, :-1], x[:, 1:], base, lead, boundary).sum(dim=1)

    compiled = torch.compile(f, backend="eager", fullgraph=True)
    assert torch.equal(compiled(ids), f(ids))
