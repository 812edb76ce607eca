"""The data tools a training run does not need: tokenise documents into challenge shards (`prepare`), fetch the
challenge's shards (`download`, golf.download), and validate and count shards (`stats`).

    prepare(docs_path, tokenizer_path, out_dir, val_docs, shard_tokens=10**8, prefix="fineweb", overwrite=False,
            allow_no_train=False) -> dict
        the challenge's export: [BOS] + ids per document, no EOS, the first `val_docs` documents to
        {prefix}_val_*, the rest to {prefix}_train_*, shards of `shard_tokens` tokens; refuses, before writing
        anything, an out_dir that already holds {prefix} shards and a val_docs that leaves no training document
    split_stats(files, tables) -> dict    files, tokens, docs (BOS count), targets, bytes of one split

Command line: python -m golf.datatools {prepare, download, stats} --help
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
from pathlib import Path

import numpy as np
import torch

from golf.data import TOKEN_DTYPE, ByteTables, check_token_ids, find_shards, load_shard, load_tokenizer, read_header, \
    shard_split, write_shard
from golf.errors import ConfigError, DataError
from golf.progress import Progress

DEFAULT_SHARD_TOKENS = 10**8  # the challenge's SHARD_SIZE


# --- stats ---------------------------------------------------------------------------------------------

STATS_CHUNK = 1 << 24


def split_stats(files, tables: ByteTables) -> dict:
    """Counts for one split's shards read as one stream: files, tokens, docs (BOS), targets, bytes."""
    tokens = docs = nbytes = 0
    prev_last = None
    for f in files:
        shard = load_shard(f)
        for lo in range(0, len(shard), STATS_CHUNK):
            chunk = np.asarray(shard[lo:lo + STATS_CHUNK])
            check_token_ids(chunk, tables.vocab_size, f)
            ids = torch.from_numpy(chunk.astype(np.int64))
            docs += int((ids == tables.bos_id).sum())
            if prev_last is None:
                prev, target = ids[:-1], ids[1:]
            else:
                prev, target = torch.cat([prev_last, ids[:-1]]), ids
            nbytes += int(tables.target_bytes(prev, target).sum(dtype=torch.int64))
            prev_last = ids[-1:]
            tokens += len(chunk)
    targets = max(tokens - 1, 0)
    return {"files": len(files), "tokens": tokens, "docs": docs, "targets": targets, "bytes": nbytes,
            "bytes_per_token": nbytes / targets if targets else 0.0}


def _cmd_stats(args) -> int:
    tables = ByteTables.from_tokenizer(args.tokenizer)
    files = find_shards(args.path)
    bad = []
    for f in files:
        try:
            read_header(f)
        except DataError as exc:
            bad.append(str(exc))
    for msg in bad:
        print(f"invalid shard: {msg}", file=sys.stderr)
    if bad:
        return 1
    by_split: dict[str, list[Path]] = {}
    for f in files:
        by_split.setdefault(shard_split(f), []).append(f)
    results = {}
    for split, split_files in sorted(by_split.items()):
        try:
            results[split] = split_stats(split_files, tables)
        except DataError as exc:
            print(f"invalid shard: {exc}", file=sys.stderr)
            return 1
        s = results[split]
        print(f"split={split} files={s['files']} tokens={s['tokens']} docs={s['docs']} targets={s['targets']} "
              f"bytes={s['bytes']} bytes_per_token={s['bytes_per_token']:.4f}")
    if args.json:
        print(json.dumps(results))
    return 0


# --- prepare (the challenge's export) ------------------------------------------------------------------

def iter_jsonl_texts(path, key: str = "text"):
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)[key]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DataError(f"line {lineno} is not a JSON object with a '{key}' string", file=path,
                                field=f"line {lineno}") from exc


class ShardWriter:
    """Fills {prefix}_{split}_NNNNNN.bin shards of `shard_tokens` in order; a doc may span two shards."""

    def __init__(self, out_dir, split: str, shard_tokens: int, prefix: str = "fineweb"):
        self.out_dir, self.split, self.shard_tokens, self.prefix = Path(out_dir), split, shard_tokens, prefix
        self.buf = np.empty(shard_tokens, dtype=TOKEN_DTYPE)
        self.fill = 0
        self.index = 0
        self.written: list[Path] = []

    def add(self, ids: np.ndarray) -> None:
        while ids.size:
            take = min(ids.size, self.shard_tokens - self.fill)
            self.buf[self.fill:self.fill + take] = ids[:take]
            self.fill += take
            ids = ids[take:]
            if self.fill == self.shard_tokens:
                self.flush()

    def flush(self) -> None:
        if self.fill:
            path = self.out_dir / f"{self.prefix}_{self.split}_{self.index:06d}.bin"
            write_shard(path, self.buf[:self.fill])
            self.written.append(path)
            self.index += 1
            self.fill = 0


def prepare(docs_path, tokenizer_path, out_dir, val_docs: int, shard_tokens: int = DEFAULT_SHARD_TOKENS,
            prefix: str = "fineweb", batch_docs: int = 512, overwrite: bool = False,
            allow_no_train: bool = False) -> dict:
    """Tokenise a jsonl of docs as the challenge does: [BOS]+ids per doc, first `val_docs` docs to val.

    Shards are {prefix}_{split}_NNNNNN.bin; another prefix lets them sit beside the challenge's own
    fineweb_* shards in one DATA_PATH (the loader takes every *_train_*.bin there, sorted)."""
    if val_docs < 0:
        raise ConfigError(f"--val-docs must be >= 0, got {val_docs}")
    if shard_tokens <= 0:
        raise ConfigError(f"--shard-tokens must be > 0, got {shard_tokens}")
    out_dir = Path(out_dir)
    existing = existing_shards(out_dir, prefix)
    if existing and not overwrite:
        more = f" and {len(existing) - 3} more" if len(existing) > 3 else ""
        raise ConfigError(f"already holds {prefix} shards ({', '.join(p.name for p in existing[:3])}{more}); "
                          "pass --overwrite to replace them", file=out_dir)
    # An export with no train shard is almost always a mistyped --val-docs, found only when training refuses the
    # directory: refuse it here. It is still allowed when asked, since writing only the val split is a real use
    # (re-making the challenge's val shard from its val docs). Counting stops at val_docs + 1 documents.
    head_docs = sum(1 for _ in itertools.islice(iter_jsonl_texts(docs_path), val_docs + 1))
    if head_docs <= val_docs and not allow_no_train:
        raise ConfigError(f"--val-docs {val_docs} takes all {head_docs} documents of {docs_path}, so no training "
                          "shard would be written; pass --allow-no-train to write only val shards")
    sp = load_tokenizer(tokenizer_path)
    bos = sp.bos_id()
    size = Path(docs_path).stat().st_size
    writers = {split: ShardWriter(out_dir, split, shard_tokens, prefix) for split in ("val", "train")}
    counts = {"val": [0, 0], "train": [0, 0]}  # docs, tokens
    ndocs = 0
    with Progress("prepare", total=None, unit="docs") as progress:
        batch: list[str] = []

        def encode(texts):
            nonlocal ndocs
            for ids in sp.encode(texts, out_type=int):
                split = "val" if ndocs < val_docs else "train"
                arr = np.empty(len(ids) + 1, dtype=TOKEN_DTYPE)
                arr[0] = bos
                arr[1:] = ids
                writers[split].add(arr)
                counts[split][0] += 1
                counts[split][1] += arr.size
                ndocs += 1
            progress.update(len(texts), tokens=counts["val"][1] + counts["train"][1])

        for text in iter_jsonl_texts(docs_path):
            batch.append(text)
            if len(batch) == batch_docs:
                encode(batch)
                batch = []
        if batch:
            encode(batch)
    for w in writers.values():
        w.flush()
    # Under --overwrite, old shards past the new ones' numbers would still be read with them (the loader takes
    # every *_train_*.bin), mixing two exports: remove them, now that the new export is complete.
    written = {p for w in writers.values() for p in w.written}
    removed = [p for p in existing if p not in written]
    for p in removed:
        p.unlink()
    result = {split: {"docs": c[0], "tokens": c[1], "files": [str(p) for p in writers[split].written]}
              for split, c in counts.items()}
    result["source_bytes"] = size
    result["removed"] = [str(p) for p in removed]
    return result


def existing_shards(out_dir: Path, prefix: str) -> list[Path]:
    """The {prefix}_{val,train}_NNNNNN.bin shards already in out_dir: those prepare would write or leave mixed in."""
    if not out_dir.exists():
        return []
    if not out_dir.is_dir():
        raise ConfigError("--out is not a directory", file=out_dir)
    name = re.compile(rf"{re.escape(prefix)}_(val|train)_\d{{6,}}\.bin")
    return sorted(p for p in out_dir.iterdir() if name.fullmatch(p.name))


def _cmd_prepare(args) -> int:
    result = prepare(args.docs, args.tokenizer, args.out, args.val_docs, args.shard_tokens, args.prefix,
                     overwrite=args.overwrite, allow_no_train=args.allow_no_train)
    for split in ("val", "train"):
        r = result[split]
        print(f"split={split} docs={r['docs']} tokens={r['tokens']} files={len(r['files'])} out={args.out}")
    if result["removed"]:
        print(f"removed={len(result['removed'])} old {args.prefix} shards the new export does not replace")
    return 0


def _cmd_download(args) -> int:
    from golf import download  # needs huggingface_hub; imported only here

    return download.run_cli(args)


# --- command line --------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m golf.datatools", description="Challenge data tools")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="tokenise a jsonl of docs into challenge shards")
    p.add_argument("--docs", required=True, help="jsonl file, one {'text': ...} object per line")
    p.add_argument("--tokenizer", required=True, help="SentencePiece .model")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--val-docs", type=int, required=True, help="the first N docs go to fineweb_val_*")
    p.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS, help="tokens per shard (10^8)")
    p.add_argument("--prefix", default="fineweb", help="shard name prefix: PREFIX_{val,train}_NNNNNN.bin")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the PREFIX shards already in --out (those the new export does not rewrite are "
                        "deleted, so two exports never mix); without it such shards are an error")
    p.add_argument("--allow-no-train", action="store_true",
                   help="allow a --val-docs that takes every document (only val shards are written)")
    p.set_defaults(func=_cmd_prepare)

    p = sub.add_parser("download", help="fetch the challenge's shards and tokenizer from the Hugging Face hub")
    p.add_argument("--variant", default="sp1024", help="sp<V> or byte260 (default sp1024)")
    p.add_argument("--train-shards", type=int, default=80, help="train shards to fetch (default 80)")
    p.add_argument("--dest", default="data", help="local data root (default ./data)")
    p.add_argument("--with-docs", action="store_true", help="also fetch docs_selected.jsonl and its sidecar")
    p.set_defaults(func=_cmd_download)

    p = sub.add_parser("stats", help="validate shards and count tokens, docs, targets and bytes per split")
    p.add_argument("path", help="a shard, a directory of shards, or a glob")
    p.add_argument("--tokenizer", required=True, help="SentencePiece .model for the byte tables")
    p.add_argument("--json", action="store_true", help="also print the numbers as one JSON object")
    p.set_defaults(func=_cmd_stats)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (DataError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
