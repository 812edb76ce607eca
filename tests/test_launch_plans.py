"""Every kernel family's launch plan (kernels/launch_plans.h), walked thread by thread on the host by
golf._C.audit_launch_plan over every vocabulary and shape range a GPU would meet: each item covered by exactly one
thread of exactly one block, no thread outside its range, every shared-memory index inside its allocation and
private to its row. A race the GPU would show (two blocks writing one row) is found here, without a GPU."""

from __future__ import annotations

import pytest

from golf import ops

pytestmark = pytest.mark.skipif(ops._C is None, reason="golf._C is not built")

ROWS = (0, 1, 2, 7, 98_304)
MAX_VOCAB = 65_536
SMS = (1, 7, 114, 132)  # a tiny grid, an odd one, and the multiprocessor counts of an H100 PCIe and an H100 SXM / H200


def audit(family, n, **shape):
    return ops._C.audit_launch_plan(family, n, **shape)


def assert_clean(result, what):
    assert result["errors"] == 0, f"{what}: {result['errors']} errors: {result['first_error']}"
    assert result["covered"] == result["items"], f"{what}: {result}"


def test_row_kernels_cover_every_vocabulary_and_row_count():
    # Every V's plan; its thread -> element map (which no kernel makes depend on the row) once per layout, over the
    # layout's whole span; then the block -> row map and the three row kernels' shared memory once per row size
    # (they depend on V only through it) for every N.
    layouts, sizes = {}, {}
    for v in range(1, MAX_VOCAB + 1):
        plan = ops._C.launch_plan("rows", 1, v=v)
        t, chunks = plan["threads"], plan["chunks"]
        assert 8 * t * chunks >= v, f"V={v}: {plan}"
        if (t, chunks) not in layouts:
            layouts[t, chunks] = audit("rows", 1, v=v, parts="elements")
            assert_clean(layouts[t, chunks], f"V={v} ({t} threads x {chunks} chunks)")
        sizes.setdefault(t, v)
    assert sorted(sizes) == list(range(32, 513, 32))
    for t, v in sorted(sizes.items()):
        for n in ROWS:
            result = audit("rows", n, v=v, parts="rows,smem")
            assert_clean(result, f"V={v} ({t} threads a row), N={n}")
            assert result["items"] == n * t


@pytest.mark.parametrize("v", [37, 1000, 1024, 2049, 4097, 4100, 6144, 8192, 8193, 8200, 10_000, 14_336, 16_384,
                               16_385, 20_000, 65_536])
def test_row_plans_hold_whole_rows(v):
    # A block holds whole rows: the rows of 96, 160, 192 and 224 threads (V 4,097-6,144 and 8,193-14,336) once left
    # 256 - k*T threads that computed part of the next block's first row.
    plan = ops._C.launch_plan("rows", 98_304, v=v)
    assert plan["block"] == plan["rows_per_block"] * plan["threads"] <= plan["max_threads"]
    assert plan["grid"] * plan["rows_per_block"] >= 98_304 > (plan["grid"] - 1) * plan["rows_per_block"]
    assert_clean(audit("rows", 7, v=v), f"V={v}")


@pytest.mark.parametrize("family", ["pack_int6", "unpack_int6", "sparse", "target_bytes", "mlp_act"])
def test_grid_stride_plans_cover_every_item(family):
    for sms in SMS:
        for n in (0, 1, 2, 3, 4, 5, 7, 255, 256, 257, 1023, 1024, 1025, 98_304, 1_048_583, 4 * 1_048_576 + 3):
            result = audit(family, n, sms=sms)
            assert_clean(result, f"{family} n={n} sms={sms}")
            assert result["items"] == ((n + 3) // 4 if "pack" in family else n)


def test_table_gradient_plan_covers_every_segment_and_column():
    grid_cap = 65_535 * 16
    for segments in (0, 1, 2, 7, 98_304, grid_cap + 5):
        for v in (1, 255, 256, 257, 1024, 8192, MAX_VOCAB):
            result = audit("table_grad", segments, v=v)
            assert_clean(result, f"segments={segments} v={v}")
            assert result["items"] == segments + (v if segments else 0)


def test_gptq_column_plan_over_the_pipelines_blocks():
    # The stacked rows of a matrix times its clip candidates, every block start the pipeline takes.
    for rows in (1, 2, 63, 64, 65, 2_560, 98_304):
        for cols in (1, 7, 128, 512, 2_048):
            for block in (1, 7, 64, 128, 907):
                for i1 in range(0, cols, block):
                    nb = min(block, cols - i1)
                    assert_clean(audit("gptq", rows, cols=cols, i1=i1, nb=nb),
                                 f"gptq rows={rows} cols={cols} block={block} i1={i1}")
    # 908 columns of 64 rows need more shared memory than an H100 / H200 block can have: the CUDA op refuses them.
    over = audit("gptq", 64, cols=2_048, nb=908)
    assert over["errors"] == 1 and "shared memory" in over["first_error"]
    assert ops._C.launch_plan("gptq", 64, nb=907)["smem_bytes"] <= 232_448 < \
        ops._C.launch_plan("gptq", 64, nb=908)["smem_bytes"]


def test_the_audit_finds_what_it_guards():
    # Out-of-range shapes are refused, and a plan that spills past its columns is reported, not passed.
    with pytest.raises(ValueError, match="v must be in"):
        audit("rows", 1, v=MAX_VOCAB + 1)
    with pytest.raises(ValueError, match="unknown family"):
        audit("nope", 1)
    bad = audit("gptq", 64, cols=100, i1=64, nb=64)
    assert bad["errors"] >= 1 and "outside" in bad["first_error"]
