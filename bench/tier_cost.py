"""What the tiers cost a training step at large vocabularies: the h100x8 model's step (forward + backward) with
no tiers, with tier 1 as dense rows, as golf's factored rows (LowRank.batch_tables: the tier-1 rows a batch
names, each once, from two GEMMs, read by the unchanged loss op), and as the alternative measured against it, a
low-rank logit term added to softcap(l2) before the op (one GEMM forward, one backward for the gates' gradient).
Also the priors' memory, the rows a batch materialises at the preset's per-device batch, and per-token FLOPs
and bytes derived for an H100.

    python -m bench.tier_cost [--vocab 1024 8192] [--tokens 2048] [--repeats 3] [--preset h100x8]
                              [--shard V=PATH ...]

Tiers of the preset's shapes with random values (the cost does not depend on them). Ids are random in [0, V)
(the worst case for the factored rows: few repeat) unless `--shard 8192=DIR/fineweb_train_000000.bin` gives a
tokenised text for that V. The isolated rows time only what differs between the arms: the loss op with the
tiers' inputs against the same op with no prior rows, on the same logits.
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from bench.common import median_seconds
from golf import ops
from golf.config import resolve_config
from golf.model import TieredLM, Transformer
from golf.tiers import C, NUM_STATES, Tier0, Tier1, TierConfig, Tiers, Vocab

# H100 SXM datasheet peaks (dense, no sparsity). The tier-1 GEMMs run in fp32 on TF32 tensor cores (golf.train
# allows TF32); factor gathers inside the row kernel would run on the fp32 CUDA cores.
H100_TF32_FLOPS = 494e12
H100_FP32_FLOPS = 67e12
H100_BYTES_S = 3.35e12


def random_tiers(v: int, cfg: TierConfig, form: str, seed: int = 0) -> Tiers:
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g) * 0.1  # noqa: E731
    classes = torch.randint(0, C, (v,), generator=g)
    zeros = torch.zeros(v, dtype=torch.long)
    vocab = Vocab(classes, zeros, zeros, zeros, bos_id=1)
    tier0 = Tier0(classes, r(NUM_STATES, C), r(v).half())
    tier1 = Tier1(r(v, cfg.prev_rank), r(v, cfg.prev_rank), r(cfg.pair_rows, cfg.pair_rank), r(v, cfg.pair_rank))
    return Tiers(vocab, tier0, tier1, dataclasses.replace(cfg, tier1_form=form))


class AdditiveLowRank(TieredLM):
    """The alternative to golf's factored rows: the low-rank term as logits added after the softcap, the op's own
    cap then 0 (its gradient reaches the gates through a second GEMM)."""

    def forward(self, x, rows, y, grad_weight=None):
        t = self.transformer
        h = t.hidden(x)
        l2 = F.linear(h, t.head_weight.to(h.dtype)).reshape(x.numel(), -1).float()
        k = rows.size(-1)
        return self.loss_of(l2, rows.reshape(x.numel(), k), t.prior_scales(h).reshape(x.numel(), k), y.reshape(-1),
                            grad_weight)

    def loss_of(self, l2, rows, scales, y, grad_weight=1.0):
        t, k, n = self.transformer, rows.shape[1], self.lowrank.columns
        f = torch.cat([e[rows[:, k - n + c].long().clamp(min=0)] * (scales[:, k - n + c, None] *
                                                                     (rows[:, k - n + c] >= 0)[:, None])
                       for c, e in enumerate(self.lowrank.embeds)], 1)
        z = t.softcap * torch.tanh(l2 / t.softcap) + f @ torch.cat(self.lowrank.bases, 1).T
        return ops.tiered_nll(z, self.prior_tables, rows[:, :k - n].contiguous(), y, 0.0, grad_weight,
                              scales[:, :k - n].contiguous())


def step_seconds(lm: TieredLM, x, rows, y, repeats: int) -> float:
    params = [p for p in lm.parameters() if p.requires_grad]

    def step():
        for p in params:
            p.grad = None
        (lm(x, rows, y, grad_weight=1.0 / y.numel()).sum() / y.numel()).backward()

    return median_seconds(step, repeats)


def ids_for(v: int, n: int, shards: dict[int, str], seed: int = 0) -> torch.Tensor:
    if v in shards:
        from golf.data import load_shard

        ids = torch.from_numpy(np.asarray(load_shard(shards[v])[:n]).astype(np.int64))
        if ids.numel() < n or int(ids.max()) >= v:
            raise SystemExit(f"--shard {v}={shards[v]}: needs {n:,} ids below {v}")
        return ids
    return torch.randint(0, v, (n,), generator=torch.Generator().manual_seed(seed))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, nargs="+", default=[1024, 8192])
    p.add_argument("--tokens", type=int, default=2048, help="tokens per step (one sequence of the preset's length)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--preset", default="h100x8")
    p.add_argument("--arms", nargs="+", default=["baseline", "dense", "factored", "additive"])
    p.add_argument("--shard", nargs="*", default=[], metavar="V=PATH", help="token ids for vocabulary V")
    args = p.parse_args()
    shards = {int(a.split("=", 1)[0]): a.split("=", 1)[1] for a in args.shard}
    cfg = resolve_config(["--preset", args.preset], env={})
    seq = min(cfg.train_seq_len, args.tokens)
    per_device = cfg.train_batch_tokens // cfg.batch_devices
    print(f"preset={args.preset} tokens/step={args.tokens} seq={seq} threads={torch.get_num_threads()} "
          f"tiers: prev_rank={cfg.tiers.prev_rank} pair_rank={cfg.tiers.pair_rank} pair_rows={cfg.tiers.pair_rows}")
    for v in args.vocab:
        torch.manual_seed(0)
        source = f"shard {shards[v]}" if v in shards else "random ids"
        x = ids_for(v, args.tokens, shards).view(-1, seq)
        y = torch.randint(0, v, x.shape)
        tiers = {form: random_tiers(v, cfg.tiers, form) for form in ("dense", "factored")}
        rows = {form: t.prior_rows(x) for form, t in tiers.items()}
        results = {}
        for arm in args.arms:
            form = "factored" if arm == "additive" else arm
            t = tiers.get(form)
            transformer = Transformer(cfg.model_config(v, 1, 0 if t is None else t.columns))
            lm = TieredLM.of(transformer, t) if arm != "additive" else AdditiveLowRank(
                transformer, t.prior_tables(), False, lowrank=t.lowrank())
            r = rows[form] if t is not None else torch.empty(*x.shape, 0, dtype=torch.int32)
            sec = step_seconds(lm, x, r, y, args.repeats)
            mib = 0 if t is None else t.prior_nbytes() / 2**20
            results[arm] = sec
            print(f"V={v} ({source}) arm={arm:9s} step_s={sec:.3f} "
                  f"vs_baseline={sec / results.get('baseline', sec):.3f} prior_MiB={mib:.1f}")
        # Isolated: the loss op alone on fixed logits, with each arm's prior inputs, against no prior rows.
        n = x.numel()
        l2 = torch.randn(n, v) * 5
        scales = torch.rand(n, 3) + 0.5
        yy = y.reshape(-1)

        def loss(fn):
            def run():
                a = l2.clone().requires_grad_()
                s = scales.clone().requires_grad_()
                fn(a, s).sum().backward()
            return median_seconds(run, args.repeats)

        none = loss(lambda a, s: ops.tiered_nll(a, torch.zeros(0, v), torch.empty(n, 0, dtype=torch.int32), yy,
                                                30.0, 1.0))
        dense_t = tiers["dense"].prior_tables()
        dense = loss(lambda a, s: ops.tiered_nll(a, dense_t, rows["dense"].reshape(n, 3), yy, 30.0, 1.0, s))
        fac = tiers["factored"]
        lm_f = TieredLM.of(Transformer(cfg.model_config(v, 1, 3)), fac)
        fact = loss(lambda a, s: ops.tiered_nll(a, *lm_f.tables_for(rows["factored"].reshape(n, 3)), yy, 30.0, 1.0,
                                                s))
        add_lm = AdditiveLowRank(Transformer(cfg.model_config(v, 1, 3)), fac.prior_tables(), False,
                                 lowrank=fac.lowrank())
        add = loss(lambda a, s: add_lm.loss_of(a, rows["factored"].reshape(n, 3), s, yy))
        step = results.get("baseline", float("nan"))
        print(f"V={v} isolated loss (forward + backward, ms): none {none * 1e3:.1f}; dense {dense * 1e3:.1f} "
              f"(+{(dense - none) * 1e3:.1f}, {(dense - none) / step:.1%} of the tier-2 step); "
              f"factored {fact * 1e3:.1f} (+{(fact - none) * 1e3:.1f}, {(fact - none) / step:.1%}); "
              f"additive {add * 1e3:.1f} (+{(add - none) * 1e3:.1f}, {(add - none) / step:.1%}); "
              f"tier-2 step {step:.3f} s")
        # The rows one device's batch materialises (tier 0's S, then each named tier-1 row once).
        big = fac.prior_rows(ids_for(v, per_device, shards, seed=1)).reshape(per_device, 3)
        named = [int(torch.unique(big[:, c][big[:, c] >= 0]).numel()) for c in (1, 2)]
        made = sum(named)
        print(f"V={v} per device ({per_device:,} tokens, {source}): tier-1 rows made {named[0]:,} + {named[1]:,} "
              f"= {made / per_device:.3f} per token, {(NUM_STATES + made) * v * 4 / 2**20:.0f} MiB of batch tables "
              f"(one row per position and column: {2 * per_device * v * 4 / 2**20:,.0f} MiB)")
        r_total = cfg.tiers.prev_rank + cfg.tiers.pair_rank
        per_tok = made / per_device
        flops = 2 * v * r_total * per_tok        # the two GEMMs, forward only (the gates' gradient is in-kernel)
        bytes_ = 4 * v * per_tok + 3 * 4 * v     # write the rows made once, read three fp32 rows per token
        ns = (flops / H100_TF32_FLOPS + bytes_ / H100_BYTES_S) * 1e9
        dense_ns = 3 * 4 * v / H100_BYTES_S * 1e9
        add_flops = 4 * v * r_total
        add_bytes = 36 * v                       # l1 write/read, z write/read, dz write/read, l2 and dl2 again
        add_ns = (add_flops / H100_TF32_FLOPS + add_bytes / H100_BYTES_S) * 1e9
        print(f"V={v} derived for an H100 per token: factored {flops / 1e6:.2f} MFLOP + {bytes_ / 1e3:.0f} KB = "
              f"{ns:.0f} ns (dense rows: {3 * 4 * v / 1e3:.0f} KB = {dense_ns:.0f} ns); additive "
              f"{add_flops / 1e6:.1f} MFLOP + {add_bytes / 1e3:.0f} KB = {add_ns:.0f} ns; factor gathers in the "
              f"row kernel (CUDA cores) {4 * v * r_total / H100_FP32_FLOPS * 1e9:.0f} ns")


if __name__ == "__main__":
    main()
