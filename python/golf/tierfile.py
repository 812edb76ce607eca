"""Tiers fit once and shared by many runs (golf.experiment): the file, and the check that it fits a run.

    info = fit_tiers_file(cfg, path)      # read the train prefix, fit tiers 0+1 as golf.train would, save
    tiers, info = read_tiers_file(path, cfg, vocab_size)   # ConfigError if the file was fit for other settings

A run given `tiers_file` loads the tiers instead of fitting them and is charged the seconds the fit took
(`info["seconds"]`: reading the prefix and fitting), so its training loop gets the budget a run that fit its own
tiers would have had. The fit is deterministic given its settings except for the clock-bound tier-1 refinement
(`tiers.refine_seconds`); sharing it removes that noise from a comparison of arms.

File (torch.save, weights_only=False): format, tiers (a golf.tiers.Tiers), key (what the fit depends on:
the tier settings, tier_fit_tokens, the vocabulary size and the train shards' names and sizes), seconds.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import torch

from golf.data import find_shards, load_tokenizer, read_fit_prefix
from golf.errors import ConfigError
from golf.tiers import Tiers, Vocab, fit_tiers

FORMAT = "golf-tiers-1"


def fit_key(cfg, vocab_size: int) -> dict:
    """What a tier fit depends on (cfg: a golf.config.TrainConfig)."""
    files = find_shards(cfg.data_path, "train")
    return {"tiers": dataclasses.asdict(cfg.tiers), "tier_fit_tokens": cfg.tier_fit_tokens, "vocab_size": vocab_size,
            "train_files": [[Path(f).name, os.path.getsize(f)] for f in files]}


def fit_tiers_file(cfg, path) -> dict:
    """Fit the tiers cfg asks for on its train prefix and save them to path (atomically); returns the file's
    key and seconds."""
    sp = load_tokenizer(cfg.tokenizer_path, cfg.vocab_size)
    t = time.perf_counter()
    ids = read_fit_prefix(find_shards(cfg.data_path, "train"), cfg.tier_fit_tokens, sp.vocab_size())
    read_s = time.perf_counter() - t
    t = time.perf_counter()
    tiers = fit_tiers(ids, Vocab.from_tokenizer(sp), dataclasses.replace(cfg.tiers))
    fit_s = time.perf_counter() - t
    info = {"key": fit_key(cfg, sp.vocab_size()), "seconds": {"read": read_s, "fit": fit_s, **tiers.fit_seconds},
            "refine_steps": tiers.refine_steps, "fit_tokens": ids.numel()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": FORMAT, "tiers": tiers, **info}, tmp)
    os.replace(tmp, path)
    return info


def read_tiers_file(path, cfg, vocab_size: int) -> tuple[Tiers, dict]:
    """The tiers in path and the file's info; ConfigError naming the setting when they were fit for another run."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError) as exc:
        raise ConfigError(f"tiers_file {path}: cannot read it ({exc})") from exc
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise ConfigError(f"tiers_file {path}: not a golf tiers file (expected format {FORMAT})")
    want = fit_key(cfg, vocab_size)
    for field, value in want.items():
        if saved["key"].get(field) != value:
            raise ConfigError(f"tiers_file {path}: fit with {field}={saved['key'].get(field)!r}, but this run has "
                              f"{value!r}")
    return saved["tiers"], {k: saved[k] for k in ("key", "seconds", "refine_steps", "fit_tokens")}
