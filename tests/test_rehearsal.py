"""A rehearsal of the record topology on the CPU: `torchrun --nproc_per_node=8 -m golf.train --preset h100x8` with
gloo, a tiny model and batch (--set), export and sliding eval included. The preset's own layout runs: 8 ranks,
grad_accum = batch_devices // world_size = 1, rank 0 fits and broadcasts the tiers, rank 0 calibrates and writes
model.golf, every rank scores its share of the windows. One process with grad_accum 8 sees the same global batches
and must end where the 8 ranks end."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from test_train import events, read_summary, run_inprocess, subprocess_env

RANKS = 8


def rehearsal_args(data_path, tokenizer_path, runs_dir, run_id, *extra) -> list[str]:
    """h100x8 with everything sized down: seq 64, 2 sequences per rank per step, a d64 2-layer model with R1063's
    components, small tiers."""
    return ["--preset", "h100x8", "--data-path", str(data_path), "--tokenizer-path", str(tokenizer_path),
            "--runs-dir", str(runs_dir), "--run-id", run_id, "--cpu-threads", "1", "--schedule", "steps",
            "--iterations", "6", "--val-loss-every", "0", "--max-wallclock-seconds", "300",
            "--train-seq-len", "64", "--train-batch-tokens", str(64 * 2 * RANKS), "--val-tokens", "4096",
            "--eval-stride", "32", "--calib-batches", "2", "--set", "val_batch_tokens=1024",
            "--set", "tier_fit_tokens=262144", "--set", "tiers.prev_rank=16", "--set", "tiers.pair_rank=16",
            "--set", "tiers.pair_rows=512", "--set", "model.num_layers=2", "--set", "model.model_dim=64",
            "--set", "model.num_heads=4", "--set", "model.num_kv_heads=2", "--set", "model.rope_dims=16",
            # R1063's stack on 2 layers: layer 1 twice from half-way (3 virtual layers), two lanes from layer 1
            "--set", "model.recur_layers=[1]", "--set", "recur_at=[0.5]", "--set", "model.ve_dim=16",
            "--set", "model.ve_layers=[1,2]", "--set", "model.xsa=true", "--set", "model.parallel_start=1",
            "--set", "model.bigram_buckets=512", "--set", "model.bigram_dim=16",
            "--set", "quant.small_numel=1024",
            # 6 steps: a warmdown over the run (not the preset's 4,000 steps) and an EMA that can follow them.
            "--set", "optim.warmdown_steps=0", "--set", "optim.ema_decay=0.5",
            # The clip of the averaged gradient, so that 8 ranks and one process are the same run (R1063 clips each
            # rank's own, which tests/test_train.py's local-clipping test covers).
            "--set", "optim.grad_clip_local=false", *extra]


@pytest.mark.slow
def test_eight_gloo_ranks_rehearse_the_record_run(data_path, tokenizer_path, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={RANKS}",
           "-m", "golf.train", *rehearsal_args(data_path, tokenizer_path, tmp_path, "x8")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    x8 = read_summary(tmp_path, "x8")
    assert x8["preset"] == "h100x8" and x8["world_size"] == RANKS and x8["grad_accum"] == 1
    assert len(x8["weights_sha256"]) == RANKS and len(set(x8["weights_sha256"])) == 1
    assert x8["steps"] == 6 and x8["config"]["optim"]["muon_momentum"] == 0.99  # the preset's recipe, sized down
    [switch] = events(tmp_path, "x8", "recur_phase")  # every rank switched at once: the hashes above agree
    assert (switch["step"], switch["virtual_layers"]) == ("3", "3")
    # Rank 0 exported; every rank scored its windows of the sliding plan, summed over the ranks.
    assert (tmp_path / "x8" / "model.golf").is_file() and events(tmp_path, "x8", "artifact")
    assert x8["size"]["fits"] and x8["sliding"]["targets"] == 4096 and x8["sliding"]["stride"] == 32
    assert all(math.isfinite(x8[k]) for k in ("val_bpb", "roundtrip_val_bpb", "float_val_bpb", "tiers_only_bpb"))

    one = run_inprocess(rehearsal_args(data_path, tokenizer_path, tmp_path, "x1", "--grad-accum", str(RANKS)))
    assert one["world_size"] == 1 and one["grad_accum"] == RANKS
    assert one["tiers_only_bpb"] == pytest.approx(x8["tiers_only_bpb"], abs=1e-9)
    assert one["float_val_bpb"] == pytest.approx(x8["float_val_bpb"], abs=1e-4)
    assert one["val_bpb"] == pytest.approx(x8["val_bpb"], abs=1e-3)
    assert one["float_val_bpb"] != pytest.approx(one["tiers_only_bpb"], abs=1e-3)  # the weights did move

    # Banked Muon (golf.muon_banks: the block matrices in banks sharded over the 8 ranks and left out of DDP, the
    # averaged gradient clipped across the shards, a recurrence whose untied copies get no gradient before their
    # phase) against per-matrix Muon in one process: the same weights to fp32 rounding, the ranks bit for bit
    # equal. Newton-Schulz in fp32 for both: batched and one matrix at a time differ in bf16 by bf16's rounding
    # (up to 1.6e-3 in the Muon matrices after these 6 steps).
    fp32 = ("--no-export", "--set", "optim.muon_ns_dtype=float32")
    banks = rehearsal_args(data_path, tokenizer_path, tmp_path, "x8-banks", *fp32, "--set", "optim.muon_banks=true")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={RANKS}", "-m",
           "golf.train", *banks]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    banked = read_summary(tmp_path, "x8-banks")
    assert len(banked["weights_sha256"]) == RANKS and len(set(banked["weights_sha256"])) == 1
    per_matrix = run_inprocess(rehearsal_args(data_path, tokenizer_path, tmp_path, "x1-fp32", *fp32,
                                              "--grad-accum", str(RANKS)))
    a, b = (torch.load(tmp_path / run / "checkpoint.pt", weights_only=False)["model"]
            for run in ("x1-fp32", "x8-banks"))
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert diff < 1e-4, diff
    assert banked["float_val_bpb"] == pytest.approx(per_matrix["float_val_bpb"], abs=1e-5)
