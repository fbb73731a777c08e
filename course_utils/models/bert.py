"""A BERT encoder with masked-LM, sequence- and token-classification heads.

Post-LN by default, as the original BERT (and MiniLM, and transformers' ``BertModel``): each
sub-layer is ``LayerNorm(x + Sublayer(x))``; ``pre_ln=True`` gives ``x + Sublayer(LayerNorm(x))``
and a final LayerNorm. Positions: learned (``"absolute"``, as BERT) or ``"rope"`` (chapter 3's
rotary embedding of q and k: attention sees offsets), which the course's Chinese BERT uses with
pre-LN. Embeddings: token (+ position) + segment, then LayerNorm. ``attention_mask`` [B, T] (1 = real).

Heads hold the encoder as ``.bert`` (a head loads an MLM checkpoint's encoder): :class:`BertForMaskedLM`
(tied decoder), :class:`BertForSequenceClassification` ([CLS] or mean), :class:`BertForTokenClassification`
(linear, optional CRF); :func:`mask_tokens` makes MLM inputs (80/10/10). Defined in chapter 4.
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

from ..attention import apply_rope, fused_attention, padding_mask, rope_cos_sin
from .gpt import check_class_ids
from .io import load_checkpoint, save_checkpoint

IGNORE_INDEX = -100


@dataclass
class BertConfig:
    """Sizes of a BERT (defaults: a small model). Defined in chapter 4, The Transformer."""

    vocab_size: int = 8000
    max_position_embeddings: int = 128
    type_vocab_size: int = 2
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    intermediate_size: int | None = None   # None: 4 * n_embd
    dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    num_labels: int = 2                     # classification heads
    use_crf: bool = False                   # token classification: CRF on top of the linear head
    pre_ln: bool = False                    # LayerNorm before each sub-layer (+ a final one)
    pooling: str = "cls"                    # pooler input: "cls" ([CLS] vector, as BERT) or "mean" (real tokens)
    position_embedding_type: str = "absolute"  # "absolute" (learned, as BERT) or "rope" (rotary)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_position_embeddings", "type_vocab_size", "n_layer", "n_head", "n_embd", "num_labels"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"BertConfig.{name} must be a positive int, got {v!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {self.pooling!r}")
        if self.position_embedding_type not in ("absolute", "rope") or (self.position_embedding_type == "rope" and self.n_embd // self.n_head % 2):
            raise ValueError(f"position_embedding_type must be 'absolute' or 'rope' (rope needs an even head size), "
                             f"got {self.position_embedding_type!r} with head size {self.n_embd // self.n_head}")
        self.intermediate_size = 4 * self.n_embd if self.intermediate_size is None else self.intermediate_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BertConfig":
        return cls(**{k: v for k, v in d.items() if k in {f.name for f in fields(cls)}})


class BertSelfAttention(nn.Module):
    """Bidirectional multi-head attention with a key-padding mask; ``[B, T, C] -> [B, T, C]``."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.n_head, self.head_dim, self.p = cfg.n_head, cfg.n_embd // cfg.n_head, cfg.dropout
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.out = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.rope = cfg.position_embedding_type == "rope"
        for name, table in zip(("cos", "sin"), rope_cos_sin(cfg.max_position_embeddings, self.head_dim) if self.rope else ()):
            self.register_buffer(name, table, persistent=False)   # [max_positions, head_dim], not saved

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None, output_attentions: bool = False):
        """``key_mask`` [B, 1, 1, T] bool (True = may attend) -> (y [B, T, C], weights [B, H, T, T] or None)."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if self.rope:   # rotate q and k by their positions: scores then depend on offsets only
            q, k = apply_rope(q, self.cos[:T], self.sin[:T]), apply_rope(k, self.cos[:T], self.sin[:T])
        p = self.p if self.training else 0.0
        weights = None
        if output_attentions:
            att = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
            if key_mask is not None:
                att = att.masked_fill(~key_mask, float("-inf"))
            weights = att.softmax(dim=-1)
            y = F.dropout(weights, p) @ v if p > 0 else weights @ v
        else:
            y = fused_attention(q, k, v, attn_mask=key_mask, dropout_p=p)
        return self.out(y.transpose(1, 2).reshape(B, T, C)), weights


class BertLayer(nn.Module):
    """GELU (erf) FFN. Post-LN: x = LN(x + Attn(x)); x = LN(x + FFN(x)). Pre-LN: x + Attn(LN(x)) ..."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.pre_ln, self.attn = cfg.pre_ln, BertSelfAttention(cfg)
        self.ln_attn = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)
        self.ffn_in = nn.Linear(cfg.n_embd, cfg.intermediate_size)
        self.ffn_out = nn.Linear(cfg.intermediate_size, cfg.n_embd)
        self.ln_ffn = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None, output_attentions: bool = False):
        if self.pre_ln:
            a, w = self.attn(self.ln_attn(x), key_mask, output_attentions)
            x = x + self.drop(a)
            return x + self.drop(self.ffn_out(F.gelu(self.ffn_in(self.ln_ffn(x))))), w
        a, w = self.attn(x, key_mask, output_attentions)
        x = self.ln_attn(x + self.drop(a))
        x = self.ln_ffn(x + self.drop(self.ffn_out(F.gelu(self.ffn_in(x)))))
        return x, w


@dataclass
class BertOutput:
    """``last_hidden_state`` [B, T, C]; ``pooler_output`` [B, C] (tanh(W·h) of h_[CLS] or, with
    ``pooling="mean"``, of :func:`mean_pool`); ``attentions`` (one [B, H, T, T] per layer) when
    asked; heads fill ``loss`` and ``logits``."""

    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None


class _BertBase(nn.Module):
    """Shared init, checkpoint save/load (encoder weights live under ``bert.`` in heads)."""

    model_type = "course-bert"
    config: BertConfig

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (atomically); tied decoder weight left out."""
        state = {k: v for k, v in self.state_dict().items() if not k.endswith("decoder.weight")}
        cfg = {"model_type": "course-bert", "architecture": type(self).__name__, **self.config.to_dict()}
        return save_checkpoint(directory, cfg, state)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu",
                        verbose: bool = True, **config_overrides: Any):
        """Load any course-BERT checkpoint into this class.

        Encoder weights are matched whether they were saved by a head (``bert.`` prefix) or by
        :class:`BertModel`; a head missing from the checkpoint is freshly initialised. The
        missing / unexpected keys are kept in ``model.loading_info`` (and printed if ``verbose``).
        ``config_overrides`` change the config, e.g. ``num_labels=7, use_crf=True``.
        """
        cfg_dict, state = load_checkpoint(directory, "course-bert", map_location)
        model = cls(BertConfig.from_dict({**cfg_dict, **config_overrides}))
        wants_prefix, saved_by_encoder = not isinstance(model, BertModel), not any(k.startswith("bert.") for k in state)
        if wants_prefix == saved_by_encoder:   # add the prefix (head from encoder) or strip it (encoder from head)
            state = {("bert." + k if wants_prefix else k.removeprefix("bert.")): v for k, v in state.items()}
        own = model.state_dict()
        shape_bad = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
        fixed = {k: v for k, v in state.items() if k not in shape_bad}
        missing, unexpected = model.load_state_dict(fixed, strict=False)
        missing = [k for k in missing if not k.endswith("decoder.weight")]
        model.loading_info = {"missing_keys": missing + shape_bad, "unexpected_keys": list(unexpected)}
        if verbose and (missing or unexpected or shape_bad):
            print(f"{cls.__name__} from {directory}: newly initialised {missing + shape_bad}; "
                  f"unused from checkpoint {list(unexpected)}")
        return model


class BertModel(_BertBase):
    """Embeddings -> ``n_layer`` layers (-> LayerNorm if pre-LN) -> (pooler). Defined in chapter 4."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        if not isinstance(config, BertConfig):
            raise TypeError(f"BertModel expects a BertConfig, got {type(config).__name__}")
        self.config = c = config
        self.word_embeddings = nn.Embedding(c.vocab_size, c.n_embd, padding_idx=c.pad_token_id)
        rope = c.position_embedding_type == "rope"   # rope: positions enter in attention, no table here
        self.position_embeddings = None if rope else nn.Embedding(c.max_position_embeddings, c.n_embd)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.n_embd)
        self.ln_emb = nn.LayerNorm(c.n_embd, eps=c.layer_norm_eps)
        self.drop = nn.Dropout(c.dropout)
        self.layers = nn.ModuleList([BertLayer(c) for _ in range(c.n_layer)])
        self.ln_final = nn.LayerNorm(c.n_embd, eps=c.layer_norm_eps) if c.pre_ln else None
        self.pooler = nn.Linear(c.n_embd, c.n_embd)
        self.apply(self._init_weights)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, output_attentions: bool = False) -> BertOutput:
        """``input_ids`` [B, T] (int64), ``attention_mask`` [B, T] (1 real / 0 pad),
        ``token_type_ids`` [B, T] (segment 0/1) -> :class:`BertOutput`."""
        c = self.config
        if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.int64, torch.int32):
            raise TypeError("input_ids must be an integer tensor [B, T] of token ids")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape [B, T], got {tuple(input_ids.shape)}")
        B, T = input_ids.shape
        if T > c.max_position_embeddings:
            raise ValueError(f"sequence length {T} > max_position_embeddings={c.max_position_embeddings}; truncate the input")
        if input_ids.device.type == "cpu" and input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= c.vocab_size):
            raise ValueError(f"input_ids outside [0, {c.vocab_size})")
        for name, t in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if t is not None and not isinstance(t, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor [B, T] or None, got {type(t).__name__}")
            if t is not None and tuple(t.shape) != (B, T):
                raise ValueError(f"{name} must have the shape of input_ids {(B, T)}, got {tuple(t.shape)}")
        segments = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(segments)
        if self.position_embeddings is not None:
            x = x + self.position_embeddings(torch.arange(T, device=input_ids.device))
        x = self.drop(self.ln_emb(x))
        key_mask = None if attention_mask is None else padding_mask(attention_mask)   # [B, 1, 1, T], 0/1 checked
        attentions = []
        for layer in self.layers:
            x, w = layer(x, key_mask, output_attentions)
            attentions.append(w)
        x = self.ln_final(x) if self.ln_final is not None else x
        summary = (mean_pool(x, torch.ones_like(input_ids) if attention_mask is None else attention_mask)
                   if c.pooling == "mean" else x[:, 0])   # the real tokens' mean, or the [CLS] vector
        return BertOutput(last_hidden_state=x, pooler_output=torch.tanh(self.pooler(summary)),
                          attentions=tuple(attentions) if output_attentions else None)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of ``hidden`` [B, T, D] over positions where ``attention_mask`` [B, T] is 1 -> [B, D]."""
    if hidden.dim() != 3 or attention_mask.shape != hidden.shape[:2]:
        raise ValueError(f"expected hidden [B,T,D] and mask [B,T], got {tuple(hidden.shape)} and {tuple(attention_mask.shape)}")
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)                              # [B, T, 1]
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


class BertForMaskedLM(_BertBase):
    """Encoder + MLM head (dense, GELU, LayerNorm, decoder tied to the word embeddings).

    ``labels`` [B, T]: the original id at masked positions, -100 elsewhere (see :func:`mask_tokens`).
    Defined in chapter 4, The Transformer."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.transform = nn.Linear(config.n_embd, config.n_embd)
        self.ln_head = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.n_embd, config.vocab_size)
        self._init_weights(self.transform)
        nn.init.zeros_(self.decoder.bias)
        self.decoder.weight = self.bert.word_embeddings.weight   # weight tying

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None,
                output_attentions: bool = False, labelled_only: bool = False) -> BertOutput:
        """-> ``logits`` [B, T, V] and ``loss`` (cross-entropy on the labelled positions).

        ``labelled_only=True`` runs the head on the N positions where ``labels != -100`` only
        (``logits`` [N, V], row-major order): the same loss for a fraction of the head's cost.
        """
        if labels is not None:
            check_class_ids("labels", labels, self.config.vocab_size)
        out = self.bert(input_ids, attention_mask, token_type_ids, output_attentions)
        h = out.last_hidden_state
        if labelled_only:
            if labels is None or labels.shape != input_ids.shape:
                raise ValueError("labelled_only=True needs labels of input_ids' shape (-100 where nothing is predicted)")
            keep = labels != IGNORE_INDEX
            h, labels = h[keep], labels[keep]                     # [N, C], [N]
        logits = self.decoder(self.ln_head(F.gelu(self.transform(h))))
        if labels is not None:
            out.loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE_INDEX)
        out.logits = logits
        return out


class BertForSequenceClassification(_BertBase):
    """Encoder + dropout + linear layer on the pooled [CLS] vector: logits [B, num_labels].
    Defined in chapter 4, The Transformer."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.drop = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.n_embd, config.num_labels)
        self._init_weights(self.classifier)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None,
                output_attentions: bool = False) -> BertOutput:
        """``labels`` [B] (class ids) -> mean cross-entropy ``loss``; ``logits`` [B, num_labels]."""
        out = self.bert(input_ids, attention_mask, token_type_ids, output_attentions)
        out.logits = self.classifier(self.drop(out.pooler_output))
        if labels is not None:
            if not isinstance(labels, torch.Tensor) or labels.shape != out.logits.shape[:1]:
                raise ValueError(f"labels must be one class id per example, shape {tuple(out.logits.shape[:1])}, "
                                 f"got {getattr(labels, 'shape', type(labels).__name__)} (not the input_ids!)")
            check_class_ids("labels", labels, self.config.num_labels)
            out.loss = F.cross_entropy(out.logits, labels)
        return out


class BertForTokenClassification(_BertBase):
    """Encoder + linear layer per token (emissions [B, T, num_labels]); with ``use_crf`` a CRF
    (``torchcrf.CRF``) scores whole tag sequences: loss = -log-likelihood, :meth:`decode` = Viterbi.

    Positions labelled -100 (special tokens, padding) are left out of the loss and of decoding.
    Defined in chapter 4, The Transformer.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.drop = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.n_embd, config.num_labels)
        self._init_weights(self.classifier)
        self.crf = None
        if config.use_crf:
            from torchcrf import CRF
            self.crf = CRF(config.num_labels, batch_first=True)

    @staticmethod
    def _compact(emissions: torch.Tensor, keep: torch.Tensor):
        """Move the kept positions of each row to the front: ([B, T, K], [B, T] bool, order [B, T])."""
        if not bool(keep.any(dim=1).all()):
            raise ValueError("every sequence needs at least one labelled position for the CRF")
        order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
        em = emissions.gather(1, order[..., None].expand_as(emissions))
        return em, keep.gather(1, order), order

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None,
                output_attentions: bool = False) -> BertOutput:
        """``labels`` [B, T] (tag ids, -100 = ignore) -> ``loss``; ``logits`` [B, T, num_labels]."""
        out = self.bert(input_ids, attention_mask, token_type_ids, output_attentions)
        out.logits = self.classifier(self.drop(out.last_hidden_state))
        if labels is not None:
            check_class_ids("labels", labels, self.config.num_labels)
            if labels.shape != input_ids.shape:
                raise ValueError(f"labels must have the shape of input_ids {tuple(input_ids.shape)}, got {tuple(labels.shape)}")
            if self.crf is None:
                out.loss = F.cross_entropy(out.logits.reshape(-1, out.logits.size(-1)), labels.reshape(-1),
                                           ignore_index=IGNORE_INDEX)
            else:
                keep = labels != IGNORE_INDEX
                em, mask, order = self._compact(out.logits, keep)
                tags = labels.clamp(min=0).gather(1, order)
                out.loss = -self.crf(em, tags, mask=mask, reduction="mean")
        return out

    @torch.no_grad()
    def decode(self, input_ids, attention_mask=None, token_type_ids=None,
               label_mask: torch.Tensor | None = None) -> list[list[int]]:
        """Best tag sequence per example over the positions where ``label_mask`` [B, T] is true
        (default: ``attention_mask``, else all) -> list of B lists of tag ids."""
        logits = self(input_ids, attention_mask, token_type_ids).logits
        if label_mask is None:
            label_mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        keep = label_mask.bool()
        if self.crf is None:
            best = logits.argmax(-1)
            return [best[i][keep[i]].tolist() for i in range(best.size(0))]
        em, mask, _ = self._compact(logits, keep)
        return self.crf.decode(em, mask=mask)


def mask_tokens(input_ids: torch.Tensor, mask_token_id: int, vocab_size: int, special_ids=(),
                mlm_prob: float = 0.15, generator: torch.Generator | None = None):
    """BERT's masking: pick ``mlm_prob`` of the non-special tokens; of those 80 % become
    ``mask_token_id``, 10 % a random token, 10 % stay. ``input_ids`` [B, T] ->
    ``(inputs [B, T], labels [B, T])`` with labels = original id at picked positions, -100 elsewhere.
    Defined in chapter 4, The Transformer."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.int64, torch.int32):
        raise TypeError("input_ids must be an integer tensor of token ids")
    if not 0.0 < mlm_prob < 1.0:
        raise ValueError(f"mlm_prob must be in (0, 1), got {mlm_prob}")
    if not 0 <= mask_token_id < vocab_size:
        raise ValueError(f"mask_token_id {mask_token_id} outside [0, {vocab_size})")
    dev = input_ids.device
    rand = lambda: torch.rand(input_ids.shape, generator=generator, device=dev)  # noqa: E731
    special = torch.isin(input_ids, torch.tensor(list(special_ids), dtype=input_ids.dtype, device=dev))
    picked = (rand() < mlm_prob) & ~special
    labels = torch.where(picked, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    inputs, r = input_ids.clone(), rand()
    inputs[picked & (r < 0.8)] = mask_token_id
    random_pos = picked & (r >= 0.8) & (r < 0.9)
    inputs[random_pos] = torch.randint(vocab_size, input_ids.shape, generator=generator, device=dev,
                                       dtype=input_ids.dtype)[random_pos]
    return inputs, labels


__all__ = ["BertConfig", "BertModel", "mean_pool", "BertOutput", "BertForMaskedLM", "BertForSequenceClassification",
           "BertForTokenClassification", "mask_tokens"]
