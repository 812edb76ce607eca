"""Where a run stands at each step: everything that changes over a run, from one progress count.

    schedule = TrainingSchedule(cfg, loop_budget)      # cfg: the resolved TrainConfig
    stage = schedule.at(step, train_s, step_s)         # once per step, before it (golf.train's loop and warm-up)
    stage.progress        the fraction of the run done: step / iterations ("steps"), else loop seconds / budget
    stage.lr_scale        the LR multiplier (optim.lr_and_momentum: warmdown_frac or warmdown_steps, min_lr)
    stage.momentum        Muon momentum (its warmup, in steps)
    stage.prior_weight    the prior gate's weight (prior_anneal: 1 -> prior_anneal_to), None without an anneal
    stage.qat             late QAT on (qat_lr_scale: the warmdown has taken the LR scale below it)
    stage.recur_phase     depth recurrence's phase (recur_at: fractions of progress; recur_at_steps: steps)

A pure function of (step, clock): resuming at a step gives the stage an unbroken run would have had there, and
every rank, agreeing on the clock, agrees on the stage. The trainer only applies it (modded-nanogpt's
TrainingSchedule / TRAINING_STAGES are the example).
"""

from __future__ import annotations

from dataclasses import dataclass

from golf.optim import lr_and_momentum


@dataclass(frozen=True)
class Stage:
    progress: float
    lr_scale: float
    momentum: float
    prior_weight: float | None
    qat: bool
    recur_phase: int


class TrainingSchedule:
    def __init__(self, cfg, loop_budget: float):
        self.cfg = cfg
        self.by_steps = cfg.schedule == "steps"
        # The schedule's unit: steps, or the loop timer's seconds
        self.budget = float(max(cfg.iterations, 1)) if self.by_steps else float(loop_budget)
        self.phases = cfg.recur_phases

    def progress(self, step: int, train_s: float) -> float:
        return min(max((step if self.by_steps else train_s) / self.budget, 0.0), 1.0)

    def recur_phase(self, step: int, progress: float) -> int:
        """How many of the phases' starts the run has reached (the last phase throughout when none are given)."""
        cfg = self.cfg
        if not self.phases:
            return 0
        if cfg.recur_at_steps:
            return sum(step >= s for s in cfg.recur_at_steps)
        if cfg.recur_at:
            return sum(progress >= f for f in cfg.recur_at)
        return self.phases

    def prior_weight(self, progress: float) -> float | None:
        """The prior_anneal schedule: 1 -> prior_anneal_to over that fraction of the run, then constant."""
        cfg = self.cfg
        if cfg.prior_anneal <= 0 or cfg.baseline:  # no gate to weigh without priors
            return None
        return 1.0 + (cfg.prior_anneal_to - 1.0) * min(progress / cfg.prior_anneal, 1.0)

    def at(self, step: int, train_s: float, step_s: float | None = None) -> Stage:
        """The stage of the step about to be taken: `step` steps done, `train_s` the agreed loop clock; step_s the
        recent step time (the wall-clock form of warmdown_steps; a step schedule counts each step as 1)."""
        cfg = self.cfg
        clock = float(step) if self.by_steps else train_s
        lr, momentum = lr_and_momentum(cfg.optim, step, clock, self.budget, 1.0 if self.by_steps else step_s)
        progress = self.progress(step, train_s)
        # In the warmdown, not the warmup: a warmup also starts below the threshold
        qat = cfg.qat_lr_scale > 0 and lr < cfg.qat_lr_scale and clock >= cfg.optim.warmup_seconds
        return Stage(progress, lr, momentum, self.prior_weight(progress), qat, self.recur_phase(step, progress))
