"""golf.attention: the backend choice (probe, order, errors), the flash-attn layout through a stand-in module, the
model's forward on either, and the run's log."""

import sys
import types

import pytest
import torch

from golf import attention
from golf.errors import ConfigError


def reference(q, k, v, causal=True):
    """Attention in [B, T, H, D] written out: what a flash-attn package computes."""
    B, T, H, D = q.shape
    rep = H // k.size(2)
    k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
    s = torch.einsum("bthd,bshd->bhts", q.float(), k.float()) / D ** 0.5
    if causal:
        s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    return torch.einsum("bhts,bshd->bthd", s.softmax(-1), v.float()).to(q.dtype)


@pytest.fixture
def fake_fa3(monkeypatch):
    """flash_attn_interface with flash_attn_func(q, k, v, causal) -> (out, lse), as some FA3 builds return."""
    calls = []

    def flash_attn_func(q, k, v, causal=False):
        calls.append((tuple(q.shape), tuple(k.shape), causal))
        return reference(q, k, v, causal), None

    monkeypatch.setitem(sys.modules, "flash_attn_interface", types.SimpleNamespace(flash_attn_func=flash_attn_func))
    yield calls
    attention.use("sdpa")


def test_cpu_auto_is_sdpa_and_named_backends_are_probed():
    assert attention.choose("cpu") == ("sdpa", {"sdpa": "ok"})
    assert attention.choose("cpu", "math") == ("math", {"math": "ok"})
    with pytest.raises(ConfigError, match="attention=cudnn cannot run on cpu"):
        attention.choose("cpu", "cudnn")  # SDPA has no cuDNN kernel on a CPU
    if "flash_attn_interface" not in sys.modules:
        with pytest.raises(ConfigError, match="attention=fa3 cannot run on cpu: not installed"):
            attention.choose("cpu", "fa3")
    with pytest.raises(ConfigError, match="expected auto or one of"):
        attention.choose("cpu", "fa9")
    with pytest.raises(ConfigError, match="attention backend"):
        attention.use("fa9")


def test_auto_takes_the_first_backend_that_passes(monkeypatch):
    verdicts = {"fa3": "not installed (flash_attn_interface)", "fa4": "RuntimeError: sm_100 only", "cudnn": "ok"}
    monkeypatch.setattr(attention, "probe", lambda name, device: verdicts.get(name, "ok"))
    name, tried = attention.choose(torch.device("cuda"))
    assert name == "cudnn" and list(tried) == ["fa3", "fa4", "cudnn"]
    monkeypatch.setattr(attention, "probe", lambda name, device: "no")
    assert attention.choose(torch.device("cuda"))[0] == "sdpa"


def test_flash_layout_and_the_models_forward(fake_fa3):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 33, h, 16, generator=g) for h in (4, 2, 2))
    torch.testing.assert_close(attention.attend_with("fa3", q, k, v), attention.attend_with("math", q, k, v),
                               rtol=1e-5, atol=1e-5)
    assert fake_fa3[-1] == ((2, 33, 4, 16), (2, 33, 2, 16), True)  # [B, T, H, D], GQA heads as they are
    assert attention.choose("cpu", "fa3")[0] == "fa3"
    # A backend that is not causal fails the probe.
    sys.modules["flash_attn_interface"].flash_attn_func = lambda q, k, v, causal=False: reference(q, k, v, False)
    assert attention.probe("fa3", "cpu").startswith("differs from the math kernel")
    sys.modules["flash_attn_interface"].flash_attn_func = lambda q, k, v, causal=False: reference(q, k, v, causal)

    from test_evaluate import tiny_transformer

    model = tiny_transformer(0)
    x = torch.randint(0, 1024, (2, 40), generator=g)
    attention.use("sdpa")
    want = model.hidden(x)
    attention.use("fa3")
    torch.testing.assert_close(model.hidden(x), want, rtol=1e-5, atol=1e-5)


def test_the_run_logs_its_backend(tmp_path, data_path, tokenizer_path):
    from test_train import events, run_inprocess, tiny_args

    summary = run_inprocess(tiny_args(data_path, tokenizer_path, tmp_path, "att", "--iterations", "2",
                                      "--val-loss-every", "0", "--no-export", "--schedule", "steps"))
    assert summary["attention"] == "sdpa"
    [event] = events(tmp_path, "att", "attention")
    assert event["backend"] == "sdpa" and event["tried_sdpa"] == "ok"
    with pytest.raises(ConfigError, match="attention"):
        run_inprocess(tiny_args(data_path, tokenizer_path, tmp_path, "bad", "--set", "attention=fa9"))


def test_bench_attention_prints_every_backend_that_runs(capsys):
    from bench import attention as bench

    bench.main(["--seq", "64", "--heads", "4", "--kv-heads", "2", "--head-dim", "16", "--repeats", "1",
                "--device", "cpu"])
    out = capsys.readouterr().out
    assert "auto=sdpa" in out and "cudnn      skipped:" in out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "ms" not in line]
    assert {r.split(" | ")[0][2:] for r in rows} >= {"math", "sdpa"}
    assert any(r.startswith("| math |") and r.endswith("| 1.00x |") for r in rows)
