"""Fine-tuning: from a pretrained encoder or decoder to a model for one task.

* Text classification and token classification (NER) with the course's own BERT, on the
  chapter-5 training loop (:class:`course_utils.train.Trainer`): :func:`encode_classification`,
  :func:`encode_ner`, :class:`FeatureSampler`, :func:`finetune`, :func:`predict`;
* sub-token label alignment for NER (:func:`align_labels`, :func:`word_predictions`): the first
  sub-token of a word carries its label, the others get -100 (ignored by the loss);
* English tweet sentiment with MiniLM and transformers' ``Trainer``: :func:`finetune_tweet_classifier`,
  :func:`load_or_finetune_tweet_classifier` (cached under ``<data dir>/models/minilm-tweets-<profile>/``);
* LoRA helpers: :func:`count_parameters`, :func:`lm_blocks`, :func:`block_perplexity`, :func:`max_abs_logit_diff`.

Defined in chapter 7, Fine-tuning.
"""
from __future__ import annotations

import math
import numbers
import random
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

IGNORE_INDEX = -100
TWEET_MODEL_NAME = "minilm-tweets"
# transformers.Trainer settings per profile (MiniLM, 22M parameters, max 64 tokens per tweet).
TWEET_RECIPES: dict[str, dict[str, Any]] = {
    "ci": dict(train_examples=96, eval_examples=64, max_steps=6, batch_size=8, lr=1e-4, max_length=32),
    # laptop: 4,000 tweets and 200 steps gave test accuracy 0.72-0.73 against 0.704 for TF-IDF on the same
    # tweets; twice the tweets and steps give 0.781 against 0.721, for about a minute more (2026-12-03).
    "laptop": dict(train_examples=8000, eval_examples=1000, max_steps=400, batch_size=16, lr=8e-5, max_length=48),
    "gpu": dict(train_examples=None, eval_examples=None, max_steps=3000, batch_size=64, lr=5e-5, max_length=96),
}


# ------------------------------------------------------------------------------ encoding
def align_labels(word_ids: Sequence[int | None], word_labels: Sequence[int],
                 label_all_subtokens: bool = False) -> list[int]:
    """Token-level labels from word-level labels, given each token's word index.

    ``word_ids[t]`` is the word token ``t`` came from (``None`` for ``[CLS]``, ``[SEP]``,
    padding). Special tokens get -100; the first sub-token of a word gets the word's label; later
    sub-tokens get -100 (or the same label with ``label_all_subtokens=True``).
    Defined in chapter 7, Fine-tuning.
    """
    if hasattr(word_labels, "tolist"):
        word_labels = word_labels.tolist()
    if isinstance(word_labels, (str, bytes)) or not isinstance(word_labels, Sequence) or any(
            isinstance(y, bool) or not isinstance(y, numbers.Integral) or y < 0 for y in word_labels):
        raise TypeError(f"word_labels must be a list of int label ids >= 0 (one per word), got {word_labels!r:.80}")
    labels: list[int] = []
    previous = None
    for w in word_ids:
        if w is None:
            labels.append(IGNORE_INDEX)
        elif not 0 <= w < len(word_labels):
            raise ValueError(f"word_ids holds word id {w}, out of range for the {len(word_labels)} word_labels")
        elif w != previous:
            labels.append(int(word_labels[w]))
        else:
            labels.append(int(word_labels[w]) if label_all_subtokens else IGNORE_INDEX)
        previous = w
    return labels


def word_predictions(word_ids: Sequence[int | None], token_preds: Sequence[int], n_words: int,
                     fill: int = 0) -> list[int]:
    """Word-level predictions: each word takes the prediction at its first sub-token; words with
    no token (cut by truncation) get ``fill`` (label 0, ``O``). Defined in chapter 7, Fine-tuning."""
    if len(word_ids) != len(token_preds):
        raise ValueError(f"word_ids ({len(word_ids)}) and token_preds ({len(token_preds)}) differ in length")
    out = [fill] * n_words
    seen: set[int] = set()
    for w, p in zip(word_ids, token_preds):
        if w is not None and w not in seen and w < n_words:
            out[w] = int(p)
            seen.add(w)
    return out


def encode_classification(tokenizer: Any, texts: Sequence[str], labels: Sequence[int],
                          max_length: int = 128) -> list[dict[str, list[int]]]:
    """One feature ``{"input_ids", "labels"}`` per text (truncated to ``max_length`` tokens)."""
    if isinstance(texts, str) or len(texts) != len(labels):
        raise ValueError("texts must be a list of strings with one label each")
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    return [{"input_ids": ids, "labels": int(y)} for ids, y in zip(enc, labels)]


def encode_ner(tokenizer: Any, tokens: Sequence[Sequence[str]], tags: Sequence[Sequence[int]],
               max_length: int = 128) -> list[dict[str, Any]]:
    """One feature per sentence: ``input_ids``, aligned ``labels`` (see :func:`align_labels`) and
    ``word_ids`` (to map predictions back to words). ``tokens`` are pre-split words (characters
    for Chinese); a fast tokenizer is required (for ``word_ids``)."""
    if len(tokens) != len(tags):
        raise ValueError(f"{len(tokens)} sentences but {len(tags)} tag sequences")
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError("encode_ner needs a fast tokenizer (it uses word_ids())")
    enc = tokenizer([list(t) for t in tokens], is_split_into_words=True, truncation=True, max_length=max_length)
    feats = []
    for i, (words, word_tags) in enumerate(zip(tokens, tags)):
        if len(words) != len(word_tags):
            raise ValueError(f"sentence {i}: {len(words)} words but {len(word_tags)} tags")
        wids = enc.word_ids(i)
        feats.append({"input_ids": enc["input_ids"][i], "labels": align_labels(wids, word_tags), "word_ids": wids,
                      "n_words": len(words)})
    return feats


def collate(features: Sequence[dict[str, Any]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Pad a list of features into tensors ``input_ids``, ``attention_mask`` [B, T] and
    ``labels`` ([B] for classification, [B, T] padded with -100 for token classification)."""
    if not features:
        raise ValueError("no features to collate")
    if isinstance(pad_token_id, bool) or not isinstance(pad_token_id, numbers.Integral) or pad_token_id < 0:
        raise ValueError(f"pad_token_id must be a token id (an int >= 0), got {pad_token_id!r}")
    T = max(len(f["input_ids"]) for f in features)
    ids = torch.full((len(features), T), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(features), T), dtype=torch.long)
    for i, f in enumerate(features):
        ids[i, :len(f["input_ids"])] = torch.tensor(f["input_ids"])
        mask[i, :len(f["input_ids"])] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    if "labels" in features[0]:
        if isinstance(features[0]["labels"], int):
            batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)
        else:
            labels = torch.full((len(features), T), IGNORE_INDEX, dtype=torch.long)
            for i, f in enumerate(features):
                labels[i, :len(f["labels"])] = torch.tensor(f["labels"])
            batch["labels"] = labels
    return batch


class FeatureSampler:
    """Random mini-batches of encoded features for :class:`course_utils.train.Trainer`.

    ``next_batch()`` draws ``batch_size`` features without replacement within an epoch (seeded);
    ``eval_batches(n)`` yields the first ``n`` batches in order (a fixed evaluation set).
    """

    def __init__(self, features: Sequence[dict[str, Any]], batch_size: int, pad_token_id: int, seed: int = 0) -> None:
        if not features:
            raise ValueError("features is empty")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.features, self.batch_size, self.pad_token_id = list(features), batch_size, pad_token_id
        self.seed, self.epoch, self.pos = seed, 0, 0
        self._order = self._shuffled(0)

    def _shuffled(self, epoch: int) -> list[int]:
        order = list(range(len(self.features)))
        random.Random(self.seed * 100_003 + epoch).shuffle(order)
        return order

    def next_batch(self) -> dict[str, torch.Tensor]:
        picked = []
        while len(picked) < self.batch_size:
            if self.pos >= len(self._order):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._shuffled(self.epoch)
            picked.append(self.features[self._order[self.pos]])
            self.pos += 1
        return collate(picked, self.pad_token_id)

    def eval_batches(self, n: int):
        for i in range(min(n, math.ceil(len(self.features) / self.batch_size))):
            yield collate(self.features[i * self.batch_size:(i + 1) * self.batch_size], self.pad_token_id)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "features", "epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "features":
            raise ValueError(f"not a FeatureSampler state: kind={state.get('kind')!r}")
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._order = self._shuffled(self.epoch)


# ------------------------------------------------------------------------------ training
def first_subtoken_mask(word_ids: Sequence[int | None]) -> list[bool]:
    """True at the first token of each word (the positions that carry a label)."""
    return [w is not None and (t == 0 or word_ids[t - 1] != w) for t, w in enumerate(word_ids)]


@torch.no_grad()
def predict(model: torch.nn.Module, features: Sequence[dict[str, Any]], pad_token_id: int,
            batch_size: int = 64) -> list[Any]:
    """Predicted class ids: one int per feature (sequence classification) or, for token
    classification (features with ``word_ids``), one list of tag ids per sentence, one per word.

    Token level: each word takes the prediction at its first sub-token (0 = ``O`` if truncated);
    a CRF model (``model.crf``, ``model.decode(ids, mask, label_mask=...)``) runs Viterbi over the
    first sub-tokens only, the positions it was trained on. Defined in chapter 7, Fine-tuning."""
    if not features:
        raise ValueError("features is empty")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    token_level = "word_ids" in features[0]
    use_crf = token_level and getattr(model, "crf", None) is not None and hasattr(model, "decode")
    out: list[Any] = []
    for i in range(0, len(features), batch_size):
        chunk = features[i:i + batch_size]
        batch = collate([{"input_ids": f["input_ids"]} for f in chunk], pad_token_id)
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        if not token_level:
            out.extend(model(input_ids=ids, attention_mask=mask).logits.argmax(-1).tolist())
            continue
        first = torch.zeros_like(ids, dtype=torch.bool)
        for r, f in enumerate(chunk):
            first[r, :len(f["word_ids"])] = torch.tensor(first_subtoken_mask(f["word_ids"]), dtype=torch.bool)
        empty = ~first.any(dim=1)
        first[empty, 0] = True  # a sentence with no word left still needs one position to decode
        if use_crf:
            paths = [list(map(int, p)) for p in model.decode(ids, mask, label_mask=first)]
        else:
            best = model(input_ids=ids, attention_mask=mask).logits.argmax(-1)
            paths = [best[r][first[r]].tolist() for r in range(len(chunk))]
        for r, (f, path) in enumerate(zip(chunk, paths)):
            n_words = f.get("n_words", max((w for w in f["word_ids"] if w is not None), default=-1) + 1)
            words = [w for w, keep in zip(f["word_ids"], first_subtoken_mask(f["word_ids"])) if keep]
            pred = [0] * n_words
            for w, p in zip(words, path if not bool(empty[r]) else []):
                if w < n_words:
                    pred[w] = int(p)
            out.append(pred)
    model.train(was_training)
    return out


def finetune(model: torch.nn.Module, train_features: Sequence[dict[str, Any]],
             val_features: Sequence[dict[str, Any]], pad_token_id: int, *, steps: int, lr: float,
             batch_size: int = 32, eval_every: int = 50, warmup_steps: int | None = None,
             score_fn: Callable[[torch.nn.Module], float] | None = None, progress: bool = True,
             seed: int = 0, eval_batches: int = 4, **train_overrides: Any) -> dict[str, list[float]]:
    """Fine-tune ``model`` in place with the chapter-5 training loop (AdamW, warm-up + cosine).

    Every ``eval_every`` steps the loop records the loss on ``eval_batches`` fixed training and
    validation batches, and ``score_fn(model)`` (e.g. validation accuracy) as ``history["score"]``
    at ``history["eval_step"]``. Returns the history. Defined in chapter 7, Fine-tuning."""
    from .train import TrainConfig, Trainer

    n_eval = max(1, min(eval_batches, math.ceil(len(val_features) / batch_size)))
    cfg = TrainConfig(max_steps=steps, lr=lr, warmup_steps=max(1, steps // 10) if warmup_steps is None else warmup_steps,
                      batch_size=batch_size, eval_interval=eval_every, eval_iters=n_eval, weight_decay=0.01,
                      grad_clip=1.0, progress=progress, seed=seed, **train_overrides)
    scores: list[float] = []

    def log(event: Any) -> None:
        if event.kind == "eval" and score_fn is not None:
            scores.append(float(score_fn(event.trainer.unwrapped_model)))

    cfg.log = log
    trainer = Trainer(model, cfg, FeatureSampler(train_features, batch_size, pad_token_id, seed=seed),
                      FeatureSampler(val_features, batch_size, pad_token_id, seed=seed + 1))
    if score_fn is not None:  # the score before any step, to go with the step-0 losses
        scores.append(float(score_fn(trainer.unwrapped_model)))
    history = trainer.fit()
    history["score"] = scores[:len(history["eval_step"])]
    return history


# ------------------------------------------------------------------------------ tweets
def tweet_model_dir(profile: str | None = None) -> Path:
    from .model_cache import model_dir
    return model_dir(TWEET_MODEL_NAME, profile)


def new_head_from_pretrained(cls: Any, where: str, **kwargs: Any) -> Any:
    """``cls.from_pretrained(where, **kwargs)`` for a pretrained body with a **new** task head.

    transformers reports the head's weights as MISSING in a long "LOAD REPORT": expected, since
    the head is what fine-tuning trains. The report is kept out of the output and one line says
    which weights start from scratch instead. Defined in chapter 7, Fine-tuning.
    """
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = cls.from_pretrained(where, output_loading_info=True, **kwargs)
    finally:
        hf_logging.set_verbosity(level)
    missing = sorted(info.get("missing_keys", []))
    if missing:
        print(f"new task head, trained from scratch (expected): {', '.join(missing)}")
    return model


def finetune_tweet_classifier(profile: str | None = None, output_dir: str | Path | None = None,
                              progress: bool = True) -> tuple[Any, Any, dict[str, float]]:
    """Fine-tune MiniLM on 3-class tweet sentiment with transformers' ``Trainer``.

    Returns ``(model, tokenizer, test metrics)``. Settings: :data:`TWEET_RECIPES`.
    Defined in chapter 7, Fine-tuning.
    """
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                              Trainer, TrainingArguments)

    from . import assets, data
    from .metrics import load_metric
    from .paths import scratch_dir
    from .profiles import get_profile

    r = TWEET_RECIPES[get_profile(profile).name]
    dsd = data.load_tweets()
    names = dsd["train"].features["label"].names
    where = str(assets.fetch("minilm", verbose=False))
    tokenizer = AutoTokenizer.from_pretrained(where)
    model = new_head_from_pretrained(AutoModelForSequenceClassification, where, num_labels=len(names),
                                     id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})

    def prep(split: str, n: int | None):
        ds = dsd[split] if n is None else dsd[split].select(range(min(n, len(dsd[split]))))
        return ds.map(lambda b: tokenizer(b["text"], truncation=True, max_length=r["max_length"]), batched=True,
                      remove_columns=["text", "confidence"])

    metric = load_metric("classification")

    def compute_metrics(pred: Any) -> dict[str, float]:
        return metric.compute(predictions=pred.predictions.argmax(-1).tolist(), references=pred.label_ids.tolist())

    args = TrainingArguments(
        output_dir=str(output_dir or scratch_dir("tweets-")), max_steps=r["max_steps"],
        per_device_train_batch_size=r["batch_size"], per_device_eval_batch_size=64, learning_rate=r["lr"],
        warmup_steps=max(1, r["max_steps"] // 10), weight_decay=0.01, lr_scheduler_type="linear",
        eval_strategy="no", save_strategy="no", logging_steps=max(1, r["max_steps"] // 10), report_to="none",
        seed=0, dataloader_num_workers=0, disable_tqdm=not progress,
        dataloader_pin_memory=torch.cuda.is_available())   # pinned memory only helps copies to a GPU
    trainer = Trainer(model=model, args=args, train_dataset=prep("train", r["train_examples"]),
                      data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=compute_metrics)
    trainer.train()
    scores = trainer.evaluate(prep("test", r["eval_examples"]), metric_key_prefix="test")
    return trainer.model.cpu().eval(), tokenizer, scores


def save_tweet_classifier(model: Any, tokenizer: Any, profile: str | None = None,
                          meta: dict[str, Any] | None = None) -> Path:
    """Publish a fine-tuned tweet classifier where :func:`load_or_finetune_tweet_classifier` finds it,
    with the profile's :data:`TWEET_RECIPES` entry it was trained with."""
    from .model_cache import publish, recipe_record
    from .profiles import get_profile

    def build(tmp: Path) -> dict[str, Any]:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        return {"name": TWEET_MODEL_NAME, "recipe": recipe_record(TWEET_RECIPES[get_profile(profile).name]),
                **(meta or {})}

    return publish(build, tweet_model_dir(profile))


def load_or_finetune_tweet_classifier(profile: str | None = None, progress: bool = True) -> tuple[Any, Any]:
    """``(model, tokenizer)``: MiniLM fine-tuned on tweet sentiment (labels negative / neutral /
    positive), loaded from ``<data dir>/models/minilm-tweets-<profile>/``, or trained first when
    that folder is missing or holds a model trained with other :data:`TWEET_RECIPES` settings.
    Ready for ``transformers.pipeline("text-classification", model=model, tokenizer=tokenizer)``.
    Defined in chapter 7, Fine-tuning."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from .model_cache import is_complete, is_current
    from .profiles import get_profile

    folder = tweet_model_dir(profile)
    if not is_current(folder, TWEET_RECIPES[get_profile(profile).name]):
        why = "from an older recipe" if is_complete(folder) else "no"
        print(f"{why} fine-tuned tweet classifier in {folder}; training one")
        model, tokenizer, scores = finetune_tweet_classifier(profile, progress=progress)
        save_tweet_classifier(model, tokenizer, profile, {k: float(v) for k, v in scores.items()})
    return (AutoModelForSequenceClassification.from_pretrained(str(folder)).eval(),
            AutoTokenizer.from_pretrained(str(folder)))


# ------------------------------------------------------------------------------ LoRA
def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts (shared tensors counted once)."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    seen = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in seen if p.requires_grad), sum(p.numel() for p in seen)


def lm_blocks(tokenizer: Any, text: str, block_size: int, max_blocks: int | None = None) -> torch.Tensor:
    """``text`` tokenized (no special tokens) and cut into non-overlapping blocks -> ids [N, block_size]."""
    if not isinstance(text, str) or not text:
        raise ValueError("text must be a non-empty string")
    if not isinstance(block_size, int) or block_size < 2:
        raise ValueError(f"block_size must be an int >= 2, got {block_size!r}")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    n = len(ids) // block_size if max_blocks is None else min(len(ids) // block_size, max_blocks)
    if n < 1:
        raise ValueError(f"text has {len(ids)} tokens: fewer than one block of {block_size}")
    return torch.tensor(ids[:n * block_size], dtype=torch.long).view(n, block_size)


@torch.no_grad()
def block_perplexity(model: torch.nn.Module, blocks: torch.Tensor, batch_size: int = 8) -> float:
    """exp(mean next-token NLL) of a causal LM over ``blocks`` [N, T] (each block scored on its own,
    so the first token of a block is context only). Defined in chapter 7, Fine-tuning."""
    if not isinstance(blocks, torch.Tensor) or blocks.dim() != 2 or blocks.size(1) < 2:
        raise ValueError("blocks must be a [N, T>=2] tensor of token ids (see lm_blocks)")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, blocks.size(0), batch_size):
        x = blocks[i:i + batch_size].to(device)
        logits = model(input_ids=x).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1), reduction="sum")
        total, count = total + nll.item(), count + x[:, 1:].numel()
    model.train(was_training)
    return math.exp(total / count)


@torch.no_grad()
def max_abs_logit_diff(model_a: torch.nn.Module, model_b: torch.nn.Module, input_ids: torch.Tensor) -> float:
    """Largest absolute difference of the two models' logits on ``input_ids`` [B, T]."""
    a = model_a(input_ids=input_ids).logits.float()
    b = model_b(input_ids=input_ids).logits.float()
    if a.shape != b.shape:
        raise ValueError(f"the models' logits differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    return (a - b).abs().max().item()


__all__ = ["IGNORE_INDEX", "TWEET_RECIPES", "align_labels", "word_predictions", "encode_classification", "encode_ner",
           "collate", "FeatureSampler", "first_subtoken_mask", "predict", "finetune", "finetune_tweet_classifier",
           "save_tweet_classifier", "load_or_finetune_tweet_classifier", "new_head_from_pretrained", "tweet_model_dir", "count_parameters",
           "lm_blocks", "block_perplexity", "max_abs_logit_diff"]
