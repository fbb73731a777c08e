"""Mixture of experts: a feed-forward layer where each token uses only a few of many MLPs.

Reads top to bottom:

* :class:`SwiGLU` (from ``models/llama.py``) -- the gated feed-forward network of Llama-family
  models, ``down(silu(gate(x)) * up(x))``, no biases; every expert is one;
* :func:`route_top_k` -- the router's arithmetic: softmax over experts, keep the ``top_k``
  largest, renormalise the kept weights to sum to 1 (as Mixtral);
* :func:`load_balancing_loss` -- the auxiliary loss ``n_experts · Σ_i f_i · P_i`` (Switch
  Transformer, eq. 4--6; Mixtral) that pushes the router towards equal use of the experts;
* :func:`expert_capacity` / :func:`capacity_keep_mask` -- optional capacity: each expert takes at
  most ``ceil(capacity_factor · N · top_k / n_experts)`` assignments of a batch, the rest are
  dropped (the token then skips that expert; the residual connection carries it);
* :class:`MoEFeedForward` -- the drop-in layer: ``[B, T, C] -> [B, T, C]``; it keeps the last
  forward's auxiliary loss and statistics (:class:`RoutingStats`);
* :class:`MoELanguageModel` -- the course GPT (``models/gpt.py``) with every block's MLP swapped
  for a dense :class:`SwiGLU` or an :class:`MoEFeedForward`, for the chapter's experiment:
  a dense and an MoE model at equal *active* parameters on the same training budget;
  :func:`train_lm` trains one with the course :class:`~course_utils.train.Trainer` and records
  every step's expert utilisation.

An expert is ``models/llama.py``'s :class:`SwiGLU`, the same module the Llama block uses.
Defined in chapter 11, The modern decoder.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from .models.gpt import GPT, IGNORE_INDEX, GPTConfig
from .models.llama import SwiGLU

if TYPE_CHECKING:
    from .train import TrainConfig


def _positive_int(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


# ------------------------------------------------------------------------------ the router
def route_top_k(router_logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k routing of ``router_logits`` [N, E] -> ``(probs [N, E], weights [N, k], experts [N, k])``.

    ``probs`` is the softmax over all experts (float32), ``experts`` the indices of the ``top_k``
    largest (largest first) and ``weights`` their probabilities renormalised to sum to 1 per token.
    Defined in chapter 11, The modern decoder.
    """
    if router_logits.dim() != 2:
        raise ValueError(f"router_logits must be [N, n_experts], got shape {tuple(router_logits.shape)}")
    n_experts = router_logits.size(-1)
    if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= n_experts:
        raise ValueError(f"top_k must be an int in [1, n_experts={n_experts}], got {top_k!r}")
    probs = F.softmax(router_logits.float(), dim=-1)
    top, experts = probs.topk(top_k, dim=-1)
    weights = top / top.sum(dim=-1, keepdim=True)
    return probs, weights, experts


def expert_counts(experts: torch.Tensor, n_experts: int) -> torch.Tensor:
    """How many assignments each expert got: ``experts`` [N, k] (indices) -> [E] (float)."""
    return torch.bincount(experts.reshape(-1), minlength=n_experts).float()


def load_balancing_loss(probs: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """Auxiliary load-balancing loss ``E · Σ_i f_i · P_i`` (a scalar; 1.0 when perfectly balanced).

    ``probs`` [N, E]: the router's softmax; ``experts`` [N, k]: the chosen experts. ``f_i`` is the
    fraction of the N·k assignments that went to expert i (counted, no gradient), ``P_i`` the mean
    router probability of expert i (differentiable). Under uniform routing both are 1/E and the
    loss is 1; when one expert takes everything it approaches E. transformers' Mixtral
    ``load_balancing_loss_func`` counts f over tokens instead of assignments, so it equals
    ``top_k`` times this value. Defined in chapter 11, The modern decoder.
    """
    if probs.dim() != 2 or experts.dim() != 2 or probs.size(0) != experts.size(0):
        raise ValueError(f"need probs [N, E] and experts [N, k] with the same N, got "
                         f"{tuple(probs.shape)} and {tuple(experts.shape)}")
    n_experts = probs.size(-1)
    f = expert_counts(experts, n_experts) / experts.numel()      # [E], sums to 1
    p = probs.float().mean(dim=0)                                 # [E], sums to 1
    return n_experts * (f * p).sum()


def expert_capacity(n_tokens: int, n_experts: int, top_k: int, capacity_factor: float) -> int:
    """Most assignments one expert takes from a batch: ``ceil(capacity_factor · N · k / E)``.

    ``capacity_factor = 1`` is exactly the fair share; 1.25 leaves 25 % slack (Switch Transformer).
    """
    if not capacity_factor > 0:
        raise ValueError(f"capacity_factor must be > 0, got {capacity_factor!r}")
    return max(1, math.ceil(capacity_factor * n_tokens * top_k / n_experts))


def capacity_keep_mask(experts: torch.Tensor, n_experts: int, capacity: int) -> torch.Tensor:
    """Which assignments fit under ``capacity``: ``experts`` [N, k] -> keep mask [N, k] (bool).

    Assignments queue slot by slot (every token's first choice, in token order, then every
    second choice, ...), as GShard does, so a token loses its second expert before another
    token loses its first. An expert keeps the first ``capacity`` assignments of its queue.
    """
    N, k = experts.shape
    order = experts.t().reshape(-1)                               # [k·N], slot-major
    one_hot = F.one_hot(order, n_experts)                         # [k·N, E]
    position = (one_hot.cumsum(dim=0) * one_hot).sum(-1) - 1      # place in its expert's queue
    return (position < capacity).view(k, N).t()


@dataclass
class RoutingStats:
    """What one :class:`MoEFeedForward` forward did (tensors detached, on the layer's device).

    ``counts`` [E]: assignments per expert (before capacity); ``dropped``: assignments over
    capacity (0 without capacity); ``n_tokens``: N; ``probs_mean`` [E]: mean router probability.
    """

    counts: torch.Tensor
    dropped: int
    n_tokens: int
    probs_mean: torch.Tensor

    @property
    def utilisation(self) -> torch.Tensor:
        """Fraction of assignments per expert [E] (sums to 1)."""
        return self.counts / self.counts.sum().clamp(min=1)


# ------------------------------------------------------------------------------ the layer
class MoEFeedForward(nn.Module):
    """A drop-in feed-forward layer made of ``n_experts`` SwiGLU experts and a linear router.

    ``x`` [B, T, C] -> [B, T, C]: each token goes to its ``top_k`` experts and gets their outputs
    mixed with the renormalised router weights. Active parameters per token:
    ``top_k · 3·C·d_hidden + C·E`` (router), stored: ``E · 3·C·d_hidden + C·E``. After a forward,
    ``aux_loss`` holds :func:`load_balancing_loss` (with its gradient) and ``last_stats`` a
    :class:`RoutingStats`. ``capacity_factor=None`` keeps every assignment.
    Defined in chapter 11, The modern decoder.
    """

    def __init__(self, d_model: int, d_hidden: int, n_experts: int = 8, top_k: int = 2,
                 capacity_factor: float | None = None) -> None:
        super().__init__()
        _positive_int("d_model", d_model), _positive_int("d_hidden", d_hidden), _positive_int("n_experts", n_experts)
        if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= n_experts:
            raise ValueError(f"top_k must be an int in [1, n_experts={n_experts}], got {top_k!r}")
        if capacity_factor is not None and not capacity_factor > 0:
            raise ValueError(f"capacity_factor must be > 0 or None, got {capacity_factor!r}")
        self.n_experts, self.top_k, self.capacity_factor = n_experts, top_k, capacity_factor
        self.router = nn.Linear(d_model, n_experts, bias=False)
        self.experts = nn.ModuleList([SwiGLU(d_model, d_hidden) for _ in range(n_experts)])
        self.aux_loss: torch.Tensor | None = None
        self.last_stats: RoutingStats | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, C] (or [N, C]) -> same shape."""
        shape = x.shape
        x = x.reshape(-1, shape[-1])                                   # [N, C]
        N = x.size(0)
        probs, weights, experts = route_top_k(self.router(x), self.top_k)   # [N,E], [N,k], [N,k]
        keep = torch.ones_like(experts, dtype=torch.bool)
        if self.capacity_factor is not None:
            cap = expert_capacity(N, self.n_experts, self.top_k, self.capacity_factor)
            keep = capacity_keep_mask(experts, self.n_experts, cap)
        y = torch.zeros_like(x)
        flat_expert, flat_keep = experts.reshape(-1), keep.reshape(-1)      # [N·k]
        flat_token = torch.arange(N, device=x.device).repeat_interleave(self.top_k)
        flat_weight = weights.reshape(-1).to(x.dtype)
        for e, expert in enumerate(self.experts):
            sel = ((flat_expert == e) & flat_keep).nonzero().squeeze(-1)    # this expert's assignments
            if sel.numel() == 0:
                continue
            tok = flat_token[sel]
            y.index_add_(0, tok, expert(x[tok]) * flat_weight[sel, None])
        self.aux_loss = load_balancing_loss(probs, experts)
        self.last_stats = RoutingStats(counts=expert_counts(experts, self.n_experts).detach(),
                                       dropped=int((~keep).sum()), n_tokens=N,
                                       probs_mean=probs.mean(0).detach())
        return y.view(shape)


# ------------------------------------------------------------------------------ a tiny MoE LM
@dataclass
class MoEOutput:
    """What :meth:`MoELanguageModel.forward` returns.

    ``logits`` [B, T, V]; ``lm_loss``: mean cross-entropy (when targets were given); ``aux_loss``:
    the mean over layers of the balancing loss (MoE only); ``loss``: what training minimises,
    ``lm_loss + aux_loss_coef · aux_loss`` in training mode and ``lm_loss`` in eval mode (so a
    held-out loss compares dense and MoE models on the language-model loss alone).
    """

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    lm_loss: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None
    stats: list[RoutingStats] = field(default_factory=list)


class MoELanguageModel(nn.Module):
    """The course GPT with its MLPs swapped: a dense :class:`SwiGLU` (``n_experts=None``) or an
    :class:`MoEFeedForward` in every block.

    Attention, LayerNorms, embeddings and weight tying are :class:`~course_utils.models.gpt.GPT`'s.
    For equal *active* parameters, give the dense model ``d_hidden = top_k · d_expert``.
    Defined in chapter 11, The modern decoder.
    """

    def __init__(self, config: GPTConfig, d_hidden: int, n_experts: int | None = None, top_k: int = 2,
                 aux_loss_coef: float = 0.01, capacity_factor: float | None = None) -> None:
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
        if not aux_loss_coef >= 0:
            raise ValueError(f"aux_loss_coef must be >= 0, got {aux_loss_coef!r}")
        self.config, self.aux_loss_coef = config, float(aux_loss_coef)
        _positive_int("d_hidden", d_hidden)
        self.gpt = GPT(config)
        C = config.n_embd
        for block in self.gpt.transformer.h:
            block.mlp = (SwiGLU(C, d_hidden) if n_experts is None
                         else MoEFeedForward(C, d_hidden, n_experts, top_k, capacity_factor))
        for name, p in self.named_parameters():          # GPT-2's init for the new layers
            if name.endswith(("gate_proj.weight", "up_proj.weight", "router.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02)
            elif name.endswith("down_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @property
    def moe_layers(self) -> list[MoEFeedForward]:
        return [b.mlp for b in self.gpt.transformer.h if isinstance(b.mlp, MoEFeedForward)]

    def num_params(self, active: bool = False) -> int:
        """Parameters (tied embedding counted once, position embeddings included); ``active=True``
        counts only the ``top_k`` experts a token uses in each MoE layer."""
        n = sum(p.numel() for p in self.parameters())
        if active:
            for layer in self.moe_layers:
                per_expert = sum(p.numel() for p in layer.experts[0].parameters())
                n -= (layer.n_experts - layer.top_k) * per_expert
        return n

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> MoEOutput:
        """``idx`` [B, T] -> :class:`MoEOutput` (loss when ``targets`` [B, T] are given; -100 = ignore)."""
        logits = self.gpt(idx).logits                                          # [B, T, V]
        layers = self.moe_layers
        aux = torch.stack([m.aux_loss for m in layers]).mean() if layers else None
        out = MoEOutput(logits=logits, aux_loss=aux, stats=[m.last_stats for m in layers])
        if targets is not None:
            out.lm_loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1).long(),
                                          ignore_index=IGNORE_INDEX)
            out.loss = out.lm_loss
            if aux is not None and self.training and self.aux_loss_coef > 0:
                out.loss = out.lm_loss + self.aux_loss_coef * aux
        return out


def utilisation_imbalance(utilisation: torch.Tensor) -> float:
    """Busiest expert's share over the fair share 1/E: 1.0 balanced, E when one expert takes all."""
    u = utilisation / utilisation.sum()
    return float(u.max() * u.numel())


@dataclass
class MoERun:
    """:func:`train_lm`'s result: the trainer's ``history``, ``utilisation`` [steps, layers, E]
    (each training step's share of assignments per expert; empty for a dense model),
    ``seconds`` of training and the model (CPU, eval mode)."""

    model: MoELanguageModel
    history: dict[str, list[float]]
    utilisation: torch.Tensor
    seconds: float

    @property
    def val_loss(self) -> float:
        return self.history["val_loss"][-1]


def train_lm(model: MoELanguageModel, train_ids: torch.Tensor, val_ids: torch.Tensor, config: "TrainConfig",
             block_size: int | None = None) -> MoERun:
    """Train ``model`` on token ids ``train_ids`` [N] with the course :class:`~course_utils.train.Trainer`
    (random blocks, seeded by ``config.seed``), recording the experts' utilisation at every step.
    Defined in chapter 11, The modern decoder."""
    from .train import TrainEvent, Trainer
    from .train_data import RandomBlockSampler

    T = block_size or model.config.block_size
    rows: list[torch.Tensor] = []

    def record(event: TrainEvent) -> None:
        if event.kind == "step" and event.trainer is not None:
            layers = event.trainer.unwrapped_model.moe_layers
            if layers:
                rows.append(torch.stack([m.last_stats.utilisation.cpu() for m in layers]))
        if config.log is not None:
            config.log(event)

    cfg = replace(config, log=record)
    trainer = Trainer(model, cfg, RandomBlockSampler(train_ids, T, cfg.batch_size, seed=cfg.seed),
                      RandomBlockSampler(val_ids, T, cfg.batch_size, seed=cfg.seed + 1))
    start = time.perf_counter()
    history = trainer.fit()
    seconds = time.perf_counter() - start
    util = torch.stack(rows) if rows else torch.empty(0)
    return MoERun(trainer.unwrapped_model.cpu().eval(), history, util, seconds)


__all__ = ["SwiGLU", "route_top_k", "expert_counts", "load_balancing_loss", "expert_capacity", "capacity_keep_mask",
           "RoutingStats", "MoEFeedForward", "MoEOutput", "MoELanguageModel", "utilisation_imbalance", "MoERun",
           "train_lm"]
