"""The course's own pretrained models, trained here and cached for later chapters.

* a character-level GPT on Shakespeare (causal LM) -- chapters 6 and 9 generate with it;
* a tiny character-level Chinese BERT on People's Daily (masked LM) -- chapter 7 fine-tunes it.

``load_or_pretrain_*(profile)`` loads ``<data dir>/models/<name>-<profile>/`` when a finished
copy is there, and otherwise trains one with the profile's recipe (a progress bar shows) and
saves it (written to a temporary folder and renamed into place, so two notebooks that train at
once never leave a half-written model). Recipes are plain data: :data:`CHAR_GPT_RECIPES`,
:data:`ZH_BERT_RECIPES`.

Defined in chapter 5, Pretraining.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .model_cache import DONE_FILE, is_complete, is_current, model_dir, models_dir, recipe_record
from .model_cache import publish as _publish
from .profiles import get_profile
from .tokenization import CharTokenizer
from .train import TrainConfig, TrainEvent, Trainer
from .train_data import RandomBlockSampler, tokenize_dataset
from .zh_mlm import (MLM_PROB, ZH_SPECIALS, MLMBlockSampler, build_zh_char_tokenizer, lines_to_ids, load_zh_tokenizer,
                     zh_corpus_ids)

CHAR_GPT_NAME = "char-gpt-shakespeare"
ZH_BERT_NAME = "zh-bert-peoples-daily"


@dataclass(frozen=True)
class Recipe:
    """Model sizes and training settings of one profile (``train`` feeds :class:`TrainConfig`)."""

    model: dict[str, Any]
    train: dict[str, Any]
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def train_config(self, **overrides: Any) -> TrainConfig:
        return TrainConfig(**{**self.train, **overrides})


# nanoGPT's CPU run (4 layers, 128 wide, block 64, batch 12, lr 1e-3, 2000 steps) reaches ~1.88 on
# Tiny Shakespeare. Our corpus is 4x larger and validation is two unseen plays; the same model with
# batch 12, a peak lr of 2e-3 (warm-up + cosine) and 2500 steps reached 1.745 here in 2 min 51 s
# (fp32, 2 cores). With bf16 where the CPU has it (~1.3x at this width once attention runs in fp32,
# docs/RESULTS.md §6) the 5-minute budget buys more: batch 32, lr 3e-3 and 3400 steps (about 4.6 min
# on an idle 2-core machine) reached 1.58-1.59; 4x192 for 2000 steps in the same time, 1.627.
# The gpu recipe (nanoGPT's shakespeare-char model) reached 1.375 in 2.9 min on one H100
# (bf16 autocast, 2026-11-24).
CHAR_GPT_RECIPES: dict[str, Recipe] = {
    "ci": Recipe(model=dict(n_layer=2, n_head=2, n_embd=64, block_size=32, dropout=0.0),
                 train=dict(max_steps=60, lr=3e-3, warmup_steps=10, batch_size=8, eval_interval=20,
                            eval_iters=4, weight_decay=0.1, grad_clip=1.0),
                 extra=dict(max_rows=3000)),  # a slice of the plays keeps CI fast
    "laptop": Recipe(model=dict(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0),
                     train=dict(max_steps=3400, lr=3e-3, warmup_steps=100, batch_size=32, eval_interval=425,
                                eval_iters=20, weight_decay=0.1, grad_clip=1.0),
                     extra=dict(max_rows=None)),
    "gpu": Recipe(model=dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2),
                  train=dict(max_steps=5000, lr=1e-3, warmup_steps=200, batch_size=64, eval_interval=250,
                             eval_iters=50, weight_decay=0.1, grad_clip=1.0, keep_best=True),
                  extra=dict(max_rows=None)),
}

# Two changes from the original BERT make a small masked LM learn in minutes (measured here,
# laptop recipe, validation loss at 1000 steps; predicting characters by frequency alone gives
# 6.54 nats, ``zh_mlm.unigram_loss``):
# * pre-LN (``pre_ln=True``): post-LN sat on the frequency-only plateau (6.53 nats) all run long;
# * rotary positions (``position_embedding_type="rope"``): to predict a masked character the
#   model must look at its neighbours, and with learned absolute positions it has to discover
#   "the position next to mine" for all 128 positions separately. Pre-LN with learned positions
#   reached 5.98 nats; with RoPE, where attention sees offsets, 4.02 (same steps and time).
# For a short run, no dropout and 40 % of the characters predicted (``mlm_prob``; Wettig et al.
# 2022) learn more per step; the head runs on the predicted positions only. Validation always
# masks the standard 15 %, so losses compare across recipes.
# gpu recipe, one H100, bf16 (2026-11-24): about 30 ms per step; 5000 steps reach 2.01 nats in
# 2.7 min. A 10,000-step schedule was at 1.90 after 7000 steps (3.6 min) and still falling
# slowly; the chapter stops at 5000 to keep its gpu run near 7 minutes (a T4 is several times
# slower than an H100).
# laptop: 1000 steps took 3.4 min in fp32; with bf16 autocast (attention in fp32, docs/RESULTS.md
# §6) they take 1.6 min, so the laptop recipe spends the same wall time on 2000 steps.
ZH_BERT_RECIPES: dict[str, Recipe] = {
    "ci": Recipe(model=dict(n_layer=2, n_head=2, n_embd=64, intermediate_size=128, max_position_embeddings=64,
                            dropout=0.0, pre_ln=True, position_embedding_type="rope"),
                 train=dict(max_steps=40, lr=2e-3, warmup_steps=5, batch_size=8, eval_interval=20, eval_iters=4,
                            weight_decay=0.01, grad_clip=1.0),
                 extra=dict(seq_len=64, min_freq=1, max_lines=1500, mlm_prob=0.4)),
    "laptop": Recipe(model=dict(n_layer=4, n_head=4, n_embd=128, intermediate_size=512, max_position_embeddings=128,
                                dropout=0.0, pre_ln=True, position_embedding_type="rope"),
                     train=dict(max_steps=2000, lr=2e-3, warmup_steps=50, batch_size=16, eval_interval=250,
                                eval_iters=5, weight_decay=0.01, grad_clip=1.0),
                     extra=dict(seq_len=128, min_freq=2, max_lines=None, mlm_prob=0.4)),
    "gpu": Recipe(model=dict(n_layer=6, n_head=8, n_embd=512, intermediate_size=2048, max_position_embeddings=128,
                             dropout=0.1, pre_ln=True, position_embedding_type="rope"),
                  train=dict(max_steps=5000, lr=5e-4, warmup_steps=250, batch_size=128, eval_interval=500,
                             eval_iters=20, weight_decay=0.01, grad_clip=1.0),
                  extra=dict(seq_len=128, min_freq=2, max_lines=None, mlm_prob=0.15)),
}


# ------------------------------------------------------------------------------ char GPT
def _save_model_into(model: Any, folder: Path) -> None:
    """``model.save_pretrained`` into an existing folder (it writes a new one, so move the files up)."""
    model.save_pretrained(folder / "model")
    for name in os.listdir(folder / "model"):
        os.replace(folder / "model" / name, folder / name)
    (folder / "model").rmdir()


def _trained_folder(name: str, label: str, recipe: Recipe, profile: str | None, pretrain: Callable[..., Any],
                    save: Callable[..., Path], progress: bool) -> Path:
    """The folder of the profile's trained model ``name``; trains and saves it first if missing
    or trained with another recipe.

    ``replace=False``: if another process published a current one meanwhile, that copy is kept.
    """
    folder = model_dir(name, profile)
    if not is_current(folder, recipe):
        why = "from an older recipe" if is_complete(folder) else "no trained"
        print(f"{why} {label} in {folder}; training one ({get_profile(profile).name} profile)")
        start = time.perf_counter()
        model, tok, history = pretrain(profile, progress=progress)
        save(model, tok, profile, {"val_loss": history.get("best_val_loss", history["val_loss"][-1]),
                                   "steps": history["step"][-1],
                                   "kept_step": history.get("best_step", history["step"][-1]),
                                   "kept": history.get("kept", "the last step's weights"),
                                   "seconds": round(time.perf_counter() - start, 1)}, replace=False)
    return folder


def shakespeare_row_text(row: dict[str, Any]) -> str:
    """One speech as ``SPEAKER:\\nline\\nline\\n\\n`` (same layout as ``data.shakespeare_text``)."""
    return f"{row['speaker']}:\n{row['text']}\n\n"


def char_gpt_data(tokenizer: Any | None = None, max_rows: int | None = None) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """``(CharTokenizer, train ids [N], validation ids [M])`` for Shakespeare (only the first
    ``max_rows`` speeches of the training plays when given); the vocabulary is built from all
    training plays when no ``tokenizer`` is given."""
    from . import data

    dsd = data.load_shakespeare()
    if tokenizer is None:
        tokenizer = CharTokenizer.from_text(data.shakespeare_text("train"))
    train = dsd["train"] if max_rows is None else dsd["train"].select(range(min(max_rows, len(dsd["train"]))))
    return (tokenizer, tokenize_dataset(train, tokenizer.encode, format_row=shakespeare_row_text),
            tokenize_dataset(dsd["validation"], tokenizer.encode, format_row=shakespeare_row_text))


def pretrain_char_gpt(profile: str | None = None, *, progress: bool = True,
                      callback: Callable[[TrainEvent], None] | None = None,
                      checkpoint_dir: str | Path | None = None, device: str | None = None,
                      **train_overrides: Any) -> tuple[Any, Any, dict[str, list[float]]]:
    """Train the character-level GPT on Shakespeare with the profile's recipe.

    Returns ``(GPT, CharTokenizer, history)``; ``train_overrides`` replace recipe settings
    (e.g. ``max_steps=100``). Defined in chapter 5, Pretraining.
    """
    from .models.gpt import GPT, GPTConfig

    recipe = CHAR_GPT_RECIPES[get_profile(profile).name]
    cfg = recipe.train_config(progress=progress, log=callback, checkpoint_dir=checkpoint_dir, device=device,
                              **train_overrides)
    tok, train_ids, val_ids = char_gpt_data(max_rows=recipe.extra.get("max_rows"))
    torch.manual_seed(cfg.seed)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, **recipe.model))
    model, history = fit_causal_lm(model, cfg, train_ids, val_ids, recipe.model["block_size"])
    return model, tok, history


def fit_causal_lm(model: torch.nn.Module, cfg: TrainConfig, train_ids: torch.Tensor, val_ids: torch.Tensor,
                  block_size: int) -> tuple[Any, dict[str, list[float]]]:
    """Next-token training of ``model`` on random ``block_size`` windows of the 1-D id streams
    ``train_ids`` [N] and ``val_ids`` [M] (seeded samplers) with the course Trainer -> (the
    trained model on the CPU in eval mode, history). Shared by chapter 5's char GPT and chapter
    11's BPE Llama."""
    trainer = Trainer(model, cfg, RandomBlockSampler(train_ids, block_size, cfg.batch_size, seed=cfg.seed),
                      RandomBlockSampler(val_ids, block_size, cfg.batch_size, seed=cfg.seed + 1))
    history = trainer.fit()
    return trainer.unwrapped_model.cpu().eval(), history


def save_char_gpt(model: Any, tokenizer: Any, profile: str | None = None, meta: dict[str, Any] | None = None,
                  replace: bool = True) -> Path:
    """Publish a trained char GPT (and its tokenizer) where :func:`load_or_pretrain_char_gpt` finds
    it, replacing an earlier one unless ``replace=False``."""
    def build(tmp: Path) -> dict[str, Any]:
        _save_model_into(model, tmp)
        tokenizer.save(tmp / "tokenizer")
        return {"name": CHAR_GPT_NAME, "profile": get_profile(profile).name, "recipe": recipe_record(recipe),
                **(meta or {})}

    recipe = CHAR_GPT_RECIPES[get_profile(profile).name]
    return _publish(build, model_dir(CHAR_GPT_NAME, profile), replace, recipe)


def load_or_pretrain_char_gpt(profile: str | None = None, progress: bool = True) -> tuple[Any, Any]:
    """``(GPT, CharTokenizer)``: the saved model of this profile, trained first if missing.

    Defined in chapter 5, Pretraining.
    """
    from .models.gpt import GPT

    recipe = CHAR_GPT_RECIPES[get_profile(profile).name]
    folder = _trained_folder(CHAR_GPT_NAME, "char GPT", recipe, profile, pretrain_char_gpt, save_char_gpt, progress)
    return GPT.from_pretrained(folder).eval(), CharTokenizer.load(folder / "tokenizer")


# ------------------------------------------------------------------------------ Chinese BERT
def zh_tokenizer_for(profile: str | None = None) -> Any:
    """The Chinese character tokenizer the profile's recipe trains with."""
    ex = ZH_BERT_RECIPES[get_profile(profile).name].extra
    return build_zh_char_tokenizer(min_freq=ex["min_freq"], model_max_length=ex["seq_len"], max_lines=ex["max_lines"])


def mlm_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The masked-LM loss with the head run on the labelled positions only (same value as
    ``model(**batch).loss``, less compute): a ``loss_fn`` for :class:`Trainer`."""
    return model(**batch, labelled_only=True).loss


def fit_mlm(model: torch.nn.Module, cfg: TrainConfig, tokenizer: Any, train_ids: torch.Tensor, val_ids: torch.Tensor,
            seq_len: int, mlm_prob: float = MLM_PROB) -> tuple[Any, dict[str, list[float]]]:
    """Masked-LM training of ``model`` on 1-D id streams (validation masks the standard 15 %);
    returns ``(trained model on CPU in eval mode, history)``. Shared by chapters 5 and 7."""
    trainer = Trainer(model, cfg,
                      MLMBlockSampler(train_ids, tokenizer, seq_len, cfg.batch_size, seed=cfg.seed, mlm_prob=mlm_prob),
                      MLMBlockSampler(val_ids, tokenizer, seq_len, cfg.batch_size, seed=cfg.seed + 1), loss_fn=mlm_loss)
    history = trainer.fit()
    return trainer.unwrapped_model.cpu().eval(), history


def pretrain_zh_bert(profile: str | None = None, *, tokenizer: Any | None = None, progress: bool = True,
                     callback: Callable[[TrainEvent], None] | None = None,
                     checkpoint_dir: str | Path | None = None, device: str | None = None,
                     **train_overrides: Any) -> tuple[Any, Any, dict[str, list[float]]]:
    """Masked-LM pretraining of a tiny character-level Chinese BERT on People's Daily.

    The vocabulary comes from the People's Daily *and* Chinese-sentiment *training* splits (so
    chapter 7's reviews are mostly covered; nothing from validation/test is looked at). Text is
    packed into ``[CLS] chars... [SEP]`` blocks; the recipe's ``mlm_prob`` of the characters are
    chosen for prediction with BERT's 80/10/10 rule (``models.bert.mask_tokens``; validation
    batches always use the standard 15 %), and the MLM head runs on those positions only.
    ``tokenizer`` (default: :func:`build_zh_char_tokenizer` with the recipe's settings) saves
    rebuilding one. Returns ``(BertForMaskedLM, tokenizer, history)``. Defined in chapter 5, Pretraining.
    """
    from .models.bert import BertConfig, BertForMaskedLM

    recipe = ZH_BERT_RECIPES[get_profile(profile).name]
    cfg = recipe.train_config(progress=progress, log=callback, checkpoint_dir=checkpoint_dir, device=device,
                              **train_overrides)
    ex = recipe.extra
    tok = tokenizer if tokenizer is not None else zh_tokenizer_for(profile)
    train_ids, val_ids = zh_corpus_ids(tok, max_lines=ex["max_lines"])
    torch.manual_seed(cfg.seed)
    model = BertForMaskedLM(BertConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, **recipe.model))
    model, history = fit_mlm(model, cfg, tok, train_ids, val_ids, ex["seq_len"], ex.get("mlm_prob", MLM_PROB))
    return model, tok, history


def adapt_zh_bert(model: Any, tokenizer: Any, texts: list[str], val_texts: list[str], *, steps: int,
                  lr: float = 1e-3, batch_size: int = 16, seq_len: int | None = None, mlm_prob: float = 0.4,
                  progress: bool = True, callback: Callable[[TrainEvent], None] | None = None,
                  device: str | None = None, seed: int = 0) -> tuple[Any, dict[str, list[float]]]:
    """Continue masked-LM pretraining of ``model`` on unlabelled in-domain ``texts`` (task-adaptive
    pretraining, Gururangan et al. 2020): the same loss and 80/10/10 masking as chapter 5, on the
    task's own text, labels unused. ``val_texts`` give the validation loss (15 % masked);
    ``seq_len`` defaults to the model's ``max_position_embeddings``.

    Trains a copy; returns ``(adapted BertForMaskedLM, history)``. Defined in chapter 7, Fine-tuning.
    """
    import copy

    if not texts or not val_texts:
        raise ValueError("adapt_zh_bert needs non-empty texts and val_texts (lists of strings)")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    cfg = TrainConfig(max_steps=steps, lr=lr, warmup_steps=max(1, steps // 10), batch_size=batch_size,
                      eval_interval=max(1, steps // 4), eval_iters=4, weight_decay=0.01, grad_clip=1.0,
                      progress=progress, log=callback, device=device, seed=seed)
    ids, val_ids = lines_to_ids(tokenizer, list(texts)), lines_to_ids(tokenizer, list(val_texts))
    torch.manual_seed(seed)
    return fit_mlm(copy.deepcopy(model).train(), cfg, tokenizer, ids, val_ids,
                   seq_len or model.config.max_position_embeddings, mlm_prob)


def save_zh_bert(model: Any, tokenizer: Any, profile: str | None = None, meta: dict[str, Any] | None = None,
                 replace: bool = True) -> Path:
    """Publish a trained Chinese BERT (and tokenizer) where :func:`load_or_pretrain_zh_bert` finds
    it, replacing an earlier one unless ``replace=False``."""
    def build(tmp: Path) -> dict[str, Any]:
        _save_model_into(model, tmp)
        tokenizer.save_pretrained(str(tmp))
        return {"name": ZH_BERT_NAME, "profile": get_profile(profile).name, "specials": list(ZH_SPECIALS),
                "recipe": recipe_record(recipe), **(meta or {})}

    recipe = ZH_BERT_RECIPES[get_profile(profile).name]
    return _publish(build, model_dir(ZH_BERT_NAME, profile), replace, recipe)


def load_or_pretrain_zh_bert(profile: str | None = None, progress: bool = True) -> tuple[Any, Any]:
    """``(BertForMaskedLM, PreTrainedTokenizerFast)``: the saved model of this profile, trained
    first if missing. Chapter 7 loads the encoder from the same folder into its task models.

    Defined in chapter 5, Pretraining.
    """
    from .models.bert import BertForMaskedLM

    recipe = ZH_BERT_RECIPES[get_profile(profile).name]
    folder = _trained_folder(ZH_BERT_NAME, "Chinese BERT", recipe, profile, pretrain_zh_bert, save_zh_bert, progress)
    return BertForMaskedLM.from_pretrained(folder).eval(), load_zh_tokenizer(folder)


__all__ = [
    "CharTokenizer", "Recipe", "CHAR_GPT_RECIPES", "ZH_BERT_RECIPES", "CHAR_GPT_NAME", "ZH_BERT_NAME", "models_dir", "model_dir",
    "char_gpt_data", "fit_causal_lm", "pretrain_char_gpt", "save_char_gpt", "load_or_pretrain_char_gpt",
    "zh_tokenizer_for", "mlm_loss", "fit_mlm", "pretrain_zh_bert", "adapt_zh_bert", "recipe_record", "is_current", "save_zh_bert", "load_or_pretrain_zh_bert", "shakespeare_row_text",
]
