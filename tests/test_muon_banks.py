"""golf.muon_banks.BankedMuon against golf.optim.Muon stepping each matrix with the ranks' averaged gradients:
at 1, 2 and 8 gloo ranks, with changing LR and momentum, weight decay, MuonEq-R, a matrix without a gradient,
global-norm clipping from reduce_grads, and a resume across world sizes through the gathered state."""

import json
import os

import pytest
import torch

from golf.muon_banks import BankedMuon
from golf.optim import Muon

# Three banks: five [12, 8], three [8, 20] (tall and wide both), one [16, 16].
SHAPES = [(12, 8)] * 5 + [(8, 20)] * 3 + [(16, 16)]
STEPS = 4
LRS = [0.02, 0.015, 0.01, 0.004]
MOMENTA = [0.85, 0.9, 0.95, 0.95]
KW = dict(nesterov=True, weight_decay=0.05, ns_steps=5, ns_dtype=torch.float32, row_normalize=True)
CLIP = 0.5


def initial_params():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(*s, generator=g) * 0.1 for s in SHAPES]


def local_grad(step: int, rank: int, i: int) -> torch.Tensor | None:
    if i == 6 and step == 1:  # a matrix without a gradient on one step (e.g. a layer not yet in use)
        return None
    g = torch.Generator().manual_seed(1000 * step + 10 * rank + i)
    return torch.randn(*SHAPES[i], generator=g)


def reference(world: int, steps=range(STEPS)):
    """Per-matrix Muon on the ranks' averaged gradients, clipped to CLIP by their global norm."""
    params = [torch.nn.Parameter(p) for p in initial_params()]
    opt = Muon(params, lr=LRS[0], momentum=MOMENTA[0], **KW)
    for step in steps:
        for i, p in enumerate(params):
            grads = [local_grad(step, r, i) for r in range(world)]
            p.grad = None if grads[0] is None else torch.stack(grads).mean(0)
        torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], CLIP)
        opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"] = LRS[step], MOMENTA[step]
        opt.step()
    return [p.detach() for p in params], [opt.state[p].get("momentum_buffer") for p in params]


def banked_steps(opt, params, steps, rank, world):
    import torch.distributed as dist

    for step in steps:
        for i, p in enumerate(params):
            p.grad = local_grad(step, rank, i)
        sq = opt.reduce_grads()
        if world > 1:
            dist.all_reduce(sq)
        coef = min(1.0, CLIP / (float(sq.sqrt()) + 1e-6))  # torch.nn.utils.clip_grad_norm_'s coefficient
        opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"] = LRS[step], MOMENTA[step]
        opt.step(coef)
        opt.zero_grad()


def _rank_main(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        params = [torch.nn.Parameter(p) for p in initial_params()]
        opt = BankedMuon(params, lr=LRS[0], momentum=MOMENTA[0], **KW)
        banked_steps(opt, params, range(2), rank, world)
        state = opt.state_dict()  # every rank: it gathers
        mid = [p.detach().clone() for p in params]
        banked_steps(opt, params, range(2, STEPS), rank, world)
        torch.save({"params": [p.detach() for p in params], "state": state, "mid": mid, "banks": opt.banks},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_ranks(world: int, tmp_path):
    torch.multiprocessing.spawn(_rank_main, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world,
                                join=True)
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]


def max_diff(a, b) -> float:
    return max(float((x.detach() - y.detach()).abs().max()) for x, y in zip(a, b))


def test_one_process_is_muon_batched():
    params = [torch.nn.Parameter(p) for p in initial_params()]
    opt = BankedMuon(params, lr=LRS[0], momentum=MOMENTA[0], **KW)
    assert opt.banks == [((12, 8), 5), ((8, 20), 3), ((16, 16), 1)]
    banked_steps(opt, params, range(1), 0, 1)
    buffers = [{k: t.data_ptr() for k, t in b.ns._buffers.items()} for b in opt._banks]
    banked_steps(opt, params, range(1, STEPS), 0, 1)
    want, _ = reference(1)
    assert max_diff(params, want) < 2e-6, max_diff(params, want)
    # Each bank's Newton-Schulz buffers are made at the first step and reused (fp32: u doubles as the first X).
    assert [{k: t.data_ptr() for k, t in b.ns._buffers.items()} for b in opt._banks] == buffers
    assert all(set(b) == {"u", "x0", "a", "b"} for b in buffers)


@pytest.mark.parametrize("world", [2, 8])
def test_ranks_step_as_per_matrix_muon(world, tmp_path):
    ranks = run_ranks(world, tmp_path)
    want, _ = reference(world)
    for r in ranks:  # every rank holds the same weights, those of per-matrix Muon on the averaged gradients
        assert max_diff(r["params"], ranks[0]["params"]) == 0.0
        assert max_diff(r["params"], want) < 2e-6, max_diff(r["params"], want)
    # The gathered state resumes in one process (another world size, fed the averaged gradients) on the same path.
    _, mom_ref = reference(world, range(2))
    state = ranks[0]["state"]
    flat = [m for bank in state["momentum"] for m in bank.unbind(0)]
    assert max_diff(flat, mom_ref) < 2e-6
    params = [torch.nn.Parameter(p.clone()) for p in ranks[0]["mid"]]
    opt = BankedMuon(params, lr=LRS[0], momentum=MOMENTA[0], **KW)
    opt.load_state_dict(state)

    for step in range(2, STEPS):
        for i, p in enumerate(params):
            grads = [local_grad(step, r, i) for r in range(world)]
            p.grad = None if grads[0] is None else torch.stack(grads).mean(0)
        coef = min(1.0, CLIP / (float(opt.reduce_grads().sqrt()) + 1e-6))
        opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"] = LRS[step], MOMENTA[step]
        opt.step(coef)
        opt.zero_grad()
    assert max_diff(params, want) < 2e-6, max_diff(params, want)
    json.dumps(ranks[0]["banks"])  # the state's bank list is plain data


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="2-D matrices"):
        BankedMuon([torch.nn.Parameter(torch.zeros(2, 3, 4))])
    with pytest.raises(ValueError, match="invalid lr"):
        BankedMuon([torch.nn.Parameter(torch.zeros(8, 8))], lr=-1.0)
    opt = BankedMuon([torch.nn.Parameter(torch.zeros(8, 8))])
    with pytest.raises(ValueError, match="banks"):
        opt.load_state_dict({"momentum": [None], "banks": [((4, 4), 1)]})


def test_h100x8_banks_launch_ten_times_fewer_ops():
    """The h100x8 model's 66 Muon matrices are 4 banks (13 + 13 + 20 + 20); the op count of a step depends on
    how many matrices and banks there are, not on their sizes, so small stand-ins of the same grouping count."""
    from bench.step import CountOps
    from golf.config import resolve_config
    from golf.model import Transformer
    from golf.optim import param_group_of

    cfg = resolve_config(["--preset", "h100x8"], env={})
    with torch.device("meta"):
        model = Transformer(cfg.model_config(8192, 1, 3))
    shapes = [tuple(p.shape) for n, p in model.named_parameters() if param_group_of(f"transformer.{n}", p) == "muon"]
    small = {s: (s[0] // 64, s[1] // 64) for s in set(shapes)}
    assert len(shapes) == 66 and len(small) == 4 and len(set(small.values())) == 4
    counts = {}
    for cls in (Muon, BankedMuon):
        g = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(*small[s], generator=g)) for s in shapes]
        opt = cls(params, lr=0.02, momentum=0.95, **KW)
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()  # the first step creates the momentum buffers
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        with CountOps() as c:
            opt.step()
        counts[cls.__name__] = c.count
    assert counts["Muon"] >= 10 * counts["BankedMuon"], counts


def _weights(runs_dir, run_id) -> dict[str, torch.Tensor]:
    return torch.load(runs_dir / run_id / "checkpoint.pt", weights_only=False)["model"]


def _train(tmp_path, data_path, tokenizer_path, run_id, world, *extra):
    from test_train import run_inprocess, subprocess_env, tiny_args

    common = ("--iterations", "6", "--val-loss-every", "0", "--schedule", "steps", "--train-batch-tokens", "2048",
              "--no-export", "--set", "optim.grad_clip=0.3", *extra)
    args = tiny_args(data_path, tokenizer_path, tmp_path, run_id, *common)
    if world == 1:
        return run_inprocess(args)
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
           "-m", "golf.train", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((tmp_path / run_id / "summary.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("world, baseline", [(1, False), (2, True)])
def test_golf_train_with_banks_ends_where_per_matrix_muon_does(world, baseline, tmp_path, data_path,
                                                                tokenizer_path):
    """golf.train's own loop, 6 steps with clipping of the averaged gradient, tiered in one process and
    --baseline on two gloo ranks (DDP leaving the banked matrices to the optimizer): the same weights as the
    per-matrix optimizer's, to fp32 rounding; the ranks agree bit for bit."""
    extra = ("--baseline",) if baseline else ()
    plain = _train(tmp_path, data_path, tokenizer_path, "plain", world, *extra)
    banked = _train(tmp_path, data_path, tokenizer_path, "banked", world, *extra, "--set", "optim.muon_banks=true")
    assert len(set(banked["weights_sha256"])) == 1 and len(banked["weights_sha256"]) == world
    a, b = _weights(tmp_path, "plain"), _weights(tmp_path, "banked")
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert diff < 1e-5, diff
    assert banked["float_val_bpb"] == pytest.approx(plain["float_val_bpb"], abs=1e-5)
    from test_train import events

    losses = [float(e["loss"]) for e in events(tmp_path, "banked", "train")]
    assert losses[-1] < losses[0] - 0.1, losses  # it trained
