"""golf::pack_int6 / unpack_int6: known bytes, exact round trips, C++ == reference, clear errors."""

import pytest
import torch

from golf import ops

IMPLS = {"cpp": (torch.ops.golf.pack_int6, torch.ops.golf.unpack_int6),
         "ref": (ops.ref_pack_int6, ops.ref_unpack_int6)}
ERRORS = (RuntimeError, ValueError)


@pytest.mark.parametrize("impl", IMPLS)
def test_known_bytes(impl):
    pack, unpack = IMPLS[impl]
    # codes u = q + 31: [0, 31, 62, 32] -> 0 | 31<<6 | 62<<12 | 32<<18 = 0x83E7C0;
    # [36, pad 31, 31, 31] -> 0x7DF7E4; each word little-endian.
    q = torch.tensor([-31, 0, 31, 1, 5], dtype=torch.int8)
    want = torch.tensor([0xC0, 0xE7, 0x83, 0xE4, 0xF7, 0x7D], dtype=torch.uint8)
    assert torch.equal(pack(q), want)
    assert torch.equal(unpack(want, 5), q)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 7, 8, 63, 1000, 300_001])
def test_round_trip_and_cpp_equals_reference(n):
    g = torch.Generator().manual_seed(n)
    q = torch.randint(-31, 32, (n,), generator=g, dtype=torch.int8)
    packed = torch.ops.golf.pack_int6(q)
    assert packed.dtype == torch.uint8 and packed.numel() == (n + 3) // 4 * 3
    assert torch.equal(packed, ops.ref_pack_int6(q))
    assert torch.equal(torch.ops.golf.unpack_int6(packed, n), q)
    assert torch.equal(ops.ref_unpack_int6(packed, n), q)


def test_every_value_and_any_shape():
    q = torch.arange(-31, 32, dtype=torch.int8).repeat(4).view(12, 21)  # 2-D input is flattened
    packed = ops.pack_int6(q)
    assert torch.equal(ops.unpack_int6(packed, q.numel()).view(12, 21), q)
    # Non-contiguous input packs its logical order.
    assert torch.equal(ops.unpack_int6(ops.pack_int6(q.t()), q.numel()), q.t().reshape(-1))


@pytest.mark.parametrize("impl", IMPLS)
def test_errors(impl):
    pack, unpack = IMPLS[impl]
    for bad in (32, -32, -128, 127):
        q = torch.zeros(9, dtype=torch.int8)
        q[6] = bad
        with pytest.raises(ERRORS, match=rf"value {bad} at flat index 6 is outside \[-31, 31\]"):
            pack(q)
    with pytest.raises(ERRORS, match="must be int8"):
        pack(torch.zeros(4, dtype=torch.int32))
    with pytest.raises(ERRORS, match="5 values need 6 packed bytes, found 3"):
        unpack(torch.zeros(3, dtype=torch.uint8), 5)
    with pytest.raises(ERRORS, match="1-D uint8"):
        unpack(torch.zeros(6, dtype=torch.int8), 8)
    # 0xFF bytes decode to code 63, which pack never writes.
    corrupt = torch.tensor([0xC0, 0xE7, 0x83, 0xFF, 0xFF, 0xFF], dtype=torch.uint8)
    with pytest.raises(ERRORS, match="code 63 .* at flat index 4: the packed bytes are corrupt"):
        unpack(corrupt, 8)


def test_opcheck():
    q = torch.randint(-31, 32, (37,), dtype=torch.int8)
    torch.library.opcheck(torch.ops.golf.pack_int6, (q,))
    torch.library.opcheck(torch.ops.golf.unpack_int6, (ops.pack_int6(q), 37))
