"""Pretraining the Llama-style decoder on Shakespeare: ablations, a byte-level BPE, bits per character.

* :func:`run_ablations` -- the chapter's controlled experiment: the course GPT (GPT-2 block) and
  the Llama block, and the Llama block with one piece swapped back (LayerNorm, learned
  positions, GELU MLP), at (nearly) equal parameter count, equal steps and equal data, over
  several seeds; :func:`summarize_ablations` gives mean ± spread per variant.
* :func:`train_shakespeare_bpe` -- a byte-level BPE tokenizer trained on the training plays (with
  chat markers ``<|im_start|>`` / ``<|im_end|>`` reserved for a later post-training chapter).
* :func:`pretrain_llama_bpe` / :func:`load_or_pretrain_llama_bpe` -- the Llama-style model
  pretrained on those subword tokens, cached per profile with :mod:`course_utils.model_cache`
  (a later chapter starts from it: ``model, tokenizer = load_or_pretrain_llama_bpe(profile)``).
* :func:`text_bits_per_char` -- held-out bits per character, the one score that compares models
  with different tokenizers: total nats of the text / ln 2 / its number of characters.

Defined in chapter 11, The modern decoder.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .generation import bits_per_char, total_nll
from .model_cache import model_dir, recipe_record
from .model_cache import publish as _publish
from .pretraining import Recipe, _save_model_into, _trained_folder, char_gpt_data, fit_causal_lm, shakespeare_row_text
from .profiles import get_profile
from .train import TrainConfig, TrainEvent, Trainer
from .train_data import RandomBlockSampler, tokenize_dataset

LLAMA_BPE_NAME = "llama-bpe-shakespeare"
#: BPE special tokens: end of text (also the BOS), padding, and two chat markers kept for post-training.
LLAMA_BPE_SPECIALS: tuple[str, ...] = ("<|endoftext|>", "<pad>", "<|im_start|>", "<|im_end|>")
VAL_SAMPLER_SEED = 1234   # every ablation run is scored on the same held-out batches

# ------------------------------------------------------------------------------ ablations
#: variant -> (label, LlamaConfig switches; None = the course GPT with its GPT-2 block).
ABLATION_VARIANTS: dict[str, tuple[str, dict[str, str] | None]] = {
    "gpt2": ("GPT-2 block (course GPT: LayerNorm+bias, learned pos., GELU)", None),
    "llama": ("Llama block (RMSNorm, RoPE, SwiGLU)", {}),
    "llama-layernorm": ("Llama, LayerNorm instead of RMSNorm", {"norm": "layer"}),
    "llama-learned-pos": ("Llama, learned positions instead of RoPE", {"pos": "learned"}),
    "llama-gelu": ("Llama, GELU MLP instead of SwiGLU", {"mlp": "gelu"}),
}

# Character level, chapter 5's data. laptop: 5 variants x 3 seeds x 400 steps of a 2-layer,
# 64-wide model (one seed, measured on a loaded 2-core machine, 2026-12-04: GPT-2 block 2.35,
# Llama 2.06, LayerNorm 2.09, learned positions 2.52, GELU 2.12 nats); gpu: nanoGPT's
# shakespeare-char size, where the gaps are clear.
ABLATION_RECIPES: dict[str, Recipe] = {
    "ci": Recipe(model=dict(n_layer=1, n_head=2, n_embd=32, block_size=32),
                 train=dict(max_steps=20, lr=3e-3, warmup_steps=4, batch_size=8, eval_interval=20, eval_iters=4,
                            weight_decay=0.1, grad_clip=1.0),
                 extra=dict(max_rows=2000, seeds=(0, 1))),
    "laptop": Recipe(model=dict(n_layer=2, n_head=4, n_embd=64, block_size=64),
                     train=dict(max_steps=400, lr=3e-3, warmup_steps=40, batch_size=16, eval_interval=400,
                                eval_iters=25, weight_decay=0.1, grad_clip=1.0),
                     extra=dict(max_rows=None, seeds=(0, 1, 2))),
    "gpu": Recipe(model=dict(n_layer=6, n_head=6, n_embd=384, block_size=256),
                  train=dict(max_steps=3000, lr=1e-3, warmup_steps=200, batch_size=64, eval_interval=3000,
                             eval_iters=50, weight_decay=0.1, grad_clip=1.0),
                  extra=dict(max_rows=None, seeds=(0, 1, 2))),
}


def swiglu_intermediate_size(n_embd: int) -> int:
    """The SwiGLU width with the parameters of a 4C GELU MLP: 3·C·I = 8·C² -> I = round(8C/3).

    Defined in chapter 11, The modern decoder."""
    if not isinstance(n_embd, int) or n_embd < 1:
        raise ValueError(f"n_embd must be a positive int, got {n_embd!r}")
    return round(8 * n_embd / 3)


def ablation_model(variant: str, vocab_size: int, n_layer: int, n_head: int, n_embd: int,
                   block_size: int) -> torch.nn.Module:
    """A fresh model of ``variant`` (a key of :data:`ABLATION_VARIANTS`) at the given size.

    Llama variants use full multi-head attention (``n_kv_heads = n_head``) so that the
    comparison is about norm, positions and MLP; the MLP width is 4C for GELU and 8C/3 for
    SwiGLU (equal parameters). Defined in chapter 11, The modern decoder.
    """
    from .models.gpt import GPT, GPTConfig
    from .models.llama import LlamaConfig, LlamaForCausalLM

    if variant not in ABLATION_VARIANTS:
        raise ValueError(f"variant must be one of {list(ABLATION_VARIANTS)}, got {variant!r}")
    switches = ABLATION_VARIANTS[variant][1]
    if switches is None:
        return GPT(GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=n_head,
                             n_embd=n_embd, bias=True))
    mlp = switches.get("mlp", "swiglu")
    inter = 4 * n_embd if mlp == "gelu" else swiglu_intermediate_size(n_embd)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer,
                                        n_head=n_head, n_kv_heads=n_head, n_embd=n_embd, intermediate_size=inter,
                                        rope_theta=10000.0, **switches))


def count_params(model: torch.nn.Module) -> int:
    """All parameters, tied weights once (position tables included)."""
    return sum(p.numel() for p in model.parameters())


def run_ablation(variant: str, seed: int, data: tuple[Any, torch.Tensor, torch.Tensor],
                 profile: str | None = None, device: str | None = None, **train_overrides: Any) -> dict[str, Any]:
    """Train one variant with one seed on ``data`` = ``(tokenizer, train ids, val ids)`` (from
    ``pretraining.char_gpt_data``); returns ``{variant, seed, params, val_loss, seconds}``.

    The seed sets the initial weights and the training batches; the held-out batches are the
    same for every run. Defined in chapter 11, The modern decoder.
    """
    recipe = ABLATION_RECIPES[get_profile(profile).name]
    tok, train_ids, val_ids = data
    m = recipe.model
    cfg = recipe.train_config(progress=False, seed=seed, device=device, **train_overrides)
    torch.manual_seed(seed)
    model = ablation_model(variant, tok.vocab_size, m["n_layer"], m["n_head"], m["n_embd"], m["block_size"])
    T = m["block_size"]
    trainer = Trainer(model, cfg, RandomBlockSampler(train_ids, T, cfg.batch_size, seed=seed),
                      RandomBlockSampler(val_ids, T, cfg.batch_size, seed=VAL_SAMPLER_SEED))
    start = time.perf_counter()
    history = trainer.fit()
    return {"variant": variant, "seed": seed, "params": count_params(model), "val_loss": history["val_loss"][-1],
            "seconds": round(time.perf_counter() - start, 1)}


def run_ablations(variants: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
                  profile: str | None = None, progress: bool = True, device: str | None = None,
                  **train_overrides: Any):
    """Every variant x every seed (default: all of :data:`ABLATION_VARIANTS`, the recipe's seeds)
    -> a pandas DataFrame with one row per run. Defined in chapter 11, The modern decoder."""
    import pandas as pd
    from tqdm.auto import tqdm

    recipe = ABLATION_RECIPES[get_profile(profile).name]
    variants = list(ABLATION_VARIANTS) if variants is None else list(variants)
    seeds = list(recipe.extra["seeds"]) if seeds is None else list(seeds)
    if not variants or not seeds:
        raise ValueError("need at least one variant and one seed")
    data = char_gpt_data(max_rows=recipe.extra.get("max_rows"))
    runs = [(v, s) for s in seeds for v in variants]
    rows = []
    for v, s in tqdm(runs, desc="ablation runs", disable=not progress):
        rows.append(run_ablation(v, s, data, profile, device, **train_overrides))
    df = pd.DataFrame(rows)
    df.insert(1, "label", df["variant"].map(lambda v: ABLATION_VARIANTS[v][0]))
    return df


def summarize_ablations(runs: Any, reference: str = "llama"):
    """Per variant: parameters, mean held-out loss, its spread (std over seeds; min and max) and
    the difference from ``reference``'s mean. Defined in chapter 11, The modern decoder."""
    g = runs.groupby("variant", sort=False)
    out = g.agg(label=("label", "first"), params=("params", "first"), seeds=("seed", "count"),
                mean=("val_loss", "mean"), std=("val_loss", "std"), min=("val_loss", "min"),
                max=("val_loss", "max"))
    out["std"] = out["std"].fillna(0.0)
    if reference in out.index:
        out[f"vs {reference}"] = out["mean"] - out.loc[reference, "mean"]
    return out


# ------------------------------------------------------------------------------ BPE tokens
LLAMA_BPE_RECIPES: dict[str, Recipe] = {
    "ci": Recipe(model=dict(n_layer=2, n_head=2, n_kv_heads=1, n_embd=64, intermediate_size=172, block_size=32,
                            rope_theta=10000.0, dropout=0.0),
                 train=dict(max_steps=60, lr=3e-3, warmup_steps=10, batch_size=8, eval_interval=30, eval_iters=4,
                            weight_decay=0.1, grad_clip=1.0),
                 extra=dict(vocab_size=512, max_rows=3000)),
    "laptop": Recipe(model=dict(n_layer=4, n_head=4, n_kv_heads=2, n_embd=128, intermediate_size=344, block_size=64,
                                rope_theta=10000.0, dropout=0.0),
                     train=dict(max_steps=1200, lr=2e-3, warmup_steps=100, batch_size=12, eval_interval=300,
                                eval_iters=20, weight_decay=0.1, grad_clip=1.0),
                     extra=dict(vocab_size=2048, max_rows=None)),
    "gpu": Recipe(model=dict(n_layer=6, n_head=6, n_kv_heads=2, n_embd=384, intermediate_size=1024, block_size=256,
                             rope_theta=10000.0, dropout=0.2),
                  train=dict(max_steps=5000, lr=1e-3, warmup_steps=200, batch_size=64, eval_interval=500,
                             eval_iters=50, weight_decay=0.1, grad_clip=1.0),
                  extra=dict(vocab_size=4096, max_rows=None)),
}


def speech_rows(split: str = "train", max_rows: int | None = None):
    """The speeches of a Shakespeare split (``datasets.Dataset``), only the first ``max_rows`` when given."""
    from . import data

    rows = data.load_shakespeare()[split]
    return rows if max_rows is None else rows.select(range(min(max_rows, len(rows))))


def train_shakespeare_bpe(vocab_size: int = 2048, max_rows: int | None = None, model_max_length: int = 1_000_000):
    """A byte-level BPE (chapter 2's ``tokenization.train_bpe``) trained on the training plays'
    speeches, wrapped as a transformers tokenizer (bos = eos = ``<|endoftext|>``, pad ``<pad>``,
    ``<|im_start|>``/``<|im_end|>`` reserved). Defined in chapter 11, The modern decoder."""
    from .tokenization import to_fast_tokenizer, train_bpe

    texts = [shakespeare_row_text(r) for r in speech_rows("train", max_rows)]
    tok = train_bpe(texts, vocab_size, special_tokens=LLAMA_BPE_SPECIALS)
    return to_fast_tokenizer(tok, model_max_length=model_max_length, pad_token="<pad>")


def encode_plain(tokenizer: Any) -> Callable[[str], list[int]]:
    """``text -> ids`` without special tokens, for a transformers tokenizer or a CharTokenizer."""
    if hasattr(tokenizer, "stoi"):
        return tokenizer.encode
    return lambda text: tokenizer.encode(text, add_special_tokens=False)


def llama_bpe_data(tokenizer: Any, max_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(train ids [N], validation ids [M]) of the plays in ``tokenizer``'s tokens, speeches laid
    out as in chapter 5. Defined in chapter 11, The modern decoder."""
    enc = encode_plain(tokenizer)
    return (tokenize_dataset(speech_rows("train", max_rows), enc, format_row=shakespeare_row_text),
            tokenize_dataset(speech_rows("validation"), enc, format_row=shakespeare_row_text))


def pretrain_llama_bpe(profile: str | None = None, *, tokenizer: Any | None = None, progress: bool = True,
                       callback: Callable[[TrainEvent], None] | None = None,
                       checkpoint_dir: str | Path | None = None, device: str | None = None,
                       **train_overrides: Any) -> tuple[Any, Any, dict[str, list[float]]]:
    """Train the profile's BPE tokenizer (unless given) and the Llama-style model on its tokens.

    Returns ``(LlamaForCausalLM, tokenizer, history)``. Defined in chapter 11, The modern decoder.
    """
    from .models.llama import LlamaConfig, LlamaForCausalLM

    recipe = LLAMA_BPE_RECIPES[get_profile(profile).name]
    ex = recipe.extra
    cfg = recipe.train_config(progress=progress, log=callback, checkpoint_dir=checkpoint_dir, device=device,
                              **train_overrides)
    tok = tokenizer if tokenizer is not None else train_shakespeare_bpe(ex["vocab_size"], ex["max_rows"])
    train_ids, val_ids = llama_bpe_data(tok, ex["max_rows"])
    torch.manual_seed(cfg.seed)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), **recipe.model))
    model, history = fit_causal_lm(model, cfg, train_ids, val_ids, recipe.model["block_size"])
    return model, tok, history


def save_llama_bpe(model: Any, tokenizer: Any, profile: str | None = None, meta: dict[str, Any] | None = None,
                   replace: bool = True) -> Path:
    """Publish a trained BPE Llama (weights, config, tokenizer in ``tokenizer/``) where
    :func:`load_or_pretrain_llama_bpe` finds it."""
    recipe = LLAMA_BPE_RECIPES[get_profile(profile).name]

    def build(tmp: Path) -> dict[str, Any]:
        _save_model_into(model, tmp)
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
        return {"name": LLAMA_BPE_NAME, "profile": get_profile(profile).name, "recipe": recipe_record(recipe),
                **(meta or {})}

    return _publish(build, model_dir(LLAMA_BPE_NAME, profile), replace, recipe)


def load_or_pretrain_llama_bpe(profile: str | None = None, progress: bool = True) -> tuple[Any, Any]:
    """``(LlamaForCausalLM, PreTrainedTokenizerFast)``: the profile's Llama-style model pretrained on
    Shakespeare's BPE tokens, trained first (and cached) if missing or from an older recipe.

    Defined in chapter 11, The modern decoder."""
    from transformers import PreTrainedTokenizerFast

    from .models.llama import LlamaForCausalLM

    recipe = LLAMA_BPE_RECIPES[get_profile(profile).name]
    folder = _trained_folder(LLAMA_BPE_NAME, "BPE Llama", recipe, profile, pretrain_llama_bpe, save_llama_bpe,
                             progress)
    return (LlamaForCausalLM.from_pretrained(folder).eval(),
            PreTrainedTokenizerFast.from_pretrained(str(folder / "tokenizer")))


# ------------------------------------------------------------------------------ bits per character
def heldout_text(n_chars: int | None = None) -> str:
    """The first ``n_chars`` characters of the validation plays (macbeth, twelfth-night), laid out
    as in training: the text every model of the chapter is scored on."""
    from . import data

    text = data.shakespeare_text("validation")
    if n_chars is not None:
        if not isinstance(n_chars, int) or n_chars < 1:
            raise ValueError(f"n_chars must be a positive int or None, got {n_chars!r}")
        text = text[:n_chars]
    return text


def logits_fn_of(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``window [1, L] -> logits [1, L, V]`` for the course models and transformers models."""
    device = next(model.parameters()).device

    @torch.no_grad()
    def fn(window: torch.Tensor) -> torch.Tensor:
        out = model(window.to(device))
        return out.logits if hasattr(out, "logits") else out[0]

    return fn


def text_bits_per_char(model: torch.nn.Module, tokenizer: Any, text: str, context: int,
                       stride: int | None = None, prefix: str = "\n") -> float:
    """Bits per character of ``text`` under ``model``: total nats of all its tokens / ln 2 / len(text).

    The text is encoded after a one-token ``prefix`` that is given but not scored, so every
    character of ``text`` is predicted, whatever the tokenizer (``encode(prefix) + encode(text)``
    is one valid tokenization of the two). Windows of ``context`` tokens slide by ``stride``
    (chapter 6's ``total_nll``). Defined in chapter 11, The modern decoder.
    """
    if not isinstance(text, str) or not text:
        raise ValueError("text must be a non-empty string")
    enc = encode_plain(tokenizer)
    first = enc(prefix)
    if len(first) != 1:
        raise ValueError(f"prefix {prefix!r} must encode to exactly one token, got {len(first)}")
    ids = first + enc(text)
    nats, _ = total_nll(logits_fn_of(model.eval()), ids, context, stride)
    return bits_per_char(nats, len(text))


__all__ = ["LLAMA_BPE_NAME", "LLAMA_BPE_SPECIALS", "ABLATION_VARIANTS", "ABLATION_RECIPES", "LLAMA_BPE_RECIPES",
           "swiglu_intermediate_size", "ablation_model", "count_params", "run_ablation", "run_ablations",
           "summarize_ablations", "speech_rows", "train_shakespeare_bpe", "encode_plain", "llama_bpe_data", "pretrain_llama_bpe",
           "save_llama_bpe", "load_or_pretrain_llama_bpe", "heldout_text", "logits_fn_of", "text_bits_per_char"]
