"""Rate control (golf.rate): per-matrix widths with the least GPTQ-weighted error that fit a byte budget, an entropy
proxy calibrated on at most 3 full compressions; and the worst case it exists for: an h100x8-narrow tiered model with
Gaussian weights (what a short run leaves: the least compressible realistic weights), exported as golf.train
exports it, fits artifact + code into 16,000,000 bytes."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch

from golf import artifact, quant, rate
from golf.artifact import read_header
from golf.config import portable_dict, resolve_config
from golf.data import load_shard
from golf.export import export_model, load_model
from golf.model import TieredLM, Transformer, make_prior_rows
from golf.sizes import CAP_BYTES, code_bytes, size_report
from golf.tiers import TierConfig, Vocab, fit_tiers


def test_entropy_bytes_is_the_order0_entropy():
    q = torch.tensor([0, 0, 1, -1] * 250, dtype=torch.int8)  # p = 1/2, 1/4, 1/4: 1.5 bits a value
    assert rate.entropy_bytes(q) == pytest.approx(1000 * 1.5 / 8)
    assert rate.entropy_bytes(torch.zeros(64, dtype=torch.int8)) == 0


def options(seed: int, tensors: int = 5) -> dict[str, list[rate.Option]]:
    """Made-up (bytes, error) options: bytes grow and errors fall ~4x per extra bit, as for real codes."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for t in range(tensors):
        size, err = float(torch.randint(1000, 5000, (1,), generator=g)), float(torch.rand(1, generator=g)) + 0.1
        jitter = 1 + 0.1 * torch.rand(5, generator=g)
        out[f"m{t}"] = [rate.Option(b, None, None, "rtn", err * 4.0 ** (6 - b) * float(j), size * b / 6)
                        for b, j in zip((4, 5, 6, 7, 8), jitter)]
    return out


@pytest.mark.parametrize("seed", range(4))
def test_allocate_fits_and_is_near_the_exhaustive_optimum(seed):
    """The Lagrangian allocation always fits, beats every uniform width that fits, and is within one tensor's
    change of width of the exhaustive optimum (the multiple-choice knapsack's relaxation has one split item)."""
    opts = options(seed)
    names = list(opts)
    combos = list(itertools.product(*(opts[n] for n in names)))
    sizes = sorted(sum(o.proxy_bytes for o in c) for c in combos)
    for budget in (sizes[len(sizes) // 5], sizes[len(sizes) // 2], sizes[-len(sizes) // 5]):
        got = rate.allocate(opts, budget)
        assert sum(o.proxy_bytes for o in got.values()) <= budget
        got_err = sum(o.error for o in got.values())
        best = min(sum(o.error for o in c) for c in combos if sum(o.proxy_bytes for o in c) <= budget)
        for b in (4, 5, 6, 7, 8):
            uniform = [next(o for o in opts[n] if o.bits == b) for n in names]
            if sum(o.proxy_bytes for o in uniform) <= budget:
                assert got_err <= sum(o.error for o in uniform) + 1e-12
        biggest_step = max(opts[n][0].error - opts[n][-1].error for n in names)
        assert best <= got_err <= best + biggest_step


def test_allocate_at_the_extremes():
    opts = options(7)
    widest = rate.allocate(opts, math.inf)
    assert all(o.bits == 8 for o in widest.values())
    narrowest = rate.allocate(opts, 0)  # nothing fits: the narrowest, for the caller's size check to refuse
    assert all(o.bits == 4 for o in narrowest.values())


def gaussian_state(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {f"m{i}.weight": torch.randn(r, c, generator=g) / c ** 0.5 for i, (r, c) in enumerate(shapes)}


def test_fit_spends_at_most_three_compressions_and_beats_uniform_widths(tmp_path):
    state = gaussian_state([(256, 320)] * 3 + [(512, 256)] * 2)
    cfg = quant.QuantConfig(small_numel=1024)
    calls = []

    def encode(arrays, meta):
        if len(meta) == len(state):  # a full compression (fit also compresses the rest of the file alone)
            calls.append(1)
        return artifact.encode(arrays, config={"state": meta}, codec="lzma")

    natural = len(encode(*quant.encode_state(state, None, cfg))[0])
    for fraction in (0.9, 0.7):
        calls.clear()
        budget = int(natural * fraction)
        arrays, meta, data, info, record = rate.fit(state, None, cfg, budget, encode)
        assert len(calls) <= rate.MAX_COMPRESSIONS and len(record["compressions"]) == len(calls)
        assert len(data) <= budget and record["fits"] and record["used"] == "rate"
        decoded = quant.decode_state(arrays, meta)
        err = sum(float(((state[n] - decoded[n]) ** 2).sum()) for n in state)
        assert err == pytest.approx(record["error_total"], rel=1e-4)
        # Uniform widths that fit this budget have more error (int5 everywhere fits 0.9 and 0.7 both here).
        for b in (4, 5):
            uni = quant.QuantConfig(small_numel=1024, bits=b)
            u_arrays, u_meta = quant.encode_state(state, None, uni)
            if len(encode(u_arrays, u_meta)[0]) <= budget:
                u_dec = quant.decode_state(u_arrays, u_meta)
                assert err < sum(float(((state[n] - u_dec[n]) ** 2).sum()) for n in state)
    # A budget the default widths meet is left alone: one compression.
    calls.clear()
    *_, record = rate.fit(state, None, cfg, natural + 10, encode)
    assert record["used"] == "default" and len(calls) == 1


def test_rate_bits_must_include_the_default_width():
    with pytest.raises(Exception, match="rate_bits"):
        quant.QuantConfig(bits=6, rate_bits=(4, 5))


def gaussian(transformer: Transformer, seed: int) -> Transformer:
    """Every matrix N(0, 1/fan_in): what a short run leaves (no zero-initialised projections, no trained tails)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in transformer.parameters():
            if p.dim() == 2:
                p.normal_(std=p.shape[1] ** -0.5)
    return transformer


@pytest.mark.slow
def test_h100x8_narrow_gaussian_tiered_model_fits_the_cap_by_rate_control(tmp_path, sp, train_shard):
    """The worst case of the one GPU run (17.4 MB at ~5.4 bits a weight): Hessians from a calibration batch, the
    run's quant config, max_bytes = cap - code bytes, as golf.train's export stage does."""
    cfg = resolve_config(["--preset", "h100x8-narrow"], env={})
    vocab = Vocab.from_tokenizer(sp)
    train = torch.from_numpy(np.asarray(load_shard(train_shard)).astype(np.int64))
    transformer = gaussian(Transformer(cfg.model_config(vocab.vocab_size, vocab.bos_id)), seed=0)
    tiers = fit_tiers(train, vocab, TierConfig(**vars(cfg.tiers)))
    lm = TieredLM(transformer, tiers.prior_tables(), trainable=False)
    hessians = quant.collect_hessians(lm.transformer, [train[:1024].reshape(2, 512)])
    code = code_bytes(portable_dict(cfg))
    path = tmp_path / "model.golf"
    # The clip search: with the preset's SDClip (R0611's k) uniform int6 already fits, and this is rate control's test.
    qcfg = dataclasses.replace(cfg.quant, clip="search")
    natural = export_model(tmp_path / "natural.golf", lm, tiers, hessians=hessians, qcfg=qcfg,
                           train_seq_len=cfg.train_seq_len, codec=cfg.artifact_codec)
    assert natural.file_bytes + code["bytes"] > CAP_BYTES  # uniform int6 does not fit
    info = export_model(path, lm, tiers, hessians=hessians, qcfg=qcfg, train_seq_len=cfg.train_seq_len,
                        codec=cfg.artifact_codec, max_bytes=CAP_BYTES - code["bytes"])
    report = size_report(path, read_header(path), code=code)
    print(f"h100x8-narrow gaussian: uniform int6 {natural.file_bytes:,} -> rate control {report['artifact_bytes']:,} "
          f"(+ code {report['code_bytes']:,} = {report['total_bytes']:,}); widths {info.rate['bits_histogram']}, "
          f"error {info.rate['error_total']:.4g} (int6 everywhere {info.rate['error_default']:.4g}); "
          f"compressions {[(round(c.get('proxy', 0)), c['actual']) for c in info.rate['compressions']]}; "
          f"{info.rate['seconds']:.1f} s")
    assert report["fits"] and report["total_bytes"] <= CAP_BYTES
    assert info.rate["used"] == "rate" and info.pruning is None and len(info.rate["compressions"]) <= 3
    assert report["total_bytes"] >= 0.99 * CAP_BYTES  # the cap is used, not wasted
    loaded = load_model(path)
    meta = loaded.config["state"]
    assert {meta[n]["bits"] for n in meta if meta[n]["scheme"] == "int6" and not quant.is_embedding(n)} == {
        int(b) for b, count in info.rate["bits_histogram"].items() if count}


def test_bench_coders_layouts_hold_the_same_bytes():
    """bench.coders compares layouts of one container: the shuffled one is a permutation of each float array's
    bytes (first bytes, then second bytes, ...), integers untouched, in golf's container order; the grouped one
    puts each role's codes side by side across layers, column-major."""
    from bench.coders import payloads

    arrays = {"w.q": np.arange(-6, 6, dtype=np.int8), "w.scale": np.array([1.5, -2.25], dtype=np.float16)}
    meta = {"w": {"scheme": "int6", "arrays": {"q": "w.q", "scale": "w.scale"}}}
    blobs = payloads(arrays, meta)
    scale = arrays["w.scale"].view(np.uint8)
    assert blobs["as stored"] == arrays["w.q"].tobytes() + scale.tobytes()
    assert blobs["floats shuffled"] == arrays["w.q"].tobytes() + bytes([scale[0], scale[2], scale[1], scale[3]])
    # by role: blocks.<i>.q of every layer side by side, in layer order, each column-major; the rest after
    q = {i: np.arange(6, dtype=np.int8).reshape(2, 3) + 10 * i for i in (0, 1, 10)}
    arrays = {f"blocks.{i}.q.q": q[i] for i in (10, 0, 1)} | {"v.q": q[0] - 50, "s": np.ones(2, np.float16)}
    meta = {f"blocks.{i}.q": {"scheme": "int6", "arrays": {"q": f"blocks.{i}.q.q"}} for i in (10, 0, 1)}
    meta |= {"v": {"scheme": "int6", "arrays": {"q": "v.q"}}, "s": {"scheme": "fp16", "arrays": {"value": "s"}}}
    want = b"".join(q[i].T.tobytes() for i in (0, 1, 10)) + (q[0] - 50).T.tobytes() + arrays["s"].tobytes()
    assert payloads(arrays, meta)["codes by role, column-major"] == want


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_on_a_trained_cpu_model_rate_control_beats_uniform_widths_and_pruning(data_path, tokenizer_path, sp, tmp_path,
                                                                              capsys):
    """A cpu-preset model (its full size; 60 steps) exported under a cap of 95% and 60% of its natural size; rate
    control calibrates its errors on a training batch, so the tables take part. It fits both, and its
    quantisation penalty (val BPB of the file - the float model's) is below that of every uniform width + pruning
    that fits: at 95% uniform int6 + pruning (which does not fit: the cpu preset's matrices are small enough to
    stay fp16, so there is nothing to prune), at 60% the best uniform width of matrices and tables + pruning."""
    from golf.data import ByteTables, load_val_tokens
    from golf.evaluate import evaluate
    from golf.export import _VOCAB_FIELDS, build_lm
    from test_train import run_inprocess

    runs = tmp_path / "runs"
    run_inprocess(["--preset", "cpu", "--data-path", str(data_path), "--tokenizer-path", str(tokenizer_path),
                   "--runs-dir", str(runs), "--run-id", "cpu", "--iterations", "60", "--val-tokens", "8192",
                   "--set", "val_loss_every=0", "--set", "tiers.refine_seconds=0", "--no-export",
                   # the same weights on every machine: a step schedule, at the constant rate the 300 s
                   # schedule's first 60 steps nearly have (on the clock, the weights and so the widths varied)
                   "--schedule", "steps", "--set", "optim.warmdown_frac=0"])
    ckpt = torch.load(runs / "cpu" / "checkpoint.pt", weights_only=False)
    vocab = Vocab.from_tokenizer(sp)
    state = {f"transformer.{k}": v for k, v in ckpt["model"].items()} | dict(ckpt["tiers"])
    state |= {f"vocab.{f}": getattr(vocab, f) for f in _VOCAB_FIELDS}
    config = {"vocab_size": vocab.vocab_size, "bos_id": vocab.bos_id,
              "model": {**ckpt["config"]["model"], "prior_columns": 3},  # derived from the tiers, as golf.train does
              "tiers": ckpt["config"]["tiers"], "has_tier1": True}
    lm, tiers = build_lm(state, config)
    train = torch.from_numpy(np.asarray(load_shard(data_path / "fineweb_train_000000.bin")).astype(np.int64))
    seq = ckpt["config"]["train_seq_len"]
    batch = train[-8 * seq - 1:]
    calib = (batch[:-1].reshape(8, seq), batch[1:].reshape(8, seq))
    hessians = quant.collect_hessians(lm.transformer, [calib[0]])
    val = load_val_tokens([data_path / "fineweb_val_000000.bin"], seq)[:16 * seq + 1]
    tables = ByteTables.from_tokenizer(sp)

    def bpb(model) -> float:
        return evaluate(model.lm if hasattr(model, "lm") else model, make_prior_rows(tiers), val, window=seq,
                        stride=seq, byte_tables=tables, batch_windows=16, progress=False).val_bpb

    def export(name, qcfg, max_bytes=None, calib=None):
        path = tmp_path / f"{name}.golf"
        info = export_model(path, lm, tiers, hessians=hessians, qcfg=qcfg, train_seq_len=seq, max_bytes=max_bytes,
                            calib=calib, codec=resolve_config([], env={}).artifact_codec)
        return info, (bpb(load_model(path)) - float_bpb if info.file_bytes <= (max_bytes or math.inf) else None)

    float_bpb = bpb(lm)
    natural = export("natural", quant.QuantConfig())[0].file_bytes
    for fraction, uniform in ((0.95, [(6, 8)]), (0.60, [(4, 4), (5, 5), (6, 6)])):
        budget = int(natural * fraction)
        info, penalty = export(f"rate{fraction}", quant.QuantConfig(), budget, calib)
        assert penalty is not None and info.pruning is None, info.rate  # it fits by widths alone
        rivals = {}
        for bits, table_bits in uniform:
            qcfg = quant.QuantConfig(bits=bits, table_bits=table_bits, rate_bits=(bits,))
            rivals[f"int{bits}/tables int{table_bits} + pruning"] = export(f"u{bits}_{fraction}", qcfg, budget)[1]
        print(f"cap {fraction:.0%} of {natural:,} = {budget:,}: rate control {info.file_bytes:,} bytes, penalty "
              f"{penalty:+.5f} BPB (widths {info.rate['bits_histogram']}, tables {info.rate['table_widths']}); "
              + "; ".join(f"{k}: {'does not fit' if v is None else f'{v:+.5f}'}" for k, v in rivals.items())
              + f"; exchange {info.rate['exchange']['groups']}")
        fitting = [v for v in rivals.values() if v is not None]
        assert all(penalty < v for v in fitting), (penalty, rivals)
        assert fitting or fraction > 0.9, rivals  # at 60% uniform int4 + pruning fits: the comparison is made
    out = capsys.readouterr().out
    with capsys.disabled():
        print(out)
