"""Arms of one golf.experiment that differ in tokenizer, compared on what they share, the bytes: the training
bytes each run's loader served (its targets, counted by the challenge's byte rule), val BPB against training
bytes, and one-sided Welch tests between arms.

    python -m bench.vocab_compare EXP_DIR [--pair A:B ...] [--out vocab.png]

Each run's batches are re-read from its summary.json's config (data_path, seed, batch and sequence length,
steps) as its loader drew them; the sums do not depend on how the run split them over ranks or micro-batches.
--pair A:B tests "A's val BPB < B's" (default: every pair of arms).
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
from pathlib import Path

import numpy as np

from golf.data import ByteTables, DistributedLoader, find_shards, load_tokenizer
from golf.stats import t_quantile, welch_less


def served_bytes(cfg: dict, steps: int) -> np.ndarray:
    """Cumulative training target bytes after each of the first `steps` steps ([steps + 1], from 0)."""
    sp = load_tokenizer(cfg["tokenizer_path"], cfg.get("vocab_size"))
    tables = ByteTables.from_tokenizer(sp)
    loader = DistributedLoader(find_shards(cfg["data_path"], "train"), seq_len=cfg["train_seq_len"],
                               global_batch_tokens=cfg["train_batch_tokens"], seed=cfg["seed"],
                               vocab_size=sp.vocab_size())
    out = np.zeros(steps + 1, dtype=np.int64)
    for step in range(steps):
        x, y = loader.batch(step, 0)
        out[step + 1] = out[step] + int(tables.target_bytes(x, y).sum())
    return out


def read_runs(exp: Path) -> dict[str, list[dict]]:
    """arm -> its finished runs: seed, val BPB, vocabulary, steps, tokens, cumulative bytes, val curve."""
    arms: dict[str, list[dict]] = {}
    for path in sorted(exp.glob("runs/*/summary.json")):
        s = json.loads(path.read_text())
        if s.get("val_bpb") is None:
            continue
        cfg, steps = s["config"], s["steps"]
        cum = served_bytes(cfg, steps)
        curve = [(int(cum[h["step"]]), h["val_bpb"]) for h in s.get("val_history", []) if h["step"] <= steps]
        arm = path.parent.name.rsplit("-s", 1)[0]
        arms.setdefault(arm, []).append({
            "seed": s["seed"], "val_bpb": s["val_bpb"], "vocab": s.get("vocab_size") or cfg.get("vocab_size"),
            "tokenizer": Path(cfg["tokenizer_path"]).name, "steps": steps, "tokens": steps * cfg["train_batch_tokens"],
            "bytes": int(cum[-1]), "curve": curve})
    return arms


def compare(a: list[float], b: list[float]) -> dict | None:
    """mean(a) - mean(b), its 95% interval (Welch) and the one-sided p of mean(a) < mean(b)."""
    test = welch_less(a, b)
    if test is None:
        return None
    diff = statistics.fmean(a) - statistics.fmean(b)
    se = (statistics.variance(a) / len(a) + statistics.variance(b) / len(b)) ** 0.5
    half = t_quantile(0.975, test["df"]) * se if se > 0 else 0.0
    return {"diff": diff, "ci95": [diff - half, diff + half], "p": test["p"]}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("exp", type=Path, help="a golf.experiment --out folder")
    p.add_argument("--pair", action="append", default=[], metavar="A:B")
    p.add_argument("--out", type=Path, default=None, help="the plot (default EXP/vocab_bytes.png)")
    args = p.parse_args(argv)
    arms = read_runs(args.exp)
    if not arms:
        raise SystemExit(f"{args.exp}: no finished runs under runs/*/summary.json")
    pairs = [tuple(x.split(":", 1)) for x in args.pair] or list(itertools.combinations(arms, 2))
    for a, b in pairs:
        for name in (a, b):
            if name not in arms:
                raise SystemExit(f"--pair {a}:{b}: no finished runs of arm {name!r} (arms: {', '.join(arms)})")

    print("| arm | tokenizer | seeds | steps | training tokens | training bytes (mean) | bytes/token | "
          "val BPB, mean ± std | per seed |")
    print("|---|---|---|---|---|---|---|---|---|")
    for arm, runs in arms.items():
        bpb = [r["val_bpb"] for r in runs]
        byt = statistics.fmean(r["bytes"] for r in runs)
        std = f" ± {statistics.stdev(bpb):.4f}" if len(bpb) > 1 else ""
        print(f"| {arm} | {runs[0]['tokenizer']} | {len(runs)} | {runs[0]['steps']:,} | {runs[0]['tokens']:,} | "
              f"{byt:,.0f} | {byt / runs[0]['tokens']:.4f} | {statistics.fmean(bpb):.4f}{std} | "
              f"{', '.join(f'{v:.4f}' for v in bpb)} |")
    print()
    print("| A | B | A − B (95% CI) | p (A < B, Welch one-sided) |")
    print("|---|---|---|---|")
    for a, b in pairs:
        c = compare([r["val_bpb"] for r in arms[a]], [r["val_bpb"] for r in arms[b]])
        if c is None:
            print(f"| {a} | {b} | — | — |")
            continue
        print(f"| {a} | {b} | {c['diff']:+.4f} ({c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}) | {c['p']:.2g} |")

    out = args.out or args.exp / "vocab_bytes.png"
    try:
        import matplotlib
    except ImportError:
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (arm, runs) in enumerate(arms.items()):
        curves = [r["curve"] for r in runs if len(r["curve"]) > 1]
        if not curves:
            continue
        grid = np.linspace(max(c[0][0] for c in curves), min(c[-1][0] for c in curves), 60)
        ys = np.array([np.interp(grid, [b for b, _ in c], [v for _, v in c]) for c in curves])
        ax.plot(grid / 1e6, ys.mean(0), color=f"C{i}", label=f"{arm} ({runs[0]['tokenizer']}, n={len(curves)})")
        ax.fill_between(grid / 1e6, ys.mean(0) - ys.std(0), ys.mean(0) + ys.std(0), color=f"C{i}", alpha=0.2)
    lo = min(r["val_bpb"] for runs in arms.values() for r in runs)
    ax.set_ylim(lo - 0.05, lo + 0.6)
    ax.set_xlabel("training bytes served (millions)")
    ax.set_ylabel("val BPB (plain eval)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
