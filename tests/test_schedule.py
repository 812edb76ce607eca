"""golf.schedule: one progress count gives every stage of a run (LR, momentum, prior weight, QAT, recurrence)."""

from __future__ import annotations

import pytest

from golf.config import resolve_config
from golf.errors import ConfigError
from golf.optim import lr_and_momentum
from golf.schedule import TrainingSchedule


def cfg_of(*argv):
    return resolve_config(["--preset", "cpu", *argv], env={})


def test_the_stage_carries_the_optimizers_schedule_and_the_progress():
    cfg = cfg_of("--schedule", "steps", "--iterations", "1000", "--set", "optim.warmdown_frac=0.5")
    schedule = TrainingSchedule(cfg, loop_budget=123.0)  # counting steps: the seconds do not matter
    for step in (0, 250, 600, 999):
        stage = schedule.at(step, train_s=77.0)
        assert (stage.lr_scale, stage.momentum) == lr_and_momentum(cfg.optim, step, float(step), 1000.0, 1.0)
        assert stage.progress == step / 1000
    timed = TrainingSchedule(cfg_of("--set", "optim.warmdown_frac=0.5"), loop_budget=200.0)
    assert timed.at(10, train_s=150.0).progress == 0.75 and timed.at(10, train_s=150.0).lr_scale == 0.5
    assert timed.at(10, train_s=500.0).progress == 1.0


def test_recurrence_phases_start_at_a_step_or_a_share_of_the_run():
    # R1063's form: phase 1 from step 3,000
    r1063 = TrainingSchedule(resolve_config(["--preset", "r1063"], env={}), loop_budget=590.0)
    assert [r1063.at(s, 1.0).recur_phase for s in (0, 2999, 3000, 9000)] == [0, 0, 1, 1]
    # PR #1412's: one loop from 50% of the time, the second from 65%
    loops = cfg_of("--set", "model.num_layers=4", "--set", "model.recur_layers=[1,2]", "--set",
                   "model.recur_passes=2", "--set", "recur_at=[0.5,0.65]")
    schedule = TrainingSchedule(loops, loop_budget=100.0)
    assert [schedule.at(7, t).recur_phase for t in (0.0, 49.9, 50.0, 64.9, 65.0, 99.0)] == [0, 0, 1, 1, 2, 2]
    always = cfg_of("--set", "model.recur_layers=[0]")  # no starts given: the last phase throughout
    assert TrainingSchedule(always, 10.0).at(0, 0.0).recur_phase == 1
    assert TrainingSchedule(cfg_of(), 10.0).at(5, 5.0).recur_phase == 0


@pytest.mark.parametrize("sets, match", [
    (["recur_at=[0.5]"], r"recur_at .*one start per recurrence phase, 0 here"),
    (["model.recur_layers=[0]", "recur_at=[0.5,0.7]"], "one start per recurrence phase"),
    (["model.recur_layers=[0]", "recur_at=[1.5]"], "recur_at"),
    (["model.num_layers=3", "model.recur_layers=[1]", "model.recur_passes=2", "recur_at=[0.7,0.5]"], "ascending"),
    (["model.recur_layers=[0]", "recur_at=[0.5]", "recur_at_steps=[10]"], "one way"),
])
def test_bad_recurrence_starts_are_refused(sets, match):
    with pytest.raises(ConfigError, match=match):
        cfg_of(*[a for s in sets for a in ("--set", s)])


def test_prior_weight_and_qat_follow_the_progress():
    cfg = cfg_of("--schedule", "steps", "--iterations", "100", "--set", "prior_anneal=0.5", "--set",
                 "prior_anneal_to=0.2", "--set", "qat_lr_scale=0.3", "--set", "optim.warmdown_frac=1.0")
    schedule = TrainingSchedule(cfg, 1.0)
    assert [schedule.at(s, 0.0).prior_weight for s in (0, 25, 50, 90)] == pytest.approx([1.0, 0.6, 0.2, 0.2])
    # the LR scale is (100 - step) / 100: QAT from the first step below 0.3
    assert [schedule.at(s, 0.0).qat for s in (0, 70, 71, 99)] == [False, False, True, True]
    # A warmup starts below the threshold too: QAT waits for the warmdown
    warm = TrainingSchedule(cfg_of("--schedule", "steps", "--iterations", "100", "--set", "qat_lr_scale=0.3",
                                   "--set", "optim.warmup_seconds=10", "--set", "optim.warmdown_frac=0.5"), 1.0)
    assert not warm.at(1, 0.0).qat and warm.at(1, 0.0).lr_scale < 0.3 and warm.at(90, 0.0).qat
    assert TrainingSchedule(cfg_of("--baseline", "--set", "prior_anneal=0.5"), 1.0).at(0, 0.0).prior_weight is None


def test_a_resumed_run_meets_the_stage_an_unbroken_one_had():
    """The stage is a function of (step, clock) alone: no state carried from earlier steps."""
    cfg = cfg_of("--schedule", "steps", "--iterations", "50", "--set", "prior_anneal=0.4", "--set",
                 "qat_lr_scale=0.5", "--set", "model.recur_layers=[0]", "--set", "recur_at_steps=[20]")
    unbroken = TrainingSchedule(cfg, 9.0)
    stages = [unbroken.at(s, 0.1 * s) for s in range(50)]
    fresh = TrainingSchedule(cfg, 9.0)
    assert [fresh.at(s, 0.1 * s) for s in range(30, 50)] == stages[30:]
    assert [s.recur_phase for s in stages[18:22]] == [0, 0, 1, 1]
