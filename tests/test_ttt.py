"""golf.ttt (score-first LoRA test-time training) and golf.scoring (the one evaluation entry point), on real val
tokens with a tiny tiered model: documents cover every target once; with a zero learning rate TTT is the sliding
eval with stride = chunk, bit for bit; learning moves the score and is deterministic; the stream audit passes the
real method and catches a variant that steps before it scores; the global phases train on scored documents and
leave the model as it was; two gloo ranks sharing the queue score every target once; the budget refuses a
method projected over it, and the val tokens follow one rule."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from golf.data import load_shard
from golf.errors import BudgetError, ConfigError
from golf.evaluate import audit_method
from golf.scoring import Context, EvalSpec, Predictor, cut_val, projected_seconds, run_method, score_artifact
from golf.ttt import DocTTT, TTTConfig, chunk_plan, find_documents, group_documents, phase_boundaries

from test_evaluate import tiny_lm  # noqa: E402  (tests/ is on sys.path)

pytestmark = pytest.mark.usefixtures("one_thread")
BOS = 1
SMALL = dict(rank=4, chunk=16, window=64, batch_docs=3, phases=0)


@pytest.fixture(scope="module")
def model(train_shard, sp):
    lm, rows = tiny_lm(train_shard, sp)
    return Predictor(lm, rows)


@pytest.fixture(scope="module")
def val(val_shard):
    return np.asarray(load_shard(val_shard)[:3000]).astype(np.int64)  # 4 documents, the last cut short


def ttt(model, tokens, tables, record=None, runner=None, **cfg):
    spec = EvalSpec(method="ttt", window=64, ttt=TTTConfig(**{**SMALL, **cfg}), budget_seconds=0)
    return run_method(model, spec, tokens, Context(tables, progress=False, record=record, ttt_runner=runner))


class StepsFirst(DocTTT):
    """The deliberately broken variant: learns from the chunk, then scores it with what it learned."""

    def chunk_step(self, docs, rows, slots, train, opt):
        nll, weight = self.chunk_loss(docs, rows, slots, train, score=False)
        if weight.any():
            opt.zero_grad(set_to_none=True)
            (nll * weight).sum().backward()
            opt.step()
        with torch.no_grad():
            return len(self.chunk_loss(docs, rows, slots, train)[0])


# --- documents and plans -------------------------------------------------------------------------------------

def test_documents_cover_every_target_once(val):
    for tokens in (val, val[5:], np.append(val[:700], BOS)):  # from a BOS; mid-document; a BOS as the last token
        docs = find_documents(tokens, BOS)
        covered = np.zeros(len(tokens), dtype=int)
        for start, length in docs:
            covered[start + 1:start + length] += 1
            assert tokens[start] == BOS or start == 0
            assert not (tokens[start + 1:start + length - 1] == BOS).any()  # a BOS only first and last
        assert (covered[1:] == 1).all() and covered[0] == 0
    docs = find_documents(val, BOS)
    assert docs[0, 0] == 0 and (val[docs[:, 0]] == BOS).all() and len(docs) == int((val[:-1] == BOS).sum())


def test_groups_run_longest_first_and_plans_cap_the_context():
    docs = np.array([[0, 10], [10, 50], [60, 30], [90, 50], [140, 5]])
    groups = group_documents(docs, 2)
    # ascending length (ties by position) in groups of 2: (5, 10), (30, 50), (50); the longest first
    assert [g.tolist() for g in groups] == [[2, 1], [3], [4, 0]]
    rows = chunk_plan(101, chunk=16, window=40)  # 100 targets
    assert len(rows) == 7 and rows[0] == (0, 16, 0) and rows[-1] == (60, 40, 36)  # the last chunk: 4 targets
    scored = [t for start, win, off in rows for t in range(start + off + 1, start + win + 1)]
    assert scored == list(range(1, 101)) and all(win <= 40 for _, win, _ in rows)
    # phase k after the groups holding prefix_docs * k / phases documents; none once nothing is left to score
    assert phase_boundaries(groups, TTTConfig(phases=2, prefix_docs=3)) == [(1, 1), (2, 3)]
    assert phase_boundaries(groups, TTTConfig(phases=1, prefix_docs=5)) == []
    assert phase_boundaries(groups, TTTConfig(phases=0)) == []


# --- the method ---------------------------------------------------------------------------------------------

def test_without_learning_ttt_is_the_sliding_eval(model, val, tables):
    """lr 0 on one document: every chunk's window is the sliding plan's window with stride = chunk."""
    docs = find_documents(val, BOS)
    start, length = (int(v) for v in docs[np.argmax(docs[:, 1])])
    doc = val[start:start + min(length, 641)]
    sliding = run_method(model, EvalSpec(window=64, stride=16, batch_tokens=64 * 8, budget_seconds=0), doc,
                         Context(tables, progress=False))
    still = ttt(model, doc, tables, lr=0.0)
    assert (still.targets, still.bytes) == (sliding.targets, sliding.bytes) == (len(doc) - 1, sliding.bytes)
    assert still.nll_sum == pytest.approx(sliding.nll_sum, rel=1e-12, abs=1e-9)


def test_learning_moves_the_score_deterministically(model, val, tables):
    still = ttt(model, val, tables, lr=0.0)
    moved = ttt(model, val, tables, lr=1e-2)
    again = ttt(model, val, tables, lr=1e-2)
    assert moved.targets == still.targets == len(val) - 1 and moved.bytes == still.bytes
    assert moved.nll_sum == again.nll_sum != still.nll_sum
    assert moved.info["documents"] == len(find_documents(val, BOS)) and moved.method == "ttt"


def test_the_audit_passes_score_first_and_catches_steps_first(model, val, tables):
    def method(runner):
        return lambda tokens, record: ttt(model, tokens, tables, record=record, runner=runner, lr=1e-2)

    tokens = val[:1200]
    honest = audit_method(method(None), tokens, vocab=1024, bos_id=BOS, reruns=3, seed=1)
    assert {k: v["ok"] for k, v in honest.items()} == dict.fromkeys(honest, True), honest
    assert honest["causality"]["max_abs_diff"] == 0.0 and honest["causality"]["targets"] > 100
    broken = audit_method(method(StepsFirst), tokens, vocab=1024, bos_id=BOS, reruns=3, seed=1)
    assert {k for k, v in broken.items() if not v["ok"]} == {"causality"}, broken
    assert broken["causality"]["max_abs_diff"] > 1e-3


def test_the_audit_catches_a_method_that_scores_a_target_twice(model, val, tables):
    def twice(tokens, record):
        seen = []

        def both(ev):  # the first event reported twice: its targets count twice
            record(ev)
            if not seen:
                record(ev)
            seen.append(ev)
        return ttt(model, tokens, tables, record=both)

    report = audit_method(twice, val[:700], vocab=1024, bos_id=BOS, reruns=1)
    assert not report["single_pass"]["ok"] and report["single_pass"]["duplicated"] > 0


def test_global_phases_train_on_scored_documents_and_restore_the_model(model, val, tables):
    before = {k: v.clone() for k, v in model.lm.transformer.state_dict().items()}
    grads = [p.requires_grad for p in model.lm.transformer.parameters()]
    plain = ttt(model, val, tables, lr=1e-3, batch_docs=1)
    phased = ttt(model, val, tables, lr=1e-3, batch_docs=1, phases=2, prefix_docs=2, global_chunk_tokens=128,
                 global_lr=1e-2)
    phases = phased.info["phases"]  # one document per group: phase 1 after the first, phase 2 after the second
    assert [(p["after_groups"], p["documents"]) for p in phases] == [(1, 1), (2, 2)]
    assert all(p["sgd_steps"] >= 1 for p in phases)
    assert phased.nll_sum != plain.nll_sum and phased.targets == plain.targets
    after = model.lm.transformer.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [p.requires_grad for p in model.lm.transformer.parameters()] == grads
    with pytest.raises(ConfigError, match="global_chunk_tokens"):
        ttt(model, val, tables, batch_docs=1, phases=1, prefix_docs=2, global_chunk_tokens=100)


def _rank_main(rank: int, world: int, init_file: str, saved: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        s = torch.load(saved, weights_only=False)
        seen = []
        spec = EvalSpec(method="ttt", window=64, ttt=TTTConfig(**{**SMALL, **s["cfg"]}), budget_seconds=0)
        result = run_method(Predictor(s["lm"], s["rows"]), spec, s["tokens"],
                            Context(s["tables"], progress=False, record=lambda ev: seen.extend(ev.positions.tolist())))
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump({**result.to_dict(), "positions": seen}, f)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_share_the_queue(model, val, tables, tmp_path):
    """lr 0: the ranks' groups together are one process's, score for score; with learning and a phase, every
    target is still scored once across the ranks."""
    for name, cfg in (("still", dict(lr=0.0)), ("phased", dict(lr=1e-2, batch_docs=1, phases=1, prefix_docs=2,
                                                                global_chunk_tokens=128))):
        one = ttt(model, val, tables, **cfg)
        out = tmp_path / name
        out.mkdir()
        torch.save({"lm": model.lm, "rows": model.prior_rows, "tokens": val, "tables": tables, "cfg": cfg},
                   out / "saved.pt")
        torch.multiprocessing.spawn(_rank_main, args=(2, str(out / "init"), str(out / "saved.pt"), str(out)),
                                    nprocs=2, join=True)
        ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
        positions = sorted(ranks[0]["positions"] + ranks[1]["positions"])
        assert positions == list(range(1, len(val)))
        assert ranks[0]["nll_sum"] == ranks[1]["nll_sum"]  # all-reduced
        assert ranks[0]["targets"] == one.targets and ranks[0]["bytes"] == one.bytes
        if name == "still":
            assert ranks[0]["nll_sum"] == pytest.approx(one.nll_sum, rel=1e-12)


# --- the entry point ----------------------------------------------------------------------------------------

def test_one_rule_for_the_val_tokens(val):
    sliding, plain = EvalSpec(window=64, stride=16, val_tokens=1000), EvalSpec(window=64, stride=64, val_tokens=1000)
    assert len(cut_val(val, sliding)) == 1001 and len(cut_val(val, plain)) == 1000 // 64 * 64 + 1
    assert len(cut_val(val, EvalSpec(method="ttt", window=64, val_tokens=1000))) == 1001
    assert len(cut_val(val, EvalSpec(window=64, stride=16))) == len(val)
    assert len(cut_val(val, EvalSpec(window=64, stride=64))) == (len(val) - 1) // 64 * 64 + 1
    with pytest.raises(ConfigError, match="less than one plain window"):
        cut_val(val, EvalSpec(window=64, stride=64, val_tokens=10))
    with pytest.raises(ConfigError, match="eval method"):
        EvalSpec(method="cache")


def test_the_budget_projects_on_synthetic_tokens_and_refuses(model, val, tables, monkeypatch):
    spec = EvalSpec(method="ttt", window=64, ttt=TTTConfig(**SMALL))
    seen = []
    real = run_method

    def spy(m, s, tokens, ctx):
        seen.append(np.asarray(tokens))
        return real(m, s, tokens, ctx)

    monkeypatch.setattr("golf.scoring.run_method", spy)
    projected = projected_seconds(model, spec, val, Context(tables, progress=False))
    assert projected > 0 and len(seen) == 2
    assert not any(np.array_equal(p[:50], val[:50]) for p in seen)  # the probes never read val tokens
    result = score_artifact(model, spec.replace(budget_seconds=1e6), val, byte_tables=tables, progress=False)
    assert result.info["projected_seconds"] > 0 and result.info["derived_8x_seconds"] > 0
    assert result.info["derived_8x_fits"] in (True, False) and "derived_from" in result.info
    with pytest.raises(BudgetError, match="projected"):
        score_artifact(model, spec.replace(budget_seconds=1e-9), val, byte_tables=tables, progress=False)
    over = score_artifact(model, spec.replace(budget_seconds=1e-9, over_budget=True), val, byte_tables=tables,
                          progress=False)
    assert over.targets == len(val) - 1
