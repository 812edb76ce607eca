"""Shared fixtures: the real challenge data in ../shared/data (or GOLF_TEST_DATA / DATA_PATH / TOKENIZER_PATH).

Missing data is a test failure, never a skip: every data-backed number in the suite is a real one.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.fail(f"{what} not found at {path}: set GOLF_TEST_DATA (and DATA_PATH, TOKENIZER_PATH) "
                    f"to the shared challenge data", pytrace=False)
    return path


@pytest.fixture(scope="session")
def data_root() -> Path:
    env = os.environ.get("GOLF_TEST_DATA")
    return _require(Path(env) if env else ROOT.parent / "shared" / "data", "GOLF_TEST_DATA")


@pytest.fixture(scope="session")
def data_path(data_root) -> Path:
    env = os.environ.get("DATA_PATH")
    return _require(Path(env) if env else data_root / "fineweb10B_sp1024_sample", "DATA_PATH")


@pytest.fixture(scope="session")
def tokenizer_path(data_root) -> Path:
    env = os.environ.get("TOKENIZER_PATH")
    return _require(Path(env) if env else data_root / "tokenizers" / "fineweb_1024_bpe.model", "TOKENIZER_PATH")


@pytest.fixture(scope="session")
def val_shard(data_path) -> Path:
    return _require(data_path / "fineweb_val_000000.bin", "val shard")


@pytest.fixture(scope="session")
def train_shard(data_path) -> Path:
    return _require(data_path / "fineweb_train_000000.bin", "train shard")


@pytest.fixture(scope="session")
def val_docs_jsonl(data_root) -> Path:
    return _require(data_root / "fineweb_docs" / "val_head_decoded.jsonl", "decoded val docs")


@pytest.fixture(scope="session")
def tables(tokenizer_path):
    from golf.data import ByteTables

    return ByteTables.from_tokenizer(tokenizer_path)


@pytest.fixture(scope="session")
def sp(tokenizer_path):
    from golf.data import load_tokenizer

    return load_tokenizer(tokenizer_path)


@pytest.fixture
def one_thread():
    """Tiny tensors: a second intra-op thread only adds synchronisation (several-fold on a busy 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def pytest_collection_modifyitems(config, items):
    from golf import ops

    gpu = torch.cuda.is_available() and ops.BUILD_INFO["cuda"]
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU and golf built with CUDA kernels")
    for item in items:
        if "cuda" in item.keywords and not gpu:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def pilot_docs_jsonl(data_root) -> Path:
    return _require(data_root / "fineweb10BT_legal_pilot" / "fineweb10BT_legal_annotated_batches001-030.jsonl",
                    "FineWeb pilot docs")


@pytest.fixture(scope="session")
def cpu_train_dir(tmp_path_factory, pilot_docs_jsonl, tokenizer_path, train_shard, val_shard) -> Path:
    """The `make data` set: the train head shard + the 2,997 pilot docs as pilot_train_*, and the val shard."""
    import os

    from golf.datatools import prepare

    out = tmp_path_factory.mktemp("cpu_data")
    prepare(pilot_docs_jsonl, tokenizer_path, out, val_docs=0, prefix="pilot")
    os.symlink(train_shard, out / train_shard.name)
    os.symlink(val_shard, out / val_shard.name)
    return out


class ShardReads:
    """What a test's golf.train run did with train shards, in order: `log` holds (what, detail, stage) with what
    "open" (a shard's header read, which every opening goes through), "read" (a TokenStream read) or "close" (a
    TokenStream closed: the end of the training budget), and stage the innermost golf.train function on the stack."""

    def __init__(self):
        self.log: list[tuple[str, str, str | None]] = []

    def after_close(self) -> list[tuple[str, str, str | None]]:
        """Every open or read after the first close (one run per test)."""
        closes = [i for i, (what, _, _) in enumerate(self.log) if what == "close"]
        return [e for e in self.log[closes[0]:] if e[0] != "close"] if closes else []

    def stages(self, what: str) -> set:
        return {stage for kind, _, stage in self.log if kind == what}


def _train_stage() -> str | None:
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename.endswith(os.path.join("golf", "train.py")):
            return frame.f_code.co_name
        frame = frame.f_back
    return None


@pytest.fixture
def shard_reads(monkeypatch) -> ShardReads:
    """Records every access to a train shard in this process (see ShardReads): the challenge forbids reading
    training data once the training budget is over, so a run's accesses must all come before its close."""
    from golf import data

    reads = ShardReads()
    header, read, read_many, close = data.read_header, data.TokenStream.read, data.TokenStream.read_many, \
        data.TokenStream.close

    def train(stream) -> bool:
        return any(data.shard_split(f) == "train" for f in stream.files)

    def logged_header(path):
        if data.shard_split(path) == "train":
            reads.log.append(("open", str(path), _train_stage()))
        return header(path)

    def logged_read(self, start, n):
        if train(self):
            reads.log.append(("read", f"{self.files[0]} [{start}, +{n})", _train_stage()))
        return read(self, start, n)

    def logged_read_many(self, starts, n):
        if train(self):
            reads.log.append(("read", f"{self.files[0]} {len(starts)} windows", _train_stage()))
        return read_many(self, starts, n)

    def logged_close(self):
        if train(self):
            reads.log.append(("close", str(self.files[0]), _train_stage()))
        return close(self)

    monkeypatch.setattr(data, "read_header", logged_header)
    monkeypatch.setattr(data.TokenStream, "read", logged_read)
    monkeypatch.setattr(data.TokenStream, "read_many", logged_read_many)
    monkeypatch.setattr(data.TokenStream, "close", logged_close)
    return reads


@pytest.fixture(scope="session")
def train_docs_jsonl(data_root) -> Path:
    return _require(data_root / "fineweb_docs" / "train_head_decoded.jsonl", "decoded train docs")


@pytest.fixture(scope="session")
def sp8192_path(tmp_path_factory, train_docs_jsonl, val_docs_jsonl) -> Path:
    """A V = 8192 tokenizer trained with the challenge's settings on the 971 train-head documents (~1 s)."""
    from golf.datatools import train_tokenizer

    out = tmp_path_factory.mktemp("sp8192")
    return Path(train_tokenizer(train_docs_jsonl, 8192, out, exclude=val_docs_jsonl, max_sentence_length=1 << 20,
                                threads=2)["model"])


@pytest.fixture(scope="session")
def sp8192_data(tmp_path_factory, sp8192_path, train_docs_jsonl, val_docs_jsonl) -> Path:
    """DATA_PATH at V = 8192: the train-head documents as train shards, the shipped val text as the val shard."""
    from golf.datatools import prepare

    out = tmp_path_factory.mktemp("sp8192_data")
    prepare(train_docs_jsonl, sp8192_path, out, val_path=val_docs_jsonl)
    return out
