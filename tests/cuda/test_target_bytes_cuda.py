"""golf::target_bytes CUDA kernel == reference == CPU kernel (runs only with a GPU and a CUDA build)."""

import numpy as np
import pytest
import torch

from golf import ops
from golf.data import load_shard

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
def test_cuda_matches_reference_on_val_shard(val_shard, tables, dtype):
    ids = torch.from_numpy(np.asarray(load_shard(val_shard)).astype(np.int64)).to(dtype)
    cpu_args = (ids[:-1], ids[1:], tables.base_bytes, tables.leading_space, tables.boundary)
    cuda_args = tuple(t.cuda() for t in cpu_args)
    got = torch.ops.golf.target_bytes(*cuda_args)
    assert got.is_cuda
    assert torch.equal(got.cpu(), ops.ref_target_bytes(*cpu_args))
    assert torch.equal(got.cpu(), torch.ops.golf.target_bytes(*cpu_args))
    assert int(got.sum()) == 638_652


def test_cuda_out_of_range_is_an_error(tables):
    t = tables.to("cuda")
    with pytest.raises(RuntimeError, match="out of range"):
        torch.ops.golf.target_bytes(torch.tensor([1], device="cuda"), torch.tensor([5000], device="cuda"),
                                    t.base_bytes, t.leading_space, t.boundary)


def test_cuda_opcheck(tables):
    t = tables.to("cuda")
    ids = torch.randint(0, tables.vocab_size, (4, 65), device="cuda")
    torch.library.opcheck(torch.ops.golf.target_bytes, (ids[:, :-1], ids[:, 1:], t.base_bytes, t.leading_space,
                                                         t.boundary))
