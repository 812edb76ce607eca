"""Run settings: one `TrainConfig`, the named presets, and the rule flag > env > preset.

    cfg = resolve_config(argv, env=os.environ)     # argv: the `python -m golf.train` arguments
    cfg.to_dict()                                  # JSON-able, the `config` of summary.json
    settings_table(cfg)                            # (setting, source, value) rows: default, preset or set
    python -m golf.config [golf.train flags]       # that table and the parameters per component (every run's
                                                   # log.txt starts with the same table)

Presets (`--preset`; default `cpu` without CUDA, `h100` with one GPU, `h100x8` under torchrun on GPUs)
    cpu       a small transformer that trains usefully in 300 s on a 2-core CPU; fp32, no compile
    cpu-long  the cpu preset with 3 layers for 4,000 scheduled steps, tier 1 in closed form and a prior-free
              loss: the regime where the transformer outgrows the priors, on CPU (~20 min on 2 cores)
    h100      one H100: the h100x8 model with a smaller batch (131,072 tokens/step, seq 2048)
    h100x8    8xH100, 786,432 tokens/step, seq 2048: the best stack golf measures (R1063's, the best sp1024
              record without test-time training: shapes, optimizer, EMA, recurrence from 44% of the loop, warmdown
              over its last 56%) plus the tiers and the prior gate; --baseline is the same stack without them, and
              rate control fits either under the cap
    h100x8-narrow  trades transformer width for the tiers' bytes: golf's earlier h100x8 (R1147's recipe, MLP 2.5x
              and no BigramHash tiered; MLP 2.75x and BigramHash 3072x112 with --baseline), both at int6 under the
              cap at nearly equal totals (tests/test_sizes.py: 15.70 MB tiered with trained-like weights)
    r1147     the R1147 record (1.1147) itself, no tiers: its shapes, optimizer and schedule form
    r1063     the R1063 record (1.1063, the best sp1024 run without test-time training) itself, no tiers: R1147
              plus skip gates, layer 0 without attention, two-lane parallel residuals, depth recurrence
Every preset value lives in `PRESETS` below, and nowhere else. `--baseline` turns the tiers off and with them
a preset's prior_free_loss; on h100x8-narrow it also applies `BASELINE_MODEL` (a wider transformer taking the
tiers' bytes: an iso-byte comparison).

Environment names (the challenge's): DATA_PATH, TOKENIZER_PATH, VOCAB_SIZE, RUN_ID, SEED,
MAX_WALLCLOCK_SECONDS, ITERATIONS, TRAIN_BATCH_TOKENS, TRAIN_SEQ_LEN, VAL_LOSS_EVERY.

Flags: one per common field (`--max-wallclock-seconds`, `--iterations`, ...; see `build_parser`), and
`--set KEY=VALUE` (repeatable) for any other field, dotted into the nested settings:
`--set model.num_layers=2 --set optim.matrix_lr=0.02 --set tiers.prev_rank=64 --set val_tokens=65536`.
Values are parsed as JSON where they parse (numbers, true/false, null, lists), else taken as text.

`--config FILE.json` starts from a resolved config instead of a preset (a run's summary.json `config`, or what
golf.submit's train_gpt.py carries): flag > env > that file. The settings of where a run happens (RUN_LOCAL:
paths, run id, device, threads, resume) are not taken from it.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import time
from dataclasses import dataclass, field

from golf.codecs import normalize_codec
from golf.attention import BACKENDS as ATTENTION_BACKENDS
from golf.errors import ArtifactError, ConfigError, GolfError
from golf.model import ModelConfig, recur_phase_count
from golf.optim import OptimConfig
from golf.quant import QuantConfig
from golf.scoring import EVAL_BUDGET_SECONDS, METHODS as EVAL_METHODS
from golf.tiers import TIER1_FORMS, TierConfig
from golf.ttt import TTTConfig, check_config as check_ttt_config

SCHEDULES = ("time", "steps")


@dataclass
class TrainConfig:
    preset: str = "cpu"
    data_path: str = "data/datasets/fineweb10B_sp1024"
    tokenizer_path: str = "data/tokenizers/fineweb_1024_bpe.model"
    vocab_size: int | None = None          # None: the tokenizer's; a different value is a DataError
    run_id: str = ""                       # "" -> a timestamp
    runs_dir: str = "runs"                 # a run writes runs_dir/run_id/
    seed: int = 1337
    max_wallclock_seconds: float = 600.0   # tier fitting + training loop + gptq_reserve_seconds
    iterations: int = 20000                # cap on optimizer steps
    train_batch_tokens: int = 524288       # global tokens per optimizer step
    train_seq_len: int = 1024
    grad_accum: int = 0                    # 0 = batch_devices // world_size (at least 1)
    batch_devices: int = 1                 # the device count the batch is laid out for
    schedule: str = "time"                 # LR warmdown over the wall-clock loop budget, or over `iterations`
                                           # ("steps": timing-independent, for reproducible comparisons)
    val_loss_every: int = 1000             # steps between val evals (also at step 0); 0 = only at the end
    val_tokens: int = 0                    # score the first N val targets (plain: whole windows of them); 0 = all
    val_batch_tokens: int = 65536          # tokens per eval forward, per rank
    log_every: int = 100
    gptq_reserve_seconds: float = 8.0      # left at the end of the budget for the artifact's calibration
    qat_lr_scale: float = 0.0              # late QAT: int6 fake-quant once the LR scale falls below this (0 = off)
    calib_batches: int = 8                 # training batches (train_batch_tokens each) read for the GPTQ Hessians
    export: bool = True                    # GPTQ -> model.golf -> roundtrip and sliding evals from the artifact
    eval_window: int = 0                   # sliding eval window; 0 = train_seq_len
    eval_stride: int = 64                  # sliding eval stride (>= the window: plain eval)
    eval_method: str = "sliding"           # the artifact's score (golf.scoring.METHODS): sliding, or ttt
    ttt: TTTConfig = field(default_factory=TTTConfig)  # --method ttt's settings (golf.ttt; R0611's defaults)
    # The eval's time, projected at its start on synthetic tokens, is refused over this (0 = no limit) unless
    # eval_over_budget; summary.json reports it and the full split's time on 8 ranks derived from the rate.
    eval_budget_seconds: float = EVAL_BUDGET_SECONDS
    eval_over_budget: bool = False
    size_cap_bytes: int = 16_000_000       # artifact + code bytes allowed (the challenge's decimal cap)
    # Fit artifact + code into size_cap_bytes - size_margin_bytes: over it, golf.rate gives each matrix and table
    # the width (quant.rate_bits) with the least total error that fits; only if that is not enough, the int6 +-1
    # values that cost least (scale^2) are zeroed (the records' selective pruning). The evals read the file as
    # written.
    fit_to_cap: bool = True
    size_margin_bytes: int = 0             # kept free under the cap (e.g. for a submission's longer code)
    # The artifact payload's coder (golf.artifact codecs): raw LZMA2 with literal context bits off was the smallest
    # LZMA on int6-in-int8 codes (bench/packing.py); "brotli" was 2.5% smaller still but 3x slower and an extra
    # package (pip install brotli). A 1 MiB dictionary (about one matrix) instead of preset 9's 64 MiB: 0.2% smaller
    # at int6 and 1% on mixed widths, 5x faster (bench/RESULTS.md, "Rate control").
    artifact_codec: dict | str = field(default_factory=lambda: {
        "name": "lzma-raw", "filters": [{"id": "lzma2", "preset": 9, "extreme": True, "dict_size": 1 << 20,
                                         "lc": 0, "lp": 0, "pb": 0}]})
    compile_warmup_steps: int = 20         # compile-priming steps, then weights and optimizer are restored
    baseline: bool = False                 # tiers off, everything else equal
    tiers: TierConfig = field(default_factory=TierConfig)
    tier1_train: bool = False              # prior rows trainable (AdamW, embed lr) instead of frozen; the
                                           # artifact stores them projected to the tier-1 ranks
    tier_fit_tokens: int = 0               # train-stream prefix the tiers are fit on; 0 = all of it
    tiers_file: str | None = None          # tiers already fit (golf.experiment's shared fit): loaded, not refit,
                                           # and the run is charged the seconds their fit took
    # The prior weight's schedule (needs model.prior_gate other than "off"): over the first prior_anneal of the
    # run (its LR schedule's progress) the weight goes linearly from 1 to prior_anneal_to, then stays; 0 = off.
    prior_anneal: float = 0.0
    prior_anneal_to: float = 0.0
    # When depth recurrence's phases start (model.recur_layers; golf.schedule): phase k from the k-th entry, as a
    # fraction of the run's progress (PR #1412: [0.5, 0.65]) or, recur_at_steps, a step (R1063: [3000]); one
    # entry per phase (model.recur_passes), ascending; both empty with recur_layers set: the last phase from step 0.
    recur_at: list = field(default_factory=list)
    recur_at_steps: list = field(default_factory=list)
    # Weight of an auxiliary training loss on tier 2's logits alone (golf.model.TieredLM); 0 = off. The logged
    # training loss is then the whole objective; the evals score the tiered prediction as always.
    prior_free_loss: float = 0.0
    model: dict = field(default_factory=dict)    # ModelConfig fields except vocab_size, bos_id, prior_columns
    optim: OptimConfig = field(default_factory=OptimConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    device: str = "auto"                   # auto: cuda:LOCAL_RANK when CUDA is there, else cpu
    cpu_threads: int = 0                   # torch intra-op threads; 0 = torch's default (OMP_NUM_THREADS)
    compile: bool | None = None            # None: on for CUDA, off on CPU
    attention: str = "auto"                # golf.attention: auto (FA3, FA4, cuDNN, flash; SDPA on CPU) or a name
    amp: bool | None = None                # bf16 autocast; None: on for CUDA, off on CPU
    resume: str | None = None              # checkpoint.pt to continue from
    overwrite: bool = False                # replace the files of an earlier run in runs_dir/run_id
    # checkpoint.pt every this many seconds of the loop timer (0 = only at the end and on SIGINT/SIGTERM); the
    # writing pauses the timer, as a val eval does
    checkpoint_every_seconds: float = 0.0

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @property
    def recur_phases(self) -> int:
        """The model's depth-recurrence phases beyond the plain stack (ModelConfig.recur_phases)."""
        model = self.model
        return recur_phase_count(model.get("recur_layers"), model.get("recur_passes", ModelConfig.recur_passes))

    def model_config(self, vocab_size: int, bos_id: int, prior_columns: int = 0) -> ModelConfig:
        """prior_columns: the prior rows per position (Tiers.columns; 0 with --baseline)."""
        return ModelConfig(vocab_size=vocab_size, bos_id=bos_id, prior_columns=prior_columns, **self.model)


# --- presets: every preset value, in one place ---------------------------------------------------------

# The records' stacks as they ran them (no tiers). R1147 (ANCHOR.md §3; 2026-03-25_ValCalib_GPTQ_XSA_BigramHash3072):
# MLP 3x, BigramHash 3072x112, VE128 on layers 9-10, the per-channel smear, and its rotary base rescaled for seq
# 2048 by its hard-coded 1024-token rotary length (1e4 * 2^(16/14)).
_R1147_MODEL = dict(num_layers=11, model_dim=512, num_heads=8, num_kv_heads=4, mlp_mult=3.0,
                    activation="leaky_relu2", rope_dims=16, ln_scale=True, xsa=True, smear_gate=True,
                    smear_form="channel", unet_skips=True, logit_softcap=30.0, q_gain_init=1.5, bigram_buckets=3072,
                    bigram_dim=112, ve_dim=128, rope_base=1e4 * 2 ** (16 / 14), prior_gate="off")
_R1147_OPTIM = dict(matrix_lr=0.025, embed_lr=0.035, scalar_lr=0.025, muon_momentum=0.99,
                    muon_momentum_warmup_start=0.92, muon_momentum_warmup_steps=1500, muon_weight_decay=0.04,
                    adam_weight_decay=0.04, grad_clip=0.3, grad_clip_local=True, ema_decay=0.997)
# R1063 (PR #1204; 2026-03-31_ParallelResiduals_MiniDepthRecurrence), its run command on its code's defaults:
# R1147's stack plus skip gates, no attention in layer 0, two-lane parallel residuals from physical layer 7,
# layers 4-5 run twice with untied MLPs (13 virtual layers: XSA on virtual 2-12, VE on virtual 9-10, six skip
# weights), BigramHash 2816x112, matrix LR 0.03.
_R1063_MODEL = dict(_R1147_MODEL, bigram_buckets=2816, ve_layers=[9, 10], xsa=list(range(2, 13)), skip_gates=True,
                    layer0_attn=False, parallel_residual="two_lane", parallel_start=7, recur_layers=[4, 5],
                    recur_passes=1, recur_untie_mlp=True)
_R1063_OPTIM = dict(_R1147_OPTIM, matrix_lr=0.03)
# golf's earlier GPU model: R1147's recipe narrowed (MLP 2.5x, no BigramHash: tier 1 is the bigram/trigram prior),
# the later records' BOS-masked smear, no VE, the plain rotary base
_NARROW_MODEL = dict(num_layers=11, model_dim=512, num_heads=8, num_kv_heads=4, mlp_mult=2.5,
                     activation="leaky_relu2", rope_dims=16, ln_scale=True, xsa=True, smear_gate=True,
                     unet_skips=True, logit_softcap=30.0, q_gain_init=1.5, bigram_buckets=0, prior_gate="gate")

# The GPU presets: the best stack golf measures plus the tiers, weighed per position by the prior gate
# (model.PriorGate; on the GPU the ungated tiers cost 0.134 BPB against the baseline, bench/RESULTS.md, "On one
# H100"). The stack is R1063's (the best sp1024 record without test-time training) with three of the later
# records' components that do not interact with its learning rates: MuonEq-R, Polar-Express coefficients and the
# sparse attention gate. On the CPU all of the later components together beat R1063's subset of them by 0.009 BPB
# (3 seeds, p < 0.001; bench/RESULTS.md, "The components together"). Kept from R1063: its weight decays (PR
# #1412's 0.085 went with a matrix LR of 0.02, R1063's is 0.03), q_gain 1.5 (4.0: no effect on the CPU) and no
# attention in layer 0 (it hurt at 3 layers, where it is a third of the attention; R1063 measured it at 11).
# --baseline: the same transformer without the tiers;
# rate control (golf.rate) fits either under the cap. R1063's step counts become shares of the loop, so that they
# hold at any pace: recurrence from step 3,000 was 44% of its 600 s loop, the 3,500-step warmdown 56% of it
# (its seed-1337 log: 87.9 ms/step to step 3,000, 6,242 steps).
_H100 = dict(
    max_wallclock_seconds=600.0, iterations=20000, train_batch_tokens=131072, train_seq_len=2048,
    val_loss_every=1000, val_tokens=0, val_batch_tokens=131072, log_every=100, gptq_reserve_seconds=8.0,
    compile_warmup_steps=20, tier_fit_tokens=50_000_000, batch_devices=1, recur_at=[0.44],
    # 16,384 previous-two rows (tiers.py: 24,576): the byte budget of the h100x8-narrow artifact (tests/test_sizes.py).
    tiers=dict(pair_rows=16384),
    model=dict(_R1063_MODEL, prior_gate="gate", attn_gate=True),
    optim=dict(_R1063_OPTIM, warmdown_frac=0.56, muon_row_normalize=True, muon_ns_coefficients="polar_express"),
    # The tied embedding through GPTQ at int7 (R0611's): at the cap it frees the bytes that the h100x8 worst case
    # (Gaussian matrices) otherwise pruned 1.12M ±1 values for. SDClip (R0611's k) with k moving beside the width:
    # on that model 42% less GPTQ error than the clip search in fewer bytes (the clip search measured better on
    # the CPU presets' 128-wide rows, which keep it; bench/RESULTS.md, "Export methods").
    quant=dict(embed_gptq=True, clip="sdclip", sdclip_k_steps=(0.5, 0.7, 1.0, 1.4)),
)

_CPU = dict(
    max_wallclock_seconds=300.0, iterations=100000, train_batch_tokens=4096, train_seq_len=256,
    val_loss_every=200, val_tokens=0, val_batch_tokens=16384, log_every=25, gptq_reserve_seconds=3.0,
    compile_warmup_steps=0, tier_fit_tokens=0, device="auto", checkpoint_every_seconds=60.0,
    tiers=dict(refine_seconds=30.0),  # tiers.py defaults (1.87 MB projected) + a 30 s Adam burst
    # The d128 matrices are below the 65,536-element fp16 threshold; int6 them like a full-size model's.
    quant=dict(small_numel=4096),
    # 1 layer: on 2 cores the step count decides (below tiers-only, float: 4 layers 311 steps 0.012;
    # 2 layers with the decay below 580 steps 0.041; 1 layer 978 steps 0.071; bench/RESULTS.md, "The cpu preset").
    # The copy head gives the one layer what only two layers (an induction circuit) could learn:
    # at 600 steps, float BPB 2.0909 -> 2.0215 tiered, 2.2397 -> 2.1430 baseline (bench/RESULTS.md).
    model=dict(num_layers=1, model_dim=128, num_heads=4, num_kv_heads=2, mlp_mult=3.0,
               activation="leaky_relu2", rope_dims=16, ln_scale=True, xsa=True, unet_skips=True,
               copy_head=True, prior_gate="gate"),
    # Half the records' rates: the tiered run's transformer learns a residual on top of priors that are
    # already good, and at 0.04 its val BPB first rose. The rate decays over the whole run: the residual's
    # val BPB only falls once the rate does (warmdown 0.4: 2.1473 at step 200, above step 0's 2.1396).
    optim=dict(matrix_lr=0.02, embed_lr=0.02, scalar_lr=0.02, muon_momentum=0.95,
               muon_momentum_warmup_start=0.85, muon_momentum_warmup_steps=100, muon_ns_dtype="float32",
               grad_clip=1.0, warmdown_frac=1.0, ema_decay=0.0),
)

PRESETS: dict[str, dict] = {
    "cpu": _CPU,
    # The crossover regime on CPU: the cpu preset with three layers, 4,000 steps and
    # tier 1 in closed form, the GPU run's prior. Step-scheduled, so clock noise does not decide: ~20 min per
    # run alone on 2 cores, ~31 min for each of two sharing them; the wall budget is only a cap far above.
    # Two layers at 2,500 steps put the ungated tiered model +0.019 above the baseline, one layer 0.015 below
    # it (bench/RESULTS.md, "The seed's three predictions, with seeds"). Here the gate alone still ends 0.022
    # above the baseline; with half of tier 2's own NLL in the objective, 0.002 (3 seeds). In the cpu preset's
    # 300 s that loss costs 14% per step and 0.019 BPB (one seed), so it is on here only. Tier 1 stays frozen in
    # both: trained with the transformer it gives a better float model here, but projected to what an artifact
    # holds it ends 0.060 behind (3 seeds), and in the cpu preset it is worse in every form.
    "cpu-long": dict(_CPU, iterations=4000, schedule="steps", max_wallclock_seconds=3600.0, val_loss_every=500,
                     gptq_reserve_seconds=10.0, tiers=dict(refine_seconds=0.0), prior_free_loss=0.5,
                     model=dict(_CPU["model"], num_layers=3)),
    "h100": _H100,
    # The records' setup: 8 GPUs (grad accumulation when fewer), 786,432 tokens per step.
    "h100x8": dict(_H100, train_batch_tokens=786432, tier_fit_tokens=100_000_000, batch_devices=8),
    # Trades transformer width for the tiers' bytes: golf's earlier h100x8, R1147's recipe with the tiered model
    # narrowed (MLP 2.5x, no BigramHash) and --baseline widened (MLP 2.75x, BigramHash 3072x112) so that both
    # fit 16,000,000 bytes at int6 at nearly equal totals, an iso-byte comparison (tests/test_sizes.py writes both
    # artifacts: 15.70 MB tiered with trained-like weights). Warmdown over the last 58% of the loop (R1147's
    # 4,000 steps at its pace).
    "h100x8-narrow": dict(_H100, train_batch_tokens=786432, tier_fit_tokens=100_000_000, batch_devices=8,
                          recur_at=[], model=dict(_NARROW_MODEL),
                          optim=dict(_R1147_OPTIM, grad_clip_local=False, warmdown_frac=0.58)),
    # R1147 (1.1147) itself, no tiers: its shapes, optimizer, EMA and warmdown form (4,000 steps at the measured
    # pace); its grad clipping of each rank's local gradient before the ranks average (optim.grad_clip_local).
    # `python -m golf.config --preset r1147` counts its 27,067,484 parameters. Not reproduced: its parameter banks
    # and FA3 (the same math, other kernels), bf16 token tables, its export (GPTQ on its own calibration set,
    # int6 + int8 embeddings, LZMA: golf's export and rate control instead).
    "r1147": dict(_H100, train_batch_tokens=786432, batch_devices=8, baseline=True, recur_at=[],
                  model=dict(_R1147_MODEL), optim=dict(_R1147_OPTIM, warmdown_steps=4000)),
    # R1063 (1.1063) itself, no tiers: its shapes (above), optimizer, recurrence from step 3,000 and warmdown of
    # 3,500 steps at the measured pace. `python -m golf.config --preset r1063` counts 29,405,308 parameters, and
    # 30,192,302 in its code's layout (the record's logged count: its banks also hold layer 0's unused attention,
    # its lambdas every layer's). Not reproduced: its matrix LR of 0.025 on layers 0-4 (one matrix_lr here), its
    # late QAT's soft-round ramp, its self-generated GPTQ calibration, mixed int5/int6 widths and brotli (golf's
    # export and rate control instead), parameter banks and FA3 (the same math).
    "r1063": dict(_H100, train_batch_tokens=786432, batch_devices=8, baseline=True, recur_at=[],
                  recur_at_steps=[3000], model=dict(_R1063_MODEL), optim=dict(_R1063_OPTIM, warmdown_steps=3500)),
}

# What --baseline changes besides turning the tiers off, per preset: h100x8-narrow gives the bytes the tiers
# would take to the transformer (a wider MLP and BigramHash), so tiered and baseline runs are compared at equal
# artifact size (tests/test_sizes.py measures both). The other presets compare equal transformers.
BASELINE_MODEL: dict[str, dict] = {
    "h100x8-narrow": dict(mlp_mult=2.75, bigram_buckets=3072, bigram_dim=112),
}

# The challenge's environment names and the fields they set.
ENV_NAMES = {
    "DATA_PATH": "data_path", "TOKENIZER_PATH": "tokenizer_path", "VOCAB_SIZE": "vocab_size", "RUN_ID": "run_id",
    "SEED": "seed", "MAX_WALLCLOCK_SECONDS": "max_wallclock_seconds", "ITERATIONS": "iterations",
    "TRAIN_BATCH_TOKENS": "train_batch_tokens", "TRAIN_SEQ_LEN": "train_seq_len", "VAL_LOSS_EVERY": "val_loss_every",
}

# Flags that set one field directly (argparse dest == field name).
FIELD_FLAGS = {
    "data_path": str, "tokenizer_path": str, "vocab_size": int, "run_id": str, "runs_dir": str, "seed": int,
    "max_wallclock_seconds": float, "iterations": int, "train_batch_tokens": int, "train_seq_len": int,
    "grad_accum": int, "schedule": str, "val_loss_every": int, "val_tokens": int, "log_every": int,
    "gptq_reserve_seconds": float, "device": str, "cpu_threads": int, "resume": str, "calib_batches": int,
    "eval_window": int, "eval_stride": int, "checkpoint_every_seconds": float,
}


def default_preset(env=os.environ) -> str:
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    return "h100x8" if int(env.get("WORLD_SIZE", "1")) > 1 else "h100"


def setting_name(key: str) -> str:
    """How a user sets `key`: its flag, and its env name where it has one (for error messages)."""
    names = []
    if key in FIELD_FLAGS:
        names.append("--" + key.replace("_", "-"))
    else:
        names.append(f"--set {key}=")
    names += [env for env, f in ENV_NAMES.items() if f == key]
    return f"{key} ({' / '.join(names)})"


# --- applying values -----------------------------------------------------------------------------------

def parse_value(text: str):
    """JSON where it parses (3, 0.5, true, null, [1, 2]), else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _coerce(value, like, key: str):
    """`value` converted to the type of the field's current value `like`: a list item by item; a dict only from
    a JSON object (its sub-config checks the entries); None taken as given."""
    if isinstance(like, (list, tuple)):
        return _coerce_list(value, like, key)
    if isinstance(like, dict) and not isinstance(value, dict):
        raise ConfigError(f"{setting_name(key)}: expected a JSON object, found {value!r}")
    if like is None or value is None or not isinstance(like, (bool, int, float, str)):
        return value
    bad = ConfigError(f"{setting_name(key)}: expected a {type(like).__name__}, found {value!r}")
    if isinstance(like, bool):
        if isinstance(value, str):
            word = value.strip().lower()
            if word in ("1", "true", "yes", "on"):
                return True
            if word in ("0", "false", "no", "off"):
                return False
            raise bad
        if value in (0, 1):
            return bool(value)
        raise bad
    if isinstance(like, str):
        return str(value)
    if isinstance(value, bool):
        raise bad
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise bad from None
    if isinstance(like, int):
        if not number.is_integer():
            raise bad
        return int(number)
    return number


def _coerce_list(value, like, key: str):
    """A list setting (quant.rate_bits, quant.clip_candidates) from a JSON list, each item of like's item type."""
    kind = type(like[0]).__name__ + "s" if like else "values"
    bad = ConfigError(f"{setting_name(key)}: expected a list of {kind} like {json.dumps(list(like))}, found {value!r}")
    if not isinstance(value, (list, tuple)):
        raise bad
    try:
        return type(like)(_coerce(v, like[0], key) for v in value) if like else type(like)(value)
    except ConfigError:
        raise bad from None


def _model_union(key: str, value):
    """model.xsa and model.rope_dims each take two kinds of value, which _coerce (one type per field) cannot
    check: a wrong kind is a ConfigError here, not a TypeError inside ModelConfig."""
    if key == "model.rope_dims":
        if value is None:
            return None
        try:
            return _coerce(value, 0, key)
        except ConfigError:
            raise ConfigError(f"{setting_name(key)}: expected an even int in [0, head_dim] or null (= head_dim), "
                              f"found {value!r}") from None
    # xsa: an int is refused, not read as a bool: 1 could mean True or layer [1].
    if isinstance(value, bool) or (isinstance(value, (list, tuple)) and all(
            isinstance(i, int) and not isinstance(i, bool) for i in value)):
        return value
    raise ConfigError(f"{setting_name(key)}: expected true (every layer), false or a list of layer indices like "
                      f"[0, 1], found {value!r}")


_MODEL_FIELDS = {f.name: f for f in dataclasses.fields(ModelConfig)}
_MODEL_DERIVED = ("vocab_size", "bos_id", "prior_columns")  # from the tokenizer and the tiers, never set
_TYPED_NONE_FIELDS = {"vocab_size": int, "compile": bool, "amp": bool, "resume": str, "tiers_file": str}


def set_field(cfg: TrainConfig, key: str, value) -> None:
    """Set a (dotted) field of cfg: 'seed', 'model.num_layers', 'optim.matrix_lr', 'tiers.prev_rank'."""
    head, _, rest = key.partition(".")
    if head == "model" and rest:
        if rest not in _MODEL_FIELDS or rest in _MODEL_DERIVED:
            allowed = sorted(set(_MODEL_FIELDS) - set(_MODEL_DERIVED))
            raise ConfigError(f"{key}: not a model setting (one of {allowed})")
        default = _MODEL_FIELDS[rest].default
        like = cfg.model.get(rest, default)
        cfg.model[rest] = _model_union(key, value) if rest in ("xsa", "rope_dims") else _coerce(value, like, key)
        return
    if head in ("optim", "tiers", "quant", "ttt") and rest:
        sub = getattr(cfg, head)
        names = {f.name for f in dataclasses.fields(sub)}
        if rest not in names:
            raise ConfigError(f"{key}: not a {head} setting (one of {sorted(names)})")
        setattr(sub, rest, _coerce(value, getattr(sub, rest), key))
        return
    names = {f.name for f in dataclasses.fields(TrainConfig)} - {"model", "optim", "tiers", "quant", "ttt"}
    if rest or key not in names:
        raise ConfigError(f"--set {key}: unknown setting (top-level: {sorted(names)}; nested: model.*, optim.*, "
                          f"tiers.*, quant.*, ttt.*)")
    if key == "artifact_codec":  # a codec name or a dict: validate checks it (normalize_codec)
        cfg.artifact_codec = value
        return
    like = getattr(cfg, key)
    if like is None and value is not None and key in _TYPED_NONE_FIELDS:
        kind = _TYPED_NONE_FIELDS[key]
        like = {int: 0, bool: False, str: ""}[kind]
    setattr(cfg, key, _coerce(value, like, key))


def apply_preset(cfg: TrainConfig, name: str) -> None:
    if name not in PRESETS:
        raise ConfigError(f"--preset {name}: unknown preset (expected one of {sorted(PRESETS)})")
    cfg.preset = name
    for key, value in copy.deepcopy(PRESETS[name]).items():
        if key in ("model", "optim", "tiers", "quant", "ttt"):
            for sub, v in value.items():
                set_field(cfg, f"{key}.{sub}", v)
        else:
            set_field(cfg, key, value)


# Where and as what a run happens, not how it trains: not carried from one run's config to another.
RUN_LOCAL = ("data_path", "tokenizer_path", "run_id", "runs_dir", "resume", "overwrite", "device", "cpu_threads",
             "tiers_file")


def config_from_dict(values: dict, where: str = "config") -> TrainConfig:
    """The TrainConfig of a resolved config dict (TrainConfig.to_dict()), RUN_LOCAL fields left at their defaults.
    ConfigError naming `where` for a field golf does not know."""
    values = {k: v for k, v in values.items() if k not in RUN_LOCAL}
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise ConfigError(f"{where}: unknown settings {unknown}")
    try:
        nested = {"optim": OptimConfig(**values.get("optim", {})), "quant": QuantConfig(**values.get("quant", {})),
                  "tiers": TierConfig(**values.get("tiers", {})), "ttt": TTTConfig(**values.get("ttt", {}))}
        return TrainConfig(**{**values, **nested})
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def portable_dict(cfg: TrainConfig) -> dict:
    """cfg.to_dict() without RUN_LOCAL: what a submission's train_gpt.py carries."""
    return {k: v for k, v in cfg.to_dict().items() if k not in RUN_LOCAL}


def load_config_file(path) -> TrainConfig:
    try:
        values = json.loads(open(path, encoding="utf-8").read())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"--config {path}: cannot read a JSON config ({exc})") from exc
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path}: expected a JSON object, found {type(values).__name__}")
    return config_from_dict(values.get("config", values), where=f"--config {path}")


def apply_env(cfg: TrainConfig, env) -> None:
    for name, key in ENV_NAMES.items():
        text = env.get(name)
        if text is None or text == "":
            continue
        try:
            set_field(cfg, key, text)
        except ConfigError as exc:
            raise ConfigError(f"environment {name}={text!r}: {exc}") from exc


# --- validation ----------------------------------------------------------------------------------------

def validate(cfg: TrainConfig) -> TrainConfig:
    def need(ok: bool, key: str, expected: str):
        if not ok:
            raise ConfigError(f"{setting_name(key)}: expected {expected}, found {getattr(cfg, key)!r}")

    need(cfg.max_wallclock_seconds > 0, "max_wallclock_seconds", "> 0")
    need(cfg.iterations >= 0, "iterations", ">= 0")
    need(cfg.train_seq_len >= 2, "train_seq_len", ">= 2")
    need(cfg.train_batch_tokens > 0 and cfg.train_batch_tokens % cfg.train_seq_len == 0, "train_batch_tokens",
         f"a positive multiple of train_seq_len={cfg.train_seq_len}")
    need(cfg.grad_accum >= 0, "grad_accum", ">= 0 (0 = auto)")
    need(cfg.batch_devices >= 1, "batch_devices", ">= 1")
    need(cfg.schedule in SCHEDULES, "schedule", f"one of {SCHEDULES}")
    need(cfg.val_loss_every >= 0, "val_loss_every", ">= 0")
    need(cfg.val_tokens >= 0, "val_tokens", ">= 0 (0 = the full split)")
    need(cfg.val_batch_tokens >= cfg.train_seq_len, "val_batch_tokens", f">= train_seq_len={cfg.train_seq_len}")
    need(cfg.log_every >= 1, "log_every", ">= 1")
    need(cfg.gptq_reserve_seconds >= 0, "gptq_reserve_seconds", ">= 0")
    need(cfg.compile_warmup_steps >= 0, "compile_warmup_steps", ">= 0")
    need(cfg.qat_lr_scale >= 0, "qat_lr_scale", ">= 0 (0 = no QAT)")
    need(cfg.calib_batches >= 0, "calib_batches", ">= 0 (0 = round-to-nearest int6, no GPTQ)")
    need(cfg.eval_window >= 0, "eval_window", ">= 0 (0 = train_seq_len)")
    need(cfg.eval_stride >= 1, "eval_stride", ">= 1")
    need(cfg.eval_method in EVAL_METHODS, "eval_method", f"one of {EVAL_METHODS}")
    need(cfg.eval_budget_seconds >= 0, "eval_budget_seconds", ">= 0 (0 = no limit)")
    check_ttt_config(cfg.ttt)
    need(cfg.size_cap_bytes > 0, "size_cap_bytes", "> 0")
    need(cfg.tier_fit_tokens >= 0, "tier_fit_tokens", ">= 0 (0 = all)")
    need(0.0 <= cfg.prior_anneal <= 1.0, "prior_anneal", "a fraction of the run in [0, 1] (0 = off)")
    if cfg.prior_anneal > 0 and cfg.model.get("prior_gate", "off") == "off" and not cfg.baseline:
        raise ConfigError("prior_anneal (--set prior_anneal=): the schedule writes the prior gate's weight; set "
                          "model.prior_gate to fixed, scalar or gate")
    phases = cfg.recur_phases
    for key, kind in (("recur_at", (int, float)), ("recur_at_steps", (int,))):
        at = getattr(cfg, key)
        if not at:
            continue
        need(isinstance(at, list) and all(isinstance(a, kind) and not isinstance(a, bool) and a >= 0 for a in at)
             and at == sorted(at), key, "an ascending list of " + ("fractions in [0, 1]" if key == "recur_at" else
                                                                  "steps >= 0"))
        need(key != "recur_at" or all(a <= 1 for a in at), key, "fractions of the run in [0, 1]")
        need(len(at) == phases, key, f"one start per recurrence phase, {phases} here (model.recur_passes with "
                                     "model.recur_layers set, else none)")
    if cfg.recur_at and cfg.recur_at_steps:
        raise ConfigError("recur_at and recur_at_steps: give the phases' starts one way (fractions or steps)")
    need(cfg.prior_free_loss >= 0, "prior_free_loss", ">= 0 (0 = off)")
    if cfg.prior_free_loss > 0 and cfg.baseline:
        raise ConfigError("prior_free_loss (--set prior_free_loss=): with --baseline there are no priors, and tier 2 "
                          "alone is already the loss")
    need(cfg.cpu_threads >= 0, "cpu_threads", ">= 0 (0 = torch's default)")
    need(cfg.attention == "auto" or cfg.attention in ATTENTION_BACKENDS, "attention",
         f"auto or one of {', '.join(ATTENTION_BACKENDS)}")
    need(cfg.checkpoint_every_seconds >= 0, "checkpoint_every_seconds", ">= 0 (0 = only at the end)")
    need(cfg.vocab_size is None or cfg.vocab_size >= 2, "vocab_size", ">= 2")
    need(cfg.tiers_file is None or not cfg.baseline, "tiers_file", "none with --baseline (no tiers)")
    if cfg.tiers.tier1_form not in TIER1_FORMS:
        raise ConfigError(f"tiers.tier1_form (--set tiers.tier1_form=): expected one of {', '.join(TIER1_FORMS)}, "
                          f"found {cfg.tiers.tier1_form!r}")
    if cfg.tier1_train and cfg.tiers.tier1_form == "factored":
        raise ConfigError("tier1_train trains dense prior rows; tiers.tier1_form=factored has none (set it to "
                          "dense or auto)")
    need(bool(cfg.run_id) and "/" not in cfg.run_id and cfg.run_id not in (".", ".."), "run_id",
         "a non-empty name without '/'")
    # Re-run the sub-configs' own checks on the final values.
    OptimConfig(**dataclasses.asdict(cfg.optim))
    cfg.quant = QuantConfig(**dataclasses.asdict(cfg.quant))
    try:
        normalize_codec(cfg.artifact_codec)
    except ArtifactError as exc:
        raise ConfigError(f"artifact_codec (--set artifact_codec=...): {exc}") from exc
    for name in ("xsa", "rope_dims"):  # also when they come from a --config file, not through set_field
        if name in cfg.model:
            cfg.model[name] = _model_union(f"model.{name}", cfg.model[name])
    try:
        ModelConfig(vocab_size=1024, bos_id=1, **cfg.model)
    except TypeError as exc:
        raise ConfigError(f"model settings: {exc}") from exc
    return cfg


# --- command line --------------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """argparse's own errors (an unknown flag, a value of the wrong type) as a ConfigError: golf.train then prints
    one `error:` line naming the flag, not the usage text and an exit from inside argparse."""

    def error(self, message):
        raise ConfigError(f"invalid command line: {message}")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m golf.train", argument_default=argparse.SUPPRESS,
                description="Train golf: tiers 0+1 by counting, then the tier-2 transformer, "
                            "inside one wall-clock budget. Settings: flag > env > preset.")
    p.add_argument("--preset", help=f"one of {sorted(PRESETS)} (default: cpu without CUDA, h100 with a GPU)")
    p.add_argument("--config", metavar="FILE.json",
                   help="start from a resolved config (a summary.json or its 'config') instead of a preset")
    p.add_argument("--baseline", action="store_true",
                   help="tiers off, everything else equal (GPU presets: the transformer takes the tiers' bytes)")
    p.add_argument("--resume", metavar="PATH", help="continue from a checkpoint.pt (step count and timer continue)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier run's files in runs_dir/run_id (else such a run is refused)")
    p.add_argument("--compile", dest="compile", action="store_true", help="torch.compile the model")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="run eagerly")
    p.add_argument("--amp", dest="amp", action="store_true", help="bf16 autocast")
    p.add_argument("--no-amp", dest="amp", action="store_false", help="fp32")
    p.add_argument("--tier1-train", dest="tier1_train", action="store_true",
                   help="train the prior rows (the artifact stores tier 1 projected back to its ranks)")
    p.add_argument("--no-export", dest="export", action="store_false",
                   help="stop after the float model's eval: no GPTQ, artifact or artifact evals")
    for key, kind in FIELD_FLAGS.items():
        if key == "resume":
            continue
        flag = "--" + key.replace("_", "-")
        envs = [e for e, f in ENV_NAMES.items() if f == key]
        p.add_argument(flag, dest=key, type=kind, help=f"env {envs[0]}" if envs else None)
    p.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                   help="any other setting, e.g. model.num_layers=2, optim.matrix_lr=0.02, tiers.prev_rank=64")
    return p


def apply_baseline(cfg: TrainConfig) -> None:
    """What --baseline changes besides the tiers: the preset's BASELINE_MODEL, and no prior-free loss."""
    for key, value in BASELINE_MODEL.get(cfg.preset, {}).items():
        set_field(cfg, f"model.{key}", value)
    cfg.prior_free_loss = 0.0  # a preset's loss beside the priors; set explicitly with --baseline, it errors


def resolve_config(argv=None, env=None) -> TrainConfig:
    """flag > env > preset; ConfigError for unknown presets, settings or invalid values."""
    env = os.environ if env is None else env
    args = vars(build_parser().parse_args(argv))  # --help exits 0; a bad flag is a ConfigError (_Parser.error)
    if "config" in args:
        if "preset" in args:
            raise ConfigError("--config and --preset: give one (the config names its own preset)")
        cfg = load_config_file(args.pop("config"))
    else:
        cfg = TrainConfig()
        apply_preset(cfg, args.pop("preset", None) or default_preset(env))
    if args.get("baseline") and not cfg.baseline:
        apply_baseline(cfg)
    apply_env(cfg, env)
    for text in args.pop("overrides", None) or []:
        key, eq, value = text.partition("=")
        if not eq:
            raise ConfigError(f"--set {text}: expected KEY=VALUE")
        set_field(cfg, key.strip(), parse_value(value))
    for key, value in args.items():
        set_field(cfg, key, value)
    if not cfg.run_id:
        cfg.run_id = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
    return validate(cfg)


# --- the resolved whole, as a table: python -m golf.config -----------------------------------------------

def flat_settings(cfg: TrainConfig) -> dict:
    """Every setting by dotted name (model.* with ModelConfig's defaults for what the config leaves unset, as
    the model is built), values as JSON has them."""
    values = cfg.to_dict()
    out = {k: v for k, v in values.items() if k not in ("model", "optim", "tiers", "quant", "ttt")}
    for section in ("optim", "tiers", "quant", "ttt"):
        out.update({f"{section}.{k}": v for k, v in values[section].items()})
    model = {name: f.default for name, f in _MODEL_FIELDS.items() if name not in _MODEL_DERIVED}
    model.update(values["model"])
    out.update({f"model.{k}": json.loads(json.dumps(v)) for k, v in model.items()})
    return out


SETTINGS_HEADER = ("setting", "source", "value")


def settings_table(cfg: TrainConfig) -> list[tuple[str, str, object]]:
    """(name, source, value) for every setting, sorted by name; source: "default" (the dataclasses'), "preset"
    (the preset's, with --baseline its BASELINE_MODEL) or "set" (env, flag, --set or a --config file)."""
    preset = TrainConfig()
    apply_preset(preset, cfg.preset)
    if cfg.baseline:
        apply_baseline(preset)
    now, by_preset, default = flat_settings(cfg), flat_settings(preset), flat_settings(TrainConfig())
    rows = []
    for name in sorted(now):
        value = now[name]
        source = ("default" if value == default.get(name) else "preset") if value == by_preset.get(name) else "set"
        rows.append((name, source, value))
    return rows


def format_table(rows: list[tuple], header: tuple) -> list[str]:
    """Aligned text columns (values as JSON), one string per line."""
    cells = [header] + [tuple(c if isinstance(c, str) else json.dumps(c) for c in row) for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]


def parameter_counts(cfg: TrainConfig, vocab_size: int, bos_id: int) -> dict[str, int]:
    """Values per component the settings give, without training or data: the tiers' (golf.tiers.tier_parameters)
    and the transformer's per top-level module (golf.model.param_counts, built on the meta device)."""
    import torch

    from golf.model import Transformer, param_counts
    from golf.tiers import tier_parameters

    out = {} if cfg.baseline else tier_parameters(cfg.tiers, vocab_size)
    columns = 0 if cfg.baseline else (3 if cfg.tiers.tier1 else 1)
    with torch.device("meta"):
        transformer = Transformer(cfg.model_config(vocab_size, bos_id, columns))
    out.update({f"tier2.{k}": n for k, n in param_counts(transformer).items() if n})
    out["total"] = sum(n for k, n in out.items() if k != "tier2.total")
    return out


def unused_in_records_layout(cfg: TrainConfig, vocab_size: int) -> int:
    """The parameters the records' code allocates and never uses, which golf does not build: with layer 0's
    attention off, its Q, K, V, O (in the banks), q_gain and attn_scale (R1063's DISABLE_LAYER0_ATTN); with
    two_lane residuals, the lambdas of the layers before parallel_start (R1063 has them for every layer). A record's
    logged parameter count is golf's plus these."""
    mc = cfg.model_config(vocab_size, 1)
    d, kv = mc.model_dim, mc.num_kv_heads * mc.head_dim
    unused = 0 if mc.layer0_attn else 2 * d * d + 2 * kv * d + mc.num_heads + d
    if mc.parallel_residual == "two_lane":
        unused += 6 * min(mc.parallel_start, mc.num_layers)
    return unused


def main(argv=None) -> int:
    """python -m golf.config [golf.train's flags]: the resolved settings as one table (name, value, where it
    came from), then the values per component. The vocabulary is the tokenizer's (TOKENIZER_PATH) when it is
    there, else vocab_size, else 1024."""
    import sys

    try:
        cfg = resolve_config(argv)
        vocab, bos, note = cfg.vocab_size or 1024, 1, "assumed: no tokenizer at tokenizer_path"
        if os.path.isfile(cfg.tokenizer_path):
            from golf.data import load_tokenizer

            sp = load_tokenizer(cfg.tokenizer_path, cfg.vocab_size)
            vocab, bos, note = sp.vocab_size(), sp.bos_id(), cfg.tokenizer_path
    except GolfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(format_table(settings_table(cfg), SETTINGS_HEADER)))
    print()
    counts = parameter_counts(cfg, vocab, bos)
    rows = sorted(counts.items(), key=lambda kv: kv[0] == "total")
    unused = unused_in_records_layout(cfg, vocab)
    if unused:
        rows.append(("total in the records' layout", counts["total"] + unused))
    print("\n".join(format_table(rows, ("parameters", f"count (vocab {vocab}, {note})"))))
    if unused:
        print(f"(the records' code also allocates {unused:,} parameters it never uses: layer 0's attention when it "
              "is off, the lambdas of serial layers)")
    return 0


__all__ = ["PRESETS", "BASELINE_MODEL", "ENV_NAMES", "RUN_LOCAL", "TrainConfig", "resolve_config", "default_preset",
           "set_field", "parse_value", "portable_dict", "config_from_dict", "load_config_file", "settings_table",
           "parameter_counts", "unused_in_records_layout"]


if __name__ == "__main__":
    raise SystemExit(main())
