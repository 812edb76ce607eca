"""Score-first TTT against the fixed predictor on the same artifacts: every run of a golf.experiment directory
scored through golf.scoring.score_artifact by the sliding eval of its own config and by `--method ttt`, on the same
val tokens.

    python -m bench.ttt exp/ttt_cpu [--val-tokens 65536] [--ttt KEY=VALUE ...] [--out exp/ttt_cpu/ttt.json]

Prints per run the BPBs (and TTT's with lr 0: its document-bounded chunk contexts without learning), TTT minus
sliding and the eval seconds; per arm the mean difference with its paired
one-sided t-test (TTT lower), and between arms the TTT BPBs' one-sided Welch test (golf.stats).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
from dataclasses import replace
from pathlib import Path

import torch

from golf.config import config_from_dict
from golf.data import ByteTables, load_tokenizer
from golf.eval import ttt_config
from golf.export import load_model
from golf.scoring import eval_spec, score_artifact, val_tokens
from golf.stats import student_t_cdf, welch_less


def paired_less(diffs: list[float]) -> dict | None:
    """One-sided paired t-test of mean(diffs) < 0: {"mean", "t", "p"}; None below 2 pairs."""
    if len(diffs) < 2:
        return None
    mean, sd = statistics.mean(diffs), statistics.stdev(diffs)
    if sd == 0:  # identical differences: certain in their direction
        return {"mean": mean, "t": math.copysign(math.inf, mean), "p": 0.0 if mean < 0 else 1.0}
    t = mean / (sd / math.sqrt(len(diffs)))
    return {"mean": mean, "t": t, "p": student_t_cdf(t, len(diffs) - 1)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("exp", type=Path, help="a golf.experiment --out directory")
    p.add_argument("--val-tokens", type=int, default=65536, help="targets scored by both methods (0: all)")
    p.add_argument("--ttt", action="append", default=[], metavar="KEY=VALUE", help="a golf.ttt.TTTConfig setting")
    p.add_argument("--data-path", default=None, help="default: each run's data_path")
    p.add_argument("--tokenizer-path", default=os.environ.get("TOKENIZER_PATH"), help="default: each run's")
    p.add_argument("--out", type=Path, default=None, help="JSON of every number (default: EXP/ttt.json)")
    args = p.parse_args(argv)
    ttt = ttt_config(args.ttt)
    rows = []
    print(f"{'run':<16}{'sliding':>10}{'ttt lr 0':>10}{'ttt':>10}{'ttt - sl':>10}{'sliding s':>11}{'ttt s':>9}")
    for run in sorted((args.exp / "runs").iterdir()):
        if not (run / "model.golf").is_file():
            continue
        raw = json.loads((run / "summary.json").read_text())["config"]
        cfg = config_from_dict(raw)  # without where the run happened (data, tokenizer): those from raw
        data = args.data_path or raw["data_path"]
        loaded = load_model(run / "model.golf")
        sp = load_tokenizer(args.tokenizer_path or raw["tokenizer_path"], loaded.config["vocab_size"])
        tables = ByteTables.from_tokenizer(sp)
        spec = eval_spec(cfg).replace(val_tokens=args.val_tokens, budget_seconds=0, ttt=ttt)
        got = {}
        for name, s in (("sliding", spec), ("still", spec.replace(method="ttt", ttt=replace(ttt, lr=0.0))),
                        ("ttt", spec.replace(method="ttt"))):
            tokens, _ = val_tokens(data, loaded.config["vocab_size"], s)
            got[name] = score_artifact(loaded, s, tokens, byte_tables=tables, progress=False)
        sl, st, tt = got["sliding"], got["still"], got["ttt"]
        assert sl.targets == st.targets == tt.targets and sl.bytes == tt.bytes  # the same tokens
        row = {"run": run.name, "arm": run.name.rsplit("-s", 1)[0], "sliding_bpb": sl.val_bpb,
               "still_bpb": st.val_bpb, "ttt_bpb": tt.val_bpb, "diff": tt.val_bpb - sl.val_bpb,
               "sliding_s": sl.seconds, "still_s": st.seconds, "ttt_s": tt.seconds, "targets": tt.targets,
               "ttt_info": tt.info}
        rows.append(row)
        print(f"{run.name:<16}{sl.val_bpb:>10.4f}{st.val_bpb:>10.4f}{tt.val_bpb:>10.4f}{row['diff']:>+10.4f}"
              f"{sl.seconds:>11.1f}{tt.seconds:>9.1f}", flush=True)
    arms = {}
    for row in rows:
        arms.setdefault(row["arm"], []).append(row)
    print(f"\n{'arm':<12}{'seeds':>6}{'sliding':>10}{'ttt lr 0':>10}{'ttt':>10}{'ttt - sl':>10}{'p (paired)':>12}"
          f"{'ttt s':>9}")
    summary = {}
    for arm, rs in arms.items():
        test = paired_less([r["diff"] for r in rs])
        summary[arm] = {"seeds": len(rs), "sliding_bpb": statistics.mean(r["sliding_bpb"] for r in rs),
                        "still_bpb": statistics.mean(r["still_bpb"] for r in rs),
                        "ttt_bpb": statistics.mean(r["ttt_bpb"] for r in rs), "paired": test,
                        "ttt_s": statistics.median(r["ttt_s"] for r in rs),
                        "sliding_s": statistics.median(r["sliding_s"] for r in rs)}
        a = summary[arm]
        print(f"{arm:<12}{len(rs):>6}{a['sliding_bpb']:>10.4f}{a['still_bpb']:>10.4f}{a['ttt_bpb']:>10.4f}"
              f"{a['ttt_bpb'] - a['sliding_bpb']:>+10.4f}{(test or {}).get('p', float('nan')):>12.2g}{a['ttt_s']:>9.1f}")
    if "tiered" in arms and "baseline" in arms:
        for method in ("sliding", "ttt"):
            w = welch_less([r[f"{method}_bpb"] for r in arms["tiered"]], [r[f"{method}_bpb"] for r in arms["baseline"]])
            summary[f"tiered_vs_baseline_{method}"] = w
            if w is not None:
                print(f"tiered < baseline with {method}: p = {w['p']:.2g}")
    out = args.out or args.exp / "ttt.json"
    out.write_text(json.dumps({"ttt": vars(ttt), "val_tokens": args.val_tokens, "runs": rows, "arms": summary},
                              indent=1, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    main()
