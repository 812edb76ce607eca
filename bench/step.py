"""One training step of a preset's model broken down: forward, backward, optimizer, for each optimizer path side
by side (per-matrix Muon, today's default, and banked Muon, `optim.muon_banks`), with the ops each phase
dispatches (views left out; on a GPU each is at least one kernel launch).

    python -m bench.step [--preset h100x8] [--tokens 2048] [--repeats 3] [--vocab 1024] [--baseline]

One process, no communication (on several ranks banked Muon adds a reduce-scatter and an all-gather per bank;
per-matrix Muon relies on DDP's all-reduce, which both paths share for the other parameters). Tiers of the
preset's shapes with random values unless --baseline. The preset's own Newton-Schulz dtype (bf16 on the GPU
presets), so CPU seconds compare the two paths, not a GPU's.
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


class CountOps(torch.utils._python_dispatch.TorchDispatchMode):
    """The aten ops that compute (views left out)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += not func.is_view
        return func(*args, **(kwargs or {}))


def phases(preset: str, banks: bool, tokens: int, vocab: int, baseline: bool, repeats: int) -> dict:
    cfg = resolve_config(["--preset", preset, "--set", f"optim.muon_banks={str(banks).lower()}"], env={})
    seq = min(cfg.train_seq_len, tokens)
    tiers = None if baseline else random_tiers(vocab, cfg.tiers, "auto")
    torch.manual_seed(0)
    lm = TieredLM.of(Transformer(cfg.model_config(vocab, 1, 0 if tiers is None else tiers.columns)), tiers)
    opt = build_optimizers(lm.named_parameters(), cfg.optim)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab, (tokens // seq, seq), generator=g)
    y = torch.randint(0, vocab, x.shape, generator=g)
    rows = tiers.prior_rows(x) if tiers is not None else torch.empty(*x.shape, 0, dtype=torch.int32)
    weight = 1.0 / y.numel()

    def run(count: bool) -> list[tuple[float, int]]:
        """One step: (seconds, ops) of its forward, backward and optimizer."""
        out = []
        loss = None
        for phase in ("forward", "backward", "optimizer"):
            mode = CountOps() if count else None
            t = time.perf_counter()
            with mode or contextlib.nullcontext():
                if phase == "forward":
                    loss = lm(x, rows, y, weight).sum() * weight
                elif phase == "backward":
                    loss.backward()
                else:
                    opt.step(1.0, cfg.optim.muon_momentum)
                    opt.zero_grad()
            out.append((time.perf_counter() - t, mode.count if mode else 0))
        return out

    run(False)  # warm-up: momentum buffers, allocator
    times = [run(False) for _ in range(repeats)]
    ops = run(True)
    med = lambda i: sorted(t[i][0] for t in times)[repeats // 2]  # noqa: E731
    result = {name: (med(i), ops[i][1]) for i, name in enumerate(("forward", "backward", "optimizer"))}
    result["step"] = (sorted(sum(p[0] for p in t) for t in times)[repeats // 2], sum(o[1] for o in ops))
    return result


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="h100x8")
    p.add_argument("--tokens", type=int, default=2048, help="tokens per step (one sequence of the preset's length)")
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--baseline", action="store_true", help="no tiers")
    args = p.parse_args(argv)
    print(f"preset={args.preset} tokens={args.tokens} vocab={args.vocab} tiers={not args.baseline} "
          f"threads={torch.get_num_threads()}")
    res = {label: phases(args.preset, banks, args.tokens, args.vocab, args.baseline, args.repeats)
           for label, banks in (("per-matrix", False), ("banked", True))}
    print("| phase | per-matrix s | banked s | per-matrix / banked | per-matrix ops | banked ops | ops ratio |")
    print("|---|---|---|---|---|---|---|")
    for phase in ("forward", "backward", "optimizer", "step"):
        (ta, na), (tb, nb) = res["per-matrix"][phase], res["banked"][phase]
        print(f"| {phase} | {ta:.3f} | {tb:.3f} | {ta / tb:.2f}x | {na:,} | {nb:,} | {na / max(nb, 1):.1f}x |")


if __name__ == "__main__":
    main()
