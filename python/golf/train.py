"""python -m golf.train: fit tiers 0+1 by counting, then train the tier-2 transformer, in one wall-clock budget.

Usage
    python -m golf.train [--preset cpu|h100|h100x8] [--baseline] [--max-wallclock-seconds S] [--iterations N]
                         [--run-id ID] [--runs-dir DIR] [--resume PATH] [--no-compile] [--set KEY=VALUE ...]
    torchrun --nproc_per_node=8 -m golf.train --preset h100x8
Settings come from golf.config (flag > env > preset); `--help` lists the flags.

The recipe (`recipe`), one function per stage in the order they run (rank 0 writes everything; every rank trains)
    load_data       the tokenizer's byte tables, the train stream (rank 0 reads the tier-fit prefix, also with
                    `tiers_file` when project_priors will need it; fitting across ranks, each rank keeps its part),
                    the val tokens; what could fail at the end is checked here (the code bytes of the size report)
    fit_priors      tiers 0+1 (skipped with --baseline): under torchrun each rank counts its part of the prefix
                    and the counts are summed (fits_across_ranks: the one-process fit, bit for bit); else on rank
                    0, broadcast; with `tiers_file` (golf.experiment's shared fit, golf.tierfile) loaded
                    instead, and the run charged the seconds that fit took;
                    tier1_train: also how often the prefix reads each prior row (what project_priors weighs by),
                    then the prefix is dropped
    plan_budget     loop budget = max_wallclock_seconds - (load_train + fit_tiers) - gptq_reserve_seconds, on rank 0,
                    broadcast: every rank schedules its learning rate from the same numbers
    build_model     transformer, prior tables, optimizers, EMA, late QAT; --resume; torch.compile; DDP
    score_priors    the tiers-only val BPB (tier-2 logits 0), once
    warm_up         compile warm-up (CUDA + compile): `compile_warmup_steps` real steps in every recurrence phase,
                    then weights and optimizer state are restored; untimed, as in the records
    check_budget    the calibration's seconds, measured warm on single batches, must fit gptq_reserve_seconds: else
                    the run stops here, before training (BudgetError naming every stage's seconds), not after it
    check_eval_budget the artifact eval's time (eval_method on the scored val tokens) projected on synthetic
                    tokens: over eval_budget_seconds (unless eval_over_budget) the run stops here (BudgetError)
    train_loop      the timed loop: its timer (`train_seconds`) covers only the steps, the periodic val evals (every
                    `val_loss_every` steps, also at step 0) excluded, as the challenge times it. One all-reduce per
                    step agrees on a non-finite loss anywhere, the elapsed time (the slowest rank's clock, which
                    every rank then carries: the time schedule's learning rate is the same on every rank) and the
                    step time, and a stop signal; a step starts only if it ends inside the loop budget;
                    `iterations` caps the steps. Every `checkpoint_every_seconds` of the loop timer, checkpoint.pt
                    (the writing pauses the timer, as a val eval does). SIGINT / SIGTERM: the step ends, then
                    checkpoint.pt and InterruptedRun (exit 128 + the signal, one line saying how to --resume).
                    Loss of a batch: the mean of ops.tiered_nll(model(x), prior_tables, rows, y, softcap, w)
                    (the loss kernel writes the gradient in its forward pass), rows = make_prior_rows(tiers)(x):
                    the tiers' rows for the targets y, computed from the INPUT tokens x.
                    Before each step the schedule (golf.schedule.TrainingSchedule, one progress count) gives its
                    stage, and apply_stage applies it: the LR scale and Muon momentum; the depth-recurrence phase
                    (Transformer.set_phase, logged); the prior gate's `anneal` weight (prior_anneal > 0: a
                    tensor write); late QAT (qat_lr_scale > 0: once the warmdown takes the LR scale below it the
                    int6 matrices train through golf.quant's fake quantisation, also switched by a tensor write, so
                    a compiled graph sees both).
                    prior_free_loss > 0 adds that times the NLL of tier 2's logits alone to the objective.
    finish_training every rank's weight hash (they must agree: DistributedError naming the ranks otherwise),
                    checkpoint.pt; then (with EMA) the EMA weights swapped in
    calibrate       the GPTQ Hessians from `calib_batches` training batches, on rank 0, which also keeps the first
                    micro-batch for export's rate control; they read training data, so they count against the
                    budget: load + fit + loop + calibration <= max_wallclock_seconds. Then the budget is closed:
                    the loader refuses every later read (BudgetError), as the challenge forbids reading training
                    data after it; no later stage reads a training shard
    final_eval      the float model's plain val BPB; what the prior gate does (summary "prior_gate")
    project_priors  tier1_train only: the trained prior rows refit to tier-1 factors of the tier ranks (what the
                    artifact stores; tier 0 as fitted), weighted by fit_priors' row counts, and their plain val
                    BPB (summary "projected_val_bpb"; quant_penalty, roundtrip - float, then holds the
                    projection's cost too)
    export          GPTQ int6 -> model.golf (golf.export); over the cap (fit_to_cap), golf.rate's widths per
                    matrix and table, its errors calibrated on the first calibration batch (kept by calibrate;
                    event=rate, summary "rate"), then if still over the cheapest +-1 values zeroed (event=prune,
                    summary "pruning");
                    the size report (artifact + code bytes vs 16,000,000)
    artifact_eval   every rank rebuilds the model from the file alone and scores it (golf.scoring): plain
                    (roundtrip_val_bpb), then eval_method: sliding (eval_window, eval_stride) or ttt (ttt.*), as
                    `<method>_val_bpb` = val_bpb, its facts under summary[<method>] (seconds, projected_seconds,
                    derived_8x_seconds: the full split on 8 ranks at the measured rate, derived) and eval_seconds
    write_summary   summary.json (DESIGN.md §1 keys, plus loop_budget_seconds, budget_used_seconds, stop_reason,
                    val_history, weights_sha256, size, rate, pruning, code_files), loss_vs_time.png. Still over
                    the size cap: BudgetError (exit 2) after model.golf and summary.json are written.
Every evaluation goes through golf.scoring.score_artifact (plain: window = stride = train_seq_len). Before the loop
(check_eval_budget) the artifact eval's time is projected on synthetic tokens and a run whose eval would exceed
eval_budget_seconds stops there (BudgetError), not after training. A run that fails still writes
summary.json, with "error". A non-finite training loss raises NonFiniteLossError naming the step (steps count from
1, the first optimizer step) and the step the last good checkpoint.pt holds.

One run, one directory: the run creates runs_dir/run_id and holds a lock on it (`.lock`, an flock) until it ends; a
second run there at the same time is refused, and so is a folder holding an earlier run's files, unless
`--overwrite` (they are removed first) or `--resume` (continuing it). Those refusals, and a bad --resume
checkpoint, happen before anything is written.

Outputs in runs_dir/run_id/: log.txt (key=value lines: `event=NAME k=v ...`), summary.json, checkpoint.pt,
model.golf, loss_vs_time.png, .lock.

checkpoint.pt (torch.save; load with weights_only=False)
    format, config (to_dict), step, train_seconds, model (the transformer's state_dict, raw weights),
    prior_tables (fp32 [R, V], as trained), tiers (tier-0/1 tensors by name, None with --baseline),
    optimizer (Optimizers.state_dict), ema (EMA.state_dict or None; names are TieredLM's), history,
    fit_tiers_seconds. Written atomically; a failed write (a full disk) leaves the previous one and no temp file.
    `--resume PATH` takes the checkpoint's tiers (not a refit: a time-bounded tier-1 refinement would differ) and
    is charged their fit seconds, loads all of the above and continues at `step` with the loop timer at
    `train_seconds`; the budget and `iterations` of the new command apply to the total. Settings that change what
    the checkpoint was trained on (RESUME_SETTINGS: the model, the tiers and their fit, the sequence length) are
    refused, naming the setting.

Distributed: torchrun sets WORLD_SIZE/RANK/LOCAL_RANK (golf.runtime: cuda:LOCAL_RANK with NCCL, gloo on the CPU).
The ranks fit the tiers together (fits_across_ranks) or rank 0 fits them and broadcasts them. Gradient accumulation = batch_devices // world_size unless `grad_accum`
is set; the global batch of a step depends only on (seed, step), so any world size sees the same tokens.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import fcntl
import hashlib
import itertools
import os
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn

from golf import attention, ops, runtime
from golf.artifact import read_header
from golf.config import SETTINGS_HEADER, TrainConfig, format_table, portable_dict, resolve_config, setting_name, \
    settings_table
from golf.data import ByteTables, DistributedLoader, check_token_ids, find_shards, load_tokenizer, \
    load_val_tokens, read_fit_prefix
from golf.errors import BudgetError, ConfigError, DistributedError, GolfError, InterruptedRun, OutputError
from golf.evaluate import EvalResult
from golf.export import export_model, load_model
from golf.model import TieredLM, Transformer, make_prior_rows, param_counts
from golf.optim import EMA, Optimizers, build_optimizers
from golf.progress import Progress
from golf.schedule import Stage, TrainingSchedule
from golf.quant import collect_hessians, prepare_qat, set_qat
from golf.runtime import Dist, RunLog
from golf.scoring import Context, Predictor, cut_val, eval_spec, plain_spec, projected_seconds, score_artifact
from golf.sizes import check_size, code_bytes, size_report
from golf.tierfile import read_tiers_file
from golf.tiers import Tiers, Vocab, fit_part, fit_tiers, project_tier1, row_counts, tier_tensors, tiers_from_tensors

CHECKPOINT_FORMAT = "golf-checkpoint-1"


class NonFiniteLossError(GolfError):
    """The training loss became NaN or infinite."""


# --- what the stages share -----------------------------------------------------------------------------

@dataclass
class Run:
    """The settings, this process, where the run writes, and the summary its stages fill."""
    cfg: TrainConfig
    d: Dist
    log: RunLog
    dir: Path
    summary: dict
    t_start: float
    use_compile: bool = False
    amp: Callable = contextlib.nullcontext
    grad_accum: int = 1
    code: dict | None = None      # rank 0's code bytes, measured at the start (the size report needs them)
    signals: "StopSignals | None" = None
    checkpoint: dict | None = None  # --resume's checkpoint, read and checked before the run started

    @property
    def stages(self) -> dict:
        return self.summary["stage_seconds"]


@dataclass
class Data:
    vocab_size: int
    tokenizer: object             # SentencePieceProcessor: the tier-0 classes come from its pieces
    byte_tables: ByteTables
    loader: DistributedLoader
    fit_ids: torch.Tensor | None  # rank 0, until fit_priors: the train-stream prefix the tiers are fit on
    val: np.ndarray               # val tokens cut to whole train_seq_len windows (every plain eval)
    scored: np.ndarray            # the val tokens the artifact's eval method scores (golf.scoring.cut_val)
    fit_row_counts: torch.Tensor | None = None  # rank 0, tier1_train: row_counts over fit_ids (project_priors)


@dataclass
class Model:
    lm: TieredLM
    prior_rows: Callable          # x [B, T] -> int32 [B, T, K]
    opt: Optimizers
    ema: EMA | None
    qat_layers: list
    step_model: nn.Module         # what a training step calls: lm, compiled and/or wrapped in DDP
    hidden: Callable              # the transformer's hidden states for the evals (compiled with the run)


@dataclass
class Calibration:
    """What export needs from the training data, read by calibrate inside the budget (rank 0; None elsewhere)."""
    hessians: dict | None = None  # GPTQ Hessians by Transformer.state_dict name
    batch: tuple | None = None    # (x, y): the first calibration micro-batch, rate control's loss (fit_to_cap)


@dataclass
class Loop:
    start_step: int
    start_train_s: float
    step: int = 0
    train_s: float = 0.0
    stop_reason: str | None = None
    prior_weight: float | None = None   # the prior_anneal schedule's last weight (None: no schedule)
    qat_on: int = 0                     # layers late QAT switched on (0: not yet)
    checkpoint_step: int | None = None  # the step checkpoint.pt holds, once this run wrote one
    history: dict = field(default_factory=lambda: {"train": [], "val": []})


# --- the run -------------------------------------------------------------------------------------------

def run(cfg: TrainConfig) -> dict:
    """Train per cfg; returns this rank's summary (rank 0 writes its own). Raises on failure after writing
    summary.json with "error". What is refused before the run directory is claimed (a bad --resume checkpoint, a
    directory another run holds or has written) writes nothing."""
    t_start = time.perf_counter()
    checkpoint = read_checkpoint(cfg.resume, cfg) if cfg.resume else None
    with runtime.distributed(cfg.device) as d, StopSignals() as signals:
        cfg.run_id = runtime.broadcast_object(cfg.run_id, d)  # a default timestamp id may differ between ranks
        run_dir = Path(cfg.runs_dir) / cfg.run_id
        lock, refusal = None, None
        if d.main:
            try:
                lock = claim_run_dir(run_dir, cfg)
            except OutputError as exc:
                refusal = str(exc)
        refusal = runtime.broadcast_object(refusal, d)
        if refusal is not None:
            raise OutputError(refusal)
        r = Run(cfg, d, RunLog(run_dir / "log.txt" if d.main else None), run_dir, new_summary(cfg, d), t_start,
                signals=signals, checkpoint=checkpoint)
        try:
            recipe(r)
        except BaseException as exc:
            r.summary["error"] = f"{type(exc).__name__}: {exc}"
            r.summary["wall_seconds"] = time.perf_counter() - t_start
            r.summary["peak_mem_bytes"] = runtime.peak_mem_bytes(d.device)
            if d.main:
                with contextlib.suppress(OSError):  # a full disk must not hide the error that stopped the run
                    runtime.write_json(run_dir / "summary.json", r.summary)
                r.log.event("error", type=type(exc).__name__, message=str(exc))
            raise
        finally:
            r.log.close()
            if lock is not None:
                lock.close()
    return r.summary


# What a run writes into its directory (an earlier run's are refused, or with --overwrite removed, at the start).
RUN_FILES = ("log.txt", "summary.json", "checkpoint.pt", "model.golf", "loss_vs_time.png")


def claim_run_dir(run_dir: Path, cfg: TrainConfig):
    """Create and lock runs_dir/run_id for this run (an flock held until the run ends, released by the OS if the
    process dies). OutputError, with nothing written, when the folder cannot be made, another run holds it, or an
    earlier run's files are there (unless --overwrite removes them, or --resume continues that run)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = open(run_dir / ".lock", "a")
    except OSError as exc:
        raise OutputError(f"runs_dir (--runs-dir) {cfg.runs_dir}: cannot create the run directory {run_dir} "
                          f"({exc.strerror or exc})") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise OutputError(f"{run_dir}: another run is writing there now (run_id {cfg.run_id}); give this one "
                          "another --run-id") from None
    earlier = [name for name in RUN_FILES if (run_dir / name).exists()]
    if earlier and not cfg.resume:
        if not cfg.overwrite:
            lock.close()
            raise OutputError(f"{run_dir}: holds an earlier run ({', '.join(earlier)}); give another --run-id, "
                              "--overwrite to replace it, or --resume its checkpoint.pt")
        for name in earlier:
            (run_dir / name).unlink()
    return lock


class StopSignals:
    """SIGINT and SIGTERM while a run runs. In the training loop (`deferred`) the signal is a request that the
    loop honours at the end of its step (checkpoint.pt, then InterruptedRun); elsewhere, or a second time,
    InterruptedRun at once. Only the main thread can take signals: elsewhere this does nothing."""

    def __init__(self):
        self.signal: int | None = None
        self.deferred = False
        self.previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def handle(self, signum, frame):
        if self.deferred and self.signal is None:
            self.signal = signum
            return
        raise InterruptedRun(f"{signal.Signals(signum).name}: the run stopped", signal=signum)


def new_summary(cfg: TrainConfig, d: Dist) -> dict:
    return {"preset": cfg.preset, "baseline": cfg.baseline, "seed": cfg.seed, "world_size": d.world_size,
            "device": str(d.device) if d.device.type != "cuda" else torch.cuda.get_device_name(d.device),
            "torch_version": torch.__version__, "git_sha": runtime.git_sha(), "config": cfg.to_dict(),
            "stage_seconds": {}}


def recipe(r: Run) -> None:
    """The whole run, stage by stage (the module docstring says what each does)."""
    setup(r)
    data = load_data(r)
    tiers = fit_priors(r, data)
    loop_budget = plan_budget(r)
    model = build_model(r, data, tiers)
    loop = resume(r, model)
    score_priors(r, data, model, tiers)
    warm_up(r, data, model, loop, loop_budget)
    check_budget(r, data, model, loop, loop_budget)
    check_eval_budget(r, data, model)
    train_loop(r, data, model, tiers, loop, loop_budget)
    finish_training(r, model, tiers, loop)
    calib = calibrate(r, data, model, loop)
    data.loader.close()  # the training budget ends here: no stage below may read a training shard
    final_eval(r, data, model, loop)
    size = None
    if r.cfg.export:
        model, tiers = project_priors(r, data, model, tiers)
        size = export(r, model, tiers, loop, calib)
        artifact_eval(r, data)
    write_summary(r, loop, size)


# --- stages --------------------------------------------------------------------------------------------

def setup(r: Run) -> None:
    cfg, d = r.cfg, r.d
    cuda = d.device.type == "cuda"
    r.use_compile = cuda if cfg.compile is None else cfg.compile
    use_amp = cuda if cfg.amp is None else cfg.amp
    r.amp = (lambda: torch.autocast(d.device.type, dtype=torch.bfloat16)) if use_amp else contextlib.nullcontext
    r.grad_accum = cfg.grad_accum or max(1, cfg.batch_devices // d.world_size)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    backend, tried = attention.choose(d.device, cfg.attention)  # before anything compiles: traces read it
    attention.use(backend)
    r.summary["attention"] = backend
    runtime.seed_everything(cfg.seed)
    r.log.lines(["settings (python -m golf.config shows the same)"]
                + format_table(settings_table(cfg), SETTINGS_HEADER))
    r.log.event("start", run_id=cfg.run_id, preset=cfg.preset, baseline=cfg.baseline, world_size=d.world_size,
                device=d.device, grad_accum=r.grad_accum, compile=r.use_compile, amp=use_amp,
                threads=torch.get_num_threads(), budget_s=cfg.max_wallclock_seconds, iterations=cfg.iterations)
    r.log.event("attention", backend=backend, **{f"tried_{k}": v.replace(" ", "_") for k, v in tried.items()})


def load_data(r: Run) -> Data:
    """The tokenizer's byte tables, the loader over every train shard (memory-mapped), rank 0's tier-fit prefix
    (read through the loader's stream, so that closing the loader ends it too), the val tokens. Counts the code
    bytes now: a source tree that cannot be found fails the run here, not after training."""
    cfg, d = r.cfg, r.d
    t = time.perf_counter()
    sp = load_tokenizer(cfg.tokenizer_path, cfg.vocab_size)
    vocab_size = sp.vocab_size()
    byte_tables = ByteTables.from_tokenizer(sp)
    if cfg.export and d.main:  # what a submission of this run ships; a cap the code alone fills fails now
        r.code = code_bytes(portable_dict(cfg))
        room = cfg.size_cap_bytes - cfg.size_margin_bytes - r.code["bytes"]
        if room <= 0:
            raise BudgetError(f"size_cap_bytes={cfg.size_cap_bytes:,}: the code alone takes {r.code['bytes']:,} "
                              f"bytes (train_gpt.py; size_margin_bytes={cfg.size_margin_bytes:,}): no room for the "
                              "artifact, so the run would end over the cap")
    r.stages["setup"] = time.perf_counter() - t

    t = time.perf_counter()
    train_files = find_shards(cfg.data_path, "train")
    loader = DistributedLoader(train_files, seq_len=cfg.train_seq_len, global_batch_tokens=cfg.train_batch_tokens,
                               seed=cfg.seed, rank=d.rank, world_size=d.world_size, grad_accum=r.grad_accum,
                               vocab_size=vocab_size, device=d.device)
    fit_ids = None
    fitted_elsewhere = cfg.tiers_file or r.checkpoint is not None  # fit_priors then loads the tiers
    if fits_across_ranks(r):  # each rank keeps its part
        fit_ids = fit_part(read_fit_prefix(loader.stream, cfg.tier_fit_tokens, vocab_size), d.rank, d.world_size,
                           sp.bos_id()).clone()
    elif d.main and not cfg.baseline and (not fitted_elsewhere or projects_priors(cfg)):
        fit_ids = read_fit_prefix(loader.stream, cfg.tier_fit_tokens, vocab_size)
    r.stages["load_train"] = time.perf_counter() - t
    r.log.event("stage", stage="load_train", seconds=r.stages["load_train"], train_files=len(train_files),
                train_tokens=len(loader.stream), fit_tokens=0 if fit_ids is None else fit_ids.numel())

    # Val tokens: every rank holds them and scores its own windows (golf.scoring's one rule for val_tokens).
    t = time.perf_counter()
    val_files = find_shards(cfg.data_path, "val")
    stream = load_val_tokens(val_files)
    spec = eval_spec(cfg)
    val, scored = cut_val(stream, plain_spec(spec, cfg.train_seq_len)), cut_val(stream, spec)
    check_token_ids(stream, vocab_size, val_files[0])
    r.stages["load_val"] = time.perf_counter() - t
    return Data(vocab_size, sp, byte_tables, loader, fit_ids, val, scored)


def fit_priors(r: Run, data: Data) -> Tiers | None:
    """Tiers 0+1: under torchrun every rank fits its part of the prefix and the counts are summed
    (fits_across_ranks); else rank 0 fits them on the prefix (or loads them from --resume's checkpoint or
    `tiers_file`, charging the seconds their fit took) and broadcasts them. With tier1_train, rank 0 also counts how
    often the prefix reads each prior row, here inside the budget, for project_priors; then the prefix is
    dropped."""
    cfg, d = r.cfg, r.d
    t = time.perf_counter()
    tiers, charged = None, 0.0
    if not cfg.baseline:
        if d.main and r.checkpoint is not None:
            # --resume: the tiers the checkpoint's weights were trained on (a refit with a time-bounded tier-1
            # refinement would differ), charged the seconds their fit took, as the first run was
            tiers = tiers_from_tensors(r.checkpoint["tiers"], Vocab.from_tokenizer(data.tokenizer), cfg.tiers)
            charged = float(r.checkpoint.get("fit_tiers_seconds", 0.0))
        elif d.main and cfg.tiers_file:
            tiers, info = read_tiers_file(cfg.tiers_file, cfg, data.vocab_size)
            # A run that read the prefix itself (load_train) is not charged the file's read of it again.
            charged = info["seconds"]["fit"] + (info["seconds"]["read"] if data.fit_ids is None else 0.0)
            r.summary["tiers_file"] = {"path": str(cfg.tiers_file), "charged_seconds": charged}
        elif fits_across_ranks(r):  # every rank its part, the counts summed: every rank has the whole fit
            tiers = fit_tiers(data.fit_ids, Vocab.from_tokenizer(data.tokenizer), dataclasses.replace(cfg.tiers),
                              reduce=lambda counts: runtime.all_reduce_sum(counts, d), part=d.rank)
        elif d.main:
            tiers = fit_tiers(data.fit_ids, Vocab.from_tokenizer(data.tokenizer), dataclasses.replace(cfg.tiers))
        if d.main and projects_priors(cfg):
            data.fit_row_counts = row_counts(tiers, data.fit_ids)
        if not fits_across_ranks(r):
            tiers = runtime.broadcast_object(tiers, d)
        data.fit_ids = None
    r.stages["fit_tiers"] = runtime.broadcast_object(time.perf_counter() - t + charged, d)
    r.log.event("stage", stage="fit_tiers", seconds=r.stages["fit_tiers"], skipped=cfg.baseline,
                parts=d.world_size if fits_across_ranks(r) else 1,
                **({"shared_file": cfg.tiers_file, "charged_s": charged} if cfg.tiers_file else {}),
                **({f"{k}_s": v for k, v in tiers.fit_seconds.items()} if tiers is not None else {}),
                **({"tier1_refine_steps": tiers.refine_steps} if tiers is not None else {}))
    return tiers


def plan_budget(r: Run) -> float:
    """The training loop's seconds. Decided on rank 0 (only rank 0 pays the tier-fit prefix read) and broadcast."""
    cfg, stages = r.cfg, r.stages
    budget = runtime.broadcast_object(
        cfg.max_wallclock_seconds - stages["load_train"] - stages["fit_tiers"] - cfg.gptq_reserve_seconds, r.d)
    r.summary["loop_budget_seconds"] = budget
    if budget <= 0:
        raise BudgetError(f"max_wallclock_seconds={cfg.max_wallclock_seconds:g}: nothing left for the training loop "
                          f"after load_train {stages['load_train']:.1f} s, fit_tiers {stages['fit_tiers']:.1f} s "
                          f"and gptq_reserve_seconds={cfg.gptq_reserve_seconds:g}")
    return budget


def build_model(r: Run, data: Data, tiers: Tiers | None) -> Model:
    cfg, d = r.cfg, r.d
    runtime.seed_everything(cfg.seed)
    columns = tiers.columns if tiers is not None else 0
    transformer = Transformer(cfg.model_config(data.vocab_size, data.tokenizer.bos_id(), columns)).to(d.device)
    lm = TieredLM.of(transformer, tiers, d.device, trainable=cfg.tier1_train and tiers is not None,
                     prior_free=cfg.prior_free_loss)
    tables = lm.prior_tables
    qat_layers = prepare_qat(transformer, cfg.quant.small_numel) if cfg.qat_lr_scale > 0 else []
    prior_rows = make_prior_rows(tiers)
    opt = build_optimizers(lm.named_parameters(), cfg.optim)
    ema = EMA(lm, cfg.optim.ema_decay) if cfg.optim.ema_decay > 0 else None
    r.summary["params"] = {**tier_params(tiers), "tier2": param_counts(transformer)}
    r.log.event("model", tier2_params=r.summary["params"]["tier2"]["total"], prior_rows=int(tables.shape[0]),
                tier1_form="none" if tiers is None else "factored" if tiers.factored else "dense",
                prior_mib=round((tiers.prior_nbytes() if tiers is not None else 0) / 2**20, 1),
                tier1_train=cfg.tier1_train, groups=",".join(f"{g}:{len(n)}" for g, n in opt.groups.items()))

    # Pick the op implementation (and log a reference fallback) once, outside any compiled region.
    with torch.no_grad():
        probe = torch.zeros(1, 1, dtype=torch.long, device=d.device)
        lm(probe, prior_rows(probe), probe)

    compiled = torch.compile(lm, dynamic=False) if r.use_compile else lm
    if d.enabled and opt.banked:  # banked Muon averages these itself: DDP neither syncs nor broadcasts them
        banked = {id(p) for p in opt.banked}
        nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            compiled, [n for n, p in compiled.named_parameters() if id(p) in banked])
        with torch.no_grad():
            for p in opt.banked:
                torch_dist.broadcast(p, 0)
    # Before its last phase a recurrent model leaves virtual layers (and untied pass MLPs) unused.
    step_model = nn.parallel.DistributedDataParallel(
        compiled, device_ids=[d.device.index] if d.device.type == "cuda" else None,
        broadcast_buffers=False, find_unused_parameters=bool(transformer.cfg.recur_phases)) if d.enabled \
        else compiled
    hidden = torch.compile(transformer.hidden, dynamic=False) if r.use_compile else transformer.hidden
    return Model(lm, prior_rows, opt, ema, qat_layers, step_model, hidden)


def resume(r: Run, m: Model) -> Loop:
    """Where the loop starts: step 0 with its timer at 0, or (--resume) the checkpoint's step, timer and history."""
    if r.checkpoint is None:
        return Loop(0, 0.0)
    step, train_s, history = load_checkpoint(r.checkpoint, r.cfg.resume, m.lm, m.opt, m.ema, r.log)
    r.checkpoint = None  # its tensors now live in the model
    r.log.event("resume", path=r.cfg.resume, step=step, train_seconds=train_s)
    return Loop(step, train_s, history=history)


def plain_eval(r: Run, data: Data, lm: TieredLM, prior_rows: Callable, hidden: Callable | None = None
               ) -> EvalResult:
    """The challenge's plain eval (non-overlapping train_seq_len windows) through golf.scoring; ranks take
    disjoint windows. No budget projection: these evals are short and outside the budgets."""
    spec = plain_spec(eval_spec(r.cfg), r.cfg.train_seq_len).replace(budget_seconds=0)
    return score_artifact(Predictor(lm, prior_rows), spec, data.val, byte_tables=data.byte_tables, dist=r.d,
                          device=r.d.device, amp=r.amp, hidden=hidden, progress=False)


def score_priors(r: Run, data: Data, m: Model, tiers: Tiers | None) -> None:
    """The tiers-only val BPB (tier-2 logits 0), once; not in the loop budget."""
    if tiers is None:
        r.summary["tiers_only_bpb"] = None
        return
    t = time.perf_counter()
    result = plain_eval(r, data, m.lm.priors_only(), m.prior_rows)
    r.stages["tiers_eval"] = time.perf_counter() - t
    r.summary["tiers_only_bpb"] = result.val_bpb
    r.log.event("tiers_only", val_bpb=result.val_bpb, val_loss=result.val_loss, seconds=r.stages["tiers_eval"])


def warm_up(r: Run, data: Data, m: Model, loop: Loop, loop_budget: float) -> None:
    """Real steps to trigger compilation, in every depth-recurrence phase the run will still reach (each its own
    graph, as PR #1412 warms its loops), then back to the starting state, phase included (untimed, as in the
    records)."""
    t = time.perf_counter()
    if r.use_compile and r.cfg.compile_warmup_steps > 0:
        saved_model = {k: v.detach().clone() for k, v in m.lm.state_dict().items()}
        saved_opt = copy.deepcopy(m.opt.state_dict())
        schedule = TrainingSchedule(r.cfg, max(loop_budget, 1.0))
        transformer = m.lm.transformer
        first = schedule.at(loop.start_step, loop.start_train_s).recur_phase
        for phase in range(first, len(transformer.virtual_maps)):
            transformer.set_phase(phase)
            for i in range(r.cfg.compile_warmup_steps):
                stage = schedule.at(loop.start_step + i, loop.start_train_s)
                accumulate_gradients(m, data.loader, loop.start_step + i, r.grad_accum, r.amp, r.d.enabled,
                                     local_clip(r.cfg))
                m.opt.step(stage.lr_scale, stage.momentum)
                m.opt.zero_grad()
        m.lm.load_state_dict(saved_model)  # the phase too (the model's recur_phase buffer)
        m.opt.load_state_dict(saved_opt)
        runtime.sync(r.d.device)
    r.stages["compile_warmup"] = time.perf_counter() - t


def check_budget(r: Run, data: Data, m: Model, loop: Loop, loop_budget: float) -> None:
    """Refuse, before training, a run whose calibration cannot fit the seconds reserved for it: the calibration
    runs after the loop and counts against the budget, so finding out there would waste the whole run. Its cost is
    measured as the calibration will meet it, warm (after the loop, every kernel has run and every buffer is
    allocated): on rank 0, which calibrates, one untimed micro-batch, then the fastest of two timed ones (a
    load spike on the machine must not refuse a run), scaled to calib_batches x grad_accum."""
    cfg = r.cfg
    per_batch, batches = 0.0, cfg.calib_batches * r.grad_accum if cfg.export else 0
    if batches:
        if r.d.main:
            times = []
            for _ in range(3):
                t = time.perf_counter()
                collect_hessians(m.lm.transformer, [data.loader.batch(loop.start_step, 0)[0]])
                runtime.sync(r.d.device)
                times.append(time.perf_counter() - t)
            per_batch = min(times[1:])
        per_batch = runtime.broadcast_object(per_batch, r.d)
    estimate = per_batch * batches
    r.summary["calibrate_estimate_seconds"] = estimate
    if estimate > cfg.gptq_reserve_seconds:
        s = r.stages
        raise BudgetError(
            f"max_wallclock_seconds={cfg.max_wallclock_seconds:g} cannot hold the run: load_train "
            f"{s['load_train']:.2f} s + fit_tiers {s['fit_tiers']:.2f} s + training loop {loop_budget:.2f} s + "
            f"calibration ~{estimate:.2f} s ({batches} micro-batches at {per_batch:.3f} s, measured), but "
            f"gptq_reserve_seconds={cfg.gptq_reserve_seconds:g} leaves the calibration only that much; raise "
            f"--gptq-reserve-seconds above {estimate:.2f} or lower calib_batches (--calib-batches)")


def accumulate_gradients(m: Model, loader: DistributedLoader, step: int, grad_accum: int, amp, ddp: bool,
                         clip_local: float = 0.0) -> torch.Tensor:
    """Forward + backward over the step's micro-batches; returns this rank's mean loss (a 0-d tensor).
    clip_local > 0 (optim.grad_clip_local, R1147's order): this rank's own gradient is clipped to that norm, then
    the ranks average it (DDP does not sync); else DDP averages and Optimizers.step clips the average."""
    total = None
    for micro in range(grad_accum):
        x, y = loader.batch(step, micro)
        rows = m.prior_rows(x)
        # DDP all-reduces on the last micro-batch only (never, when this function averages after clipping).
        last = micro == grad_accum - 1 and not clip_local
        no_sync = m.step_model.no_sync() if ddp and not last else contextlib.nullcontext()
        weight = 1.0 / (y.numel() * grad_accum)  # the step's loss: the mean over its micro-batches' targets
        with no_sync:
            with amp():
                nll = m.step_model(x, rows, y, weight)
            loss = nll.sum() * weight
            loss.backward()
        total = loss.detach() if total is None else total + loss.detach()
    if clip_local:
        params = [p for p in m.opt.params if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, clip_local)
        if ddp:  # banked Muon's gradients are averaged by its own reduce-scatter
            grads = [p.grad for p in m.opt.synced if p.grad is not None]
            flat = torch._utils._flatten_dense_tensors(grads)
            torch_dist.all_reduce(flat, op=torch_dist.ReduceOp.SUM)
            flat /= torch_dist.get_world_size()
            for g, mean in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
                g.copy_(mean)
    return total


def train_loop(r: Run, data: Data, m: Model, tiers: Tiers | None, loop: Loop, loop_budget: float) -> None:
    """The timed loop; see the module docstring. The loop timer runs from `mark`, paused around the val evals and
    the checkpoints."""
    cfg, d = r.cfg, r.d
    loop.step, loop.train_s = loop.start_step, loop.start_train_s
    bar = Progress("train", total=cfg.iterations, unit="steps") if d.main and sys.stderr.isatty() else None
    schedule = TrainingSchedule(cfg, loop_budget)
    recent = deque(maxlen=10)  # recent step durations: does one more step fit in the budget?
    last_log_step, last_log_s = loop.step, loop.train_s
    last_checkpoint_s = loop.train_s
    m.lm.train()
    r.signals.deferred = True  # SIGINT / SIGTERM from here: finish the step, checkpoint, stop
    mark = time.perf_counter()
    while True:
        if cfg.val_loss_every and loop.step % cfg.val_loss_every == 0:
            runtime.sync(d.device)
            t_val = time.perf_counter()
            validate(r, data, m, loop)
            mark += time.perf_counter() - t_val  # the eval is not training time
        if loop.step >= cfg.iterations:
            loop.stop_reason = "iterations"
            break
        # The agreed clock at the start of this step: the same stage on every rank
        stage = schedule.at(loop.step, loop.train_s)
        apply_stage(r, m, loop, stage)
        t0 = time.perf_counter()
        loss = accumulate_gradients(m, data.loader, loop.step, r.grad_accum, r.amp, d.enabled, local_clip(cfg))
        lr = m.opt.step(stage.lr_scale, stage.momentum)
        m.opt.zero_grad(set_to_none=True)
        if m.ema is not None:
            m.ema.update(m.lm)
        loss_value = loss.item()  # also waits for the step's kernels, so the clock below is honest
        now = time.perf_counter()
        recent.append(now - t0)
        elapsed = loop.train_s + now - mark
        mark = now
        loop.step += 1
        # One all-reduce decides for every rank: a non-finite loss anywhere, the elapsed time (the slowest
        # rank's, which every rank carries on with), whether another step still fits, and a stop signal anywhere.
        agreed = torch.tensor([float(not np.isfinite(loss_value)), elapsed, sum(recent) / len(recent),
                               float(r.signals.signal or 0)], dtype=torch.float64, device=d.device)
        if d.enabled:
            torch_dist.all_reduce(agreed, op=torch_dist.ReduceOp.MAX)
        nonfinite, loop.train_s, step_s, stop = (float(v) for v in agreed.tolist())
        if nonfinite > 0:  # this step's update is already in the weights: the last checkpoint is the good one
            kept = f"{r.dir / 'checkpoint.pt'} keeps step {loop.checkpoint_step}, the last good one" \
                if loop.checkpoint_step is not None else "no checkpoint was written before it"
            raise NonFiniteLossError(f"training loss is {loss_value} at step {loop.step} (lr scale {lr:.4g}); "
                                     f"lower the learning rates (optim.*_lr) or check the data; {kept}")
        if loop.step % cfg.log_every == 0 or loop.step == loop.start_step + 1:
            ops.check_device_indices(d.device)  # the CUDA kernels' index flag, read without stalling every step
            loop.history["train"].append({"step": loop.step, "train_s": loop.train_s,
                                          "wall_s": time.perf_counter() - r.t_start, "loss": loss_value})
            window_s = loop.train_s - last_log_s
            ms = 1000.0 * window_s / max(loop.step - last_log_step, 1)
            left = min(loop_budget - loop.train_s, (cfg.iterations - loop.step) * ms / 1000.0)
            r.log.event("train", step=loop.step, loss=loss_value, lr_scale=lr, ms_per_step=ms,
                        tokens_per_s=(loop.step - last_log_step) * cfg.train_batch_tokens / max(window_s, 1e-9),
                        train_seconds=loop.train_s, eta_s=max(left, 0.0))
            last_log_step, last_log_s = loop.step, loop.train_s
        if bar is not None:
            bar.update(1, loss=f"{loss_value:.3f}")
        if stop:
            stop_for_signal(r, m, tiers, loop, int(stop))
        if cfg.checkpoint_every_seconds and loop.train_s - last_checkpoint_s >= cfg.checkpoint_every_seconds:
            mark += write_checkpoint(r, m, tiers, loop, why="periodic")  # not training time, as a val eval
            last_checkpoint_s = loop.train_s
        if loop.train_s + step_s > loop_budget:
            loop.stop_reason = "budget"
            break
    runtime.sync(d.device)
    loop.train_s += time.perf_counter() - mark
    r.signals.deferred = False
    if bar is not None:
        bar.close()
    # A signal that came after the last step's agreement is honoured all the same, by every rank together.
    pending = torch.tensor([float(r.signals.signal or 0)], dtype=torch.float64, device=d.device)
    if d.enabled:
        torch_dist.all_reduce(pending, op=torch_dist.ReduceOp.MAX)
    if pending.item():
        stop_for_signal(r, m, tiers, loop, int(pending.item()))
    r.stages["train"] = loop.train_s - loop.start_train_s
    r.log.event("train_done", steps=loop.step, stop=loop.stop_reason, train_seconds=loop.train_s,
                loop_budget_s=loop_budget)
    if cfg.schedule == "steps" and loop.stop_reason == "budget":  # the LR decays over `iterations`
        r.log.event("warning", message=f"the wall-clock budget stopped a step-scheduled run at step {loop.step} "
                                       f"of {cfg.iterations}: its learning rate did not finish decaying; raise "
                                       "--max-wallclock-seconds")


def stop_for_signal(r: Run, m: Model, tiers: Tiers | None, loop: Loop, signum: int) -> None:
    """SIGINT / SIGTERM in the loop: checkpoint.pt at this step, then InterruptedRun saying how to continue."""
    name = signal.Signals(signum).name
    write_checkpoint(r, m, tiers, loop, why=name)
    path = r.dir / "checkpoint.pt"
    raise InterruptedRun(f"{name} at step {loop.step}: {path} holds it; continue with --resume {path}",
                         signal=signum)


def apply_stage(r: Run, m: Model, loop: Loop, stage: Stage) -> None:
    """What the schedule's stage changes in the model before a step (its LR and momentum go to the optimizer
    step): the recurrence phase, the prior weight and the QAT switch. The last two are tensor writes, which a
    compiled graph reads (a Python flag it would freeze); a new phase is a new graph (warm_up compiled it)."""
    t = m.lm.transformer
    if stage.recur_phase != t.phase:
        t.set_phase(stage.recur_phase)
        r.log.event("recur_phase", step=loop.step, phase=stage.recur_phase, progress=stage.progress,
                    virtual_layers=len(t.virtual_maps[stage.recur_phase]))
    if stage.prior_weight is not None and stage.prior_weight != loop.prior_weight:
        loop.prior_weight = stage.prior_weight
        t.prior_gate.anneal.fill_(stage.prior_weight)
    if m.qat_layers and stage.qat and not loop.qat_on:
        loop.qat_on = set_qat(t, True)
        r.log.event("qat", step=loop.step, lr_scale=stage.lr_scale, layers=loop.qat_on)


@torch.no_grad()
def gate_report(lm: TieredLM, x: torch.Tensor) -> dict | None:
    """What the prior gate does on a batch x: its mode, the schedule's weight, the learned per-row scalars, and
    the mean and std of the per-position weights (tier-0 state, tier-1 previous token, tier-1 previous two)."""
    gate = lm.transformer.prior_gate
    if gate is None:
        return None
    s = gate(lm.transformer.hidden(x)).reshape(-1, gate.columns).double()
    return {"mode": gate.mode, "anneal": float(gate.anneal),
            "scale": None if gate.scale is None else [float(v) for v in gate.scale],
            "mean": s.mean(0).tolist(), "std": s.std(0).tolist() if s.shape[0] > 1 else None}


def validate(r: Run, data: Data, m: Model, loop: Loop) -> None:
    """A periodic val eval inside the loop (its seconds go to stage "val", not to the loop timer)."""
    t = time.perf_counter()
    result = plain_eval(r, data, m.lm, m.prior_rows, m.hidden)
    seconds = time.perf_counter() - t
    r.stages["val"] = r.stages.get("val", 0.0) + seconds
    loop.history["val"].append({"step": loop.step, "train_s": loop.train_s, "wall_s": time.perf_counter() - r.t_start,
                                "val_bpb": result.val_bpb, "val_loss": result.val_loss})
    r.log.event("val", step=loop.step, val_bpb=result.val_bpb, val_loss=result.val_loss, train_seconds=loop.train_s,
                seconds=seconds)


def finish_training(r: Run, m: Model, tiers: Tiers | None, loop: Loop) -> None:
    """Every rank's weights must be the same (DDP): one hash per rank, then checkpoint.pt (rank 0's weights); ranks
    that differ are an error naming them. Then the EMA weights (when enabled) become the model's."""
    hashes = runtime.all_gather_object(weights_sha256(m.lm), r.d)
    r.summary["weights_sha256"] = hashes
    r.log.event("weights", **{f"rank{rank}_sha256": h[:16] for rank, h in enumerate(hashes)})
    r.stages["checkpoint"] = write_checkpoint(r, m, tiers, loop, why="end")
    check_ranks_agree(hashes)
    if m.ema is not None:
        m.ema.copy_to(m.lm)
        if loop.prior_weight is not None:  # the schedule's weight, not its moving average
            m.lm.transformer.prior_gate.anneal.fill_(loop.prior_weight)
    m.lm.eval()


def write_checkpoint(r: Run, m: Model, tiers: Tiers | None, loop: Loop, why: str) -> float:
    """checkpoint.pt at loop.step, written by rank 0 while every rank waits (so every rank's loop timer can leave
    out the same seconds); returns them."""
    runtime.sync(r.d.device)
    t = time.perf_counter()
    failure = None
    opt_state = m.opt.state_dict()  # every rank: banked Muon gathers its shards
    if r.d.main:
        try:
            save_checkpoint(r.dir / "checkpoint.pt", r.cfg, m.lm, tiers, opt_state, m.ema, loop.step, loop.train_s,
                            loop.history, fit_tiers_seconds=r.stages["fit_tiers"])
        except OutputError as exc:
            failure = str(exc)
    failure = runtime.broadcast_object(failure, r.d)  # also the wait: no rank goes on before the file is there
    if failure is not None:
        raise OutputError(failure)
    loop.checkpoint_step = loop.step
    seconds = time.perf_counter() - t
    r.log.event("checkpoint", step=loop.step, why=why, seconds=seconds)
    return seconds


def check_ranks_agree(hashes: list[str]) -> None:
    """DistributedError naming the ranks whose weight hashes differ from rank 0's."""
    apart = [rank for rank, h in enumerate(hashes) if h != hashes[0]]
    if apart:
        groups: dict[str, list[int]] = {}
        for rank, h in enumerate(hashes):
            groups.setdefault(h, []).append(rank)
        detail = "; ".join(f"ranks {ranks} have {h[:16]}" for h, ranks in groups.items())
        raise DistributedError(f"the ranks' weights differ after training: rank(s) {apart} differ from rank 0 "
                               f"({detail}); checkpoint.pt holds rank 0's")


def calibrate(r: Run, data: Data, m: Model, loop: Loop) -> Calibration:
    """GPTQ Hessians from `calib_batches` training steps' batches (those after the last trained step), on rank 0,
    with the weights that will be exported; with fit_to_cap, the first micro-batch is kept for export's rate
    control. It reads training data, so it runs right after the loop and its seconds count against the budget
    (what gptq_reserve_seconds leaves room for, checked before training); the loader is closed after it."""
    cfg, d = r.cfg, r.d
    calib = Calibration()
    if not cfg.export or cfg.calib_batches == 0:
        return calib
    t = time.perf_counter()
    if d.main:
        # Rank 0's share of the next `calib_batches` global batches (every micro-batch of each).
        which = [(loop.step + i, micro) for i in range(cfg.calib_batches) for micro in range(data.loader.grad_accum)]
        first = data.loader.batch(*which[0])
        inputs = itertools.chain([first[0]], (data.loader.batch(*w)[0] for w in which[1:]))
        calib.hessians = collect_hessians(m.lm.transformer, inputs)
        calib.batch = first if cfg.fit_to_cap else None
    if d.enabled:
        torch_dist.barrier()
    s = r.stages
    s["calibrate"] = time.perf_counter() - t
    used = s["load_train"] + s["fit_tiers"] + s["train"] + s["calibrate"]
    r.summary["budget_used_seconds"] = used
    r.log.event("stage", stage="calibrate", seconds=s["calibrate"], batches=cfg.calib_batches,
                hessians=len(calib.hessians or {}), budget_used_s=used, budget_s=cfg.max_wallclock_seconds)
    return calib


def final_eval(r: Run, data: Data, m: Model, loop: Loop) -> None:
    """The float model's plain val BPB (the exported weights: EMA when enabled)."""
    t = time.perf_counter()
    result = plain_eval(r, data, m.lm, m.prior_rows, m.hidden)
    r.stages["final_eval"] = time.perf_counter() - t
    loop.history["val"].append({"step": loop.step, "train_s": loop.train_s, "wall_s": time.perf_counter() - r.t_start,
                                "val_bpb": result.val_bpb, "val_loss": result.val_loss, "final": True})
    r.log.event("final", val_bpb=result.val_bpb, val_loss=result.val_loss, ema=m.ema is not None,
                val_targets=result.targets, val_bytes=result.bytes, seconds=r.stages["final_eval"])
    gate = gate_report(m.lm, torch.from_numpy(data.val[:r.cfg.train_seq_len].astype(np.int64))[None].to(r.d.device))
    r.summary["prior_gate"] = gate
    if gate is not None:
        r.log.event("prior_gate", mode=gate["mode"], anneal=gate["anneal"],
                    mean=",".join(f"{v:.3f}" for v in gate["mean"]))
    run_steps, run_s = loop.step - loop.start_step, loop.train_s - loop.start_train_s
    r.summary.update({
        "val_bpb": result.val_bpb, "val_loss": result.val_loss, "float_val_bpb": result.val_bpb,
        "steps": loop.step, "tokens": loop.step * r.cfg.train_batch_tokens, "train_seconds": loop.train_s,
        "ms_per_step": 1000.0 * run_s / run_steps if run_steps else None,
        "tokens_per_s": run_steps * r.cfg.train_batch_tokens / run_s if run_s > 0 else None,
        "stop_reason": loop.stop_reason, "val_targets": result.targets, "val_history": loop.history["val"],
        "grad_accum": r.grad_accum,
    })


def project_priors(r: Run, data: Data, m: Model, tiers: Tiers | None) -> tuple[Model, Tiers | None]:
    """tier1_train: the trained rows projected back to tier-1 factors (golf.tiers.project_tier1, weighted by how
    often the fit's stream reads each row: fit_priors counted that inside the budget), which is what the artifact
    stores, and that model's plain val BPB (summary "projected_val_bpb"). Every rank projects the same rows the
    same way (on the CPU, with rank 0's counts). Otherwise as is. Reads no training data."""
    if not projects_priors(r.cfg) or tiers is None:
        return m, tiers
    t = time.perf_counter()
    projected = project_tier1(tiers, m.lm.prior_tables, runtime.broadcast_object(data.fit_row_counts, r.d))
    lm = TieredLM(m.lm.transformer, projected.prior_tables().float().to(r.d.device), trainable=False,
                  prior_free=r.cfg.prior_free_loss)
    result = plain_eval(r, data, lm, m.prior_rows, m.hidden)
    r.stages["project_priors"] = time.perf_counter() - t
    r.summary["projected_val_bpb"] = result.val_bpb
    r.log.event("project_priors", val_bpb=result.val_bpb, float_val_bpb=r.summary["float_val_bpb"],
                prev_rank=tiers.cfg.prev_rank, pair_rank=tiers.cfg.pair_rank, seconds=r.stages["project_priors"])
    return dataclasses.replace(m, lm=lm), projected


def export(r: Run, m: Model, tiers: Tiers | None, loop: Loop, calib: Calibration) -> dict | None:
    """GPTQ + model.golf on rank 0 (fitted into the cap when fit_to_cap); the size report. Returns rank 0's
    report (None on the other ranks). Reads no training data: the Hessians and rate control's batch are
    calibrate's."""
    cfg, summary = r.cfg, r.summary
    path = r.dir / "model.golf"
    t = time.perf_counter()
    size = None
    if r.d.main:
        info = export_model(path, m.lm, tiers, hessians=calib.hessians, qcfg=cfg.quant,
                            train_seq_len=cfg.train_seq_len,
                            extra={"run_id": cfg.run_id, "preset": cfg.preset, "baseline": cfg.baseline,
                                   "seed": cfg.seed, "steps": loop.step, "git_sha": summary.get("git_sha")},
                            codec=cfg.artifact_codec,
                            max_bytes=(cfg.size_cap_bytes - cfg.size_margin_bytes - r.code["bytes"]
                                       if cfg.fit_to_cap else None),
                            # the first calibration batch: rate control's loss (it brings in the tables)
                            calib=calib.batch)
        summary["rate"], summary["pruning"] = info.rate, info.pruning
        if info.rate is not None:
            rate = info.rate
            r.log.event("rate", used=rate["used"], fits=rate["fits"], max_bytes=rate["max_bytes"],
                        actual=rate["actual"], seconds=rate["seconds"],
                        widths=",".join(f"int{b}:{n}" for b, n in rate.get("bits_histogram", {}).items() if n),
                        compressions=",".join(str(c["actual"]) for c in rate["compressions"]))
        if info.pruning is not None:
            r.log.event("prune", **info.pruning)
        size = size_report(path, read_header(path), code=r.code, cap=cfg.size_cap_bytes)
        summary.update({"artifact_bytes": size["artifact_bytes"], "code_bytes": size["code_bytes"],
                        "code_raw_bytes": size["code_raw_bytes"],
                        "total_bytes": size["total_bytes"], "size": size,
                        "code_files": [[name, nbytes] for name, nbytes in r.code["files"]]})
        r.log.event("artifact", path=path, compress_s=info.compress_seconds, raw_bytes=info.raw_bytes,
                    **{k: size[k] for k in ("artifact_bytes", "code_bytes", "code_raw_bytes", "total_bytes",
                                            "margin", "fits")})
    if r.d.enabled:
        torch_dist.barrier()
    r.stages["export"] = time.perf_counter() - t
    return size


def artifact_eval(r: Run, data: Data) -> None:
    """Every rank rebuilds the model from model.golf alone and scores it: plain (roundtrip), then the eval method
    (sliding or ttt; its BPB is val_bpb), its time projected first against the eval budget (golf.scoring)."""
    cfg, d, summary = r.cfg, r.d, r.summary
    t = time.perf_counter()
    loaded = load_model(r.dir / "model.golf", d.device)
    hidden = loaded.lm.transformer.hidden
    if r.use_compile:  # the forward dominates sliding eval (each position is read window / stride times)
        hidden = torch.compile(hidden, dynamic=False)
    plain = plain_eval(r, data, loaded.lm, loaded.prior_rows, hidden)
    spec = eval_spec(cfg)
    result = score_artifact(loaded, spec, data.scored, byte_tables=data.byte_tables, dist=d, device=d.device,
                            amp=r.amp, hidden=hidden, progress=d.main and sys.stderr.isatty(),
                            log=r.log.event if d.main else None)
    r.stages["artifact_eval"] = time.perf_counter() - t
    facts = {k: v for k, v in result.to_dict().items() if k not in ("nll_sum", "info", "method")}
    summary.update({"roundtrip_val_bpb": plain.val_bpb, f"{spec.method}_val_bpb": result.val_bpb,
                    "quant_penalty": plain.val_bpb - summary["float_val_bpb"], "val_bpb": result.val_bpb,
                    "val_loss": result.val_loss, "eval_seconds": result.seconds, "eval_method": spec.method,
                    spec.method: {**facts, **result.info}})
    r.log.event("roundtrip", val_bpb=plain.val_bpb, val_loss=plain.val_loss, quant_penalty=summary["quant_penalty"],
                targets=plain.targets, seconds=plain.seconds)
    info = result.info
    r.log.event(spec.method, val_bpb=result.val_bpb, val_loss=result.val_loss, window=result.window,
                stride=result.stride, targets=result.targets, seconds=result.seconds,
                tokens_per_s=result.tokens_per_s, projected_seconds=info.get("projected_seconds"),
                derived_8x_seconds=info.get("derived_8x_seconds"), derived_8x_fits=info.get("derived_8x_fits"))


def check_eval_budget(r: Run, data: Data, m: Model) -> None:
    """Before training: the artifact eval's projected time against eval_budget_seconds, on this model (the
    time does not depend on the weights' values), so that an eval that cannot fit fails now, not after the run."""
    cfg = r.cfg
    if not cfg.export or cfg.eval_budget_seconds == 0 or cfg.eval_over_budget:
        return
    t = time.perf_counter()
    spec = eval_spec(cfg)
    # The eager forward (the training one is compiled for training shapes): a projection on the slow side.
    projected = projected_seconds(Predictor(m.lm, m.prior_rows), spec, data.scored,
                                  Context(data.byte_tables, r.d, r.d.device, r.amp, None, False))
    r.stages["eval_budget"] = time.perf_counter() - t
    r.log.event("eval_budget", method=spec.method, projected_seconds=f"{projected:.1f}",
                budget_seconds=cfg.eval_budget_seconds, seconds=r.stages["eval_budget"])
    if projected > cfg.eval_budget_seconds:
        raise BudgetError(f"eval_method={spec.method}: the artifact eval is projected at {projected:.0f} s for "
                          f"{len(data.scored) - 1:,} targets on {r.d.world_size} rank(s), over "
                          f"eval_budget_seconds={cfg.eval_budget_seconds:.0f} (measured on synthetic tokens "
                          "before training); set val_tokens lower, or eval_over_budget=true")


def write_summary(r: Run, loop: Loop, size: dict | None) -> None:
    """loss_vs_time.png and summary.json; then, over the size cap, BudgetError on every rank together (the
    artifact and the summary are kept)."""
    d, summary = r.d, r.summary
    over_cap = runtime.broadcast_object(size is not None and not size["fits"], d)
    if d.main:
        t = time.perf_counter()
        plot_curves(r.dir / "loss_vs_time.png", loop.history, r.log)
        r.stages["plot"] = time.perf_counter() - t
    summary["peak_mem_bytes"] = runtime.peak_mem_bytes(d.device)
    summary["wall_seconds"] = time.perf_counter() - r.t_start
    if d.main:
        runtime.write_json(r.dir / "summary.json", summary)
        r.log.event("done", val_bpb=summary["val_bpb"], steps=loop.step, train_seconds=loop.train_s,
                    wall_seconds=summary["wall_seconds"], summary=r.dir / "summary.json")
    if over_cap:
        if size is not None:
            check_size(size)
        raise BudgetError(f"{r.dir / 'model.golf'}: over the size cap (rank 0 reports the sizes)")


# --- helpers -------------------------------------------------------------------------------------------

def local_clip(cfg: TrainConfig) -> float:
    """The norm accumulate_gradients clips each rank's own gradient to (0: Optimizers.step clips the average)."""
    return cfg.optim.grad_clip if cfg.optim.grad_clip_local else 0.0


def fits_across_ranks(r: Run) -> bool:
    """Whether every rank fits the tiers on its part of the prefix (golf.tiers.fit_part; the counts summed over
    the ranks), which torchrun's one thread per rank would otherwise leave to rank 0 alone. Not with a tier-1
    refinement (it needs the whole stream in one process), nor when the tiers come from elsewhere or
    project_priors needs the whole prefix's row counts on rank 0."""
    cfg = r.cfg
    return (r.d.enabled and not cfg.baseline and not cfg.tiers_file and r.checkpoint is None
            and cfg.tiers.refine_seconds == 0 and not projects_priors(cfg))


def projects_priors(cfg: TrainConfig) -> bool:
    """Whether project_priors refits tier 1 (so the run needs the fit prefix's row counts)."""
    return cfg.tier1_train and cfg.export and not cfg.baseline


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


# --- checkpoint ----------------------------------------------------------------------------------------

def save_checkpoint(path: Path, cfg: TrainConfig, lm: TieredLM, tiers, opt_state: dict, ema, step: int,
                    train_s: float, history: dict, fit_tiers_seconds: float = 0.0) -> None:
    """Atomically (a temp file, then os.replace): a checkpoint.pt is whole or the previous one. A write that
    fails (a full disk) removes its temp file and raises OutputError; the previous checkpoint stays."""
    ckpt = {"format": CHECKPOINT_FORMAT, "config": cfg.to_dict(), "step": step, "train_seconds": train_s,
            "model": lm.transformer.state_dict(), "prior_tables": lm.prior_tables.detach().cpu(),
            "tiers": tier_tensors(tiers), "optimizer": opt_state,
            "ema": ema.state_dict() if ema is not None else None, "history": history,
            "fit_tiers_seconds": fit_tiers_seconds}
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(ckpt, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch.save reports a failed write as a RuntimeError
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot write the checkpoint of step {step} ({exc})") from None


# Settings whose change makes a checkpoint's weights meaningless for this run: what the tiers are fit on and
# how, and the model they feed. Seeds, budgets and learning rates may change on a resume.
RESUME_SETTINGS = ("model", "tiers", "baseline", "tier1_train", "train_seq_len", "tier_fit_tokens", "vocab_size")


def read_checkpoint(path: str, cfg: TrainConfig) -> dict:
    """--resume's checkpoint, read and checked against this run's settings (before anything is written):
    ConfigError naming the file and the first setting that differs."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a file torch cannot unpickle raises whatever its bytes lead to
        raise ConfigError(f"--resume {path}: not a golf checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"--resume {path}: not a golf checkpoint (expected format {CHECKPOINT_FORMAT})")
    saved, now = ckpt["config"], cfg.to_dict()
    for key in RESUME_SETTINGS:
        old, new = saved.get(key), now.get(key)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):  # name the sub-setting, not the whole dict
            sub = next(k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))
            key, old, new = f"{key}.{sub}", old.get(sub), new.get(sub)
        raise ConfigError(f"--resume {path}: setting {setting_name(key)} is {old!r} in the checkpoint but "
                          f"{new!r} in this run")
    return ckpt


def load_checkpoint(ckpt: dict, path: str, lm: TieredLM, opt, ema, log: RunLog) -> tuple[int, float, dict]:
    """Restore weights, tables, optimizer and EMA from read_checkpoint's dict (fit_priors took its tiers); returns
    (step, train_seconds, history)."""
    with torch.no_grad():
        if ckpt["prior_tables"].shape != lm.prior_tables.shape:
            raise ConfigError(f"--resume {path}: prior_tables has shape {tuple(ckpt['prior_tables'].shape)} in the "
                              f"checkpoint but {tuple(lm.prior_tables.shape)} in this run")
        lm.prior_tables.copy_(ckpt["prior_tables"])
    lm.transformer.load_state_dict(ckpt["model"])
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


def main(argv=None) -> int:
    try:
        cfg = resolve_config(argv)
        run(cfg)
    except InterruptedRun as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 128 + exc.signal  # the shell's code for a process a signal stopped
    except GolfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
