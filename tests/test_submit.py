"""python -m golf.submit: a records-style folder from two short cpu runs (two seeds), refused loudly on bad input
with nothing written; and the folder's train_gpt.py, copied alone into an empty directory, builds golf and trains."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from golf import stats, submit
from test_train import run_inprocess, subprocess_env, tiny_args

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def two_seeds(data_path, tokenizer_path, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    for seed in (1, 2):
        run_inprocess(tiny_args(data_path, tokenizer_path, runs, f"s{seed}", "--iterations", "4", "--seed", str(seed),
                                "--set", "val_loss_every=0"))
    return runs


def args(runs, out, *extra):
    return [str(runs / "s1"), str(runs / "s2"), "--name", "golf tiny", "--author", "A. Golfer", "--github-id", "agolfer",
            "--out", str(out), *extra]


def test_writes_the_records_folder(two_seeds, tmp_path, capsys):
    out = tmp_path / "sub"
    assert submit.main(args(two_seeds, out, "--sota-loss", "9.0", "--blurb", "tiers + transformer")) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "requirements.txt", "submission.json",
                                                     "train_gpt.py", "train_seed1.log", "train_seed2.log"]
    sub = json.loads((out / "submission.json").read_text())
    summaries = [json.loads((two_seeds / f"s{s}" / "summary.json").read_text()) for s in (1, 2)]
    code = (out / "train_gpt.py").stat().st_size
    assert set(sub) == {"author", "github_id", "name", "blurb", "date", "val_loss", "val_bpb", "bytes_total",
                        "bytes_code"}
    assert sub["bytes_code"] == code and sub["name"] == "golf tiny" and sub["github_id"] == "agolfer"
    assert sub["val_bpb"] == pytest.approx(sum(s["val_bpb"] for s in summaries) / 2)
    assert sub["bytes_total"] == max((two_seeds / f"s{s}" / "model.golf").stat().st_size for s in (1, 2)) + code
    # The first run counted the code it would ship: this train_gpt.py, which carries its config and seed.
    assert summaries[0]["code_bytes"] == code
    readme = (out / "README.md").read_text()
    assert "| 1 |" in readme and "| 2 |" in readme and "SEED=2" in readme and "torchrun --standalone" in readme
    test = submit.significance([s["val_loss"] for s in summaries], 9.0)
    assert f"p = {test['p']:.3g}" in readme and test["p"] < 0.05  # tiny runs sit far below a loss of 9 nats
    assert "t-test" in capsys.readouterr().out


@pytest.mark.parametrize("t, df, want", [(2.0, 3, 0.930337), (-2.5, 10, 0.015723), (0.0, 7, 0.5),
                                         (1.0, 1, 0.75), (-6.0, 2, 0.5 * (1 - 6 / math.sqrt(38)))])
def test_student_t_cdf(t, df, want):
    assert stats.student_t_cdf(t, df) == pytest.approx(want, abs=2e-6)


def test_bad_input_is_named_and_nothing_is_written(two_seeds, tmp_path, capsys, monkeypatch):
    out = tmp_path / "sub"
    broken = tmp_path / "broken"
    shutil.copytree(two_seeds / "s2", broken)
    (broken / "model.golf").unlink()
    assert submit.main([str(two_seeds / "s1"), str(broken), *args(two_seeds, out)[2:]]) == 2
    assert "model.golf is missing" in capsys.readouterr().err and not out.exists()

    other = tmp_path / "other"
    shutil.copytree(two_seeds / "s2", other)
    summary = json.loads((other / "summary.json").read_text())
    summary["config"]["iterations"] = 8  # a setting model.golf's header does not record
    (other / "summary.json").write_text(json.dumps(summary))
    assert submit.main([str(two_seeds / "s1"), str(other), *args(two_seeds, out)[2:]]) == 2
    err = capsys.readouterr().err
    assert "differs" in err and "iterations" in err
    assert not out.exists()

    assert submit.main([str(two_seeds / "s1"), str(two_seeds / "s1"), *args(two_seeds, out)[2:]]) == 2
    assert "repeat a seed" in capsys.readouterr().err and not out.exists()

    monkeypatch.setattr(submit, "CAP_BYTES", 100_000)
    assert submit.main(args(two_seeds, out)) == 2
    assert "over the cap of 100,000" in capsys.readouterr().err and not out.exists()
    monkeypatch.undo()

    out.mkdir()
    (out / "x").write_text("keep me")
    assert submit.main(args(two_seeds, out)) == 2
    assert "not an empty folder" in capsys.readouterr().err and (out / "x").read_text() == "keep me"

    with pytest.raises(SystemExit):  # argparse: --name is required
        submit.main([str(two_seeds / "s1"), "--author", "a", "--github-id", "b", "--out", str(tmp_path / "n")])
    assert not (tmp_path / "n").exists() and not list(tmp_path.glob(".*tmp*"))


def _truncate(run, two_seeds):
    data = (run / "model.golf").read_bytes()
    (run / "model.golf").write_bytes(data[:-100])
    return ["does not load", "truncated payload"]


def _foreign(run, two_seeds):  # a rerun under the same RUN_ID killed between export and summary
    shutil.copy2(two_seeds / "s1" / "model.golf", run / "model.golf")
    return ["not the run summary.json describes", "seed: expected 2, found 1", "run_id: expected 's2', found 's1'"]


def _edited_summary(run, two_seeds):
    summary = json.loads((run / "summary.json").read_text())
    summary["steps"] += 1
    summary["seed"] = summary["config"]["seed"] = 3
    summary["config"]["model"]["model_dim"] = 128
    (run / "summary.json").write_text(json.dumps(summary))
    return ["seed: expected 3, found 2", "steps: expected 5, found 4", "model.model_dim: expected 128, found 64"]


def _artifact_bytes(run, two_seeds):
    summary = json.loads((run / "summary.json").read_text())
    n = summary["artifact_bytes"] = (run / "model.golf").stat().st_size + 1
    (run / "summary.json").write_text(json.dumps(summary))
    return ["artifact_bytes", f"expected {n:,}, found {n - 1:,} bytes"]


@pytest.mark.parametrize("damage", [_truncate, _foreign, _edited_summary, _artifact_bytes],
                         ids=["truncated", "foreign", "edited_summary", "artifact_bytes"])
def test_model_golf_is_checked_against_its_summary(two_seeds, tmp_path, capsys, damage):
    """A model.golf that fails its checksums, or is not the run (seed, steps, config) or the size that summary.json
    reports, is refused with the run named and nothing written; an intact copy of the same run is submitted.
    The copy goes alone, so that only these checks stand between it and a submission."""
    run, out = tmp_path / "copy", tmp_path / "sub"
    shutil.copytree(two_seeds / "s2", run, ignore=shutil.ignore_patterns("checkpoint.pt"))
    assert submit.main([str(run), *args(two_seeds, out)[2:]]) == 0
    shutil.rmtree(out)
    wants = damage(run, two_seeds)
    assert submit.main([str(run), *args(two_seeds, out)[2:]]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {run}: ") and all(w in err for w in wants), err
    assert not out.exists() and not list(tmp_path.glob(".*tmp*"))


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_train_gpt_runs_from_its_folder_alone(two_seeds, data_path, tokenizer_path, tmp_path):
    """Copied alone into an empty directory, train_gpt.py unpacks golf, builds golf._C (CMake, against the torch
    of the interpreter running it), trains with the config it carries (the environment's DATA_PATH,
    TOKENIZER_PATH and MAX_WALLCLOCK_SECONDS on top) and writes model.golf; golf itself need not be importable."""
    out = tmp_path / "sub"
    assert submit.main(args(two_seeds, out)) == 0
    alone = tmp_path / "elsewhere"
    alone.mkdir()
    shutil.copy2(out / "train_gpt.py", alone)
    env = {k: v for k, v in subprocess_env().items() if k not in ("PYTHONPATH", "GOLF_SOURCE_DIR")}
    env.update(DATA_PATH=str(data_path), TOKENIZER_PATH=str(tokenizer_path), MAX_WALLCLOCK_SECONDS="60",
               RUN_ID="again")
    proc = subprocess.run([sys.executable, "train_gpt.py"], cwd=alone, env=env, capture_output=True, text=True,
                          timeout=1100)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    run = alone / "runs" / "again"
    summary = json.loads((run / "summary.json").read_text())
    assert (run / "model.golf").is_file() and summary["config"]["seed"] == 1 and summary["steps"] == 4
    assert summary["config"]["max_wallclock_seconds"] == 60  # the environment over the carried config
    assert summary["code_bytes"] == (alone / "train_gpt.py").stat().st_size  # it counts the file it runs from
    assert Path(summary["config"]["data_path"]) == Path(data_path)
    assert os.path.isdir(alone / "golf_src" / "python" / "golf")
