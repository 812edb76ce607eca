"""golf.experiment on a tiny budget (real data, 2 seeds, every built-in arm and a custom one): results.json's
schema and numbers against the runs' own summaries, the shared tier fit and its charge, tiered-small's size,
resuming, and the statistics it reports."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from golf import stats
from golf.experiment import arm_flags, arm_stats, curve, job_envs, run_all
from golf.errors import ConfigError

from test_train import subprocess_env

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(data_path, tokenizer_path) -> list[str]:
    """The cpu preset's transformer (1 layer, d128: tiered-small is then d96) on 1,024-token steps of seq 64."""
    return ["--data-path", str(data_path), "--tokenizer-path", str(tokenizer_path), "--cpu-threads", "1",
            "--train-seq-len", "64", "--train-batch-tokens", "1024", "--val-tokens", "8192", "--iterations", "6",
            "--val-loss-every", "3", "--schedule", "steps", "--set", "val_batch_tokens=4096",
            "--set", "tiers.prev_rank=16", "--set", "tiers.pair_rank=16", "--set", "tiers.pair_rows=512",
            "--set", "tiers.refine_seconds=0", "--set", "tier_fit_tokens=262144"]


def experiment(out, *args, flags):
    cmd = [sys.executable, "-m", "golf.experiment", "--preset", "cpu", "--out", str(out), *args, *flags]
    return subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=900)


@pytest.fixture(scope="module")
def done(data_path, tokenizer_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("exp")
    flags = tiny(data_path, tokenizer_path)
    args = ("--arms", "tiered,baseline,tiers-only,tiered-small", "--seeds", "2",
            "--arm", "ungated:--set model.prior_gate=off", "--jobs", "2")
    proc = experiment(out, *args, flags=flags)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, args, flags, proc


def summary(out, run_id) -> dict:
    return json.loads((out / "runs" / run_id / "summary.json").read_text())


def test_results_schema_and_numbers(done):
    out, _, _, proc = done
    results = json.loads((out / "results.json").read_text())
    assert list(results["arms"]) == ["tiered", "baseline", "tiers-only", "tiered-small", "ungated"]
    assert results["config"]["seeds"] == [1, 2] and results["config"]["preset"] == "cpu"
    for arm in ("tiered", "baseline", "tiered-small", "ungated"):
        r = results["arms"][arm]
        assert {"seeds", "val_bpb", "mean", "std", "p_vs_baseline", "ci95", "curves"} <= set(r)
        assert r["seeds"] == [1, 2]
        assert r["val_bpb"] == [summary(out, f"{arm}-s{s}")["val_bpb"] for s in (1, 2)]
        assert r["mean"] == pytest.approx(sum(r["val_bpb"]) / 2)
        assert r["std"] == pytest.approx(abs(r["val_bpb"][0] - r["val_bpb"][1]) / math.sqrt(2))
        lo, hi = r["ci95"]
        assert lo < r["mean"] < hi
        assert (r["p_vs_baseline"] is None) == (arm == "baseline")
        assert len(r["curves"]) == 2 and [p["step"] for p in r["curves"][0]] == [0, 3, 6]
        assert all(p["tokens"] == 1024 * p["step"] for p in r["curves"][0])
    # Six steps on top of the priors beat six steps from nothing, by far: the p-value must say so.
    assert results["arms"]["tiered"]["p_vs_baseline"] < 0.05
    assert results["arms"]["tiered"]["diff_vs_baseline"]["ci95"][1] < 0
    # Baseline runs fit no tiers; every other arm is charged the one shared fit.
    fit = results["config"]["tier_fits"]["tiered"]
    charged = fit["seconds"]["read"] + fit["seconds"]["fit"]
    for arm in ("tiered", "tiered-small", "ungated"):
        s = summary(out, f"{arm}-s1")
        assert s["tiers_file"]["charged_seconds"] == pytest.approx(charged)
        assert s["stage_seconds"]["fit_tiers"] >= charged
        assert results["arms"][arm]["curves"][0][0]["seconds"] == pytest.approx(s["stage_seconds"]["fit_tiers"])
    assert summary(out, "baseline-s1")["tiers_only_bpb"] is None
    # tiers-only: the shared fit alone, which is what each tiered run measured as its tiers-only BPB.
    alone = results["arms"]["tiers-only"]
    assert alone["seeds"] == [None] and alone["p_vs_baseline"] is None
    assert alone["val_bpb"][0] == pytest.approx(summary(out, "tiered-s1")["tiers_only_bpb"], abs=1e-9)
    # tiered-small: 0.5-0.7x the baseline transformer.
    small = summary(out, "tiered-small-s1")["params"]["tier2"]["total"]
    base = summary(out, "baseline-s1")["params"]["tier2"]["total"]
    assert 0.5 <= small / base <= 0.7 and results["arms"]["tiered-small"]["flags"] == ["--set", "model.model_dim=96"]
    assert summary(out, "ungated-s1")["prior_gate"] is None
    assert summary(out, "tiered-s1")["prior_gate"]["mode"] == "gate"
    table = (out / "results.md").read_text()
    assert all(f"| {arm} |" in table for arm in results["arms"]) and "p (Welch" in table
    assert (out / "curves.png").stat().st_size > 10_000
    assert "ETA" in proc.stdout and "[8/8]" in proc.stdout


def test_a_second_call_resumes_and_refuses_other_flags(done):
    out, args, flags, _ = done
    before = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/summary.json")}
    again = experiment(out, *args, flags=flags)
    assert again.returncode == 0 and "8 already done" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/summary.json")} == before
    other = experiment(out, "--arms", "tiered", "--seeds", "2", "--arm", "ungated:--set model.prior_gate=scalar",
                       flags=flags)
    assert other.returncode == 2 and "arm ungated ran with flags" in other.stderr


def test_jobs_ran_side_by_side(done):
    """--jobs 2: some two runs were alive at the same time (a summary is written at its run's end)."""
    out = done[0]
    spans = []
    for path in (out / "runs").glob("*/summary.json"):
        end = path.stat().st_mtime
        spans.append((end - json.loads(path.read_text())["wall_seconds"], end))
    spans.sort()
    assert len(spans) == 8
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:]))


def test_run_all_keeps_the_order_and_never_shares_a_slot(monkeypatch):
    import threading
    import time

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    running, seen, lock = {}, [], threading.Lock()

    def launch(item, env):
        with lock:
            assert id(env) not in running.values()  # no two live runs hold the same GPU or thread share
            running[item] = id(env)
            seen.append((item, env["OMP_NUM_THREADS"], len(running)))
        time.sleep(0.02)
        with lock:
            del running[item]

    run_all(list(range(7)), 2, launch)
    order = [s[0] for s in seen]
    assert sorted(order) == list(range(7))
    assert all(order.index(k) < order.index(k + 2) for k in range(5))  # the given (seed-interleaved) order
    assert {s[1] for s in seen} == {"2"} and max(s[2] for s in seen) == 2


def test_job_envs_give_each_job_a_gpu_when_there_are_enough(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in job_envs(2, {"CUDA_VISIBLE_DEVICES": "3,5"})] == ["3", "5"]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in job_envs(2, {})] == ["0", "1"]
    with pytest.raises(ConfigError, match="--jobs 3: only 2 GPUs visible"):
        job_envs(3, {})
    assert job_envs(1, {"A": "1"}) == [{"A": "1"}]


def test_a_step_scheduled_run_the_clock_cut_short_is_flagged():
    from golf.experiment import cut_short

    cfg = {"run_id": "tiered-s1", "schedule": "steps", "iterations": 4000, "max_wallclock_seconds": 1800.0}
    cut = {"config": cfg, "stop_reason": "budget", "steps": 2970}
    assert "tiered-s1 stopped by the wall clock at step 2970 of 4000" in cut_short(cut)
    assert cut_short({**cut, "stop_reason": "iterations", "steps": 4000}) is None
    assert cut_short({**cut, "config": {**cfg, "schedule": "time"}}) is None  # the budget is its schedule


def test_arms_and_flags_are_checked():
    assert arm_flags(["tiered", "baseline"], ["mine:--set model.num_layers=2 --iterations 5"]) == {
        "tiered": [], "baseline": ["--baseline"], "mine": ["--set", "model.num_layers=2", "--iterations", "5"]}
    with pytest.raises(ConfigError, match="not a built-in arm"):
        arm_flags(["tiered", "bogus"], [])
    with pytest.raises(ConfigError, match="NAME:FLAGS"):
        arm_flags(["tiered"], ["no colon"])


def test_statistics_against_known_values():
    # Student t quantiles (tables) and a Welch test worked by hand: means 3 and 5, variances 2.5, n 5 each ->
    # t = -2, df = 8, one-sided p = 0.040258.
    assert stats.t_quantile(0.975, 2) == pytest.approx(4.302653, abs=1e-5)
    assert stats.t_quantile(0.975, 9) == pytest.approx(2.262157, abs=1e-5)
    assert stats.t_quantile(0.025, 4) == pytest.approx(-2.776445, abs=1e-5)
    test = stats.welch_less([1, 2, 3, 4, 5], [3, 4, 5, 6, 7])
    assert test["t"] == pytest.approx(-2.0) and test["df"] == pytest.approx(8.0)
    assert test["p"] == pytest.approx(0.040258, abs=2e-6)
    assert stats.welch_less([1.0], [2.0, 3.0]) is None and stats.mean_ci([1.0]) is None
    lo, hi = stats.mean_ci([1, 2, 3, 4, 5])
    assert (lo + hi) / 2 == pytest.approx(3) and hi - 3 == pytest.approx(2.776445 * math.sqrt(2.5 / 5), abs=1e-5)
    one = arm_stats([2.0], [2.5, 2.6], is_baseline=False)
    assert one["p_vs_baseline"] is None and one["ci95"] is None and one["std"] is None
    assert one["diff_vs_baseline"]["mean"] == pytest.approx(-0.55)


def test_the_final_eval_replaces_a_periodic_one_at_its_step():
    s = {"baseline": True, "config": {"train_batch_tokens": 10},
         "val_history": [{"step": 0, "train_s": 0.0, "val_bpb": 3.0}, {"step": 5, "train_s": 1.0, "val_bpb": 2.5},
                         {"step": 5, "train_s": 1.0, "val_bpb": 2.4, "final": True}]}
    assert [(p["step"], p["val_bpb"]) for p in curve(s)] == [(0, 3.0), (5, 2.4)]
