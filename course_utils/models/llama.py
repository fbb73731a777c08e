"""A Llama-family decoder in one readable file, weight-for-weight compatible with transformers.

Reads top to bottom like :mod:`course_utils.models.gpt`, with the four changes every current
open decoder (Llama 3, SmolLM2, Qwen 3, Mistral ...) makes to the GPT-2 block:

* :class:`RMSNorm` instead of LayerNorm (no mean subtraction, no bias);
* rotary position embeddings (:class:`RotaryEmbedding`, :func:`apply_rotary`) instead of a table
  of learned positions: queries and keys are rotated by an angle proportional to their position,
  so their dot product depends only on the distance between the two tokens;
* a gated MLP, :class:`SwiGLU`: ``down(silu(gate(x)) * up(x))``;
* grouped-query attention (:class:`Attention`): ``n_kv_heads`` key/value heads shared by
  ``n_head`` query heads (MHA when equal, MQA when 1), expanded with :func:`repeat_kv`;

plus no biases and tied input/output embeddings. Parameter names are transformers' own
(``layers.0.self_attn.q_proj.weight`` ...), so :func:`from_hf` / :func:`to_hf` map the weights
of ``LlamaForCausalLM`` by adding or removing the ``model.`` prefix. Three teaching switches in
:class:`LlamaConfig` (``norm``, ``pos``, ``mlp``) put the GPT-2 piece back one at a time for the
chapter's ablations. Defined in chapter 11, The modern decoder.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..attention import fused_attention, padding_mask
from .gpt import IGNORE_INDEX, sample_next_token
from .io import load_checkpoint, save_checkpoint

#: One ``(keys, values)`` pair per layer, each ``[B, n_kv_heads, T_past, head_dim]`` (rotated keys).
KVCache = list[tuple[torch.Tensor, torch.Tensor]]

NORMS, POSITIONS, MLPS = ("rms", "layer"), ("rope", "learned"), ("swiglu", "gelu")


@dataclass
class LlamaConfig:
    """Sizes of a Llama-family decoder. Defaults are SmolLM2-135M's. Defined in chapter 11, The modern decoder.

    ``block_size`` is the longest context (the size of the position table when ``pos="learned"``).
    ``norm``, ``pos`` and ``mlp`` are teaching switches; Llama is ``"rms"``, ``"rope"``, ``"swiglu"``.
    """

    vocab_size: int = 49152
    block_size: int = 8192
    n_layer: int = 30
    n_head: int = 9
    n_kv_heads: int = 3
    n_embd: int = 576
    intermediate_size: int = 1536
    rope_theta: float = 100000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = True
    dropout: float = 0.0
    norm: str = "rms"
    pos: str = "rope"
    mlp: str = "swiglu"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_kv_heads", "n_embd", "intermediate_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"LlamaConfig.{name} must be a positive int, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"LlamaConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.n_head % self.n_kv_heads != 0:
            raise ValueError(f"LlamaConfig.n_head ({self.n_head}) must be divisible by n_kv_heads "
                             f"({self.n_kv_heads}): each key/value head serves a whole group of query heads")
        if (self.n_embd // self.n_head) % 2 != 0:
            raise ValueError(f"LlamaConfig: head_dim = n_embd / n_head = {self.n_embd // self.n_head} must be even "
                             "(rotary embeddings rotate pairs of dimensions)")
        if not float(self.rope_theta) > 0:
            raise ValueError(f"LlamaConfig.rope_theta must be > 0, got {self.rope_theta!r}")
        if not float(self.rms_norm_eps) > 0:
            raise ValueError(f"LlamaConfig.rms_norm_eps must be > 0, got {self.rms_norm_eps!r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"LlamaConfig.dropout must be in [0, 1), got {self.dropout!r}")
        for name, allowed in (("norm", NORMS), ("pos", POSITIONS), ("mlp", MLPS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"LlamaConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LlamaConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# --------------------------------------------------------------------------------- the pieces
class RMSNorm(nn.Module):
    """``x / sqrt(mean(x²) + eps) * weight`` over the last dimension (computed in fp32).

    LayerNorm also subtracts the mean and adds a bias; RMSNorm only rescales. [..., C] -> [..., C].
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def make_norm(config: LlamaConfig) -> nn.Module:
    """RMSNorm (Llama) or LayerNorm without bias (the ablation)."""
    if config.norm == "rms":
        return RMSNorm(config.n_embd, config.rms_norm_eps)
    return nn.LayerNorm(config.n_embd, eps=config.rms_norm_eps, bias=False)


class RotaryEmbedding(nn.Module):
    """cos and sin of the rotation angles ``position * theta^(-2i/d)``, i = 0 .. d/2 - 1.

    ``forward(position_ids [B, T])`` -> ``(cos, sin)`` each [B, T, head_dim] (the d/2 angles
    written twice, matching :func:`rotate_half`'s pairing of dimension i with i + d/2).
    """

    def __init__(self, head_dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)   # [head_dim / 2]

    @torch.no_grad()
    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        angles = position_ids[..., None].float() * self.inv_freq.to(position_ids.device)   # [B, T, d/2]
        emb = torch.cat((angles, angles), dim=-1)                                        # [B, T, d]
        return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[..., d] -> [..., d]: (x1, x2) -> (-x2, x1) for the two halves; a 90° turn of each pair (i, i + d/2)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
                 sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate queries [B, H, T, d] and keys [B, H_kv, T, d] by the angles of their positions.

    ``cos``/``sin`` [B, T, d] are broadcast over the heads. Each pair (x_i, x_{i+d/2}) turns by its
    angle: x·cos + rotate_half(x)·sin.
    """
    cos, sin = cos[:, None].to(q.dtype), sin[:, None].to(q.dtype)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


class SwiGLU(nn.Module):
    """Gated MLP: ``down_proj(silu(gate_proj(x)) * up_proj(x))``, [B, T, C] -> [B, T, C].

    Three matrices of C × I instead of two: ``intermediate_size ≈ 8C/3`` has the parameters of
    GPT-2's 4C MLP. Also one expert of chapter 11's mixture of experts (``course_utils.moe``)."""

    def __init__(self, n_embd: int, intermediate_size: int) -> None:
        super().__init__()
        for name, value in (("n_embd", n_embd), ("intermediate_size", intermediate_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"SwiGLU {name} must be a positive int, got {value!r}")
        C, I = n_embd, intermediate_size
        self.gate_proj = nn.Linear(C, I, bias=False)
        self.up_proj = nn.Linear(C, I, bias=False)
        self.down_proj = nn.Linear(I, C, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class GeluMLP(nn.Module):
    """GPT-2's MLP without biases, ``down_proj(gelu(up_proj(x)))`` (the ``mlp="gelu"`` ablation)."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.up_proj = nn.Linear(config.n_embd, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.up_proj(x), approximate="tanh"))


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[B, H_kv, T, d] -> [B, H_kv * n_rep, T, d]: each key/value head serves ``n_rep`` query heads
    (head j of the output is input head j // n_rep). A view plus one copy; nothing when n_rep = 1."""
    if n_rep == 1:
        return x
    B, H_kv, T, d = x.shape
    return x[:, :, None].expand(B, H_kv, n_rep, T, d).reshape(B, H_kv * n_rep, T, d)


class Attention(nn.Module):
    """Causal self-attention with ``n_kv_heads`` key/value heads (GQA; MHA and MQA as special cases).

    The cache keeps the ``n_kv_heads`` keys and values, not the expanded ones: that is what
    grouped-query attention saves. ``mask`` is a boolean [B, 1, T, T_total] (True = may attend);
    ``None`` means causal attention without padding (no cache, or one new token).
    """

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_heads, self.head_dim = config.n_head, config.n_kv_heads, config.head_dim
        self.dropout = float(config.dropout)
        C = config.n_embd
        self.q_proj = nn.Linear(C, self.n_head * self.head_dim, bias=False)
        self.k_proj = nn.Linear(C, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(C, self.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_head * self.head_dim, C, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                past: tuple[torch.Tensor, torch.Tensor] | None = None,
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """``x`` [B, T, C] -> (y [B, T, C], (k, v) each [B, n_kv_heads, T_past + T, head_dim])."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)       # [B, H, T, d]
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)   # [B, H_kv, T, d]
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rotary(q, k, *rope)
        if past is not None:
            k, v = torch.cat((past[0], k), dim=2), torch.cat((past[1], v), dim=2)
        n_rep = self.n_head // self.n_kv_heads
        p = self.dropout if self.training else 0.0
        # no mask given: plain causal attention over the new tokens (the fast path for training)
        causal = mask is None and past is None and T > 1
        y = fused_attention(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), attn_mask=mask,
                            dropout_p=p, is_causal=causal)
        y = self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))
        return y, (k, v)


class Block(nn.Module):
    """Pre-norm decoder layer: x + Attn(Norm(x)), then x + MLP(Norm(x)) (transformers' names)."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.input_layernorm = make_norm(config)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = make_norm(config)
        self.mlp = (SwiGLU(config.n_embd, config.intermediate_size) if config.mlp == "swiglu"
                    else GeluMLP(config))
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                past: tuple[torch.Tensor, torch.Tensor] | None = None):
        """[B, T, C] -> ([B, T, C], (k, v))."""
        a, kv = self.self_attn(self.input_layernorm(x), mask, rope, past)
        x = x + self.resid_dropout(a)
        x = x + self.resid_dropout(self.mlp(self.post_attention_layernorm(x)))
        return x, kv


def attention_mask_4d(attention_mask: torch.Tensor, t_new: int) -> torch.Tensor:
    """Padding mask [B, S] (1 = real token, S = cached + new) -> boolean [B, 1, t_new, S].

    Query i (the i-th new token, absolute slot S - t_new + i) may attend to key j when j <= its
    slot (causal) and key j is a real token. A padding query would see no key at all (a row of
    -inf is NaN after softmax), so it is allowed to see itself; its output is never used.
    """
    B, S = attention_mask.shape
    slots = torch.arange(S, device=attention_mask.device)
    q_slots = slots[S - t_new:]
    causal = slots[None, :] <= q_slots[:, None]                                    # [t_new, S]
    mask = causal[None] & attention_mask.bool()[:, None, :]                         # [B, t_new, S]
    mask = mask | (slots[None, None, :] == q_slots[None, :, None])                  # a query always sees itself
    return mask[:, None]


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, S] padding mask -> [B, S] positions counting real tokens only (0 for left padding).

    With left padding ``[0, 0, 1, 1, 1]`` the real tokens get positions 0, 1, 2, as if unpadded
    (what transformers' ``generate`` does)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@dataclass
class LlamaOutput:
    """``logits`` [B, T, V]; ``loss`` when targets were given; ``kv_cache`` when ``use_cache``."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    kv_cache: KVCache | None = None


class LlamaForCausalLM(nn.Module):
    """Token embedding -> ``n_layer`` pre-norm blocks -> final norm -> tied output layer.

    Defined in chapter 11, The modern decoder.
    """

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        if not isinstance(config, LlamaConfig):
            raise TypeError(f"LlamaForCausalLM expects a LlamaConfig, got {type(config).__name__}")
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.n_embd)
        if config.pos == "learned":
            self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta) if config.pos == "rope" else None
        self.drop = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.norm = make_norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():   # residual projections scaled as in GPT-2
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters (tied weights once); ``non_embedding`` leaves out the learned position table."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and self.config.pos == "learned":
            n -= self.wpe.weight.numel()
        return n

    def _check_idx(self, idx: torch.Tensor, name: str = "idx") -> None:
        if not isinstance(idx, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of token ids [B, T], got {type(idx).__name__}")
        if idx.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"{name} must hold integer token ids (torch.long), got dtype {idx.dtype}")
        if idx.dim() != 2 or idx.size(1) == 0:
            raise ValueError(f"{name} must have shape [B, T] with T >= 1, got {tuple(idx.shape)}")
        if idx.device.type == "cpu":
            lo, hi = (int(v) for v in torch.aminmax(idx))
            if lo < 0 or hi >= self.config.vocab_size:
                raise ValueError(f"{name} has token ids in [{lo}, {hi}], outside [0, {self.config.vocab_size})")

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *,
                attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                kv_cache: KVCache | None = None, use_cache: bool = False) -> LlamaOutput:
        """Logits for ``idx`` [B, T] -> :class:`LlamaOutput`.

        ``attention_mask`` [B, T_past + T] (1 = real token, 0 = padding; covers the cached tokens
        too, as in transformers) masks padding; positions then count real tokens only, unless
        ``position_ids`` [B, T] are given. ``kv_cache`` continues earlier tokens. ``targets`` [B, T]
        (-100 = ignore) give the mean cross-entropy ``loss``.
        """
        self._check_idx(idx)
        B, T = idx.shape
        t_past = 0
        if kv_cache is not None:
            if len(kv_cache) != self.config.n_layer:
                raise ValueError(f"kv_cache has {len(kv_cache)} layers, the model has {self.config.n_layer}")
            t_past = kv_cache[0][0].size(2)
        S = t_past + T
        if S > self.config.block_size:
            raise ValueError(f"sequence of length {S} (cached {t_past} + new {T}) is longer than "
                             f"block_size={self.config.block_size}")
        padded = attention_mask is not None
        if not padded:
            default_pos = torch.arange(t_past, S, device=idx.device)[None].expand(B, T)
        else:
            if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != (B, S):
                got = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask)
                raise ValueError(f"attention_mask must have shape [B, T_past + T] = {(B, S)}, got {got}")
            # 0/1 or bool only: an additive 0/-inf mask read as 0/1 would be inverted silently
            attention_mask = padding_mask(attention_mask)[:, 0, 0, :]
            default_pos = position_ids_from_mask(attention_mask)[:, t_past:]
        if position_ids is None:
            position_ids = default_pos
        elif position_ids.shape != (B, T):
            raise ValueError(f"position_ids must have shape [B, T] = {(B, T)}, got {tuple(position_ids.shape)}")
        if targets is not None and (not isinstance(targets, torch.Tensor) or targets.shape != idx.shape):
            raise ValueError(f"targets must be a tensor of idx's shape {tuple(idx.shape)}")

        x = self.embed_tokens(idx)                                              # [B, T, C]
        rope = None
        if self.rotary is not None:
            rope = self.rotary(position_ids)
        else:
            x = x + self.wpe(position_ids)
        x = self.drop(x)
        mask = None   # without padding, causal attention needs no mask unless T new tokens follow a cache
        if padded or (t_past > 0 and T > 1):
            mask = attention_mask_4d(attention_mask if padded else torch.ones(B, S, device=idx.device), T)
        new_cache: KVCache | None = [] if use_cache else None
        for i, block in enumerate(self.layers):
            x, kv = block(x, mask, rope, kv_cache[i] if kv_cache is not None else None)
            if new_cache is not None:
                new_cache.append(kv)
        logits = self.lm_head(self.norm(x))                                     # [B, T, V]
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1).long(),
                                   ignore_index=IGNORE_INDEX)
        return LlamaOutput(logits=logits, loss=loss, kv_cache=new_cache)

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, *, attention_mask: torch.Tensor | None = None,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 eos_token_id: int | None = None, use_cache: bool = True,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Continue ``idx`` [B, T] (left-padded when ``attention_mask`` has zeros) -> [B, T + n].

        ``temperature=0`` is greedy. With the cache each step feeds only the newest token; the
        keys and values of all earlier ones are reused. Rows that produced ``eos_token_id`` are
        filled with it; generation stops early when every row has. The model is in eval mode
        for the call.
        """
        self._check_idx(idx)
        if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be a non-negative int, got {max_new_tokens!r}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if idx.size(1) + max_new_tokens > self.config.block_size:
            raise ValueError(f"prompt ({idx.size(1)}) + max_new_tokens ({max_new_tokens}) exceed "
                             f"block_size={self.config.block_size}")
        if attention_mask is not None and (not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2):
            raise ValueError("attention_mask must be a [B, T] tensor of 0/1 (1 = real token)")
        mask = torch.ones_like(idx) if attention_mask is None else \
            padding_mask(attention_mask.to(idx.device))[:, 0, 0, :].long()
        if mask.shape != idx.shape:
            raise ValueError(f"attention_mask must have idx's shape {tuple(idx.shape)}, got {tuple(mask.shape)}")
        finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        was_training, cache = self.training, None
        self.eval()
        try:
            for _ in range(max_new_tokens):
                if use_cache and cache is not None:
                    out = self(idx[:, -1:], attention_mask=mask, kv_cache=cache, use_cache=True)
                else:
                    out = self(idx, attention_mask=mask, use_cache=use_cache)
                cache = out.kv_cache
                nxt = sample_next_token(out.logits[:, -1, :].float(), temperature, top_k, top_p, generator)
                if eos_token_id is not None:
                    nxt = nxt.masked_fill(finished[:, None], eos_token_id)
                    finished |= nxt[:, 0] == eos_token_id
                idx = torch.cat((idx, nxt.to(idx.dtype)), dim=1)
                mask = torch.cat((mask, torch.ones_like(nxt, dtype=mask.dtype)), dim=1)
                if eos_token_id is not None and bool(finished.all()):
                    break
        finally:
            self.train(was_training)
        return idx

    # ------------------------------------------------------------------ saving and loading
    def load_weights(self, state: dict[str, torch.Tensor], source: str = "state dict") -> "LlamaForCausalLM":
        """Copy ``state`` into the model after checking every name and shape; a mismatch is a
        ValueError naming the weight and the config field that sets its shape."""
        check_state(self, state, source)
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not (k == "lm_head.weight" and self.config.tie_word_embeddings)]
        if missing or unexpected:
            raise ValueError(f"{source} does not match the LlamaConfig: missing {missing}, unexpected {unexpected}")
        return self

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` + ``model.safetensors`` to ``directory`` (atomically)."""
        state = self.state_dict()
        if self.config.tie_word_embeddings:
            state = {k: v for k, v in state.items() if k != "lm_head.weight"}
        return save_checkpoint(directory, {"model_type": "course-llama", **self.config.to_dict()}, state)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike,
                        map_location: str | torch.device = "cpu") -> "LlamaForCausalLM":
        """Load a model written by :meth:`save_pretrained` (safetensors only, names and shapes checked)."""
        cfg, state = load_checkpoint(directory, "course-llama", map_location)
        return cls(LlamaConfig.from_dict(cfg)).load_weights(state, f"checkpoint {directory}")


# which config field sets the shape of each kind of weight (for error messages)
_SHAPE_FIELDS = (("q_proj", "n_embd, n_head"), ("o_proj", "n_embd, n_head"), ("k_proj", "n_kv_heads (and n_embd)"),
                 ("v_proj", "n_kv_heads (and n_embd)"), ("gate_proj", "intermediate_size"),
                 ("up_proj", "intermediate_size"), ("down_proj", "intermediate_size"),
                 ("embed_tokens", "vocab_size, n_embd"), ("lm_head", "vocab_size, n_embd"), ("wpe", "block_size"),
                 ("norm", "n_embd"))


def check_state(model: nn.Module, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
    """Raise a ValueError naming the field when a weight in ``state`` has the wrong shape for ``model``."""
    expected = model.state_dict()
    for name, tensor in state.items():
        if name in expected and tuple(tensor.shape) != tuple(expected[name].shape):
            field = next((f for key, f in _SHAPE_FIELDS if key in name), "the config")
            raise ValueError(f"{source}: weight {name!r} has shape {tuple(tensor.shape)}, but the config needs "
                             f"{tuple(expected[name].shape)}; check LlamaConfig.{field}")


# --------------------------------------------------------------------------------- transformers
def config_from_hf(hf_config: Any) -> LlamaConfig:
    """A :class:`LlamaConfig` from transformers' ``LlamaConfig``; features the course model lacks
    (biases, another activation, scaled RoPE, a head_dim other than n_embd / n_head) are a ValueError."""
    rope = getattr(hf_config, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(hf_config, "rope_theta", None))
    checks = {"hidden_act": (getattr(hf_config, "hidden_act", "silu"), "silu"),
              "attention_bias": (bool(getattr(hf_config, "attention_bias", False)), False),
              "mlp_bias": (bool(getattr(hf_config, "mlp_bias", False)), False),
              "rope_type": (rope.get("rope_type", "default"), "default"),
              "head_dim": (getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads,
                           hf_config.hidden_size // hf_config.num_attention_heads)}
    for name, (got, want) in checks.items():
        if got != want:
            raise ValueError(f"the course Llama needs {name}={want!r}; this transformers config has {got!r}")
    if theta is None:
        raise ValueError("the transformers config has no rope_theta (rope_parameters['rope_theta'])")
    return LlamaConfig(vocab_size=hf_config.vocab_size, block_size=hf_config.max_position_embeddings,
                       n_layer=hf_config.num_hidden_layers, n_head=hf_config.num_attention_heads,
                       n_kv_heads=hf_config.num_key_value_heads, n_embd=hf_config.hidden_size,
                       intermediate_size=hf_config.intermediate_size, rope_theta=float(theta),
                       rms_norm_eps=float(hf_config.rms_norm_eps),
                       tie_word_embeddings=bool(getattr(hf_config, "tie_word_embeddings", True)))


def from_hf(hf_model: nn.Module) -> LlamaForCausalLM:
    """The course model with the weights of a transformers ``LlamaForCausalLM`` (copied, fp32 kept
    as it is). The names differ only by the ``model.`` prefix. Defined in chapter 11, The modern decoder."""
    if not hasattr(hf_model, "config") or getattr(hf_model.config, "model_type", None) != "llama":
        raise TypeError(f"from_hf expects a transformers LlamaForCausalLM, got {type(hf_model).__name__}")
    config = config_from_hf(hf_model.config)
    state = {k.removeprefix("model."): v.detach().clone() for k, v in hf_model.state_dict().items()}
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu")
    model.rotary = RotaryEmbedding(config.head_dim, config.rope_theta)   # buffers are not in a state dict
    model.load_weights(state, "the transformers model")
    if config.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    return model.eval()


def hf_config(config: LlamaConfig) -> Any:
    """transformers' ``LlamaConfig`` for a course config (Llama switches only)."""
    from transformers import LlamaConfig as HFLlamaConfig

    for name, want in (("norm", "rms"), ("pos", "rope"), ("mlp", "swiglu")):
        if getattr(config, name) != want:
            raise ValueError(f"transformers' Llama needs LlamaConfig.{name}={want!r}, got {getattr(config, name)!r}")
    return HFLlamaConfig(vocab_size=config.vocab_size, hidden_size=config.n_embd,
                         intermediate_size=config.intermediate_size, num_hidden_layers=config.n_layer,
                         num_attention_heads=config.n_head, num_key_value_heads=config.n_kv_heads,
                         max_position_embeddings=config.block_size, rms_norm_eps=config.rms_norm_eps,
                         rope_parameters={"rope_type": "default", "rope_theta": float(config.rope_theta)},
                         tie_word_embeddings=config.tie_word_embeddings, attention_bias=False, mlp_bias=False,
                         hidden_act="silu", head_dim=config.head_dim)


def to_hf(model: LlamaForCausalLM) -> Any:
    """A transformers ``LlamaForCausalLM`` holding copies of ``model``'s weights (eval mode).

    Defined in chapter 11, The modern decoder."""
    from transformers import LlamaForCausalLM as HFLlamaForCausalLM

    if not isinstance(model, LlamaForCausalLM):
        raise TypeError(f"to_hf expects the course LlamaForCausalLM, got {type(model).__name__}")
    hf = HFLlamaForCausalLM(hf_config(model.config))
    state = {("" if k == "lm_head.weight" else "model.") + k: v.detach().clone()
             for k, v in model.state_dict().items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and model.config.tie_word_embeddings)]
    if missing or unexpected:
        raise ValueError(f"weights do not map onto transformers' Llama: missing {missing}, unexpected {unexpected}")
    if model.config.tie_word_embeddings:
        hf.tie_weights()
    return hf.eval()


def save_hf_pretrained(model: LlamaForCausalLM, directory: str | os.PathLike, tokenizer: Any | None = None) -> Path:
    """Save ``model`` in transformers' format (``LlamaForCausalLM.from_pretrained(directory)`` loads
    it), with ``tokenizer`` beside it when given. Defined in chapter 11, The modern decoder."""
    directory = Path(directory)
    to_hf(model).save_pretrained(str(directory))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))
    return directory


def kv_cache_bytes_per_token(n_layer: int, n_kv_heads: int, head_dim: int, bytes_per_value: int = 2) -> int:
    """Bytes the KV cache grows by per token: 2 (keys and values) · L · n_kv_heads · head_dim · bytes.

    Defined in chapter 11, The modern decoder."""
    for name, v in (("n_layer", n_layer), ("n_kv_heads", n_kv_heads), ("head_dim", head_dim),
                    ("bytes_per_value", bytes_per_value)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    return 2 * n_layer * n_kv_heads * head_dim * bytes_per_value


def cache_nbytes(cache: KVCache) -> int:
    """Bytes held by the tensors of a course KV cache."""
    return sum(t.numel() * t.element_size() for kv in cache for t in kv)


__all__ = ["LlamaConfig", "RMSNorm", "RotaryEmbedding", "rotate_half", "apply_rotary", "SwiGLU", "GeluMLP",
           "repeat_kv", "Attention", "Block", "LlamaForCausalLM", "LlamaOutput", "KVCache", "attention_mask_4d",
           "position_ids_from_mask", "check_state", "config_from_hf", "from_hf", "hf_config", "to_hf",
           "save_hf_pretrained", "kv_cache_bytes_per_token", "cache_nbytes"]
