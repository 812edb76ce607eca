"""python -m golf.train: fit tiers 0+1 by counting, then train the tier-2 transformer, in one wall-clock budget.

Usage
    python -m golf.train [--preset cpu|h100|h100x8] [--baseline] [--max-wallclock-seconds S] [--iterations N]
                         [--run-id ID] [--runs-dir DIR] [--resume PATH] [--no-compile] [--set KEY=VALUE ...]
    torchrun --nproc_per_node=8 -m golf.train --preset h100x8
Settings come from golf.config (flag > env > preset); `--help` lists the flags.

What a run does, in order (rank 0 writes everything; every rank trains)
    1. load the train stream (a prefix of `tier_fit_tokens` for the fit) and fit tiers 0+1 (skipped with
       --baseline). These two stages count against the budget:
           loop budget = max_wallclock_seconds - (load_train + fit_tiers seconds) - gptq_reserve_seconds
    2. the tiers-only val BPB (tier-2 logits = 0), once.
    3. compile warmup (CUDA + compile): `compile_warmup_steps` real steps, then weights and optimizer state
       are restored. Not timed, as in the records.
    4. the training loop. Its timer (`train_seconds`) covers only the steps: the periodic val evals
       (every `val_loss_every` steps, also at step 0) are excluded, as the challenge times it. A step starts
       only if the average step time says it ends inside the loop budget; `iterations` caps the steps.
       Loss of a batch: ops.tiered_loss(model(x), prior_tables, rows, y, softcap), rows =
       make_prior_rows(tiers)(x): the tiers' rows for the targets y, computed from the INPUT tokens x only.
       Late QAT (qat_lr_scale > 0): once the LR scale falls below it, the int6 matrices train through
       golf.quant's fake quantisation (switched by a tensor write, so a compiled graph sees it).
    5. checkpoint.pt; (with EMA) the EMA weights swapped in; the GPTQ Hessians from `calib_batches` training
       batches (they read training data, so they run right after the loop and count against the budget:
       load + fit + loop + calibration <= max_wallclock_seconds, logged as budget_used_s); the float model's
       plain val BPB.
    6. (unless --no-export) GPTQ int6 -> model.golf (golf.export, golf.quant, golf.artifact); over the cap, the
       cheapest int6 +-1 values zeroed until it fits (prune_to_fit; event=prune, summary "pruning"); the size
       report (artifact + code bytes vs 16,000,000); every rank rebuilds the model from the file alone, scores it:
       plain (roundtrip_val_bpb) and sliding (eval_window, eval_stride: sliding_val_bpb = val_bpb).
    7. summary.json (DESIGN.md §1 keys, plus loop_budget_seconds, stop_reason, val_history, weights_sha256,
       size, pruning, code_files: every source file counted in code_bytes, with its bytes), loss_vs_time.png.
       Still over the size cap: BudgetError (exit 2) after model.golf and summary.json are written.
A run that fails still writes summary.json, with "error". A non-finite training loss raises
NonFiniteLossError naming the step (steps count from 1, the first optimizer step).

Outputs in runs_dir/run_id/: log.txt (key=value lines: `event=NAME k=v ...`), summary.json, checkpoint.pt,
model.golf, loss_vs_time.png.

checkpoint.pt (torch.save; load with weights_only=False)
    format, config (to_dict), step, train_seconds, model (the transformer's state_dict, raw weights),
    prior_tables (fp32 [R, V], as trained), tiers (tier-0/1 tensors by name, None with --baseline),
    optimizer (Optimizers.state_dict), ema (EMA.state_dict or None; names are TieredLM's), history.
    `--resume PATH` refits the tiers (deterministic), loads all of the above and continues at `step` with the
    loop timer at `train_seconds`; the budget and `iterations` of the new command apply to the total.

Distributed: torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; NCCL on CUDA, gloo on CPU. Rank 0 fits the tiers and
broadcasts them. Gradient accumulation = batch_devices // world_size unless `grad_accum` is set; the global
batch of a step depends only on (seed, step), so any world size sees the same tokens.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import os
import random
import resource
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn

from golf.config import TrainConfig, resolve_config
from golf.data import (BpbMeter, ByteTables, DistributedLoader, TokenStream, check_token_ids, find_shards,
                       load_tokenizer, load_val_tokens)
from golf.artifact import check_size, code_bytes, size_report
from golf.errors import BudgetError, ConfigError, GolfError
from golf.evaluate import evaluate as evaluate_windows
from golf.export import export_model, load_model
from golf.model import TieredLM, Transformer, make_prior_rows, param_counts
from golf.optim import EMA, build_optimizers
from golf.quant import collect_hessians, prepare_qat, set_qat
from golf.progress import Progress
from golf.tiers import Tiers, Vocab, fit_tiers

CHECKPOINT_FORMAT = "golf-checkpoint-1"


class NonFiniteLossError(GolfError):
    """The training loss became NaN or infinite."""


# --- process setup and logging -------------------------------------------------------------------------

@dataclass
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed(cfg: TrainConfig) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cfg.device == "auto":
        device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    elif cfg.device == "cuda":
        device = torch.device(f"cuda:{local}")
    else:
        device = torch.device(cfg.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device (--device): {cfg.device} requested but CUDA is not available")
        torch.cuda.set_device(device)
    if world > 1 and not torch_dist.is_initialized():
        torch_dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, local, device)


def broadcast_object(obj, d: Dist):
    """Rank 0's `obj` on every rank."""
    if not d.enabled:
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v).replace(" ", "_")


class RunLog:
    """`event=NAME k=v ...` lines to stdout and log.txt (rank 0 only)."""

    def __init__(self, path: Path | None):
        self.file = open(path, "a", encoding="utf-8") if path is not None else None

    def event(self, event: str, **fields) -> None:
        if self.file is None:
            return
        line = " ".join([f"event={event}"] + [f"{k}={_fmt(v)}" for k, v in fields.items()])
        print(line, flush=True)
        self.file.write(line + "\n")
        self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def peak_mem_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def tier_tensors(tiers: Tiers | None) -> dict | None:
    """Every tensor of tiers 0 and 1 by name (for the checkpoint and, later, the artifact)."""
    if tiers is None:
        return None
    out = {f"tier0.{k}": v for k, v in vars(tiers.tier0).items() if torch.is_tensor(v)}
    if tiers.tier1 is not None:
        out.update({f"tier1.{k}": v for k, v in tiers.tier1.tensors().items()})
    return out


def tier_params(tiers: Tiers | None) -> dict:
    if tiers is None:
        return {"tier0": None, "tier1": None}
    t0 = sum(v.numel() for v in vars(tiers.tier0).values() if torch.is_tensor(v))
    t1 = sum(v.numel() for v in tiers.tier1.tensors().values()) if tiers.tier1 is not None else 0
    projected = tiers.projected_bytes()
    return {"tier0": {"elements": t0, "bytes": projected.get("tier0_bytes")},
            "tier1": {"elements": t1} if tiers.tier1 is not None else None,
            "tiers_projected_bytes": projected, "prior_table_rows": int(tiers.prior_tables().shape[0])}


def weights_sha256(lm: TieredLM) -> str:
    h = hashlib.sha256()
    for name, t in sorted(lm.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# --- evaluation ----------------------------------------------------------------------------------------

@torch.no_grad()
def evaluate(loss_fn, prior_rows, val: np.ndarray, seq_len: int, batch_tokens: int, tables: ByteTables,
             d: Dist, amp) -> BpbMeter:
    """Plain eval: non-overlapping windows of seq_len, every target scored once; ranks take disjoint windows."""
    windows = (len(val) - 1) // seq_len
    lo, hi = windows * d.rank // d.world_size, windows * (d.rank + 1) // d.world_size
    per_batch = max(1, batch_tokens // seq_len)
    meter = BpbMeter(tables)
    for w in range(lo, hi, per_batch):
        e = min(w + per_batch, hi)
        chunk = torch.from_numpy(val[w * seq_len:e * seq_len + 1].astype(np.int64)).to(d.device)
        x, y = chunk[:-1].view(e - w, seq_len), chunk[1:].view(e - w, seq_len)
        with amp():
            nll = loss_fn(x, prior_rows(x), y)
        meter.add(nll.float().view_as(y), x, y)
    meter.all_reduce()
    return meter


# --- one optimizer step's gradients --------------------------------------------------------------------

def accumulate_gradients(model, loader: DistributedLoader, step: int, prior_rows, grad_accum: int, amp,
                         ddp: bool) -> torch.Tensor:
    """Forward + backward over the step's micro-batches; returns this rank's mean loss (a 0-d tensor)."""
    total = None
    for micro in range(grad_accum):
        x, y = loader.batch(step, micro)
        rows = prior_rows(x)
        # DDP all-reduces on the last micro-batch only.
        no_sync = model.no_sync() if ddp and micro < grad_accum - 1 else contextlib.nullcontext()
        with no_sync:
            with amp():
                nll = model(x, rows, y)
            loss = nll.mean() / grad_accum
            loss.backward()
        total = loss.detach() if total is None else total + loss.detach()
    return total


# --- checkpoint ----------------------------------------------------------------------------------------

def save_checkpoint(path: Path, cfg: TrainConfig, lm: TieredLM, tiers, opt, ema, step: int, train_s: float,
                    history: dict) -> None:
    ckpt = {"format": CHECKPOINT_FORMAT, "config": cfg.to_dict(), "step": step, "train_seconds": train_s,
            "model": lm.transformer.state_dict(), "prior_tables": lm.prior_tables.detach().cpu(),
            "tiers": tier_tensors(tiers), "optimizer": opt.state_dict(),
            "ema": ema.state_dict() if ema is not None else None, "history": history}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str, cfg: TrainConfig, lm: TieredLM, opt, ema, log: RunLog) -> tuple[int, float, dict]:
    """Restore weights, tables, optimizer and EMA; returns (step, train_seconds, history)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError) as exc:
        raise ConfigError(f"--resume {path}: cannot read the checkpoint ({exc})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"--resume {path}: not a golf checkpoint (expected format {CHECKPOINT_FORMAT})")
    saved, now = ckpt["config"], cfg.to_dict()
    for key in ("model", "tiers", "baseline", "tier1_train", "train_seq_len"):
        if saved.get(key) != now.get(key):
            raise ConfigError(f"--resume {path}: setting {key} is {saved.get(key)!r} in the checkpoint but "
                              f"{now.get(key)!r} in this run")
    lm.transformer.load_state_dict(ckpt["model"])
    with torch.no_grad():
        if ckpt["prior_tables"].shape != lm.prior_tables.shape:
            raise ConfigError(f"--resume {path}: prior_tables has shape {tuple(ckpt['prior_tables'].shape)} in the "
                              f"checkpoint but {tuple(lm.prior_tables.shape)} in this run")
        lm.prior_tables.copy_(ckpt["prior_tables"])
    opt.load_state_dict(ckpt["optimizer"])
    if ema is not None:
        if ckpt.get("ema") is not None:
            ema.load_state_dict(ckpt["ema"])
        else:
            ema.shadow = EMA(lm, ema.decay).shadow
            log.event("resume_note", ema="started_fresh_from_checkpoint_weights")
    return int(ckpt["step"]), float(ckpt["train_seconds"]), ckpt.get("history") or {"train": [], "val": []}


# --- plot ----------------------------------------------------------------------------------------------

def plot_curves(path: Path, history: dict, log: RunLog) -> bool:
    """loss_vs_time.png: train loss and val BPB against wall-clock seconds since the run started."""
    try:
        import matplotlib
    except ImportError:
        log.event("plot", skipped="matplotlib_not_installed", file=path.name)
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    if history["train"]:
        ax1.plot([h["wall_s"] for h in history["train"]], [h["loss"] for h in history["train"]], lw=1)
    ax1.set_ylabel("train loss (nats)")
    if history["val"]:
        ax2.plot([h["wall_s"] for h in history["val"]], [h["val_bpb"] for h in history["val"]], "o-")
    ax2.set_ylabel("val BPB")
    ax2.set_xlabel("wall-clock seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# --- the run -------------------------------------------------------------------------------------------

def run(cfg: TrainConfig) -> dict:
    """Train per cfg; returns the summary (rank 0's content on every rank). Raises on failure after
    writing summary.json with "error"."""
    t_start = time.perf_counter()
    d = setup_distributed(cfg)
    cfg.run_id = broadcast_object(cfg.run_id, d)  # a default timestamp id may differ between ranks
    run_dir = Path(cfg.runs_dir) / cfg.run_id
    if d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    log = RunLog(run_dir / "log.txt" if d.main else None)
    summary = {"preset": cfg.preset, "baseline": cfg.baseline, "seed": cfg.seed, "world_size": d.world_size,
               "device": str(d.device) if d.device.type != "cuda" else torch.cuda.get_device_name(d.device),
               "torch_version": torch.__version__, "git_sha": git_sha(), "config": cfg.to_dict(),
               "stage_seconds": {}}
    try:
        _train(cfg, d, log, run_dir, summary, t_start)
        if d.enabled:  # leave together: a rank tearing down gloo while a peer still writes can abort
            torch_dist.barrier()
    except BaseException as exc:
        summary["error"] = f"{type(exc).__name__}: {exc}"
        summary["wall_seconds"] = time.perf_counter() - t_start
        summary["peak_mem_bytes"] = peak_mem_bytes(d.device)
        if d.main:
            write_json(run_dir / "summary.json", summary)
            log.event("error", type=type(exc).__name__, message=str(exc))
        raise
    finally:
        log.close()
        if d.enabled and torch_dist.is_initialized():
            torch_dist.destroy_process_group()
    return summary


def _train(cfg: TrainConfig, d: Dist, log: RunLog, run_dir: Path, summary: dict, t_start: float) -> None:
    stages = summary["stage_seconds"]
    cuda = d.device.type == "cuda"
    use_compile = cuda if cfg.compile is None else cfg.compile
    use_amp = cuda if cfg.amp is None else cfg.amp
    amp = ((lambda: torch.autocast(d.device.type, dtype=torch.bfloat16)) if use_amp
           else contextlib.nullcontext)
    grad_accum = cfg.grad_accum or max(1, cfg.batch_devices // d.world_size)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    seed_everything(cfg.seed)
    log.event("start", run_id=cfg.run_id, preset=cfg.preset, baseline=cfg.baseline, world_size=d.world_size,
              device=d.device, grad_accum=grad_accum, compile=use_compile, amp=use_amp,
              threads=torch.get_num_threads(),
              budget_s=cfg.max_wallclock_seconds, iterations=cfg.iterations)

    # Tokenizer and byte tables (needed for BPB only).
    t = time.perf_counter()
    sp = load_tokenizer(cfg.tokenizer_path, cfg.vocab_size)
    vocab_size = sp.vocab_size()
    byte_tables = ByteTables.from_tokenizer(sp)
    stages["setup"] = time.perf_counter() - t

    # Stage: the train stream. The loader memory-maps every train shard; the fit reads a prefix.
    t = time.perf_counter()
    train_files = find_shards(cfg.data_path, "train")
    loader = DistributedLoader(train_files, seq_len=cfg.train_seq_len, global_batch_tokens=cfg.train_batch_tokens,
                               seed=cfg.seed, rank=d.rank, world_size=d.world_size, grad_accum=grad_accum,
                               vocab_size=vocab_size, device=d.device)
    fit_ids = None
    if not cfg.baseline and d.main:
        stream = TokenStream(train_files)
        n = len(stream) if cfg.tier_fit_tokens == 0 else min(cfg.tier_fit_tokens, len(stream))
        raw = stream.read(0, n)
        check_token_ids(raw, vocab_size, train_files[0])
        fit_ids = torch.from_numpy(raw.astype(np.int64))
    stages["load_train"] = time.perf_counter() - t
    log.event("stage", stage="load_train", seconds=stages["load_train"], train_files=len(train_files),
              train_tokens=len(loader.stream), fit_tokens=0 if fit_ids is None else fit_ids.numel())

    # Stage: tiers 0+1 (rank 0 fits, everyone gets the result).
    t = time.perf_counter()
    tiers = None
    if not cfg.baseline:
        if d.main:
            tiers = fit_tiers(fit_ids, Vocab.from_tokenizer(sp), dataclasses.replace(cfg.tiers))
        tiers = broadcast_object(tiers, d)
        del fit_ids
    stages["fit_tiers"] = broadcast_object(time.perf_counter() - t, d)
    log.event("stage", stage="fit_tiers", seconds=stages["fit_tiers"], skipped=cfg.baseline,
              **({f"{k}_s": v for k, v in tiers.fit_seconds.items()} if tiers is not None else {}),
              **({"tier1_refine_steps": tiers.refine_steps} if tiers is not None else {}))

    loop_budget = cfg.max_wallclock_seconds - stages["load_train"] - stages["fit_tiers"] - cfg.gptq_reserve_seconds
    summary["loop_budget_seconds"] = loop_budget
    if loop_budget <= 0:
        raise BudgetError(f"max_wallclock_seconds={cfg.max_wallclock_seconds}: nothing left for the training loop "
                          f"after load_train {stages['load_train']:.1f} s, fit_tiers {stages['fit_tiers']:.1f} s "
                          f"and gptq_reserve_seconds={cfg.gptq_reserve_seconds}")

    # Val tokens (all ranks hold them; each scores its own windows).
    t = time.perf_counter()
    val_files = find_shards(cfg.data_path, "val")
    val = load_val_tokens(val_files, cfg.train_seq_len)
    if cfg.val_tokens:
        usable = min(cfg.val_tokens, len(val) - 1) // cfg.train_seq_len * cfg.train_seq_len
        if usable == 0:
            raise ConfigError(f"val_tokens (--val-tokens)={cfg.val_tokens} is less than one window of "
                              f"train_seq_len={cfg.train_seq_len}")
        val = val[:usable + 1]
    check_token_ids(val, vocab_size, val_files[0])
    stages["load_val"] = time.perf_counter() - t

    # Model, tables, optimizers.
    seed_everything(cfg.seed)
    model_cfg = cfg.model_config(vocab_size, sp.bos_id())
    transformer = Transformer(model_cfg).to(d.device)
    tables = (tiers.prior_tables() if tiers is not None else torch.zeros(0, vocab_size)).float().to(d.device)
    lm = TieredLM(transformer, tables, trainable=cfg.tier1_train and tiers is not None)
    qat_layers = prepare_qat(transformer, cfg.quant.small_numel) if cfg.qat_lr_scale > 0 else []
    prior_rows = make_prior_rows(tiers)
    opt = build_optimizers(lm.named_parameters(), cfg.optim)
    ema = EMA(lm, cfg.optim.ema_decay) if cfg.optim.ema_decay > 0 else None
    summary["params"] = {**tier_params(tiers), "tier2": param_counts(transformer)}
    log.event("model", tier2_params=summary["params"]["tier2"]["total"], prior_rows=int(tables.shape[0]),
              tier1_train=cfg.tier1_train, groups=",".join(f"{g}:{len(n)}" for g, n in opt.groups.items()))

    # Pick the op implementation (and log a reference fallback) once, outside any compiled region.
    with torch.no_grad():
        probe = torch.zeros(1, 1, dtype=torch.long, device=d.device)
        lm(probe, prior_rows(probe), probe)

    start_step, train_s, history = 0, 0.0, {"train": [], "val": []}
    if cfg.resume:
        start_step, train_s, history = load_checkpoint(cfg.resume, cfg, lm, opt, ema, log)
        log.event("resume", path=cfg.resume, step=start_step, train_seconds=train_s)

    model = torch.compile(lm, dynamic=False) if use_compile else lm
    train_model = nn.parallel.DistributedDataParallel(
        model, device_ids=[d.local_rank] if cuda else None, broadcast_buffers=False) if d.enabled else model

    # Tiers-only BPB, once (not in the loop budget).
    if tiers is not None:
        t = time.perf_counter()
        m = evaluate(lm.priors_only, prior_rows, val, cfg.train_seq_len, cfg.val_batch_tokens, byte_tables, d, amp)
        stages["tiers_eval"] = time.perf_counter() - t
        summary["tiers_only_bpb"] = m.bpb
        log.event("tiers_only", val_bpb=m.bpb, val_loss=m.val_loss, seconds=stages["tiers_eval"])
    else:
        summary["tiers_only_bpb"] = None

    # Compile warmup: real steps to trigger compilation, then back to the starting state (untimed).
    t = time.perf_counter()
    if use_compile and cfg.compile_warmup_steps > 0:
        saved_model = {k: v.detach().clone() for k, v in lm.state_dict().items()}
        saved_opt = copy.deepcopy(opt.state_dict())
        for i in range(cfg.compile_warmup_steps):
            accumulate_gradients(train_model, loader, start_step + i, prior_rows, grad_accum, amp, d.enabled)
            opt.step(start_step + i, 0.0, max(loop_budget, 1.0))
            opt.zero_grad()
        lm.load_state_dict(saved_model)
        opt.load_state_dict(saved_opt)
        sync(d.device)
    stages["compile_warmup"] = time.perf_counter() - t

    # The training loop. `train_s` runs continuously from `mark`, paused only around the val evals.
    def validate_now(step: int) -> None:
        t_val = time.perf_counter()
        meter = evaluate(model, prior_rows, val, cfg.train_seq_len, cfg.val_batch_tokens, byte_tables, d, amp)
        stages["val"] = stages.get("val", 0.0) + time.perf_counter() - t_val
        history["val"].append({"step": step, "train_s": train_s, "wall_s": time.perf_counter() - t_start,
                               "val_bpb": meter.bpb, "val_loss": meter.val_loss})
        log.event("val", step=step, val_bpb=meter.bpb, val_loss=meter.val_loss, train_seconds=train_s,
                  seconds=time.perf_counter() - t_val)

    bar = Progress("train", total=cfg.iterations, unit="steps") if d.main and sys.stderr.isatty() else None
    step, stop_reason, start_train_s = start_step, None, train_s
    qat_on = 0
    recent = deque(maxlen=10)  # recent step durations: does one more step fit in the budget?
    last_log_step, last_log_s = step, train_s
    lm.train()
    mark = time.perf_counter()
    while True:
        if cfg.val_loss_every and step % cfg.val_loss_every == 0:
            sync(d.device)
            train_s += time.perf_counter() - mark
            validate_now(step)
            mark = time.perf_counter()
        if step >= cfg.iterations:
            stop_reason = "iterations"
            break
        t0 = time.perf_counter()
        loss = accumulate_gradients(train_model, loader, step, prior_rows, grad_accum, amp, d.enabled)
        if cfg.schedule == "steps":
            lr = opt.step(step, float(step), float(max(cfg.iterations, 1)))
        else:
            lr = opt.step(step, train_s + time.perf_counter() - mark, loop_budget)
        opt.zero_grad(set_to_none=True)
        if qat_layers and not qat_on and lr < cfg.qat_lr_scale:
            # A tensor write the compiled graph reads, not a Python flag it would freeze (golf.quant).
            qat_on = set_qat(transformer, True)
            log.event("qat", step=step + 1, lr_scale=lr, layers=qat_on)
        if ema is not None:
            ema.update(lm)
        loss_value = loss.item()  # also waits for the step's kernels, so the clock below is honest
        now = time.perf_counter()
        recent.append(now - t0)
        train_s += now - mark
        mark = now
        step += 1
        # One all-reduce decides for every rank: a non-finite loss anywhere, or no time for another step.
        flags = torch.tensor([float(not np.isfinite(loss_value)),
                              float(train_s + sum(recent) / len(recent) > loop_budget)], device=d.device)
        if d.enabled:
            torch_dist.all_reduce(flags, op=torch_dist.ReduceOp.MAX)
        if flags[0] > 0:
            raise NonFiniteLossError(f"training loss is {loss_value} at step {step} (lr scale {lr:.4g}); "
                                     f"lower the learning rates (optim.*_lr) or check the data")
        if step % cfg.log_every == 0 or step == start_step + 1:
            history["train"].append({"step": step, "train_s": train_s, "wall_s": time.perf_counter() - t_start,
                                     "loss": loss_value})
            window_s = train_s - last_log_s
            ms = 1000.0 * window_s / max(step - last_log_step, 1)
            left = min(loop_budget - train_s, (cfg.iterations - step) * ms / 1000.0)
            log.event("train", step=step, loss=loss_value, lr_scale=lr, ms_per_step=ms,
                      tokens_per_s=(step - last_log_step) * cfg.train_batch_tokens / max(window_s, 1e-9),
                      train_seconds=train_s, eta_s=max(left, 0.0))
            last_log_step, last_log_s = step, train_s
        if bar is not None:
            bar.update(1, loss=f"{loss_value:.3f}")
        if flags[1] > 0:
            stop_reason = "budget"
            break
    sync(d.device)
    train_s += time.perf_counter() - mark
    if bar is not None:
        bar.close()
    run_steps, run_s = step - start_step, train_s - start_train_s
    stages["train"] = run_s
    log.event("train_done", steps=step, stop=stop_reason, train_seconds=train_s, loop_budget_s=loop_budget)

    # Every rank's weights must be the same (DDP); record one hash per rank.
    digest = weights_sha256(lm)
    hashes = [None] * d.world_size if d.enabled else [digest]
    if d.enabled:
        torch_dist.all_gather_object(hashes, digest)
    log.event("weights", **{f"rank{r}_sha256": h[:16] for r, h in enumerate(hashes)})

    t = time.perf_counter()
    if d.main:
        save_checkpoint(run_dir / "checkpoint.pt", cfg, lm, tiers, opt, ema, step, train_s, history)
    stages["checkpoint"] = time.perf_counter() - t

    # The exported weights (EMA when enabled), then the GPTQ Hessians: they read training data, so they come
    # first and count against the budget.
    if ema is not None:
        ema.copy_to(lm)
    lm.eval()
    hessians = calibrate(cfg, d, log, lm, loader, step, stages)

    # Final plain eval of the float model.
    t = time.perf_counter()
    meter = evaluate(model, prior_rows, val, cfg.train_seq_len, cfg.val_batch_tokens, byte_tables, d, amp)
    stages["final_eval"] = time.perf_counter() - t
    history["val"].append({"step": step, "train_s": train_s, "wall_s": time.perf_counter() - t_start,
                           "val_bpb": meter.bpb, "val_loss": meter.val_loss, "final": True})
    log.event("final", val_bpb=meter.bpb, val_loss=meter.val_loss, ema=ema is not None, val_targets=meter.targets,
              val_bytes=meter.bytes, seconds=stages["final_eval"])

    summary.update({
        "val_bpb": meter.bpb, "val_loss": meter.val_loss, "float_val_bpb": meter.bpb,
        "steps": step, "tokens": step * cfg.train_batch_tokens, "train_seconds": train_s,
        "ms_per_step": 1000.0 * run_s / run_steps if run_steps else None,
        "tokens_per_s": run_steps * cfg.train_batch_tokens / run_s if run_s > 0 else None,
        "stop_reason": stop_reason, "val_targets": meter.targets, "val_history": history["val"],
        "weights_sha256": hashes, "grad_accum": grad_accum,
    })
    size, over_cap = None, False
    if cfg.export:
        size = export_and_evaluate(cfg, d, log, run_dir, summary, lm, tiers, loader, step, val, byte_tables, amp,
                                   hessians)
        over_cap = broadcast_object(size is not None and not size["fits"], d)  # every rank fails together
    if d.main:
        t = time.perf_counter()
        plot_curves(run_dir / "loss_vs_time.png", history, log)
        stages["plot"] = time.perf_counter() - t
    summary["peak_mem_bytes"] = peak_mem_bytes(d.device)
    summary["wall_seconds"] = time.perf_counter() - t_start
    if d.main:
        write_json(run_dir / "summary.json", summary)
        log.event("done", val_bpb=summary["val_bpb"], steps=step, train_seconds=train_s,
                  wall_seconds=summary["wall_seconds"], summary=run_dir / "summary.json")
    if over_cap:  # BudgetError (non-zero exit), with model.golf and summary.json kept
        if size is not None:
            check_size(size)
        raise BudgetError(f"{run_dir / 'model.golf'}: over the size cap (rank 0 reports the sizes)")


# --- the artifact: GPTQ calibration inside the budget, model.golf, the evals of the model it rebuilds ---

def calibrate(cfg: TrainConfig, d: Dist, log: RunLog, lm: TieredLM, loader: DistributedLoader, step: int,
              stages: dict) -> dict | None:
    """GPTQ Hessians from `calib_batches` training steps' batches (those after the last trained step), on rank 0,
    with the weights that will be exported. It reads training data, so it runs right after the loop and its
    seconds count against the budget (that is what gptq_reserve_seconds leaves room for)."""
    if not cfg.export or cfg.calib_batches == 0:
        return None
    t = time.perf_counter()
    hessians = None
    if d.main:
        # Rank 0's share of the next `calib_batches` global batches (every micro-batch of each).
        batches = (loader.batch(step + i, micro)[0] for i in range(cfg.calib_batches)
                   for micro in range(loader.grad_accum))
        hessians = collect_hessians(lm.transformer, batches)
    if d.enabled:
        torch_dist.barrier()
    stages["calibrate"] = time.perf_counter() - t
    used = stages["load_train"] + stages["fit_tiers"] + stages["train"] + stages["calibrate"]
    log.event("stage", stage="calibrate", seconds=stages["calibrate"], batches=cfg.calib_batches,
              matrices=len(hessians or {}), budget_used_s=used, budget_s=cfg.max_wallclock_seconds)
    if used > cfg.max_wallclock_seconds:
        log.event("warning", what="budget", message=f"load + tier fit + training loop + calibration took {used:.1f} s, "
                  f"over max_wallclock_seconds={cfg.max_wallclock_seconds:g}; raise gptq_reserve_seconds")
    return hessians


def export_and_evaluate(cfg: TrainConfig, d: Dist, log: RunLog, run_dir: Path, summary: dict, lm: TieredLM,
                        tiers: Tiers | None, loader, step: int, val: np.ndarray, byte_tables: ByteTables, amp,
                        hessians: dict | None) -> dict | None:
    """GPTQ + model.golf on rank 0; then every rank rebuilds the model from the file and scores it: plain
    (roundtrip) and sliding. Fills the artifact keys of summary.json; returns rank 0's size report."""
    stages = summary["stage_seconds"]
    path = run_dir / "model.golf"
    t = time.perf_counter()
    size = None
    if d.main:
        code = code_bytes()
        info = export_model(path, lm, tiers, hessians=hessians, qcfg=cfg.quant, train_seq_len=cfg.train_seq_len,
                            extra={"run_id": cfg.run_id, "preset": cfg.preset, "baseline": cfg.baseline,
                                   "seed": cfg.seed, "steps": step, "git_sha": summary.get("git_sha")},
                            codec=cfg.artifact_codec,
                            max_bytes=cfg.size_cap_bytes - code["raw"] if cfg.prune_to_fit else None)
        summary["pruning"] = info.pruning
        if info.pruning is not None:
            log.event("prune", **info.pruning)
        size = size_report(path, code=code, cap=cfg.size_cap_bytes)
        summary.update({"artifact_bytes": size["artifact_bytes"], "code_bytes": size["code_bytes"],
                        "total_bytes": size["total_bytes"], "size": size,
                        "code_files": [[name, nbytes] for name, nbytes in code["files"]]})
        log.event("artifact", path=path, compress_s=info.compress_seconds, raw_bytes=info.raw_bytes,
                  **{k: size[k] for k in ("artifact_bytes", "code_bytes", "code_lzma_bytes", "total_bytes", "margin",
                                          "fits")})
    if d.enabled:
        torch_dist.barrier()
    stages["export"] = time.perf_counter() - t

    t = time.perf_counter()
    loaded = load_model(path, d.device)
    window = cfg.eval_window or cfg.train_seq_len
    batch = max(1, cfg.val_batch_tokens // window)
    plain = evaluate_windows(loaded.lm, loaded.prior_rows, val, window=cfg.train_seq_len, stride=cfg.train_seq_len,
                             byte_tables=byte_tables, batch_windows=max(1, cfg.val_batch_tokens // cfg.train_seq_len),
                             dist=d, device=d.device, amp=amp, progress=False)
    stream = load_val_tokens(find_shards(cfg.data_path, "val"))
    if cfg.val_tokens:
        stream = stream[:len(val)]  # the same capped prefix as the plain evals
    sliding = evaluate_windows(loaded.lm, loaded.prior_rows, stream, window=window, stride=cfg.eval_stride,
                               byte_tables=byte_tables, batch_windows=batch, dist=d, device=d.device, amp=amp,
                               progress=d.main and sys.stderr.isatty())
    stages["artifact_eval"] = time.perf_counter() - t
    summary.update({"roundtrip_val_bpb": plain.val_bpb, "sliding_val_bpb": sliding.val_bpb,
                    "quant_penalty": plain.val_bpb - summary["float_val_bpb"], "val_bpb": sliding.val_bpb,
                    "val_loss": sliding.val_loss, "eval_seconds": sliding.seconds,
                    "sliding": {k: v for k, v in sliding.to_dict().items() if k != "nll_sum"}})
    log.event("roundtrip", val_bpb=plain.val_bpb, val_loss=plain.val_loss, quant_penalty=summary["quant_penalty"],
              targets=plain.targets, seconds=plain.seconds)
    log.event("sliding", val_bpb=sliding.val_bpb, val_loss=sliding.val_loss, window=window, stride=cfg.eval_stride,
              targets=sliding.targets, seconds=sliding.seconds, tokens_per_s=sliding.tokens_per_s)
    return size


def main(argv=None) -> int:
    try:
        cfg = resolve_config(argv)
        run(cfg)
    except GolfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
