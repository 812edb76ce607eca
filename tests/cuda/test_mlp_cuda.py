"""golf::leaky_relu2_mlp on CUDA == its CPU op: the fused CUTLASS GEMMs (bf16, sm_90a) and the unfused path
(other dtypes, shapes CUTLASS refuses), forward and backward, and the model's step with the op on and off."""

import pytest
import torch
import torch.nn.functional as F

from golf import ops
from golf.model import ModelConfig, Transformer

pytestmark = pytest.mark.cuda

HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


def operands(m, d, h, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, d, generator=g).to(dtype)
    w1 = (torch.randn(h, d, generator=g) / d ** 0.5).to(dtype)
    w2 = (torch.randn(d, h, generator=g) / h ** 0.5).to(dtype)
    grad = torch.randn(m, d, generator=g).to(dtype)
    return x, w1, w2, grad


def assert_near(got, want, dtype, name):
    """bf16/fp16: one rounding of the storage dtype apart at most (the GEMMs sum in another order); fp32: the
    summation order's few ulps."""
    got, want = got.cpu().float(), want.float()
    scale = float(want.abs().max()) or 1.0
    rtol = {torch.bfloat16: 1.6e-2, torch.float16: 2e-3, torch.float32: 1e-5}[dtype]
    torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * scale * 0.1, msg=name)


def test_the_fused_kernels_run_on_hopper():
    if HOPPER and ops.BUILD_INFO.get("fused_mlp"):
        assert ops.fused_mlp_available("cuda")
    else:
        assert not ops.fused_mlp_available("cuda")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(4096, 512, 2048), (1000, 512, 2048), (257, 512, 1536), (64, 510, 1024)])
@pytest.mark.parametrize("slope", [0.5, 0.0])
def test_cuda_equals_cpu(dtype, shape, slope):
    # (1000, ...) has an M residue in every tile; (64, 510, ...) rows CUTLASS refuses (not 16-byte aligned).
    x, w1, w2, grad = operands(*shape, dtype)
    cpu = torch.ops.golf.leaky_relu2_mlp(x, w1, w2, slope)
    cuda = torch.ops.golf.leaky_relu2_mlp(x.cuda(), w1.cuda(), w2.cuda(), slope)
    for name, a, b in zip(("out", "pre", "post"), cuda, cpu):
        assert a.is_cuda and a.dtype == dtype and a.shape == b.shape
        assert_near(a, b, dtype, name)
    # the backward from the same saved tensors on both sides
    pre, post = cpu[1], cpu[2]
    want = torch.ops.golf.leaky_relu2_mlp_backward(grad, x, w1, w2, pre, post, slope)
    got = torch.ops.golf.leaky_relu2_mlp_backward(grad.cuda(), x.cuda(), w1.cuda(), w2.cuda(), pre.cuda(),
                                                  post.cuda(), slope)
    for name, a, b in zip(("grad_x", "grad_w1", "grad_w2"), got, want):
        assert_near(a, b, dtype, name)


def test_post_comes_from_the_fp32_accumulator():
    # post = act(acc) rounded once, not act(bf16(acc)): where the two differ, the kernel holds the first.
    x, w1, w2, _ = operands(2048, 512, 2048, torch.bfloat16, seed=5)
    _, pre, post = torch.ops.golf.leaky_relu2_mlp(x.cuda(), w1.cuda(), w2.cuda(), 0.5)
    acc = x.float() @ w1.float().t()
    from_acc = ops._mlp_act(acc, 0.5).bfloat16()
    from_pre = ops._mlp_act(pre.cpu().float(), 0.5).bfloat16()
    differ = from_acc != from_pre
    assert differ.any()
    agree_acc = (post.cpu()[differ] == from_acc[differ]).float().mean()
    agree_pre = (post.cpu()[differ] == from_pre[differ]).float().mean()
    assert agree_acc > 0.9 > agree_pre, (float(agree_acc), float(agree_pre))


def test_cuda_opcheck():
    x, w1, w2, grad = operands(128, 64, 256, torch.bfloat16)
    x, w1, w2, grad = x.cuda(), w1.cuda(), w2.cuda(), grad.cuda()
    torch.library.opcheck(torch.ops.golf.leaky_relu2_mlp, (x.requires_grad_(), w1.requires_grad_(),
                                                          w2.requires_grad_(), 0.5))
    out, pre, post = torch.ops.golf.leaky_relu2_mlp(x.detach(), w1.detach(), w2.detach(), 0.5)
    torch.library.opcheck(torch.ops.golf.leaky_relu2_mlp_backward,
                          (grad, x.detach(), w1.detach(), w2.detach(), pre, post, 0.5))


def test_the_models_step_on_cuda_fused_or_not():
    ids = torch.randint(2, 1024, (4, 256), generator=torch.Generator().manual_seed(0)).cuda()
    grads = {}
    for fused in ("off", "on"):
        torch.manual_seed(0)
        cfg = ModelConfig(vocab_size=1024, num_layers=2, model_dim=128, num_heads=4, num_kv_heads=2, mlp_mult=4.0,
                          activation="leaky_relu2", fused_mlp=fused)
        model = Transformer(cfg).cuda()
        for block in model.blocks:
            torch.nn.init.normal_(block.mlp.proj.weight, std=0.02)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(ids)
        F.cross_entropy(logits.float().view(-1, 1024)[:-1], ids.view(-1)[1:]).backward()
        grads[fused] = {n: p.grad.float().cpu() for n, p in model.named_parameters() if p.grad is not None}
    for name, g in grads["off"].items():
        scale = float(g.abs().max()) or 1.0
        torch.testing.assert_close(grads["on"][name], g, rtol=5e-2, atol=5e-2 * scale, msg=name)
