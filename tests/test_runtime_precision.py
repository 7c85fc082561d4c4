"""The precision policy: bf16 from compute capability 8.0, fp16 with loss scaling on Volta/Turing,
fp32 on older cards, with --fp32, and on CPU unless --bf16_cpu. The device capability is mocked,
so every branch runs on a machine without a GPU."""
from __future__ import annotations

import warnings
from contextlib import nullcontext

import pytest
import torch

from l2kd import runtime
from l2kd.runtime import precision_context, precision_policy

CUDA = torch.device("cuda")
CPU = torch.device("cpu")


@pytest.mark.parametrize("capability, mode", [((9, 0), "bf16"), ((8, 0), "bf16"), ((8, 6), "bf16"),
                                              ((7, 0), "fp16"), ((7, 5), "fp16"), ((6, 1), "fp32")])
def test_cuda_mode_follows_compute_capability(capability, mode):
    policy = precision_policy(CUDA, fp32=False, bf16_cpu=False, capability=capability)
    assert policy.mode == mode and policy.device_type == "cuda"
    assert f"{capability[0]}.{capability[1]}" in policy.reason


def test_fp32_flag_wins_on_every_device():
    for dev, cap in ((CUDA, (9, 0)), (CUDA, (7, 5)), (CPU, None)):
        policy = precision_policy(dev, fp32=True, bf16_cpu=True, capability=cap)
        assert policy.mode == "fp32" and policy.autocast() is nullcontext and policy.scaler() is None


def test_cpu_is_fp32_unless_bf16_cpu():
    assert precision_policy(CPU, False, False).mode == "fp32"
    policy = precision_policy(CPU, False, True)
    assert policy.mode == "bf16" and policy.scaler() is None
    with policy.autocast()():
        y = torch.nn.Linear(4, 4)(torch.ones(2, 4))
    assert y.dtype == torch.bfloat16


def test_fp16_gets_a_grad_scaler_and_bf16_none():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GradScaler("cuda") warns and disables itself without CUDA
        fp16 = precision_policy(CUDA, False, False, capability=(7, 5))
        assert isinstance(fp16.scaler(), torch.amp.GradScaler)
        ctx = fp16.autocast()()
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.float16
    bf16 = precision_policy(CUDA, False, False, capability=(9, 0))
    assert bf16.scaler() is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert bf16.autocast()().fast_dtype == torch.bfloat16


def test_precision_context_asks_the_device(monkeypatch):
    """The loop's entry point reads the capability from torch (Volta here: fp16 and a scaler)."""
    monkeypatch.setattr(runtime.torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        factory, scaler = precision_context(CUDA, fp32=False, bf16_cpu=False)
        assert scaler is not None and factory().fast_dtype == torch.float16
    factory, scaler = precision_context(CUDA, fp32=True, bf16_cpu=False)
    assert factory is nullcontext and scaler is None


def test_cuda_init_starts_only_for_a_gpu_run(monkeypatch):
    """The background CUDA set-up of the entry points: never for --device cpu or without a GPU."""
    calls = []
    monkeypatch.setattr(runtime.torch.cuda, "init", lambda: calls.append("init"))
    monkeypatch.setattr(runtime.torch.cuda, "is_available", lambda: False)
    assert runtime.begin_cuda_init(["--device", "cuda"]) is None
    monkeypatch.setattr(runtime.torch.cuda, "is_available", lambda: True)
    assert runtime.begin_cuda_init(["--tasks", "a", "--device", "cpu"]) is None
    assert runtime.begin_cuda_init(["--n_gpus", "2"]) is None  # ranks choose their GPU first
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert runtime.begin_cuda_init([]) is None
    monkeypatch.delenv("LOCAL_RANK")
    for argv in ([], ["--device", "auto"], ["--device", "cuda:0", "--fp32"]):
        t = runtime.begin_cuda_init(argv)
        t.join()
    assert calls == ["init"] * 3

    def broken():
        raise RuntimeError("no driver")

    monkeypatch.setattr(runtime.torch.cuda, "init", broken)
    runtime.begin_cuda_init(["--device", "cuda"]).join()  # the error waits for the run's own use of the device


def test_gpu_batch_sizes_follow_total_not_free_memory(monkeypatch):
    """As the original (GPUtil's memoryTotal): another process's memory on the GPU must not change
    the batch plan or the test batch size."""
    from l2kd.batching import budget_for_device
    from l2kd.evaluate import test_batch_size

    gpu = torch.device("cuda", 0)
    budgets, sizes = set(), set()
    for free in (1 * 2**30, 9 * 2**30):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None, free=free: (free, 16 * 2**30))
        budgets.add(budget_for_device(gpu, 0.35, 0))
        sizes.add(test_batch_size(gpu, 0))
    assert budgets == {16 * 1024 * 0.35} and sizes == {256}
