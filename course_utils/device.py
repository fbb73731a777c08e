"""Pick the device to run on, seed everything, and choose an autocast dtype.

Order: an explicit override (argument or ``$COURSE_DEVICE``), then CUDA, XLA (a Colab TPU, via
``torch_xla.device()``), MPS, CPU. Defined in chapter 0, Setup.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import random
from typing import Iterator

import numpy as np
import torch

ENV_VAR = "COURSE_DEVICE"
VALID_KINDS = ("cpu", "cuda", "mps", "xla")


def _xla_available() -> bool:
    return importlib.util.find_spec("torch_xla") is not None


def _xla_device() -> torch.device:
    # torch_xla >= 2.5: ``torch_xla.device()``; ``xm.xla_device()`` is deprecated.
    torch_xla = importlib.import_module("torch_xla")
    return torch_xla.device()


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def get_device(override: str | torch.device | None = None) -> torch.device:
    """The device to compute on.

    ``override`` (or ``$COURSE_DEVICE``) may be ``cpu``, ``cuda``, ``cuda:1``, ``mps`` or
    ``xla``; asking for one that is not available raises a ``RuntimeError`` saying so.
    """
    choice = override if override is not None else os.environ.get(ENV_VAR) or None
    if isinstance(choice, torch.device):
        return choice
    if choice is not None:
        kind = str(choice).strip().lower()
        base = kind.split(":")[0]
        if base not in VALID_KINDS:
            raise ValueError(f"Unknown device {choice!r}; expected one of {', '.join(VALID_KINDS)} (e.g. 'cuda:0').")
        if base == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"Device {choice!r} was asked for, but torch.cuda.is_available() is False.")
        if base == "mps" and not _mps_available():
            raise RuntimeError(f"Device {choice!r} was asked for, but MPS is not available.")
        if base == "xla":
            if not _xla_available():
                raise RuntimeError("Device 'xla' was asked for, but torch_xla is not installed (Colab TPU runtimes ship it).")
            return _xla_device()
        return torch.device(kind)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _xla_available():
        return _xla_device()
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def describe_device(device: torch.device | None = None) -> str:
    """A one-line human description, e.g. ``cuda (NVIDIA H100)`` or ``cpu (2 threads)``."""
    device = device or get_device()
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return str(device)


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and torch (all devices) for reproducible runs."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():  # pragma: no cover - no GPU in CI
        torch.cuda.manual_seed_all(seed)


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The mixed-precision dtype worth using on ``device``, or None for full fp32.

    CUDA: bf16 where supported, else fp16. XLA (TPU): bf16. MPS: fp16. CPU: None (bf16 autocast
    on CPU is correct but usually slower on small models, so the course trains in fp32 there).
    """
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "xla":
        return torch.bfloat16
    if device.type == "mps":
        return torch.float16
    return None


@contextlib.contextmanager
def autocast(device: torch.device, enabled: bool = True) -> Iterator[None]:
    """``torch.autocast`` with :func:`autocast_dtype`; a no-op where that is None."""
    dtype = autocast_dtype(device)
    if not enabled or dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield
