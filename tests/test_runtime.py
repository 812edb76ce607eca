"""golf.runtime: the one process-group setup of golf.train and golf.eval (cuda:LOCAL_RANK made current, NCCL on
CUDA, gloo on the CPU), checked without a GPU by standing in for torch.cuda and torch.distributed."""

from __future__ import annotations

import pytest
import torch

from golf import eval as golf_eval
from golf import runtime
from golf.errors import ConfigError

TORCHRUN_RANK1 = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}


@pytest.fixture
def two_gpus(monkeypatch):
    """torch.cuda with two devices and torch.distributed that records instead of connecting."""
    calls = {"set_device": [], "init": [], "barrier": 0, "destroy": 0}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda dev: calls["set_device"].append(torch.device(dev)))
    state = {"up": False}

    def init_process_group(backend=None, **kw):
        calls["init"].append(backend)
        state["up"] = True

    def destroy_process_group():
        calls["destroy"] += 1
        state["up"] = False

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: state["up"])
    monkeypatch.setattr(torch.distributed, "init_process_group", init_process_group)
    monkeypatch.setattr(torch.distributed, "destroy_process_group", destroy_process_group)
    monkeypatch.setattr(torch.distributed, "barrier", lambda: calls.__setitem__("barrier", calls["barrier"] + 1))
    return calls


def test_rank_uses_its_local_gpu_and_nccl(two_gpus):
    d = runtime.setup_distributed("auto", env=TORCHRUN_RANK1)
    assert (d.rank, d.world_size, d.local_rank) == (1, 2, 1)
    assert d.device == torch.device("cuda", 1)
    assert two_gpus["set_device"] == [torch.device("cuda", 1)]  # .cuda() and NCCL now mean this rank's GPU
    assert two_gpus["init"] == ["nccl"]
    runtime.teardown(d)
    assert two_gpus["barrier"] == 1 and two_gpus["destroy"] == 1


def test_cpu_ranks_use_gloo_and_a_failing_rank_leaves_without_the_barrier(two_gpus):
    with pytest.raises(RuntimeError, match="boom"):
        with runtime.distributed("cpu", env=TORCHRUN_RANK1) as d:
            assert d.device == torch.device("cpu") and two_gpus["set_device"] == []
            raise RuntimeError("boom")
    assert two_gpus["init"] == ["gloo"] and two_gpus["barrier"] == 0 and two_gpus["destroy"] == 1


def test_single_process_forms_no_group(two_gpus):
    with runtime.distributed("auto", env={}) as d:
        assert not d.enabled and d.device == torch.device("cuda", 0)
    assert two_gpus["init"] == [] and two_gpus["destroy"] == 0


def test_local_rank_beyond_the_visible_gpus_is_a_config_error(two_gpus):
    with pytest.raises(ConfigError, match="LOCAL_RANK=2.*only 2 GPU"):
        runtime.setup_distributed("auto", env={"WORLD_SIZE": "3", "RANK": "2", "LOCAL_RANK": "2"})
    with pytest.raises(ConfigError, match="LOCAL_RANK"):
        runtime.setup_distributed("auto", env={"LOCAL_RANK": "one"})


def test_eval_sets_up_through_the_shared_runtime(two_gpus, monkeypatch, tmp_path):
    """torchrun -m golf.eval on GPUs: rank 1 must score on cuda:1 (the bug: every rank's sums landed on cuda:0)."""
    seen = {}

    def load_model(path, device):
        seen["device"] = device
        raise golf_eval.GolfError("stop here")

    monkeypatch.setattr(golf_eval, "load_model", load_model)
    for name, value in TORCHRUN_RANK1.items():
        monkeypatch.setenv(name, value)
    assert golf_eval.main([str(tmp_path / "model.golf")]) == 2
    assert seen["device"] == torch.device("cuda", 1)
    assert two_gpus["set_device"] == [torch.device("cuda", 1)] and two_gpus["init"] == ["nccl"]
    assert two_gpus["destroy"] == 1
