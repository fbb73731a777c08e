"""The losses of post-training, written out: SFT, DPO and GRPO.

Each function is the few lines of tensor algebra a trainer runs, with the shapes in its
docstring; ``tests/test_trl_equality.py`` checks every one against TRL 1.16's own trainer
(``SFTTrainer``, ``DPOTrainer``, ``GRPOTrainer``) on the same fixed batch, to 1e-5.

* **SFT** (:func:`sft_loss`): next-token cross-entropy on the assistant's tokens only, averaged
  over those tokens (TRL: ``assistant_only_loss=True``, ``loss_type="nll"``).
* **DPO** (:func:`dpo_loss`): ``-log σ(β·((log πc − log πr) − (log refc − log refr)))`` over
  pairs of (chosen, rejected) completions, where ``log π`` is the sum of a completion's token
  log-probabilities (:func:`sequence_logprobs`). TRL: ``loss_type=["sigmoid"]``, ``beta=0.1``.
* **GRPO** (:func:`group_advantages`, :func:`grpo_loss`): rewards normalised within each group
  of completions of one prompt, then PPO's clipped ratio per token, an optional k3 KL to a
  reference (:func:`kl_k3`), and TRL's token aggregation (default ``loss_type="dapo"``).

Log-probabilities come from logits by :func:`token_logprobs` (aligned) or
:func:`shifted_logprobs` (the next-token shift done here); :func:`model_logprobs`,
:func:`completion_logprobs` and :func:`sequence_logprobs` run a model (a transformers causal LM
or ``course_utils.models.llama.LlamaForCausalLM``) and return them.

Defined in chapter 12, Post-training.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

#: Label value that marks a position without a target (the transformers / PyTorch convention).
IGNORE_INDEX = -100

#: The token aggregations :func:`grpo_loss` implements (TRL 1.16's names); TRL's default is "dapo".
GRPO_LOSS_TYPES: tuple[str, ...] = ("dapo", "bnpo", "grpo", "dr_grpo")

#: TRL 1.16's constant in ``advantage = (r - mean) / (std + 1e-4)``.
ADVANTAGE_EPS = 1e-4


# --------------------------------------------------------------------------- argument checks

def _tensor(x: Any, name: str, ndim: int, *, floating: bool | None = None) -> torch.Tensor:
    """``x`` as a tensor with ``ndim`` dimensions, else a ValueError/TypeError naming ``name``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {tuple(x.shape)}")
    if floating is True and not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if floating is False and (x.is_floating_point() or x.is_complex()):
        raise TypeError(f"{name} must be an integer tensor of token ids, got {x.dtype}")
    if x.is_floating_point() and torch.isnan(x).any():
        raise ValueError(f"{name} contains NaN")
    return x


def _same_shape(a: torch.Tensor, a_name: str, b: torch.Tensor, b_name: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{a_name} {tuple(a.shape)} and {b_name} {tuple(b.shape)} must have the same shape")


def _mask(x: Any, name: str, shape: torch.Size) -> torch.Tensor:
    """A 0/1 mask (bool, int or float) of ``shape`` as float32."""
    m = _tensor(x, name, len(shape))
    if m.shape != shape:
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(m.shape)}")
    m = m.float()
    if not bool(((m == 0) | (m == 1)).all()):
        raise ValueError(f"{name} must hold only 0 and 1 (or False/True)")
    return m


def _positive(x: Any, name: str, allow_zero: bool = False) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) \
            or x < 0 or (x == 0 and not allow_zero):
        raise ValueError(f"{name} must be a finite {'non-negative' if allow_zero else 'positive'} number, got {x!r}")
    return float(x)


def _count(x: Any, name: str) -> float:
    """A positive token count given as a number or a one-element tensor (TRL passes tensors)."""
    if isinstance(x, torch.Tensor) and x.numel() == 1 and not x.dtype == torch.bool:
        x = x.item()
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x <= 0:
        raise ValueError(f"{name} must be a positive count (a number or a one-element tensor), got {x!r}")
    return float(x)


def _flag(x: Any, name: str) -> bool:
    if not isinstance(x, bool):
        raise TypeError(f"{name} must be True or False, got {x!r}")
    return x


# --------------------------------------------------------------------------- log-probabilities

def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(labels[b, t]) under the distribution softmax(logits[b, t]); no shift inside.

    ``logits`` [B, T, V], ``labels`` [B, T] (ids in [0, V), or -100 = no target) -> [B, T]
    float32, 0 where the label is -100. Computed as ``logit[label] - logsumexp(logits)``
    (the same as ``log_softmax(logits).gather(...)`` without building the [B, T, V] result).

    Defined in chapter 12, Post-training.
    """
    logits = _tensor(logits, "logits", 3, floating=True)
    labels = _tensor(labels, "labels", 2, floating=False)
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"logits [B, T, V] = {tuple(logits.shape)} and labels [B, T] = {tuple(labels.shape)} "
                         "must agree on B and T")
    V = logits.size(-1)
    ignored = labels == IGNORE_INDEX
    if bool(((labels < 0) & ~ignored).any()) or bool((labels >= V).any()):
        raise ValueError(f"labels must be token ids in [0, {V}) or {IGNORE_INDEX} (ignored), "
                         f"got values from {int(labels.min())} to {int(labels.max())}")
    logits = logits.float()
    safe = labels.masked_fill(ignored, 0)
    picked = logits.gather(-1, safe.unsqueeze(-1)).squeeze(-1)                   # [B, T]
    logps = picked - torch.logsumexp(logits, dim=-1)                               # [B, T]
    return logps.masked_fill(ignored, 0.0)


def shifted_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Next-token log-probabilities of a sequence under a causal LM's logits.

    ``logits`` [B, T, V] from running the model on ``input_ids`` [B, T] -> [B, T-1], where entry
    t is log p(input_ids[b, t+1] | input_ids[b, :t+1]): the logits at position t predict the
    token at t+1, so the last logits and the first token have no partner.

    Defined in chapter 12, Post-training.
    """
    logits = _tensor(logits, "logits", 3, floating=True)
    input_ids = _tensor(input_ids, "input_ids", 2, floating=False)
    if logits.shape[:2] != input_ids.shape:
        raise ValueError(f"logits [B, T, V] = {tuple(logits.shape)} and input_ids [B, T] = "
                         f"{tuple(input_ids.shape)} must agree on B and T")
    if input_ids.size(1) < 2:
        raise ValueError(f"input_ids needs at least 2 tokens per row to have a next token, got T={input_ids.size(1)}")
    return token_logprobs(logits[:, :-1], input_ids[:, 1:])


def _logits_of(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    out = model(input_ids, attention_mask=attention_mask)
    logits = getattr(out, "logits", out)
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"the model returned {type(out).__name__} without .logits; expected a causal LM "
                        "(transformers or course_utils.models.llama)")
    return logits


def model_logprobs(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                   temperature: float = 1.0) -> torch.Tensor:
    """Run a causal LM on ``input_ids`` [B, T] and return the next-token log-probabilities [B, T-1]
    (:func:`shifted_logprobs` of ``logits / temperature``).

    ``model(input_ids, attention_mask=...)`` must return logits [B, T, V] or an object with
    ``.logits`` (transformers models and ``course_utils.models.llama.LlamaForCausalLM`` both do).
    ``attention_mask`` [B, T] is 1 on real tokens. Gradients flow; wrap in ``torch.no_grad()``
    for a reference model. ``temperature`` divides the logits first, as TRL's GRPO does with its
    sampling temperature (default 1.0).

    Defined in chapter 12, Post-training.
    """
    input_ids = _tensor(input_ids, "input_ids", 2, floating=False)
    if attention_mask is not None:
        _mask(attention_mask, "attention_mask", input_ids.shape)
    temperature = _positive(temperature, "temperature")
    logits = _logits_of(model, input_ids, attention_mask)
    if temperature != 1.0:
        logits = logits / temperature
    return shifted_logprobs(logits, input_ids)


def completion_logprobs(model: Any, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                        completion_ids: torch.Tensor, completion_mask: torch.Tensor, *,
                        temperature: float = 1.0) -> torch.Tensor:
    """Per-token log-probabilities of sampled completions given their prompts, as GRPO needs them.

    ``prompt_ids``/``prompt_mask`` [B, P] (prompts left-padded, mask 1 = real token) and
    ``completion_ids``/``completion_mask`` [B, C] (right-padded) -> [B, C]: entry c is
    log p(completion_ids[b, c] | prompt, completion_ids[b, :c]) at ``logits / temperature``
    (padding positions hold a value; :func:`grpo_loss` masks them with ``completion_mask``).

    Defined in chapter 12, Post-training.
    """
    prompt_ids = _tensor(prompt_ids, "prompt_ids", 2, floating=False)
    completion_ids = _tensor(completion_ids, "completion_ids", 2, floating=False)
    if prompt_ids.size(0) != completion_ids.size(0):
        raise ValueError(f"prompt_ids {tuple(prompt_ids.shape)} and completion_ids {tuple(completion_ids.shape)} "
                         "must have the same batch size")
    pm = _mask(prompt_mask, "prompt_mask", prompt_ids.shape)
    cm = _mask(completion_mask, "completion_mask", completion_ids.shape)
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([pm, cm], dim=1).long()                          # [B, P+C]
    logps = model_logprobs(model, input_ids, attention_mask, temperature=temperature)   # [B, P+C-1]
    return logps[:, -completion_ids.size(1):]


def sequence_logprobs(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      completion_mask: torch.Tensor) -> torch.Tensor:
    """log π(completion | prompt): the sum of the completion tokens' log-probabilities.

    ``input_ids``, ``attention_mask`` and ``completion_mask`` [B, T] (prompt followed by
    completion, padded; ``completion_mask`` 1 on the completion's tokens) -> [B]. Token t counts
    when ``completion_mask[b, t] == 1``; it is scored by the logits at t-1, so position 0 never
    counts. This is DPO's log π for one response (TRL sums, it does not average).

    Defined in chapter 12, Post-training.
    """
    input_ids = _tensor(input_ids, "input_ids", 2, floating=False)
    cm = _mask(completion_mask, "completion_mask", input_ids.shape)
    logps = model_logprobs(model, input_ids, attention_mask)                    # [B, T-1]
    return (logps * cm[:, 1:]).sum(dim=1)


# --------------------------------------------------------------------------- SFT

def sft_loss(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor, *,
             num_tokens: int | float | torch.Tensor | None = None) -> torch.Tensor:
    """Supervised fine-tuning loss: next-token cross-entropy on the masked-in tokens.

    ``logits`` [B, T, V] of the model run on ``input_ids`` [B, T]; ``loss_mask`` [B, T] is 1 on
    the tokens to learn (the assistant's, from ``course_utils.chat.tokenize_chat``) and 0 on
    prompt, template and padding tokens. The logits at t predict ``input_ids[:, t+1]``, which
    counts when ``loss_mask[:, t+1] == 1`` (the mask of the *target*; ``loss_mask[:, 0]`` never
    counts). Returns a scalar: the summed negative log-likelihood divided by the number of
    counted tokens of the batch (every token weighs the same, long answers weigh more than short
    ones), or by ``num_tokens`` when given: the counted tokens of all micro-batches of one
    optimiser step, which is how TRL/transformers normalise under gradient accumulation.
    A batch without counted tokens gives 0 (TRL clamps the count to 1).

    Defined in chapter 12, Post-training.
    """
    logits = _tensor(logits, "logits", 3, floating=True)
    input_ids = _tensor(input_ids, "input_ids", 2, floating=False)
    mask = _mask(loss_mask, "loss_mask", input_ids.shape)
    logps = shifted_logprobs(logits, input_ids)                                # [B, T-1]
    target_mask = mask[:, 1:]                                                  # [B, T-1]
    if num_tokens is None:
        denom = target_mask.sum().clamp(min=1)
    else:
        denom = torch.tensor(_count(num_tokens, "num_tokens"), device=logits.device)
    return -(logps * target_mask).sum() / denom


# --------------------------------------------------------------------------- DPO

def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor,
             beta: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Direct preference optimisation (the "sigmoid" loss of Rafailov et al., 2023).

    Four [B] tensors of sequence log-probabilities (:func:`sequence_logprobs`) of each pair's
    chosen and rejected completion under the policy and the frozen reference. With the implicit
    rewards r = β·(log π − log π_ref)::

        loss = mean_b −log σ(r_chosen − r_rejected)
             = mean_b −log σ(β·((log πc − log πr) − (log refc − log refr)))

    Returns ``(loss scalar, chosen_rewards [B], rejected_rewards [B])``; the rewards are detached
    (for monitoring: the implicit-reward accuracy is ``(chosen_rewards > rejected_rewards)``).
    ``beta`` (TRL's default 0.1) sets how far the policy may move from the reference.

    Defined in chapter 12, Post-training.
    """
    names = ("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps")
    ts = [_tensor(t, n, 1, floating=True) for t, n in
          zip((policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps), names)]
    for t, n in zip(ts[1:], names[1:]):
        _same_shape(ts[0], names[0], t, n)
    if ts[0].numel() == 0:
        raise ValueError("dpo_loss needs at least one (chosen, rejected) pair")
    beta = _positive(beta, "beta")
    pc, pr, rc, rr = ts
    chosen_logratios, rejected_logratios = pc - rc, pr - rr
    logits = beta * (chosen_logratios - rejected_logratios)
    loss = -F.logsigmoid(logits).mean()
    return loss, (beta * chosen_logratios).detach(), (beta * rejected_logratios).detach()


# --------------------------------------------------------------------------- GRPO

def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True,
                     eps: float = ADVANTAGE_EPS) -> torch.Tensor:
    """GRPO's advantages: each reward minus its group's mean, divided by the group's std.

    ``rewards`` [N*G]: G = ``group_size`` completions of each of N prompts, consecutive
    (``[p0c0, p0c1, …, p1c0, …]``) -> [N*G]: ``(r − mean_group) / (std_group + eps)`` with the
    sample std (Bessel's n−1, like ``torch.std``) and ``eps = 1e-4``, exactly as TRL 1.16
    (``scale_rewards="group"``); ``scale=False`` keeps ``r − mean_group`` (Dr. GRPO,
    ``scale_rewards="none"``). A group whose completions all got the same reward gets
    advantage 0: it teaches nothing.

    Defined in chapter 12, Post-training.
    """
    rewards = _tensor(rewards, "rewards", 1, floating=True)
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 2:
        raise ValueError(f"group_size must be an int >= 2 (a group needs several completions to compare), "
                         f"got {group_size!r}")
    if rewards.numel() == 0 or rewards.numel() % group_size != 0:
        raise ValueError(f"rewards has {rewards.numel()} values, not a positive multiple of group_size={group_size}")
    if not bool(torch.isfinite(rewards).all()):
        raise ValueError("rewards must be finite (a reward function returned inf)")
    eps = _positive(eps, "eps", allow_zero=True)
    _flag(scale, "scale")
    grouped = rewards.view(-1, group_size)                                     # [N, G]
    mean = grouped.mean(dim=1, keepdim=True)
    adv = grouped - mean
    if scale:
        adv = adv / (grouped.std(dim=1, keepdim=True) + eps)                   # unbiased std, as TRL's nanstd
    return adv.reshape(-1)


def kl_k3(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token estimate of KL(π ‖ π_ref) from sampled tokens (Schulman's "k3").

    ``logps``, ``ref_logps`` [B, T] (log π and log π_ref of the same sampled tokens) -> [B, T]:
    ``exp(ref − logp) − (ref − logp) − 1``, which is ≥ 0 for every token and whose mean over
    tokens sampled from π is an unbiased estimate of the KL.

    Defined in chapter 12, Post-training.
    """
    logps = _tensor(logps, "logps", 2, floating=True)
    ref_logps = _tensor(ref_logps, "ref_logps", 2, floating=True)
    _same_shape(logps, "logps", ref_logps, "ref_logps")
    d = ref_logps - logps
    return torch.exp(d) - d - 1


def grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor,
              completion_mask: torch.Tensor, *, epsilon: float = 0.2, epsilon_high: float | None = None,
              beta: float = 0.0, ref_logps: torch.Tensor | None = None, loss_type: str = "dapo",
              num_tokens: int | float | torch.Tensor | None = None, max_completion_length: int | None = None,
              kl_importance_weighted: bool = True) -> torch.Tensor:
    """GRPO's clipped surrogate objective (negated, to minimise), as TRL 1.16's GRPOTrainer computes it.

    ``logps`` [B, C]: log π_θ of the sampled completion tokens (with gradient);
    ``old_logps`` [B, C]: log π of the policy that sampled them (no gradient; with one
    optimisation step per generation it is ``logps.detach()``, so the ratio is 1 and the clip is
    inactive); ``advantages`` [B] (:func:`group_advantages`); ``completion_mask`` [B, C].
    Per token, with ratio ρ = exp(logps − old_logps)::

        loss_t = −min(ρ·A, clip(ρ, 1 − epsilon, 1 + epsilon_high)·A) + beta·KL_t

    where KL_t = :func:`kl_k3` (logps, ref_logps), multiplied by ρ when
    ``kl_importance_weighted`` (TRL's ``use_bias_correction_kl=True`` default: the same value
    on-policy, the unbiased gradient off-policy). ``epsilon_high`` defaults to ``epsilon``.
    Aggregation over the masked tokens (``loss_type``):

    * ``"dapo"`` (TRL's default): sum over all tokens of the batch / ``num_tokens`` (the count of
      completion tokens of the whole generation batch; default: this batch's count);
    * ``"bnpo"``: sum / this batch's token count;
    * ``"grpo"``: each sequence's mean over its tokens, then the mean over sequences (the
      original GRPO; short answers weigh more per token);
    * ``"dr_grpo"``: sum / (B · ``max_completion_length``, default C).

    Returns a scalar.

    Defined in chapter 12, Post-training.
    """
    logps = _tensor(logps, "logps", 2, floating=True)
    old_logps = _tensor(old_logps, "old_logps", 2, floating=True)
    _same_shape(logps, "logps", old_logps, "old_logps")
    advantages = _tensor(advantages, "advantages", 1, floating=True)
    B, C = logps.shape
    if advantages.shape != (B,):
        raise ValueError(f"advantages must have shape [B] = ({B},), got {tuple(advantages.shape)}")
    mask = _mask(completion_mask, "completion_mask", logps.shape)
    if not isinstance(loss_type, str) or loss_type not in GRPO_LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {GRPO_LOSS_TYPES}, got {loss_type!r}")
    eps_low = _positive(epsilon, "epsilon")
    eps_high = eps_low if epsilon_high is None else _positive(epsilon_high, "epsilon_high")
    beta = _positive(beta, "beta", allow_zero=True)
    _flag(kl_importance_weighted, "kl_importance_weighted")
    if beta > 0:
        if ref_logps is None:
            raise ValueError("beta > 0 needs ref_logps [B, C], the reference model's log-probabilities")
        ref_logps = _tensor(ref_logps, "ref_logps", 2, floating=True)
        _same_shape(logps, "logps", ref_logps, "ref_logps")

    A = advantages.unsqueeze(1)                                                 # [B, 1]
    ratio = torch.exp(logps - old_logps)                                        # [B, C]
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    per_token = -torch.min(ratio * A, clipped * A)                              # [B, C]
    if beta > 0:
        kl = kl_k3(logps, ref_logps)
        if kl_importance_weighted:
            kl = kl * ratio
        per_token = per_token + beta * kl

    if loss_type == "grpo":
        return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "bnpo":
        return (per_token * mask).sum() / mask.sum().clamp(min=1.0)
    if loss_type == "dr_grpo":
        L = C if max_completion_length is None else max_completion_length
        if isinstance(L, bool) or not isinstance(L, int) or L < 1:
            raise ValueError(f"max_completion_length must be a positive int, got {max_completion_length!r}")
        return (per_token * mask).sum() / (B * L)
    # dapo
    if num_tokens is None:
        denom = mask.sum().clamp(min=1.0)
    else:
        denom = torch.tensor(max(_count(num_tokens, "num_tokens"), 1.0), device=logps.device)
    return (per_token * mask).sum() / denom


__all__ = ["IGNORE_INDEX", "GRPO_LOSS_TYPES", "ADVANTAGE_EPS", "token_logprobs", "shifted_logprobs",
           "model_logprobs", "completion_logprobs", "sequence_logprobs", "sft_loss", "dpo_loss",
           "group_advantages", "kl_k3", "grpo_loss"]
