"""Move the course GPT's weights into transformers' ``GPT2LMHeadModel`` and back.

The course GPT uses GPT-2's layout and names, so the mapping is one to one except that GPT-2
stores its projections as ``Conv1D`` layers whose weight is ``[in, out]`` (the transpose of
``nn.Linear``'s ``[out, in]``). Once converted, the course's model works with everything in the
transformers ecosystem (``generate``, pipelines, PEFT, ``save_pretrained``) — no download needed.

Defined in chapter 4, The Transformer.
"""
from __future__ import annotations

from typing import Any

import torch

from .models.gpt import GPT, GPTConfig

# Projections stored as Conv1D in GPT-2 (weight [in, out]) and as nn.Linear in the course GPT.
_CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def gpt_config_to_hf(config: GPTConfig, **overrides: Any):
    """A ``transformers.GPT2Config`` with the same sizes as ``config`` (GELU tanh, LN eps 1e-5)."""
    from transformers import GPT2Config

    if not isinstance(config, GPTConfig):
        raise TypeError(f"expected a GPTConfig, got {type(config).__name__}")
    kw: dict[str, Any] = dict(
        vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd,
        n_layer=config.n_layer, n_head=config.n_head, n_inner=None, activation_function="gelu_new",
        resid_pdrop=config.dropout, embd_pdrop=config.dropout, attn_pdrop=config.dropout,
        layer_norm_epsilon=1e-5, tie_word_embeddings=True, scale_attn_weights=True,
        bos_token_id=None, eos_token_id=None,
    )
    kw.update(overrides)
    return GPT2Config(**kw)


@torch.no_grad()
def gpt_to_hf(model: GPT, **config_overrides: Any):
    """Copy a course :class:`~course_utils.models.gpt.GPT` into a new ``GPT2LMHeadModel``.

    Linear weights are transposed into Conv1D layout; a model built with ``bias=False`` gets
    zero biases (the same function). The result is in eval mode, on the CPU, in float32.
    ``config_overrides`` go to ``GPT2Config`` (e.g. ``attn_implementation="eager"``).
    """
    from transformers import GPT2LMHeadModel

    if not isinstance(model, GPT):
        raise TypeError(f"gpt_to_hf expects a course_utils GPT, got {type(model).__name__}")
    attn_impl = config_overrides.pop("attn_implementation", None)
    hf_cfg = gpt_config_to_hf(model.config, **config_overrides)
    if attn_impl is not None:
        hf_cfg._attn_implementation = attn_impl
    hf = GPT2LMHeadModel(hf_cfg)
    ours = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    new_state = {}
    for key, target in hf.state_dict().items():
        if key in ours:
            t = ours[key]
            new_state[key] = t.t().contiguous() if key.endswith(_CONV1D_SUFFIXES) else t
        elif key.endswith(".bias"):  # bias=False in the course model: a zero bias is the same layer
            new_state[key] = torch.zeros_like(target)
        elif key.endswith(".attn.bias") or key.endswith(".attn.masked_bias"):  # old causal-mask buffers
            new_state[key] = target
        else:
            raise KeyError(f"no course-GPT weight for GPT-2 parameter {key!r}")
        if new_state[key].shape != target.shape:
            raise ValueError(f"shape mismatch for {key}: {tuple(new_state[key].shape)} vs {tuple(target.shape)}")
    hf.load_state_dict(new_state, strict=True)
    hf.tie_weights()
    return hf.eval()


@torch.no_grad()
def hf_to_gpt(hf_model) -> GPT:
    """Copy a transformers ``GPT2LMHeadModel`` into a course :class:`GPT` (eval mode, CPU).

    Checks that the GPT-2 config is one the course GPT computes exactly (GELU tanh, 4x MLP,
    LayerNorm eps 1e-5, tied embeddings, scaled attention) and raises a ``ValueError`` naming
    the setting that differs otherwise.
    """
    from transformers import GPT2LMHeadModel

    if not isinstance(hf_model, GPT2LMHeadModel):
        raise TypeError(f"hf_to_gpt expects a transformers GPT2LMHeadModel, got {type(hf_model).__name__}")
    c = hf_model.config
    problems = []
    if c.activation_function not in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        problems.append(f"activation_function={c.activation_function!r} (need a tanh-approximate GELU)")
    if c.n_inner not in (None, 4 * c.n_embd):
        problems.append(f"n_inner={c.n_inner} (need 4 * n_embd)")
    if abs(c.layer_norm_epsilon - 1e-5) > 1e-12:
        problems.append(f"layer_norm_epsilon={c.layer_norm_epsilon} (need 1e-5)")
    if not getattr(c, "tie_word_embeddings", True):
        problems.append("tie_word_embeddings=False (the course GPT ties them)")
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if getattr(c, flag, False):
            problems.append(f"{flag}=True")
    if not getattr(c, "scale_attn_weights", True):
        problems.append("scale_attn_weights=False")
    if problems:
        raise ValueError("this GPT-2 config cannot be mapped exactly onto the course GPT: " + "; ".join(problems))
    cfg = GPTConfig(vocab_size=c.vocab_size, block_size=c.n_positions, n_layer=c.n_layer,
                    n_head=c.n_head, n_embd=c.n_embd, dropout=float(c.resid_pdrop), bias=True)
    model = GPT(cfg)
    theirs = {k: v.detach().float().cpu() for k, v in hf_model.state_dict().items()}
    new_state = {}
    for key in model.state_dict():
        if key not in theirs:
            raise KeyError(f"GPT-2 checkpoint has no weight {key!r}")
        t = theirs[key]
        new_state[key] = t.t().contiguous() if key.endswith(_CONV1D_SUFFIXES) else t
    model.load_state_dict(new_state, strict=True)
    model.lm_head.weight = model.transformer.wte.weight  # keep the tie after loading
    return model.eval()


__all__ = ["gpt_config_to_hf", "gpt_to_hf", "hf_to_gpt"]
