"""runtime/device.py: ``--device`` names resolve to what this machine has or fail with a
ConfigError that says what to pass; ``autocast`` computes in the precision asked for (fp32 also
inside an outer autocast) and refuses what the device cannot do."""
from __future__ import annotations

import pytest
import torch

from reformer_seq.errors import ConfigError
from reformer_seq.runtime.device import PRECISIONS, autocast, resolve_device

HAS_CUDA = torch.cuda.is_available()


@pytest.mark.parametrize("name", ["auto", "AUTO", " auto ", "", None])
def test_auto_is_cuda_when_there_is_one(name):
    assert resolve_device(name) == torch.device("cuda" if HAS_CUDA else "cpu")


@pytest.mark.parametrize("name", ["cpu", "CPU", " cpu"])
def test_cpu(name):
    assert resolve_device(name) == torch.device("cpu")


@pytest.mark.parametrize("name,expect", [
    ("gpu0", "device 'gpu0' is not a device; use auto, cpu, cuda, cuda:N or mps"),
    ("meta", "device 'meta' is not supported; use auto, cpu, cuda, cuda:N or mps"),
])
def test_names_that_are_not_devices(name, expect):
    with pytest.raises(ConfigError) as e:
        resolve_device(name)
    assert str(e.value) == expect


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a CUDA GPU")
def test_cuda_without_a_gpu_says_use_cpu():
    for name in ("cuda", "cuda:0"):
        with pytest.raises(ConfigError, match=f"device '{name}' requested but no CUDA GPU is visible to torch "
                                              f".*; use --device cpu \\(or auto\\)"):
            resolve_device(name)


def test_cuda_index_is_checked_against_the_gpu_count(monkeypatch):
    """As on a machine with one GPU (torch.cuda reports it; nothing runs on it)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("auto") == torch.device("cuda")
    with pytest.raises(ConfigError, match=r"device 'cuda:1': this machine has 1 CUDA GPU\(s\), numbered from 0"):
        resolve_device("cuda:1")


def test_mps_when_absent(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="Apple's MPS backend is not available here; use --device cpu"):
        resolve_device("mps")


def _matmul_dtype(device: torch.device, precision: str, outer: torch.dtype | None = None) -> torch.dtype:
    a = torch.randn(4, 4, device=device)
    if outer is None:
        with autocast(device, precision):
            return (a @ a).dtype
    with torch.autocast(device.type, dtype=outer), autocast(device, precision):
        return (a @ a).dtype


def test_autocast_computes_in_the_precision_asked_for():
    cpu = torch.device("cpu")
    assert _matmul_dtype(cpu, "bf16") == torch.bfloat16
    assert _matmul_dtype(cpu, "fp32") == torch.float32
    assert _matmul_dtype(cpu, "fp32", outer=torch.bfloat16) == torch.float32  # fp32 switches an outer autocast off
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the oracle: outside our context, the outer one rules
        a = torch.randn(4, 4)
        assert (a @ a).dtype == torch.bfloat16


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_autocast_on_cuda():
    cuda = torch.device("cuda")
    assert _matmul_dtype(cuda, "fp16") == torch.float16
    assert _matmul_dtype(cuda, "bf16") == torch.bfloat16
    assert _matmul_dtype(cuda, "fp32", outer=torch.float16) == torch.float32


def test_autocast_refuses_what_the_device_cannot_do():
    with pytest.raises(ConfigError, match="precision fp16 needs a CUDA device .*; use bf16 on CPU"):
        autocast(torch.device("cpu"), "fp16")
    with pytest.raises(ConfigError, match=f"precision must be one of {', '.join(PRECISIONS)}, got 'fp8'"):
        autocast(torch.device("cpu"), "fp8")
