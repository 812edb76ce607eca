"""The artifact end of a run: golf.train writes model.golf (GPTQ int6), golf.export rebuilds the predictor from
it alone, and python -m golf.eval scores and audits it; over-size and corrupt artifacts are refused loudly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from golf import artifact, quant, sizes
from golf.data import ByteTables, load_tokenizer, load_val_tokens
from golf.config import config_from_dict, portable_dict, resolve_config
from golf.errors import ArtifactError, BudgetError
from golf.evaluate import evaluate
from golf.export import export_model, load_model
from test_train import events, read_summary, run_inprocess, subprocess_env, tiny_args
from test_ttt import StepsFirst

pytestmark = pytest.mark.usefixtures("one_thread")

# quant.small_numel=1024 makes the tiny model's matrices int6 (GPTQ), as a full-size model's are.
INT6 = ("--set", "quant.small_numel=1024", "--set", "calib_batches=4")


@pytest.fixture(scope="module")
def trained(data_path, tokenizer_path, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    # The records' rates, so that 60 steps already learn to use context (sliding must beat plain below).
    args = tiny_args(data_path, tokenizer_path, runs, "art", "--iterations", "60", "--set", "val_loss_every=0",
                     "--eval-stride", "16", "--set", "optim.matrix_lr=0.04", "--set", "optim.embed_lr=0.05",
                     "--set", "optim.scalar_lr=0.04", *INT6)
    summary = run_inprocess(args)
    return runs, summary, runs / "art" / "model.golf"


def test_run_writes_the_artifact_and_scores_it(trained):
    runs, summary, path = trained
    assert path.is_file() and summary == read_summary(runs, "art")
    assert summary["artifact_bytes"] == path.stat().st_size
    assert summary["total_bytes"] == summary["artifact_bytes"] + summary["code_bytes"] <= 16_000_000
    code = sizes.code_bytes(portable_dict(config_from_dict(summary["config"])))
    assert summary["code_bytes"] == code["bytes"] < summary["code_raw_bytes"] == code["raw"]
    assert summary["code_raw_bytes"] == sum(b for _, b in summary["code_files"])
    assert any(f.endswith("python/golf/train.py") for f, _ in summary["code_files"])
    assert summary["pruning"] is None and artifact.load(path).config["pruning"] is None  # it fits as it is
    assert summary["quant_penalty"] == pytest.approx(summary["roundtrip_val_bpb"] - summary["float_val_bpb"])
    assert summary["val_bpb"] == summary["sliding_val_bpb"] and summary["eval_seconds"] > 0
    assert abs(summary["quant_penalty"]) < 0.05  # int6 GPTQ of a 60-step model costs little
    calib = events(runs, "art", "stage")
    calib = [e for e in calib if e.get("stage") == "calibrate"][0]
    assert int(calib["hessians"]) == 13 and float(calib["budget_used_s"]) <= float(calib["budget_s"])  # + the head
    meta = artifact.load(path).config["state"]
    int6 = {k: m for k, m in meta.items() if m["scheme"] == "int6"}
    assert len(int6) == 12 and all(m["method"] == "gptq" for m in int6.values())
    assert meta["tier0.log_pc"]["scheme"] == "fp32" and meta["tier1.u2"]["scheme"] == "int8_row"
    assert meta["tier1.keys"]["scheme"] == "raw" and meta["tier1.keys"]["dtype"] == "int32"
    shown = subprocess.run([sys.executable, "-m", "golf.artifact", str(path), "--code"], capture_output=True,
                           text=True, env=subprocess_env(), timeout=120)
    assert shown.returncode == 0 and "int6" in shown.stdout and "code_file=python/golf/train.py" in shown.stdout


def test_the_rebuilt_model_is_the_dequantized_one(trained, tokenizer_path):
    _, summary, path = trained
    loaded = load_model(path)
    state = quant.decode_state(loaded.artifact.arrays, loaded.config["state"])
    for name, t in loaded.lm.transformer.state_dict().items():
        assert torch.equal(t, state[f"transformer.{name}"].to(t.dtype)), name
    # Tier 1's pair keys exactly as fitted (a changed key would move whole rows).
    ckpt = torch.load(path.parent / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert torch.equal(loaded.tiers.tier1.keys, ckpt["tiers"]["tier1.keys"])
    # Tier 0 exactly as fitted: every state's distribution still sums to 1 as stored.
    l0 = loaded.tiers.tier0.rows().double()
    torch.testing.assert_close(l0.exp().sum(1), torch.ones(l0.shape[0], dtype=torch.float64), atol=1e-5, rtol=0)
    # The roundtrip number is the rebuilt model's plain eval.
    sp = load_tokenizer(tokenizer_path)
    val = load_val_tokens([Path(summary["config"]["data_path"]) / "fineweb_val_000000.bin"], 64)[:8193]
    plain = evaluate(loaded.lm, loaded.prior_rows, val, window=64, stride=64, byte_tables=ByteTables.from_tokenizer(sp),
                     batch_windows=16, progress=False)
    assert plain.val_bpb == pytest.approx(summary["roundtrip_val_bpb"], abs=1e-6)


def eval_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "golf.eval", *map(str, args)], capture_output=True, text=True,
                          env=env or subprocess_env(), timeout=300)


def test_eval_cli_audits_and_sliding_beats_plain(trained, data_path, tokenizer_path):
    _, summary, path = trained
    common = ("--data-path", data_path, "--tokenizer-path", tokenizer_path, "--val-tokens", 8192, "--json")
    sliding = eval_cli(path, *common, "--stride", 16, "--audit", "--audit-positions", 8)
    assert sliding.returncode == 0, sliding.stderr
    out = json.loads(sliding.stdout)
    assert set(out) >= {"val_loss", "val_bpb", "targets", "bytes", "seconds", "tokens_per_s", "window", "stride",
                        "audit"}
    assert {c["result"] for c in out["audit"].values()} == {"PASS"} and len(out["audit"]) == 4
    assert (out["window"], out["stride"], out["targets"]) == (64, 16, 8192)
    assert out["val_bpb"] == pytest.approx(summary["sliding_val_bpb"], abs=1e-6)
    plain = eval_cli(path, *common, "--stride", 4096)
    assert plain.returncode == 0, plain.stderr
    plain = json.loads(plain.stdout)
    assert plain["val_bpb"] == pytest.approx(summary["roundtrip_val_bpb"], abs=1e-6)
    assert out["val_bpb"] < plain["val_bpb"]  # more context per scored token


def test_eval_cli_ttt_scores_and_audits(trained, data_path, tokenizer_path, capsys, monkeypatch):
    """--method ttt on the artifact: every target of the split once, the stream audit PASSes; the same audit on
    a variant that steps before it scores FAILs causality (exit 3); a budget it cannot meet stops it at the start
    (exit 2)."""
    from golf import eval as golf_eval
    from golf import ttt

    _, summary, path = trained
    args = [str(path), "--data-path", str(data_path), "--tokenizer-path", str(tokenizer_path), "--val-tokens", "2048",
            "--method", "ttt", "--ttt", "rank=4", "--ttt", "chunk=16", "--ttt", "batch_docs=4", "--ttt", "phases=0",
            "--ttt", "lr=0.01", "--json"]
    audit = ["--audit", "--audit-tokens", "600", "--audit-reruns", "2"]
    assert golf_eval.main(args + audit) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "ttt" and out["targets"] == 2048 and out["window"] == 64 and out["stride"] == 16
    assert {c["result"] for c in out["audit"].values()} == {"PASS"} and len(out["audit"]) == 4
    assert out["projected_seconds"] > 0 and out["derived_8x_seconds"] > 0 and out["documents"] >= 1

    with monkeypatch.context() as m:
        m.setattr(ttt.DocTTT, "chunk_step", StepsFirst.chunk_step)
        assert golf_eval.main(args + audit) == golf_eval.AUDIT_FAILED
    out = json.loads(capsys.readouterr().out)
    assert out["audit"]["causality"]["result"] == "FAIL"
    assert {name for name, c in out["audit"].items() if c["result"] == "FAIL"} == {"causality"}
    assert golf_eval.main(args + ["--budget-seconds", "1e-6"]) == 2
    err = capsys.readouterr().err
    assert "projected" in err and "--over-budget" in err


def test_torchrun_ttt_scores_every_target_once(trained, data_path, tokenizer_path):
    """golf.eval --method ttt under torchrun (2 gloo ranks sharing the queue of document groups): the same targets
    and bytes as one process, and nearly its BPB (each rank warm-starts its own LoRA; with lr 0 the ranks equal one
    process exactly: tests/test_ttt.py)."""
    _, _, path = trained
    args = [str(path), "--data-path", str(data_path), "--tokenizer-path", str(tokenizer_path), "--val-tokens",
            "4096", "--method", "ttt", "--ttt", "rank=4", "--ttt", "chunk=32", "--ttt", "batch_docs=2", "--ttt",
            "lr=0.01", "--json"]
    one = eval_cli(*args)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "golf.eval", *args], capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert one.returncode == 0 and two.returncode == 0, one.stderr[-2000:] + two.stderr[-2000:]
    one, two = json.loads(one.stdout), json.loads(two.stdout.strip().splitlines()[-1])
    assert (two["targets"], two["bytes"]) == (one["targets"], one["bytes"]) == (4096, one["bytes"])
    assert two["val_bpb"] == pytest.approx(one["val_bpb"], abs=0.02)


def test_a_ttt_run_reports_its_eval_and_an_over_budget_one_stops_before_training(data_path, tokenizer_path,
                                                                                 tmp_path):
    ttt = ("--set", "eval_method=ttt", "--set", "ttt.rank=4", "--set", "ttt.chunk=32", "--set", "ttt.batch_docs=4",
           "--set", "ttt.phases=0", "--val-tokens", "4096")
    summary = run_inprocess(tiny_args(data_path, tokenizer_path, tmp_path, "ttt", "--iterations", "10",
                                      "--set", "val_loss_every=0", *ttt))
    assert summary["eval_method"] == "ttt" and summary["val_bpb"] == summary["ttt_val_bpb"]
    facts = summary["ttt"]
    assert facts["targets"] == 4096 and facts["stride"] == 32 and facts["projected_seconds"] > 0
    assert facts["derived_8x_seconds"] > 0 and facts["documents"] >= 1 and summary["eval_seconds"] > 0
    assert events(tmp_path, "ttt", "eval_budget") and events(tmp_path, "ttt", "ttt")
    with pytest.raises(BudgetError, match="projected"):
        run_inprocess(tiny_args(data_path, tokenizer_path, tmp_path, "over", "--iterations", "10", *ttt,
                                "--set", "eval_budget_seconds=0.000001"))
    assert not (tmp_path / "over" / "model.golf").exists()
    assert read_summary(tmp_path, "over").get("steps") in (None, 0)


def test_eval_cli_refuses_a_corrupt_artifact(trained, data_path, tokenizer_path, tmp_path):
    _, _, path = trained
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    bad = tmp_path / "bad.golf"
    bad.write_bytes(bytes(data))
    result = eval_cli(bad, "--data-path", data_path, "--tokenizer-path", tokenizer_path)
    assert result.returncode == 2 and "checksum" in result.stderr and str(bad) in result.stderr
    with pytest.raises(ArtifactError):
        load_model(bad)
    (tmp_path / "short.golf").write_bytes(path.read_bytes()[:50])
    assert eval_cli(tmp_path / "short.golf", "--data-path", data_path).returncode == 2


def test_a_run_over_the_cap_is_fitted_by_rate_control_with_the_tables(trained, data_path, tokenizer_path,
                                                                       tmp_path, shard_reads):
    """A run whose int6/int8 export would not fit: rate control, its errors calibrated on the first calibration
    batch (so the tables take part; calibrate kept it, so no shard is read after the budget), fits it without
    pruning, and the evals score the file as written."""
    _, natural, _ = trained
    cap = natural["code_bytes"] + int(0.8 * natural["artifact_bytes"])
    args = tiny_args(data_path, tokenizer_path, tmp_path, "fit", "--iterations", "60", "--set", "val_loss_every=0",
                     "--set", "optim.matrix_lr=0.04", "--set", "optim.embed_lr=0.05", "--set", "optim.scalar_lr=0.04",
                     "--set", f"size_cap_bytes={cap}", *INT6)
    summary = run_inprocess(args)
    assert shard_reads.after_close() == [] and "calibrate" in shard_reads.stages("read")
    rate = summary["rate"]
    assert summary["total_bytes"] <= cap and rate["used"] == "rate" and summary["pruning"] is None
    assert rate["error_units"] == "nats (calibrated)" and "tier1.u1" in rate["exchange"]["groups"]
    assert set(rate["table_widths"]) >= {"tier1.u1", "tier1.w1", "tier1.u2"} and len(rate["compressions"]) <= 3
    assert summary["quant_penalty"] < 0.1 and summary["sliding_val_bpb"] > 0
    assert events(tmp_path, "fit", "rate")[0]["used"] == "rate"


def test_a_cap_the_code_fills_fails_before_training(data_path, tokenizer_path, tmp_path):
    args = tiny_args(data_path, tokenizer_path, tmp_path, "tiny", "--iterations", "3", "--set", "val_loss_every=0",
                     "--set", "size_cap_bytes=100000")
    with pytest.raises(BudgetError, match="the code alone takes .* no room for the artifact"):
        run_inprocess(args)
    summary = read_summary(tmp_path, "tiny")
    assert "BudgetError" in summary["error"] and "steps" not in summary


def test_over_the_cap_fails_after_writing_everything(data_path, tokenizer_path, tmp_path):
    probe = resolve_config(tiny_args(data_path, tokenizer_path, tmp_path, "big", "--iterations", "3"), env={})
    cap = sizes.code_bytes(portable_dict(probe))["bytes"] + 3000  # room for the header, not for the tables
    args = tiny_args(data_path, tokenizer_path, tmp_path, "big", "--iterations", "3", "--set", "val_loss_every=0",
                     "--set", f"size_cap_bytes={cap}", "--set", "calib_batches=0")
    with pytest.raises(BudgetError, match="over the size cap"):
        run_inprocess(args)
    summary = read_summary(tmp_path, "big")
    assert "BudgetError" in summary["error"] and summary["total_bytes"] > cap
    # the narrowest widths and every +-1 zeroed still do not fit: the file is the narrowest unpruned one
    assert summary["rate"]["fits"] is False and len(summary["rate"]["compressions"]) <= 3
    pruning = summary["pruning"]
    assert pruning["pruned"] == 0 and pruning["bytes_all_pruned"] > pruning["max_bytes"]
    assert events(tmp_path, "big", "prune")[0]["pruned"] == "0"
    assert (tmp_path / "big" / "model.golf").is_file() and summary["sliding_val_bpb"] > 0


def test_an_artifact_over_the_limit_is_fitted_and_still_loads(trained, data_path, tokenizer_path, tmp_path):
    """Over max_bytes, rate control narrows some matrices (no pruning needed); with no width to give
    (rate_bits = the default's alone), the cheapest +-1 values are zeroed instead, the last resort."""
    _, _, path = trained
    loaded = load_model(path)
    qcfg = quant.QuantConfig(small_numel=1024)
    plain = tmp_path / "plain.golf"
    size = export_model(plain, loaded.lm, loaded.tiers, qcfg=qcfg, train_seq_len=64).file_bytes
    limit = size - 600
    fitted = export_model(tmp_path / "fitted.golf", loaded.lm, loaded.tiers, qcfg=qcfg, train_seq_len=64,
                          max_bytes=limit)
    assert fitted.file_bytes == (tmp_path / "fitted.golf").stat().st_size <= limit
    assert fitted.rate["used"] == "rate" and fitted.pruning is None
    widths = {m["bits"] for m in load_model(tmp_path / "fitted.golf").config["state"].values()
              if m["scheme"] == "int6"}
    assert min(widths) < 6, widths
    info = export_model(tmp_path / "pruned.golf", loaded.lm, loaded.tiers, train_seq_len=64, max_bytes=limit,
                        qcfg=quant.QuantConfig(small_numel=1024, rate_bits=(6,)))
    assert info.file_bytes == (tmp_path / "pruned.golf").stat().st_size <= limit
    assert info.pruning["pruned"] > 0 and info.pruning["bytes_before"] == size
    assert len(info.rate["compressions"]) == 1  # nothing to allocate: no second compression
    again = load_model(tmp_path / "pruned.golf")
    assert again.config["pruning"]["pruned"] == info.pruning["pruned"]
    a = {n: p for n, p in load_model(plain).lm.transformer.state_dict().items()}
    b = again.lm.transformer.state_dict()
    changed = sum(int((a[n] != b[n]).sum()) for n in a)
    assert changed == info.pruning["pruned"]  # exactly the zeroed values differ
    sp = load_tokenizer(tokenizer_path)
    val = load_val_tokens([Path(data_path) / "fineweb_val_000000.bin"], 64)[:8193]
    tables = ByteTables.from_tokenizer(sp)
    bpb = [evaluate(m.lm, m.prior_rows, val, window=64, stride=64, byte_tables=tables, batch_windows=32,
                    progress=False).val_bpb for m in (load_model(plain), again, load_model(tmp_path / "fitted.golf"))]
    assert abs(bpb[1] - bpb[0]) < 0.05 and abs(bpb[2] - bpb[0]) < 0.05  # either costs little here


def test_late_qat_switches_on_and_changes_training(data_path, tokenizer_path, tmp_path):
    base = ("--iterations", "4", "--set", "val_loss_every=0", "--no-export", "--set", "quant.small_numel=1024")
    plain = run_inprocess(tiny_args(data_path, tokenizer_path, tmp_path, "float", *base))
    qat = run_inprocess(tiny_args(data_path, tokenizer_path, tmp_path, "qat", *base, "--set", "qat_lr_scale=2"))
    switched = events(tmp_path, "qat", "qat")
    # The schedule's stage switches it on before the first step whose LR scale is below the threshold (here 0)
    assert len(switched) == 1 and switched[0]["step"] == "0" and switched[0]["layers"] == "12"
    assert not events(tmp_path, "float", "qat")
    assert qat["weights_sha256"] != plain["weights_sha256"]  # every step trained through the int6 grid


def test_the_records_parts_travel_in_the_artifact(tmp_path):
    """VE, the per-channel smear, skip gates, no layer-0 attention, the sparse attention gate, two lanes: the
    artifact's model is built with them and holds their tensors as dequantized (decode_state's, name for name)."""
    from golf.model import ModelConfig, TieredLM, Transformer

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=1024, num_layers=2, model_dim=64, num_heads=2, num_kv_heads=1, ve_dim=16,
                      smear_gate=True, smear_form="channel", skip_gates=True, layer0_attn=False, ve_layers=[1],
                      attn_gate=True, parallel_residual="two_lane", parallel_start=1)
    lm = TieredLM(Transformer(cfg), torch.zeros(0, 1024), trainable=False)
    export_model(tmp_path / "m.golf", lm, None, train_seq_len=32)
    loaded = load_model(tmp_path / "m.golf")
    t = loaded.lm.transformer
    assert t.cfg.ve_layers == (1,) and t.cfg.smear_form == "channel" and t.blocks[0].attn is None
    assert t.skip_gates is not None
    assert t.state_dict().keys() == lm.transformer.state_dict().keys()
    state = quant.decode_state(loaded.artifact.arrays, loaded.config["state"])
    for name, value in t.state_dict().items():
        assert torch.equal(value, state[f"transformer.{name}"].to(value.dtype)), name
    x = torch.randint(2, 1024, (1, 32))
    assert (t(x) - lm.transformer(x)).abs().max() < 0.05  # int6/int8 of a random init


def test_hessians_under_other_names_are_refused(tmp_path):
    """Hessians named as the TieredLM's state dict (transformer.*) match no tensor: refused, not silently RTN."""
    from golf.errors import ConfigError
    from golf.model import ModelConfig, TieredLM, Transformer

    lm = TieredLM(Transformer(ModelConfig(vocab_size=256, num_layers=1, model_dim=64, num_heads=2, num_kv_heads=1)),
                  torch.zeros(0, 256), trainable=False)
    x = [torch.randint(0, 256, (1, 16))]
    with pytest.raises(ConfigError, match=r"transformer\.blocks\.0\.attn.*collect_hessians\(lm\.transformer"):
        export_model(tmp_path / "m.golf", lm, None, hessians=quant.collect_hessians(lm, x), train_seq_len=16)
    assert not (tmp_path / "m.golf").exists()
    info = export_model(tmp_path / "m.golf", lm, None, hessians=quant.collect_hessians(lm.transformer, x),
                        qcfg=quant.QuantConfig(small_numel=1024, embed_gptq=True), train_seq_len=16)
    meta = load_model(tmp_path / "m.golf").config["state"]
    assert meta["transformer.blocks.0.mlp.fc.weight"]["method"] == "gptq" and info.file_bytes > 0
    assert meta["transformer.tok_emb.weight"]["scheme"] == "int6" and meta["transformer.tok_emb.weight"]["bits"] == 7
