"""One training loop for every chapter, on Accelerate, so it runs unchanged on CPU, CUDA, MPS,
several GPUs and TPU.

* :class:`TrainConfig` -- every knob in one dataclass, checked on creation;
* :func:`get_lr` -- linear warm-up, then cosine decay to ``min_lr``;
* :func:`configure_optimizer` -- AdamW, weight decay on matrices only;
* :class:`Trainer` -- gradient accumulation, clipping, mixed precision (``accelerate``),
  evaluation, a callback for live plots, a tqdm bar, and crash-safe checkpoints
  (:mod:`course_utils.checkpoint`) from which :meth:`Trainer.fit` resumes exactly;
  optionally ``torch.compile`` (``compile="auto"``: on CUDA), keeping the weights of the lowest
  validation loss (``keep_best``) and stopping early (``patience``).

On a GPU the host must not wait for the device every step: the losses and gradient norms stay
on the device and are read in one go every ``log_interval`` steps and at each evaluation (on a
CPU reading them costs nothing, and they are read every step, as before).

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
from .device import autocast_dtype, get_device, model_width, seed_everything
from .train_data import to_device

MIXED_PRECISION = ("no", "bf16", "fp16", "auto")
COMPILE = ("auto", "always", "never")
# compile="auto" compiles a CUDA run of at least this many steps. From issue 32's H200 figures for
# the gpu char GPT: ~30 s of compiling against ~8 ms saved per step (nanoGPT 12.3 ms compiled,
# the course 18-25 ms eager) breaks even near 3,750 steps. tools/gpu_check.py measures both
# for the course's own step and prints the break-even, so this number can follow the evidence.
COMPILE_MIN_STEPS = 4000
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
    loss: float | None = None          # mean training loss of the last optimizer step (None on a
                                       # GPU between log points: reading it would wait for the GPU)
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
    a GPU, and on a CPU bf16 only where it has native bf16 and a timed probe finds a training
    step at the model's width faster, else fp32 (``$COURSE_PRECISION=fp32|bf16`` forces one). Weights, optimizer state and the loss
    stay fp32 in every mode; only the matmuls inside the forward and backward pass run in bf16.
    ``checkpoint_interval=None`` with a ``checkpoint_dir`` saves only at the end (or the stop).

    ``keep_best=True``: the trainer keeps a CPU copy of the weights at the lowest validation
    loss seen at an evaluation and ends with them (``history["best_step"]``,
    ``["best_val_loss"]``, ``["kept"]`` say which and why). ``patience=n``: stop after ``n``
    evaluations in a row without a new lowest validation loss (``history["stopped_early"]``).
    Both need validation data. ``compile``: ``"auto"`` compiles the model with
    ``torch.compile`` on CUDA for runs of at least :data:`COMPILE_MIN_STEPS` steps, where the
    faster steps pay back the compile time (on a CPU, ~20 s even for a tiny model, never),
    ``"always"`` / ``"never"`` force it. ``log_interval``: how
    often the losses are read from the device (None: every step on a CPU, every 10 on a GPU).
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
    keep_best: bool = False
    patience: int | None = None
    compile: str = "auto"
    log_interval: int | None = None

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
        if not isinstance(self.keep_best, bool):
            raise ValueError(f"TrainConfig.keep_best must be True or False, got {self.keep_best!r}")
        if self.patience is not None:
            positive_int("patience")
        if self.log_interval is not None:
            positive_int("log_interval")
        if self.compile not in COMPILE:
            raise ValueError(f"TrainConfig.compile must be one of {COMPILE}, got {self.compile!r}")


def should_compile(setting: str, device: torch.device | str, max_steps: int | None = None) -> bool:
    """Whether :class:`Trainer` compiles the model: ``"always"``, ``"never"``, or ``"auto"``: on
    CUDA when the run has at least :data:`COMPILE_MIN_STEPS` steps (``max_steps=None``: any
    length). On a CPU compiling a small model took ~20 s here (cold cache), more than a
    chapter's run could win back. Defined in chapter 5, Pretraining."""
    if setting not in COMPILE:
        raise ValueError(f"compile must be one of {COMPILE}, got {setting!r}")
    long_enough = max_steps is None or max_steps >= COMPILE_MIN_STEPS
    return setting == "always" or (setting == "auto" and torch.device(device).type == "cuda" and long_enough)


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


def make_accelerator(mixed_precision: str = "auto", device: str | None = None, width: int | None = None):
    """An ``accelerate.Accelerator`` for ``mixed_precision`` (``auto`` -> the dtype of
    :func:`course_utils.device.choose_precision` for the device: bf16/fp16 on a GPU, bf16 or fp32
    on a CPU by a training-step probe at the model's ``width``). In a single process, another device or precision than an
    earlier Accelerator's is allowed (Accelerate's shared state is reset)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    dev = get_device(device)
    if mixed_precision == "auto":
        dtype = autocast_dtype(dev, width=width)
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


def _pinned(batch: Any) -> Any:
    """CPU tensors of ``batch`` (a tensor, tuple, list or dict) in page-locked memory."""
    if isinstance(batch, torch.Tensor):
        return batch.pin_memory() if batch.device.type == "cpu" else batch
    if isinstance(batch, dict):
        return {k: _pinned(v) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_pinned(v) for v in batch)
    return batch


class Trainer:
    """Trains ``model`` on batches from ``train_data`` (a sampler, see :class:`BatchSource`).

    ``fit()`` runs to ``config.max_steps`` (or ``stop_after``), resuming from the newest valid
    checkpoint in ``config.checkpoint_dir`` when there is one. ``history`` holds the losses:
    ``step``, ``loss``, ``lr``, ``grad_norm`` (before clipping) per optimizer step and
    ``eval_step``, ``train_loss``, ``val_loss`` per evaluation; with ``keep_best`` or
    ``patience`` also ``best_step``, ``best_val_loss``, ``stopped_early`` and ``kept`` (a
    sentence: which step's weights the model ends with, and why). Defined in chapter 5, Pretraining.
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
        if (config.keep_best or config.patience is not None) and val_data is None:
            raise ValueError("keep_best and patience compare validation losses: pass val_data")
        self.config, self.train_data, self.val_data, self.loss_fn = config, train_data, val_data, loss_fn
        self.accelerator = make_accelerator(config.mixed_precision, config.device, model_width(model))
        model = model.to(self.accelerator.device)
        optimizer = configure_optimizer(model, config.lr, config.weight_decay, config.betas)
        self._prepared, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.compiled = should_compile(config.compile, self.accelerator.device, config.max_steps)
        # compiled after prepare, as Accelerate's own dynamo option does; the parameters are shared
        self.model = torch.compile(self._prepared) if self.compiled else self._prepared
        dev_type = self.accelerator.device.type
        # reading a CPU tensor costs nothing; on a GPU each read waits for every queued kernel
        self._check_each_step = dev_type == "cpu"
        self.log_interval = config.log_interval or (1 if dev_type == "cpu" else 10)
        self._pending: list[tuple[int, float, torch.Tensor, torch.Tensor | None]] = []
        self._best: dict[str, Any] | None = None   # step, val_loss, state (CPU tensors), bad_evals
        self._stopped_early = False
        # the scheduler is stepped by hand once per optimizer step (not prepared: Accelerate
        # would step it once per process)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer.optimizer, self._lr_factor)
        self.step = 0
        self.history: dict[str, Any] = {k: [] for k in _HISTORY_KEYS}
        self.resumed_from: Path | None = None
        self._last_lr = config.lr

    def _to_device(self, batch: Any) -> Any:
        """The batch on the training device; on CUDA through pinned memory, so the copy does not
        wait for the kernels already queued (nanoGPT's ``pin_memory().to(non_blocking=True)``)."""
        if self.accelerator.device.type == "cuda":
            batch = _pinned(batch)
        return to_device(batch, self.accelerator.device)

    def _lr_factor(self, step: int) -> float:
        c = self.config
        return get_lr(step, max_lr=c.lr, warmup_steps=c.warmup_steps, max_steps=c.max_steps, min_lr=c.min_lr) / c.lr

    @property
    def unwrapped_model(self) -> torch.nn.Module:  # the model without Accelerate's or compile's wrappers
        return self.accelerator.unwrap_model(self._prepared)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean loss over ``eval_iters`` fixed batches of each split (model in eval mode)."""
        self.model.eval()
        out = {}
        for split, src in (("train", self.train_data), ("val", self.val_data)):
            if src is None:
                continue
            losses = [self.loss_fn(self.model, self._to_device(b)).detach().float()
                      for b in src.eval_batches(self.config.eval_iters)]
            values = torch.stack(losses).tolist()   # one read from the device, summed as before on the host
            out[split] = sum(values) / len(values)
        self.model.train()
        return out

    def _record_eval(self) -> dict[str, float]:
        ev = self.evaluate()
        self.history["eval_step"].append(self.step)
        self.history["train_loss"].append(ev.get("train", float("nan")))
        self.history["val_loss"].append(ev.get("val", float("nan")))
        if self.config.keep_best or self.config.patience is not None:
            self._track_best(ev["val"])
        return ev

    # ------------------------------------------------------------------ keep the best
    def _track_best(self, val: float) -> None:
        """After an evaluation: a new lowest validation loss is remembered (with keep_best, its
        weights as a CPU copy); otherwise one more evaluation without progress counts."""
        c = self.config
        # a finite loss below the best so far (a NaN best, e.g. at step 0, is beaten by any finite one)
        if self._best is None or (math.isfinite(val) and not self._best["val_loss"] <= val):
            state = None
            if c.keep_best:
                state = {k: v.detach().to("cpu", copy=True) for k, v in self.unwrapped_model.state_dict().items()}
            self._best = {"step": self.step, "val_loss": val, "state": state, "bad_evals": 0}
        else:
            self._best["bad_evals"] += 1
            if c.patience is not None and self._best["bad_evals"] >= c.patience:
                self._stopped_early = True
        self._write_best_history()

    def _write_best_history(self) -> None:
        b, c = self._best, self.config
        if b is None:
            return
        self.history["best_step"], self.history["best_val_loss"] = b["step"], b["val_loss"]
        self.history["stopped_early"] = self._stopped_early
        why = []
        if self._stopped_early:
            why.append(f"stopped early at step {self.step}: {c.patience} evaluations without a lower "
                       f"validation loss (patience {c.patience})")
        if c.keep_best:
            why.insert(0, f"step {b['step']}'s weights, the lowest validation loss ({b['val_loss']:.4f}; keep_best)")
        else:
            why.insert(0, f"step {self.step}'s weights, the last step's (the lowest validation loss, "
                          f"{b['val_loss']:.4f}, was at step {b['step']}; keep_best is off)")
        self.history["kept"] = "; ".join(why)

    def _restore_best(self) -> None:
        """End of the run with keep_best: the model takes the remembered weights."""
        if self.config.keep_best and self._best is not None and self._best["state"] is not None:
            self.unwrapped_model.load_state_dict(self._best["state"])

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
        self._flush()   # the history is complete, and a non-finite loss stops before the save
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
            # what keep_best / patience need to go on: the best weights so far, saved with the rest
            "best": None if self._best is None else {
                **self._best, "stopped_early": self._stopped_early,
                "why": self.history.get("kept", "")},
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
        self.history = {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in state["history"].items()}
        self.step = int(state["step"])
        best = state.get("best")
        if best is not None:
            self._best = {k: best[k] for k in ("step", "val_loss", "state", "bad_evals")}
            self._stopped_early = bool(best.get("stopped_early", False))
        if self.history["lr"]:
            self._last_lr = self.history["lr"][-1]
        ckpt.set_rng_state(state["rng"])
        self.resumed_from = Path(path)

    # ------------------------------------------------------------------ the loop
    def fit(self, stop_after: int | None = None, resume: bool = True) -> dict[str, Any]:
        """Train until ``config.max_steps`` (or until step ``stop_after``, to pause a run: the
        schedule still follows ``max_steps``), or until ``patience`` runs out. Returns ``history``.

        With ``resume`` and a valid checkpoint in ``checkpoint_dir``, training continues from it
        and reproduces the uninterrupted run's losses (bit for bit on CPU), the best weights so
        far included. Otherwise all RNGs are seeded with ``config.seed`` and the step-0 losses
        are evaluated first. When the run ends (not at a pause) with ``keep_best``, the model
        holds the weights of its lowest validation loss.
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
        while self.step < target and not self._stopped_early:
            self._train_step()
            self.step += 1
            lr = self._last_lr
            bar.update(1)
            is_eval = self.step % c.eval_interval == 0 or self.step == c.max_steps
            loss = None
            if is_eval or self.step % self.log_interval == 0 or self.step == target:
                loss = self._flush()   # the one point where the host reads the losses
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", refresh=False)
            elapsed = time.perf_counter() - start
            self._emit(TrainEvent("step", self.step, lr, loss=loss, elapsed=elapsed, trainer=self))
            if is_eval:
                ev = self._record_eval()
                bar.set_postfix(loss=f"{loss:.3f}", val=f"{ev.get('val', float('nan')):.3f}", refresh=False)
                self._emit(TrainEvent("eval", self.step, lr, loss=loss, train_loss=ev.get("train"),
                                      val_loss=ev.get("val"), elapsed=elapsed, trainer=self))
            interval_hit = c.checkpoint_interval is not None and self.step % c.checkpoint_interval == 0
            if c.checkpoint_dir is not None and (interval_hit or self.step == target or self._stopped_early):
                self.save_checkpoint()
        self._flush()
        bar.close()
        if self.step >= c.max_steps or self._stopped_early:   # the run is over (not paused)
            self._restore_best()
        last = self.history["lr"][-1] if self.history["lr"] else c.lr
        self._emit(TrainEvent("end", self.step, last, elapsed=time.perf_counter() - start, trainer=self))
        return self.history

    def _train_step(self) -> None:
        """One optimizer step over ``grad_accum_steps`` micro-batches. Their mean loss and the
        gradient norm stay on the device until :meth:`_flush` reads them (on a CPU: at once)."""
        c, acc = self.config, self.accelerator
        lr = self.optimizer.param_groups[0]["lr"]
        total = torch.zeros((), device=acc.device)
        for micro in range(c.grad_accum_steps):
            batch = self._to_device(self.train_data.next_batch())
            last = micro == c.grad_accum_steps - 1
            # under DDP, skip the gradient all-reduce until the last micro-batch
            with acc.no_sync(self.model) if not last else contextlib.nullcontext():
                with acc.autocast():
                    loss = self.loss_fn(self.model, batch) / c.grad_accum_steps
                acc.backward(loss)
            total += loss.detach().float()
        if acc.num_processes > 1:
            total = acc.reduce(total, reduction="mean")   # a collective on the device, no host read
        if self._check_each_step:  # stop before the optimizer spreads NaN into every weight
            value = total.item()
            if not math.isfinite(value):
                self.optimizer.zero_grad(set_to_none=True)
                self._raise_non_finite(value)
        norm = None
        if c.grad_clip is not None:  # the norm before clipping is recorded (spikes show there)
            norm = acc.clip_grad_norm_(self.model.parameters(), c.grad_clip)
            norm = norm.detach() if isinstance(norm, torch.Tensor) else torch.tensor(float(norm))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self._pending.append((self.step + 1, lr, total, norm))
        self._last_lr = lr

    def _flush(self) -> float | None:
        """Read the pending steps' losses and gradient norms from the device in one transfer,
        append them to ``history`` and return the newest loss. A non-finite loss found here (a
        GPU run, which does not read every step) raises :class:`NonFiniteLossError` naming its step;
        checkpoints are written only after a flush, so none holds weights updated by it."""
        if not self._pending:
            return self.history["loss"][-1] if self.history["loss"] else None
        pending, self._pending = self._pending, []
        losses = torch.stack([p[2] for p in pending]).tolist()
        norms = [None] * len(pending)
        if pending[0][3] is not None:
            norms = torch.stack([p[3].float().to(pending[0][3].device) for p in pending]).tolist()
        for (step, lr, _, _), loss, norm in zip(pending, losses, norms):
            if not math.isfinite(loss):
                self._raise_non_finite(loss, step=step)
            self.history["step"].append(step)
            self.history["loss"].append(loss)
            self.history["lr"].append(lr)
            if norm is not None:
                self.history["grad_norm"].append(norm)
        return losses[-1]

    def _raise_non_finite(self, value: float, step: int | None = None) -> None:
        c = self.config
        good = ckpt.latest_checkpoint(c.checkpoint_dir) if c.checkpoint_dir is not None else None
        where = (f"the last good checkpoint is {good} (fit() resumes from it)" if good is not None else
                 "no checkpoint was saved (set TrainConfig.checkpoint_dir and checkpoint_interval to keep one)")
        if step is None:   # checked before the optimizer step (CPU)
            step, what = self.step + 1, f"stopped before the optimizer step, so the model keeps step {self.step}'s weights"
        else:              # found when the device's losses were read, log_interval steps later
            what = (f"found when the losses were read at step {self.step} (read every {self.log_interval} "
                    "steps on this device), so the weights after it are not to be trusted")
        raise NonFiniteLossError(
            f"training loss is {value} at step {step}: {what}; {where}. Common causes: lr too high (now {c.lr:g}), "
            "no grad_clip, fp16 overflow (try mixed_precision='no' or 'bf16'), or NaN/inf in the data.",
            step=step, checkpoint=good)


__all__ = ["TrainConfig", "TrainEvent", "Trainer", "NonFiniteLossError", "BatchSource", "get_lr", "configure_optimizer",
           "default_loss", "make_accelerator", "should_compile", "COMPILE", "COMPILE_MIN_STEPS"]
