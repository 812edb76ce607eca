"""bench.tier1_joint: a --tier1-train run's rows read back as the run scored them (EMA), projected to the
tier ranks, and every variant scored; a run of another kind is refused."""

import argparse
import dataclasses
import json

import pytest
import torch

from bench import tier1_joint
from golf.tiers import NUM_STATES
from test_train import run_inprocess, tiny_args


@pytest.fixture(scope="module")
def joint_run(data_path, tokenizer_path, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    summary = run_inprocess(tiny_args(data_path, tokenizer_path, runs, "joint", "--tier1-train", "--no-export",
                                      "--iterations", "6", "--val-loss-every", "0",
                                      "--set", "optim.ema_decay=0.5"))
    return runs / "joint", summary


def centered(rows: torch.Tensor) -> torch.Tensor:
    return rows - rows.mean(1, keepdim=True)  # a per-row constant does not change the softmax


def test_projection_is_exact_at_full_rank_and_low_rank_below(joint_run, data_path):
    run_dir, _ = joint_run
    args = argparse.Namespace(data_path=None, tokenizer_path=None)
    cfg, sp, tiers, _, trained, steps = tier1_joint.load_run(run_dir, args)
    assert steps == 6
    v = sp.vocab_size()
    counts = torch.rand(trained.shape[0], dtype=torch.float64) * 100
    full = dataclasses.replace(tiers, cfg=dataclasses.replace(tiers.cfg, prev_rank=v, pair_rank=v))
    exact = tier1_joint.project_tier1(trained, counts, full)
    target = centered(trained[NUM_STATES:])
    torch.testing.assert_close(centered(exact), target, atol=1e-2, rtol=0)  # fp32 SVD of count-weighted rows
    low = tier1_joint.project_tier1(trained, counts, tiers)
    assert (centered(low) - target).abs().max() > 10 * (centered(exact) - target).abs().max()
    assert torch.linalg.matrix_rank(low[:v]).item() <= tiers.cfg.prev_rank
    assert torch.linalg.matrix_rank(low[v:]).item() <= tiers.cfg.pair_rank


def test_every_variant_scored_and_the_trained_rows_match_the_run(joint_run, capsys):
    run_dir, summary = joint_run
    result = tier1_joint.analyse(run_dir, argparse.Namespace(data_path=None, tokenizer_path=None))
    assert result["bpb"]["trained"] == pytest.approx(summary["float_val_bpb"], abs=1e-5)
    assert result["bpb"]["fitted"] != result["bpb"]["trained"]  # training moved the rows
    assert all(result["moved"][k] > 0 for k in ("tier0", "prev", "pair"))
    tier1_joint.main([str(run_dir)])
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| joint"))
    assert f"{summary['float_val_bpb']:.4f}" in row


def test_a_run_without_trained_rows_is_refused(data_path, tokenizer_path, tmp_path):
    run_inprocess(tiny_args(data_path, tokenizer_path, tmp_path, "plain", "--no-export", "--iterations", "1",
                            "--val-loss-every", "0"))
    with pytest.raises(SystemExit, match="not a --tier1-train run"):
        tier1_joint.main([str(tmp_path / "plain")])
    assert json.loads((tmp_path / "plain" / "summary.json").read_text())["steps"] == 1
