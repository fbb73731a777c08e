"""Character-level Chinese tokenizer and masked-LM batches for the course's tiny Chinese BERT.

* :func:`build_zh_char_tokenizer` -- one token per character (NFKC-normalised, so full-width
  digits and Latin letters become ASCII), the specials ``[PAD] [UNK] [CLS] [SEP] [MASK]``,
  wrapped as a ``transformers.PreTrainedTokenizerFast`` (padding, attention masks, save/load).
  The vocabulary is counted over the People's Daily *training* lines and the Chinese-sentiment
  *training* reviews, so chapter 7's reviews are mostly in the vocabulary;
* :func:`zh_corpus_ids` -- People's Daily train / validation as two long id tensors, lines
  separated by ``[SEP]``;
* :class:`MLMBlockSampler` -- packed ``[CLS] chars [SEP]`` blocks with BERT's 80/10/10 masking
  (``models.bert.mask_tokens``), seeded and resumable like the causal-LM samplers.

Defined in chapter 5, Pretraining.
"""
from __future__ import annotations

import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from .train_data import SequentialBlockSampler

ZH_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
MLM_PROB = 0.15


def normalize_zh(text: str) -> str:
    """NFKC: full-width ``１９９８`` / ``ＡＢＣ`` / ``，`` become ``1998`` / ``ABC`` / ``,``."""
    return unicodedata.normalize("NFKC", text)


def count_chars(texts: Iterable[str]) -> Counter:
    """Character frequencies of ``texts`` after :func:`normalize_zh`, whitespace left out."""
    counts: Counter = Counter()
    for t in texts:
        counts.update(c for c in normalize_zh(t) if not c.isspace())
    return counts


def zh_vocab(counts: Counter, min_freq: int = 2) -> list[str]:
    """Specials, then every character seen ``min_freq`` times or more, most frequent first."""
    if not isinstance(min_freq, int) or min_freq < 1:
        raise ValueError(f"min_freq must be a positive int, got {min_freq!r}")
    chars = sorted((c for c, n in counts.items() if n >= min_freq and c not in ZH_SPECIALS),
                   key=lambda c: (-counts[c], c))
    return list(ZH_SPECIALS) + chars


def make_zh_tokenizer(vocab: list[str], model_max_length: int = 512) -> Any:
    """A ``PreTrainedTokenizerFast`` splitting text into single characters over ``vocab``.

    Encoding a sentence gives ``[CLS] c1 c2 ... [SEP]``; a pair ``[CLS] a [SEP] b [SEP]``.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if list(vocab[:len(ZH_SPECIALS)]) != list(ZH_SPECIALS) or len(set(vocab)) != len(vocab):
        raise ValueError(f"vocab must start with {ZH_SPECIALS} and hold no duplicates")
    ids = {tok: i for i, tok in enumerate(vocab)}
    tok = Tokenizer(models.WordLevel(ids, unk_token="[UNK]"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex("."), behavior="isolated")])
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])])
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=model_max_length, clean_up_tokenization_spaces=False)


def build_zh_char_tokenizer(min_freq: int = 2, model_max_length: int = 512, max_lines: int | None = None) -> Any:
    """The course's Chinese character tokenizer: vocabulary from the People's Daily and the
    Chinese-sentiment **training** splits (characters seen at least ``min_freq`` times; only the
    first ``max_lines`` of each when given, to keep the ``ci`` profile fast)."""
    from . import data

    pd_train, senti_train = data.load_peoples_daily()["train"], data.load_chinese_sentiment()["train"]
    n = None if max_lines is None else min(max_lines, len(pd_train))
    m = None if max_lines is None else min(max_lines, len(senti_train))
    texts = list((pd_train if n is None else pd_train.select(range(n)))["text"]) + \
        list((senti_train if m is None else senti_train.select(range(m)))["text"])
    return make_zh_tokenizer(zh_vocab(count_chars(texts), min_freq), model_max_length)


def load_zh_tokenizer(folder: str | Path) -> Any:
    """Load a tokenizer saved with ``save_pretrained`` (local files only)."""
    from transformers import PreTrainedTokenizerFast

    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{folder} has no tokenizer.json; expected a folder written by save_pretrained")
    return PreTrainedTokenizerFast.from_pretrained(str(folder), local_files_only=True)


def unk_rate(tokenizer: Any, texts: Iterable[str]) -> float:
    """Fraction of characters that ``tokenizer`` maps to ``[UNK]`` (whitespace not counted)."""
    enc = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
    total = sum(len(e) for e in enc)
    if total == 0:
        raise ValueError("no characters to count")
    return sum(i == tokenizer.unk_token_id for e in enc for i in e) / total


def lines_to_ids(tokenizer: Any, lines: list[str]) -> torch.Tensor:
    """``lines`` encoded without specials and joined with ``[SEP]`` -> 1-D ids [N]."""
    sep = tokenizer.sep_token_id
    out: list[int] = []
    for ids in tokenizer(lines, add_special_tokens=False, verbose=False)["input_ids"]:
        if ids:
            out.extend(ids)
            out.append(sep)
    if not out:
        raise ValueError("the lines hold no characters")
    return torch.tensor(out, dtype=torch.long)


def zh_corpus_ids(tokenizer: Any, max_lines: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """People's Daily train and validation text as id tensors (``[SEP]`` between lines; the
    first ``max_lines`` lines of each split when given)."""
    from . import data

    dsd = data.load_peoples_daily()
    out = []
    for split in ("train", "validation"):
        ds = dsd[split] if max_lines is None else dsd[split].select(range(min(max_lines, len(dsd[split]))))
        out.append(lines_to_ids(tokenizer, list(ds["text"])))
    return out[0], out[1]


def unigram_loss(train_ids: torch.Tensor, val_ids: torch.Tensor, tokenizer: Any) -> float:
    """Cross-entropy (nats) on the characters of ``val_ids`` [M] of a model that ignores context
    and predicts every character by its frequency in ``train_ids`` [N] (add-one smoothed;
    special tokens are never predicted, so they are left out). This is the masked-LM plateau:
    a BERT whose validation loss sits here has not yet learned to use the context."""
    special = torch.tensor([tokenizer.convert_tokens_to_ids(t) for t in ZH_SPECIALS])
    train = train_ids[~torch.isin(train_ids, special)]
    val = val_ids[~torch.isin(val_ids, special)]
    if train.numel() == 0 or val.numel() == 0:
        raise ValueError("train_ids and val_ids must hold characters besides special tokens")
    counts = torch.bincount(train, minlength=len(tokenizer)).double() + 1.0
    counts[special] = 0.0
    return float(-(counts / counts.sum()).log()[val].mean())


class MLMBlockSampler:
    """Batches ``{"input_ids", "attention_mask", "labels"}`` [B, seq_len] for masked LM.

    The ids are packed into blocks of ``seq_len - 2`` characters (shuffled each epoch, see
    :class:`SequentialBlockSampler`), framed as ``[CLS] ... [SEP]``, and masked with
    ``models.bert.mask_tokens`` (labels are -100 where nothing is to be predicted). Masks come
    from a generator of the sampler's own, so a resumed run masks exactly as the original.
    """

    def __init__(self, ids: torch.Tensor, tokenizer: Any, seq_len: int, batch_size: int, seed: int = 0,
                 mlm_prob: float = MLM_PROB) -> None:
        if not isinstance(seq_len, int) or seq_len < 3:
            raise ValueError(f"seq_len must be an int >= 3 ([CLS] + 1 char + [SEP]), got {seq_len!r}")
        if not 0 < mlm_prob < 1:
            raise ValueError(f"mlm_prob must be in (0, 1), got {mlm_prob!r}")
        self.blocks = SequentialBlockSampler(ids, seq_len - 2, batch_size, seed=seed)
        self.cls, self.sep, self.mask = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id
        self.vocab_size = len(tokenizer)
        self.special_ids = [tokenizer.convert_tokens_to_ids(t) for t in ZH_SPECIALS]
        self.seed, self.mlm_prob = int(seed), mlm_prob
        self.generator = torch.Generator().manual_seed(self.seed + 7919)

    def _frame(self, x: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        from .models.bert import mask_tokens

        B = x.size(0)
        ids = torch.cat([torch.full((B, 1), self.cls), x, torch.full((B, 1), self.sep)], dim=1)
        inputs, labels = mask_tokens(ids, self.mask, self.vocab_size, self.special_ids, mlm_prob=self.mlm_prob,
                                     generator=generator)
        return {"input_ids": inputs, "attention_mask": torch.ones_like(ids), "labels": labels}

    def next_batch(self) -> dict[str, torch.Tensor]:
        x, _ = self.blocks.next_batch()
        return self._frame(x, self.generator)

    def eval_batches(self, n: int) -> Iterator[dict[str, torch.Tensor]]:
        g = torch.Generator().manual_seed(self.seed + 104729)
        for x, _ in self.blocks.eval_batches(n):
            yield self._frame(x, g)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "mlm", "blocks": self.blocks.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "mlm":
            raise ValueError(f"not an MLMBlockSampler state: kind={state.get('kind')!r}")
        self.blocks.load_state_dict(state["blocks"])
        self.generator.set_state(state["generator"])


@torch.no_grad()
def fill_mask(model: Any, tokenizer: Any, text: str, k: int = 5) -> list[list[tuple[str, float]]]:
    """Top-``k`` (character, probability) for every ``[MASK]`` in ``text``, left to right.

    ``model`` is a masked LM returning ``.logits`` [1, T, V] for ``input_ids`` [1, T].
    """
    if "[MASK]" not in text:
        raise ValueError(f"text must contain at least one [MASK], got {text!r}")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    enc = tokenizer(text, return_tensors="pt")
    was_training = model.training
    model.eval()
    try:
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits[0]
    finally:
        model.train(was_training)
    positions = (enc["input_ids"][0] == tokenizer.mask_token_id).nonzero().flatten().tolist()
    out = []
    for pos in positions:
        probs = logits[pos].float().softmax(-1)
        top = probs.topk(min(k, probs.numel()))
        out.append([(tokenizer.convert_ids_to_tokens(int(i)), float(p)) for p, i in zip(top.values, top.indices)])
    return out


__all__ = ["fill_mask", "unigram_loss", "ZH_SPECIALS", "normalize_zh", "count_chars", "zh_vocab", "make_zh_tokenizer", "build_zh_char_tokenizer",
           "load_zh_tokenizer", "unk_rate", "lines_to_ids", "zh_corpus_ids", "MLMBlockSampler"]
