"""python -m golf.experiment: arms x seeds of golf.train in one command, with p-values, confidence intervals and
curves.

Usage
    python -m golf.experiment --preset P --arms tiered,baseline[,...] --seeds N --out DIR
                              [--arm NAME:FLAGS ...] [--first-seed S] [--jobs J] [any golf.train flag]
    python -m golf.experiment --preset cpu --arms tiered,baseline,tiers-only,tiered-small,ungated --seeds 3 \\
        --out exp/cpu --arm "ungated:--set model.prior_gate=off" --data-path data/cpu
Every golf.train flag after the experiment's own goes to every run; an arm adds its own flags after them.

Arms
    tiered        the preset as it is
    baseline      --baseline (tiers off; the GPU presets give their bytes to the transformer)
    tiers-only    no training run: the shared tier fit scored alone (l2 = 0) by the runs' sliding eval
    tiered-small  tiered with the transformer narrowed (model_dim, in steps of 8 x num_heads) to the widest that
                  has at most 0.7x the baseline transformer's parameters (ConfigError below 0.5x)
    NAME          any other arm, defined by --arm "NAME:FLAGS" (FLAGS: golf.train flags, shell-quoted)

What it does
    * One tier fit per distinct tier setting, shared by every arm that uses it (golf.tierfile, DIR/tiers/):
      each such run loads it and is charged the seconds the fit took, as if it had fit its own.
    * Runs go seed by seed, each seed through every arm in turn (the machine's speed drifts during a day: a slow
      hour then costs every arm alike). Each run is `python -m golf.train ... --seed S --run-id ARM-sS
      --runs-dir DIR/runs` in a subprocess; its output goes to DIR/logs/ARM-sS.txt.
    * --jobs J runs J at once, in the same order. With J GPUs visible each run gets one (CUDA_VISIBLE_DEVICES);
      on CPU each gets cores / J threads (OMP_NUM_THREADS; an explicit --cpu-threads wins). Two 1-thread runs
      on 2 cores do 1.39x the steps per second of one 2-thread run (3 layers, d128). Time-scheduled runs then
      share the machine: compare only runs made with the same J, or use --schedule steps.
    * Resumable: a run whose summary.json has a val_bpb and no error is not run again; one that did not finish is
      started again from scratch (golf.train --overwrite). DIR/experiment.json holds
      the arms' flags; running again into DIR with other flags for an existing arm is a ConfigError.
    * Progress: one line per run with its BPB and the ETA of the rest (the mean wall time of the runs so far).
    * A failed run is reported (the tail of its log) and the others go on; the command then exits 1.

Outputs in DIR
    results.json  {"arms": {NAME: {"seeds", "val_bpb", "mean", "std", "p_vs_baseline", "ci95", "curves",
                  "diff_vs_baseline", "runs", "flags"}}, "config": {...}}
                  val_bpb: each run's summary.json val_bpb (the artifact's sliding BPB). p_vs_baseline: one-sided
                  Welch t-test of mean < baseline's (null below 2 seeds on either side, and for baseline). ci95:
                  the t interval of the mean (null below 2). diff_vs_baseline: mean difference and its Welch 95%
                  interval. curves: per seed, the periodic plain-eval points {step, tokens, seconds, val_bpb},
                  seconds = the run's tier-fit seconds + its training-loop seconds (what the budget charged).
                  runs: per seed the summary's float, roundtrip and tiers-only BPB, quant penalty, bytes, steps,
                  the transformer's parameter count and the prior gate's report. tiers-only has seeds [null].
    curves.png    val BPB against charged seconds and against training tokens: mean +- std over seeds per arm
    results.md    the table, ready for bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import queue
import re
import shlex
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from golf import runtime
from golf.config import resolve_config
from golf.errors import ConfigError, GolfError
from golf.progress import format_seconds
from golf.stats import mean_ci, t_quantile, welch_less

BUILTIN = {"tiered": [], "baseline": ["--baseline"], "tiered-small": None, "tiers-only": None}
SMALL_RATIO = (0.5, 0.7)
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# --- arms ----------------------------------------------------------------------------------------------

def parse_args(argv):
    # The docstring's first paragraph (its first line alone stops mid-sentence) and its table of arms.
    title, arms = __doc__.split("\n\n")[0], next(part for part in __doc__.split("\n\n")
                                                    if part.startswith("Arms"))
    p = argparse.ArgumentParser(prog="python -m golf.experiment", description=title,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=f"{arms}\n\nAny other flag is passed to every golf.train run.")
    p.add_argument("--preset", required=True, help="the golf.train preset of every run")
    p.add_argument("--arms", required=True, help="comma-separated: tiered, baseline, tiers-only, tiered-small, "
                                                 "or names defined by --arm")
    p.add_argument("--seeds", type=int, required=True, help="runs per arm")
    p.add_argument("--first-seed", type=int, default=1, help="seeds are first-seed .. first-seed + seeds - 1")
    p.add_argument("--out", type=Path, required=True, help="the experiment's folder (runs, logs, results)")
    p.add_argument("--arm", action="append", default=[], metavar="NAME:FLAGS", help="define an arm")
    p.add_argument("--jobs", type=int, default=1, help="runs at once (one GPU each, or cores / jobs threads)")
    args, train_flags = p.parse_known_args(argv)
    for flag in ("--seed", "--run-id", "--runs-dir", "--resume", "--overwrite"):
        if any(f == flag or f.startswith(flag + "=") for f in train_flags):
            raise ConfigError(f"{flag}: set by golf.experiment for each run; leave it out")
    if args.seeds < 1:
        raise ConfigError(f"--seeds: expected >= 1, found {args.seeds}")
    if args.jobs < 1:
        raise ConfigError(f"--jobs: expected >= 1, found {args.jobs}")
    return args, train_flags


def arm_flags(names: list[str], defined: list[str]) -> dict[str, list[str] | None]:
    """Each arm's own golf.train flags, in order: --arms first, then --arm definitions not listed there.
    None: computed later (tiered-small) or no run (tiers-only)."""
    custom = {}
    for text in defined:
        name, colon, flags = text.partition(":")
        if not colon or not NAME.match(name.strip()):
            raise ConfigError(f"--arm {text!r}: expected NAME:FLAGS with NAME of letters, digits, '_', '.', '-'")
        custom[name.strip()] = shlex.split(flags)
    arms = {}
    for name in [n.strip() for n in names if n.strip()] + list(custom):
        if name in arms:
            continue
        if name in custom:
            arms[name] = custom[name]
        elif name in BUILTIN:
            arms[name] = BUILTIN[name]
        else:
            raise ConfigError(f"--arms {name}: not a built-in arm ({sorted(BUILTIN)}) and not defined by --arm")
    if not arms:
        raise ConfigError("--arms: no arm given")
    return arms


def config_of(preset: str, common: list[str], flags: list[str]):
    return resolve_config(["--preset", preset, *common, *flags, "--run-id", "probe"], env=os.environ)


def small_flags(preset: str, common: list[str]) -> list[str]:
    """tiered-small's flags: the widest model_dim (in steps of 8 x num_heads, each head at least rope_dims
    wide) whose transformer has at most 0.7x the baseline's parameters."""
    from golf.data import load_tokenizer
    from golf.model import ModelConfig, Transformer, param_counts

    base = config_of(preset, common, ["--baseline"])
    tiered = config_of(preset, common, [])
    sp = load_tokenizer(tiered.tokenizer_path, tiered.vocab_size)
    vocab, bos = sp.vocab_size(), sp.bos_id()
    columns = 3 if tiered.tiers.tier1 else 1
    target = param_counts(Transformer(base.model_config(vocab, bos)))["total"]
    cfg = tiered.model_config(vocab, bos, columns)
    step = 8 * cfg.num_heads  # heads stay a multiple of 8 wide, as fast attention kernels want
    for dim in range(cfg.model_dim - step, 0, -step):
        if dim // cfg.num_heads < (tiered.model.get("rope_dims") or 0):
            break
        small = ModelConfig(vocab_size=vocab, bos_id=bos, prior_columns=columns, **dict(tiered.model, model_dim=dim))
        count = param_counts(Transformer(small))["total"]
        if count <= SMALL_RATIO[1] * target:
            if count < SMALL_RATIO[0] * target:
                break
            return ["--set", f"model.model_dim={dim}"]
    raise ConfigError(f"tiered-small: no model_dim below {cfg.model_dim} gives {SMALL_RATIO[0]}-{SMALL_RATIO[1]}x "
                      f"the baseline transformer's {target:,} parameters; define it with --arm tiered-small:FLAGS")


# --- the shared tier fit -------------------------------------------------------------------------------

def shared_fit(out: Path, cfg, log) -> tuple[Path, dict]:
    """The tier fit cfg needs, fit once into DIR/tiers/<key>.pt and scored alone; returns (path, info) with
    info["tiers_only_bpb"] (sliding, as the runs score) and info["seconds"]."""
    from golf.data import load_tokenizer
    from golf.tierfile import fit_key, fit_tiers_file

    sp = load_tokenizer(cfg.tokenizer_path, cfg.vocab_size)
    key = fit_key(cfg, sp.vocab_size())
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    path, info_path = out / "tiers" / f"{digest}.pt", out / "tiers" / f"{digest}.json"
    if path.is_file() and info_path.is_file():
        return path, json.loads(info_path.read_text())
    log(f"fitting the shared tiers ({digest})")
    info = fit_tiers_file(cfg, path)
    info.update(score_tiers(cfg, path, sp))
    runtime.write_json(info_path, info)
    log(f"tiers {digest}: fit {info['seconds']['fit']:.1f} s, read {info['seconds']['read']:.1f} s, tiers-only "
        f"sliding BPB {info['tiers_only_bpb']:.4f}")
    return path, info


def score_tiers(cfg, path: Path, sp) -> dict:
    """The tiers alone (tier 2 off) through the runs' sliding eval and their plain eval (golf.scoring)."""
    from golf.data import ByteTables
    from golf.model import NoResidual, TieredLM, make_prior_rows
    from golf.scoring import Predictor, eval_spec, plain_spec, score_artifact, val_tokens
    from golf.tierfile import read_tiers_file

    tiers, _ = read_tiers_file(path, cfg, sp.vocab_size())
    model = Predictor(TieredLM.of(NoResidual(sp.vocab_size(), 0.0), tiers), make_prior_rows(tiers))
    tables = ByteTables.from_tokenizer(sp)
    bpb = {}
    sliding = eval_spec(cfg, "sliding").replace(budget_seconds=0)
    for name, spec in (("sliding", sliding), ("plain", plain_spec(sliding, cfg.train_seq_len))):
        tokens, _ = val_tokens(cfg.data_path, sp.vocab_size(), spec)
        bpb[name] = score_artifact(model, spec, tokens, byte_tables=tables, progress=False).val_bpb
    return {"tiers_only_bpb": bpb["sliding"], "tiers_only_plain_bpb": bpb["plain"]}


# --- runs ----------------------------------------------------------------------------------------------

def finished(run_dir: Path) -> dict | None:
    """The run's summary when it finished with a score, else None."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return summary if summary.get("val_bpb") is not None and "error" not in summary else None


def job_envs(jobs: int, env=os.environ) -> list[dict]:
    """The environment of each of `jobs` concurrent runs: one GPU each when there are enough, else an equal
    share of the CPU threads."""
    if jobs == 1:
        return [dict(env)]
    import torch

    if torch.cuda.is_available():
        visible = env.get("CUDA_VISIBLE_DEVICES")
        devices = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
        if len(devices) < jobs:
            raise ConfigError(f"--jobs {jobs}: only {len(devices)} GPUs visible ({','.join(devices)})")
        return [dict(env, CUDA_VISIBLE_DEVICES=d) for d in devices[:jobs]]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, cores // jobs)
    return [dict(env, OMP_NUM_THREADS=str(threads)) for _ in range(jobs)]


def run_all(pending: list, jobs: int, launch) -> None:
    """launch(item, env) for each item in order, at most `jobs` at once; each concurrent launch gets an
    environment of its own (a GPU, a share of the cores) that no other running launch holds."""
    free = queue.SimpleQueue()
    for env in job_envs(jobs):
        free.put(env)

    def one(item):
        env = free.get()
        try:
            launch(item, env)
        finally:
            free.put(env)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for f in [pool.submit(one, item) for item in pending]:
            f.result()


def run_one(out: Path, preset: str, common: list[str], flags: list[str], arm: str, seed: int,
            env=None) -> tuple[bool, str]:
    """One golf.train subprocess; (ok, the tail of its output)."""
    run_id = f"{arm}-s{seed}"
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "golf.train", "--preset", preset, *common, *flags, "--seed", str(seed),
           "--run-id", run_id, "--runs-dir", str(out / "runs"),
           "--overwrite"]  # only unfinished runs are launched: what an earlier try left of one is replaced
    with open(logs / f"{run_id}.txt", "w") as f:
        f.write(shlex.join(cmd) + "\n")
        f.flush()
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    tail = "\n".join((logs / f"{run_id}.txt").read_text().splitlines()[-15:])
    return proc.returncode == 0 and finished(out / "runs" / run_id) is not None, tail


def curve(summary: dict) -> list[dict]:
    """The run's periodic plain-eval points; seconds = tier-fit seconds + training-loop seconds."""
    fit_s = summary.get("stage_seconds", {}).get("fit_tiers", 0.0) if not summary.get("baseline") else 0.0
    tokens = summary["config"]["train_batch_tokens"]
    history = summary.get("val_history", [])
    # The final eval (the exported weights) replaces a periodic one at the same step.
    history = [h for i, h in enumerate(history)
               if h.get("final") or not any(g.get("final") and g["step"] == h["step"] for g in history[i + 1:])]
    return [{"step": h["step"], "tokens": h["step"] * tokens, "seconds": fit_s + h["train_s"],
             "val_bpb": h["val_bpb"]} for h in history]


def cut_short(summary: dict) -> str | None:
    """Why a step-scheduled run's numbers are not what its settings promise: the wall clock stopped it before
    its learning rate finished decaying. None for a run that is what it says."""
    cfg = summary["config"]
    if cfg.get("schedule") != "steps" or summary.get("stop_reason") in (None, "iterations"):
        return None
    return (f"{cfg['run_id']} stopped by the wall clock at step {summary['steps']} of {cfg['iterations']} "
            f"(max_wallclock_seconds {cfg['max_wallclock_seconds']:g}): its step schedule did not finish")


def run_record(summary: dict) -> dict:
    params = summary.get("params") or {}
    return {"seed": summary["seed"], "run_id": summary["config"]["run_id"], "val_bpb": summary["val_bpb"],
            **{k: summary.get(k) for k in ("float_val_bpb", "roundtrip_val_bpb", "quant_penalty", "tiers_only_bpb",
                                           "artifact_bytes", "total_bytes", "steps", "train_seconds",
                                           "stop_reason", "prior_gate")},
            "cut_short": cut_short(summary),
            "fit_seconds": summary.get("stage_seconds", {}).get("fit_tiers"),
            "transformer_params": (params.get("tier2") or {}).get("total")}


# --- statistics and outputs ----------------------------------------------------------------------------

def arm_stats(values: list[float], baseline: list[float] | None, is_baseline: bool) -> dict:
    n = len(values)
    mean = statistics.fmean(values) if n else None
    ci = mean_ci(values)
    out = {"mean": mean, "std": statistics.stdev(values) if n > 1 else None, "ci95": list(ci) if ci else None,
           "p_vs_baseline": None, "diff_vs_baseline": None}
    if baseline and not is_baseline and n:
        diff = {"mean": mean - statistics.fmean(baseline), "ci95": None}
        test = welch_less(values, baseline)
        if test is not None:
            out["p_vs_baseline"] = test["p"]
            se = (statistics.variance(values) / n + statistics.variance(baseline) / len(baseline)) ** 0.5
            half = t_quantile(0.975, test["df"]) * se
            diff["ci95"] = [diff["mean"] - half, diff["mean"] + half]
        out["diff_vs_baseline"] = diff
    return out


def collect(out: Path, arms: dict, seeds: list[int], fits: dict) -> dict:
    """results.json's "arms" from the finished runs (and the shared fit for tiers-only)."""
    summaries = {arm: [s for s in (finished(out / "runs" / f"{arm}-s{seed}") for seed in seeds) if s]
                 for arm, flags in arms.items() if arm != "tiers-only"}
    baseline = [s["val_bpb"] for s in summaries.get("baseline", [])]
    result = {}
    for arm, flags in arms.items():
        if arm == "tiers-only":
            info = fits.get("tiered")
            values = [info["tiers_only_bpb"]] if info else []
            result[arm] = {"seeds": [None] * len(values), "val_bpb": values, "curves": [], "runs": [],
                           "flags": None, "fit_seconds": info and info["seconds"]["read"] + info["seconds"]["fit"],
                           "plain_bpb": info and info["tiers_only_plain_bpb"],
                           **arm_stats(values, baseline, False)}
            continue
        runs = summaries[arm]
        values = [s["val_bpb"] for s in runs]
        result[arm] = {"seeds": [s["seed"] for s in runs], "val_bpb": values, "curves": [curve(s) for s in runs],
                       "runs": [run_record(s) for s in runs], "flags": flags,
                       **arm_stats(values, baseline, arm == "baseline")}
    return result


def fmt(x, spec=".4f") -> str:
    return "—" if x is None else format(x, spec)


def markdown(results: dict, command: str) -> str:
    lines = [f"`{command}`", "",
             "| arm | seeds | sliding BPB, mean ± std | 95% CI | vs baseline (95% CI) | p (Welch, one-sided) | "
             "float BPB | quant penalty | steps | transformer params | total bytes |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for arm, r in results["arms"].items():
        runs = r["runs"]

        def mean_of(key):
            vals = [x[key] for x in runs if x.get(key) is not None]
            return statistics.fmean(vals) if vals else None

        d = r["diff_vs_baseline"]
        diff = "—" if d is None else f"{d['mean']:+.4f}" + (
            f" ({d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f})" if d["ci95"] else "")
        ci = "—" if r["ci95"] is None else f"{r['ci95'][0]:.4f} – {r['ci95'][1]:.4f}"
        spread = fmt(r["mean"]) + (f" ± {r['std']:.4f}" if r["std"] is not None else "")
        p = "—" if r["p_vs_baseline"] is None else f"{r['p_vs_baseline']:.2g}"
        steps, params, total = mean_of("steps"), mean_of("transformer_params"), mean_of("total_bytes")
        lines.append(f"| {arm} | {len(r['val_bpb']) if r['seeds'] != [None] else 'shared fit'} | {spread} | {ci} "
                     f"| {diff} | {p} | {fmt(mean_of('float_val_bpb'))} | {fmt(mean_of('quant_penalty'), '+.4f')} "
                     f"| {fmt(steps, ',.0f')} | {fmt(params, ',.0f')} | {fmt(total, ',.0f')} |")
    short = [x["cut_short"] for r in results["arms"].values() for x in r["runs"] if x.get("cut_short")]
    lines += [""] + [f"**Not comparable:** {why}." for why in short] if short else []
    return "\n".join(lines) + "\n"


def plot(path: Path, results: dict) -> bool:
    """curves.png: val BPB against charged seconds, against tokens, and against tokens over the second half of
    training with the axis fit to it (where the arms part): mean +- std band per arm."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5))
    panels = ((axes[0], "seconds", 0.0), (axes[1], "tokens", 0.0), (axes[2], "tokens", 0.5))
    for i, (arm, r) in enumerate(results["arms"].items()):
        color = f"C{i}"
        if arm == "tiers-only":
            if r["val_bpb"]:
                axes[0].plot([r["fit_seconds"]], r["val_bpb"], "*", color=color, ms=12, label=arm)
                axes[1].axhline(r["val_bpb"][0], color=color, ls=":", label=arm)
            continue
        curves = [c for c in r["curves"] if len(c) > 1]
        for ax, key, start in panels:
            if not curves:
                continue
            hi = min(c[-1][key] for c in curves)
            lo = max(c[0][key] for c in curves)
            grid = np.linspace(lo + start * (hi - lo), hi, 60)
            ys = np.array([np.interp(grid, [p[key] for p in c], [p["val_bpb"] for p in c]) for c in curves])
            mean, std = ys.mean(0), ys.std(0)
            ax.plot(grid, mean, color=color, label=f"{arm} (n={len(curves)})")
            ax.fill_between(grid, mean - std, mean + std, color=color, alpha=0.2)
    axes[0].set_xlabel("seconds charged (tier fit + training loop)")
    axes[1].set_xlabel("training tokens")
    axes[2].set_xlabel("training tokens, second half")
    axes[0].set_ylabel("val BPB (plain eval, float weights)")
    axes[1].sharey(axes[0])
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend()
    fig.suptitle(textwrap.fill(results["config"]["command"], 200), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# --- the experiment ------------------------------------------------------------------------------------

def check_resumable(out: Path, arms: dict, preset: str, common: list[str]) -> None:
    """ConfigError if DIR holds runs made with other flags for an arm of the same name."""
    path = out / "experiment.json"
    if not path.is_file():
        return
    before = json.loads(path.read_text())
    if before.get("preset") != preset or before.get("common") != common:
        raise ConfigError(f"{out}: made with --preset {before.get('preset')} and flags {before.get('common')}; "
                          f"this command has --preset {preset} and {common}: use another --out")
    for arm, flags in arms.items():
        old = before.get("arms", {}).get(arm, flags)
        if old != flags:
            raise ConfigError(f"{out}: arm {arm} ran with flags {old}, this command gives it {flags}: rename the "
                              "arm or use another --out")


def run(argv=None) -> int:
    args, common = parse_args(argv)
    out, preset = args.out, args.preset
    arms = arm_flags(args.arms.split(","), args.arm)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    command = "python -m golf.experiment " + shlex.join(argv if argv is not None else sys.argv[1:])

    def log(message: str) -> None:
        print(f"[experiment {time.strftime('%H:%M:%S')}] {message}", flush=True)

    # Everything that can fail before the first run, checked before it.
    if arms.get("tiered-small", []) is None:
        arms["tiered-small"] = small_flags(preset, common)
    configs = {arm: config_of(preset, common, flags) for arm, flags in arms.items() if flags is not None}
    check_resumable(out, arms, preset, common)
    out.mkdir(parents=True, exist_ok=True)
    earlier = json.loads((out / "experiment.json").read_text()) if (out / "experiment.json").is_file() else {}
    runtime.write_json(out / "experiment.json", {"preset": preset, "common": common,
                                                 "arms": {**earlier.get("arms", {}), **arms}})

    fits, fit_paths = {}, {}
    for arm, cfg in configs.items():
        if not cfg.baseline:
            fit_paths[arm], fits[arm] = shared_fit(out, cfg, log)
    if "tiers-only" in arms and "tiered" not in fits:
        _, fits["tiered"] = shared_fit(out, config_of(preset, common, []), log)

    todo = [(seed, arm) for seed in seeds for arm in arms if arm != "tiers-only"]
    pending = [(s, a) for s, a in todo if finished(out / "runs" / f"{a}-s{s}") is None]
    log(f"{len(todo)} runs ({len(arms) - ('tiers-only' in arms)} arms x {len(seeds)} seeds), "
        f"{len(todo) - len(pending)} already done" + (f", {args.jobs} at a time" if args.jobs > 1 else ""))
    if args.jobs > 1 and any(c.schedule == "time" for c in configs.values()):
        log(f"note: {args.jobs} time-scheduled runs share this machine; each trains fewer steps than it would alone")
    walls, failed, lock = [], [], threading.Lock()

    def launch(item, env):
        seed, arm = item
        flags = list(arms[arm]) + (["--set", f"tiers_file={fit_paths[arm]}"] if arm in fit_paths else [])
        t = time.perf_counter()
        ok, tail = run_one(out, preset, common, flags, arm, seed, env)
        with lock:
            walls.append(time.perf_counter() - t)
            i = len(walls)
            eta = statistics.fmean(walls) * (len(pending) - i) / args.jobs
            if ok:
                s = finished(out / "runs" / f"{arm}-s{seed}")
                log(f"[{i}/{len(pending)}] {arm} seed {seed}: val_bpb {s['val_bpb']:.4f} ({s['steps']} steps, "
                    f"{walls[-1]:.0f} s); ETA {format_seconds(eta)}")
                if cut_short(s):
                    log(f"WARNING: {cut_short(s)}; raise --max-wallclock-seconds or lower --jobs")
            else:
                failed.append(f"{arm}-s{seed}")
                log(f"[{i}/{len(pending)}] {arm} seed {seed}: FAILED (log {out / 'logs' / f'{arm}-s{seed}.txt'}):"
                    f"\n{tail}")

    run_all(pending, args.jobs, launch)

    results = {"arms": collect(out, arms, seeds, fits),
               "config": {"command": command, "preset": preset, "common": common, "seeds": seeds,
                          "arms": {a: f for a, f in arms.items()}, "tier_fits": fits,
                          "run_config": configs[next(iter(configs))].to_dict() if configs else None}}
    runtime.write_json(out / "results.json", results)
    (out / "results.md").write_text(markdown(results, command))
    plot(out / "curves.png", results)
    print(markdown(results, command))
    if failed:
        log(f"{len(failed)} runs failed: {', '.join(failed)}")
        return 1
    return 0


def main(argv=None) -> int:
    try:
        return run(argv)
    except GolfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
