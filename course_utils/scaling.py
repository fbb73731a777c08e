"""Scaling out: memory arithmetic, mixed precision, gradient accumulation and data parallelism.

* :func:`training_memory` — bytes per parameter for weights, gradients and Adam states under
  fp32 or mixed precision and ZeRO stages 0–3 (Rajbhandari et al., 2020), and
  :func:`memory_table` over model sizes.
* :func:`measured_state_bytes` — the same three quantities read off a real model and optimizer.
* :func:`saved_activation_bytes` — bytes of activations autograd keeps for backward (what
  mixed precision halves), measured with ``torch.autograd.graph.saved_tensors_hooks``.
* :func:`accumulated_grads` — gradients of k micro-batches accumulated, to compare with one
  large batch.
* :func:`run_data_parallel` — the same training steps on ``world_size`` CPU processes through
  Accelerate (gloo backend), each on its shard of the global batch.

Defined in chapter 10, Scaling.
"""
from __future__ import annotations

import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import torch
import torch.nn as nn

from .paths import scratch_dir

PRECISIONS = ("fp32", "mixed")
GiB = 1024**3


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes held per device for weights, gradients and optimizer states (activations excluded)."""

    params: float
    grads: float
    optimizer: float

    @property
    def total(self) -> float:
        return self.params + self.grads + self.optimizer


def training_memory(n_params: int, precision: str = "mixed", zero_stage: int = 0,
                    n_devices: int = 1) -> MemoryEstimate:
    """Per-device bytes to train ``n_params`` parameters with Adam.

    fp32: weights 4, gradients 4, Adam m and v 8 bytes per parameter (16 in all).
    mixed (fp16/bf16 with fp32 master weights): weights 2, gradients 2, optimizer 12 (master
    copy, m, v). ZeRO-1 shards the optimizer states over ``n_devices``, ZeRO-2 also the
    gradients, ZeRO-3 (≈ FSDP's full sharding) also the weights.
    """
    if not isinstance(n_params, int) or n_params <= 0:
        raise ValueError(f"n_params must be a positive int, got {n_params!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {zero_stage!r}")
    if not isinstance(n_devices, int) or n_devices < 1:
        raise ValueError(f"n_devices must be a positive int, got {n_devices!r}")
    p, g, o = (4, 4, 8) if precision == "fp32" else (2, 2, 12)
    shard = float(n_devices)
    return MemoryEstimate(
        params=n_params * p / (shard if zero_stage >= 3 else 1),
        grads=n_params * g / (shard if zero_stage >= 2 else 1),
        optimizer=n_params * o / (shard if zero_stage >= 1 else 1),
    )


def memory_table(sizes: dict[str, int], n_devices: int = 8) -> list[dict[str, object]]:
    """Rows of GiB per device for each model size: fp32, mixed, and mixed with ZeRO-1/2/3."""
    rows = []
    for name, n in sizes.items():
        row: dict[str, object] = {"model": name, "params": n}
        row["fp32"] = training_memory(n, "fp32").total / GiB
        row["mixed"] = training_memory(n, "mixed").total / GiB
        for stage in (1, 2, 3):
            row[f"ZeRO-{stage} ×{n_devices}"] = training_memory(n, "mixed", stage, n_devices).total / GiB
        rows.append(row)
    return rows


def measured_state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> MemoryEstimate:
    """Bytes actually held by ``model``'s parameters, their ``.grad`` and the optimizer's state."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    opt = sum(v.numel() * v.element_size() for state in optimizer.state.values()
              for v in state.values() if torch.is_tensor(v) and v.dim() > 0)
    return MemoryEstimate(params=params, grads=grads, optimizer=opt)


def saved_activation_bytes(model: nn.Module, idx: torch.Tensor, targets: torch.Tensor,
                           autocast_dtype: torch.dtype | None = None) -> int:
    """Bytes of the tensors autograd saves for backward during one forward pass.

    ``idx``/``targets`` [B, T]. Tensors that share storage (a parameter saved twice, views) are
    counted once; parameters themselves are not counted, only activations.
    """
    if idx.shape != targets.shape or idx.dim() != 2:
        raise ValueError(f"idx and targets must both be [B, T], got {tuple(idx.shape)} and {tuple(targets.shape)}")
    param_ptrs = {p.data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in param_ptrs:
            seen[ptr] = max(seen.get(ptr, 0), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        if autocast_dtype is None:
            out = model(idx, targets)
        else:
            with torch.autocast(device_type=idx.device.type, dtype=autocast_dtype):
                out = model(idx, targets)
    loss = out.loss if hasattr(out, "loss") else out[1]
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(seen.values())


def accumulated_grads(model: nn.Module, idx: torch.Tensor, targets: torch.Tensor,
                      micro_batches: int) -> dict[str, torch.Tensor]:
    """Gradients from splitting the batch [B, T] into ``micro_batches`` equal parts, each loss
    divided by ``micro_batches`` and backpropagated in turn (gradient accumulation)."""
    if micro_batches < 1 or idx.shape[0] % micro_batches:
        raise ValueError(f"batch of {idx.shape[0]} cannot be split into {micro_batches} equal micro-batches")
    model.zero_grad(set_to_none=True)
    for x, y in zip(idx.chunk(micro_batches), targets.chunk(micro_batches)):
        (model(x, y).loss / micro_batches).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


# --------------------------------------------------------------------------- data parallel
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dp_worker(rank: int, world_size: int, port: int, config: dict, steps: int, lr: float,
               idx: torch.Tensor, targets: torch.Tensor, out_dir: str) -> None:
    """One rank: Accelerate sets up gloo from the environment, wraps the model in DDP, and each
    rank trains on its own contiguous shard of every global batch."""
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size), "OMP_NUM_THREADS": "1"})
    torch.set_num_threads(1)
    from accelerate import Accelerator

    from .models.gpt import GPT, GPTConfig

    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = GPT(GPTConfig(**config))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model, optimizer = accelerator.prepare(model, optimizer)
    shard = idx.shape[1] // world_size
    losses = []
    for step in range(steps):
        x = idx[step, rank * shard:(rank + 1) * shard]
        y = targets[step, rank * shard:(rank + 1) * shard]
        loss = model(x, y).loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(accelerator.gather(loss.detach()[None]).mean().item())
    if accelerator.is_main_process:
        state = {k: v.detach().clone() for k, v in accelerator.unwrap_model(model).state_dict().items()}
        torch.save({"state": state, "losses": losses, "world_size": accelerator.num_processes,
                    "worker_gpus": torch.cuda.device_count()}, Path(out_dir) / "result.pt")
    accelerator.wait_for_everyone()
    torch.distributed.destroy_process_group()


def run_data_parallel(config: dict, idx: torch.Tensor, targets: torch.Tensor, world_size: int = 2,
                      lr: float = 1e-3) -> dict:
    """Train a GPT(``config``) for ``idx.shape[0]`` steps on ``world_size`` CPU processes.

    ``idx``/``targets`` [steps, global_batch, T]; each rank takes ``global_batch / world_size``
    rows of every step. ``world_size == 1`` runs in this process (the reference). Returns
    ``{"state": state_dict, "losses": [...], "world_size": n}`` (and, from the workers,
    ``"worker_gpus"``: how many GPUs they saw, always 0).
    """
    if idx.dim() != 3 or idx.shape != targets.shape:
        raise ValueError(f"idx and targets must be [steps, batch, T] of equal shape, got "
                         f"{tuple(idx.shape)} and {tuple(targets.shape)}")
    if world_size < 1 or idx.shape[1] % world_size:
        raise ValueError(f"global batch {idx.shape[1]} must split evenly over world_size={world_size}")
    if world_size == 1:
        from .models.gpt import GPT, GPTConfig

        torch.manual_seed(0)
        model = GPT(GPTConfig(**config))
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
        losses = []
        for step in range(idx.shape[0]):
            loss = model(idx[step], targets[step]).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        return {"state": {k: v.detach().clone() for k, v in model.state_dict().items()},
                "losses": losses, "world_size": 1}
    import torch.multiprocessing as mp

    # The ranks are CPU processes talking over gloo. Where CUDA is present, torch's barrier picks
    # the GPU numbered like the rank, and on a one-GPU machine rank 1 failed with "invalid device
    # ordinal" (seen on an H100, 2026-11-24): the workers start with no GPU visible (patch.dict
    # puts the caller's environment back afterwards).
    with mock.patch.dict(os.environ, {"CUDA_VISIBLE_DEVICES": ""}), tempfile.TemporaryDirectory(dir=scratch_dir("accelerate-")) as out:
        mp.spawn(_dp_worker, args=(world_size, _free_port(), config, idx.shape[0], lr, idx, targets, out),
                 nprocs=world_size, join=True)
        return torch.load(Path(out) / "result.pt", weights_only=True)
