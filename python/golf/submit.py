"""python -m golf.submit RUN_DIR [RUN_DIR ...] --name NAME --author NAME --github-id ID --out DIR
                        [--blurb TEXT] [--date YYYY-MM-DD] [--sota-loss NATS]

A records-style submission folder from finished runs of one config (one run per seed):
    train_gpt.py          golf's sources and the runs' config in one file (golf.bundle): the code that counts.
                          `torchrun --standalone --nproc_per_node=8 train_gpt.py` (GPUs) or `python train_gpt.py`
                          (CPU) in that folder reproduces the run (SEED=<n> for another seed)
    requirements.txt      what it needs besides Python
    README.md             what it is, how to run it, each seed's val_loss / val_bpb / bytes / steps / ms per step,
                          mean ± std, and with --sota-loss the challenge's significance test
    submission.json       author, github_id, name, blurb, date, val_loss, val_bpb (means), bytes_total (the largest
                          run's artifact + code), bytes_code
    train_seed<SEED>.log  each run's log.txt
Checked before anything is written (a ConfigError naming the run or argument, exit 2): every RUN_DIR has
summary.json and model.golf and finished without an error; every model.golf loads with all its checksums
(golf.artifact.load), its header names the run that summary.json describes (the run's seed and steps; its
run_id, preset, baseline and git_sha, train_seq_len, vocab_size and the model and tier settings where both
record them) and its size is the summary's artifact_bytes; the runs' configs agree but for the seed (and where
each ran: config.RUN_LOCAL); every run's model.golf + train_gpt.py fits 16,000,000 bytes; DIR is absent or empty.
--sota-loss: the challenge's rule, a one-sided t-test that the mean val_loss is below SOTA - 0.005 nats (p is
printed and goes into the README). The folder appears whole or not at all (written beside DIR, then renamed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

from golf import artifact, bundle
from golf.config import RUN_LOCAL
from golf.errors import ArtifactError, ConfigError, GolfError
from golf.sizes import CAP_BYTES
from golf.stats import student_t_cdf

MARGIN_NATS = 0.005  # a new record must beat the previous one by this much (the challenge's rule)
REQUIREMENTS = ("torch>=2.11", "numpy>=1.24", "sentencepiece>=0.2", "matplotlib>=3.7", "cmake>=3.25", "ninja")


def read_run(path: Path) -> dict:
    summary_path, model = path / "summary.json", path / "model.golf"
    for p in (summary_path, model):
        if not p.is_file():
            raise ConfigError(f"{path}: not a finished golf run ({p.name} is missing)")
    try:
        summary = json.loads(summary_path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{summary_path}: not valid JSON ({exc})") from exc
    if summary.get("error"):
        raise ConfigError(f"{path}: the run ended with an error: {summary['error']}")
    for key in ("config", "val_loss", "val_bpb", "steps", "artifact_bytes"):
        if summary.get(key) is None:
            raise ConfigError(f"{summary_path}: no {key!r} (a run with --no-export cannot be submitted)")
    return {"dir": path, "summary": summary, "artifact_bytes": check_artifact(path, summary),
            "log": path / "log.txt", "seed": summary["config"].get("seed")}


def header_mismatches(header: dict, summary: dict) -> list[str]:
    """Where model.golf's header config (export_model's) contradicts summary.json, as 'field: expected E, found F'.
    Seed and steps must be in both; the rest is compared where both record it (None: unset or derived, e.g.
    rope_dims from the head size)."""
    cfg, run = summary["config"], header.get("run") or {}
    required = [("seed", cfg.get("seed"), run.get("seed")), ("steps", summary["steps"], run.get("steps"))]
    pairs = [("run_id", cfg.get("run_id"), run.get("run_id")), ("preset", cfg.get("preset"), run.get("preset")),
             ("baseline", cfg.get("baseline"), run.get("baseline")),
             ("git_sha", summary.get("git_sha"), run.get("git_sha")),
             ("train_seq_len", cfg.get("train_seq_len"), header.get("train_seq_len")),
             ("vocab_size", cfg.get("vocab_size"), header.get("vocab_size"))]
    # The header holds every ModelConfig/TierConfig field; the summary's model holds only those set (a preset's).
    for section in ("model", "tiers"):
        want, got = cfg.get(section), header.get(section)
        if isinstance(want, dict) and isinstance(got, dict):
            pairs += [(f"{section}.{k}", want[k], got[k]) for k in want if k in got]
    pairs = [p for p in pairs if p[1] is not None and p[2] is not None]
    return [f"{name}: expected {want!r}, found {got!r}" for name, want, got in required + pairs if want != got]


def check_artifact(path: Path, summary: dict) -> int:
    """model.golf's size once its checksums, its run and its size agree with summary.json (ConfigError if not):
    a truncated file or one left by another run under the same RUN_ID must not be submitted with these numbers."""
    try:
        art = artifact.load(path / "model.golf")
    except ArtifactError as exc:
        raise ConfigError(f"{path}: model.golf does not load ({exc})") from exc
    differ = header_mismatches(art.config, summary)
    if differ:
        raise ConfigError(f"{path}: model.golf is not the run summary.json describes (expected from summary.json, "
                          f"found in model.golf's header): {'; '.join(differ)}")
    if art.file_bytes != summary["artifact_bytes"]:
        raise ConfigError(f"{path}: model.golf's size is not summary.json's artifact_bytes (expected "
                          f"{summary['artifact_bytes']:,}, found {art.file_bytes:,} bytes)")
    return art.file_bytes


def common_config(runs: list[dict]) -> dict:
    """The runs' shared config (the first run's seed): ConfigError naming what differs between them."""
    def portable(cfg: dict) -> dict:
        return {k: v for k, v in cfg.items() if k not in RUN_LOCAL and k != "seed"}

    first = portable(runs[0]["summary"]["config"])
    for run in runs[1:]:
        other = portable(run["summary"]["config"])
        differ = sorted(k for k in set(first) | set(other) if first.get(k) != other.get(k))
        if differ:
            raise ConfigError(f"{run['dir']}: its config differs from {runs[0]['dir']}'s in {differ} (a submission is "
                              "one config over several seeds)")
    seeds = [r["seed"] for r in runs]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"the runs repeat a seed ({seeds}): give one run per seed")
    return {**first, "seed": runs[0]["seed"]}


def significance(losses: list[float], sota: float) -> dict:
    """The one-sided one-sample t-test of mean(losses) < sota - MARGIN_NATS: t, df, p (None below two runs)."""
    threshold = sota - MARGIN_NATS
    n = len(losses)
    if n < 2:
        return {"threshold": threshold, "n": n, "t": None, "p": None}
    sd = statistics.stdev(losses)
    mean = statistics.fmean(losses)
    if sd == 0:
        t = -math.inf if mean < threshold else math.inf
        return {"threshold": threshold, "n": n, "t": t, "p": 0.0 if mean < threshold else 1.0}
    t = (mean - threshold) / (sd / math.sqrt(n))
    return {"threshold": threshold, "n": n, "t": t, "p": student_t_cdf(t, n - 1)}


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"


def readme(args, runs: list[dict], code: int, test: dict | None) -> str:
    s0 = runs[0]["summary"]
    cfg = s0["config"]
    rows = "\n".join(
        f"| {r['seed']} | {r['summary']['val_loss']:.4f} | {r['summary']['val_bpb']:.4f} | {r['artifact_bytes']:,} | "
        f"{r['artifact_bytes'] + code:,} | {r['summary']['steps']:,} | "
        f"{(r['summary'].get('ms_per_step') or float('nan')):.1f} |" for r in runs)
    losses = [r["summary"]["val_loss"] for r in runs]
    bpbs = [r["summary"]["val_bpb"] for r in runs]
    lines = [f"# {args.name}", "", args.blurb or "", "",
             f"golf (a Tiered Residual Predictor: counting priors for token classes and short contexts, plus a "
             f"transformer trained on what they miss), preset `{cfg.get('preset')}`"
             f"{' (--baseline: no tiers)' if cfg.get('baseline') else ''}, by {args.author} (@{args.github_id}), "
             f"{args.date}.", "",
             "## Results", "",
             "| seed | val_loss | val_bpb | artifact bytes | total bytes | steps | ms/step |", "|---|---|---|---|---|---|---|",
             rows, "", f"Mean ± std over {len(runs)} seed(s): val_loss {_mean_std(losses)} nats, "
             f"val_bpb {_mean_std(bpbs)}. Code: `train_gpt.py`, {code:,} bytes.", ""]
    if test is not None:
        p = "n/a (one run)" if test["p"] is None else f"{test['p']:.3g}"
        t = "n/a" if test["t"] is None else f"{test['t']:.3f}"
        lines += [f"Significance: one-sided t-test that the mean val_loss is below {args.sota_loss} − "
                  f"{MARGIN_NATS} = {test['threshold']:.4f} nats: t = {t}, df = {max(test['n'] - 1, 0)}, p = {p}.",
                  ""]
    seeds = ", ".join(f"SEED={r['seed']}" for r in runs)
    lines += ["## Running it", "",
              "From this folder alone (Python 3.10+, the packages of requirements.txt, a C++ compiler; CUDA for "
              "the GPU kernels):", "", "```bash",
              "torchrun --standalone --nproc_per_node=8 train_gpt.py   # 8 GPUs",
              "python train_gpt.py                                     # CPU", "```", "",
              "`train_gpt.py` unpacks golf's sources into `golf_src/` beside it and builds its C++/CUDA extension "
              "there (once; nothing is installed), then trains with the config it carries. The challenge's "
              "environment names apply (`DATA_PATH`, `TOKENIZER_PATH`, `SEED`, `MAX_WALLCLOCK_SECONDS`, ...), and "
              f"flags override them as in `python -m golf.train`. The seeds above: {seeds}.", ""]
    return "\n".join(lines)


def build(args) -> dict:
    if not args.runs:
        raise ConfigError("give at least one RUN_DIR")
    runs = [read_run(Path(p)) for p in args.runs]
    config = common_config(runs)
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out}: exists and is not an empty folder (nothing written)")
    script = bundle.train_gpt(config)
    code = len(script)
    for r in runs:
        if r["artifact_bytes"] + code > CAP_BYTES:
            raise ConfigError(f"{r['dir']}: model.golf {r['artifact_bytes']:,} + train_gpt.py {code:,} = "
                              f"{r['artifact_bytes'] + code:,} bytes: over the cap of {CAP_BYTES:,}")
    test = significance([r["summary"]["val_loss"] for r in runs], args.sota_loss) if args.sota_loss is not None \
        else None
    submission = {"author": args.author, "github_id": args.github_id, "name": args.name, "blurb": args.blurb or "",
                  "date": args.date, "val_loss": statistics.fmean(r["summary"]["val_loss"] for r in runs),
                  "val_bpb": statistics.fmean(r["summary"]["val_bpb"] for r in runs),
                  "bytes_total": max(r["artifact_bytes"] for r in runs) + code, "bytes_code": code}
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        (tmp / "train_gpt.py").write_bytes(script)
        (tmp / "requirements.txt").write_text("\n".join(REQUIREMENTS) + "\n")
        (tmp / "README.md").write_text(readme(args, runs, code, test))
        (tmp / "submission.json").write_text(json.dumps(submission, indent=2) + "\n")
        for r in runs:
            if r["log"].is_file():
                shutil.copy2(r["log"], tmp / f"train_seed{r['seed']}.log")
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"submission": submission, "test": test, "out": str(out)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m golf.submit", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="*", metavar="RUN_DIR", help="finished runs (runs/<run_id>), one per seed")
    p.add_argument("--name", required=True, help="the submission's name")
    p.add_argument("--author", required=True)
    p.add_argument("--github-id", required=True)
    p.add_argument("--out", required=True, help="the folder to write (absent or empty)")
    p.add_argument("--blurb", default="", help="one paragraph on what it does")
    p.add_argument("--date", default=time.strftime("%Y-%m-%d"))
    p.add_argument("--sota-loss", type=float, default=None,
                   help="the current record's val_loss (nats): test mean val_loss < it - 0.005")
    args = p.parse_args(argv)
    try:
        result = build(args)
    except GolfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    s, test = result["submission"], result["test"]
    print(f"wrote {result['out']}: val_loss {s['val_loss']:.4f} val_bpb {s['val_bpb']:.4f} bytes_total "
          f"{s['bytes_total']:,} bytes_code {s['bytes_code']:,}")
    if test is not None:
        print(f"t-test: mean val_loss < {test['threshold']:.4f}: t={test['t']} p={test['p']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
