"""One training step of a preset's model broken down (forward, backward, optimizer), for each path side by side:

    today    per-matrix Muon, the plain MLP, the fp32 residual stream (the presets' defaults)
    banked   + banked Muon (optim.muon_banks)
    fused    + the fused LeakyReLU² MLP (model.fused_mlp=on: golf::leaky_relu2_mlp, CUTLASS on an H100)
    new      + the bf16 residual stream (model.bf16_stream; inert without autocast)

with what each phase dispatches: on a GPU the kernels it launches (torch.profiler), on a CPU the aten ops it runs
(views left out; each is at least one launch on a GPU); the bytes autograd saves for the backward; and tokens/s,
against the records' per-GPU pace on a GPU (R1122 ≈ 1.13M tokens/s, ANCHOR.md §11).

    python -m bench.step [--preset h100x8] [--tokens 2048] [--repeats 3] [--vocab 1024] [--baseline]
                         [--arms today,banked,fused,new] [--amp | --no-amp] [--compile | --no-compile]

One process, no communication (on several ranks banked Muon adds a reduce-scatter and an all-gather per bank;
per-matrix Muon relies on DDP's all-reduce, which both paths share for the other parameters). Tiers of the
preset's shapes with random values unless --baseline. The preset's Newton-Schulz dtype (bf16 on the GPU presets).
Autocast and torch.compile as golf.train runs them: on for CUDA, off on a CPU (where the bf16 stream needs --amp).
"""
from __future__ import annotations

import argparse
import contextlib
import time

import torch

from bench.tier_cost import random_tiers
from golf.config import resolve_config
from golf.model import TieredLM, Transformer
from golf.optim import build_optimizers

ARMS = {
    "today": [],
    "banked": ["optim.muon_banks=true"],
    "fused": ["optim.muon_banks=true", "model.fused_mlp=on"],
    "new": ["optim.muon_banks=true", "model.fused_mlp=on", "model.bf16_stream=true"],
}
PHASES = ("forward", "backward", "optimizer")
RECORD_TOKENS_PER_S = 1.13e6  # R1122 per H100 (ANCHOR.md §11)


class CountOps(torch.utils._python_dispatch.TorchDispatchMode):
    """The aten ops that compute (views left out)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += not func.is_view
        return func(*args, **(kwargs or {}))


class CountKernels:
    """The CUDA kernels launched inside the block (torch.profiler's device events)."""

    def __enter__(self):
        self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA])
        self.prof.__enter__()
        return self

    def __exit__(self, *exc):
        torch.cuda.synchronize()
        self.prof.__exit__(*exc)
        self.count = sum(1 for e in self.prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


class SavedBytes:
    """The bytes of the tensors autograd saves for the backward (each storage once)."""

    def __init__(self):
        self.storages: dict[int, int] = {}

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        self.storages[s.data_ptr()] = s.nbytes()
        return t

    @property
    def total(self) -> int:
        return sum(self.storages.values())


def phases(preset: str, arm: list[str], tokens: int, vocab: int, baseline: bool, repeats: int, device: torch.device,
           amp: bool, compile_: bool) -> dict:
    sets = [x for s in arm for x in ("--set", s)]
    cfg = resolve_config(["--preset", preset, *sets], env={})
    seq = min(cfg.train_seq_len, tokens)
    tiers = None if baseline else random_tiers(vocab, cfg.tiers, "auto")
    torch.manual_seed(0)
    lm = TieredLM.of(Transformer(cfg.model_config(vocab, 1, 0 if tiers is None else tiers.columns)), tiers, device)
    lm = lm.to(device)
    opt = build_optimizers(lm.named_parameters(), cfg.optim)
    step_lm = torch.compile(lm, dynamic=False) if compile_ else lm
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab, (tokens // seq, seq), generator=g)
    y = torch.randint(0, vocab, x.shape, generator=g)
    rows = tiers.prior_rows(x) if tiers is not None else torch.empty(*x.shape, 0, dtype=torch.int32)
    x, y, rows = x.to(device), y.to(device), rows.to(device)
    weight = 1.0 / y.numel()
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp else contextlib.nullcontext
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    saved = SavedBytes()

    def run(count: bool) -> list[tuple[float, int]]:
        """One step: (seconds, ops or kernels) of its forward, backward and optimizer."""
        out = []
        loss = None
        for phase in PHASES:
            mode = (CountKernels() if device.type == "cuda" else CountOps()) if count else None
            sync()
            t = time.perf_counter()
            with mode or contextlib.nullcontext():
                if phase == "forward":
                    hooks = torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t) if count else None
                    with autocast(), hooks or contextlib.nullcontext():
                        loss = step_lm(x, rows, y, weight).sum() * weight
                elif phase == "backward":
                    loss.backward()
                else:
                    opt.step(1.0, cfg.optim.muon_momentum)
                    opt.zero_grad()
            sync()
            out.append((time.perf_counter() - t, mode.count if mode else 0))
        return out

    for _ in range(2 if compile_ else 1):  # warm-up: compilation (a step and a recompile), momentum, allocator
        run(False)
    times = [run(False) for _ in range(repeats)]
    counts = run(True)
    med = lambda i: sorted(t[i][0] for t in times)[repeats // 2]  # noqa: E731
    result = {name: (med(i), counts[i][1]) for i, name in enumerate(PHASES)}
    result["step"] = (sorted(sum(p[0] for p in t) for t in times)[repeats // 2], sum(c[1] for c in counts))
    result["saved_bytes"] = saved.total
    result["tokens"] = x.numel()
    return result


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="h100x8")
    p.add_argument("--tokens", type=int, default=2048, help="tokens per step (sequences of the preset's length)")
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--baseline", action="store_true", help="no tiers")
    p.add_argument("--arms", default="today,banked,fused,new", help=f"a comma list of {', '.join(ARMS)}")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default: on for CUDA, off on a CPU)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the model (default: on for CUDA, off on a CPU)")
    args = p.parse_args(argv)
    arms = args.arms.split(",")
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        p.error(f"--arms: unknown {unknown}; known: {', '.join(ARMS)}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    amp = cuda if args.amp is None else args.amp
    compile_ = cuda if args.compile is None else args.compile
    unit = "kernels" if cuda else "ops"
    print(f"preset={args.preset} tokens={args.tokens} vocab={args.vocab} tiers={not args.baseline} device="
          f"{torch.cuda.get_device_name() if cuda else 'cpu'} amp={amp} compile={compile_} "
          f"threads={torch.get_num_threads()}")
    res = {arm: phases(args.preset, ARMS[arm], args.tokens, args.vocab, args.baseline, args.repeats, device, amp,
                       compile_) for arm in arms}
    base = arms[0]
    print(f"| phase | {' | '.join(f'{a} s' for a in arms)} | {' | '.join(f'{base} / {a}' for a in arms[1:])} | "
          f"{' | '.join(f'{a} {unit}' for a in arms)} |")
    print("|---" * (1 + 2 * len(arms) + len(arms) - 1) + "|")
    for phase in (*PHASES, "step"):
        secs = [res[a][phase][0] for a in arms]
        counts = [res[a][phase][1] for a in arms]
        print(f"| {phase} | {' | '.join(f'{s:.4f}' for s in secs)} | "
              f"{' | '.join(f'{secs[0] / s:.2f}x' for s in secs[1:])} | {' | '.join(f'{c:,}' for c in counts)} |")
    for a in arms:
        tps = res[a]["tokens"] / res[a]["step"][0]
        pace = f", {tps / RECORD_TOKENS_PER_S:.2f}x the records' 1.13M tokens/s per GPU" if cuda else ""
        print(f"{a}: {tps:,.0f} tokens/s{pace}; autograd saves {res[a]['saved_bytes'] / 2**20:,.1f} MiB")


if __name__ == "__main__":
    main()
