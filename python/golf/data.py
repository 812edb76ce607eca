"""Challenge data: shards, token streams, the distributed loader, tokenizer byte tables and BPB.

This module is the only place that knows the shard format and the BPB formula.

Shards (the challenge's format)
    A 1024-byte header of 256 little-endian int32 (magic 20240520, version 1, num_tokens, then zeros),
    followed by num_tokens little-endian uint16 token ids; the file is exactly 1024 + 2*num_tokens
    bytes. Each document is [BOS] + ids with no EOS; train and val never share a shard.

    read_header(path) -> int                 num_tokens after validating magic, version and size
    load_shard(path) -> np.memmap[uint16]    the token ids, memory-mapped (validated first)
    write_shard(path, tokens) -> int         atomic write (temp file + rename)
    find_shards(path, split) -> [Path]       sorted *_{split}_*.bin under a directory, a glob, or one file
    TokenStream(files)                       the shards as one virtual uint16 array: len(), read(start, n)
    load_val_tokens(files, seq_len=None)     all val tokens, truncated as the challenge's plain eval does

Loader
    DistributedLoader(files, seq_len=, global_batch_tokens=, seed=0, rank=0, world_size=1, grad_accum=1,
                      vocab_size=None, device="cpu")
        .global_starts(step) -> np.ndarray[int64]   stream offsets of the G = global_batch_tokens/seq_len
                                                     windows (seq_len+1 tokens each) of step `step`
        .batch(step, micro=0) -> (x, y)              int64 [B, T] on `device`, B = G/(world_size*grad_accum)
    The global batch of a step is a function of (seed, step) only, whatever the world size or the
    gradient accumulation: rank r takes the contiguous slice [r*G/W, (r+1)*G/W) of it, and micro-step m
    of that rank the m-th sub-slice of B sequences. Windows start at phase + b*seq_len; each epoch draws
    a phase and a full-cycle permutation b = (start + i*stride) mod nwin (gcd(stride, nwin) = 1) from
    (seed, epoch), so within an epoch no window repeats. Windows may cross shard and document boundaries,
    as in the records' loaders. No per-token Python work: a step is one slice per sequence.

Tokenizer bytes and BPB
    load_tokenizer(path, vocab_size=None) -> SentencePieceProcessor
    ByteTables.from_tokenizer(path_or_processor, vocab_size=None)
        base_bytes int32[V], leading_space bool[V], boundary bool[V]; .target_bytes(prev, target)
        bytes(y | x) = base_bytes[y] + (leading_space[y] and not boundary[x])
    bits_per_byte(nll_sum, byte_sum) = nll_sum / (ln 2 * byte_sum)
    BpbMeter: float64 sums of NLL, targets and bytes; all-reduced across ranks.

Command line: python -m golf.data {prepare, download, stats} --help
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from golf import ops
from golf.errors import ConfigError, DataError
from golf.progress import Progress

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
TOKEN_DTYPE = np.dtype("<u2")
DEFAULT_SHARD_TOKENS = 10**8  # the challenge's SHARD_SIZE


# --- shards --------------------------------------------------------------------------------------------

def read_header(path) -> int:
    """Validate a shard's header and size; return its token count."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
    except OSError as exc:
        raise DataError(f"cannot read shard: {exc.strerror}", file=path) from exc
    if len(raw) < HEADER_BYTES:
        raise DataError("file is shorter than the shard header", file=path, field="header",
                        expected=f"{HEADER_BYTES} bytes", found=f"{len(raw)} bytes")
    header = np.frombuffer(raw, dtype="<i4")
    if header[0] != SHARD_MAGIC:
        raise DataError("not a challenge shard", file=path, field="magic (header[0])",
                        expected=SHARD_MAGIC, found=int(header[0]))
    if header[1] != SHARD_VERSION:
        raise DataError("unsupported shard version", file=path, field="version (header[1])",
                        expected=SHARD_VERSION, found=int(header[1]))
    num_tokens = int(header[2])
    if num_tokens < 0:
        raise DataError("negative token count", file=path, field="num_tokens (header[2])",
                        expected=">= 0", found=num_tokens)
    expected_size = HEADER_BYTES + 2 * num_tokens
    if size != expected_size:
        raise DataError(f"file size does not match header num_tokens={num_tokens}", file=path, field="size",
                        expected=f"{expected_size} bytes", found=f"{size} bytes")
    return num_tokens


def load_shard(path) -> np.ndarray:
    """The shard's token ids as a read-only uint16 memmap (header and size validated first)."""
    n = read_header(path)
    if n == 0:
        return np.zeros(0, dtype=TOKEN_DTYPE)
    return np.memmap(path, dtype=TOKEN_DTYPE, mode="r", offset=HEADER_BYTES, shape=(n,))


def write_shard(path, tokens) -> int:
    """Write ids as a challenge shard via a temp file + rename, so a crash never leaves half a shard."""
    path = Path(path)
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise DataError("shard tokens must be 1-D", file=path, field="tokens", expected="1-D", found=tokens.shape)
    if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) > 0xFFFF):
        raise DataError("token id does not fit uint16", file=path, field="tokens", expected="0..65535",
                        found=f"{int(tokens.min())}..{int(tokens.max())}")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (SHARD_MAGIC, SHARD_VERSION, tokens.size)
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype(TOKEN_DTYPE, copy=False).tobytes())
    os.replace(tmp, path)
    return int(tokens.size)


def shard_split(path) -> str:
    """'train', 'val' or 'other', from the challenge's file names fineweb_{train,val}_NNNNNN.bin."""
    name = Path(path).name
    for split in ("train", "val"):
        if f"_{split}_" in name or name.startswith(f"{split}_"):
            return split
    return "other"


def find_shards(path, split: str | None = None) -> list[Path]:
    """Shards under `path`: a directory (its *_{split}_*.bin, or all *.bin), a glob, or one file."""
    path = os.fspath(path)
    if os.path.isdir(path):
        pattern = os.path.join(path, f"*_{split}_*.bin" if split else "*.bin")
    else:
        pattern = path
    files = sorted(Path(p) for p in glob.glob(pattern))
    if split:  # strict: a glob must never hand val shards to the training loader
        files = [f for f in files if shard_split(f) == split]
    if not files:
        what = f"{split} shards" if split else "shards"
        raise DataError(f"no {what} found", file=path, field="path", expected=pattern, found="nothing")
    return files


class TokenStream:
    """Sorted shards as one virtual uint16 array, memory-mapped."""

    def __init__(self, files):
        self.files = [Path(f) for f in files]
        if not self.files:
            raise DataError("a token stream needs at least one shard", field="files", expected=">= 1", found=0)
        self.shards = [np.asarray(load_shard(f)) for f in self.files]  # plain views: cheap to slice
        sizes = np.array([len(s) for s in self.shards], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])  # shard i holds [offsets[i], offsets[i+1])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def shard_of(self, position: int) -> Path:
        return self.files[int(np.searchsorted(self.offsets, position, side="right")) - 1]

    def read(self, start: int, n: int) -> np.ndarray:
        """Tokens [start, start+n) as a uint16 array (a copy), across shard boundaries if needed."""
        if start < 0 or start + n > len(self):
            raise IndexError(f"TokenStream.read({start}, {n}) outside [0, {len(self)})")
        i = int(np.searchsorted(self.offsets, start, side="right")) - 1
        local = start - int(self.offsets[i])
        first = self.shards[i][local:local + n]
        if len(first) == n:
            return np.array(first)
        pieces, got = [first], len(first)
        while got < n:
            i += 1
            piece = self.shards[i][: n - got]
            pieces.append(piece)
            got += len(piece)
        return np.concatenate(pieces)

    def read_many(self, starts: np.ndarray, n: int) -> np.ndarray:
        """Windows [s, s+n) for every s in starts, as a uint16 array [len(starts), n]."""
        starts = np.asarray(starts, dtype=np.int64)
        out = np.empty((len(starts), n), dtype=TOKEN_DTYPE)
        shard = np.searchsorted(self.offsets, starts, side="right") - 1
        for row, (s, i) in enumerate(zip(starts.tolist(), shard.tolist())):
            local = s - int(self.offsets[i])
            if local + n <= len(self.shards[i]):
                out[row] = self.shards[i][local:local + n]
            else:
                out[row] = self.read(s, n)
        return out


def load_val_tokens(files, seq_len: int | None = None) -> np.ndarray:
    """All val tokens concatenated; with seq_len, truncated to ((N-1)//seq_len)*seq_len + 1 (plain eval)."""
    tokens = np.concatenate([np.asarray(load_shard(f)) for f in files])
    if seq_len is not None:
        usable = ((len(tokens) - 1) // seq_len) * seq_len
        if usable <= 0:
            raise DataError(f"validation split is too short for seq_len={seq_len}", file=files[0],
                            field="num_tokens", expected=f">= {seq_len + 1}", found=len(tokens))
        tokens = tokens[: usable + 1]
    return tokens


def check_token_ids(tokens: np.ndarray, vocab_size: int, where) -> None:
    """DataError naming `where` (a file) if any id is >= vocab_size."""
    if tokens.size and int(tokens.max()) >= vocab_size:
        bad = int(np.argmax(tokens >= vocab_size))
        raise DataError("token id outside the tokenizer's vocabulary", file=where, field=f"token[{bad}]",
                        expected=f"< {vocab_size}", found=int(tokens[bad]))


# --- loader --------------------------------------------------------------------------------------------

class DistributedLoader:
    """Shuffled fixed-length windows; see the module docstring for the contract."""

    def __init__(self, files, *, seq_len: int, global_batch_tokens: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, grad_accum: int = 1, vocab_size: int | None = None, device="cpu"):
        if seq_len <= 0 or global_batch_tokens % seq_len:
            raise ConfigError(f"global_batch_tokens={global_batch_tokens} is not a multiple of seq_len={seq_len}")
        self.global_seqs = global_batch_tokens // seq_len
        if self.global_seqs % (world_size * grad_accum):
            raise ConfigError(f"{self.global_seqs} sequences per step do not split over world_size={world_size} "
                              f"x grad_accum={grad_accum}")
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank={rank} outside world_size={world_size}")
        self.stream = TokenStream(files)
        self.seq_len, self.seed, self.rank, self.world_size, self.grad_accum = seq_len, seed, rank, world_size, grad_accum
        self.vocab_size = vocab_size
        self.device = torch.device(device)
        self.local_seqs = self.global_seqs // (world_size * grad_accum)
        # Windows that fit for every phase in [0, seq_len): phase + nwin*seq_len + 1 <= len(stream).
        self.windows_per_epoch = (len(self.stream) - seq_len) // seq_len
        if self.windows_per_epoch < 1:
            raise DataError(f"training stream has {len(self.stream)} tokens, fewer than 2*seq_len={2 * seq_len}",
                            file=self.stream.files[0], field="num_tokens")
        self._epochs: dict[int, tuple[int, int, int]] = {}

    def _epoch(self, epoch: int) -> tuple[int, int, int]:
        """(phase, start, stride) of an epoch, drawn from (seed, epoch) alone."""
        if epoch not in self._epochs:
            rng = np.random.default_rng([self.seed, epoch])
            n = self.windows_per_epoch
            phase = int(rng.integers(self.seq_len))
            start = int(rng.integers(n))
            stride = 1
            if n > 2:
                stride = int(rng.integers(1, n))
                while math.gcd(stride, n) != 1:
                    stride = int(rng.integers(1, n))
            if len(self._epochs) > 64:
                self._epochs.clear()
            self._epochs[epoch] = (phase, start, stride)
        return self._epochs[epoch]

    def global_starts(self, step: int) -> np.ndarray:
        n = self.windows_per_epoch
        k = step * self.global_seqs + np.arange(self.global_seqs, dtype=np.int64)
        epochs, index = np.divmod(k, n)
        starts = np.empty_like(k)
        for e in np.unique(epochs):
            phase, start, stride = self._epoch(int(e))
            sel = epochs == e
            if n < 2**31:  # index*stride < 2**62: exact in int64
                blocks = (start + index[sel] * stride) % n
            else:
                blocks = np.array([(start + int(i) * stride) % n for i in index[sel]], dtype=np.int64)
            starts[sel] = phase + blocks * self.seq_len
        return starts

    def batch(self, step: int, micro: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= micro < self.grad_accum:
            raise ConfigError(f"micro={micro} outside grad_accum={self.grad_accum}")
        first = (self.rank * self.grad_accum + micro) * self.local_seqs
        starts = self.global_starts(step)[first:first + self.local_seqs]
        tokens = self.stream.read_many(starts, self.seq_len + 1)
        if self.vocab_size is not None and tokens.size and int(tokens.max()) >= self.vocab_size:
            row = int(np.argmax((tokens >= self.vocab_size).any(axis=1)))
            check_token_ids(tokens[row], self.vocab_size, self.stream.shard_of(int(starts[row])))
        t = torch.from_numpy(tokens.astype(np.int64))
        if self.device.type == "cuda":
            t = t.pin_memory().to(self.device, non_blocking=True)
        elif self.device.type != "cpu":
            t = t.to(self.device)
        return t[:, :-1], t[:, 1:]


# --- tokenizer byte tables and BPB ---------------------------------------------------------------------

def load_tokenizer(path, vocab_size: int | None = None):
    """A SentencePieceProcessor; DataError if unreadable or if its vocab differs from `vocab_size`."""
    import sentencepiece as spm

    path = Path(path)
    if not path.is_file():
        raise DataError("tokenizer model not found", file=path, field="path")
    sp = spm.SentencePieceProcessor()
    try:
        sp.Load(str(path))
    except (OSError, RuntimeError) as exc:
        raise DataError(f"not a SentencePiece model: {exc}", file=path) from exc
    if vocab_size is not None and sp.vocab_size() != vocab_size:
        raise DataError("tokenizer vocabulary does not match the model's", file=path, field="vocab_size",
                        expected=vocab_size, found=sp.vocab_size())
    return sp


@dataclass(frozen=True)
class ByteTables:
    """Per-id byte facts of a SentencePiece vocabulary, exactly as the challenge's BPB counts bytes."""

    base_bytes: torch.Tensor     # int32 [V]: UTF-8 bytes of the piece without its leading "▁"; 1 for <0xXX>; 0 for control
    leading_space: torch.Tensor  # bool [V]: the piece starts with "▁"
    boundary: torch.Tensor       # bool [V]: control / unknown / unused ids (BOS among them)
    bos_id: int

    @property
    def vocab_size(self) -> int:
        return int(self.base_bytes.numel())

    @classmethod
    def from_tokenizer(cls, tokenizer, vocab_size: int | None = None) -> "ByteTables":
        sp = load_tokenizer(tokenizer, vocab_size) if isinstance(tokenizer, (str, os.PathLike)) else tokenizer
        if vocab_size is not None and sp.vocab_size() != vocab_size:
            raise DataError("tokenizer vocabulary does not match the model's", field="vocab_size",
                            expected=vocab_size, found=sp.vocab_size())
        v = sp.vocab_size()
        base = np.zeros(v, dtype=np.int32)
        lead = np.zeros(v, dtype=bool)
        boundary = np.zeros(v, dtype=bool)
        for i in range(v):
            if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
                boundary[i] = True
            elif sp.is_byte(i):
                base[i] = 1
            else:
                piece = sp.id_to_piece(i)
                if piece.startswith("\u2581"):
                    lead[i] = True
                    piece = piece[1:]
                base[i] = len(piece.encode("utf-8"))
        return cls(torch.from_numpy(base), torch.from_numpy(lead), torch.from_numpy(boundary), int(sp.bos_id()))

    def to(self, device) -> "ByteTables":
        return ByteTables(self.base_bytes.to(device), self.leading_space.to(device), self.boundary.to(device),
                          self.bos_id)

    def target_bytes(self, prev: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """int32 bytes credited to each target given the previous token (golf::target_bytes)."""
        return ops.target_bytes(prev, target, self.base_bytes, self.leading_space, self.boundary)


def bits_per_byte(nll_sum: float, byte_sum: float) -> float:
    """The challenge's metric: summed natural-log NLL over summed target bytes, in bits per byte."""
    return float(nll_sum) / (math.log(2.0) * float(byte_sum))


class BpbMeter:
    """Float64 sums of NLL (nats), targets and bytes; `all_reduce` sums them over ranks."""

    def __init__(self, tables: ByteTables):
        self.tables = tables
        self.sums = torch.zeros(3, dtype=torch.float64)  # nll, targets, bytes

    def add(self, nll: torch.Tensor, prev: torch.Tensor, target: torch.Tensor) -> None:
        """nll: per-target NLL in nats, shaped like target; prev: the token before each target."""
        tables = self.tables if self.tables.base_bytes.device == target.device else self.tables.to(target.device)
        nbytes = tables.target_bytes(prev, target)
        self.sums += torch.stack([nll.double().sum(), torch.tensor(float(target.numel()), dtype=torch.float64,
                                                                   device=nll.device), nbytes.double().sum()]).cpu()

    def all_reduce(self) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            backend = torch.distributed.get_backend()
            sums = self.sums.cuda() if backend == "nccl" else self.sums
            torch.distributed.all_reduce(sums)
            self.sums = sums.cpu()

    @property
    def nll_sum(self) -> float:
        return float(self.sums[0])

    @property
    def targets(self) -> int:
        return int(self.sums[1])

    @property
    def bytes(self) -> int:
        return int(self.sums[2])

    @property
    def val_loss(self) -> float:
        return self.nll_sum / self.targets

    @property
    def bpb(self) -> float:
        return bits_per_byte(self.nll_sum, self.bytes)


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
            prefix: str = "fineweb", batch_docs: int = 512) -> dict:
    """Tokenise a jsonl of docs as the challenge does: [BOS]+ids per doc, first `val_docs` docs to val.

    Shards are {prefix}_{split}_NNNNNN.bin; another prefix lets them sit beside the challenge's own
    fineweb_* shards in one DATA_PATH (the loader takes every *_train_*.bin there, sorted)."""
    if val_docs < 0:
        raise ConfigError(f"--val-docs must be >= 0, got {val_docs}")
    if shard_tokens <= 0:
        raise ConfigError(f"--shard-tokens must be > 0, got {shard_tokens}")
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
    result = {split: {"docs": c[0], "tokens": c[1], "files": [str(p) for p in writers[split].written]}
              for split, c in counts.items()}
    result["source_bytes"] = size
    return result


def _cmd_prepare(args) -> int:
    result = prepare(args.docs, args.tokenizer, args.out, args.val_docs, args.shard_tokens, args.prefix)
    for split in ("val", "train"):
        r = result[split]
        print(f"split={split} docs={r['docs']} tokens={r['tokens']} files={len(r['files'])} out={args.out}")
    return 0


def _cmd_download(args) -> int:
    from golf import download  # needs huggingface_hub; imported only here

    return download.run_cli(args)


# --- command line --------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m golf.data", description="Challenge data tools")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="tokenise a jsonl of docs into challenge shards")
    p.add_argument("--docs", required=True, help="jsonl file, one {'text': ...} object per line")
    p.add_argument("--tokenizer", required=True, help="SentencePiece .model")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--val-docs", type=int, required=True, help="the first N docs go to fineweb_val_*")
    p.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS, help="tokens per shard (10^8)")
    p.add_argument("--prefix", default="fineweb", help="shard name prefix: PREFIX_{val,train}_NNNNNN.bin")
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
