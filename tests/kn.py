"""Kneser-Ney count references (interpolated, discount 0.75, unbounded tables): the bar tiers 0+1 are held to.

Contexts come from golf.tiers.context (reset at BOS and at the window start), so the references and the
tiers condition on exactly the same tokens.
"""

from __future__ import annotations

import numpy as np
import torch

from golf.tiers import context

D = 0.75


def _cont_unigram(prev: np.ndarray, nxt: np.ndarray, v: int) -> np.ndarray:
    """Continuation unigram: distinct left contexts of each token, add-half smoothed."""
    pairs = np.unique(prev * v + nxt)
    cont = np.bincount(pairs % v, minlength=v).astype(np.float64) + 0.5
    return cont / cont.sum()


class KneserNey:
    """Interpolated KN bigram (order=2) or trigram (order=3) fit on a token stream."""

    def __init__(self, ids: torch.Tensor, vocab, order: int):
        self.v, self.order, self.vocab = vocab.vocab_size, order, vocab
        ctx = context(ids.long(), vocab)
        p1, p2, y = ctx.prev1.numpy(), ctx.prev2.numpy(), ids.long().numpy()
        keep = p1 >= 0
        v = self.v
        self.uni = _cont_unigram(p1[keep], y[keep], v)
        big = p1[keep] * v + y[keep]
        self.bi_keys, self.bi_counts = np.unique(big, return_counts=True)
        self.bi_total = np.bincount(self.bi_keys // v, weights=self.bi_counts, minlength=v)
        self.bi_types = np.bincount(self.bi_keys // v, minlength=v).astype(np.float64)
        if order == 3:
            k3 = p2 >= 0
            # Middle order uses continuation counts: distinct u before (v, w).
            tri = (p2[k3] * v + p1[k3]) * v + y[k3]
            self.tri_keys, self.tri_counts = np.unique(tri, return_counts=True)
            ctx_keys = self.tri_keys // v
            self.ctx_keys, ctx_idx = np.unique(ctx_keys, return_inverse=True)
            self.ctx_total = np.bincount(ctx_idx, weights=self.tri_counts).astype(np.float64)
            self.ctx_types = np.bincount(ctx_idx).astype(np.float64)
            # N1+(. v w): distinct u seen before (v, w), i.e. distinct (u, v, w) keys per (v, w).
            vw = self.tri_keys % (v * v)
            self.mid_keys, self.mid_cont = np.unique(vw, return_counts=True)
            self.mid_total = np.bincount(self.mid_keys // v, weights=self.mid_cont, minlength=v)
            self.mid_types = np.bincount(self.mid_keys // v, minlength=v).astype(np.float64)

    @staticmethod
    def _lookup(keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
        idx = np.searchsorted(keys, query)
        idx_c = np.minimum(idx, len(keys) - 1)
        return np.where(keys[idx_c] == query, values[idx_c], 0).astype(np.float64)

    def _bigram(self, p1, y, keys, counts, total, types) -> np.ndarray:
        c = self._lookup(keys, counts, p1 * self.v + y)
        t, n = total[p1], types[p1]
        p = (np.maximum(c - D, 0) + D * n * self.uni[y]) / np.maximum(t, 1)
        return np.where(t > 0, p, self.uni[y])

    def prob(self, ids: torch.Tensor) -> np.ndarray:
        """p(ids[t] | context) for t = 1..N-1 of a stream read as one window."""
        ctx = context(ids.long(), self.vocab)
        p1, p2, y = ctx.prev1.numpy()[1:], ctx.prev2.numpy()[1:], ids.long().numpy()[1:]
        if self.order == 2:
            return self._bigram(p1, y, self.bi_keys, self.bi_counts, self.bi_total, self.bi_types)
        lower = self._bigram(p1, y, self.mid_keys, self.mid_cont, self.mid_total, self.mid_types)
        v = self.v
        has2 = p2 >= 0
        ck = np.where(has2, p2 * v + p1, 0)
        c = np.where(has2, self._lookup(self.tri_keys, self.tri_counts, ck * v + y), 0)
        t = np.where(has2, self._lookup(self.ctx_keys, self.ctx_total, ck), 0)
        n = np.where(has2, self._lookup(self.ctx_keys, self.ctx_types, ck), 0)
        p = (np.maximum(c - D, 0) + D * n * lower) / np.maximum(t, 1)
        # Unseen or absent two-token context: the bigram KN with raw counts.
        bigram = self._bigram(p1, y, self.bi_keys, self.bi_counts, self.bi_total, self.bi_types)
        return np.where(t > 0, p, bigram)
