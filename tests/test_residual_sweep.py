"""bench.residual_sweep: one tier fit shared by every variant, results free of the clock, bad variants named."""

import pytest

from bench import residual_sweep

TINY = "model.model_dim=64;model.num_heads=2;model.num_kv_heads=1;train_seq_len=64;train_batch_tokens=512"


def test_variants_share_the_tiers_and_repeat_exactly(data_path, tokenizer_path, tmp_path, capsys, one_thread):
    out = tmp_path / "sweep.png"
    residual_sweep.main(["--data", str(data_path), "--tokenizer", str(tokenizer_path), "--steps", "4",
                         "--refine-steps", "2", "--eval-every", "2", "--eval-tokens", "4096", "--out", str(out),
                         "--variant", f"tiered:{TINY}", "--variant", f"again:{TINY}",
                         "--variant", f"base:{TINY};baseline=true"])
    text = capsys.readouterr().out
    assert "tiers fit on" in text and "(2 refinement steps)" in text
    rows = {line.split()[0]: line.split() for line in text.splitlines()
            if line.split() and line.split()[0] in ("tiered", "again", "base")}
    assert rows["again"][2] == rows["tiered"][2] and rows["again"][3] == "+0.0000"  # same seed, same result
    assert float(rows["base"][2]) > float(rows["tiered"][2]) + 0.3  # 4 steps from ~uniform vs from the tiers
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("spec,message", [("x:tiers.pair_rows=8", "all variants share"),
                                          ("x:model.mlp_mult", "not KEY=VALUE")])
def test_bad_variants_are_named(spec, message, capsys):
    with pytest.raises(SystemExit, match=message):
        residual_sweep.main(["--data", "nowhere", "--variant", spec])
