"""A GPT (decoder-only Transformer) in one readable file, GPT-2 compatible.

Reads top to bottom like a textbook page (after nanoGPT's ``model.py``):
:class:`GPTConfig` -> :class:`CausalSelfAttention` -> :class:`MLP` -> :class:`Block` (pre-LN)
-> :class:`GPT` (embeddings, blocks, final LayerNorm, tied output layer, KV cache, sampling,
optimizer groups, save/load). Parameter names match GPT-2's (``transformer.h.0.attn.c_attn``
...), so :mod:`course_utils.hf_bridge` maps the weights onto ``GPT2LMHeadModel`` one to one.
Defined in chapter 4, The Transformer.
"""
from __future__ import annotations

import math
import numbers
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..attention import fused_attention
from ..kv_cache import StaticKVCache, StaticLayerKV
from .io import load_checkpoint, save_checkpoint

#: One ``(keys, values)`` pair per layer, each ``[B, n_head, T_past, head_dim]`` (the dynamic
#: cache; :class:`course_utils.kv_cache.StaticKVCache` is the pre-allocated one).
KVCache = list[tuple[torch.Tensor, torch.Tensor]]

IGNORE_INDEX = -100  # targets equal to this are left out of the loss (PyTorch's default)


def check_class_ids(name: str, y: torch.Tensor, n: int) -> None:
    """Refuse float ``y`` and ids outside ``[0, n)`` other than the ignore index -100, with a clear
    error (instead of an IndexError deep in ``F.cross_entropy``, or a CUDA device assert)."""
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of class ids, got {type(y).__name__}")
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor of class ids, got {y.dtype}")
    if y.device.type != "xla" and bool(((y != IGNORE_INDEX) & ((y < 0) | (y >= n))).any()):
        raise ValueError(f"{name} must be ids in [0, {n}) or {IGNORE_INDEX} (ignored), got values in "
                         f"[{int(y.min())}, {int(y.max())}]")


@dataclass
class GPTConfig:
    """Sizes of a GPT. Defaults are GPT-2 small (124M). Defined in chapter 4, The Transformer."""

    vocab_size: int = 50257
    block_size: int = 1024   # longest context (number of learned positions)
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True        # biases in Linear and LayerNorm layers, as GPT-2

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive int, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if (isinstance(self.dropout, bool) or not isinstance(self.dropout, numbers.Real)
                or not 0.0 <= self.dropout < 1.0):
            raise ValueError(f"dropout must be a number in [0, 1), got {self.dropout!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GPTConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


class CausalSelfAttention(nn.Module):
    """Multi-head masked self-attention with one fused q/k/v projection.

    Fast path: PyTorch's fused kernel through :func:`course_utils.attention.fused_attention`
    (``is_causal`` when there is no cache).
    Teaching path (``output_attentions=True``): softmax(QKᵀ/√d + mask)·V written out, which also
    returns the weights ``[B, H, T, T_total]``. ``past`` is the dynamic cache's ``(k, v)``
    (concatenated with the new ones) or a static cache's layer (written in place at ``positions``,
    attention over all its slots with the unwritten ones masked: fixed shapes).
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.head_dim = config.n_embd // config.n_head
        self.dropout = float(config.dropout)
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        past: tuple[torch.Tensor, torch.Tensor] | StaticLayerKV | None = None,
        output_attentions: bool = False,
        positions: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | StaticLayerKV, torch.Tensor | None]:
        """``x`` [B, T, C] -> (y [B, T, C], (k, v) each [B, H, T_past+T, hd] or the static
        layer, weights or None). ``positions`` [T]: where the tokens sit (static cache only)."""
        B, T, C = x.shape
        # [B, T, 3C] -> [3, B, H, T, hd]: one matmul for q, k and v, then views (no copies).
        q, k, v = self.c_attn(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if isinstance(past, StaticLayerKV):
            return self._attend_static(q, k, v, past, positions, output_attentions)
        t_past = 0
        if past is not None:
            t_past = past[0].size(2)
            k = torch.cat((past[0], k), dim=2)
            v = torch.cat((past[1], v), dim=2)
        # Query i (absolute position t_past + i) may look at keys 0 .. t_past + i.
        mask = None
        if t_past > 0 and T > 1:
            mask = torch.ones(T, t_past + T, dtype=torch.bool, device=x.device).tril(diagonal=t_past)
        p = self.dropout if self.training else 0.0
        weights = None
        if output_attentions:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))
            if t_past == 0:
                mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            if mask is not None:
                att = att.masked_fill(~mask, float("-inf"))
            weights = F.softmax(att, dim=-1)
            y = (F.dropout(weights, p) if p > 0 else weights) @ v
        else:
            y = fused_attention(q, k, v, attn_mask=mask, dropout_p=p,
                                is_causal=(t_past == 0 and T > 1))
        y = self.c_proj(y.transpose(1, 2).reshape(B, T, C))
        if p > 0:
            y = self.resid_dropout(y)
        return y, (k, v), weights

    def _attend_static(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: StaticLayerKV,
                       positions: torch.Tensor | None, output_attentions: bool):
        """Attention through a static cache: write k, v [B, H, T, hd] at ``positions`` [T], then
        every query attends over all ``max_len`` slots, those after its own position masked."""
        if positions is None:
            raise ValueError("a static cache needs the positions of the new tokens")
        B, _, T, _ = q.shape
        keys, values = layer.write(k, v, positions)                   # [B, H, max_len, hd]
        slots = torch.arange(keys.size(2), device=q.device)
        mask = slots[None, :] <= positions[:, None]                   # [T, max_len]
        p = self.dropout if self.training else 0.0
        weights = None
        if output_attentions:
            att = (q @ keys.transpose(-2, -1).to(q.dtype)) * (1.0 / math.sqrt(self.head_dim))
            weights = F.softmax(att.masked_fill(~mask, float("-inf")), dim=-1)
            y = (F.dropout(weights, p) if p > 0 else weights) @ values.to(q.dtype)
        else:
            y = fused_attention(q, keys.to(q.dtype), values.to(q.dtype), attn_mask=mask, dropout_p=p)
        y = self.c_proj(y.transpose(1, 2).reshape(B, T, self.n_embd))
        if p > 0:
            y = self.resid_dropout(y)
        return y, layer, weights


class MLP(nn.Module):
    """Position-wise feed-forward network: Linear(C, 4C) -> GELU (tanh approx, as GPT-2) -> Linear(4C, C)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        self.p = float(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, C] -> [B, T, C]."""
        x = self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))
        return self.dropout(x) if (self.p > 0 and self.training) else x


class Block(nn.Module):
    """A pre-LN Transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | StaticLayerKV | None = None,
                output_attentions: bool = False, positions: torch.Tensor | None = None):
        """[B, T, C] -> ([B, T, C], (k, v) or the static layer, weights or None)."""
        a, kv, weights = self.attn(self.ln_1(x), past, output_attentions, positions)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, kv, weights


@dataclass
class GPTOutput:
    """What :meth:`GPT.forward` returns.

    ``logits`` [B, T, V]; ``loss`` (scalar) when targets were given; ``kv_cache`` (one
    ``(k, v)`` per layer) when ``use_cache``, or the static cache that was passed in;
    ``attentions`` (one [B, H, T, T_total] per layer) when ``output_attentions``.
    """

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    kv_cache: KVCache | StaticKVCache | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class GPT(nn.Module):
    """Decoder-only Transformer language model (GPT-2 architecture).

    Token + learned position embeddings -> ``n_layer`` pre-LN blocks -> LayerNorm -> a linear
    output layer that shares its weight with the token embedding (weight tying).
    Defined in chapter 4, The Transformer.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"GPT expects a GPTConfig, got {type(config).__name__}")
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying
        self.apply(self._init_weights)
        # GPT-2: residual projections scaled by 1/sqrt(2 * n_layer), so the residual stream's
        # variance does not grow with depth (two residual additions per block).
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self, non_embedding: bool = True) -> int:
        """Number of parameters (tied weights counted once).

        ``non_embedding=True`` leaves out the position embeddings, as nanoGPT does; the token
        embedding stays in because it is also the output layer's weight.
        """
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def estimate_flops_per_token(self, seq_len: int | None = None, training: bool = True) -> float:
        """Matmul FLOPs per token (multiply and add = 2 FLOPs) at context length ``seq_len``.

        Forward: 2·(12·L·C² + V·C) for the weight matmuls plus 4·L·T·C for QKᵀ and A·V
        (counted over the full T×T score matrix, as a dense kernel computes it). Training
        (forward + backward) is 3× the forward. LayerNorm, softmax, GELU are left out.
        """
        cfg = self.config
        T = cfg.block_size if seq_len is None else seq_len
        if not isinstance(T, int) or T < 1:
            raise ValueError(f"seq_len must be a positive int, got {seq_len!r}")
        L, C, V = cfg.n_layer, cfg.n_embd, cfg.vocab_size
        forward = 2 * (12 * L * C * C + V * C) + 4 * L * T * C
        return float(3 * forward if training else forward)

    def _check_idx(self, idx: torch.Tensor, name: str = "idx") -> None:
        if not isinstance(idx, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of token ids [B, T], got {type(idx).__name__}")
        if idx.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"{name} must hold integer token ids (torch.long), got dtype {idx.dtype}")
        if idx.dim() != 2:
            raise ValueError(f"{name} must have shape [B, T], got {tuple(idx.shape)}")
        # cheap on CPU; would sync a GPU, and break a compiled graph
        if idx.device.type == "cpu" and idx.numel() > 0 and not torch.compiler.is_compiling():
            lo, hi = (int(v) for v in torch.aminmax(idx))
            if lo < 0 or hi >= self.config.vocab_size:
                raise ValueError(f"{name} has token ids in [{lo}, {hi}], outside [0, {self.config.vocab_size})")

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        kv_cache: KVCache | StaticKVCache | None = None,
        use_cache: bool = False,
        output_attentions: bool = False,
        cache_position: torch.Tensor | None = None,
    ) -> GPTOutput:
        """Logits for every position of ``idx`` [B, T] (int64) -> :class:`GPTOutput`.

        ``targets`` [B, T] (int64; ``-100`` = ignore) gives the mean cross-entropy ``loss``.
        ``kv_cache`` holds the keys/values of earlier tokens: ``idx`` then continues them, its
        positions start after the cached ones, and the logits equal a full recompute. With a
        :class:`~course_utils.kv_cache.StaticKVCache` the new keys/values are written into it in
        place, at positions ``cache.length ..`` (then ``cache.length`` advances by T) or at
        ``cache_position`` [T] when given (a compiled decode step: nothing read on the host,
        the caller keeps ``cache.length``).
        """
        self._check_idx(idx)
        B, T = idx.shape
        if T == 0:
            raise ValueError("idx must contain at least one token (got T = 0)")
        if isinstance(kv_cache, StaticKVCache):
            return self._forward_static(idx, targets, kv_cache, cache_position, output_attentions)
        if cache_position is not None:
            raise ValueError("cache_position goes with a StaticKVCache (the dynamic cache counts positions itself)")
        t_past = 0
        if kv_cache is not None:
            if len(kv_cache) != self.config.n_layer:
                raise ValueError(f"kv_cache has {len(kv_cache)} layers, the model has {self.config.n_layer}")
            t_past = kv_cache[0][0].size(2)
            if kv_cache[0][0].size(0) != B:
                raise ValueError(f"kv_cache batch size {kv_cache[0][0].size(0)} != idx batch size {B}")
        if t_past + T > self.config.block_size:
            raise ValueError(
                f"sequence of length {t_past + T} (cached {t_past} + new {T}) is longer than "
                f"block_size={self.config.block_size}; crop the context (generate() does this)")
        if targets is not None and (not isinstance(targets, torch.Tensor) or targets.shape != idx.shape):
            raise ValueError(f"targets must be a tensor of idx's shape {tuple(idx.shape)}, got "
                             f"{tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets).__name__}")
        self._check_targets(targets)

        # position embeddings of positions t_past .. t_past+T-1: a slice (cheaper than a lookup)
        x = self.transformer.wte(idx) + self.transformer.wpe.weight[t_past:t_past + T]   # [B, T, C]
        if self.config.dropout > 0 and self.training:
            x = self.transformer.drop(x)
        new_cache: KVCache | None = [] if use_cache else None
        attentions: list[torch.Tensor] | None = [] if output_attentions else None
        for i, block in enumerate(self.transformer.h):
            past = kv_cache[i] if kv_cache is not None else None
            x, kv, weights = block(x, past, output_attentions)
            if new_cache is not None:
                new_cache.append(kv)
            if attentions is not None:
                attentions.append(weights)
        logits, loss = self._head(x, targets)
        return GPTOutput(logits=logits, loss=loss, kv_cache=new_cache,
                         attentions=tuple(attentions) if attentions is not None else None)

    def _check_targets(self, targets: torch.Tensor | None) -> None:
        if targets is None:
            return
        if targets.device.type == "cpu" and not torch.compiler.is_compiling():
            check_class_ids("targets", targets, self.config.vocab_size)
        elif targets.dtype.is_floating_point or targets.dtype == torch.bool:
            # on a GPU the range check would wait for the device every step: only the dtype here
            raise TypeError(f"targets must be an integer tensor of class ids, got {targets.dtype}")

    def _head(self, x: torch.Tensor, targets: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Final LayerNorm and the tied output layer: x [B, T, C] -> (logits [B, T, V], loss or None)."""
        logits = self.lm_head(self.transformer.ln_f(x))              # [B, T, V]
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1).long(),
                                   ignore_index=IGNORE_INDEX)
        return logits, loss

    def _forward_static(self, idx: torch.Tensor, targets: torch.Tensor | None, cache: StaticKVCache,
                        cache_position: torch.Tensor | None, output_attentions: bool) -> GPTOutput:
        """:meth:`forward` through a static cache (see there)."""
        B, T = idx.shape
        if len(cache) != self.config.n_layer or cache.batch_size != B:
            raise ValueError(f"the static cache has {len(cache)} layers and batch {cache.batch_size}; "
                             f"the model has {self.config.n_layer} layers, idx batch {B}")
        if cache.max_len > self.config.block_size:
            raise ValueError(f"the static cache has {cache.max_len} slots, more than block_size={self.config.block_size}")
        if cache_position is None:
            if cache.length + T > cache.max_len:
                raise ValueError(f"the static cache holds {cache.length} of {cache.max_len} positions: "
                                 f"no room for {T} more")
            cache_position = torch.arange(cache.length, cache.length + T, device=idx.device)
            cache.length += T
        elif cache_position.shape != (T,):
            raise ValueError(f"cache_position must have shape [T] = [{T}], got {tuple(cache_position.shape)}")
        self._check_targets(targets)
        x = self.transformer.wte(idx) + self.transformer.wpe(cache_position)   # [B, T, C]
        if self.config.dropout > 0 and self.training:
            x = self.transformer.drop(x)
        attentions: list[torch.Tensor] = []
        for block, layer in zip(self.transformer.h, cache.layers):
            x, _, weights = block(x, layer, output_attentions, cache_position)
            if weights is not None:
                attentions.append(weights)
        logits, loss = self._head(x, targets)
        return GPTOutput(logits=logits, loss=loss, kv_cache=cache,
                         attentions=tuple(attentions) if output_attentions else None)

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
        cache: str = "dynamic",
    ) -> torch.Tensor:
        """Continue ``idx`` [B, T] by ``max_new_tokens`` sampled tokens -> [B, T + max_new_tokens].

        ``temperature=0`` is greedy (argmax). ``top_k`` keeps the k most likely tokens, ``top_p``
        the smallest set whose probability reaches p (nucleus). Past ``block_size`` the context
        is a sliding window of the last ``block_size`` tokens (recomputed; with learned absolute
        positions a cache cannot slide). The model is put in eval mode for the call. ``cache``:
        ``"dynamic"`` grows by one token per step, ``"static"`` is a
        :class:`~course_utils.kv_cache.StaticKVCache` of ``block_size`` slots (same tokens).
        """
        self._check_idx(idx)
        if idx.size(1) == 0:
            raise ValueError("generate() needs a prompt of at least one token in idx (got shape [B, 0])")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be a non-negative int, got {max_new_tokens!r}")
        if (isinstance(temperature, bool) or not isinstance(temperature, numbers.Real)
                or not 0 <= temperature < math.inf):
            raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
        if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, numbers.Real)
                                  or not 0.0 < top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1] or None, got {top_p!r}")
        if cache not in ("dynamic", "static"):
            raise ValueError(f"cache must be 'dynamic' or 'static', got {cache!r}")
        was_training, bs, kv = self.training, self.config.block_size, None
        self.eval()
        try:
            for _ in range(max_new_tokens):
                cached = 0 if kv is None else (kv.length if isinstance(kv, StaticKVCache) else kv[0][0].size(2))
                if use_cache and kv is not None and cached < bs:
                    out = self(idx[:, -1:], kv_cache=kv, use_cache=True)
                elif use_cache and cache == "static" and idx.size(1) < bs:  # first step: fill a new one
                    kv = StaticKVCache.for_model(self, idx.size(0))
                    out = self(idx, kv_cache=kv)
                else:  # first step, no cache, or the window is full: (re)compute the context
                    out = self(idx[:, -bs:], use_cache=use_cache and cache == "dynamic")
                kv = out.kv_cache
                logits = out.logits[:, -1, :]
                idx_next = sample_next_token(logits, temperature, top_k, top_p, generator)
                idx = torch.cat((idx, idx_next), dim=1)
        finally:
            self.train(was_training)
        return idx

    def configure_optimizers(self, weight_decay: float, learning_rate: float,
                             betas: tuple[float, float] = (0.9, 0.95),
                             device_type: str = "cpu") -> torch.optim.AdamW:
        """AdamW with two groups: matrices (Linear weights, embeddings) decay; biases and
        LayerNorm weights do not. Uses the fused AdamW kernel on CUDA and CPU."""
        if weight_decay < 0 or learning_rate <= 0:
            raise ValueError(f"need weight_decay >= 0 and learning_rate > 0, got {weight_decay}, {learning_rate}")
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        fused = device_type in ("cuda", "cpu")  # one kernel for all tensors: ~4x faster steps on CPU here
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=fused)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` + ``model.safetensors`` to ``directory`` (atomically)."""
        state = {k: v for k, v in self.state_dict().items() if k != "lm_head.weight"}  # tied
        return save_checkpoint(directory, {"model_type": "course-gpt", **self.config.to_dict()}, state)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> "GPT":
        """Load a model written by :meth:`save_pretrained` (safetensors only, strict keys)."""
        cfg, state = load_checkpoint(directory, "course-gpt", map_location)
        model = cls(GPTConfig.from_dict(cfg))
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if k != "lm_head.weight"]
        if missing or unexpected:
            raise ValueError(f"checkpoint {directory} does not match GPTConfig: missing {missing}, unexpected {unexpected}")
        return model


def sample_next_token(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                      top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row from ``logits`` [B, V] -> [B, 1] (greedy when ``temperature == 0``)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = F.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens before it already reach top_p (the first always stays)
        drop_sorted = (probs.cumsum(dim=-1) - probs) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


__all__ = ["GPTConfig", "CausalSelfAttention", "MLP", "Block", "GPT", "GPTOutput", "KVCache",
           "sample_next_token", "IGNORE_INDEX"]
