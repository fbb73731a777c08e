"""A small encoder-decoder Transformer ("Attention Is All You Need", pre-LN variant).

The encoder reads the source with bidirectional self-attention; each decoder layer has causal
self-attention over the target so far, then cross-attention whose queries come from the
decoder and keys/values from the encoder output, then an FFN. Positions are sinusoidal (the
original paper's choice), and layers are pre-LN (``x + Sublayer(LN(x))``), which trains more
stably at small scale than the paper's post-LN. The cross-attention weights [B, H, T, S] show
which source tokens each target token looks at.

Defined in chapter 4, The Transformer.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..attention import fused_attention, padding_mask
from .gpt import check_class_ids
from .io import load_checkpoint, save_checkpoint

IGNORE_INDEX = -100


@dataclass
class Seq2SeqConfig:
    """Sizes of the encoder-decoder. Defined in chapter 4, The Transformer."""

    src_vocab_size: int = 64
    tgt_vocab_size: int = 64
    max_len: int = 64
    n_layer: int = 2          # encoder layers = decoder layers
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("src_vocab_size", "tgt_vocab_size", "max_len", "n_layer", "n_head", "n_embd"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"Seq2SeqConfig.{name} must be a positive int, got {v!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


def sinusoidal_positions(max_len: int, dim: int) -> torch.Tensor:
    """PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(...) -> [max_len, dim]."""
    pos = torch.arange(max_len, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(max_len, dim)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return pe


class MultiHeadAttention(nn.Module):
    """Attention from ``x`` [B, T, C] (queries) to ``mem`` [B, S, C] (keys/values; ``mem = x`` for
    self-attention). ``mask`` broadcastable to [B, H, T, S], True = may attend."""

    def __init__(self, cfg: Seq2SeqConfig) -> None:
        super().__init__()
        self.h, self.d, self.p = cfg.n_head, cfg.n_embd // cfg.n_head, cfg.dropout
        self.q = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.kv = nn.Linear(cfg.n_embd, 2 * cfg.n_embd)
        self.out = nn.Linear(cfg.n_embd, cfg.n_embd)

    def forward(self, x, mem, mask=None, need_weights: bool = False):
        B, T, C = x.shape
        S = mem.size(1)
        q = self.q(x).view(B, T, self.h, self.d).transpose(1, 2)
        k, v = self.kv(mem).view(B, S, 2, self.h, self.d).permute(2, 0, 3, 1, 4).unbind(0)
        p = self.p if self.training else 0.0
        w = None
        if need_weights:
            att = (q @ k.transpose(-2, -1)) / math.sqrt(self.d)
            if mask is not None:
                att = att.masked_fill(~mask, float("-inf"))
            w = att.softmax(-1)
            y = (F.dropout(w, p) if p > 0 else w) @ v
        else:
            y = fused_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return self.out(y.transpose(1, 2).reshape(B, T, C)), w


class FeedForward(nn.Sequential):
    def __init__(self, cfg: Seq2SeqConfig) -> None:
        super().__init__(nn.Linear(cfg.n_embd, 4 * cfg.n_embd), nn.GELU(),
                         nn.Linear(4 * cfg.n_embd, cfg.n_embd), nn.Dropout(cfg.dropout))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: Seq2SeqConfig) -> None:
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(cfg.n_embd), MultiHeadAttention(cfg)
        self.ln2, self.ffn = nn.LayerNorm(cfg.n_embd), FeedForward(cfg)

    def forward(self, x, src_mask):
        h = self.ln1(x)
        x = x + self.attn(h, h, src_mask)[0]
        return x + self.ffn(self.ln2(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: Seq2SeqConfig) -> None:
        super().__init__()
        self.ln1, self.self_attn = nn.LayerNorm(cfg.n_embd), MultiHeadAttention(cfg)
        self.ln2, self.cross_attn = nn.LayerNorm(cfg.n_embd), MultiHeadAttention(cfg)
        self.ln3, self.ffn = nn.LayerNorm(cfg.n_embd), FeedForward(cfg)

    def forward(self, y, mem, self_mask, cross_mask, need_weights: bool = False):
        h = self.ln1(y)
        y = y + self.self_attn(h, h, self_mask)[0]
        a, w = self.cross_attn(self.ln2(y), mem, cross_mask, need_weights)
        y = y + a
        return y + self.ffn(self.ln3(y)), w


@dataclass
class Seq2SeqOutput:
    """``logits`` [B, T, V_tgt]; ``loss`` when labels are given; ``cross_attentions`` (one
    [B, H, T, S] per decoder layer) when asked."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None


class Seq2SeqTransformer(nn.Module):
    """Encoder-decoder Transformer with tied target embedding / output layer.
    Defined in chapter 4, The Transformer."""

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        if not isinstance(config, Seq2SeqConfig):
            raise TypeError(f"Seq2SeqTransformer expects a Seq2SeqConfig, got {type(config).__name__}")
        self.config = c = config
        self.src_emb = nn.Embedding(c.src_vocab_size, c.n_embd)
        self.tgt_emb = nn.Embedding(c.tgt_vocab_size, c.n_embd)
        self.register_buffer("pos", sinusoidal_positions(c.max_len, c.n_embd), persistent=False)
        self.encoder = nn.ModuleList([EncoderLayer(c) for _ in range(c.n_layer)])
        self.decoder = nn.ModuleList([DecoderLayer(c) for _ in range(c.n_layer)])
        self.ln_enc, self.ln_dec = nn.LayerNorm(c.n_embd), nn.LayerNorm(c.n_embd)
        self.lm_head = nn.Linear(c.n_embd, c.tgt_vocab_size, bias=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        self.lm_head.weight = self.tgt_emb.weight

    def _check(self, name: str, ids: torch.Tensor, vocab: int) -> None:
        if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.int64, torch.int32) or ids.dim() != 2:
            raise TypeError(f"{name} must be an integer tensor [B, L] of token ids")
        if ids.size(1) > self.config.max_len:
            raise ValueError(f"{name} has length {ids.size(1)} > max_len={self.config.max_len}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
            raise ValueError(f"{name} has ids outside [0, {vocab})")

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``src`` [B, S] (+ ``src_mask`` [B, S], 1 real / 0 pad) -> memory [B, S, C]."""
        self._check("src", src, self.config.src_vocab_size)
        x = self.src_emb(src) * math.sqrt(self.config.n_embd) + self.pos[: src.size(1)]
        m = None if src_mask is None else padding_mask(src_mask)            # [B, 1, 1, S], 0/1 checked
        for layer in self.encoder:
            x = layer(x, m)
        return self.ln_enc(x)

    def decode(self, tgt_in: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor | None = None,
               output_attentions: bool = False) -> Seq2SeqOutput:
        """``tgt_in`` [B, T] (shifted right, starting with BOS) over ``memory`` [B, S, C] -> logits [B, T, V]."""
        self._check("tgt_in", tgt_in, self.config.tgt_vocab_size)
        T = tgt_in.size(1)
        y = self.tgt_emb(tgt_in) * math.sqrt(self.config.n_embd) + self.pos[:T]
        causal = torch.ones(T, T, dtype=torch.bool, device=tgt_in.device).tril()
        cross = None if src_mask is None else padding_mask(src_mask)
        weights = []
        for layer in self.decoder:
            y, w = layer(y, memory, causal, cross, output_attentions)
            weights.append(w)
        logits = self.lm_head(self.ln_dec(y))
        return Seq2SeqOutput(logits=logits, cross_attentions=tuple(weights) if output_attentions else None)

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor, src_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, output_attentions: bool = False) -> Seq2SeqOutput:
        """``src`` [B, S], ``tgt_in`` [B, T], ``labels`` [B, T] (-100 = ignore) -> :class:`Seq2SeqOutput`."""
        if src_mask is not None and src_mask.shape != src.shape:
            raise ValueError(f"src_mask must have the shape of src {tuple(src.shape)}, got {tuple(src_mask.shape)}")
        out = self.decode(tgt_in, self.encode(src, src_mask), src_mask, output_attentions)
        if labels is not None:
            check_class_ids("labels", labels, self.config.tgt_vocab_size)
            if labels.shape != tgt_in.shape:
                raise ValueError(f"labels must have the shape of tgt_in {tuple(tgt_in.shape)}, got {tuple(labels.shape)}")
            out.loss = F.cross_entropy(out.logits.reshape(-1, out.logits.size(-1)), labels.reshape(-1),
                                       ignore_index=IGNORE_INDEX)
        return out

    @torch.no_grad()
    def greedy_decode(self, src: torch.Tensor, bos_id: int, eos_id: int | None = None, max_len: int | None = None,
                      src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Argmax decoding, one token at a time -> [B, L] starting with ``bos_id`` (stops when all
        rows produced ``eos_id``; later positions of finished rows are ``eos_id``)."""
        max_len = self.config.max_len if max_len is None else min(max_len, self.config.max_len)
        was_training = self.training
        self.eval()
        memory = self.encode(src, src_mask)
        out = torch.full((src.size(0), 1), bos_id, dtype=torch.long, device=src.device)
        done = torch.zeros(src.size(0), dtype=torch.bool, device=src.device)
        for _ in range(max_len - 1):
            nxt = self.decode(out, memory, src_mask).logits[:, -1].argmax(-1)
            if eos_id is not None:
                nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
                done |= nxt == eos_id
            out = torch.cat([out, nxt[:, None]], dim=1)
            if eos_id is not None and bool(done.all()):
                break
        self.train(was_training)
        return out

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (atomically)."""
        state = {k: v for k, v in self.state_dict().items() if k != "lm_head.weight"}
        return save_checkpoint(directory, {"model_type": "course-seq2seq", **asdict(self.config)}, state)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> "Seq2SeqTransformer":
        cfg, state = load_checkpoint(directory, "course-seq2seq", map_location)
        known = {f.name for f in fields(Seq2SeqConfig)}
        model = cls(Seq2SeqConfig(**{k: v for k, v in cfg.items() if k in known}))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if [k for k in missing if k != "lm_head.weight"] or unexpected:
            raise ValueError(f"checkpoint {directory} does not match: missing {missing}, unexpected {unexpected}")
        return model


__all__ = ["Seq2SeqConfig", "Seq2SeqTransformer", "Seq2SeqOutput", "sinusoidal_positions", "MultiHeadAttention"]
