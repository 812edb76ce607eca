"""golf.optim: Newton-Schulz, Muon's update rule, grouping, the wall-clock schedule, EMA, resume."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from golf.errors import ConfigError
from golf.optim import (EMA, NS_POLAR_EXPRESS, Muon, NSWorkspace, OptimConfig, build_optimizers, lr_and_momentum,
                        lr_scale, momentum_at, muon_direction, newton_schulz, param_group_of, unwrap_model,
                        warmdown_seconds_from_steps)


pytestmark = pytest.mark.usefixtures("one_thread")


# --- a tiny model with every kind of parameter -----------------------------------------------------------

class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.fc = nn.Linear(d, 2 * d, bias=False)
        self.proj = nn.Linear(2 * d, d, bias=False)
        self.resid_mix = nn.Parameter(torch.stack([torch.ones(d), torch.zeros(d)]))  # (2, d): not a matrix
        self.mlp_scale = nn.Parameter(torch.ones(d))

    def forward(self, x, x0):
        x = self.resid_mix[0] * x + self.resid_mix[1] * x0
        return x + self.mlp_scale * self.proj(torch.relu(self.fc(x)))


class Tiny(nn.Module):
    def __init__(self, vocab=16, d=16):
        super().__init__()
        self.tok_emb = nn.Embedding(vocab, d)
        nn.init.normal_(self.tok_emb.weight, std=0.3)  # tied head: keeps the initial loss near ln(vocab)
        self.bigram_table = nn.Parameter(torch.zeros(vocab, vocab))
        self.blocks = nn.ModuleList([Block(d) for _ in range(2)])
        self.out_gain = nn.Parameter(torch.ones(d))
        self.prior = nn.Parameter(torch.randn(vocab) * 0.1)  # trained elsewhere: tagged frozen, still requires grad
        self.prior._golf_group = "frozen"

    def forward(self, idx):
        x0 = x = self.tok_emb(idx)
        for block in self.blocks:
            x = block(x, x0)
        return (self.out_gain * x) @ self.tok_emb.weight.T + self.bigram_table[idx] + self.prior


def batch(step, vocab=16, n=64):
    g = torch.Generator().manual_seed(1000 + step)
    idx = torch.randint(0, vocab, (n,), generator=g)
    return idx, (3 * idx + 1) % vocab


def loss_of(model, step):
    device = model.tok_emb.weight.device
    idx, target = (t.to(device) for t in batch(step))
    return nn.functional.cross_entropy(model(idx), target)


def fp32_cfg(**kw):
    return OptimConfig(muon_ns_dtype="float32", **kw)


# --- Newton-Schulz -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(64, 32), (32, 64), (48, 40)])
def test_newton_schulz_singular_values_near_one(shape):
    G = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    O = newton_schulz(G)  # bf16 iteration
    assert O.shape == G.shape and O.dtype == G.dtype
    s = torch.linalg.svdvals(O.float())
    assert s.min() > 0.5 and s.max() < 1.5, s
    # The direction is the polar factor U V^T of G, with the singular values only approximately 1.
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    cos = (O * (U @ Vh)).sum() / (O.norm() * (U @ Vh).norm())
    assert cos > 0.95


def test_newton_schulz_transpose_and_batch():
    G = torch.randn(3, 24, 12, generator=torch.Generator().manual_seed(1))
    tall = newton_schulz(G, dtype=torch.float32)
    wide = newton_schulz(G.mT.contiguous(), dtype=torch.float32)
    torch.testing.assert_close(tall, wide.mT, rtol=1e-5, atol=1e-5)  # the tall path is the wide one, transposed
    for i in range(3):
        torch.testing.assert_close(tall[i], newton_schulz(G[i], dtype=torch.float32), rtol=1e-5, atol=1e-5)
    # fp32 iteration is scale-invariant: the Frobenius normalisation removes the gradient's magnitude.
    torch.testing.assert_close(newton_schulz(1000 * G, dtype=torch.float32), tall, rtol=1e-4, atol=1e-5)


def test_ns_workspace_is_newton_schulz_in_kept_buffers():
    """NSWorkspace: newton_schulz's iteration in fused products, in buffers kept from call to call: in fp32 equal
    to it to rounding (tall, wide, square, batched, both schedules), G left as it was."""
    gen = torch.Generator().manual_seed(5)
    for shape in [(3, 24, 12), (3, 12, 24), (2, 16, 16), (20, 8), (2, 2, 12, 8)]:
        G = torch.randn(*shape, generator=gen)
        G0 = G.clone()
        ws = NSWorkspace()
        for coefficients in ("fixed", "polar_express"):
            want = newton_schulz(G, dtype=torch.float32, coefficients=coefficients)
            got = ws.newton_schulz(G, dtype=torch.float32, coefficients=coefficients)
            assert got.shape == G.shape and got.dtype == G.dtype
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            # bf16: one rounding per fused product rather than per product, sum and scale: nearer the fp32 iteration.
            err = lambda X: float((X - want).norm() / want.norm())  # noqa: E731
            fused = err(ws.newton_schulz(G, coefficients=coefficients))
            assert fused < min(0.05, err(newton_schulz(G, coefficients=coefficients))), fused
        assert torch.equal(G, G0)
    # The second call allocates nothing: the same buffers, the result in the same place.
    ws = NSWorkspace()
    out = ws.newton_schulz(G).data_ptr()
    buffers = {k: t.data_ptr() for k, t in ws._buffers.items()}
    assert ws.newton_schulz(2 * G).data_ptr() == out
    assert {k: t.data_ptr() for k, t in ws._buffers.items()} == buffers and len(buffers) == 5  # u, 2 X, A, B


def test_muon_direction_in_a_workspace_is_the_plain_one():
    """muon_direction with a workspace (golf.muon_banks's) against without (golf.optim.Muon's), fp32 Newton-Schulz:
    with and without Nesterov and MuonEq-R; g and buf are left as they were."""
    gen = torch.Generator().manual_seed(6)
    g, buf = torch.randn(4, 12, 8, generator=gen), torch.randn(4, 12, 8, generator=gen)
    g0, buf0 = g.clone(), buf.clone()
    ws = NSWorkspace()
    for nesterov in (True, False):
        for row_normalize in (True, False):
            group = dict(momentum=0.9, nesterov=nesterov, row_normalize=row_normalize, ns_steps=5,
                         ns_dtype=torch.float32, ns_coefficients="polar_express")
            torch.testing.assert_close(muon_direction(g, buf, group, ws), muon_direction(g, buf, group),
                                       rtol=1e-5, atol=1e-5)
    assert torch.equal(g, g0) and torch.equal(buf, buf0)


# --- Muon's update rule --------------------------------------------------------------------------------

def reference_ns(M, steps=5):
    """Quintic Newton-Schulz written on X^T X (no transposition), in fp32."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = M / (torch.sqrt((M * M).sum()) + 1e-7)
    for _ in range(steps):
        A = X.T @ X
        X = a * X + b * (X @ A) + c * (X @ A @ A)
    return X


def test_muon_step_matches_hand_computed_reference():
    gen = torch.Generator().manual_seed(2)
    W0 = torch.randn(6, 3, generator=gen)  # tall: transposed inside, scaled by sqrt(6/3)
    g1, g2 = torch.randn(6, 3, generator=gen), torch.randn(6, 3, generator=gen)
    lr, wd, mu1, mu2 = 0.1, 0.2, 0.85, 0.9  # the momentum changes between steps, as in its warmup

    p = nn.Parameter(W0.clone())
    opt = Muon([p], lr=lr, momentum=mu1, weight_decay=wd, ns_dtype=torch.float32)
    for g, mu in ((g1, mu1), (g2, mu2)):
        opt.param_groups[0]["momentum"] = mu
        p.grad = g.clone()
        opt.step()

    buf1 = g1
    u1 = g1 + mu1 * buf1
    W1 = W0 * (1 - lr * wd) - lr * math.sqrt(2.0) * reference_ns(u1)
    buf2 = mu2 * buf1 + g2
    u2 = g2 + mu2 * buf2
    W2 = W1 * (1 - lr * wd) - lr * math.sqrt(2.0) * reference_ns(u2)
    torch.testing.assert_close(p.detach(), W2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(opt.state[p]["momentum_buffer"], buf2)


def test_polar_express_takes_one_step_of_coefficients_per_iteration():
    """Polar Express: iteration i uses NS_POLAR_EXPRESS[i] (the last from then on), and its five steps leave
    the singular values much nearer 1 than the fixed quintic's."""
    G = torch.randn(48, 40, generator=torch.Generator().manual_seed(3))
    X = G / (G.norm() + 1e-7)
    for i in range(7):
        a, b, c = NS_POLAR_EXPRESS[min(i, 4)]
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    torch.testing.assert_close(newton_schulz(G, steps=7, dtype=torch.float32, coefficients="polar_express"), X,
                               rtol=1e-4, atol=1e-5)
    spread = {k: (torch.linalg.svdvals(newton_schulz(G, dtype=torch.float32, coefficients=k)) - 1).abs().max()
              for k in ("fixed", "polar_express")}
    assert spread["polar_express"] < 0.5 * spread["fixed"], spread
    with pytest.raises(ConfigError, match="muon_ns_coefficients"):
        OptimConfig(muon_ns_coefficients="cubic")


def test_muon_row_normalize_is_newton_schulz_of_unit_rows():
    """MuonEq-R: the Nesterov update's rows at unit norm, then Newton-Schulz, as the plain step otherwise."""
    gen = torch.Generator().manual_seed(4)
    W0, g = torch.randn(8, 16, generator=gen), torch.randn(8, 16, generator=gen) * torch.arange(1, 9)[:, None]
    p = nn.Parameter(W0.clone())
    opt = Muon([p], lr=0.1, momentum=0.9, ns_dtype=torch.float32, row_normalize=True)
    p.grad = g.clone()
    opt.step()
    u = g + 0.9 * g
    u = u / u.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(p.detach(), W0 - 0.1 * newton_schulz(u, dtype=torch.float32), rtol=1e-5, atol=1e-6)
    plain = nn.Parameter(W0.clone())
    plain.grad = g.clone()
    Muon([plain], lr=0.1, momentum=0.9, ns_dtype=torch.float32).step()
    assert not torch.allclose(plain, p)  # rows of unequal norms: the normalisation changes the update


def test_the_embed_group_can_have_its_own_weight_decay():
    """PR #1412 decays the token table at 0.085 and the scalars at 0.02 (EMBED_WD, ADAM_WD); by default both AdamW
    groups share adam_weight_decay, as in R1147 and R1063."""
    def decays(**kw):
        opts = build_optimizers(Tiny().named_parameters(), OptimConfig(**kw))
        return {g["name"]: g["weight_decay"] for g in opts.adam.param_groups}

    assert decays(adam_weight_decay=0.04) == {"embed": 0.04, "scalar": 0.04}
    assert decays(adam_weight_decay=0.02, embed_weight_decay=0.085) == {"embed": 0.085, "scalar": 0.02}
    with pytest.raises(ConfigError, match="embed_weight_decay"):
        OptimConfig(embed_weight_decay=-1.0)


def test_min_lr_floors_the_warmdown():
    assert lr_scale(95.0, 100.0, warmdown_s=50.0, floor=0.2) == 0.2
    assert lr_scale(70.0, 100.0, warmdown_s=50.0, floor=0.2) == pytest.approx(0.6)  # above the floor: the ramp
    assert lr_scale(100.0, 100.0, warmdown_s=50.0, floor=0.2) == 0.0                 # the budget is over
    assert lr_and_momentum(OptimConfig(warmdown_frac=0.5, min_lr=0.1), 10, 99.0, 100.0)[0] == 0.1
    with pytest.raises(ConfigError, match="min_lr"):
        OptimConfig(min_lr=1.5)


def test_muon_wide_matrix_unscaled_and_bank_equals_slices():
    gen = torch.Generator().manual_seed(3)
    W0 = torch.randn(2, 4, 8, generator=gen)  # a 3-D bank of two wide matrices
    g = torch.randn(2, 4, 8, generator=gen)
    bank = nn.Parameter(W0.clone())
    slices = [nn.Parameter(W0[i].clone()) for i in range(2)]
    opt_bank = Muon([bank], lr=0.05, ns_dtype=torch.float32)
    opt_slices = Muon(slices, lr=0.05, ns_dtype=torch.float32)
    bank.grad = g.clone()
    for i, s in enumerate(slices):
        s.grad = g[i].clone()
    opt_bank.step()
    opt_slices.step()
    for i, s in enumerate(slices):
        torch.testing.assert_close(bank.detach()[i], s.detach())
        # wide: scale 1, no weight decay; momentum 0.95 Nesterov on a zero buffer gives u = 1.95 g
        torch.testing.assert_close(s.detach(), W0[i] - 0.05 * reference_ns(1.95 * g[i]), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError):
        Muon([nn.Parameter(torch.zeros(4))])


def train_tiny(seed, steps=30, **lrs):
    torch.manual_seed(seed)
    model = Tiny()
    opts = build_optimizers(model.named_parameters(), OptimConfig(muon_momentum_warmup_steps=10, warmdown_frac=0.3,
                                                                  **lrs))
    first = loss_of(model, 0).item()
    for step in range(steps):
        loss = loss_of(model, step)
        opts.zero_grad()
        loss.backward()
        opts.step(*lr_and_momentum(opts.cfg, step, step / steps, 1.0))
    final = sum(loss_of(model, 10_000 + i).item() for i in range(4)) / 4
    return first, final


def test_muon_and_adamw_reduce_loss():
    first, both = train_tiny(4, matrix_lr=0.02, embed_lr=0.05, scalar_lr=0.02)
    assert both < 0.05 * first, (first, both)
    first, muon_only = train_tiny(4, matrix_lr=0.02, embed_lr=0.0, scalar_lr=0.0)
    assert muon_only < 0.8 * first, (first, muon_only)


# --- grouping -------------------------------------------------------------------------------------------

def test_grouping_rule_and_frozen_parameters():
    torch.manual_seed(5)
    model = Tiny()
    opts = build_optimizers(model.named_parameters(), fp32_cfg(muon_weight_decay=0.1, adam_weight_decay=0.1))
    assert sorted(opts.groups["muon"]) == sorted(f"blocks.{i}.{m}.weight" for i in range(2) for m in ("fc", "proj"))
    assert sorted(opts.groups["embed"]) == ["bigram_table", "tok_emb.weight"]
    assert sorted(opts.groups["scalar"]) == sorted(["out_gain"] + [f"blocks.{i}.{n}" for i in range(2)
                                                                  for n in ("resid_mix", "mlp_scale")])
    assert opts.groups["frozen"] == ["prior"]
    lrs = {g["name"]: g["base_lr"] for o in opts.optimizers for g in o.param_groups}
    assert lrs == {"muon": 0.04, "embed": 0.05, "scalar": 0.04}

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = loss_of(model, 0)
    opts.zero_grad()
    loss.backward()
    assert model.prior.grad is not None  # it gets a gradient, but no optimizer owns it
    opts.step(1.0, 0.95)
    after = dict(model.named_parameters())
    assert torch.equal(after["prior"], before["prior"])
    for name in opts.groups["muon"] + opts.groups["embed"] + opts.groups["scalar"]:
        assert not torch.equal(after[name], before[name]), name


def test_grouping_overrides_and_errors():
    p = nn.Parameter(torch.zeros(16, 16))
    assert param_group_of("head.weight", p) == "scalar"  # a matrix outside the blocks
    assert param_group_of("blocks.0.attn.c_q.weight", p) == "muon"
    assert param_group_of("blocks.0.ve_emb.weight", p) == "embed"
    p._golf_group = "table"
    assert param_group_of("blocks.0.attn.c_q.weight", p) == "embed"
    bank = nn.Parameter(torch.zeros(4, 16, 16))
    assert param_group_of("qo_bank", bank) == "scalar"
    bank._golf_group = "muon"
    assert param_group_of("qo_bank", bank) == "muon"
    assert param_group_of("blocks.0.w", nn.Parameter(torch.zeros(16, 16), requires_grad=False)) == "frozen"
    bad = nn.Parameter(torch.zeros(3))
    bad._golf_group = "muon"
    with pytest.raises(ConfigError, match="ndim"):
        param_group_of("gain", bad)
    bad._golf_group = "sgd"
    with pytest.raises(ConfigError, match="_golf_group"):
        param_group_of("gain", bad)
    with pytest.raises(ConfigError, match="no trainable"):
        build_optimizers([("w", nn.Parameter(torch.zeros(2), requires_grad=False))], OptimConfig())
    with pytest.raises(ConfigError, match="OptimConfig.matrix_lr"):
        OptimConfig(matrix_lr=-1.0)
    with pytest.raises(ConfigError, match="OptimConfig.muon_ns_dtype"):
        OptimConfig(muon_ns_dtype="fp8")


def test_grad_clip_bounds_the_global_norm():
    torch.manual_seed(6)
    model = Tiny()
    opts = build_optimizers(model.named_parameters(), fp32_cfg(grad_clip=0.01))
    loss = loss_of(model, 0)
    loss.backward()
    params = [p for g in ("muon", "embed", "scalar") for n, p in model.named_parameters() if n in opts.groups[g]]
    assert torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])) > 0.01
    opts.step(1.0, 0.95)
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
    assert total == pytest.approx(0.01, rel=1e-4)
    assert model.prior.grad.norm() > 0.01  # frozen params are left out of the clipping


# --- schedules ------------------------------------------------------------------------------------------

def test_lr_scale_shape():
    budget, warmup, warmdown = 100.0, 10.0, 40.0
    assert lr_scale(0.0, budget, warmup, warmdown) == 0.0
    assert lr_scale(5.0, budget, warmup, warmdown) == pytest.approx(0.5)
    assert lr_scale(10.0, budget, warmup, warmdown) == 1.0
    assert lr_scale(60.0, budget, warmup, warmdown) == 1.0  # plateau up to budget - warmdown
    assert lr_scale(80.0, budget, warmup, warmdown) == pytest.approx(0.5)
    assert lr_scale(100.0, budget, warmup, warmdown) == 0.0
    assert lr_scale(150.0, budget, warmup, warmdown) == 0.0
    assert lr_scale(0.0, budget) == 1.0 and lr_scale(99.9, budget) == 1.0 and lr_scale(100.0, budget) == 0.0
    values = [lr_scale(t / 10, budget, warmup, warmdown) for t in range(0, 1001)]
    peak = values.index(1.0)
    assert all(a <= b for a, b in zip(values[:peak], values[1:peak + 1]))
    assert all(a >= b for a, b in zip(values[peak:], values[peak + 1:]))
    assert lr_scale(5.0, 10.0, warmup_s=8.0, warmdown_s=8.0) == pytest.approx(5 / 8)  # overlap: the min of both
    for bad in ((1.0, 0.0, 0.0, 0.0), (1.0, 10.0, -1.0, 0.0), (1.0, 10.0, 0.0, -1.0)):
        with pytest.raises(ConfigError):
            lr_scale(*bad)


def test_a_step_scheduled_run_shorter_than_its_warmdown_starts_inside_it():
    """Counting steps (elapsed = step, budget = iterations, one step = 1), a 1,000-step run with a 4,000-step
    warmdown is all warmdown, as in the records' step schedule: (iterations - step) / warmdown_steps from step 0."""
    cfg = OptimConfig(warmdown_steps=4000)
    assert [lr_and_momentum(cfg, k, float(k), 1000.0, step_s=1.0)[0] for k in (0, 500, 999)] == \
        [pytest.approx(1000 / 4000), pytest.approx(500 / 4000), pytest.approx(1 / 4000)]
    # Longer than the warmdown: the plateau first, then the same ramp.
    assert lr_and_momentum(cfg, 0, 0.0, 5000.0, step_s=1.0)[0] == 1.0
    assert lr_and_momentum(cfg, 4000, 4000.0, 5000.0, step_s=1.0)[0] == pytest.approx(1000 / 4000)


def test_warmdown_from_steps_and_momentum_warmup():
    assert warmdown_seconds_from_steps(1200, 0.0435) == pytest.approx(52.2)
    with pytest.raises(ConfigError):
        warmdown_seconds_from_steps(-1, 0.1)
    assert momentum_at(0, 0.85, 0.95, 500) == pytest.approx(0.85)
    assert momentum_at(250, 0.85, 0.95, 500) == pytest.approx(0.90)
    assert momentum_at(10_000, 0.85, 0.95, 500) == pytest.approx(0.95)
    assert momentum_at(0, 0.85, 0.95, 0) == 0.95

    cfg = OptimConfig(warmdown_steps=100, warmdown_frac=0.9)
    # 400 steps in 40 s -> 0.1 s/step -> a 10 s warmdown, ending at the 60 s budget
    assert lr_and_momentum(cfg, 400, 40.0, 60.0) == (1.0, pytest.approx(0.93))  # momentum warmup: 400 of 500 steps
    # 400 steps in 55 s -> 0.1375 s/step -> a 13.75 s warmdown, 5 s of it left
    assert lr_and_momentum(cfg, 400, 55.0, 60.0)[0] == pytest.approx(5 / 13.75)
    assert lr_and_momentum(cfg, 0, 0.0, 60.0)[0] == 1.0  # no step time measured yet: no warmdown


# --- EMA ------------------------------------------------------------------------------------------------

def test_ema_closed_form_and_copy_to():
    model = nn.Linear(3, 2)
    model.register_buffer("running", torch.zeros(2))
    model.register_buffer("count", torch.zeros((), dtype=torch.int64))
    d = 0.9
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.running.fill_(0.0)
    ema = EMA(model, d)
    values = [2.0, -1.0, 4.0, 0.5]
    for v in values:
        with torch.no_grad():
            model.weight.fill_(v)
            model.running.fill_(10 * v)
        ema.update(model)
    k = len(values)
    expected = d ** k * 1.0 + sum((1 - d) * d ** (k - 1 - i) * v for i, v in enumerate(values))
    shadow = ema.state_dict()["shadow"]
    assert set(shadow) == {"weight", "bias", "running"}  # the int64 counter is not averaged
    torch.testing.assert_close(shadow["weight"], torch.full((2, 3), expected), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(shadow["running"], torch.full((2,), 10 * (expected - d ** k)), rtol=1e-6, atol=1e-6)
    ema.copy_to(model)
    torch.testing.assert_close(model.weight.detach(), torch.full((2, 3), expected), rtol=1e-6, atol=1e-6)
    with pytest.raises(ConfigError):
        EMA(model, 1.0)


def test_ema_keeps_fp32_for_bf16_weights_and_unwraps(tmp_path):
    import torch.distributed as dist

    model = nn.Linear(4, 4, bias=False).to(torch.bfloat16)
    ema = EMA(torch.compile(model), 0.5)  # an OptimizedModule: unwrapped, nothing compiled
    assert ema.shadow[0].dtype == torch.float32
    w0 = model.weight.detach().float().clone()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(nn.Linear(4, 4, bias=False))
        assert unwrap_model(ddp) is ddp.module
        start = ddp.module.weight.detach().clone()
        ddp_ema = EMA(ddp, 0.5)
        with torch.no_grad():
            ddp.module.weight.zero_()
        ddp_ema.update(ddp)
        ddp_ema.copy_to(ddp)
    finally:
        dist.destroy_process_group()
    assert ddp_ema.names == ["weight"]  # the module's names, not DDP's "module.weight"
    torch.testing.assert_close(ddp.module.weight.detach(), 0.5 * start)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    torch.testing.assert_close(ema.shadow[0], 0.5 * w0 + 0.5)


# --- resume ---------------------------------------------------------------------------------------------

def train(model, opts, ema, steps, budget_s=1.0, total=8):
    for step in steps:
        loss = loss_of(model, step)
        opts.zero_grad()
        loss.backward()
        opts.step(*lr_and_momentum(opts.cfg, step, step * budget_s / total, budget_s))
        ema.update(model)


def setup(seed):
    torch.manual_seed(seed)
    model = Tiny()
    cfg = OptimConfig(muon_weight_decay=0.04, adam_weight_decay=0.04, grad_clip=0.3, warmup_seconds=0.2,
                      warmdown_frac=0.5, muon_momentum_warmup_steps=4, ema_decay=0.9)
    return model, build_optimizers(model.named_parameters(), cfg), EMA(model, cfg.ema_decay)


def test_state_dict_round_trip_is_bit_identical():
    model_a, opts_a, ema_a = setup(7)
    train(model_a, opts_a, ema_a, range(8))

    model_b, opts_b, ema_b = setup(7)
    train(model_b, opts_b, ema_b, range(4))
    buf = io.BytesIO()
    torch.save({"model": model_b.state_dict(), "opt": opts_b.state_dict(), "ema": ema_b.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf)

    model_c, opts_c, ema_c = setup(8)  # different init: everything must come from the checkpoint
    model_c.load_state_dict(saved["model"])
    opts_c.load_state_dict(saved["opt"])
    ema_c.load_state_dict(saved["ema"])
    assert opts_c.lr_scale == opts_b.lr_scale and opts_c.momentum == opts_b.momentum
    train(model_c, opts_c, ema_c, range(4, 8))

    for (name, a), (_, c) in zip(model_a.state_dict().items(), model_c.state_dict().items()):
        assert torch.equal(a, c), name
    for a, c in zip(ema_a.shadow, ema_c.shadow):
        assert torch.equal(a, c)
    assert opts_a.lr_scale == opts_c.lr_scale


# --- CUDA -----------------------------------------------------------------------------------------------

@pytest.mark.cuda
def test_cuda_matches_cpu_and_uses_fused_adamw():
    cfg = fp32_cfg(muon_weight_decay=0.04, adam_weight_decay=0.04, grad_clip=1.0, warmup_seconds=0.1)
    models, bundles = [], []
    for device in ("cpu", "cuda"):
        torch.manual_seed(9)
        models.append(Tiny().to(device))
        bundles.append(build_optimizers(models[-1].named_parameters(), cfg))
    assert bundles[1].adam.defaults["fused"] and not bundles[0].adam.defaults["fused"]
    ema = EMA(models[1], 0.9)
    for model, opts in zip(models, bundles):
        for step in range(3):
            loss = loss_of(model, step)
            opts.zero_grad()
            loss.backward()
            opts.step(*lr_and_momentum(opts.cfg, step, 0.1 * step, 1.0))
    ema.update(models[1])
    assert ema.shadow[0].is_cuda and ema.shadow[0].dtype == torch.float32
    for (name, a), (_, b) in zip(models[0].named_parameters(), models[1].named_parameters()):
        torch.testing.assert_close(a.detach(), b.detach().cpu(), rtol=1e-4, atol=1e-4, msg=name)
    G = torch.randn(256, 128, device="cuda")
    s = torch.linalg.svdvals(newton_schulz(G).float())  # bf16 iteration on the GPU
    assert s.min() > 0.5 and s.max() < 1.5
