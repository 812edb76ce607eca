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
    TokenStream(files)                       the shards as one virtual uint16 array: len(), read(start, n);
                                             close(): every later read raises BudgetError (the budget is over)
    load_val_tokens(files, seq_len=None)     all val tokens, truncated as the challenge's plain eval does

Loader
    DistributedLoader(files, seq_len=, global_batch_tokens=, seed=0, rank=0, world_size=1, grad_accum=1,
                      vocab_size=None, device="cpu")
        .global_starts(step) -> np.ndarray[int64]   stream offsets of the G = global_batch_tokens/seq_len
                                                     windows (seq_len+1 tokens each) of step `step`
        .batch(step, micro=0) -> (x, y)              int64 [B, T] on `device`, B = G/(world_size*grad_accum)
        .close()                                     the training budget is over: batch() raises BudgetError
    The global batch of a step is a function of (seed, step) only, whatever the world size or the
    gradient accumulation: rank r takes the contiguous slice [r*G/W, (r+1)*G/W) of it, and micro-step m
    of that rank the m-th sub-slice of B sequences. Windows start at phase + b*seq_len; each epoch draws
    a phase and a full-cycle permutation b = (start + i*stride) mod nwin (gcd(stride, nwin) = 1) from
    (seed, epoch), so within an epoch no window repeats. Windows may cross shard and document boundaries,
    as in the records' loaders. No per-token Python work: a step is one slice per sequence.

Tokenizer bytes and BPB
    load_tokenizer(path, vocab_size=None, setting=VOCAB_SETTING) -> SentencePieceProcessor (setting: what a
        mismatch error names as the source of vocab_size)
    ByteTables.from_tokenizer(path_or_processor, vocab_size=None)
        base_bytes int32[V], leading_space bool[V], boundary bool[V]; .target_bytes(prev, target)
        bytes(y | x) = base_bytes[y] + (leading_space[y] and not boundary[x])
    bits_per_byte(nll_sum, byte_sum) = nll_sum / (ln 2 * byte_sum)
    BpbMeter: float64 sums of NLL, targets and bytes; all-reduced across ranks.

Preparing, downloading and counting shards (the data tools a training run does not need) live in
golf.datatools (python -m golf.datatools {prepare, download, stats}) and golf.download.
"""

from __future__ import annotations

import glob
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from golf import ops
from golf.errors import BudgetError, ConfigError, DataError

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
TOKEN_DTYPE = np.dtype("<u2")


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
    """Sorted shards as one virtual uint16 array, memory-mapped. close() ends every read: the challenge forbids
    reading training data once the training budget is over, so golf.train closes its stream there."""

    def __init__(self, files):
        self.files = [Path(f) for f in files]
        if not self.files:
            raise DataError("a token stream needs at least one shard", field="files", expected=">= 1", found=0)
        self.shards = [np.asarray(load_shard(f)) for f in self.files]  # plain views: cheap to slice
        sizes = np.array([len(s) for s in self.shards], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])  # shard i holds [offsets[i], offsets[i+1])
        self.closed = False

    def close(self) -> None:
        """Refuse every later read (and drop the memory maps)."""
        self.closed, self.shards = True, []

    def _check_open(self, position: int) -> None:
        if self.closed:
            raise BudgetError("the training budget is closed: no training shard may be read after it",
                              file=self.shard_of(min(max(position, 0), len(self) - 1)))

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def shard_of(self, position: int) -> Path:
        return self.files[int(np.searchsorted(self.offsets, position, side="right")) - 1]

    def read(self, start: int, n: int) -> np.ndarray:
        """Tokens [start, start+n) as a uint16 array (a copy), across shard boundaries if needed."""
        if start < 0 or start + n > len(self):
            raise IndexError(f"TokenStream.read({start}, {n}) outside [0, {len(self)})")
        self._check_open(start)
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
        self._check_open(int(starts[0]) if len(starts) else 0)
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


def read_fit_prefix(files, tokens: int, vocab_size: int) -> torch.Tensor:
    """int64 [n]: the train stream's first `tokens` ids (0 = all of them), checked against the vocabulary: what
    the tiers are fit on. files: the train shards, or a TokenStream over them (golf.train passes its loader's,
    so that closing it ends this read too)."""
    stream = files if isinstance(files, TokenStream) else TokenStream(files)
    raw = stream.read(0, len(stream) if tokens == 0 else min(tokens, len(stream)))
    check_token_ids(raw, vocab_size, stream.files[0])
    return torch.from_numpy(raw.astype(np.int64))


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

    def close(self) -> None:
        """The training budget is over: every later batch() raises BudgetError naming the shard it would read."""
        self.stream.close()

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

# Where a run's vocab_size comes from, for the mismatch error; golf.eval passes the artifact's field instead.
VOCAB_SETTING = "vocab_size (--vocab-size / env VOCAB_SIZE)"


def load_tokenizer(path, vocab_size: int | None = None, setting: str = VOCAB_SETTING):
    """A SentencePieceProcessor; DataError if unreadable or if its vocab differs from `vocab_size` (which
    `setting` names: how the user set it)."""
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
        raise DataError("the tokenizer's vocabulary size differs", file=path, field=setting, expected=vocab_size,
                        found=sp.vocab_size())
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
    def from_tokenizer(cls, tokenizer, vocab_size: int | None = None, setting: str = VOCAB_SETTING) -> "ByteTables":
        sp = load_tokenizer(tokenizer, vocab_size, setting) if isinstance(tokenizer, (str, os.PathLike)) else tokenizer
        if vocab_size is not None and sp.vocab_size() != vocab_size:
            raise DataError("the tokenizer's vocabulary size differs", field=setting, expected=vocab_size,
                            found=sp.vocab_size())
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
