"""Bad input through the real command lines: every CLI refuses it with exit 2 and one `error:` line naming the
file or argument, no traceback, and leaves what was already written as it was.

The table (ROWS) runs each row's command in a subprocess, four at a time. To add a case, append a Row:
    Row(id, cli, argv, names, setup=None, env={}, code=2)
argv and names may use {dir} (the row's own empty folder, the subprocess's cwd), {artifact} (a valid tiny
model.golf, shared and read-only), {data} and {tok} (the challenge data and tokenizer); names are substrings
the last stderr line must contain; setup(ctx) creates the row's files under ctx.dir before it runs (see Ctx).
Every file under the row's folder, the data folder and the tokenizer's folder is hashed before and after.
Each row costs a subprocess (~3 s, most of it importing torch): variants of one case belong in the unit tests
below the table, which check the same fixes in process.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch

from golf import artifact, quant
from golf.config import ENV_NAMES, config_from_dict, resolve_config
from golf.data import load_tokenizer
from golf.errors import ArtifactError, ConfigError, DataError
from golf.export import export_model, load_model
from golf.model import ModelConfig, TieredLM, Transformer
from test_train import subprocess_env, tiny_args


@dataclass(frozen=True)
class Ctx:
    dir: Path        # the row's own folder
    artifact: Path   # a valid tiny model.golf (do not modify: copy it)
    data: Path
    tok: Path

    def fmt(self, text: str) -> str:
        return text.format(dir=self.dir, artifact=self.artifact, data=self.data, tok=self.tok)


@dataclass(frozen=True)
class Row:
    id: str
    cli: str                                  # the module after `python -m`: golf.train, golf.eval, ...
    argv: tuple[str, ...]
    names: tuple[str, ...]                    # each must be in the error line
    setup: Callable[[Ctx], None] | None = None
    env: dict = field(default_factory=dict)
    code: int = 2                             # 3: a check that fails (golf.artifact --check), not bad input


# --- setups ------------------------------------------------------------------------------------------------

def rewrite_config(src: Path, dst: Path, **changes) -> None:
    """A copy of src whose header config has `changes`, with the header's crc32 recomputed: a file that passes
    the container's checks (golf.artifact) but holds a config no export_model wrote."""
    data = src.read_bytes()
    magic, version, hlen, _ = artifact.PREAMBLE.unpack_from(data)
    header = json.loads(data[artifact.PREAMBLE_BYTES:artifact.PREAMBLE_BYTES + hlen])
    header["config"].update(changes)
    hbytes = json.dumps(header, separators=(",", ":")).encode()
    dst.write_bytes(artifact.PREAMBLE.pack(magic, version, len(hbytes), zlib.crc32(hbytes)) + hbytes
                    + data[artifact.PREAMBLE_BYTES + hlen:])


def earlier_run(ctx: Ctx) -> None:
    """runs/r: a finished run's files, which a refused command must leave alone."""
    run = ctx.dir / "runs" / "r"
    run.mkdir(parents=True)
    (run / "summary.json").write_text('{"val_bpb": 1.5}\n')
    (run / "log.txt").write_text("event=end\n")


def config_of(**changes) -> Callable[[Ctx], None]:
    return lambda ctx: rewrite_config(ctx.artifact, ctx.dir / "bad.golf", **changes)


def truncated(ctx: Ctx) -> None:
    (ctx.dir / "short.golf").write_bytes(ctx.artifact.read_bytes()[:100])


def altered(ctx: Ctx) -> None:
    data = bytearray(ctx.artifact.read_bytes())
    data[-2] ^= 0x10
    (ctx.dir / "altered.golf").write_bytes(bytes(data))


def copied(ctx: Ctx) -> None:
    (ctx.dir / "model.golf").write_bytes(ctx.artifact.read_bytes())


def finished_run(ctx: Ctx, seed: int = 1, cut: int = 0) -> Path:
    """runs/r: a finished run's summary.json and model.golf (the tiny artifact with a header naming run r, seed 1,
    5 steps), the file cut short by `cut` bytes; the summary says `seed`."""
    run = ctx.dir / "runs" / "r"
    run.mkdir(parents=True)
    rewrite_config(ctx.artifact, run / "model.golf",
                   run={"run_id": "r", "preset": "cpu", "baseline": True, "seed": 1, "steps": 5, "git_sha": None})
    size = (run / "model.golf").stat().st_size
    if cut:
        (run / "model.golf").write_bytes((run / "model.golf").read_bytes()[:-cut])
    cfg = resolve_config(["--preset", "cpu", "--baseline", "--seed", str(seed), "--run-id", "r"], env={}).to_dict()
    (run / "summary.json").write_text(json.dumps({"config": cfg, "val_loss": 4.0, "val_bpb": 2.4, "steps": 5,
                                                  "artifact_bytes": size}))
    return run


def checkpoint_fit_on(tokens: int) -> Callable[[Ctx], None]:
    """ckpt.pt: a checkpoint of TRAIN's settings but tier_fit_tokens (all read_checkpoint reads before refusing)."""
    def setup(ctx: Ctx) -> None:
        cfg = resolve_config([*map(ctx.fmt, TRAIN), "--set", f"tier_fit_tokens={tokens}"], env={})
        torch.save({"format": "golf-checkpoint-1", "config": cfg.to_dict()}, ctx.dir / "ckpt.pt")
    return setup


def docs(ctx: Ctx) -> None:
    """docs.jsonl with 3 documents, and out/ holding a shard of the challenge's name from an earlier export."""
    (ctx.dir / "docs.jsonl").write_text("".join(json.dumps({"text": f"document {i}, a few words"}) + "\n"
                                                for i in range(3)))
    (ctx.dir / "out").mkdir()
    (ctx.dir / "out" / "fineweb_train_000000.bin").write_bytes(b"an earlier export")


# --- the table -----------------------------------------------------------------------------------------------

TRAIN = ("--preset", "cpu", "--data-path", "{data}", "--tokenizer-path", "{tok}", "--runs-dir", "{dir}/runs",
         "--run-id", "r", "--cpu-threads", "1")
SUBMIT = ("--name", "x", "--author", "x", "--github-id", "x", "--out", "{dir}/submission")
EVAL = ("{artifact}", "--data-path", "{data}", "--tokenizer-path", "{tok}", "--val-tokens", "4096")


def train_set(id_: str, setting: str, name: str) -> Row:
    return Row(id_, "golf.train", (*TRAIN, "--set", setting), (name,), earlier_run)


ROWS = [
    # a. list and object settings
    train_set("a-rate-bits", "quant.rate_bits=abc", "quant.rate_bits"),
    train_set("a-clip-candidates", "quant.clip_candidates=5", "quant.clip_candidates"),
    Row("a-bad-flag-value", "golf.train", (*TRAIN, "--seed", "abc"), ("--seed",), earlier_run),
    # b. the two model settings of two kinds
    train_set("b-rope-dims", "model.rope_dims=abc", "model.rope_dims"),
    train_set("b-xsa-int", "model.xsa=1", "model.xsa"),
    # c. an artifact whose (crc-valid) header config is wrong
    Row("c-train-seq-len", "golf.eval", ("{dir}/bad.golf", *EVAL[1:]), ("{dir}/bad.golf", "config.train_seq_len"),
        config_of(train_seq_len="abc")),
    Row("c-state", "golf.eval", ("{dir}/bad.golf", *EVAL[1:]), ("{dir}/bad.golf", "config.state"),
        config_of(state="zzz")),
    # d. golf.eval's numeric flags (the others: test_eval_refuses_bad_numeric_flags_before_loading), refused before
    # any work: d-stride's artifact does not exist, and the error names the flag
    Row("d-audit-negative", "golf.eval", (*EVAL, "--audit", "--audit-positions", "-3"), ("--audit-positions",)),
    Row("d-audit-zero", "golf.eval", (*EVAL, "--audit", "--audit-positions", "0"), ("--audit-positions",)),
    Row("d-stride", "golf.eval", ("{dir}/none.golf", "--stride", "0"), ("--stride",)),
    Row("d-batch-windows", "golf.eval", (*EVAL, "--batch-windows", "0"), ("--batch-windows",)),
    # e. the tokenizer against VOCAB_SIZE (a run that gets as far as loading the data)
    Row("e-vocab-size", "golf.train", tuple(tiny_args("{data}", "{tok}", "{dir}/runs", "new")), ("VOCAB_SIZE",),
        earlier_run, env={"VOCAB_SIZE": "1000"}),
    # f. golf.artifact: bad input is exit 2, a failed --check exit 3
    Row("f-truncated", "golf.artifact", ("{dir}/short.golf",), ("{dir}/short.golf", "truncated"), truncated),
    Row("f-altered", "golf.artifact", ("{dir}/altered.golf",), ("{dir}/altered.golf", "checksum"), altered),
    Row("f-missing", "golf.artifact", ("{dir}/none.golf",), ("{dir}/none.golf", "not found")),
    Row("f-cap", "golf.artifact", ("{artifact}", "--cap", "-5"), ("--cap",)),
    Row("f-check-over-cap", "golf.artifact", ("{dir}/model.golf", "--check", "--cap", "10"),
        ("{dir}/model.golf", "over the size cap"), copied, code=3),
    # g. the package itself
    Row("g-unknown-argument", "golf", ("bogus",), ("bogus",)),
    # golf.submit reads every artifact it submits
    Row("submit-truncated", "golf.submit", ("{dir}/runs/r", *SUBMIT), ("{dir}/runs/r", "does not load", "truncated"),
        lambda ctx: finished_run(ctx, cut=100)),
    Row("submit-other-run", "golf.submit", ("{dir}/runs/r", *SUBMIT), ("{dir}/runs/r", "seed: expected 2, found 1"),
        lambda ctx: finished_run(ctx, seed=2)),
    # one run, one directory; --resume, the runs folder
    Row("train-earlier-run", "golf.train", TRAIN, ("{dir}/runs/r", "holds an earlier run", "--overwrite"),
        earlier_run),
    Row("train-resume-other-fit", "golf.train", (*TRAIN, "--resume", "{dir}/ckpt.pt"),
        ("{dir}/ckpt.pt", "tier_fit_tokens", "131072 in the checkpoint"), checkpoint_fit_on(131072)),
    Row("train-resume-not-a-checkpoint", "golf.train", (*TRAIN, "--resume", "{dir}/runs/r/log.txt"),
        ("--resume {dir}/runs/r/log.txt", "not a golf checkpoint"), earlier_run),
    Row("train-runs-dir-a-file", "golf.train", (*TRAIN[:-6], "--runs-dir", "{dir}/runs/r/log.txt", *TRAIN[-4:]),
        ("--runs-dir", "cannot create the run directory"), earlier_run),
    Row("train-runs-dir-unwritable", "golf.train", (*TRAIN[:-6], "--runs-dir", "/proc/golf-runs", *TRAIN[-4:]),
        ("--runs-dir", "/proc/golf-runs")),
    # golf.datatools: an export does not overwrite one, every doc to val is no training set, no network
    Row("prepare-existing-shards", "golf.datatools",
        ("prepare", "--docs", "{dir}/docs.jsonl", "--tokenizer", "{tok}", "--out", "{dir}/out", "--val-docs", "1"),
        ("{dir}/out", "fineweb_train_000000.bin", "--overwrite"), docs),
    Row("prepare-no-train-docs", "golf.datatools",
        ("prepare", "--docs", "{dir}/docs.jsonl", "--tokenizer", "{tok}", "--out", "{dir}/new", "--val-docs", "3"),
        ("--val-docs", "no training shard"), docs),
    Row("download-no-network", "golf.datatools", ("download", "--train-shards", "0", "--dest", "{dir}/data"),
        ("http://127.0.0.1:9", "cannot fetch"), env={"HF_ENDPOINT": "http://127.0.0.1:9"}),
]


def hashes(*folders: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for folder in folders for p in sorted(folder.rglob("*")) if p.is_file()}


def check(row: Row, ctx: Ctx) -> list[str]:
    """What is wrong with the row's outcome (empty: nothing)."""
    watched = (ctx.dir, ctx.data, ctx.tok.parent)
    before = hashes(*watched)
    env = subprocess_env(**row.env)
    for name in ENV_NAMES:  # the challenge's names in the test's own environment must not reach the run
        if name not in row.env:
            env.pop(name, None)
    proc = subprocess.run([sys.executable, "-m", row.cli, *map(ctx.fmt, row.argv)], capture_output=True,
                          text=True, env=env, cwd=ctx.dir, timeout=300)
    after = hashes(*watched)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    problems = []
    if proc.returncode != row.code:
        problems.append(f"exit {proc.returncode}, expected {row.code}")
    if not last.startswith("error:"):
        problems.append(f"last stderr line does not start with 'error:': {last!r}")
    problems += [f"error line does not name {ctx.fmt(n)!r}: {last!r}" for n in row.names if ctx.fmt(n) not in last]
    if "Traceback" in proc.stderr:
        problems.append("a traceback:\n" + proc.stderr[-2000:])
    problems += [f"{path} changed or removed" for path, digest in before.items() if after.get(path) != digest]
    return [f"{row.id}: {p}" for p in problems]


@pytest.fixture(scope="module")
def tiny_artifact(tmp_path_factory) -> Path:
    """A random one-layer baseline model (vocab 1024, the challenge tokenizer's) as model.golf, read-only."""
    torch.manual_seed(0)
    transformer = Transformer(ModelConfig(vocab_size=1024, num_layers=1, model_dim=32, num_heads=2, num_kv_heads=1))
    path = tmp_path_factory.mktemp("artifact") / "model.golf"
    export_model(path, TieredLM(transformer, torch.zeros(0, 1024), trainable=False), None, train_seq_len=64)
    path.chmod(0o444)
    return path


def test_bad_inputs_are_refused_by_every_cli(tmp_path, tiny_artifact, data_path, tokenizer_path):
    assert len({row.id for row in ROWS}) == len(ROWS)
    ctxs = []
    for row in ROWS:
        ctx = Ctx(tmp_path / row.id, tiny_artifact, Path(data_path), Path(tokenizer_path))
        ctx.dir.mkdir()
        if row.setup:
            row.setup(ctx)
        ctxs.append(ctx)
    with ThreadPoolExecutor(4) as pool:  # ~3 s of imports per subprocess: the table in parallel
        problems = [p for found in pool.map(check, ROWS, ctxs) for p in found]
    assert not problems, "\n".join(problems)


# --- unit tests of the fixes ---------------------------------------------------------------------------------

@pytest.mark.parametrize("setting, name", [
    ("quant.rate_bits=abc", "quant.rate_bits"), ("quant.rate_bits=6", "quant.rate_bits"),
    ("quant.rate_bits=[4,6.5]", "quant.rate_bits"), ("quant.clip_candidates=abc", "quant.clip_candidates"),
    ("quant.schemes=abc", "quant.schemes"), ("quant.schemes=[1]", "quant.schemes"),
    ("model.rope_dims=abc", "model.rope_dims"), ("model.rope_dims=[16]", "model.rope_dims"),
    ("model.xsa=1", "model.xsa"), ("model.xsa=abc", "model.xsa"), ('model.xsa=["0"]', "model.xsa"),
])
def test_set_refuses_a_value_of_the_wrong_kind_naming_the_setting(setting, name):
    with pytest.raises(ConfigError, match=name.replace(".", r"\.")):
        resolve_config(["--preset", "cpu", "--set", setting], env={})


def test_set_takes_list_and_object_values_of_the_right_kind():
    cfg = resolve_config(["--preset", "cpu", "--set", "quant.rate_bits=[4, 6]", "--set",
                          "quant.clip_candidates=[0.999, 1]", "--set", 'quant.schemes={"x": "fp16"}',
                          "--set", "model.xsa=[0]", "--set", "model.rope_dims=null", "--set",
                          "artifact_codec=lzma"], env={})
    assert cfg.quant.rate_bits == (4, 6) and cfg.quant.clip_candidates == (0.999, 1.0)
    assert cfg.quant.schemes == {"x": "fp16"} and cfg.artifact_codec == "lzma"
    assert cfg.model["xsa"] == [0] and cfg.model["rope_dims"] is None
    assert resolve_config(["--preset", "cpu", "--set", "model.xsa=false", "--set", "model.rope_dims=8"],
                          env={}).model == dict(cfg.model, xsa=False, rope_dims=8)


@pytest.mark.parametrize("kwargs", [dict(rate_bits="abc"), dict(rate_bits=6), dict(rate_bits=(6, 6.5)),
                                    dict(clip_candidates="abc"), dict(clip_candidates=5), dict(schemes="abc")])
def test_quant_config_refuses_sequences_of_the_wrong_kind(kwargs):
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        quant.QuantConfig(**kwargs)


def test_a_config_file_with_values_of_the_wrong_kind_is_a_config_error(tmp_path):
    base = resolve_config(["--preset", "cpu"], env={}).to_dict()
    for part, key, value in [("quant", "rate_bits", "abc"), ("model", "xsa", 1), ("model", "rope_dims", "x")]:
        values = json.loads(json.dumps(base))
        values[part][key] = value
        path = tmp_path / f"{key}.json"
        path.write_text(json.dumps(values))
        with pytest.raises(ConfigError, match=key):
            resolve_config(["--config", str(path)], env={})
    with pytest.raises(ConfigError, match="rate_bits"):
        config_from_dict(dict(base, quant=dict(base["quant"], rate_bits="abc")))


@pytest.mark.parametrize("changes, field_", [
    (dict(train_seq_len="abc"), "config.train_seq_len"), (dict(train_seq_len=0), "config.train_seq_len"),
    (dict(state="zzz"), "config.state"), (dict(state={"w": "x"}), "config.state"),
    (dict(state={"transformer.tok_emb.weight": {"scheme": "int6", "shape": "x"}}), "config.state"),
    (dict(vocab_size=True), "config.vocab_size"), (dict(has_tier1="no"), "config.has_tier1"),
    (dict(model=[]), "config.model"), (dict(tiers=3), "config.tiers"),
])
def test_load_model_refuses_a_bad_header_config_naming_file_and_field(tiny_artifact, tmp_path, changes, field_):
    bad = tmp_path / "bad.golf"
    rewrite_config(tiny_artifact, bad, **changes)
    artifact.load(bad)  # a valid container: only the model's config is wrong
    with pytest.raises(ArtifactError) as err:
        load_model(bad)
    assert err.value.file == bad and err.value.field == field_ and str(bad) in str(err.value)


def test_the_vocab_size_mismatch_names_its_setting(tokenizer_path):
    with pytest.raises(DataError, match="VOCAB_SIZE") as err:
        load_tokenizer(tokenizer_path, 1000)
    assert "--vocab-size" in str(err.value) and "expected 1000, found 1024" in str(err.value)
    with pytest.raises(DataError, match="model.golf: config.vocab_size"):
        load_tokenizer(tokenizer_path, 512, setting="model.golf: config.vocab_size")


def test_eval_refuses_bad_numeric_flags_before_loading():
    from golf import eval as golf_eval

    parse = golf_eval.build_parser().parse_args
    golf_eval.check_args(parse(["x.golf", "--window", "0", "--val-tokens", "2", "--audit-positions", "1"]))
    for flags, name in [(["--audit-positions", "0"], "--audit-positions"), (["--stride", "-1"], "--stride"),
                        (["--batch-windows", "0"], "--batch-windows"), (["--val-tokens", "-2"], "--val-tokens"),
                        (["--window", "-1"], "--window")]:
        with pytest.raises(ConfigError, match=name):
            golf_eval.check_args(parse(["x.golf", *flags]))


def test_audit_refuses_zero_positions(tiny_artifact):
    from golf.evaluate import audit

    loaded = load_model(tiny_artifact)
    with pytest.raises(ConfigError, match="positions"):
        audit(loaded.lm, loaded.prior_rows, torch.arange(200) % 1000 + 2, window=64, stride=64, positions=0)


def test_artifact_cli_exit_codes(tiny_artifact, tmp_path, capsys):
    assert artifact.main([str(tiny_artifact)]) == 0
    assert artifact.main([str(tiny_artifact), "--check", "--cap", "10"]) == artifact.CHECK_FAILED == 3
    assert artifact.main([str(tmp_path / "none.golf")]) == 2
    capsys.readouterr()
    with pytest.raises(SystemExit) as shown:
        artifact.main(["--help"])
    assert shown.value.code == 0 and "exit 3 when" in " ".join(capsys.readouterr().out.split())


def test_python_m_golf_lists_the_commands(capsys):
    import importlib.util

    from golf.__main__ import COMMANDS, main

    assert main([]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out
        source = Path(importlib.util.find_spec(name).origin).read_text()
        assert '__name__ == "__main__"' in source  # each listed command runs as python -m
    assert main(["--help"]) == 0
    assert main(["train"]) == 2
    err = capsys.readouterr().err
    assert "golf.train" in err and err.strip().splitlines()[-1].startswith("error:")
    proc = subprocess.run([sys.executable, "-m", "golf"], capture_output=True, text=True, env=subprocess_env())
    assert proc.returncode == 0 and "golf.experiment" in proc.stdout


def test_experiment_help_is_complete(capsys):
    from golf import experiment

    with pytest.raises(SystemExit) as shown:
        experiment.parse_args(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    first = " ".join(experiment.__doc__.split("\n\n")[0].split())
    assert shown.value.code == 0 and first in out and first.endswith("curves.")
    assert "tiered-small" in out and "Any other flag is passed to every golf.train run." in out
