"""bench.compare_runs: curves parsed from log.txt, one table row per summary.json, one PNG; bad dirs named."""

import json

import pytest

from bench import compare_runs


def make_run(path, loss_at, bpb_at, summary):
    path.mkdir()
    lines = ["event=start run_id=x preset=cpu"]
    lines += [f"event=train step={i} loss={v} lr_scale=1 train_seconds={t}" for i, (t, v) in enumerate(loss_at)]
    lines += [f"event=val step={i} val_bpb={v} val_loss=1 train_seconds={t}" for i, (t, v) in enumerate(bpb_at)]
    lines += ["event=final val_bpb=2.0 seconds=1.0"]   # no train_seconds: not a curve point
    (path / "log.txt").write_text("\n".join(lines) + "\n")
    (path / "summary.json").write_text(json.dumps(summary))


def test_curves_table_and_plot(tmp_path, capsys):
    a, b = tmp_path / "tiered", tmp_path / "baseline"
    make_run(a, [(1.0, 3.5), (2.0, 3.1)], [(0.0, 2.2)], {"steps": 2, "float_val_bpb": 2.1, "train_seconds": 2.5,
                                                          "tiers_only_bpb": 2.2, "total_bytes": 1234567})
    make_run(b, [(1.0, 6.9)], [], {"steps": 1, "float_val_bpb": None})
    assert compare_runs.read_log(a / "log.txt") == {"loss": [(1.0, 3.5), (2.0, 3.1)], "val_bpb": [(0.0, 2.2)]}
    out = tmp_path / "cmp.png"
    compare_runs.main([str(a), str(b), "--out", str(out)])
    text = capsys.readouterr().out
    row = next(line for line in text.splitlines() if line.startswith("tiered"))
    assert "2.2000" in row and "2.1000" in row and "1,234,567" in row
    assert "—" in next(line for line in text.splitlines() if line.startswith("baseline"))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_directory_without_a_run_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        compare_runs.main([str(tmp_path)])
    assert f"{tmp_path}: no summary.json there" in capsys.readouterr().err
