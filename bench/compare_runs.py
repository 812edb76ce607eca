"""Runs side by side: train loss and val BPB against training seconds, from each run's log.txt.
    python -m bench.compare_runs RUN_DIR [RUN_DIR ...] [--out compare.png]
Prints one row per run from its summary.json (steps, ms/step, tokens/s, tiers-only, float, roundtrip and sliding
BPB, total bytes) and writes one PNG with every run's curves: train loss, and val BPB at the periodic evals plus
the final float eval. The x axis is the loop timer (compile warm-up and evals left out, as in ANCHOR.md §5).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def read_log(path: Path) -> dict[str, list[tuple[float, float]]]:
    """(train_seconds, value) pairs of the train loss and the periodic val BPB in a run's log.txt."""
    curves: dict[str, list[tuple[float, float]]] = {"loss": [], "val_bpb": []}
    for line in path.read_text().splitlines():
        fields = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        event, t = fields.get("event"), fields.get("train_seconds")
        if t is None:
            continue
        if event == "train" and "loss" in fields:
            curves["loss"].append((float(t), float(fields["loss"])))
        elif event == "val" and "val_bpb" in fields:
            curves["val_bpb"].append((float(t), float(fields["val_bpb"])))
    return curves


def fmt(x, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", type=Path, nargs="+", help="run directories (runs/<run_id>)")
    p.add_argument("--out", type=Path, default=Path("compare.png"))
    args = p.parse_args(argv)
    for run in args.runs:
        for name in ("summary.json", "log.txt"):
            if not (run / name).is_file():
                p.error(f"{run}: no {name} there (expected a run directory, runs/<run_id>)")
    summaries = {run: json.loads((run / "summary.json").read_text()) for run in args.runs}

    print(f"{'run':<24}{'steps':>7}{'ms/step':>10}{'tokens/s':>12}{'tiers-only':>12}{'float':>9}"
          f"{'roundtrip':>11}{'sliding':>9}{'total bytes':>13}")
    for run, s in summaries.items():
        print(f"{run.name:<24}{s.get('steps', 0):>7}{fmt(s.get('ms_per_step'), '.2f'):>10}"
              f"{fmt(s.get('tokens_per_s'), ',.0f'):>12}{fmt(s.get('tiers_only_bpb'), '.4f'):>12}"
              f"{fmt(s.get('float_val_bpb'), '.4f'):>9}{fmt(s.get('roundtrip_val_bpb'), '.4f'):>11}"
              f"{fmt(s.get('sliding_val_bpb'), '.4f'):>9}{fmt(s.get('total_bytes'), ','):>13}")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
    for run, s in summaries.items():
        curves = read_log(run / "log.txt")
        if s.get("float_val_bpb") is not None and s.get("train_seconds") is not None:
            curves["val_bpb"].append((s["train_seconds"], s["float_val_bpb"]))  # the final (float) eval
        for ax, key in ((ax_loss, "loss"), (ax_val, "val_bpb")):
            if curves[key]:
                ax.plot(*zip(*curves[key]), marker="." if key == "val_bpb" else None, label=run.name)
    ax_loss.set(xlabel="training seconds", ylabel="train loss (nats)", title="train loss")
    ax_val.set(xlabel="training seconds", ylabel="val BPB", title="val BPB (periodic evals)")
    for ax in (ax_loss, ax_val):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
