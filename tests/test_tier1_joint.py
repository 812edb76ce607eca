"""bench.tier1_joint: a --tier1-train run's rows read back as the run scored them (EMA), every variant scored,
the projected one exactly as golf.train exported it; a run of another kind is refused."""

import argparse

import pytest

from bench import tier1_joint
from test_train import run_inprocess, tiny_args


@pytest.fixture(scope="module")
def joint_run(data_path, tokenizer_path, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    summary = run_inprocess(tiny_args(data_path, tokenizer_path, runs, "joint", "--tier1-train", "--iterations", "6",
                                      "--val-loss-every", "0", "--set", "optim.ema_decay=0.5",
                                      "--set", "calib_batches=1"))
    return runs / "joint", summary


def test_every_variant_scored_and_the_run_reproduced(joint_run, capsys):
    run_dir, summary = joint_run
    result = tier1_joint.analyse(run_dir, argparse.Namespace(data_path=None, tokenizer_path=None))
    assert result["steps"] == 6
    assert result["bpb"]["trained"] == pytest.approx(summary["float_val_bpb"], abs=1e-5)
    assert result["bpb"]["t1 projected"] == pytest.approx(summary["projected_val_bpb"], abs=1e-5)
    assert result["bpb"]["fitted"] != result["bpb"]["trained"]  # training moved the rows
    assert result["tier_bytes"]["t1 projected 4x rank"] > result["tier_bytes"]["t1 projected"]
    assert all(result["moved"][k] > 0 for k in ("tier0", "prev", "pair"))
    tier1_joint.main([str(run_dir)])
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| joint"))
    assert f"{summary['float_val_bpb']:.4f}" in row and f"{summary['projected_val_bpb']:.4f}" in row


def test_a_run_without_trained_rows_is_refused(data_path, tokenizer_path, tmp_path):
    run_inprocess(tiny_args(data_path, tokenizer_path, tmp_path, "plain", "--no-export", "--iterations", "1",
                            "--val-loss-every", "0"))
    with pytest.raises(SystemExit, match="not a --tier1-train run"):
        tier1_joint.main([str(tmp_path / "plain")])
