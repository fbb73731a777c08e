"""One training loop for every chapter, on Accelerate, so it runs unchanged on CPU, CUDA, MPS,
several GPUs and TPU.

* :class:`TrainConfig` -- every knob in one dataclass, checked on creation;
* :func:`get_lr` -- linear warm-up, then cosine decay to ``min_lr``;
* :func:`configure_optimizer` -- AdamW, weight decay on matrices only;
* :class:`Trainer` -- gradient accumulation, clipping, mixed precision (``accelerate``),
  evaluation, a callback for live plots, a tqdm bar, and crash-safe checkpoints
  (:mod:`course_utils.checkpoint`) from which :meth:`Trainer.fit` resumes exactly.

Batches come from a sampler with ``next_batch()``, ``eval_batches(n)``, ``state_dict()`` and
``load_state_dict()`` (see :mod:`course_utils.train_data`).

Defined in chapter 5, Pretraining.
"""
from __future__ import annotations

import contextlib
import math
import numbers
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol

import torch

from . import checkpoint as ckpt
from .device import autocast_dtype, get_device, seed_everything
from .train_data import to_device

MIXED_PRECISION = ("no", "bf16", "fp16", "auto")
_HISTORY_KEYS = ("step", "loss", "lr", "grad_norm", "eval_step", "train_loss", "val_loss")
# settings that must not change between a run and its resumption (checked on resume)
_RESUME_KEYS = ("max_steps", "lr", "warmup_steps", "min_lr", "batch_size", "grad_accum_steps", "seed")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; raised before the optimizer step, so the model
    keeps the last good step's weights. ``step`` is the 1-based step that failed, ``checkpoint``
    the newest valid checkpoint (or None). Defined in chapter 5, Pretraining."""

    def __init__(self, message: str, step: int, checkpoint: Path | None) -> None:
        super().__init__(message)
        self.step, self.checkpoint = step, checkpoint


def _finite_number(name: str, v: object) -> float:
    """``v`` as a float if it is a real, finite number (not a bool); else a ValueError naming ``name``."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {v!r}")
    return float(v)


class BatchSource(Protocol):
    """A sampler: ``next_batch()``, ``eval_batches(n)``, ``state_dict()``, ``load_state_dict(s)``."""

    def next_batch(self) -> Any: ...
    def eval_batches(self, n: int) -> Iterable[Any]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class TrainEvent:
    """What the ``log`` callback receives: ``kind`` is ``"step"``, ``"eval"`` or ``"end"``."""

    kind: str
    step: int
    lr: float
    loss: float | None = None          # mean training loss of the last optimizer step
    train_loss: float | None = None    # at "eval": loss on the fixed training batches
    val_loss: float | None = None      # at "eval": loss on the fixed validation batches
    elapsed: float = 0.0               # seconds of training in this call of fit()
    trainer: "Trainer | None" = field(default=None, repr=False)


@dataclass
class TrainConfig:
    """Settings of :class:`Trainer`. Defined in chapter 5, Pretraining.

    ``batch_size`` is the micro-batch the samplers should produce; one optimizer step sees
    ``batch_size * grad_accum_steps`` sequences. ``min_lr=None`` means ``lr / 10``.
    ``mixed_precision="auto"`` asks :func:`course_utils.device.choose_precision`: bf16 or fp16 on
    a GPU, and on a CPU bf16 only where it has native bf16 and a timed probe finds it faster,
    else fp32 (``$COURSE_PRECISION=fp32|bf16`` forces one). Weights, optimizer state and the loss
    stay fp32 in every mode; only the matmuls inside the forward and backward pass run in bf16.
    ``checkpoint_interval=None`` with a ``checkpoint_dir`` saves only at the end (or the stop).
    """

    max_steps: int = 1000
    lr: float = 1e-3
    warmup_steps: int = 100
    min_lr: float | None = None
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float | None = 1.0
    grad_accum_steps: int = 1
    batch_size: int = 12
    eval_interval: int = 100
    eval_iters: int = 20
    mixed_precision: str = "auto"
    checkpoint_dir: str | Path | None = None
    checkpoint_interval: int | None = None
    keep_checkpoints: int | None = 2
    seed: int = 0
    log: Callable[[TrainEvent], None] | None = field(default=None, repr=False)
    progress: bool = True
    device: str | None = None

    def __post_init__(self) -> None:
        def positive_int(name: str, low: int = 1) -> None:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ValueError(f"TrainConfig.{name} must be an int >= {low}, got {v!r}")

        for name in ("max_steps", "grad_accum_steps", "batch_size", "eval_interval", "eval_iters"):
            positive_int(name)
        positive_int("warmup_steps", 0), positive_int("seed", 0)
        if self.warmup_steps > self.max_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must not exceed max_steps ({self.max_steps})")
        if not _finite_number("TrainConfig.lr", self.lr) > 0:
            raise ValueError(f"TrainConfig.lr must be a finite number > 0, got {self.lr!r}")
        if self.min_lr is None:
            self.min_lr = self.lr / 10
        if not 0 <= _finite_number("TrainConfig.min_lr", self.min_lr) <= self.lr:
            raise ValueError(f"min_lr must be in [0, lr={self.lr}], got {self.min_lr!r}")
        if not _finite_number("TrainConfig.weight_decay", self.weight_decay) >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if (not isinstance(self.betas, (tuple, list)) or len(self.betas) != 2
                or not all(0 <= _finite_number("TrainConfig.betas", b) < 1 for b in self.betas)):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        if self.grad_clip is not None and not _finite_number("TrainConfig.grad_clip", self.grad_clip) > 0:
            raise ValueError(f"grad_clip must be a finite number > 0 or None (no clipping), got {self.grad_clip!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        if self.checkpoint_interval is not None:
            positive_int("checkpoint_interval")
            if self.checkpoint_dir is None:
                raise ValueError("checkpoint_interval is set but checkpoint_dir is None: say where to save")
        if self.keep_checkpoints is not None:
            positive_int("keep_checkpoints")
        if self.log is not None and not callable(self.log):
            raise TypeError("TrainConfig.log must be a callable taking a TrainEvent")


def get_lr(step: int, *, max_lr: float, warmup_steps: int, max_steps: int, min_lr: float) -> float:
    """Learning rate at optimizer step ``step`` (0-based): linear warm-up, then cosine decay.

    Warm-up: ``max_lr * (step + 1) / (warmup_steps + 1)`` for ``step < warmup_steps``; then
    ``min_lr + (max_lr - min_lr) * (1 + cos(pi * progress)) / 2`` with ``progress`` going from 0
    at the end of the warm-up to 1 at ``max_steps``; ``min_lr`` after that.
    Defined in chapter 5, Pretraining.
    """
    if step < 0 or warmup_steps < 0 or max_steps < 1 or warmup_steps > max_steps:
        raise ValueError(f"need step >= 0 and 0 <= warmup_steps <= max_steps >= 1, got "
                         f"step={step}, warmup_steps={warmup_steps}, max_steps={max_steps}")
    if not 0 <= _finite_number("min_lr", min_lr) <= _finite_number("max_lr", max_lr):
        raise ValueError(f"need 0 <= min_lr <= max_lr, got min_lr={min_lr}, max_lr={max_lr}")
    if step < warmup_steps:
        return max_lr * (step + 1) / (warmup_steps + 1)
    if step >= max_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def configure_optimizer(model: torch.nn.Module, lr: float, weight_decay: float,
                        betas: tuple[float, float] = (0.9, 0.99), fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW with two parameter groups: tensors with 2+ dimensions (weight matrices,
    embeddings) get ``weight_decay``; biases and LayerNorm gains (1-D) get none.

    Decay pulls weights towards zero; applied to a LayerNorm gain or a bias it would only fight
    the scale and offset the model needs. Defined in chapter 5, Pretraining.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not _finite_number("lr", lr) > 0 or not _finite_number("weight_decay", weight_decay) >= 0:
        raise ValueError(f"need lr > 0 and weight_decay >= 0, got lr={lr}, weight_decay={weight_decay}")
    params = [p for p in model.parameters() if p.requires_grad]  # tied weights appear once
    if not params:
        raise ValueError("the model has no trainable parameters")
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # one fused kernel for all tensors (CPU and CUDA): ~4x faster steps than foreach on CPU here
    fused = params[0].device.type in ("cuda", "cpu") if fused is None else fused
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)  # fused on CPU needs torch >= 2.4


def default_loss(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    """Scalar loss of ``model`` on ``batch``: ``(x, y)`` -> ``model(x, targets=y).loss`` (course
    GPT); a dict -> ``model(**batch).loss`` (course BERT or a transformers model with labels)."""
    if isinstance(batch, Mapping):
        out = model(**batch)
    elif isinstance(batch, (tuple, list)) and len(batch) == 2:
        out = model(batch[0], targets=batch[1])
    else:
        raise TypeError(f"a batch must be (inputs, targets) or a dict of tensors, got {type(batch).__name__}")
    loss = getattr(out, "loss", None)
    if loss is None and isinstance(out, (tuple, list)) and len(out) > 1:
        loss = out[1]
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        raise ValueError("the model returned no scalar loss; pass targets/labels or a custom loss_fn")
    return loss


def make_accelerator(mixed_precision: str = "auto", device: str | None = None):
    """An ``accelerate.Accelerator`` for ``mixed_precision`` (``auto`` -> the dtype of
    :func:`course_utils.device.choose_precision` for the device: bf16/fp16 on a GPU, bf16 or fp32
    on a CPU by measurement). In a single process, another device or precision than an
    earlier Accelerator's is allowed (Accelerate's shared state is reset)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    dev = get_device(device)
    if mixed_precision == "auto":
        dtype = autocast_dtype(dev)
        mixed_precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "no")  # type: ignore[arg-type]
    # Accelerate keeps one process-wide state: it refuses a new precision and silently stays on
    # the CPU after a CPU run (seen on a GPU machine). In one process, e.g. a notebook, starting
    # over is safe; under a multi-process launcher the state is the launcher's and stays.
    shared = PartialState._shared_state
    if shared and shared.get("num_processes", 1) == 1:
        old_device = torch.device(shared.get("device") or dev).type
        old_precision = AcceleratorState._shared_state.get("_mixed_precision") or mixed_precision
        if old_device != dev.type or old_precision != mixed_precision:
            AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(mixed_precision=mixed_precision, cpu=dev.type == "cpu")


class Trainer:
    """Trains ``model`` on batches from ``train_data`` (a sampler, see :class:`BatchSource`).

    ``fit()`` runs to ``config.max_steps`` (or ``stop_after``), resuming from the newest valid
    checkpoint in ``config.checkpoint_dir`` when there is one. ``history`` holds the losses:
    ``step``, ``loss``, ``lr``, ``grad_norm`` (before clipping) per optimizer step and
    ``eval_step``, ``train_loss``, ``val_loss`` per evaluation. Defined in chapter 5, Pretraining.
    """

    def __init__(self, model: torch.nn.Module, config: TrainConfig, train_data: BatchSource,
                 val_data: BatchSource | None = None,
                 loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor] = default_loss) -> None:
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        for name, src in (("train_data", train_data), ("val_data", val_data or train_data)):
            missing = [m for m in ("next_batch", "eval_batches", "state_dict", "load_state_dict") if not hasattr(src, m)]
            if missing:
                raise TypeError(f"{name} must be a sampler with {missing} (e.g. train_data.RandomBlockSampler)")
        self.config, self.train_data, self.val_data, self.loss_fn = config, train_data, val_data, loss_fn
        self.accelerator = make_accelerator(config.mixed_precision, config.device)
        model = model.to(self.accelerator.device)
        optimizer = configure_optimizer(model, config.lr, config.weight_decay, config.betas)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        # the scheduler is stepped by hand once per optimizer step (not prepared: Accelerate
        # would step it once per process)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer.optimizer, self._lr_factor)
        self.step = 0
        self.history: dict[str, list[float]] = {k: [] for k in _HISTORY_KEYS}
        self.resumed_from: Path | None = None

    def _lr_factor(self, step: int) -> float:
        c = self.config
        return get_lr(step, max_lr=c.lr, warmup_steps=c.warmup_steps, max_steps=c.max_steps, min_lr=c.min_lr) / c.lr

    @property
    def unwrapped_model(self) -> torch.nn.Module:  # the model without Accelerate's wrappers
        return self.accelerator.unwrap_model(self.model)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean loss over ``eval_iters`` fixed batches of each split (model in eval mode)."""
        self.model.eval()
        out = {}
        for split, src in (("train", self.train_data), ("val", self.val_data)):
            if src is None:
                continue
            losses = [self.loss_fn(self.model, to_device(b, self.accelerator.device)).float().item()
                      for b in src.eval_batches(self.config.eval_iters)]
            out[split] = sum(losses) / len(losses)
        self.model.train()
        return out

    def _record_eval(self) -> dict[str, float]:
        ev = self.evaluate()
        self.history["eval_step"].append(self.step)
        self.history["train_loss"].append(ev.get("train", float("nan")))
        self.history["val_loss"].append(ev.get("val", float("nan")))
        return ev

    def _emit(self, event: TrainEvent) -> None:
        if self.config.log is None:
            return  # (a callback that samples text must not move the training's random numbers)
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            self.config.log(event)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        """Write the full training state for the current step (see :mod:`course_utils.checkpoint`)."""
        if self.config.checkpoint_dir is None:
            raise ValueError("TrainConfig.checkpoint_dir is None: nowhere to save")
        self.accelerator.wait_for_everyone()
        scaler = getattr(self.accelerator, "scaler", None)
        state = {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": ckpt.get_rng_state(),
            "train_data": self.train_data.state_dict(),
            "val_data": self.val_data.state_dict() if self.val_data is not None else None,
            "history": self.history,
            "config": {k: getattr(self.config, k) for k in _RESUME_KEYS},
        }
        path = Path(self.config.checkpoint_dir) / ckpt.step_dir_name(self.step)
        if self.accelerator.is_main_process:
            path = ckpt.save_checkpoint(self.config.checkpoint_dir, self.step, self.unwrapped_model,
                                        state, keep=self.config.keep_checkpoints)
        self.accelerator.wait_for_everyone()
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore model, optimizer, scheduler, RNG, samplers, step and history from ``path``."""
        state = ckpt.load_checkpoint(path, self.unwrapped_model)
        saved = state.get("config", {})
        changed = {k: (saved[k], getattr(self.config, k)) for k in _RESUME_KEYS
                   if k in saved and saved[k] != getattr(self.config, k)}
        if changed:
            warnings.warn(f"resuming {path} with changed settings (saved, now): {changed}; "
                          "the run will not match an uninterrupted one", stacklevel=2)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None and state.get("scaler") is not None:
            scaler.load_state_dict(state["scaler"])
        self.train_data.load_state_dict(state["train_data"])
        if self.val_data is not None and state.get("val_data") is not None:
            self.val_data.load_state_dict(state["val_data"])
        self.history = {k: list(v) for k, v in state["history"].items()}
        self.step = int(state["step"])
        ckpt.set_rng_state(state["rng"])
        self.resumed_from = Path(path)

    # ------------------------------------------------------------------ the loop
    def fit(self, stop_after: int | None = None, resume: bool = True) -> dict[str, list[float]]:
        """Train until ``config.max_steps`` (or until step ``stop_after``, to pause a run: the
        schedule still follows ``max_steps``). Returns ``history``.

        With ``resume`` and a valid checkpoint in ``checkpoint_dir``, training continues from it
        and reproduces the uninterrupted run's losses (bit for bit on CPU). Otherwise all RNGs
        are seeded with ``config.seed`` and the step-0 losses are evaluated first.
        """
        c = self.config
        target = c.max_steps if stop_after is None else stop_after
        if not isinstance(target, int) or not 0 < target <= c.max_steps:
            raise ValueError(f"stop_after must be an int in [1, max_steps={c.max_steps}], got {stop_after!r}")
        latest = ckpt.latest_checkpoint(c.checkpoint_dir) if (resume and c.checkpoint_dir) else None
        if latest is not None and self.step == 0:
            self.load_checkpoint(latest)
        elif self.step == 0 and not self.history["eval_step"]:
            seed_everything(c.seed)
            self._record_eval()
        from tqdm.auto import tqdm

        bar = tqdm(total=c.max_steps, initial=self.step, disable=not c.progress, desc="training",
                   unit="step", dynamic_ncols=True)
        start = time.perf_counter()
        self.model.train()
        while self.step < target:
            loss = self._train_step()
            self.step += 1
            lr = self.history["lr"][-1]
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", refresh=False)
            elapsed = time.perf_counter() - start
            self._emit(TrainEvent("step", self.step, lr, loss=loss, elapsed=elapsed, trainer=self))
            if self.step % c.eval_interval == 0 or self.step == c.max_steps:
                ev = self._record_eval()
                bar.set_postfix(loss=f"{loss:.3f}", val=f"{ev.get('val', float('nan')):.3f}", refresh=False)
                self._emit(TrainEvent("eval", self.step, lr, loss=loss, train_loss=ev.get("train"),
                                      val_loss=ev.get("val"), elapsed=elapsed, trainer=self))
            interval_hit = c.checkpoint_interval is not None and self.step % c.checkpoint_interval == 0
            if c.checkpoint_dir is not None and (interval_hit or self.step == target):
                self.save_checkpoint()
        bar.close()
        last = self.history["lr"][-1] if self.history["lr"] else c.lr
        self._emit(TrainEvent("end", self.step, last, elapsed=time.perf_counter() - start, trainer=self))
        return self.history

    def _train_step(self) -> float:
        """One optimizer step over ``grad_accum_steps`` micro-batches; returns their mean loss."""
        c, acc = self.config, self.accelerator
        lr = self.optimizer.param_groups[0]["lr"]
        total = torch.zeros((), device=acc.device)
        for micro in range(c.grad_accum_steps):
            batch = to_device(self.train_data.next_batch(), acc.device)
            last = micro == c.grad_accum_steps - 1
            # under DDP, skip the gradient all-reduce until the last micro-batch
            with acc.no_sync(self.model) if not last else contextlib.nullcontext():
                with acc.autocast():
                    loss = self.loss_fn(self.model, batch) / c.grad_accum_steps
                acc.backward(loss)
            total += loss.detach().float()
        value = acc.reduce(total, reduction="mean").item() if acc.num_processes > 1 else total.item()
        if not math.isfinite(value):  # stop before the optimizer spreads NaN into every weight
            self.optimizer.zero_grad(set_to_none=True)
            self._raise_non_finite(value)
        if c.grad_clip is not None:  # the norm before clipping is recorded (spikes show there)
            norm = acc.clip_grad_norm_(self.model.parameters(), c.grad_clip)
            self.history["grad_norm"].append(float(norm))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.history["step"].append(self.step + 1)
        self.history["loss"].append(value)
        self.history["lr"].append(lr)
        return value

    def _raise_non_finite(self, value: float) -> None:
        c = self.config
        good = ckpt.latest_checkpoint(c.checkpoint_dir) if c.checkpoint_dir is not None else None
        where = (f"the last good checkpoint is {good} (fit() resumes from it)" if good is not None else
                 "no checkpoint was saved (set TrainConfig.checkpoint_dir and checkpoint_interval to keep one)")
        raise NonFiniteLossError(
            f"training loss is {value} at step {self.step + 1}: stopped before the optimizer step, so the "
            f"model keeps step {self.step}'s weights; {where}. Common causes: lr too high (now {c.lr:g}), "
            "no grad_clip, fp16 overflow (try mixed_precision='no' or 'bf16'), or NaN/inf in the data.",
            step=self.step + 1, checkpoint=good)


__all__ = ["TrainConfig", "TrainEvent", "Trainer", "NonFiniteLossError", "BatchSource", "get_lr", "configure_optimizer", "default_loss", "make_accelerator"]
