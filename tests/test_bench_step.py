"""bench.step: one training step broken down per path (today's, banked Muon, the fused MLP, the bf16 stream), with
the ops each phase dispatches and the bytes autograd saves, on a tiny run of the cpu-long model."""

from __future__ import annotations


def test_bench_step_breaks_a_step_down_per_path(capsys):
    from bench import step

    step.main(["--preset", "cpu-long", "--tokens", "256", "--repeats", "1", "--amp"])
    out = capsys.readouterr().out
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in out.splitlines()
            if line.startswith("| ") and not line.startswith("| phase")}
    assert set(rows) == {"forward", "backward", "optimizer", "step"}
    arms = list(step.ARMS)
    # columns: phase, 4 times, 3 ratios, 4 op counts
    ops = {k: dict(zip(arms, (int(c.strip(" |").replace(",", "")) for c in v[8:12]))) for k, v in rows.items()}
    assert ops["forward"]["today"] == ops["forward"]["banked"] > 0  # the same model
    assert ops["optimizer"]["today"] > 1.5 * ops["optimizer"]["banked"]  # 18 matrices in 4 banks
    assert ops["optimizer"]["banked"] == ops["optimizer"]["fused"] == ops["optimizer"]["new"]
    # one op for the MLP in place of fc, the activation, the square and proj (and their backward)
    assert ops["forward"]["fused"] < ops["forward"]["banked"] and ops["backward"]["fused"] < ops["backward"]["banked"]
    assert ops["step"]["today"] == sum(ops[k]["today"] for k in ("forward", "backward", "optimizer"))
    saved = {line.split(":")[0]: float(line.split("autograd saves ")[1].split()[0].replace(",", ""))
             for line in out.splitlines() if "autograd saves" in line}
    # the fused MLP saves pre and post only; the bf16 stream halves what the residual adds
    assert saved["new"] < saved["fused"] < saved["banked"] == saved["today"]
