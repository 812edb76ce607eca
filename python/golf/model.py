"""Tier 2 of the Tiered Residual Predictor: a small decoder-only transformer.

The full model's logits are ``l0 + l1 + softcap(l2)``. This module produces ``l2`` only, *before* the softcap:
the softcap and the loss live in a separate fused op, which reads ``Transformer.softcap``.

API
---
``ModelConfig(vocab_size, ...)``
    Dataclass of every architectural setting; validated on construction (``golf.errors.ConfigError`` naming the
    field). ``head_dim`` is derived; ``rope_dims=None`` resolves to ``head_dim``; ``xsa_layers()`` resolves ``xsa``.
``Transformer(cfg)``
    ``forward(ids) -> l2``          raw tier-2 logits [B, T, V] (no softcap).
    ``hidden(ids) -> h``            final RMSNorm'd hidden state [B, T, d].
    ``copy_logits(h, ids, keep)``   the copy head's sparse logits (None without one).
    ``with_copy(logits, h, ids)``   logits plus those; ``forward == with_copy(hidden @ head_weight.T, h, ids)``.
    ``prior_scales(h)``             the prior rows' weights [..., K] from ``PriorGate`` (None without one).
    ``head_weight``                 the [V, d] output matrix (``tok_emb.weight`` when tied).
    ``softcap``                     ``cfg.logit_softcap``, for the loss op.
    ``set_phase(k)``                run depth recurrence's phase k (0: the plain stack); ``phase`` the current one.
``param_counts(model) -> dict``     ``total`` plus one entry per top-level component.
``params_by_group(model) -> dict``  parameters split by their ``_golf_group`` tag.
``tag_parameters(model)``           (re)sets the tags; needed after ``copy.deepcopy`` (it drops Parameter attributes).
``TieredLM(transformer, prior_tables, trainable, lowrank=None)``  the whole predictor: ``forward(x, rows, y)``
                                    -> per-target NLL of ``sum_k s_k T[rows_k] + softcap(l2)`` through
                                    ``golf.ops.tiered_loss`` (s = ``prior_scales(h)``, 1 without a gate; with a
                                    factored tier 1, ``golf.tiers.LowRank``, the rows come per batch);
                                    ``TieredLM.of(transformer, tiers)`` builds it from fitted tiers;
                                    ``priors_only()``: the same priors with tier 2 off (``NoResidual``, l2 = 0).
``make_prior_rows(tiers)``          x -> the tier rows of every position (``Tiers.prior_rows``; none with no tiers).
Building blocks, usable alone: ``rms_norm``, ``rope_cos_sin``, ``apply_rope``, ``bigram_buckets``,
``Attention`` (``attend`` exposes the post-XSA head outputs, the input of O), ``MLP``, ``Block``, ``SmearGate``,
``BigramHash``, ``copy_counts``, ``CopyHead``, ``PriorGate``.

Forward
-------
``x = tok_emb(ids) [+ bigram(ids)]``, then ``[smear(x, ids)]``, then parameter-free RMSNorm -> x0 (the
"channel" smear comes after the norm). Block l:
``x = mix0*x + mix1*x0; x += attn_scale*Attn(N(x)*s_l[, ve_l]); x += mlp_scale*W2(act(W1(N(x)*s_l)))`` with
``s_l = 1/sqrt(l+1)`` if ``ln_scale`` else 1 (no attention in layer 0 without ``layer0_attn``; ``ve_l``: the
value embedding in ``ve_layers``). U-Net: blocks 0..L//2-1 push their outputs; the following blocks first add
``skip_weights[i] * pop()`` (LIFO; with ``skip_gates`` a lerp) while the stack is non-empty. From
``parallel_start`` on, ``parallel_residual`` runs the blocks in parallel form ("gptj": one input for both
sub-layers; "two_lane": two streams, averaged at the end). Final RMSNorm, then the head GEMM, plus the copy
head's sparse logits when ``copy_head`` is on. With depth recurrence (``recur_layers``) the blocks run the
virtual stack of the current phase (``ModelConfig.virtual_maps``, ``Transformer.set_phase``): l above is the
virtual layer (its scalars, LN scale, XSA, VE slot and U-Net position), its matrices those of its physical layer.

Optimizer tags (attribute ``p._golf_group`` on every parameter)
--------------------------------------------------------------
``"embed"``   tok_emb, bigram table                       (AdamW, token lr)
``"muon"``    Q, K, V, O, MLP W1, W2 of every block       (Muon; one plain 2-D parameter per matrix)
``"scalar"``  gains, scales, resid_mix, skip weights, smear gate, copy gate, prior gate, bigram scale, and the bigram
              projection (2-D, but it trained with the scalar AdamW in the records, so it is tagged "scalar" too)
The untied output head (``tied_embedding=False`` only) is tagged ``"embed"``: golf.optim knows the groups muon,
embed, scalar, frozen. (The baseline gave an untied head its own Adam lr, 0.008; tied is the default here.)

Document hygiene (every component that mixes position t-1 into t resets at BOS and at the window start)
------------------------------------------------------------------------------------------------------
SmearGate: ``x_t += lam * sigmoid(w . x_t[:12]) * x_{t-1} * [tok_t != BOS]``, with x_{-1} = 0.
BigramHash: a position t uses the reserved bucket ``buckets-1`` when t == 0 *or* ``tok[t] == BOS``, i.e. exactly
where SmearGate is masked. So a BOS position never sees the previous document, and the token after a BOS hashes
the pair (tok, BOS), which depends only on the new document. The hash is computed in int64 (the records used
int32; identical for vocabularies below 2**31 / 36313, about 59k).
CopyHead: position t counts earlier positions j < t with tok[j] == tok[t] and no BOS in (j, t], inside the window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from golf import attention, ops
from golf.errors import ConfigError
from golf.tiers import LowRank, Tiers


ACTIVATIONS = ("relu2", "leaky_relu2")
ACTIVATION_SLOPES = {"relu2": 0.0, "leaky_relu2": 0.5}  # the negative slope before the square
FUSED_MLP = ("auto", "on", "off")
PRIOR_GATES = ("off", "fixed", "scalar", "gate")
INITS = ("orthogonal", "normal")
SMEAR_GATE_WIDTH = 12
# "bos": the later records' gate (a scalar per position from the first 12 channels, BOS-masked, identity at init);
# "channel": R1147's (PR #65): a per-channel sigmoid after the embedding norm, 0.5 at init
SMEAR_FORMS = ("bos", "channel")
PARALLEL_FORMS = ("off", "gptj", "two_lane")
HASH_PRIME_CUR, HASH_PRIME_PREV = 36313, 27191


def recur_phase_count(recur_layers, recur_passes) -> int:
    """Depth recurrence's phases beyond the plain stack: one per repeat pass, 0 without recurrence."""
    return recur_passes if recur_layers else 0


@dataclass
class ModelConfig:
    vocab_size: int
    num_layers: int = 9
    model_dim: int = 512
    num_heads: int = 8
    num_kv_heads: int = 4
    mlp_mult: float = 2.0
    activation: str = "relu2"
    rope_base: float = 1e4
    rope_dims: int | None = None          # None -> head_dim (full RoPE)
    qk_norm: bool = True
    q_gain_init: float = 1.5
    logit_softcap: float = 30.0           # stored for the loss op; never applied in forward
    tied_embedding: bool = True
    embed_init_std: float = 0.005
    init: str = "orthogonal"              # Q, K, V, W1 (and untied head is zero): "orthogonal" or "normal"
    unet_skips: bool = True
    # R1063: each U-Net skip enters as lerp(w * skip, x, sigmoid(g)) with a learned g per channel (zero-init: half
    # and half at init) instead of x + w * skip
    skip_gates: bool = False
    layer0_attn: bool = True              # False: layer 0 is MLP only (R1063's DISABLE_LAYER0_ATTN)
    # Parallel residuals from layer parallel_start on (both records: 7). "gptj" (PR #1412): x + attn(N x) +
    # mlp(N x). "two_lane" (R1063): attention reads lane 0, the MLP lane 1, each writes both lanes with learned
    # weights (post, init 1) after scaling them (resid, init sqrt(1.1)); the output is the lanes' mean.
    parallel_residual: str = "off"        # PARALLEL_FORMS
    parallel_start: int = 7
    # The sparse attention gate (records/2026-04-23_SP8192_CaseOps_SparseGate_..., kept by the 1.0611 stack):
    # head h's output times sigmoid(attn_gate_scale * W_h . x_t[:attn_gate_window]), x the attention's input,
    # W zero-init (0.5 at init)
    attn_gate: bool = False
    attn_gate_window: int = 12
    attn_gate_scale: float = 1.0
    ln_scale: bool = False
    xsa: bool | Sequence[int] = False     # True = every layer, or a list of layer indices
    smear_gate: bool = False
    smear_form: str = "bos"               # SMEAR_FORMS
    bos_id: int = 1
    bigram_buckets: int = 0               # 0 = BigramHash off
    bigram_dim: int = 112
    bigram_scale_init: float = 0.05
    # VE (R1147, PR #374): one shared token table of ve_dim, projected to the values' width and added to the V
    # projection of ve_layers (None: the last two layers, R1147's 9 and 10 of 11); 0 = off
    ve_dim: int = 0
    ve_layers: Sequence[int] | None = None
    # Depth recurrence (R1063, PR #1412): the physical layers recur_layers (one contiguous run) run again
    # recur_passes more times right after themselves, so the longest virtual stack is 0..end, then the run
    # recur_passes times more, then end+1..L-1 (virtual_maps). Phase k of the run uses k of the passes (golf.train
    # starts them: recur_at / recur_at_steps; Transformer.set_phase). Per virtual layer, as in R1063: attn_scale,
    # mlp_scale, resid_mix, q_gain, the LN scale 1/sqrt(v+1), XSA and ve_layers (indices over virtual layers) and the
    # U-Net (over the phase's virtual stack; skip weights for the longest). Per physical layer: Q, K, V, O, the MLP,
    # the attention gate, the two_lane lambdas and parallel_start. recur_untie_mlp: each repeat pass has its own
    # MLP, copied from the base layer's when the pass starts (R1063's REPEAT_UNTIE_MLP=full).
    recur_layers: Sequence[int] = ()
    recur_passes: int = 1
    recur_untie_mlp: bool = False
    # The MLP in training through golf::leaky_relu2_mlp (the activation fused into the GEMMs' epilogues, CUTLASS
    # on sm_90a): "auto" where the fused kernels run (golf.ops.fused_mlp_available), "on" everywhere the op has a
    # kernel (its CPU op: tests), "off" never. Evaluation and calibration run the plain path (the Hessian hooks).
    fused_mlp: str = "auto"
    # Under autocast, the residual stream from the embedding on in the autocast dtype (bf16), as the records keep it;
    # every scalar that meets it is cast to it. The master tables and weights stay fp32. Off: the stream is fp32.
    bf16_stream: bool = False
    copy_head: bool = False               # CopyHead: boosts what followed earlier occurrences of the current token
    copy_gate_init: float = 1.0
    prior_gate: str = "off"               # how the prior rows enter the logits (PriorGate): off | fixed | scalar | gate
    prior_columns: int = 0                # prior rows per position (set from the tiers by golf.train; 0: none)

    def __post_init__(self):
        def need(ok: bool, field: str, expected: str):
            if not ok:
                raise ConfigError(f"ModelConfig.{field}: expected {expected}, found {getattr(self, field)!r}")

        need(self.vocab_size >= 2, "vocab_size", ">= 2")
        need(self.num_layers >= 1, "num_layers", ">= 1")
        need(self.num_heads >= 1, "num_heads", ">= 1")
        need(self.model_dim >= 1 and self.model_dim % self.num_heads == 0, "model_dim",
             f"a positive multiple of num_heads={self.num_heads}")
        need(self.num_kv_heads >= 1 and self.num_heads % self.num_kv_heads == 0, "num_kv_heads",
             f"a positive divisor of num_heads={self.num_heads}")
        if self.rope_dims is None:
            self.rope_dims = self.head_dim
        need(self.rope_dims % 2 == 0 and 0 <= self.rope_dims <= self.head_dim, "rope_dims",
             f"an even number in [0, head_dim={self.head_dim}]")
        need(self.rope_base > 0, "rope_base", "> 0")
        need(int(self.mlp_mult * self.model_dim) >= 1, "mlp_mult", "mlp_mult * model_dim >= 1")
        need(self.activation in ACTIVATIONS, "activation", f"one of {ACTIVATIONS}")
        need(self.fused_mlp in FUSED_MLP, "fused_mlp", f"one of {FUSED_MLP}")
        need(self.init in INITS, "init", f"one of {INITS}")
        need(self.logit_softcap > 0, "logit_softcap", "> 0")
        need(self.embed_init_std > 0, "embed_init_std", "> 0")
        need(0 <= self.bos_id < self.vocab_size, "bos_id", f"an id in [0, vocab_size={self.vocab_size})")
        need(self.bigram_buckets == 0 or self.bigram_buckets >= 2, "bigram_buckets", "0 (off) or >= 2")
        need(self.bigram_dim >= 1, "bigram_dim", ">= 1")
        need(self.prior_gate in PRIOR_GATES, "prior_gate", f"one of {PRIOR_GATES}")
        need(self.prior_columns >= 0, "prior_columns", ">= 0")
        need(self.smear_form in SMEAR_FORMS, "smear_form", f"one of {SMEAR_FORMS}")
        need(self.parallel_residual in PARALLEL_FORMS, "parallel_residual", f"one of {PARALLEL_FORMS}")
        need(self.parallel_start >= 0, "parallel_start", ">= 0")
        need(1 <= self.attn_gate_window <= self.model_dim, "attn_gate_window", f"in [1, model_dim={self.model_dim}]")
        layers = list(self.recur_layers) if not isinstance(self.recur_layers, (str, bytes, int)) else None
        need(layers is not None and all(isinstance(i, int) and 0 <= i < self.num_layers for i in layers)
             and layers == (list(range(layers[0], layers[0] + len(layers))) if layers else []), "recur_layers",
             f"one ascending run of consecutive layer indices in [0, num_layers={self.num_layers}), or []")
        self.recur_layers = tuple(layers)
        need(isinstance(self.recur_passes, int) and self.recur_passes >= 1, "recur_passes", "an int >= 1")
        v = self.num_virtual
        need(self.ve_dim >= 0, "ve_dim", ">= 0 (0 = off)")
        if self.ve_layers is None:
            self.ve_layers = tuple(range(max(self.num_layers - 2, 0), self.num_layers))
        need(not isinstance(self.ve_layers, (str, bytes)) and all(
            isinstance(i, int) and 0 <= i < v for i in self.ve_layers), "ve_layers",
            f"virtual layer indices in [0, {v}) or null (layers num_layers-2 and num_layers-1)")
        self.ve_layers = tuple(self.ve_layers)
        need(not self.ve_dim or self.layer0_attn or 0 not in self.ve_layers, "ve_layers",
             "no layer 0 when layer0_attn is off (it has no values to add to)")
        if not isinstance(self.xsa, bool):
            layers = list(self.xsa)
            need(all(isinstance(i, int) and 0 <= i < v for i in layers), "xsa",
                 f"a bool or virtual layer indices in [0, {v})")

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.mlp_mult * self.model_dim)

    @property
    def recur_phases(self) -> int:
        return recur_phase_count(self.recur_layers, self.recur_passes)

    def virtual_maps(self) -> tuple[tuple[int, ...], ...]:
        """Per phase k = 0..recur_phases, the physical layer of each virtual layer: with recur_layers = [4, 5] of
        11, phase 1 is 0 1 2 3 4 5 4 5 6 7 8 9 10 (R1063), phase 2 adds 4 5 once more (PR #1412's two loops)."""
        if not self.recur_layers:
            return (tuple(range(self.num_layers)),)
        seg, end = list(self.recur_layers), self.recur_layers[-1] + 1
        return tuple(tuple(list(range(end)) + seg * k + list(range(end, self.num_layers)))
                     for k in range(self.recur_phases + 1))

    @property
    def num_virtual(self) -> int:
        """Virtual layers of the longest phase."""
        return self.num_layers + self.recur_phases * len(self.recur_layers)

    def xsa_layers(self) -> frozenset[int]:
        """The virtual layers with XSA."""
        if isinstance(self.xsa, bool):
            return frozenset(range(self.num_virtual)) if self.xsa else frozenset()
        return frozenset(self.xsa)


def tag_parameters(model: nn.Module) -> nn.Module:
    """Set ``p._golf_group`` on every parameter from its owner's ``golf_groups`` {attribute: group} map.

    The maps live on the modules because torch's Parameter.__deepcopy__ drops attributes: after copying a model
    (EMA shadow, checkpoint reload into a fresh object) call this again, as params_by_group does.
    """
    for mod_name, module in model.named_modules():
        declared = getattr(module, "golf_groups", {})
        for name, p in module.named_parameters(recurse=False):
            if name not in declared:
                raise ConfigError(f"parameter {mod_name + '.' if mod_name else ''}{name}: has no optimizer group")
            p._golf_group = declared[name]
    return model


def rms_norm(x: Tensor) -> Tensor:
    """Parameter-free RMSNorm over the last dim, computed in fp32 (bf16 sums of squares lose too much)."""
    return F.rms_norm(x.float(), (x.size(-1),)).to(x.dtype)


class FinalNorm(nn.Module):
    """The parameter-free RMSNorm of the last hidden state: the input of the head (golf.quant.collect_hessians
    hooks it for the tied embedding's Hessian)."""

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x)


class CastedLinear(nn.Module):
    """Bias-free linear whose weight stays fp32 (for the optimizer) and is cast to the activation dtype."""

    def __init__(self, in_features: int, out_features: int, group: str):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.golf_groups = {"weight": group}

    def weight_as(self, dtype: torch.dtype) -> Tensor:
        """The weight the forward multiplies by, in `dtype` (golf.quant.QATLinear puts it on the int6 grid first)."""
        return self.weight.to(dtype)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight_as(x.dtype))


def _init_matrix(w: Tensor, kind: str) -> None:
    if kind == "orthogonal":
        nn.init.orthogonal_(w, gain=1.0)
    else:  # same per-entry scale as an orthogonal matrix
        nn.init.normal_(w, std=1.0 / math.sqrt(w.size(1)))


# ---------------------------------------------------------------------------------------------------- RoPE

def rope_cos_sin(seq_len: int, rope_dims: int, base: float, device=None) -> tuple[Tensor, Tensor]:
    """cos, sin of shape [seq_len, rope_dims // 2] in fp32; frequencies are spread over the rotated dims only."""
    inv_freq = base ** (-torch.arange(0, rope_dims, 2, device=device, dtype=torch.float32) / max(rope_dims, 1))
    angles = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate-half RoPE on the first 2*cos.size(-1) dims of x [B, T, H, D]; the remaining dims pass unchanged."""
    half = cos.size(-1)
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    x1, x2, rest = x[..., :half], x[..., half:2 * half], x[..., 2 * half:]
    xf1, xf2 = x1.float(), x2.float()
    rotated = torch.cat((xf1 * cos - xf2 * sin, xf2 * cos + xf1 * sin), dim=-1).to(x.dtype)
    return torch.cat((rotated, rest), dim=-1)


# ---------------------------------------------------------------------------------------------------- blocks

class Attention(nn.Module):
    """Causal GQA attention with QK-norm, partial RoPE, learned per-head q gain, optional XSA and the optional
    sparse gate on each head's output."""

    golf_groups = {"q_gain": "scalar", "gate": "scalar"}

    def __init__(self, cfg: ModelConfig, xsa: bool):
        super().__init__()
        d, hd = cfg.model_dim, cfg.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, hd
        self.rope_dims, self.rope_base = cfg.rope_dims, cfg.rope_base
        self.qk_norm, self.xsa = cfg.qk_norm, xsa
        self.q = CastedLinear(d, cfg.num_heads * hd, "muon")
        self.k = CastedLinear(d, cfg.num_kv_heads * hd, "muon")
        self.v = CastedLinear(d, cfg.num_kv_heads * hd, "muon")
        self.o = CastedLinear(cfg.num_heads * hd, d, "muon")
        self.q_gain = nn.Parameter(torch.full((cfg.num_heads,), cfg.q_gain_init))
        self.gate = nn.Parameter(torch.zeros(cfg.num_heads, cfg.attn_gate_window)) if cfg.attn_gate else None
        self.gate_scale = cfg.attn_gate_scale
        for lin in (self.q, self.k, self.v):
            _init_matrix(lin.weight.data, cfg.init)
        nn.init.zeros_(self.o.weight)  # each block starts as the identity on the residual stream

    def attend(self, x: Tensor, ve: Tensor | None = None, q_gain: Tensor | None = None, xsa: bool | None = None
               ) -> tuple[Tensor, Tensor]:
        """Head outputs y [B, T, H, D] (after XSA; the input of O) and the values v [B, T, Hkv, D]; ve
        [B, T, Hkv * D] (the value embedding) is added to the V projection. q_gain, xsa: the virtual layer's, when
        it is not this module's own (depth recurrence)."""
        B, T, _ = x.shape
        H, Hkv, D = self.num_heads, self.num_kv_heads, self.head_dim
        q = self.q(x).view(B, T, H, D)
        k = self.k(x).view(B, T, Hkv, D)
        v = self.v(x)
        v = (v if ve is None else v + ve.to(v.dtype)).view(B, T, Hkv, D)
        if self.qk_norm:
            q, k = rms_norm(q), rms_norm(k)
        cos, sin = rope_cos_sin(T, self.rope_dims, self.rope_base, x.device)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q = q * (self.q_gain if q_gain is None else q_gain).to(q.dtype)[None, None, :, None]
        y = attention.causal(q, k, v)  # the run's backend (golf.attention)
        if self.xsa if xsa is None else xsa:
            y = exclusive_self_attention(y, v)
        if self.gate is not None:
            g = torch.sigmoid(self.gate_scale * F.linear(x[..., :self.gate.size(1)], self.gate.to(x.dtype)))
            y = y * g.unsqueeze(-1)
        return y, v

    def forward(self, x: Tensor, ve: Tensor | None = None, q_gain: Tensor | None = None, xsa: bool | None = None
                ) -> Tensor:
        y, _ = self.attend(x, ve, q_gain, xsa)
        return self.o(y.reshape(*y.shape[:2], -1))


def exclusive_self_attention(y: Tensor, v: Tensor) -> Tensor:
    """y <- y - (y . v_hat) v_hat per head, v_hat the token's own normalised value of its KV group.

    y [B, T, H, D], v [B, T, Hkv, D]; heads h = g*G + j share group g, so a reshape to (B, T, Hkv, G, D)
    lets v_hat broadcast without materialising repeated values.
    """
    B, T, H, D = y.shape
    Hkv = v.size(2)
    yg = y.reshape(B, T, Hkv, H // Hkv, D)
    v_hat = F.normalize(v.to(y.dtype), dim=-1).unsqueeze(3)
    yg = yg - (yg * v_hat).sum(-1, keepdim=True) * v_hat
    return yg.reshape(B, T, H, D)


class MLP(nn.Module):
    """proj(act(fc(x))), act(h) = leaky_relu(h, slope)² (slope 0: relu²). With grad enabled and `fused_mlp` on for
    x's device, one golf::leaky_relu2_mlp: the activation in the GEMMs' epilogues, pre and post saved for its own
    backward (the records' fused MLP, ANCHOR.md §7); the plain path otherwise, where fc and proj are called as
    modules (the Hessian hooks see their inputs)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = CastedLinear(cfg.model_dim, cfg.mlp_hidden, "muon")
        self.proj = CastedLinear(cfg.mlp_hidden, cfg.model_dim, "muon")
        self.slope = ACTIVATION_SLOPES[cfg.activation]
        # Decided here, not per call (a compiled forward reads two bools): "auto" fuses on the CUDA device if its
        # kernels run there.
        self.fused_everywhere = cfg.fused_mlp == "on"
        self.fused_on_cuda = self.fused_everywhere or (cfg.fused_mlp == "auto" and torch.cuda.is_available()
                                                       and ops.fused_mlp_available("cuda"))
        _init_matrix(self.fc.weight.data, cfg.init)
        nn.init.zeros_(self.proj.weight)

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and (self.fused_everywhere or self.fused_on_cuda and x.is_cuda):
            # The op takes one dtype: autocast's where it is on, as F.linear would cast to.
            dt = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
            return ops.leaky_relu2_mlp(x.to(dt), self.fc.weight_as(dt), self.proj.weight_as(dt), self.slope)
        h = self.fc(x)
        h = F.leaky_relu(h, self.slope) if self.slope else F.relu(h)
        return self.proj(h.square())


class Block(nn.Module):
    """Virtual layer `layer`: its scalars (attn_scale, mlp_scale, resid_mix, the LN scale, XSA; q_gain, its
    attention's own for layer < num_layers) and, for layer < num_layers (physical), physical layer `layer`'s
    matrices (attention, MLP) and two_lane lambdas. A virtual-only layer (depth recurrence) has no matrices: the
    forward takes them from the physical block it runs (`weights`) and, untied, a pass's own MLP (`mlp`)."""

    golf_groups = {"attn_scale": "scalar", "mlp_scale": "scalar", "resid_mix": "scalar", "lane_resid": "scalar",
                   "lane_post": "scalar", "q_gain": "scalar"}

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        d = cfg.model_dim
        physical = layer < cfg.num_layers
        self.xsa = layer in cfg.xsa_layers()
        # Without attention the block has none of its parameters (R1063 keeps them in its banks, unused).
        self.attn = Attention(cfg, xsa=self.xsa) if physical and (layer or cfg.layer0_attn) else None
        self.mlp = MLP(cfg) if physical else None
        self.q_gain = None if physical else nn.Parameter(torch.full((cfg.num_heads,), cfg.q_gain_init))
        self.attn_scale = nn.Parameter(torch.ones(d)) if self.attn is not None or not physical else None
        self.mlp_scale = nn.Parameter(torch.ones(d))
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(d), torch.zeros(d))))
        # Constant per layer, folded in at construction so the forward has no config branches.
        self.in_scale = 1.0 / math.sqrt(layer + 1) if cfg.ln_scale else 1.0
        form = cfg.parallel_residual if physical and layer >= cfg.parallel_start else "off"
        self.gptj = form == "gptj"
        self.lanes = form == "two_lane"
        # two_lane: per sub-layer (attention, MLP) the lanes' scale and the weight of its output in each lane
        self.lane_resid = nn.Parameter(torch.full((2,), math.sqrt(1.1))) if self.lanes else None
        self.lane_post = nn.Parameter(torch.ones(2, 2)) if self.lanes else None

    def mix(self, x: Tensor, x0: Tensor) -> Tensor:
        m = self.resid_mix.to(x.dtype)
        return m[0] * x + m[1] * x0

    def attend(self, w: "Block", x: Tensor, ve: Tensor | None) -> Tensor:
        """attn_scale * the attention of physical block w on x, with this virtual layer's q gain and XSA."""
        q_gain = self.attn.q_gain if self.attn is not None else self.q_gain
        return self.attn_scale.to(x.dtype) * w.attn(x, ve, q_gain, self.xsa)

    def forward(self, x: Tensor, x0: Tensor, ve: Tensor | None = None, weights: "Block | None" = None,
                mlp: nn.Module | None = None) -> Tensor:
        """weights: the physical block whose matrices run here (this one when None); mlp: a repeat pass's own."""
        w = self if weights is None else weights
        mlp = w.mlp if mlp is None else mlp
        x = self.mix(x, x0)
        attn = self.attend(w, rms_norm(x) * self.in_scale, ve) if w.attn is not None else 0.0
        mlp_scale = self.mlp_scale.to(x.dtype)
        if w.gptj:  # the MLP reads the block's input, not the attention's output
            return x + attn + mlp_scale * mlp(rms_norm(x) * self.in_scale)
        x = x + attn
        return x + mlp_scale * mlp(rms_norm(x) * self.in_scale)

    def forward_lanes(self, lane0: Tensor, lane1: Tensor, x0: Tensor, ve: Tensor | None = None,
                      weights: "Block | None" = None, mlp: nn.Module | None = None) -> tuple[Tensor, Tensor]:
        """two_lane (R1063): attention reads lane 0 and the MLP lane 1 (each mixed with x0 first); each
        sub-layer then writes lane_k <- resid * lane_k + post[k] * out, into both lanes (the physical block's
        lambdas, as R1063 indexes them)."""
        w = self if weights is None else weights
        mlp = w.mlp if mlp is None else mlp
        r, p = w.lane_resid.to(lane0.dtype), w.lane_post.to(lane0.dtype)
        if w.attn is not None:
            a = self.attend(w, rms_norm(self.mix(lane0, x0)) * self.in_scale, ve)
            lane0, lane1 = r[0] * lane0 + p[0, 0] * a, r[0] * lane1 + p[0, 1] * a
        m = self.mlp_scale.to(lane1.dtype) * mlp(rms_norm(self.mix(lane1, x0)) * self.in_scale)
        return r[1] * lane0 + p[1, 0] * m, r[1] * lane1 + p[1, 1] * m


# ---------------------------------------------------------------------------------------------------- input features

class SmearGate(nn.Module):
    """x_t <- x_t + lam * sigmoid(w . x_t[:12]) * x_{t-1} * [tok_t != BOS]; zero-init, so identity at init."""

    golf_groups = {"w": "scalar", "lam": "scalar"}

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.width = min(SMEAR_GATE_WIDTH, cfg.model_dim)
        self.bos_id = cfg.bos_id
        self.w = nn.Parameter(torch.zeros(self.width))
        self.lam = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor, ids: Tensor) -> Tensor:
        gate = torch.sigmoid(x[..., :self.width] @ self.w.to(x.dtype))                 # [B, T]
        gate = gate * (ids != self.bos_id).to(x.dtype)                                 # BOS never sees the old doc
        prev = F.pad(x[:, :-1], (0, 0, 1, 0))                                          # x_{-1} = 0
        return x + self.lam.to(x.dtype) * gate.unsqueeze(-1) * prev


class ChannelSmear(nn.Module):
    """R1147's smear (PR #65), after the embedding norm: x_t <- (1 - s) * x_t + s * x_{t-1}, s = sigmoid(g) per
    channel, g zero-init (s = 0.5: not the identity at init), x_{-1} = 0."""

    golf_groups = {"g": "scalar"}

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.g = nn.Parameter(torch.zeros(cfg.model_dim))

    def forward(self, x: Tensor) -> Tensor:
        s = torch.sigmoid(self.g.to(x.dtype))
        return (1 - s) * x + s * F.pad(x[:, :-1], (0, 0, 1, 0))


class ValueEmbedding(nn.Module):
    """VE (R1147, PR #374): scale * P(E[id]), E [V, ve_dim] N(0, 0.01), P ve_dim -> the values' width orthogonal
    (the records' init pass), scale 0.1; layer j of ve_layers adds it times its own layer_scales[j] (init 1)."""

    golf_groups = {"table": "embed", "scale": "scalar", "layer_scales": "scalar"}

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.table = nn.Parameter(torch.randn(cfg.vocab_size, cfg.ve_dim) * 0.01)
        self.proj = CastedLinear(cfg.ve_dim, cfg.num_kv_heads * cfg.head_dim, "scalar")
        nn.init.orthogonal_(self.proj.weight, gain=1.0)
        self.scale = nn.Parameter(torch.tensor(0.1))
        self.layer_scales = nn.Parameter(torch.ones(len(cfg.ve_layers)))
        self.slot = {layer: j for j, layer in enumerate(cfg.ve_layers)}

    def forward(self, ids: Tensor) -> Tensor:
        """The shared embedding [B, T, kv_dim], before the per-layer scales."""
        return self.scale * self.proj(F.embedding(ids, self.table))

    def at(self, shared: Tensor, layer: int) -> Tensor | None:
        j = self.slot.get(layer)
        return None if j is None else shared * self.layer_scales[j].to(shared.dtype)


def bigram_buckets(ids: Tensor, buckets: int, bos_id: int) -> Tensor:
    """Bucket of the pair (tok[t-1], tok[t]); position 0 and BOS positions take the reserved bucket buckets-1."""
    cur = ids.long()
    prev = F.pad(cur[:, :-1], (1, 0))
    h = torch.bitwise_xor(HASH_PRIME_CUR * cur, HASH_PRIME_PREV * prev) % (buckets - 1)
    reserved = (cur == bos_id)
    reserved[:, 0] = True
    return torch.where(reserved, torch.full_like(h, buckets - 1), h)


class BigramHash(nn.Module):
    """Hashed bigram embedding added to the token embedding: scale * P(E_b[bucket]); E_b zero-init, P orthogonal
    (the records' init pass re-initialises it so: with both at zero neither would ever get a gradient)."""

    golf_groups = {"table": "embed", "scale": "scalar"}

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.buckets, self.bos_id = cfg.bigram_buckets, cfg.bos_id
        self.table = nn.Parameter(torch.zeros(cfg.bigram_buckets, cfg.bigram_dim))
        self.proj = CastedLinear(cfg.bigram_dim, cfg.model_dim, "scalar")
        nn.init.orthogonal_(self.proj.weight, gain=1.0)
        self.scale = nn.Parameter(torch.tensor(cfg.bigram_scale_init))

    def forward(self, ids: Tensor) -> Tensor:
        e = F.embedding(bigram_buckets(ids, self.buckets, self.bos_id), self.table)
        return self.scale * self.proj(e)


def copy_counts(ids: Tensor, bos_id: int, vocab_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """What followed earlier occurrences of each position's token: for ids [B, T], the triples (n, v, c) with
    n = b*T + t, c = #{j < t : ids[b, j] == ids[b, t], ids[b, j+1] == v, no BOS in (j, t]} > 0, sorted by (n, v).

    Causal (j + 1 <= t: only tokens up to t are read), reset at BOS and at the window start like every
    other feature. Dense [B, T, T] comparisons, so the cost grows with T^2: fine at the cpu preset's 256."""
    b_, t_ = ids.shape
    pos = torch.arange(t_, device=ids.device)
    doc = torch.cumsum((ids == bos_id).int(), dim=1)
    match = ((ids[:, :, None] == ids[:, None, :]) & (pos[:, None] > pos[None, :])
             & (doc[:, :, None] == doc[:, None, :]))
    b, t, j = match.nonzero(as_tuple=True)
    keys, counts = torch.unique((b * t_ + t) * vocab_size + ids[b, j + 1].long(), return_counts=True)  # sorted
    return keys // vocab_size, keys % vocab_size, counts


class CopyHead(nn.Module):
    """Tier-2 logits for the tokens that followed earlier occurrences of the current token in the window:
    l2[t, v] += (h_t . w + b) * log(1 + c[t, v]) with c from ``copy_counts``; w zero-init, b = copy_gate_init.

    The two-layer induction circuit that does this in a deep transformer is out of reach of the one-layer cpu
    preset; as a head its cost is one [B, T, T] comparison and a gather. Tiers 0-1 see two tokens back at most,
    so this is context they cannot have."""

    golf_groups = {"w": "scalar", "b": "scalar"}

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.bos_id, self.vocab_size = cfg.bos_id, cfg.vocab_size
        self.w = nn.Parameter(torch.zeros(cfg.model_dim))
        self.b = nn.Parameter(torch.tensor(cfg.copy_gate_init))

    def forward(self, h: Tensor, ids: Tensor, keep: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(rows, cols, vals): the logits to add at [rows, cols] of the [N, V] logits of the positions `keep`
        [B, T] selects (all when None) in row-major order; rows ascending, vals fp32."""
        n, cols, counts = copy_counts(ids, self.bos_id, self.vocab_size)
        gate = h.reshape(-1, h.size(-1)).float() @ self.w.float() + self.b.float()            # [B*T]
        vals = gate[n] * torch.log1p(counts.float())
        if keep is not None:
            flat = keep.reshape(-1)
            chosen = flat[n]
            n, cols, vals = (torch.cumsum(flat.long(), 0) - 1)[n[chosen]], cols[chosen], vals[chosen]
        return n, cols, vals


class PriorGate(nn.Module):
    """The weight of each prior row at each position: s[..., k] = anneal * a_k * (1 + tanh(w_k . h / sqrt(d) + b_k)).

    h is tier 2's final hidden state at the position, so the weights are causal whenever tier 2 is. Modes
    (``ModelConfig.prior_gate``): "fixed" keeps only ``anneal`` (a buffer that golf.train's prior_anneal
    schedule writes; 1 otherwise), "scalar" adds a learned a_k per prior row, "gate" also the per-position
    gate. a = 1, w = 0, b = 0 at init: the priors enter at full weight, as without a gate. A fixed additive
    prior is a handicap once the transformer predicts better than it does; these let the model turn it down
    (or up) where it knows better."""

    golf_groups = {"scale": "scalar", "w": "scalar", "b": "scalar"}

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        k = cfg.prior_columns
        self.columns, self.mode = k, cfg.prior_gate
        self.register_buffer("anneal", torch.ones(()))
        self.scale = nn.Parameter(torch.ones(k)) if self.mode in ("scalar", "gate") else None
        self.w = nn.Parameter(torch.zeros(k, cfg.model_dim)) if self.mode == "gate" else None
        self.b = nn.Parameter(torch.zeros(k)) if self.mode == "gate" else None
        # h is RMS-normalised (entries ~1): without 1/sqrt(d), Adam's per-entry steps of ~lr would move w . h by
        # ~lr * d per step and saturate the tanh within a few steps.
        self.w_scale = 1.0 / math.sqrt(cfg.model_dim)

    def forward(self, h: Tensor) -> Tensor:
        """h [..., d] -> fp32 [..., K]."""
        s = self.anneal.float().expand(self.columns)
        if self.scale is not None:
            s = s * self.scale.float()
        if self.w is None:
            return s.expand(*h.shape[:-1], self.columns).contiguous()  # the kernels read it row-major
        return s * (1.0 + torch.tanh(F.linear(h.float(), self.w.float() * self.w_scale, self.b.float())))


# ---------------------------------------------------------------------------------------------------- model

class Transformer(nn.Module):
    golf_groups = {"skip_weights": "scalar", "skip_gates": "scalar"}

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.final_norm = FinalNorm()  # a module so that a hook sees the head's input (the embedding's Hessian)
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.model_dim)
        nn.init.normal_(self.tok_emb.weight, std=cfg.embed_init_std)
        self.tok_emb.golf_groups = {"weight": "embed"}
        self.bigram = BigramHash(cfg) if cfg.bigram_buckets else None
        self.smear = (ChannelSmear(cfg) if cfg.smear_form == "channel" else SmearGate(cfg)) if cfg.smear_gate \
            else None
        self.ve = ValueEmbedding(cfg) if cfg.ve_dim else None
        self.copy = CopyHead(cfg) if cfg.copy_head else None
        self.prior_gate = PriorGate(cfg) if cfg.prior_gate != "off" and cfg.prior_columns else None
        self.blocks = nn.ModuleList(Block(cfg, v) for v in range(cfg.num_virtual))
        # Depth recurrence: the phases' virtual -> physical maps; untied, one MLP per repeat pass and repeated layer
        # (zero until its pass starts and set_phase copies the base layer's into it, as R1063 does)
        self.virtual_maps = cfg.virtual_maps()
        self.recur_mlps = None
        if cfg.recur_phases and cfg.recur_untie_mlp:
            self.recur_mlps = nn.ModuleList(MLP(cfg) for _ in range(cfg.recur_phases * len(cfg.recur_layers)))
            for mlp in self.recur_mlps:
                nn.init.zeros_(mlp.fc.weight)
        self.phase = 0
        if cfg.recur_phases:  # the phase in the state dict: checkpoints and artifacts resume and score in it
            self.register_buffer("recur_phase", torch.zeros((), dtype=torch.long))
            self.register_load_state_dict_post_hook(lambda module, keys: module._read_phase())
        # U-Net: the first V//2 virtual blocks push, the rest pop LIFO (V: the phase's virtual layers); with odd V the
        # last decoder block has no skip. Skip weights for the longest phase.
        skips = cfg.num_virtual // 2 if cfg.unet_skips else 0
        self.skip_weights = nn.Parameter(torch.ones(skips, cfg.model_dim)) if skips else None
        self.skip_gates = nn.Parameter(torch.zeros(skips, cfg.model_dim)) if skips and cfg.skip_gates else None
        self.head = None
        if not cfg.tied_embedding:
            self.head = CastedLinear(cfg.model_dim, cfg.vocab_size, "embed")
            nn.init.zeros_(self.head.weight)
        tag_parameters(self)

    @property
    def head_weight(self) -> Tensor:
        return self.tok_emb.weight if self.head is None else self.head.weight

    @property
    def softcap(self) -> float:
        return self.cfg.logit_softcap

    def embed(self, ids: Tensor) -> Tensor:
        """x0: token embedding (+ bigram hash, then the "bos" smear) through the parameter-free RMSNorm (then the
        "channel" smear, which R1147 applies after it)."""
        x = self.tok_emb(ids)
        if self.bigram is not None:
            x = x + self.bigram(ids)
        if isinstance(self.smear, ChannelSmear):
            return self.to_stream(self.smear(rms_norm(x)))
        if self.smear is not None:
            x = self.smear(x, ids)
        return self.to_stream(rms_norm(x))

    def to_stream(self, x0: Tensor) -> Tensor:
        """x0 in the residual stream's dtype: the autocast dtype under autocast with `bf16_stream`, else as is."""
        if self.cfg.bf16_stream and torch.is_autocast_enabled(x0.device.type):
            return x0.to(torch.get_autocast_dtype(x0.device.type))
        return x0

    def set_phase(self, phase: int) -> None:
        """Run the virtual stack of recurrence phase `phase` (0: the plain stack) from now on. A repeat pass that
        starts here first gets its untied MLP copied from the base layer's (R1063's activation)."""
        if not 0 <= phase < len(self.virtual_maps):
            raise ConfigError(f"recurrence phase {phase}: this model has phases 0..{len(self.virtual_maps) - 1}")
        if self.recur_mlps is not None and phase > self.phase:
            seg = self.cfg.recur_layers
            with torch.no_grad():
                for k in range(self.phase + 1, phase + 1):
                    for layer in seg:
                        self.recur_mlp(k, layer).load_state_dict(self.blocks[layer].mlp.state_dict())
        self.phase = phase
        if self.cfg.recur_phases:
            self.recur_phase.fill_(phase)

    def recur_mlp(self, k: int, layer: int) -> "MLP":
        """The untied MLP of physical layer `layer` in repeat pass k >= 1."""
        seg = self.cfg.recur_layers
        return self.recur_mlps[(k - 1) * len(seg) + layer - seg[0]]

    def _read_phase(self) -> None:
        self.phase = int(self.recur_phase)

    def hidden(self, ids: Tensor) -> Tensor:
        x0 = self.embed(ids)
        x, skips, lanes = x0, [], None  # lanes: two_lane's pair, from its first block on
        shared_ve = self.ve(ids) if self.ve is not None else None
        stack = self.virtual_maps[self.phase]
        encoder = len(stack) // 2 if self.skip_weights is not None else 0
        passes: dict[int, int] = {}  # physical layer -> passes so far
        for v, layer in enumerate(stack):
            block, w = self.blocks[v], self.blocks[layer]
            n = passes[layer] = passes.get(layer, -1) + 1
            mlp = self.recur_mlp(n, layer) if n and self.recur_mlps is not None else None
            ve = None if shared_ve is None else self.ve.at(shared_ve, v)
            if w.lanes and lanes is None:
                lanes = (x, x)
            if v >= encoder and skips:
                skip, j = skips.pop(), v - encoder
                if lanes is None:
                    x = self.skip(x, skip[1] if isinstance(skip, tuple) else skip, j)
                else:
                    pair = skip if isinstance(skip, tuple) else (skip, skip)
                    lanes = (self.skip(lanes[0], pair[0], j), self.skip(lanes[1], pair[1], j))
            if lanes is None:
                x = block(x, x0, ve, w, mlp)
            else:
                lanes = block.forward_lanes(*lanes, x0, ve, w, mlp)
            if v < encoder:
                skips.append(x if lanes is None else lanes)
        return self.final_norm(x if lanes is None else 0.5 * (lanes[0] + lanes[1]))

    def skip(self, x: Tensor, skip: Tensor, j: int) -> Tensor:
        """The U-Net skip j into the decoder stream x: x + w_j * skip, or with skip gates
        lerp(w_j * skip, x, sigmoid(g_j)) (R1063)."""
        scaled = self.skip_weights[j].to(x.dtype) * skip
        if self.skip_gates is None:
            return x + scaled
        return torch.lerp(scaled, x, torch.sigmoid(self.skip_gates[j]).to(x.dtype))

    def copy_logits(self, h: Tensor, ids: Tensor, keep: Tensor | None = None):
        """The copy head's sparse logits (``CopyHead.forward``), or None without one."""
        return None if self.copy is None else self.copy(h, ids, keep)

    def prior_scales(self, h: Tensor) -> Tensor | None:
        """The prior rows' weights at the positions of h [..., d]: fp32 [..., K], or None without a gate (weight 1)."""
        return None if self.prior_gate is None else self.prior_gate(h)

    def with_copy(self, logits: Tensor, h: Tensor, ids: Tensor) -> Tensor:
        """logits [B, T, V] (the head GEMM's) plus the copy head's sparse logits; unchanged without one."""
        extra = self.copy_logits(h, ids)
        if extra is None:
            return logits
        rows, cols, vals = extra
        flat = logits.reshape(-1, logits.size(-1))
        return flat.index_put((rows, cols), vals.to(flat.dtype), accumulate=True).view_as(logits)

    def forward(self, ids: Tensor) -> Tensor:
        h = self.hidden(ids)
        return self.with_copy(F.linear(h, self.head_weight.to(h.dtype)), h, ids)


def param_counts(model: Transformer) -> dict[str, int]:
    """Parameter count per top-level component (tok_emb, bigram, smear, ve, copy, prior_gate, blocks, skip_weights,
    skip_gates, head) and total."""
    counts = {"tok_emb": 0, "bigram": 0, "smear": 0, "ve": 0, "copy": 0, "blocks": 0, "skip_weights": 0, "head": 0}
    for name, p in model.named_parameters():
        key = name.split(".")[0]
        counts[key] = counts.get(key, 0) + p.numel()
    counts["total"] = sum(counts.values())
    return counts


def params_by_group(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Parameters keyed by optimizer group; re-tags first, so it also works on a deep copy."""
    groups: dict[str, list[nn.Parameter]] = {}
    for p in tag_parameters(model).parameters():
        groups.setdefault(p._golf_group, []).append(p)
    return groups


# ---------------------------------------------------------------------------------------------------- tiered


class TieredLM(nn.Module):
    """forward(x, rows, y[, grad_weight]) -> per-target NLL [B*T] fp32 of the summed logits l0 + l1 + softcap(l2).

    prior_tables is a Parameter (tagged "embed": AdamW) when trainable, else a plain tensor outside
    state_dict, EMA and DDP (it never changes); so is a factored tier 1's `lowrank` (golf.tiers.LowRank), never
    trainable. prior_free > 0 adds, to the training objective only (grad_weight given), prior_free times the NLL
    of tier 2's logits alone: tier 2 then has to learn the whole distribution, not only what the priors miss,
    while the prediction stays the sum."""

    def __init__(self, transformer: Transformer, tables: torch.Tensor, trainable: bool, prior_free: float = 0.0,
                 lowrank: LowRank | None = None):
        super().__init__()
        if trainable and lowrank is not None:
            raise ConfigError("tier1_train: a factored tier 1 (tiers.tier1_form) trains no prior rows; set "
                              "tiers.tier1_form=dense or leave tier1_train off")
        self.transformer = transformer
        self.prior_free = float(prior_free)
        self.lowrank = lowrank
        if trainable:
            self.prior_tables = nn.Parameter(tables)
            self.prior_tables._golf_group = "embed"
        else:
            self.prior_tables = tables

    @classmethod
    def of(cls, transformer: Transformer, tiers: Tiers | None, device="cpu", trainable: bool = False,
           prior_free: float = 0.0) -> "TieredLM":
        """The predictor of fitted tiers (None: --baseline, no prior rows) on `device`."""
        v = transformer.head_weight.shape[0]
        tables = tiers.prior_tables() if tiers is not None else torch.zeros(0, v)
        lowrank = tiers.lowrank() if tiers is not None else None
        return cls(transformer, tables.float().to(device), trainable, prior_free,
                   None if lowrank is None else lowrank.to(device))

    def tables_for(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """(prior_tables, prior_rows) the loss ops read at rows [N, K]: as they are, or with a factored tier 1
        its rows for these positions after the dense ones (golf.tiers.LowRank.batch_tables)."""
        if self.lowrank is None:
            return self.prior_tables, rows
        return self.lowrank.batch_tables(self.prior_tables, rows)

    def forward(self, x: torch.Tensor, rows: torch.Tensor, y: torch.Tensor,
                grad_weight: float | None = None) -> torch.Tensor:
        """grad_weight: the training loss is grad_weight * nll.sum(); given, the loss kernel writes the logits'
        gradient in its forward pass (ops.tiered_nll). A prior gate's weights reach the ops as prior_scales."""
        t = self.transformer
        h = t.hidden(x)
        logits2 = t.with_copy(F.linear(h, t.head_weight.to(h.dtype)), h, x)
        k = rows.size(-1)
        scales = t.prior_scales(h)
        tables, rows = self.tables_for(rows.reshape(x.numel(), k))
        args = (logits2.reshape(-1, logits2.size(-1)), tables, rows, y.reshape(-1), t.softcap)
        scales = None if scales is None else scales.reshape(x.numel(), k)
        if grad_weight is None:
            return ops.tiered_loss(*args, scales)[0]
        nll = ops.tiered_nll(*args, grad_weight, scales)
        if self.prior_free > 0:  # the same op with no prior rows: softcap(l2) alone
            alone = args[:2] + (args[2][:, :0],) + args[3:]
            nll = nll + self.prior_free * ops.tiered_nll(*alone, grad_weight * self.prior_free)
        return nll

    def priors_only(self) -> "TieredLM":
        """The same predictor with tier 2 switched off (l2 = 0): tiers 0+1 alone, sharing these priors."""
        zero = NoResidual(self.prior_tables.size(1), self.transformer.softcap).to(self.prior_tables.device)
        return TieredLM(zero, self.prior_tables.detach(), trainable=False, lowrank=self.lowrank)


class NoResidual(nn.Module):
    """Tier 2 switched off: l2 = 0 at every position. It has the Transformer interface that golf.evaluate reads
    (hidden, head_weight, softcap, copy_logits, with_copy), with a 1-wide zero hidden state and a zero head."""

    def __init__(self, vocab_size: int, softcap: float):
        super().__init__()
        self.register_buffer("head_weight", torch.zeros(vocab_size, 1), persistent=False)
        self.softcap = softcap

    def hidden(self, ids: Tensor) -> Tensor:
        return self.head_weight.new_zeros(*ids.shape, 1)

    def copy_logits(self, h: Tensor, ids: Tensor, keep: Tensor | None = None):
        return None

    def prior_scales(self, h: Tensor):
        return None

    def with_copy(self, logits: Tensor, h: Tensor, ids: Tensor) -> Tensor:
        return logits

    def forward(self, ids: Tensor) -> Tensor:
        return self.head_weight.new_zeros(*ids.shape, self.head_weight.shape[0])


def make_prior_rows(tiers: Tiers | None):
    """x [B, T] -> int32 [B, T, K]: the prior_tables rows for predicting y[:, t] = the token after x[:, t],
    built from x alone (Tiers.prior_rows). K = 0 with --baseline."""
    if tiers is None:
        return lambda x: torch.empty(*x.shape, 0, dtype=torch.int32, device=x.device)
    return tiers.prior_rows
