"""A trained model to `model.golf` and back: which tensors go in, under which scheme, and the config that
rebuilds the predictor from the artifact alone (the tokenizer is needed only for the BPB byte tables).

    info = export_model(path, lm, tiers, hessians=..., train_seq_len=..., extra={...}, max_bytes=None)
        max_bytes: fit the file into it: golf.rate gives the matrices the widths with the least error that fit
        (info.rate says which), then, only if still over, the cheapest int6 +-1 values are zeroed (prune_to_fit;
        info.pruning says how many)
    loaded = load_model(path, device)      # .lm (TieredLM, dequantized), .prior_rows, .config, .artifact

Tensors (names in the artifact; schemes from golf.quant.scheme_for unless listed)
    transformer.<state_dict name>   Q/K/V/O/MLP matrices int6 (GPTQ with a Hessian, else RTN), tok_emb int8 rows,
                                    small tensors fp16
    vocab.classes, vocab.bracket_delta, vocab.curly_delta, vocab.straight   int8 raw: tier 0's class map and
                                    the bracket/quote deltas that golf.tiers.context reads
    tier0.log_pc (fp32 [S, C]), tier0.log_py (fp16 [V], stored as fp32: exact)   as fitted, so each state still
                                    sums to 1 over the vocabulary as stored
    tier1.u1, tier1.w1, tier1.u2, tier1.w2   int8 rows with fp16 scales (the factors; the prior rows are
                                    rebuilt from them)
    tier1.keys                      raw int32 (pair_index "top"): the previous-two pairs with their own row
Config (the artifact header's `config`): kind, format, vocab_size, bos_id, model (ModelConfig fields), tiers
(TierConfig fields, or null for a baseline), has_tier1, train_seq_len, what the caller adds under `run`, and
`state`: golf.quant's per-tensor metadata (scheme, shape, dtype, the arrays it uses), which decode_state reads.
"""

from __future__ import annotations

import dataclasses
import reprlib
import time
from dataclasses import dataclass

import torch

from golf import artifact, quant, rate
from golf.errors import ArtifactError, ConfigError
from golf.model import ModelConfig, TieredLM, Transformer, make_prior_rows
from golf.tiers import Tier0, Tier1, TierConfig, Tiers, Vocab

KIND = "golf-tiered-lm"
FORMAT = 1
_VOCAB_FIELDS = ("classes", "bracket_delta", "curly_delta", "straight")


def model_state(lm: TieredLM, tiers: Tiers | None) -> dict[str, torch.Tensor]:
    """Every tensor the artifact stores, by artifact name (float tensors as trained, on the CPU)."""
    state = {f"transformer.{k}": v.detach().cpu() for k, v in lm.transformer.state_dict().items()}
    if tiers is not None:
        for f in _VOCAB_FIELDS:
            state[f"vocab.{f}"] = getattr(tiers.vocab, f).to(torch.int8)
        state["tier0.log_pc"] = tiers.tier0.log_pc
        state["tier0.log_py"] = tiers.tier0.log_py
        if tiers.tier1 is not None:
            state.update({f"tier1.{k}": v for k, v in tiers.tier1.tensors().items()})
    return state


def prune_to_fit(arrays: dict, meta: dict, encode, max_bytes: int, tolerance: float = 0.01, encoded=None):
    """(arrays, data, info, record): the fewest of the cheapest int6 +-1 values zeroed (quant.zero_pm1) so that
    encode(arrays, record) -> (bytes, info) is at most max_bytes long. The size falls about linearly in the
    count, so the search interpolates inside a bracket [fits-not, fits], with a bisection every other trial;
    it stops once the bracket is within `tolerance` of the candidates (each trial is one full compression).
    When even zeroing every candidate does not fit, the unpruned arrays come back (record: pruned 0 and
    bytes_all_pruned), so the file is still written and the size check names the overshoot. encoded: the
    unpruned arrays' (data, info) when already compressed."""
    t0 = time.perf_counter()
    data, info = encoded or encode(arrays, None)
    if len(data) <= max_bytes:
        return arrays, data, info, None
    cands = quant.pm1_candidates(arrays, meta)
    record = {"max_bytes": int(max_bytes), "candidates": len(cands), "bytes_before": len(data), "trials": 1}

    def trial(n: int):
        record["trials"] += 1
        pruned = quant.zero_pm1(arrays, meta, cands, n)
        data, info = encode(pruned, {"pruned": n, "candidates": len(cands), "cost": "scale^2"})
        return pruned, data, info

    lo, size_lo = 0, len(data)
    hi = len(cands)
    best = trial(hi)
    size_hi = record["bytes_all_pruned"] = len(best[1])
    if size_hi > max_bytes:  # out of reach: keep the unpruned file; the caller's size check reports it
        record.update(pruned=0, bytes_after=len(data), seconds=time.perf_counter() - t0)
        return arrays, data, info, record
    step = 0
    while hi - lo > max(1, int(tolerance * len(cands))):
        if step % 2 == 0:  # interpolate: size is about linear in the count
            n = lo + round((size_lo - max_bytes) / max(size_lo - size_hi, 1) * (hi - lo))
        else:
            n = (lo + hi) // 2
        n = min(max(n, lo + 1), hi - 1)
        got = trial(n)
        if len(got[1]) <= max_bytes:
            hi, size_hi, best = n, len(got[1]), got
        else:
            lo, size_lo = n, len(got[1])
        step += 1
    pruned, data, info = best
    record.update(pruned=hi, bytes_after=len(data), seconds=time.perf_counter() - t0)
    return pruned, data, info, record


def export_model(path, lm: TieredLM, tiers: Tiers | None, *, hessians: dict | None = None,
                 qcfg: quant.QuantConfig | None = None, train_seq_len: int, extra: dict | None = None,
                 codec="lzma", max_bytes: int | None = None, calib: tuple | None = None) -> artifact.ArtifactInfo:
    """Quantize (GPTQ where `hessians` has the matrix: names as Transformer.state_dict) and write the artifact.
    With max_bytes, the file is fitted into it: golf.rate.fit (the returned info's `rate`), then, only if that is
    not enough, prune_to_fit (the header's config and the info's `pruning` say so; None if none). calib: a batch
    (x, y) [B, T] whose mean NLL calibrates rate control's errors, which brings the tables into it."""
    if isinstance(lm.prior_tables, torch.nn.Parameter):
        raise ConfigError("tier1_train: the trained prior_tables are dense [R, V] rows that the artifact cannot "
                          "store; project them to tier-1 factors first (golf.tiers.project_tier1)")
    qcfg = qcfg or quant.QuantConfig()
    hessians = {f"transformer.{k}": v for k, v in (hessians or {}).items()}
    state = model_state(lm, tiers)
    unknown = sorted(k.removeprefix("transformer.") for k in hessians if k not in state)
    if unknown:  # else those matrices would fall back to RTN without a word
        raise ConfigError(f"export_model: hessians: {unknown[:3]} name no tensor of the transformer (expected its "
                          "state_dict names: collect_hessians(lm.transformer, ...))")
    cfg = lm.transformer.cfg
    config = {"kind": KIND, "format": FORMAT, "vocab_size": cfg.vocab_size, "bos_id": cfg.bos_id,
              "model": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("vocab_size", "bos_id")},
              "tiers": dataclasses.asdict(tiers.cfg) if tiers is not None else None,
              "has_tier1": tiers is not None and tiers.tier1 is not None,
              "train_seq_len": int(train_seq_len), "run": extra or {}}

    def encode(arrs: dict, meta: dict, pruning: dict | None = None):
        # Per array, the tensor and scheme it belongs to (what `python -m golf.artifact` shows).
        array_meta = {key: {"scheme": entry["scheme"], "tensor": name, "role": role}
                      for name, entry in meta.items() for role, key in entry["arrays"].items()}
        # Float arrays as byte planes: smaller under every coder measured (bench/RESULTS.md, "Export methods").
        return artifact.encode(quant.container_order(arrs, meta), meta=array_meta, codec=codec, path=path,
                               config=dict(config, state=meta, pruning=pruning), planes=True)

    loss = batch_nll(config, *calib) if calib is not None else None
    rate_record = record = None
    if max_bytes is None:
        arrays, meta = quant.encode_state(state, hessians, qcfg)
        data, info = encode(arrays, meta)
    else:
        arrays, meta, data, info, rate_record = rate.fit(state, hessians, qcfg, max_bytes, encode, loss)
        if len(data) > max_bytes:
            _, data, info, record = prune_to_fit(arrays, meta, lambda a, p: encode(a, meta, p), max_bytes,
                                                 encoded=(data, info))
    artifact.write(path, data)
    info.pruning, info.rate = record, rate_record
    return info


def batch_nll(config: dict, x: torch.Tensor, y: torch.Tensor):
    """loss(state) -> the mean NLL (nats) on the batch (x, y) of the predictor that build_lm makes of state."""
    def loss(state: dict) -> float:
        lm, tiers = build_lm(state, config, x.device)
        with torch.no_grad():
            return float(lm(x, make_prior_rows(tiers)(x), y).mean())
    return loss


@dataclass
class LoadedModel:
    lm: TieredLM
    prior_rows: object        # x [B, T] -> int32 [B, T, K]
    tiers: Tiers | None
    config: dict
    artifact: artifact.Artifact


def load_model(path, device="cpu") -> LoadedModel:
    """Rebuild the predictor from the artifact alone (dequantized fp32 weights)."""
    art = artifact.load(path)
    config = art.config
    if config.get("kind") != KIND or config.get("format") != FORMAT:
        raise ArtifactError(f"{path}: config: expected kind {KIND!r} format {FORMAT}, found kind "
                            f"{config.get('kind')!r} format {config.get('format')!r}")
    _check_config(config, path)
    try:
        state = quant.decode_state(art.arrays, config["state"])
    except (ArtifactError, KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        raise ArtifactError(f"the tensors do not decode ({exc})", file=path, field="config.state") from exc
    try:
        lm, tiers = build_lm(state, config, device)
    except (KeyError, TypeError, RuntimeError, ConfigError) as exc:
        raise ArtifactError(f"{path}: the tensors or config do not build a model: {exc}") from exc
    return LoadedModel(lm, make_prior_rows(tiers), tiers, config, art)


def _check_config(config: dict, path) -> None:
    """The header config's fields that load_model and golf.eval read, by kind: an ArtifactError naming the file
    and the field, not a traceback, when a file's config was made by something other than export_model (the
    header's crc32 catches accidents, not a rewritten header)."""
    def need(ok: bool, key: str, expected: str):
        if not ok:
            raise ArtifactError("invalid config value", file=path, field=f"config.{key}", expected=expected,
                                found=reprlib.repr(config.get(key)))

    def whole(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    need(whole(config.get("vocab_size")) and config["vocab_size"] >= 2, "vocab_size", "an int >= 2")
    need(whole(config.get("bos_id")), "bos_id", "an int")
    need(whole(config.get("train_seq_len")) and config["train_seq_len"] >= 1, "train_seq_len", "an int >= 1")
    need(isinstance(config.get("model"), dict), "model", "an object of ModelConfig fields")
    need("tiers" in config and (config["tiers"] is None or isinstance(config["tiers"], dict)), "tiers",
         "an object of TierConfig fields, or null (no tiers)")
    need(isinstance(config.get("has_tier1"), bool), "has_tier1", "true or false")
    state = config.get("state")
    need(isinstance(state, dict) and all(isinstance(e, dict) for e in state.values()), "state",
         "an object {tensor name: {scheme, shape, dtype, arrays}}")


def build_lm(state: dict[str, torch.Tensor], config: dict, device="cpu") -> tuple[TieredLM, Tiers | None]:
    """The predictor (eval mode, on `device`) and its tiers from float tensors named as in the artifact
    (model_state's names; decode_state's output) under an artifact config (vocab_size, bos_id, model, tiers,
    has_tier1). KeyError, TypeError, RuntimeError or ConfigError when they do not fit together."""
    transformer = Transformer(ModelConfig(vocab_size=config["vocab_size"], bos_id=config["bos_id"], **config["model"]))
    prefix = "transformer."
    transformer.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    tiers = None
    if config["tiers"] is not None:
        vocab = Vocab(*(state[f"vocab.{f}"].long() for f in _VOCAB_FIELDS), bos_id=config["bos_id"])
        tier0 = Tier0(vocab.classes.clone(), state["tier0.log_pc"].float(), state["tier0.log_py"].half())
        tier1 = Tier1.from_tensors(state, "tier1.") if config["has_tier1"] else None
        tiers = Tiers(vocab, tier0, tier1, TierConfig(**config["tiers"]))
    return TieredLM.of(transformer.to(device), tiers, device).eval(), tiers
