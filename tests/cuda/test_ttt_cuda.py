"""--method ttt on CUDA: with lr 0 it is the sliding eval (stride = chunk) on the same device; learning under bf16
autocast passes the stream audit with its default tolerance 0 (the same shapes give the same scores on a GPU, or
the audit's default is wrong there); the CPU and CUDA runs agree."""

import numpy as np
import pytest
import torch

from golf.data import ByteTables, load_shard, load_tokenizer
from golf.evaluate import audit_method
from golf.model import ModelConfig, TieredLM, Transformer, make_prior_rows
from golf.scoring import Context, EvalSpec, Predictor, run_method
from golf.ttt import TTTConfig

pytestmark = pytest.mark.cuda
AMP = lambda: torch.autocast("cuda", dtype=torch.bfloat16)  # noqa: E731


@pytest.fixture(scope="module")
def setup(val_shard, tokenizer_path):
    torch.manual_seed(0)
    t = Transformer(ModelConfig(vocab_size=1024, num_layers=2, model_dim=64, num_heads=2, num_kv_heads=1))
    with torch.no_grad():
        for p in t.parameters():
            if not p.any():
                p.normal_(std=0.2)
    tables = ByteTables.from_tokenizer(load_tokenizer(tokenizer_path, 1024))
    tokens = np.asarray(load_shard(val_shard)[:3000]).astype(np.int64)
    return t.eval(), tables, tokens


def model_on(t, device):
    lm = TieredLM(Transformer(t.cfg).to(device), torch.zeros(0, 1024, device=device), trainable=False)
    lm.transformer.load_state_dict(t.state_dict())
    return Predictor(lm.eval(), make_prior_rows(None))


def ttt(model, tables, tokens, device, amp=None, record=None, **cfg):
    spec = EvalSpec(method="ttt", window=64, budget_seconds=0,
                    ttt=TTTConfig(**{"rank": 8, "chunk": 16, "batch_docs": 4, "phases": 0, **cfg}))
    return run_method(model, spec, tokens, Context(tables.to(device), device=device, amp=amp, progress=False,
                                                   record=record))


def test_ttt_without_learning_is_sliding_on_cuda(setup):
    t, tables, tokens = setup
    doc = tokens[523:523 + 641]  # inside one document
    model = model_on(t, "cuda")
    sliding = run_method(model, EvalSpec(window=64, stride=16, budget_seconds=0), doc,
                         Context(tables.to("cuda"), device="cuda", progress=False))
    still = ttt(model, tables, doc, "cuda", lr=0.0)
    assert still.nll_sum == pytest.approx(sliding.nll_sum, rel=1e-5)


def test_ttt_learns_under_autocast_and_passes_the_audit(setup):
    t, tables, tokens = setup
    model = model_on(t, "cuda")
    report = audit_method(lambda s, record: ttt(model, tables, s, "cuda", AMP, record, lr=1e-2), tokens[:1500],
                          vocab=1024, bos_id=1, reruns=3)
    assert all(c["ok"] for c in report.values()), report
    cpu = ttt(model_on(t, "cpu"), tables, tokens[:1500], "cpu", lr=1e-2)
    gpu = ttt(model, tables, tokens[:1500], "cuda", lr=1e-2)
    assert gpu.targets == cpu.targets and gpu.val_bpb == pytest.approx(cpu.val_bpb, rel=1e-3)
