"""Decoding, written out: greedy, sampling (temperature, top-k, top-p, repetition penalty), beam search.

Everything here works on logits, or on a *step function*

    next_logits(ids[B, T], cache) -> (logits[B, V] for position T, new_cache)

so the same loop drives the course's GPT, a transformers model or a fake model with a fixed
transition table (the tests use one). :func:`step_fn` builds a step function from a model:
with ``use_cache=True`` it feeds only the tokens the cache has not seen (a KV cache), without
it recomputes the whole prefix every step; ``cache="static"`` gives the course GPT a
pre-allocated cache (:class:`course_utils.kv_cache.StaticKVCache`) instead of a growing one. The logits processors reproduce transformers'
``RepetitionPenaltyLogitsProcessor``, ``TemperatureLogitsWarper``, ``TopKLogitsWarper`` and
``TopPLogitsWarper`` exactly, applied in that order as ``generate()`` does.

Defined in chapter 6, Generation.
"""
from __future__ import annotations

import inspect
import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .kv_cache import StaticKVCache

NextLogits = Callable[[Tensor, Any], tuple[Tensor, Any]]

__all__ = ["NextLogits", "apply_temperature", "top_k_filter", "top_p_filter", "apply_repetition_penalty",
           "process_logits", "sample_next", "step_fn", "reorder_cache", "generate", "BeamSearchOutput",
           "beam_search", "total_nll", "bits_per_char", "CACHE_KINDS"]

#: The KV caches a course GPT can decode with: a growing one, or a pre-allocated one.
CACHE_KINDS = ("dynamic", "static")


# ----------------------------------------------------------------------------------- checks
def _check_logits(logits: Tensor) -> None:
    if not isinstance(logits, Tensor) or logits.dim() != 2 or not logits.is_floating_point():
        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"expected float logits of shape [batch, vocab], got {got}")
    if bool(torch.isnan(logits).any()):
        raise ValueError("logits contain NaN (a diverged model or a bad input); no token can be chosen from them")


def _check_ids(ids: Tensor, name: str = "ids") -> None:
    if not isinstance(ids, Tensor) or ids.dim() != 2 or ids.dtype not in (torch.long, torch.int):
        got = (tuple(ids.shape), ids.dtype) if isinstance(ids, Tensor) else type(ids).__name__
        raise ValueError(f"expected {name} as an integer tensor of shape [batch, seq_len], got {got}")
    if ids.shape[1] == 0:
        raise ValueError(f"{name} must hold at least one token (a prompt); got seq_len 0")
    if int(ids.min()) < 0:
        raise ValueError(f"{name} must be token ids >= 0, got {int(ids.min())}")


def _check_positive(value: float, name: str, hint: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a finite number > 0{hint}, got {value!r}")


def _check_int(value: int, name: str, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _check_top_p(top_p: float) -> None:
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")


# ---------------------------------------------------------------------------- logits processors
def apply_temperature(logits: Tensor, temperature: float) -> Tensor:
    """``logits / temperature``: below 1 sharpens the distribution, above 1 flattens it.

    logits: [B, V] -> [B, V]. Defined in chapter 6, Generation.
    """
    _check_logits(logits)
    _check_positive(temperature, "temperature", " (for greedy decoding use do_sample=False)")
    return logits / temperature


def top_k_filter(logits: Tensor, top_k: int, filter_value: float = -math.inf) -> Tensor:
    """Keep the ``top_k`` largest logits of each row (ties with the k-th are kept), set the rest to -inf.

    logits: [B, V] -> [B, V]. Defined in chapter 6, Generation.
    """
    _check_logits(logits)
    _check_int(top_k, "top_k", 1)
    k = min(top_k, logits.shape[-1])
    kth_largest = torch.topk(logits, k, dim=-1).values[..., -1:]          # [B, 1]
    return logits.masked_fill(logits < kth_largest, filter_value)


def top_p_filter(logits: Tensor, top_p: float, filter_value: float = -math.inf,
                 min_tokens_to_keep: int = 1) -> Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose probability reaches ``top_p``.

    Sorting *ascending*, a token is dropped when the probability mass of the tokens below it
    (itself included) is at most ``1 - top_p``: the tail that together holds no more than
    ``1 - top_p`` goes. The most likely token is always kept. logits: [B, V] -> [B, V].
    Defined in chapter 6, Generation.
    """
    _check_logits(logits)
    _check_top_p(top_p)
    _check_int(min_tokens_to_keep, "min_tokens_to_keep", 1)
    sorted_logits, sorted_idx = torch.sort(logits, dim=-1, descending=False)
    tail_mass = sorted_logits.softmax(dim=-1).cumsum(dim=-1)              # [B, V], ascending
    drop_sorted = tail_mass <= (1.0 - top_p)
    drop_sorted[..., -min_tokens_to_keep:] = False
    drop = drop_sorted.scatter(1, sorted_idx, drop_sorted)                # back to vocabulary order
    return logits.masked_fill(drop, filter_value)


def apply_repetition_penalty(logits: Tensor, ids: Tensor, penalty: float) -> Tensor:
    """CTRL's repetition penalty: every token already in ``ids`` gets its logit divided by
    ``penalty`` when positive and multiplied by it when negative (both make it less likely).

    logits: [B, V], ids: [B, T] (the prompt and what was generated) -> [B, V].
    Defined in chapter 6, Generation.
    """
    _check_logits(logits)
    _check_ids(ids)
    _check_positive(penalty, "repetition_penalty", " (1.0 = no penalty)")
    if ids.shape[0] != logits.shape[0]:
        raise ValueError(f"ids has batch {ids.shape[0]} but logits has batch {logits.shape[0]}")
    if int(ids.max()) >= logits.shape[-1]:
        raise ValueError(f"ids must be below the vocabulary size {logits.shape[-1]} of logits, got {int(ids.max())}")
    ids = ids.long().to(logits.device)
    seen = torch.gather(logits, 1, ids)                                   # [B, T]
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return logits.scatter(1, ids, seen)


def process_logits(logits: Tensor, ids: Tensor | None = None, *, temperature: float = 1.0,
                   top_k: int | None = None, top_p: float | None = None,
                   repetition_penalty: float = 1.0) -> Tensor:
    """Repetition penalty, temperature, top-k, top-p, in the order transformers' ``generate()`` uses.

    logits: [B, V]; ids: [B, T] (needed only for the repetition penalty) -> [B, V].
    Defined in chapter 6, Generation.
    """
    _check_logits(logits)
    if repetition_penalty != 1.0:
        if ids is None:
            raise ValueError("repetition_penalty needs the ids generated so far (ids=...)")
        logits = apply_repetition_penalty(logits, ids, repetition_penalty)
    if temperature != 1.0:
        logits = apply_temperature(logits, temperature)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None and top_p < 1.0:
        logits = top_p_filter(logits, top_p)
    return logits


def sample_next(logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Draw one token per row from ``softmax(logits)``; pass a seeded ``torch.Generator`` to repeat a draw.

    logits: [B, V] -> ids [B, 1]. Defined in chapter 6, Generation.
    """
    _check_logits(logits)
    if not bool(torch.isfinite(logits).any(dim=-1).all()):
        raise ValueError("logits: a row has no finite logit (every token filtered out); nothing to sample")
    probs = F.softmax(logits.float(), dim=-1)
    if generator is not None and generator.device != probs.device:   # e.g. a CPU generator, CUDA logits
        return torch.multinomial(probs.to(generator.device), 1, generator=generator).to(probs.device)
    return torch.multinomial(probs, num_samples=1, generator=generator)


# ---------------------------------------------------------------------------- step functions
def _model_kind(model: torch.nn.Module) -> str:
    params = inspect.signature(model.forward).parameters
    if "kv_cache" in params:
        return "course"
    if "past_key_values" in params:
        return "hf"
    return "plain"


def step_fn(model: torch.nn.Module, use_cache: bool = True, cache: str = "dynamic") -> NextLogits:
    """A step function ``next_logits(ids, cache)`` for a model whose output has ``.logits``.

    Works with the course GPT (``kv_cache=``), transformers models (``past_key_values=``) and
    any module mapping ids [B, T] to an output with ``.logits`` [B, T, V] (always recomputed).
    The cache it returns is ``(tokens_seen, model_cache)``; with ``use_cache=False`` every step
    runs the whole prefix. A model with ``config.block_size`` (learned positions) sees only the
    last ``block_size`` tokens once the text is longer, recomputed each step: a cache cannot
    slide past the last learned position. ``cache="static"`` (course GPT only): keys and values
    go into a :class:`~course_utils.kv_cache.StaticKVCache` of ``block_size`` slots allocated at
    the first step (same tokens as the growing ``"dynamic"`` cache; fixed shapes, what a GPU's
    compiled or captured step needs). Defined in chapter 6, Generation.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"step_fn expects a torch.nn.Module, got {type(model).__name__}")
    _check_cache_kind(cache)
    kind = _model_kind(model)
    if cache == "static" and kind != "course":
        raise ValueError(f"cache='static' needs the course GPT (a forward with kv_cache=); "
                         f"{type(model).__name__} has its own caches: use cache='dynamic'")
    block_size = getattr(getattr(model, "config", None), "block_size", None)
    static = cache == "static"

    @torch.no_grad()
    def next_logits(ids: Tensor, cache: Any) -> tuple[Tensor, Any]:
        too_long = block_size is not None and ids.shape[1] > block_size
        if not use_cache or kind == "plain" or too_long:
            # learned positions end at block_size: past it, recompute a sliding window (no cache)
            window = ids if block_size is None else ids[:, -block_size:]
            out = model(window, use_cache=False) if kind == "hf" else model(window)
            return out.logits[:, -1, :].float(), None
        seen, inner = cache if cache is not None else (0, None)
        new = ids[:, seen:]
        if static and inner is None:
            inner = StaticKVCache.for_model(model, ids.shape[0])
        if kind == "course":
            out = model(new, kv_cache=inner, use_cache=True)
            inner = out.kv_cache
        else:
            out = model(input_ids=new, past_key_values=inner, use_cache=True)
            inner = out.past_key_values
        return out.logits[:, -1, :].float(), (ids.shape[1], inner)

    return next_logits


def reorder_cache(cache: Any, index: Tensor) -> Any:
    """Select batch rows ``index`` [B'] of every tensor in a (nested) cache, for beam search.

    Objects with a ``reorder_cache`` method (transformers' caches) are reordered in place;
    tensors are indexed on dimension 0; tuples, lists and dicts recursively; other values kept.
    Defined in chapter 6, Generation.
    """
    if cache is None:
        return None
    if hasattr(cache, "reorder_cache"):
        cache.reorder_cache(index)
        return cache
    if isinstance(cache, Tensor):
        return cache.index_select(0, index.to(cache.device)) if cache.dim() > 0 else cache
    if isinstance(cache, (tuple, list)):
        return type(cache)(reorder_cache(c, index) for c in cache)
    if isinstance(cache, dict):
        return {k: reorder_cache(v, index) for k, v in cache.items()}
    return cache


def _check_cache_kind(cache: str) -> None:
    if cache not in CACHE_KINDS:
        raise ValueError(f"cache must be one of {CACHE_KINDS}, got {cache!r}")


def _as_step(model_or_fn: torch.nn.Module | NextLogits, use_cache: bool, cache: str = "dynamic") -> NextLogits:
    if isinstance(model_or_fn, torch.nn.Module):
        return step_fn(model_or_fn, use_cache=use_cache, cache=cache)
    _check_cache_kind(cache)
    if cache != "dynamic":
        raise ValueError("cache='static' is chosen with a model; a step function brings its own cache")
    if not callable(model_or_fn):
        raise TypeError("expected a model (torch.nn.Module) or a step function next_logits(ids, cache)")
    return model_or_fn


# ---------------------------------------------------------------------------- greedy / sampling
@torch.no_grad()
def generate(model_or_fn: torch.nn.Module | NextLogits, ids: Tensor, max_new_tokens: int, *,
             do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, repetition_penalty: float = 1.0,
             eos_token_id: int | None = None, generator: torch.Generator | None = None,
             use_cache: bool = True, cache: str = "dynamic") -> Tensor:
    """Extend ``ids`` [B, T] by up to ``max_new_tokens`` tokens: greedy (argmax) or sampled.

    The logits of each step go through :func:`process_logits`; greedy decoding takes the
    argmax (temperature, top-k and top-p do not change it; the repetition penalty does).
    Rows that produced ``eos_token_id`` are padded with it; the loop stops when all have.
    ``cache``: ``"dynamic"`` (a growing KV cache) or ``"static"`` (pre-allocated, course GPT;
    see :func:`step_fn`). Returns ids [B, T + n] with n <= max_new_tokens. Defined in chapter 6, Generation.
    """
    _check_ids(ids)
    _check_int(max_new_tokens, "max_new_tokens", 0)
    _check_positive(temperature, "temperature", " (for greedy decoding use do_sample=False)")
    if top_k is not None:
        _check_int(top_k, "top_k", 1)
    if top_p is not None:
        _check_top_p(top_p)
    _check_positive(repetition_penalty, "repetition_penalty", " (1.0 = no penalty)")
    if eos_token_id is not None:
        _check_int(eos_token_id, "eos_token_id", 0)
    step = _as_step(model_or_fn, use_cache, cache)
    finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    state = None
    for _ in range(max_new_tokens):
        logits, state = step(ids, state)
        logits = process_logits(logits, ids, temperature=temperature, top_k=top_k, top_p=top_p,
                                repetition_penalty=repetition_penalty)
        nxt = sample_next(logits, generator) if do_sample else logits.argmax(dim=-1, keepdim=True)
        if eos_token_id is not None:
            nxt = nxt.masked_fill(finished[:, None], eos_token_id)
            finished |= nxt[:, 0] == eos_token_id
        ids = torch.cat([ids, nxt.to(ids.dtype)], dim=1)
        if eos_token_id is not None and bool(finished.all()):
            break
    return ids


# ---------------------------------------------------------------------------- beam search
@dataclass
class BeamSearchOutput:
    """Finished beams, best first: ``sequences`` [num_beams, T + n] (right-padded with
    ``pad_token_id``), ``scores`` [num_beams] = sum of log-probs / (new tokens ** length_penalty),
    ``lengths`` [num_beams] = new tokens of each beam (its EOS included)."""

    sequences: Tensor
    scores: Tensor
    lengths: Tensor


@torch.no_grad()
def beam_search(model_or_fn: torch.nn.Module | NextLogits, ids: Tensor, max_new_tokens: int, *,
                num_beams: int = 4, length_penalty: float = 1.0, eos_token_id: int | None = None,
                early_stopping: bool = False, pad_token_id: int | None = None,
                use_cache: bool = True, cache: str = "dynamic") -> BeamSearchOutput:
    """Beam search over one prompt ``ids`` [1, T], keeping the ``num_beams`` best partial sequences.

    Each step scores every (beam, token) continuation by its summed log-probability and keeps
    the best ``2 * num_beams``: among those, a continuation ending in EOS (or reaching
    ``max_new_tokens``) that ranks in the first ``num_beams`` becomes a *finished* hypothesis,
    scored ``sum_logprob / new_tokens ** length_penalty`` (> 0 favours long outputs); the best
    ``num_beams`` unfinished ones go on. The search stops when ``num_beams`` hypotheses are
    finished and no running beam can beat the worst of them (``early_stopping=True``: as soon as
    they are finished). This is transformers' ``generate(num_beams=..., do_sample=False)``.
    Defined in chapter 6, Generation.
    """
    _check_ids(ids)
    if ids.shape[0] != 1:
        raise ValueError(f"beam_search decodes one prompt at a time; got a batch of {ids.shape[0]}")
    _check_int(num_beams, "num_beams", 1)
    _check_int(max_new_tokens, "max_new_tokens", 1)
    if not isinstance(length_penalty, (int, float)) or not math.isfinite(length_penalty):
        raise ValueError(f"length_penalty must be a finite number, got {length_penalty!r}")
    step = _as_step(model_or_fn, use_cache, cache)
    pad = pad_token_id if pad_token_id is not None else (eos_token_id if eos_token_id is not None else 0)
    prompt_len = ids.shape[1]
    running, running_scores = ids, torch.zeros(1, device=ids.device)      # [beams, T], [beams]
    finished: list[tuple[float, Tensor, int]] = []                       # (score, seq, new_tokens)
    state = None
    for t in range(max_new_tokens):
        logits, state = step(running, state)                              # [beams, V]
        vocab = logits.shape[-1]
        cand = (running_scores[:, None] + F.log_softmax(logits.float(), dim=-1)).reshape(-1)
        top_scores, top_idx = torch.topk(cand, min(2 * num_beams, cand.numel()))
        beam_idx, tokens = top_idx // vocab, top_idx % vocab
        keep_beams, keep_tokens, keep_scores = [], [], []
        for rank, (s, b, tok) in enumerate(zip(top_scores.tolist(), beam_idx.tolist(), tokens.tolist())):
            ends = (eos_token_id is not None and tok == eos_token_id) or t == max_new_tokens - 1
            if ends:
                if rank < num_beams:
                    seq = torch.cat([running[b], running.new_tensor([tok])])
                    finished.append((s / (t + 1) ** length_penalty, seq, t + 1))
            elif len(keep_beams) < num_beams:
                keep_beams.append(b)
                keep_tokens.append(tok)
                keep_scores.append(s)
        finished = sorted(finished, key=lambda h: -h[0])[:num_beams]
        if t == max_new_tokens - 1 or not keep_beams:
            break
        sel = torch.tensor(keep_beams, device=ids.device)
        running = torch.cat([running[sel], torch.tensor(keep_tokens, device=ids.device)[:, None]], dim=1)
        running_scores = torch.tensor(keep_scores, device=ids.device)
        state = None if state is None else reorder_cache(state, sel)
        if len(finished) == num_beams:
            best_possible = keep_scores[0] / (t + 1) ** length_penalty
            if early_stopping or best_possible <= finished[-1][0]:
                break
    seqs = torch.full((len(finished), prompt_len + max(n for _, _, n in finished)), pad, dtype=ids.dtype,
                      device=ids.device)
    for i, (_, seq, _) in enumerate(finished):
        seqs[i, : seq.numel()] = seq
    return BeamSearchOutput(seqs, torch.tensor([h[0] for h in finished], device=ids.device),
                            torch.tensor([h[2] for h in finished], device=ids.device))


# ---------------------------------------------------------------------------- perplexity
@torch.no_grad()
def total_nll(logits_fn: Callable[[Tensor], Tensor], ids: Sequence[int] | Tensor, context: int,
              stride: int | None = None) -> tuple[float, int]:
    """Total negative log-likelihood (nats) of ``ids[1:]`` given what precedes, with a sliding window.

    ``logits_fn(window[1, L]) -> logits[1, L, V]`` for L <= ``context``. Windows of ``context``
    tokens advance by ``stride`` (default ``context // 2``); each token is scored exactly once,
    with at least ``context - stride`` tokens of context once the first window is past.
    Returns (total NLL in nats, number of tokens scored = len(ids) - 1).
    Defined in chapter 6, Generation.
    """
    ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
    if ids.numel() < 2:
        raise ValueError(f"need at least 2 tokens to score, got {ids.numel()}")
    if not isinstance(context, int) or context < 2:
        raise ValueError(f"context must be an integer >= 2, got {context!r}")
    stride = stride if stride is not None else max(1, context // 2)
    if not isinstance(stride, int) or not 1 <= stride <= context - 1:
        raise ValueError(f"stride must be an integer in [1, context - 1], got {stride!r}")
    total, scored, n = 0.0, 0, ids.numel()
    start = 0
    while scored < n - 1:
        end = min(start + context, n)
        window = ids[start:end][None, :]
        logits = logits_fn(window)                                        # [1, L, V]
        if logits.shape[:2] != window.shape:
            raise ValueError(f"logits_fn returned shape {tuple(logits.shape)} for a window {tuple(window.shape)}")
        first_new = scored + 1 - start                                    # first target not yet scored
        targets = window[0, first_new:].to(logits.device)
        logp = F.log_softmax(logits[0, first_new - 1:-1].float(), dim=-1)
        total -= float(logp.gather(1, targets[:, None]).sum())
        scored += targets.numel()
        start += stride
    return total, scored


def bits_per_char(total_nll_nats: float, n_chars: int) -> float:
    """Tokenization-fair score: total NLL converted to bits, divided by the characters it covers.

    Defined in chapter 6, Generation.
    """
    if isinstance(n_chars, bool) or not isinstance(n_chars, int) or n_chars < 1:
        raise ValueError(f"n_chars must be a positive integer, got {n_chars!r}")
    if (isinstance(total_nll_nats, bool) or not isinstance(total_nll_nats, numbers.Real)
            or not math.isfinite(total_nll_nats) or total_nll_nats < 0):
        raise ValueError(f"total_nll_nats must be a finite number >= 0, got {total_nll_nats!r}")
    return total_nll_nats / math.log(2) / n_chars
