"""python -m golf.datatools download: the challenge's cached shards and tokenizer from the Hugging Face hub.

Follows the challenge's data/cached_challenge_fineweb.py: the dataset repo MATCHED_FINEWEB_REPO_ID
(default willdepueoai/parameter-golf), files under the remote root MATCHED_FINEWEB_REMOTE_ROOT_PREFIX
(default "datasets"), all driven by <root>/manifest.json. Local layout (the challenge's):
    <dest>/manifest.json
    <dest>/datasets/fineweb10B_sp1024/fineweb_{val,train}_NNNNNN.bin
    <dest>/tokenizers/fineweb_1024_bpe.{model,vocab}
A file already present and valid is not fetched again; every shard's header and size are verified. A hub that
cannot be reached (HF_ENDPOINT, default https://huggingface.co) is a one-line DataError naming the URL within
HUB_TIMEOUT_S seconds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from golf.data import load_tokenizer, read_header
from golf.errors import ConfigError, DataError
from golf.progress import Progress

DEFAULT_REPO_ID = "willdepueoai/parameter-golf"
DEFAULT_REMOTE_ROOT = "datasets"


def repo_id() -> str:
    return os.environ.get("MATCHED_FINEWEB_REPO_ID", DEFAULT_REPO_ID)


def remote_root() -> str:
    return os.environ.get("MATCHED_FINEWEB_REMOTE_ROOT_PREFIX", DEFAULT_REMOTE_ROOT).strip("/")


def dataset_name(variant: str) -> str:
    """sp<V> -> fineweb10B_sp<V>; byte260 -> fineweb10B_byte260."""
    if not re.fullmatch(r"sp\d+|byte260", variant):
        raise ConfigError(f"--variant must be sp<V> (e.g. sp1024) or byte260, got {variant!r}")
    return f"fineweb10B_{variant}"


HUB_TIMEOUT_S = 5  # seconds for the first request to answer; hf_hub_download alone retries for ~25 s


class HubFetch:
    """download()'s fetch: one file of the dataset repo under `staging` (not the shared HF cache: a shard is
    200 MB and a hard link into the cache would let a damaged local copy damage the cache too).

    Before its first download it asks the hub for that file's metadata once, without retries and with a short
    timeout, so an unreachable hub is a one-line error in seconds; hf_hub_download's own retries are kept for
    later files, where a failure is more likely a passing one."""

    def __init__(self):
        self.reached = False

    def __call__(self, remote_path: str, staging: Path) -> Path:
        try:
            import huggingface_hub
        except ImportError as exc:
            raise ConfigError("download needs huggingface_hub: pip install 'golf[download]'") from exc
        parent, _, name = remote_path.rpartition("/")
        # HF_ENDPOINT read now, not when huggingface_hub was imported, so a mirror can be set by the caller too
        endpoint = os.environ.get("HF_ENDPOINT", "").rstrip("/") or None
        where = dict(repo_id=repo_id(), filename=name, subfolder=parent or None, repo_type="dataset",
                     endpoint=endpoint)
        url = huggingface_hub.hf_hub_url(**where)
        # Any exception is caught: the HTTP library's own (requests, httpx, httpx2) differ across huggingface_hub
        # versions; its type and first line go into the message.
        try:
            if not self.reached:
                huggingface_hub.get_hf_file_metadata(url, timeout=HUB_TIMEOUT_S)
                self.reached = True
            return Path(huggingface_hub.hf_hub_download(**where, local_dir=staging))
        except Exception as exc:
            reason = (str(exc).strip().splitlines() or [""])[0]
            raise DataError(f"cannot fetch from the Hugging Face hub ({type(exc).__name__}: {reason}); check the "
                            "network, HF_ENDPOINT and MATCHED_FINEWEB_REPO_ID", file=url) from exc


def _place(fetched: Path, destination: Path) -> None:
    """Move a fetched file into place in one rename, so a failure never leaves a partial file there."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(fetched, destination)
    except OSError:  # staging on another filesystem
        tmp = destination.with_name(destination.name + ".part")
        shutil.copyfile(fetched, tmp)
        os.replace(tmp, destination)


def _shard_ok(path: Path) -> bool:
    try:
        read_header(path)
        return True
    except DataError:
        return False


def plan(manifest: dict, variant: str, train_shards: int, with_docs: bool) -> list[tuple[str, str, str]]:
    """(remote path, local relative path, kind) for every file a download needs, from the manifest."""
    name = dataset_name(variant)
    entry = next((d for d in manifest.get("datasets", []) if d.get("name") == name), None)
    if entry is None:
        found = [d.get("name") for d in manifest.get("datasets", [])]
        raise DataError(f"dataset {name} is not in the manifest", file="manifest.json", field="datasets[].name",
                        expected=name, found=found)
    stats = entry.get("stats") or {}
    files_train, files_val = int(stats.get("files_train", 0)), int(stats.get("files_val", 0))
    if not 0 <= train_shards <= files_train:
        raise ConfigError(f"--train-shards must be in [0, {files_train}] for {name}, got {train_shards}")
    tok_name = entry.get("tokenizer_name")
    tok = next((t for t in manifest.get("tokenizers", []) if t.get("name") == tok_name), None)
    if tok is None:
        raise DataError(f"tokenizer {tok_name} of {name} is not in the manifest", file="manifest.json",
                        field="tokenizers[].name", expected=tok_name, found=None)
    root = remote_root()
    files = []
    for split, count in (("val", files_val), ("train", train_shards)):
        for i in range(count):
            rel = f"datasets/{name}/fineweb_{split}_{i:06d}.bin"
            files.append((f"{root}/{rel}", rel, "shard"))
    for key in ("model_path", "vocab_path", "path"):
        if tok.get(key):
            kind = "tokenizer" if key == "model_path" and tok.get("kind", "sentencepiece").startswith("sentencepiece") \
                else "file"
            files.append((f"{root}/{tok[key]}", tok[key], kind))
    if with_docs:
        for rel in ("docs_selected.jsonl", "docs_selected.source_manifest.json"):
            files.append((f"{root}/{rel}", rel, "file"))
    return files


def download(variant: str = "sp1024", train_shards: int = 80, dest="data", with_docs: bool = False,
             fetch=None) -> dict:
    """Fetch what plan() lists into `dest`; `fetch(remote_path, staging) -> Path` defaults to a HubFetch."""
    fetch = fetch or HubFetch()
    dest = Path(dest)
    staging = dest / ".download"
    manifest_path = dest / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        _place(fetch(f"{remote_root()}/manifest.json", staging), manifest_path)
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"manifest is not JSON: {exc}", file=manifest_path) from exc
    files = plan(manifest, variant, train_shards, with_docs)
    entry = next(d for d in manifest["datasets"] if d.get("name") == dataset_name(variant))
    vocab = entry.get("vocab_size")
    fetched = skipped = 0
    with Progress("download", total=len(files), unit="files") as progress:
        for remote, rel, kind in files:
            local = dest / rel
            present = local.is_file() and (kind != "shard" or _shard_ok(local))
            if not present:
                _place(fetch(remote, staging), local)
                fetched += 1
            else:
                skipped += 1
            if kind == "shard":
                try:
                    read_header(local)
                except DataError:
                    local.replace(local.with_name(local.name + ".invalid"))  # keep it for inspection
                    raise
            elif kind == "tokenizer":
                load_tokenizer(local, int(vocab) if vocab else None, setting="manifest.json's vocab_size")
            progress.update(1, file=rel, fetched=fetched, present=skipped)
    return {"fetched": fetched, "present": skipped, "files": [str(dest / rel) for _, rel, _ in files],
            "dataset_dir": str(dest / "datasets" / dataset_name(variant))}


def run_cli(args) -> int:
    result = download(args.variant, args.train_shards, args.dest, args.with_docs)
    print(f"fetched={result['fetched']} present={result['present']} DATA_PATH={result['dataset_dir']}")
    return 0
