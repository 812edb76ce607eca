"""golf.datatools download, tested up to the network call: huggingface_hub's hf_hub_download and
get_hf_file_metadata are replaced by a local fake hub; the unreachable-hub test uses a closed local port."""

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

import pytest

from golf import data, datatools, download
from golf.errors import ConfigError, DataError

huggingface_hub = pytest.importorskip("huggingface_hub", reason="the download extra (huggingface_hub) is required")


@pytest.fixture
def hub(tmp_path, val_shard, train_shard, tokenizer_path, monkeypatch):
    """A fake dataset repo laid out like the challenge's, served through a fake hf_hub_download."""
    root = tmp_path / "hub"
    ds = root / "datasets" / "datasets" / "fineweb10B_sp1024"
    ds.mkdir(parents=True)
    shutil.copy(val_shard, ds / "fineweb_val_000000.bin")
    for i in range(3):
        shutil.copy(train_shard, ds / f"fineweb_train_{i:06d}.bin")
    (root / "datasets" / "tokenizers").mkdir()
    shutil.copy(tokenizer_path, root / "datasets" / "tokenizers" / "fineweb_1024_bpe.model")
    shutil.copy(tokenizer_path.with_suffix(".vocab"), root / "datasets" / "tokenizers" / "fineweb_1024_bpe.vocab")
    manifest = {
        "datasets": [{"name": "fineweb10B_sp1024", "tokenizer_name": "sp_bpe_1024", "vocab_size": 1024, "bos_id": 1,
                      "stats": {"files_train": 3, "files_val": 1}}],
        "tokenizers": [{"name": "sp_bpe_1024", "kind": "sentencepiece_bpe", "vocab_size": 1024,
                        "model_path": "tokenizers/fineweb_1024_bpe.model",
                        "vocab_path": "tokenizers/fineweb_1024_bpe.vocab"}],
    }
    (root / "datasets" / "manifest.json").write_text(json.dumps(manifest))
    calls = []

    def fake_hf_hub_download(repo_id, filename, subfolder=None, repo_type=None, local_dir=None, endpoint=None):
        # What the real one does with local_dir: the file lands at local_dir/subfolder/filename.
        assert repo_type == "dataset" and local_dir is not None
        assert repo_id == download.repo_id()
        calls.append(f"{subfolder}/{filename}")
        path = root / (subfolder or "") / filename
        if not path.exists():
            raise FileNotFoundError(f"404 {repo_id}/{subfolder}/{filename}")
        out = Path(local_dir) / (subfolder or "") / filename
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, out)
        return str(out)

    def fake_get_hf_file_metadata(url, timeout=None):
        assert timeout == download.HUB_TIMEOUT_S  # HubFetch's quick check that the hub answers: here it does

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hf_hub_download)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", fake_get_hf_file_metadata)
    return root, calls


def test_download_into_the_challenge_layout(tmp_path, hub, capsys):
    root, calls = hub
    dest = tmp_path / "data"
    assert datatools.main(["download", "--variant", "sp1024", "--train-shards", "2", "--dest", str(dest)]) == 0
    assert "fetched=5 present=0" in capsys.readouterr().out
    assert calls[0] == "datasets/manifest.json"
    assert "datasets/datasets/fineweb10B_sp1024/fineweb_val_000000.bin" in calls
    assert "datasets/tokenizers/fineweb_1024_bpe.model" in calls
    ds = dest / "datasets" / "fineweb10B_sp1024"
    assert sorted(p.name for p in ds.iterdir()) == ["fineweb_train_000000.bin", "fineweb_train_000001.bin",
                                                     "fineweb_val_000000.bin"]
    assert (dest / "tokenizers" / "fineweb_1024_bpe.model").is_file()
    assert data.read_header(ds / "fineweb_val_000000.bin") == 262_145

    # Present and valid files are not fetched again; a corrupt one is.
    calls.clear()
    assert download.download("sp1024", 2, dest)["fetched"] == 0 and calls == []
    (ds / "fineweb_train_000001.bin").write_bytes(b"\0" * 2000)
    assert download.download("sp1024", 2, dest)["fetched"] == 1
    assert calls == ["datasets/datasets/fineweb10B_sp1024/fineweb_train_000001.bin"]
    assert data.read_header(ds / "fineweb_train_000001.bin") == 1_048_576


def test_env_overrides_repo_and_root(tmp_path, hub, monkeypatch):
    root, calls = hub
    shutil.move(root / "datasets", root / "alt")
    monkeypatch.setenv("MATCHED_FINEWEB_REPO_ID", "someone/fork")
    monkeypatch.setenv("MATCHED_FINEWEB_REMOTE_ROOT_PREFIX", "alt")
    download.download("sp1024", 0, tmp_path / "data")
    assert calls[0] == "alt/manifest.json" and all(c.startswith("alt/") for c in calls)


def test_invalid_remote_shard_is_refused_and_kept_aside(tmp_path, hub):
    root, _ = hub
    bad = root / "datasets" / "datasets" / "fineweb10B_sp1024" / "fineweb_train_000000.bin"
    bad.write_bytes(bad.read_bytes()[:-10])
    with pytest.raises(DataError, match="size"):
        download.download("sp1024", 1, tmp_path / "data")
    ds = tmp_path / "data" / "datasets" / "fineweb10B_sp1024"
    assert (ds / "fineweb_train_000000.bin.invalid").exists() and not (ds / "fineweb_train_000000.bin").exists()


def test_manifest_errors(tmp_path, hub):
    with pytest.raises(ConfigError, match=r"\[0, 3\]"):
        download.download("sp1024", 4, tmp_path / "data")
    with pytest.raises(DataError, match="fineweb10B_sp4096 is not in the manifest"):
        download.download("sp4096", 1, tmp_path / "data")
    with pytest.raises(ConfigError, match="--variant"):
        download.download("gpt2", 1, tmp_path / "data")


def test_remote_tokenizer_with_wrong_vocab_is_refused(tmp_path, hub):
    root, _ = hub
    manifest = json.loads((root / "datasets" / "manifest.json").read_text())
    manifest["datasets"][0]["vocab_size"] = 2048
    (root / "datasets" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="expected 2048, found 1024"):
        download.download("sp1024", 0, tmp_path / "data")


def test_with_docs_plans_the_docs_and_sidecar():
    manifest = {"datasets": [{"name": "fineweb10B_sp1024", "tokenizer_name": "t", "stats": {"files_train": 195,
                                                                                           "files_val": 1}}],
                "tokenizers": [{"name": "t", "model_path": "tokenizers/a.model"}]}
    files = download.plan(manifest, "sp1024", 80, with_docs=True)
    remotes = [r for r, _, _ in files]
    assert remotes[0] == "datasets/datasets/fineweb10B_sp1024/fineweb_val_000000.bin"
    assert remotes[80] == "datasets/datasets/fineweb10B_sp1024/fineweb_train_000079.bin"
    assert "datasets/docs_selected.jsonl" in remotes and "datasets/docs_selected.source_manifest.json" in remotes
    assert Path(files[-3][1]) == Path("tokenizers/a.model")


def test_unreachable_hub_is_one_line_and_fast(tmp_path, val_shard, capsys, caplog, monkeypatch):
    # A closed local port: refused at once, no network needed. Retries would take ~25 s, a traceback 50 lines.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    dest = tmp_path / "data"
    present = dest / "datasets" / "fineweb10B_sp1024" / "fineweb_val_000000.bin"
    present.parent.mkdir(parents=True)
    shutil.copy(val_shard, present)
    before = hashlib.sha256(present.read_bytes()).hexdigest()
    start = time.monotonic()
    assert datatools.main(["download", "--train-shards", "0", "--dest", str(dest)]) == 2
    assert time.monotonic() - start < 5
    err = capsys.readouterr().err
    assert err.startswith("error: http://127.0.0.1:9/datasets/willdepueoai/parameter-golf/") and err.count("\n") == 1
    assert "manifest.json" in err and "cannot fetch from the Hugging Face hub" in err
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # no "Retrying in 1s" lines either
    assert hashlib.sha256(present.read_bytes()).hexdigest() == before
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == \
        ["datasets/fineweb10B_sp1024/fineweb_val_000000.bin"]
