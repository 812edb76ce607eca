"""golf.evaluate.audit: a correct tiny tiered model passes all four conditions on real val tokens, and one
deliberately broken ingredient per condition fails it: a predictor that peeks at the target (through its prior
rows, or through its hidden states), distributions that are not normalised (a scorer that blends in a count
ratio for the target only, a bonus added after the softmax), plans that score a target twice or never, and a
scorer that disagrees with the model's full softmax."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from golf import ops
from golf.data import load_shard
from golf.evaluate import audit, full_log_probs, window_plan
from golf.model import TieredLM, make_prior_rows

from test_evaluate import tiny_tiers, tiny_transformer  # noqa: E402  (tests/ is on sys.path, as for kn.py)

pytestmark = pytest.mark.usefixtures("one_thread")
CONDITIONS = ("causality", "normalisation", "single_pass", "consistency")
KW = dict(window=64, stride=16, positions=12, seed=3)


@pytest.fixture(scope="module")
def model(train_shard, sp):
    tiers = tiny_tiers(train_shard, sp)
    return TieredLM(tiny_transformer(), tiers.prior_tables(), trainable=False), tiers


@pytest.fixture(scope="module")
def val(val_shard):
    return np.asarray(load_shard(val_shard)[:1203])  # 1202 targets: the sliding plan needs its tail window


def failing(report: dict) -> set[str]:
    assert set(report) == set(CONDITIONS)
    for name, check in report.items():
        assert isinstance(check["ok"], bool) and check["detail"], name
    return {name for name, check in report.items() if not check["ok"]}


def test_correct_model_passes_all_four(model, val):
    lm, tiers = model
    report = audit(lm, make_prior_rows(tiers), val, **KW)
    assert failing(report) == set(), report
    assert report["causality"]["max_abs_diff"] == 0.0  # CPU fp32: bit-exact, so the default tolerance is 0
    assert report["causality"]["positions"] >= 12
    assert report["single_pass"]["targets"] == len(val) - 1
    assert report["consistency"]["positions"] >= 16 and report["consistency"]["max_abs_diff"] < 1e-5


def test_causality_compares_within_one_batch(model, val):
    """A predictor whose arithmetic depends on the batch it runs in (as GPU GEMMs pick algorithms by shape) is
    still causal: the audit compares each perturbed window with an unperturbed copy in the same batch, so the
    tolerance stays 0."""
    lm, tiers = model
    honest = full_log_probs(lm, make_prior_rows(tiers))

    def shape_dependent(x):
        return honest(x) + 1e-9 * x.shape[0]

    report = audit(lm, make_prior_rows(tiers), val, predict=shape_dependent, **KW)
    assert failing(report) == set(), report
    assert report["causality"]["max_abs_diff"] == 0.0


def test_plain_plan_passes_on_the_truncated_stream_only(model, val):
    lm, tiers = model
    kw = dict(KW, stride=64)
    truncated = val[:(len(val) - 1) // 64 * 64 + 1]  # what load_val_tokens(seq_len=64) keeps
    assert failing(audit(lm, make_prior_rows(tiers), truncated, **kw)) == set()
    report = audit(lm, make_prior_rows(tiers), val, **kw)
    assert failing(report) == {"single_pass"} and report["single_pass"]["missed"] == (len(val) - 1) % 64


# --- (a) causality ---------------------------------------------------------------------------------------

def test_prior_rows_that_read_the_target_fail_causality(model, val):
    lm, tiers = model

    def peeking_rows(x):  # rows for the target built as if the target were already read: x shifted left by one
        return tiers.prior_rows(torch.roll(x, -1, dims=-1))

    report = audit(lm, peeking_rows, val, **KW)
    assert "causality" in failing(report)
    assert report["causality"]["max_abs_diff"] > 1e-3
    assert report["normalisation"]["ok"] and report["single_pass"]["ok"]  # still a proper distribution


class PeekingTransformer(nn.Module):
    """The tiny transformer plus the embedding of the NEXT token (the target) in its hidden state."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def hidden(self, x):
        return self.inner.hidden(x) + self.inner.tok_emb(torch.roll(x, -1, dims=-1)) * 20

    def copy_logits(self, h, x, keep=None):
        return self.inner.copy_logits(h, x, keep)

    def prior_scales(self, h):
        return self.inner.prior_scales(h)

    def with_copy(self, logits, h, x):
        return self.inner.with_copy(logits, h, x)

    head_weight = property(lambda self: self.inner.head_weight)
    softcap = property(lambda self: self.inner.softcap)


@pytest.fixture(scope="module")
def gated(train_shard, sp):
    """A prior gate whose weights vary by position (random w, b, a)."""
    tiers = tiny_tiers(train_shard, sp)
    return TieredLM(tiny_transformer(0, "gate", tiers.columns), tiers.prior_tables(), trainable=False), tiers


def test_gated_model_passes_all_four(gated, val):
    lm, tiers = gated
    rows = make_prior_rows(tiers)
    x = torch.from_numpy(val[:64].astype(np.int64))[None]
    with torch.no_grad():
        scales = lm.transformer.prior_scales(lm.transformer.hidden(x))
    assert scales.shape == (1, 64, 3) and float(scales.std()) > 0.05  # the weights do vary by position
    report = audit(lm, rows, val, **KW)
    assert failing(report) == set(), report
    assert report["causality"]["max_abs_diff"] == 0.0 and report["consistency"]["max_abs_diff"] < 1e-5


class PeekingGate(nn.Module):
    """The gated model's prior weights computed from the hidden state of the NEXT position, which has read the
    target: the logits stay normalised, but the weights know what comes."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.hidden, self.copy_logits, self.with_copy = inner.hidden, inner.copy_logits, inner.with_copy

    def prior_scales(self, h):
        return self.inner.prior_scales(torch.roll(h, -1, dims=-2))

    head_weight = property(lambda self: self.inner.head_weight)
    softcap = property(lambda self: self.inner.softcap)


def test_a_gate_that_reads_the_target_fails_causality(gated, val):
    lm, tiers = gated
    cheat = TieredLM(PeekingGate(lm.transformer), lm.prior_tables, trainable=False)
    report = audit(cheat, make_prior_rows(tiers), val, **KW)
    assert "causality" in failing(report) and report["causality"]["max_abs_diff"] > 1e-4
    assert report["normalisation"]["ok"]


def test_hidden_states_that_read_the_target_fail_causality(model, val):
    lm, tiers = model
    cheat = TieredLM(PeekingTransformer(lm.transformer), lm.prior_tables, trainable=False)
    report = audit(cheat, make_prior_rows(tiers), val, **KW)
    assert failing(report) == {"causality"}


# --- (b) normalisation -----------------------------------------------------------------------------------

def test_target_only_blend_fails_normalisation(model, val, train_shard):
    """The closed n-gram submissions: p(y) = (1-a) p_model(y) + a * c(y)/c(ctx), computed for the target only.
    Each such ratio is a plausible probability; summed over the vocabulary they are far from 1."""
    lm, tiers = model
    train = np.asarray(load_shard(train_shard)[:200_000]).astype(np.int64)
    ratio = torch.from_numpy(np.bincount(train, minlength=1024) / np.bincount(train, minlength=1024).max())

    def blended(hidden, head_weight, prior_tables, prior_rows, targets, softcap):
        nll = ops.score_windows(hidden, head_weight, prior_tables, prior_rows, targets, softcap).double()
        return -torch.log(0.8 * torch.exp(-nll) + 0.2 * ratio[targets]).float()

    report = audit(lm, make_prior_rows(tiers), val, score=blended, **KW)
    assert "normalisation" in failing(report)
    assert report["normalisation"]["max_abs_error_score"] > 0.01
    assert report["normalisation"]["max_abs_error_predict"] < 1e-9  # the model itself is fine: the scorer is not
    assert report["causality"]["ok"]


def test_bonus_after_the_softmax_fails_normalisation(model, val):
    lm, tiers = model
    honest = full_log_probs(lm, make_prior_rows(tiers))
    bonus = torch.zeros(1024, dtype=torch.float64)
    bonus[:100] = np.log(1.5)  # target-independent, but only on some ids, after normalising

    def predict(x):
        return honest(x) + bonus

    report = audit(lm, make_prior_rows(tiers), val, predict=predict, **KW)
    assert "normalisation" in failing(report)
    assert report["normalisation"]["max_abs_error_predict"] > 1e-3
    assert report["causality"]["ok"] and report["single_pass"]["ok"]


# --- (c) single pass -------------------------------------------------------------------------------------

def records_tail_quirk_plan(num_tokens, window, stride):
    """Starts 0, stride, 2*stride, ... up to the end with windows cut at the stream's end, each scoring its last
    `stride` targets: the near-end windows re-score the final targets (ANCHOR §4's tail quirk)."""
    targets = num_tokens - 1
    rows = []
    for start in range(0, targets, stride):
        length = min(window, targets - start)
        rows.append((start, length, 0 if start == 0 else max(length - stride, 0)))
    return np.array(rows, dtype=np.int64)


def without_tail_plan(num_tokens, window, stride):
    plan = window_plan(num_tokens, window, stride)
    return plan[:-1]


@pytest.mark.parametrize("plan,kind,words", [(records_tail_quirk_plan, "duplicated", "scored more than once"),
                                             (without_tail_plan, "missed", "never scored")])
def test_plans_that_rescore_or_skip_fail_single_pass(model, val, plan, kind, words):
    lm, tiers = model
    report = audit(lm, make_prior_rows(tiers), val, plan=plan, **KW)
    assert failing(report) == {"single_pass"}
    assert report["single_pass"][kind] > 0
    other = "missed" if kind == "duplicated" else "duplicated"
    assert report["single_pass"][other] == 0
    assert f"{report['single_pass'][kind]} targets" in report["single_pass"]["detail"]
    assert words in report["single_pass"]["detail"]


def test_malformed_plan_fails_single_pass(model, val):
    lm, tiers = model

    def overrun(num_tokens, window, stride):  # a window reading past the last target
        plan = window_plan(num_tokens, window, stride)
        plan[-1, 0] += 5
        return plan

    report = audit(lm, make_prior_rows(tiers), val, plan=overrun, **KW)
    assert "single_pass" in failing(report) and "malformed" in report["single_pass"]["detail"]


# --- (d) consistency -------------------------------------------------------------------------------------

def test_scorer_that_disagrees_with_the_softmax_fails_consistency(model, val):
    """A scorer that drops the tier-1 hash row: still a normalised distribution, but not the model's."""
    lm, tiers = model

    def dropped_row(hidden, head_weight, prior_tables, prior_rows, targets, softcap):
        return ops.score_windows(hidden, head_weight, prior_tables, prior_rows[:, :2].contiguous(), targets, softcap)

    report = audit(lm, make_prior_rows(tiers), val, score=dropped_row, **KW)
    assert failing(report) == {"consistency"}
    assert report["consistency"]["max_abs_diff"] > 1e-3
