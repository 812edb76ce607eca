"""Every CUDA op of golf._C once on tiny shapes, for compute-sanitizer (memcheck, racecheck) in `.ci/gpu check`:
tiered_loss forward and backward (bf16 and fp32 logits, scales, the tables' gradient) and tiered_loss_train at
V = 37, 1024 and 20000 (the three row layouts: a partial chunk, registers, recomputed logits) and at V = 4100, 6144,
8200, 10000 and 14336 (rows of 96 to 224 threads, which do not fill a 256-thread block), score_windows with
sparse logits, target_bytes, hessian_accumulate, gptq_quantize (three blocks) and the int6 packing, leaky_relu2_mlp
forward and backward (bf16: the fused CUTLASS GEMMs on an H100, an M residue in the tile; fp32: the unfused
elementwise kernels); then a bad prior row, which must poison its row and raise the device-side flag, not fault."""

import torch

from golf import ops

CAP = 30.0
for v, dtype in ((37, torch.float32), (1024, torch.bfloat16), (20000, torch.float32), (4100, torch.bfloat16),
                 (6144, torch.float32), (8200, torch.bfloat16), (10_000, torch.float32), (14_336, torch.bfloat16)):
    n, k, r = 9, 3, 5
    l2 = (torch.randn(n, v) * 3).to("cuda", dtype).requires_grad_()
    tables = torch.randn(r, v, device="cuda").requires_grad_()
    rows = torch.randint(-1, r, (n, k), dtype=torch.int32, device="cuda")
    targets = torch.randint(0, v, (n,), device="cuda")
    scales = torch.rand(n, k, device="cuda").requires_grad_()
    nll, lse = torch.ops.golf.tiered_loss(l2, tables, rows, targets, CAP, scales)
    (nll.sum() + 0.5 * lse.sum()).backward()
    torch.ops.golf.tiered_loss_train(l2.detach(), tables.detach(), rows, targets, CAP, 1 / n, scales.detach(), True)
    hidden, head = torch.randn(n, 16, device="cuda"), torch.randn(v, 16, device="cuda")
    extra_rows = torch.tensor([0, 0, 4], device="cuda")
    ptr = ops.csr_ptr(extra_rows, n)
    torch.ops.golf.score_windows(hidden, head, tables.detach(), rows, targets, CAP, ptr,
                                 torch.tensor([1, 1, v - 1], device="cuda"), torch.randn(3, device="cuda"),
                                 scales.detach())
    ids = torch.randint(0, v, (n + 1,), device="cuda")
    if v <= 1024:
        torch.ops.golf.target_bytes(ids[:-1], ids[1:], torch.ones(v, dtype=torch.int32, device="cuda"),
                                    torch.zeros(v, dtype=torch.bool, device="cuda"),
                                    torch.zeros(v, dtype=torch.bool, device="cuda"))
x = torch.randn(300, 96, device="cuda")
h = torch.zeros(96, 96, device="cuda")
torch.ops.golf.hessian_accumulate(h, x)
q, _ = torch.ops.golf.gptq_quantize(torch.randn(64, 96, device="cuda") * 0.02, h, 6, 32, True, 0.01,
                                    torch.tensor([0.999, 1.0]))
torch.ops.golf.unpack_int6(torch.ops.golf.pack_int6(q), q.numel())
for dtype in (torch.bfloat16, torch.float32):
    x, w1, w2 = (torch.randn(*s, device="cuda").to(dtype) for s in ((37, 64), (128, 64), (64, 128)))
    out, pre, post = torch.ops.golf.leaky_relu2_mlp(x, w1, w2, 0.5)
    torch.ops.golf.leaky_relu2_mlp_backward(torch.randn_like(out), x, w1, w2, pre, post, 0.5)
bad = torch.zeros(4, 1, dtype=torch.int32, device="cuda")
bad[2, 0] = 7
nll, _ = torch.ops.golf.tiered_loss(torch.zeros(4, 64, device="cuda"), torch.zeros(2, 64, device="cuda"), bad,
                                    torch.zeros(4, dtype=torch.long, device="cuda"), CAP)
assert torch.isnan(nll[2]) and torch.isfinite(nll[[0, 1, 3]]).all(), nll
try:
    ops.check_device_indices("cuda")
    raise SystemExit("the bad prior row did not raise the index flag")
except IndexError:
    pass
torch.cuda.synchronize()
print("cuda_tiny_ops: ok")
