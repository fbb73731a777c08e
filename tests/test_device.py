"""Each branch of device selection, with CUDA / torch_xla / MPS faked where this machine lacks them."""
import sys
import types

import numpy as np
import pytest
import torch

from course_utils import device as dev


@pytest.fixture
def no_accelerators(monkeypatch):
    monkeypatch.delenv("COURSE_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dev, "_xla_available", lambda: False)
    monkeypatch.setattr(dev, "_mps_available", lambda: False)


def test_cpu_when_nothing_else(no_accelerators):
    assert dev.get_device() == torch.device("cpu")
    assert dev.autocast_dtype(torch.device("cpu")) is None


def test_cuda_preferred(no_accelerators, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dev.get_device().type == "cuda"


def test_xla_uses_torch_xla_device(no_accelerators, monkeypatch):
    fake = types.ModuleType("torch_xla")
    calls = []
    fake.device = lambda: calls.append(1) or torch.device("cpu")  # the current API, not xm.xla_device
    monkeypatch.setitem(sys.modules, "torch_xla", fake)
    monkeypatch.setattr(dev, "_xla_available", lambda: True)
    dev.get_device()
    assert calls == [1]
    dev.get_device("xla")
    assert calls == [1, 1]
    assert dev.autocast_dtype(torch.device("cpu")) is None


def test_mps(no_accelerators, monkeypatch):
    monkeypatch.setattr(dev, "_mps_available", lambda: True)
    assert dev.get_device().type == "mps"
    assert dev.autocast_dtype(torch.device("mps")) == torch.float16


def test_override_and_errors(no_accelerators, monkeypatch):
    assert dev.get_device("cpu").type == "cpu"
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    assert dev.get_device().type == "cpu"
    with pytest.raises(RuntimeError, match="cuda"):
        dev.get_device("cuda")
    with pytest.raises(RuntimeError, match="torch_xla"):
        dev.get_device("xla")
    with pytest.raises(ValueError, match="expected one of"):
        dev.get_device("tpu")


def test_autocast_dtype_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert dev.autocast_dtype(torch.device("cuda")) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert dev.autocast_dtype(torch.device("cuda")) == torch.float16
    assert dev.autocast_dtype(torch.device("xla")) == torch.bfloat16


def test_autocast_is_noop_on_cpu():
    with dev.autocast(torch.device("cpu")):
        y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype == torch.float32


def test_seed_everything_reproduces():
    dev.seed_everything(7)
    a = (torch.rand(3), np.random.rand(3))
    dev.seed_everything(7)
    b = (torch.rand(3), np.random.rand(3))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    with pytest.raises(ValueError):
        dev.seed_everything(-1)
