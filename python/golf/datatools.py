"""The data tools a training run does not need: train a tokenizer on training documents (`tokenizer`), tokenise
documents into challenge shards (`prepare`), fetch the challenge's shards (`download`, golf.download), and
validate and count shards (`stats`).

    train_tokenizer(docs_paths, vocab_size, out_dir, exclude=(), max_sentence_length=4192, ...) -> dict
        SentencePiece BPE with the challenge's settings (byte fallback, split digits, nmt_nfkc, no dummy prefix,
        character coverage 0.999, pad 0 / bos 1 / eos 2 / unk 3) on the documents of docs_paths, in order;
        refuses, before training, a document that opens like one of `exclude` (the validation text)
    prepare(docs_path, tokenizer_path, out_dir, val_docs, shard_tokens=10**8, prefix="fineweb", overwrite=False,
            allow_no_train=False, val_path=None) -> dict
        the challenge's export: [BOS] + ids per document, no EOS, the first `val_docs` documents to
        {prefix}_val_*, the rest to {prefix}_train_*, shards of `shard_tokens` tokens; with val_path, the val
        split is all of that file's documents and the train split all of docs_path's (one path or several);
        refuses, before writing anything, an out_dir that already holds {prefix} shards and a split that would
        leave no training document
    split_stats(files, tables) -> dict    files, tokens, docs (BOS count), targets, bytes of one split

Command line: python -m golf.datatools {tokenizer, prepare, download, stats} --help
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import re
import sys
import time
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


# --- tokenizer -----------------------------------------------------------------------------------------

SP_MAX_SENTENCE_LENGTH = 4192  # SentencePiece's default, which the challenge's export leaves as it is
OPENING_CHARS = 200            # what `exclude` compares: a document's first characters, whitespace collapsed

# The challenge's trainer settings (its data/download_hf_docs_and_tokenize.py, as ANCHOR.md §1.1 states them).
SP_SETTINGS = dict(model_type="bpe", character_coverage=0.999, byte_fallback=True, split_digits=True,
                   normalization_rule_name="nmt_nfkc", add_dummy_prefix=False, pad_id=0, bos_id=1, eos_id=2,
                   unk_id=3, hard_vocab_limit=False)


def opening(text: str) -> str:
    """A document's first OPENING_CHARS characters with runs of whitespace as one space: the same document raw
    (newlines kept) and SentencePiece-normalised (newlines folded) open alike."""
    return " ".join(text[:4 * OPENING_CHARS].split())[:OPENING_CHARS]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def train_tokenizer(docs_paths, vocab_size: int, out_dir, exclude=(), max_sentence_length: int = SP_MAX_SENTENCE_LENGTH,
                    threads: int = 1, overwrite: bool = False) -> dict:
    """SentencePiece BPE with the challenge's settings on the documents of docs_paths (training documents only),
    written to out_dir/fineweb_<V>_bpe.{model,vocab} with a .json sidecar (settings, sources and their sha256,
    documents used and left out as too long, seconds). Refuses, before training, a training document that opens
    like a document of `exclude` (the validation text), and an existing tokenizer of that name unless overwrite."""
    import sentencepiece as spm

    if not 2 <= vocab_size <= 65536:  # the shards store uint16 ids
        raise ConfigError(f"--vocab-size must be in [2, 65536] (uint16 shard ids), got {vocab_size}")
    if max_sentence_length < 1 or threads < 1:
        raise ConfigError(f"--max-sentence-length ({max_sentence_length}) and --threads ({threads}) must be >= 1")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError("--out is not a directory", file=out_dir)
    prefix = out_dir / f"fineweb_{vocab_size}_bpe"
    model, vocab, sidecar = (prefix.with_suffix(s) for s in (".model", ".vocab", ".json"))
    if model.exists() and not overwrite:
        raise ConfigError("a tokenizer of this vocabulary size is already there; pass --overwrite to replace it",
                          file=model)
    sources = _paths(docs_paths)
    held_out = {opening(t) for t in iter_jsonl_texts(exclude)} if exclude else set()
    texts, skipped = [], 0
    for k, text in enumerate(iter_jsonl_texts(sources)):
        if held_out and opening(text) in held_out:
            raise DataError(f"document {k} opens like a document of the excluded (validation) text; a tokenizer "
                            "is trained on training documents only", file=", ".join(map(str, sources)))
        text = text.replace("\x00", " ").strip()  # as the challenge's trainer feeds documents
        if not text:
            continue
        if len(text.encode("utf-8")) > max_sentence_length:
            skipped += 1  # SentencePiece would skip it too: counted here, so the sidecar says how many
            continue
        texts.append(text)
    if not texts:
        raise DataError(f"no training document of at most {max_sentence_length} bytes",
                        file=", ".join(map(str, sources)))
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_prefix=str(prefix), vocab_size=vocab_size,
                                   max_sentence_length=max_sentence_length, num_threads=threads, minloglevel=2,
                                   **SP_SETTINGS)
    seconds = time.perf_counter() - start
    sp = load_tokenizer(model)
    result = {"model": str(model), "vocab": str(vocab), "vocab_size": sp.vocab_size(), "seconds": seconds,
              "docs": len(texts), "skipped_too_long": skipped, "bytes": sum(len(t.encode("utf-8")) for t in texts),
              "settings": {**SP_SETTINGS, "vocab_size": vocab_size, "max_sentence_length": max_sentence_length},
              "sources": [{"path": str(p), "sha256": _sha256(p)} for p in sources],
              "excluded": [{"path": str(p), "sha256": _sha256(p)} for p in _paths(exclude)] if exclude else []}
    sidecar.write_text(json.dumps(result, indent=1) + "\n")
    return result


def _cmd_tokenizer(args) -> int:
    r = train_tokenizer(args.docs, args.vocab_size, args.out, args.exclude, args.max_sentence_length, args.threads,
                        args.overwrite)
    print(f"tokenizer={r['model']} vocab_size={r['vocab_size']} docs={r['docs']} bytes={r['bytes']} "
          f"skipped_too_long={r['skipped_too_long']} seconds={r['seconds']:.1f}")
    return 0


# --- prepare (the challenge's export) ------------------------------------------------------------------

def _paths(paths) -> list[Path]:
    """One path or several, as a list."""
    return [Path(paths)] if isinstance(paths, (str, os.PathLike)) else [Path(p) for p in paths]


def iter_jsonl_texts(paths, key: str = "text"):
    """The documents of one jsonl file or several, in order."""
    for path in _paths(paths):
        yield from _iter_one_jsonl(path, key)


def _iter_one_jsonl(path: Path, key: str):
    if not path.is_file():
        raise DataError("documents file not found", file=path)
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


def prepare(docs_path, tokenizer_path, out_dir, val_docs: int = 0, shard_tokens: int = DEFAULT_SHARD_TOKENS,
            prefix: str = "fineweb", batch_docs: int = 512, overwrite: bool = False,
            allow_no_train: bool = False, val_path=None) -> dict:
    """Tokenise a jsonl of docs as the challenge does: [BOS]+ids per doc, first `val_docs` docs to val; with
    val_path, val_path's docs to val and all of docs_path's to train.

    Shards are {prefix}_{split}_NNNNNN.bin; another prefix lets them sit beside the challenge's own
    fineweb_* shards in one DATA_PATH (the loader takes every *_train_*.bin there, sorted)."""
    if val_path is not None and val_docs:
        raise ConfigError("--val and --val-docs both choose the val split: pass one of them")
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
        sources = ", ".join(map(str, _paths(docs_path)))
        raise ConfigError(f"--val-docs {val_docs} takes all {head_docs} documents of {sources}, so no training "
                          "shard would be written; pass --allow-no-train to write only val shards")
    if val_path is not None and not sum(1 for _ in itertools.islice(iter_jsonl_texts(val_path), 1)):
        raise ConfigError("--val holds no document", file=val_path)
    sp = load_tokenizer(tokenizer_path)
    bos = sp.bos_id()
    sources = _paths(docs_path) + ([] if val_path is None else _paths(val_path))
    size = sum(p.stat().st_size for p in sources)
    writers = {split: ShardWriter(out_dir, split, shard_tokens, prefix) for split in ("val", "train")}
    counts = {"val": [0, 0], "train": [0, 0]}  # docs, tokens
    ndocs = 0
    with Progress("prepare", total=None, unit="docs") as progress:
        batch: list[str] = []

        def encode(texts, forced=None):
            nonlocal ndocs
            for ids in sp.encode(texts, out_type=int):
                split = forced or ("val" if ndocs < val_docs else "train")
                arr = np.empty(len(ids) + 1, dtype=TOKEN_DTYPE)
                arr[0] = bos
                arr[1:] = ids
                writers[split].add(arr)
                counts[split][0] += 1
                counts[split][1] += arr.size
                ndocs += 1
            progress.update(len(texts), tokens=counts["val"][1] + counts["train"][1])

        # The val docs first, as the challenge's export writes them (its first documents are the val split).
        inputs = [(docs_path, None)] if val_path is None else [(val_path, "val"), (docs_path, "train")]
        for path, forced in inputs:
            for text in iter_jsonl_texts(path):
                batch.append(text)
                if len(batch) == batch_docs:
                    encode(batch, forced)
                    batch = []
            if batch:
                encode(batch, forced)
                batch = []
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
    if args.val is None and args.val_docs is None:
        raise ConfigError("prepare: choose the val split with --val FILE or --val-docs N")
    result = prepare(args.docs, args.tokenizer, args.out, args.val_docs or 0, args.shard_tokens, args.prefix,
                     overwrite=args.overwrite, allow_no_train=args.allow_no_train, val_path=args.val)
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

    p = sub.add_parser("tokenizer", help="train a SentencePiece BPE tokenizer with the challenge's settings")
    p.add_argument("--docs", required=True, action="append",
                   help="jsonl of TRAINING documents, one {'text': ...} per line (repeat for several files)")
    p.add_argument("--vocab-size", type=int, required=True, help="vocabulary size, e.g. 8192")
    p.add_argument("--out", required=True, help="output directory: fineweb_<V>_bpe.{model,vocab,json}")
    p.add_argument("--exclude", action="append", default=[],
                   help="jsonl of validation documents: a training document that opens like one of them is an "
                        "error (repeatable)")
    p.add_argument("--max-sentence-length", type=int, default=SP_MAX_SENTENCE_LENGTH,
                   help="documents longer than this many bytes are left out of the training, as SentencePiece "
                        f"does (its default, the challenge's: {SP_MAX_SENTENCE_LENGTH})")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="trainer threads (all cores)")
    p.add_argument("--overwrite", action="store_true", help="replace a tokenizer of that name in --out")
    p.set_defaults(func=_cmd_tokenizer)

    p = sub.add_parser("prepare", help="tokenise a jsonl of docs into challenge shards")
    p.add_argument("--docs", required=True, action="append",
                   help="jsonl file, one {'text': ...} object per line (repeat for several files, read in order)")
    p.add_argument("--tokenizer", required=True, help="SentencePiece .model")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--val-docs", type=int, help="the first N docs go to fineweb_val_*, the rest to train")
    p.add_argument("--val", help="jsonl of validation docs: all of them go to fineweb_val_*, all of --docs to train")
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
