"""A static (pre-allocated) KV cache, and a decode step that can be compiled or captured.

The dynamic cache of :class:`course_utils.models.gpt.GPT` grows by ``torch.cat`` every token:
each step makes new tensors of a new length, so every decoded token is a fresh sequence of
small kernel launches. On a CPU that costs nothing worth mentioning (the arithmetic dominates);
on a GPU a small model's token is *launch-bound*: ~1-2 ms of launching ~100 kernels that each
finish in microseconds. A static cache fixes the shapes instead:

* :class:`StaticKVCache` holds, per layer, keys and values ``[B, n_head, max_len, head_dim]``
  allocated once; a step writes its new keys/values in place at its positions
  (``index_copy_``) and attends over all ``max_len`` slots with a mask that hides the ones not
  yet written. Every decode step then has the same shapes and the same tensor addresses.
* :func:`decode_step_fn` wraps one decode step (``[B, 1]`` ids and a position -> logits ``[B, V]``)
  and can hand it to ``torch.compile(mode="reduce-overhead")``, which on CUDA fuses the
  kernels and replays the whole step as one CUDA graph: one launch per token.
* :func:`greedy_decode` runs prompt + decode steps with either cache, the loop the benchmark and
  the GPU check time (no host read per token).

The tokens are those of the dynamic cache (greedy; the tests check batch 1 and batch > 1).
Used by chapter 6 (Generation); the course GPT's attention writes into it.

Defined in chapter 6, Generation.
"""
from __future__ import annotations

from typing import Callable

import torch

COMPILE_MODES = ("never", "auto", "always")


class StaticLayerKV:
    """Keys and values of one layer: ``keys``, ``values`` [B, n_head, max_len, head_dim], written
    in place. Defined in chapter 6, Generation."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.keys, self.values = keys, values

    def write(self, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k``, ``v`` [B, n_head, T, head_dim] at ``positions`` [T] (absolute, on the
        cache's device) and return the full buffers [B, n_head, max_len, head_dim]."""
        self.keys.index_copy_(2, positions, k.to(self.keys.dtype))
        self.values.index_copy_(2, positions, v.to(self.values.dtype))
        return self.keys, self.values


class StaticKVCache:
    """A pre-allocated KV cache: one :class:`StaticLayerKV` per layer and ``length``, the number
    of positions written so far (kept on the host, so reading it never waits for a GPU).

    ``StaticKVCache(n_layer, batch_size, n_head, max_len, head_dim, device=..., dtype=...)``, or
    :meth:`for_model`. Memory: ``2 * n_layer * B * max_len * n_embd`` numbers, all at once.
    Defined in chapter 6, Generation.
    """

    def __init__(self, n_layer: int, batch_size: int, n_head: int, max_len: int, head_dim: int, *,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        for name, value in (("n_layer", n_layer), ("batch_size", batch_size), ("n_head", n_head),
                            ("max_len", max_len), ("head_dim", head_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
        shape = (batch_size, n_head, max_len, head_dim)
        self.layers = [StaticLayerKV(torch.zeros(shape, device=device, dtype=dtype),
                                     torch.zeros(shape, device=device, dtype=dtype)) for _ in range(n_layer)]
        self.max_len, self.batch_size, self.length = max_len, batch_size, 0
        self._mark_static()

    def _mark_static(self) -> None:
        # CUDA graphs replay fixed addresses: tell torch.compile these buffers stay where they are
        # (otherwise a graph that mutates them is not captured); nothing to do on a CPU
        if self.layers[0].keys.device.type == "cuda":  # pragma: no cover - no GPU in CI
            for layer in self.layers:
                torch._dynamo.mark_static_address(layer.keys)
                torch._dynamo.mark_static_address(layer.values)

    @classmethod
    def for_model(cls, model: torch.nn.Module, batch_size: int, max_len: int | None = None,
                  dtype: torch.dtype | None = None) -> "StaticKVCache":
        """A cache sized for the course GPT ``model`` (``max_len`` defaults to its block_size;
        device and dtype those of its weights)."""
        cfg = getattr(model, "config", None)
        if cfg is None or not all(hasattr(cfg, a) for a in ("n_layer", "n_head", "n_embd", "block_size")):
            raise TypeError(f"for_model needs a course GPT (config with n_layer, n_head, n_embd, block_size), "
                            f"got {type(model).__name__}")
        max_len = cfg.block_size if max_len is None else max_len
        if isinstance(max_len, bool) or not isinstance(max_len, int) or not 1 <= max_len <= cfg.block_size:
            raise ValueError(f"max_len must be an int in [1, block_size={cfg.block_size}], got {max_len!r}")
        weight = next(model.parameters())
        return cls(cfg.n_layer, batch_size, cfg.n_head, max_len, cfg.n_embd // cfg.n_head,
                   device=weight.device, dtype=dtype or weight.dtype)

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def nbytes(self) -> int:
        """Bytes held by all keys and values."""
        return sum(t.numel() * t.element_size() for layer in self.layers for t in (layer.keys, layer.values))

    def reset(self) -> None:
        """Forget what was written (the buffers stay allocated, their addresses too)."""
        for layer in self.layers:
            layer.keys.zero_()
            layer.values.zero_()
        self.length = 0

    def reorder_cache(self, index: torch.Tensor) -> "StaticKVCache":
        """Keep batch rows ``index`` [B'] (beam search); new buffers of batch B'. Returns self."""
        for layer in self.layers:
            idx = index.to(layer.keys.device)
            layer.keys, layer.values = layer.keys.index_select(0, idx), layer.values.index_select(0, idx)
        self.batch_size = int(index.numel())
        self._mark_static()
        return self


def decode_step_fn(model: torch.nn.Module, cache: StaticKVCache, compile: str = "never",
                   mode: str = "reduce-overhead") -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``step(ids [B, 1], position [1]) -> logits [B, V]`` of the course GPT ``model`` writing into
    ``cache`` (the caller advances ``cache.length``). Fixed shapes, no host read: compilable.

    ``compile``: ``"never"`` (eager), ``"always"`` (``torch.compile(step, mode=mode)``) or
    ``"auto"`` (compile on CUDA only, where the launches are the cost; ``reduce-overhead``
    captures the step as a CUDA graph). The returned logits are a copy, safe to keep after the
    next step (a CUDA graph reuses its output memory). Defined in chapter 6, Generation.
    """
    if compile not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {COMPILE_MODES}, got {compile!r}")
    if not isinstance(cache, StaticKVCache):
        raise TypeError(f"cache must be a StaticKVCache, got {type(cache).__name__}")

    def step(ids: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        return model(ids, kv_cache=cache, cache_position=position).logits[:, -1, :]

    device = cache.layers[0].keys.device
    if compile == "always" or (compile == "auto" and device.type == "cuda"):
        compiled = torch.compile(step, mode=mode, fullgraph=True)

        def run(ids: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
            if device.type == "cuda":  # pragma: no cover - no GPU in CI
                torch.compiler.cudagraph_mark_step_begin()
            return compiled(ids, position).clone()

        return run
    return step


@torch.no_grad()
def greedy_decode(model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int, cache: str = "dynamic",
                  compile: str = "never", step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                  static_cache: StaticKVCache | None = None) -> torch.Tensor:
    """Greedy continuation of ``prompt`` [B, T] by ``new_tokens`` with the course GPT -> [B, T + n].

    ``cache="dynamic"``: the model's growing cache (``torch.cat`` per token); ``"static"``: a
    :class:`StaticKVCache` of ``T + new_tokens`` slots (pass ``static_cache`` and ``step`` from
    :func:`decode_step_fn` to reuse a compiled step across calls: the cache is reset here).
    Nothing is read back to the host inside the loop, so on a GPU the kernels queue up freely.
    The prompt plus the new tokens must fit in ``block_size``. Defined in chapter 6, Generation.
    """
    if cache not in ("dynamic", "static"):
        raise ValueError(f"cache must be 'dynamic' or 'static', got {cache!r}")
    if isinstance(new_tokens, bool) or not isinstance(new_tokens, int) or new_tokens < 1:
        raise ValueError(f"new_tokens must be a positive int, got {new_tokens!r}")
    if not isinstance(prompt, torch.Tensor) or prompt.dim() != 2 or prompt.size(1) == 0:
        raise ValueError(f"prompt must be token ids [B, T] with T >= 1, got "
                         f"{tuple(prompt.shape) if isinstance(prompt, torch.Tensor) else type(prompt).__name__}")
    B, T = prompt.shape
    total = T + new_tokens
    block = model.config.block_size
    if total > block:
        raise ValueError(f"prompt ({T}) + new_tokens ({new_tokens}) = {total} exceeds block_size={block}")
    was_training = model.training
    model.eval()
    out = torch.empty(B, total, dtype=prompt.dtype, device=prompt.device)
    out[:, :T] = prompt
    try:
        if cache == "dynamic":
            o = model(prompt, use_cache=True)
            kv, nxt = o.kv_cache, o.logits[:, -1, :].argmax(-1)
            for i in range(T, total):
                out[:, i] = nxt
                if i + 1 < total:
                    o = model(out[:, i:i + 1], kv_cache=kv, use_cache=True)
                    kv, nxt = o.kv_cache, o.logits[:, -1, :].argmax(-1)
            return out
        kvs = static_cache if static_cache is not None else StaticKVCache.for_model(model, B, max_len=total)
        if kvs.batch_size != B or kvs.max_len < total:
            raise ValueError(f"static_cache holds batch {kvs.batch_size} x {kvs.max_len} positions; "
                             f"this call needs batch {B} x {total}")
        kvs.reset()
        step = step or decode_step_fn(model, kvs, compile=compile)
        logits = model(prompt, kv_cache=kvs).logits[:, -1, :]          # the prompt in one pass (eager)
        nxt = logits.argmax(-1)
        position = torch.full((1,), T, dtype=torch.long, device=prompt.device)  # advanced in place
        for i in range(T, total):
            out[:, i] = nxt
            if i + 1 < total:
                nxt = step(out[:, i:i + 1], position).argmax(-1)
                position += 1
        kvs.length = total - 1
        return out
    finally:
        model.train(was_training)


__all__ = ["StaticLayerKV", "StaticKVCache", "decode_step_fn", "greedy_decode", "COMPILE_MODES"]
