"""Attention from scratch: scaled dot-product attention, masks, multi-head attention, positions.

Everything here is written out in notebook 3 first; this module holds the tested copy that later
chapters import (``tests/test_agree_ch03.py`` checks that the two agree).

Conventions (the same as :func:`torch.nn.functional.scaled_dot_product_attention`):

* a **boolean** mask is ``True`` where a query *may* attend to a key;
* an **integer** mask (``int64``, ``uint8``, ...) holding only ``0`` and ``1`` is read the same way
  as a boolean one (``1`` = may attend), so a tokenizer's 0/1 mask masks rather than being added
  to the scores; any other integer value is a ``ValueError``;
* a **float** mask is *added* to the scores (``0`` keep, ``-inf`` block, anything else a bias);
  it must not hold NaN;
* ``attention_mask`` arguments use the Hugging Face convention: ``[B, T]`` with ``1`` for real
  tokens and ``0`` for padding (bool, integer or float, values 0 and 1 only).

Defined in chapter 3, Attention math.
"""
from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "scaled_dot_product_attention", "fused_attention", "as_attention_mask", "causal_mask", "padding_mask", "combine_masks",
    "attention_entropy", "MultiHeadAttention", "split_heads", "merge_heads",
    "sinusoidal_positions", "SinusoidalPositionalEncoding", "LearnedPositionalEmbedding",
    "rope_cos_sin", "rotate_half", "apply_rope",
]


def fused_attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None, dropout_p: float = 0.0,
                    is_causal: bool = False) -> Tensor:
    """PyTorch's fused :func:`torch.nn.functional.scaled_dot_product_attention`, the fast path
    of the course's models: ``q`` [B, H, T, hd], ``k``/``v`` [B, H, S, hd] -> [B, H, T, hd].

    One exception: bf16 or fp16 inputs on a CPU (training under ``torch.autocast``) are attended
    in fp32 and the output cast back. The CPU's fused kernel runs its bf16 *backward* pass 2-4×
    slower than its fp32 one (torch 2.13, measured at T = 64-128: at B 12, 4 heads of 32, T 64,
    forward + backward took 5.1 ms in bf16 against 2.7 ms upcast), which cost a width-128 course
    GPT all of bf16's gain; softmax in fp32 is also the more accurate one. GPUs keep bf16.
    """
    if q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16):
        dtype = q.dtype
        with torch.autocast("cpu", enabled=False):  # autocast would cast the inputs straight back
            y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=attn_mask,
                                               dropout_p=dropout_p, is_causal=is_causal)
        return y.to(dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal)


def _require_int(name: str, n: object, low: int = 1) -> int:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < low:
        raise ValueError(f"{name} must be an int >= {low}, got {n!r}")
    return int(n)


def _require_positive(name: str, x: object) -> float:
    if isinstance(x, bool) or not isinstance(x, numbers.Real) or not 0 < x < math.inf:
        raise ValueError(f"{name} must be a finite number > 0, got {x!r}")
    return float(x)


def _require_tensor(name: str, x: object, min_dim: int) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dims [..., T, d], got shape {tuple(x.shape)}")
    return x


def as_attention_mask(mask: Tensor, name: str = "mask") -> Tensor:
    """Check a mask's dtype and values; return a bool mask (True = may attend) or a float (additive) one.

    * bool: returned as is;
    * integer: must hold only 0 and 1 (``1`` = may attend); returned as bool;
    * float: an additive mask (``0`` keep, ``-inf`` block); NaN is refused.

    Anything else (complex, a list, ...) is a ``TypeError``; an integer mask with other values,
    or a float mask with NaN, a ``ValueError`` that names ``name``.

    Defined in chapter 3, Attention math.
    """
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (bool, 0/1 integer or additive float), "
                        f"got {type(mask).__name__}")
    if mask.dtype == torch.bool:
        return mask
    if mask.dtype.is_floating_point:
        if mask.numel() and bool(torch.isnan(mask).any()):
            raise ValueError(f"{name} is an additive float mask and must not contain NaN "
                             "(use 0 to keep a key and -inf to block it)")
        return mask
    if mask.dtype.is_complex:
        raise TypeError(f"{name} must be bool, a 0/1 integer tensor or an additive float tensor, got {mask.dtype}")
    if mask.numel() and bool(((mask != 0) & (mask != 1)).any()):
        bad = sorted({int(x) for x in mask[(mask != 0) & (mask != 1)].unique()[:5]})
        raise ValueError(f"integer {name} must hold only 0 and 1 (1 = may attend, 0 = blocked), "
                         f"got values such as {bad}; pass a float tensor for an additive mask")
    return mask.bool()


# --------------------------------------------------------------------------- core attention
def scaled_dot_product_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, *, is_causal: bool = False,
    scale: float | None = None, dropout_p: float = 0.0, training: bool = False,
) -> tuple[Tensor, Tensor]:
    """``softmax(q kᵀ · scale + mask) v``, returning the output *and* the attention weights.

    Args:
        q: queries ``[..., T_q, d_k]``.
        k: keys ``[..., T_k, d_k]``.
        v: values ``[..., T_k, d_v]``.
        mask: broadcastable to ``[..., T_q, T_k]``; bool or 0/1 integer (``True``/``1`` = may
            attend) or float (added to the scores); see :func:`as_attention_mask`.
        is_causal: also apply :func:`causal_mask` (query ``i`` sees keys ``0..i``).
        scale: multiplier of the scores; default ``1/sqrt(d_k)``.
        dropout_p: dropout on the weights, applied only when ``training`` is true.

    Returns:
        ``(out [..., T_q, d_v], weights [..., T_q, T_k])``; each row of ``weights`` sums to 1.
        A query whose every key is masked gets NaN, as in PyTorch.

    Defined in chapter 3, Attention math.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        _require_tensor(name, t, 2)
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must share d_k, got q {tuple(q.shape)} and k {tuple(k.shape)}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k and v must have the same T_k, got k {tuple(k.shape)} and v {tuple(v.shape)}")
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, numbers.Real) or not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be a number in [0, 1), got {dropout_p!r}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else _require_positive("scale", scale)
    scores = (q @ k.transpose(-2, -1)) * scale                      # [..., T_q, T_k]
    if is_causal:
        causal = causal_mask(q.shape[-2], k.shape[-2], device=q.device)
        scores = scores.masked_fill(~causal, float("-inf"))
    if mask is not None:
        mask = as_attention_mask(mask, "mask")
        try:
            torch.broadcast_shapes(mask.shape, scores.shape)
        except RuntimeError as err:
            raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to scores "
                             f"{tuple(scores.shape)} ([..., T_q, T_k])") from err
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.to(scores.dtype)
    weights = torch.softmax(scores, dim=-1)
    if training and dropout_p > 0:
        weights = F.dropout(weights, p=dropout_p)
    return weights @ v, weights


def causal_mask(t_q: int, t_k: int | None = None, *, offset: int = 0,
                device: torch.device | str | None = None) -> Tensor:
    """Boolean ``[t_q, t_k]`` mask, ``True`` where query ``i`` may see key ``j`` (``j <= i + offset``).

    ``offset=0`` is PyTorch's ``is_causal`` (top-left aligned); with a KV cache of ``P`` past
    tokens use ``offset=P`` so the last query sees every key.

    Defined in chapter 3, Attention math.
    """
    t_k = t_q if t_k is None else t_k
    for name, n in (("t_q", t_q), ("t_k", t_k)):
        if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
            raise ValueError(f"{name} must be a positive int, got {n!r}")
    if isinstance(offset, bool) or not isinstance(offset, numbers.Integral):
        raise ValueError(f"offset must be an int (past tokens in a KV cache), got {offset!r}")
    return torch.ones(t_q, t_k, dtype=torch.bool, device=device).tril(diagonal=offset)


def padding_mask(attention_mask: Tensor) -> Tensor:
    """``[B, T]`` 1/0 attention mask (1 = real token) -> boolean key mask ``[B, 1, 1, T]``.

    The result broadcasts against scores ``[B, n_head, T_q, T]``: no query attends to padding.
    ``attention_mask`` may be bool, integer or float, but must hold only 0 and 1 (an additive
    ``0/-inf`` mask here is a ``ValueError``, since reading it as 0/1 would invert it).

    Defined in chapter 3, Attention math.
    """
    _require_tensor("attention_mask", attention_mask, 2)
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must be [B, T], got shape {tuple(attention_mask.shape)}")
    if attention_mask.dtype != torch.bool and attention_mask.numel() and bool(
            ((attention_mask != 0) & (attention_mask != 1)).any()):
        raise ValueError("attention_mask must hold only 0 (padding) and 1 (real token); got other values "
                         "(an additive 0/-inf mask belongs in attn_mask, not attention_mask)")
    return attention_mask.bool()[:, None, None, :]


def combine_masks(*masks: Tensor | None) -> Tensor | None:
    """Logical AND of boolean masks (``None`` entries ignored); ``None`` when none is given.

    Defined in chapter 3, Attention math.
    """
    out: Tensor | None = None
    for m in masks:
        if m is None:
            continue
        if not isinstance(m, Tensor) or m.dtype != torch.bool:
            raise TypeError("combine_masks takes boolean tensors (True = may attend) or None")
        out = m if out is None else out & m
    return out


def attention_entropy(weights: Tensor) -> Tensor:
    """Entropy in nats of each attention distribution ``[..., T_k] -> [...]`` (0·log 0 = 0).

    ``log(T_k)`` means uniform attention; ``0`` means all weight on one key.

    Defined in chapter 3, Attention math.
    """
    _require_tensor("weights", weights, 1)
    p = weights.clamp_min(0)
    return -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(-1)


# --------------------------------------------------------------------------- multi-head attention
def split_heads(x: Tensor, n_head: int) -> Tensor:
    """``[B, T, n_head * d_head] -> [B, n_head, T, d_head]``. Defined in chapter 3, Attention math."""
    _require_tensor("x", x, 3)
    _require_int("n_head", n_head)
    b, t, d = x.shape
    if d % n_head:
        raise ValueError(f"last dim {d} is not divisible by n_head={n_head}")
    return x.view(b, t, n_head, d // n_head).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """``[B, n_head, T, d_head] -> [B, T, n_head * d_head]`` (the Concat of the heads).

    Defined in chapter 3, Attention math.
    """
    _require_tensor("x", x, 4)
    b, h, t, dh = x.shape
    return x.transpose(1, 2).reshape(b, t, h * dh)


class MultiHeadAttention(nn.Module):
    """``MultiHead(Q, K, V) = Concat(head_1, ..., head_h) Wᴼ`` with ``head_i = Attn(Q W_iᑫ, K W_iᴷ, V W_iⱽ)``.

    The ``n_head`` projections of size ``d_head = d_model / n_head`` are stored side by side in one
    ``[d_model, d_model]`` matrix each for Q, K and V, which is the same computation as ``n_head``
    separate small matrices.

    Defined in chapter 3, Attention math.
    """

    def __init__(self, d_model: int, n_head: int, *, bias: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model <= 0 or n_head <= 0 or d_model % n_head:
            raise ValueError(f"d_model ({d_model}) must be a positive multiple of n_head ({n_head})")
        self.d_model, self.n_head, self.d_head, self.dropout = d_model, n_head, d_model // n_head, dropout
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, query: Tensor, key: Tensor | None = None, value: Tensor | None = None, *,
                attn_mask: Tensor | None = None, attention_mask: Tensor | None = None,
                is_causal: bool = False) -> tuple[Tensor, Tensor]:
        """Self-attention when ``key``/``value`` are omitted, cross-attention otherwise.

        Args:
            query: ``[B, T, d_model]``; key, value: ``[B, S, d_model]`` (default: ``query``).
            attn_mask: mask broadcastable to ``[B, n_head, T, S]``: bool or 0/1 integer
                (True/1 = may attend) or float (added to the scores); see :func:`as_attention_mask`.
            attention_mask: ``[B, S]`` with 1 for real keys, 0 for padding.
            is_causal: query ``i`` sees keys ``0..i``.

        Returns:
            ``(out [B, T, d_model], weights [B, n_head, T, S])``.
        """
        _require_tensor("query", query, 3)
        key = query if key is None else key
        value = key if value is None else value
        if query.dim() != 3 or query.shape[-1] != self.d_model:
            raise ValueError(f"query must be [B, T, {self.d_model}], got {tuple(query.shape)}")
        if key.shape[-1] != self.d_model or value.shape[:-1] != key.shape[:-1]:
            raise ValueError(f"key/value must be [B, S, {self.d_model}], got {tuple(key.shape)} / {tuple(value.shape)}")
        mask = None if attn_mask is None else as_attention_mask(attn_mask, "attn_mask")
        if attention_mask is not None:
            if not isinstance(attention_mask, Tensor):
                raise TypeError(f"attention_mask must be a torch.Tensor [B, S] of 0/1, got {type(attention_mask).__name__}")
            if attention_mask.shape != key.shape[:2]:
                raise ValueError(f"attention_mask must be [B, S]={tuple(key.shape[:2])}, got {tuple(attention_mask.shape)}")
            pad = padding_mask(attention_mask)
            if mask is None:
                mask = pad
            elif mask.dtype == torch.bool:
                mask = mask & pad
            else:
                mask = mask.masked_fill(~pad, float("-inf"))
        q = split_heads(self.q_proj(query), self.n_head)                 # [B, H, T, d_head]
        k = split_heads(self.k_proj(key), self.n_head)                   # [B, H, S, d_head]
        v = split_heads(self.v_proj(value), self.n_head)
        out, weights = scaled_dot_product_attention(q, k, v, mask, is_causal=is_causal,
                                                    dropout_p=self.dropout, training=self.training)
        return self.out_proj(merge_heads(out)), weights

    @classmethod
    def from_torch(cls, mha: nn.MultiheadAttention) -> "MultiHeadAttention":
        """Copy the weights of a ``torch.nn.MultiheadAttention`` (same ``embed_dim`` for Q, K, V)."""
        if not isinstance(mha, nn.MultiheadAttention):
            raise TypeError(f"expected torch.nn.MultiheadAttention, got {type(mha).__name__}")
        if not mha._qkv_same_embed_dim or mha.bias_k is not None:
            raise ValueError("only MultiheadAttention with kdim == vdim == embed_dim and no add_bias_kv is supported")
        bias = mha.in_proj_bias is not None
        ours = cls(mha.embed_dim, mha.num_heads, bias=bias, dropout=mha.dropout)
        wq, wk, wv = mha.in_proj_weight.detach().chunk(3, dim=0)
        with torch.no_grad():
            for lin, w in ((ours.q_proj, wq), (ours.k_proj, wk), (ours.v_proj, wv)):
                lin.weight.copy_(w)
            ours.out_proj.weight.copy_(mha.out_proj.weight)
            if bias:
                for lin, b in zip((ours.q_proj, ours.k_proj, ours.v_proj), mha.in_proj_bias.detach().chunk(3)):
                    lin.bias.copy_(b)
                ours.out_proj.bias.copy_(mha.out_proj.bias)
        return ours.to(mha.in_proj_weight.device, mha.in_proj_weight.dtype)


# --------------------------------------------------------------------------- positions
def sinusoidal_positions(n_positions: int, d_model: int, base: float = 10000.0) -> Tensor:
    """The Transformer's fixed encodings ``[n_positions, d_model]``.

    ``PE[p, 2i] = sin(p / base^(2i/d))`` and ``PE[p, 2i+1] = cos(p / base^(2i/d))``.

    Defined in chapter 3, Attention math.
    """
    _require_int("n_positions", n_positions)
    if _require_int("d_model", d_model) % 2:
        raise ValueError(f"need an even d_model (sin/cos pairs), got d_model={d_model}")
    _require_positive("base", base)
    pos = torch.arange(n_positions, dtype=torch.float32)[:, None]                 # [T, 1]
    inv_freq = base ** (-torch.arange(0, d_model, 2, dtype=torch.float32) / d_model)  # [d/2]
    pe = torch.zeros(n_positions, d_model)
    pe[:, 0::2] = torch.sin(pos * inv_freq)
    pe[:, 1::2] = torch.cos(pos * inv_freq)
    return pe


class SinusoidalPositionalEncoding(nn.Module):
    """Adds :func:`sinusoidal_positions` to token embeddings ``[B, T, d_model]`` (no parameters).

    Defined in chapter 3, Attention math.
    """

    def __init__(self, d_model: int, max_positions: int = 2048, base: float = 10000.0) -> None:
        super().__init__()
        self.register_buffer("pe", sinusoidal_positions(max_positions, d_model, base), persistent=False)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        """``x [B, T, d_model] -> x + PE[offset : offset + T]``."""
        return x + _position_rows(self.pe, x, offset)


class LearnedPositionalEmbedding(nn.Module):
    """GPT-2/BERT style: one trained vector per position, added to the token embeddings.

    Cannot go past ``max_positions``. Defined in chapter 3, Attention math.
    """

    def __init__(self, max_positions: int, d_model: int) -> None:
        super().__init__()
        self.wpe = nn.Embedding(max_positions, d_model)
        nn.init.normal_(self.wpe.weight, std=0.02)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        """``x [B, T, d_model] -> x + wpe[offset : offset + T]``."""
        return x + _position_rows(self.wpe.weight, x, offset)


def _position_rows(table: Tensor, x: Tensor, offset: int) -> Tensor:
    _require_tensor("x", x, 3)
    t = x.shape[-2]
    if x.shape[-1] != table.shape[1]:
        raise ValueError(f"x must end in d_model={table.shape[1]}, got {tuple(x.shape)}")
    if offset < 0 or offset + t > table.shape[0]:
        raise ValueError(f"positions {offset}..{offset + t - 1} exceed max_positions={table.shape[0]}")
    return table[offset:offset + t].to(x.dtype)


def rope_cos_sin(n_positions: int, head_dim: int, base: float = 10000.0, *,
                 positions: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Rotary embedding tables ``cos, sin`` of shape ``[T, head_dim]`` (Llama / Hugging Face layout).

    Frequency ``θ_i = base^(-2i/head_dim)`` for ``i < head_dim/2``, repeated for both halves, so
    dimension ``i`` is rotated together with dimension ``i + head_dim/2``. ``positions`` (``[T]``)
    overrides ``arange(n_positions)``.

    Defined in chapter 3, Attention math.
    """
    if _require_int("head_dim", head_dim) % 2:
        raise ValueError(f"head_dim must be a positive even number, got {head_dim}")
    _require_positive("base", base)
    if positions is None:
        _require_int("n_positions", n_positions)
        positions = torch.arange(n_positions)
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = positions.float()[:, None] * inv_freq[None, :]                      # [T, head_dim/2]
    emb = torch.cat([angles, angles], dim=-1)                                    # [T, head_dim]
    return emb.cos(), emb.sin()


def rotate_half(x: Tensor) -> Tensor:
    """``[x1, x2] -> [-x2, x1]`` on the last dim (a 90° turn of each ``(x_i, x_{i+d/2})`` pair).

    Defined in chapter 3, Attention math.
    """
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate queries or keys ``[..., T, head_dim]`` by their positions' angles.

    After rotation ``<R_m q, R_n k>`` depends on the positions only through ``m - n``.

    Defined in chapter 3, Attention math.
    """
    _require_tensor("x", x, 2)
    if cos.shape != sin.shape or cos.shape[-1] != x.shape[-1] or cos.shape[-2] != x.shape[-2]:
        raise ValueError(f"cos/sin must be [T, head_dim]={tuple(x.shape[-2:])}, got {tuple(cos.shape)}")
    return x * cos.to(x.dtype) + rotate_half(x) * sin.to(x.dtype)
