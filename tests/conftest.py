"""Shared fixtures: the real challenge data in ../shared/data (or GOLF_TEST_DATA / DATA_PATH / TOKENIZER_PATH).

Missing data is a test failure, never a skip: every data-backed number in the suite is a real one.
"""

from __future__ import annotations

import json
import os
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
