"""Tokenizers of chapter 2: a character tokenizer, and BPE / WordPiece trained with ``tokenizers``.

* :class:`CharTokenizer` — one id per character of a text; the tokenizer of chapter 5's
  character-level GPT. Unknown characters raise a clear error, or map to an ``<unk>`` id when
  built with ``unk_token=``.
* :func:`train_bpe` — byte-level BPE (GPT-2 style): every string round-trips exactly.
* :func:`train_wordpiece` — WordPiece (BERT style) with ``[CLS] … [SEP]`` added by a post-processor;
  Chinese characters are split one per token, as in BERT.
* :func:`to_fast_tokenizer` — wrap a trained ``tokenizers.Tokenizer`` as a transformers
  ``PreTrainedTokenizerFast`` (padding, truncation, attention masks, ``save_pretrained``).

Defined in chapter 2, Tokenization.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

BPE_SPECIALS: tuple[str, ...] = ("<|endoftext|>", "<pad>")
WORDPIECE_SPECIALS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
CHAR_FILE = "chars.json"


# --------------------------------------------------------------------------- characters
class UnknownCharacterError(KeyError, ValueError):
    """Characters of ``text`` that a :class:`CharTokenizer` without ``unk_token`` does not know.

    A ``ValueError`` (a bad argument) that stays a ``KeyError`` for code written against the
    earlier behaviour."""

    def __str__(self) -> str:   # KeyError would print the message with quotes around it
        return str(self.args[0]) if self.args else ""


class CharTokenizer:
    """Characters <-> ids. ``from_text`` gives each distinct character an id, in sorted order.

    >>> tok = CharTokenizer.from_text("hello")
    >>> tok.encode("hole"), tok.decode(tok.encode("hole"))
    ([1, 3, 2, 0], 'hole')

    Defined in chapter 2, Tokenization.
    """

    def __init__(self, chars: Sequence[str], unk_token: str | None = None) -> None:
        chars = list(chars)
        if not chars:
            raise ValueError("CharTokenizer needs at least one character")
        bad = [c for c in chars if not isinstance(c, str) or len(c) != 1]
        if bad and not (unk_token is not None and bad == [unk_token]):
            raise ValueError(f"every vocabulary entry must be a single character, got {bad[:5]!r}")
        if len(set(chars)) != len(chars):
            raise ValueError("vocabulary characters must be distinct")
        if unk_token is not None and unk_token not in chars:
            chars.append(unk_token)
        self.chars: list[str] = chars
        self.unk_token = unk_token
        self.stoi: dict[str, int] = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str, unk_token: str | None = None) -> "CharTokenizer":
        """Vocabulary = the sorted distinct characters of ``text`` (plus ``unk_token`` last, if given)."""
        if not isinstance(text, str) or not text:
            raise ValueError("from_text needs a non-empty string")
        return cls(sorted(set(text)), unk_token=unk_token)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def __len__(self) -> int:
        return len(self.chars)

    @property
    def unk_token_id(self) -> int | None:
        return None if self.unk_token is None else self.stoi[self.unk_token]

    def encode(self, text: str) -> list[int]:
        """``text`` -> ids [len(text)]. Unknown characters: ``<unk>`` id, or a ``KeyError`` naming them."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a string, got {type(text).__name__}")
        unk = self.unk_token_id
        if unk is not None:
            return [self.stoi.get(c, unk) for c in text]
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            missing = sorted({c for c in text if c not in self.stoi})
            raise UnknownCharacterError(f"text has characters not in the vocabulary: {missing!r}; build the "
                                        "tokenizer from a text that contains them or pass unk_token='<unk>'") from None

    def decode(self, ids: Iterable[int]) -> str:
        """ids (a list, or a 1-D tensor/array) -> text."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()  # type: ignore[union-attr]
        if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
            raise TypeError(f"ids must be a list (or 1-D tensor) of int ids, got {type(ids).__name__}")
        out = []
        for i in ids:
            if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < len(self.chars):
                raise ValueError(f"ids: id {i!r} is not in 0..{len(self.chars) - 1}")
            out.append(self.chars[i])
        return "".join(out)

    def save(self, folder: str | Path) -> Path:
        """Write ``folder/chars.json``; returns the file path."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / CHAR_FILE
        path.write_text(json.dumps({"chars": self.chars, "unk_token": self.unk_token}, ensure_ascii=False),
                        encoding="utf-8")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> "CharTokenizer":
        """Read what :meth:`save` wrote (a bare JSON list of characters is accepted too)."""
        path = Path(folder) / CHAR_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no {CHAR_FILE} in {folder}; save a CharTokenizer there first")
        obj = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(obj, list):
            return cls(obj)
        return cls(obj["chars"], unk_token=obj.get("unk_token"))

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size}, unk_token={self.unk_token!r})"


# --------------------------------------------------------------------------- subwords
def _check_training_input(texts: Iterable[str] | str, vocab_size: int, specials: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    if isinstance(texts, bytes) or not isinstance(texts, Iterable):
        raise TypeError(f"texts must be a non-empty list of strings (or one string), got {type(texts).__name__}")
    texts = list(texts)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise TypeError("texts must be a non-empty list of strings (or one string)")
    if not any(t.strip() for t in texts):
        raise ValueError("texts contain no characters to learn from")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size <= len(specials):
        raise ValueError(f"vocab_size must be an integer larger than the {len(specials)} special tokens, "
                         f"got {vocab_size!r}")
    return texts


def train_bpe(texts: Iterable[str] | str, vocab_size: int = 2000, *,
              special_tokens: Sequence[str] = BPE_SPECIALS, min_frequency: int = 2,
              show_progress: bool = False):
    """Train a byte-level BPE ``tokenizers.Tokenizer`` (GPT-2 style) on ``texts``.

    The 256 byte symbols are always in the vocabulary, so any string encodes and decodes back
    exactly. ``vocab_size`` counts bytes, merges and ``special_tokens``.

    Defined in chapter 2, Tokenization.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    texts = _check_training_input(texts, vocab_size, special_tokens)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(special_tokens), show_progress=show_progress,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def train_wordpiece(texts: Iterable[str] | str, vocab_size: int = 2000, *,
                    special_tokens: Sequence[str] = WORDPIECE_SPECIALS, lowercase: bool = False,
                    min_frequency: int = 2, show_progress: bool = False):
    """Train a BERT-style WordPiece ``tokenizers.Tokenizer`` on ``texts``.

    BERT's normalizer puts spaces around CJK characters (one Chinese character = one word before
    WordPiece), the pre-tokenizer splits on whitespace and punctuation, continuation pieces start
    with ``##``, and a post-processor adds ``[CLS] … [SEP]`` (pairs: ``[CLS] A [SEP] B [SEP]``).
    ``special_tokens`` must contain ``[UNK]``, ``[CLS]`` and ``[SEP]``.

    Defined in chapter 2, Tokenization.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    texts = _check_training_input(texts, vocab_size, special_tokens)
    missing = {"[UNK]", "[CLS]", "[SEP]"} - set(special_tokens)
    if missing:
        raise ValueError(f"WordPiece special_tokens must include {sorted(missing)}")
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=False, lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                        special_tokens=list(special_tokens), show_progress=show_progress)
    tok.train_from_iterator(texts, trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    return tok


def to_fast_tokenizer(tokenizer: Any, model_max_length: int = 512, **special_tokens: str):
    """Wrap a ``tokenizers.Tokenizer`` as a transformers ``PreTrainedTokenizerFast``.

    Special tokens are recognised from the vocabulary: WordPiece's ``[PAD] [UNK] [CLS] [SEP]
    [MASK]``, or BPE's ``<|endoftext|>`` (bos = eos) and ``<pad>``; keyword arguments such as
    ``pad_token="<pad>"`` override them. Returns a tokenizer whose ``__call__`` pads, truncates
    and returns attention masks, and which saves with ``save_pretrained``.

    Defined in chapter 2, Tokenization.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    if not isinstance(tokenizer, Tokenizer):
        raise TypeError(f"expected a tokenizers.Tokenizer (from train_bpe / train_wordpiece), "
                        f"got {type(tokenizer).__name__}")
    vocab = tokenizer.get_vocab()
    guesses = {"pad_token": ("[PAD]", "<pad>"), "unk_token": ("[UNK]", "<unk>"), "cls_token": ("[CLS]",),
               "sep_token": ("[SEP]",), "mask_token": ("[MASK]",), "bos_token": ("<|endoftext|>",),
               "eos_token": ("<|endoftext|>",)}
    kwargs: dict[str, str] = {}
    for role, names in guesses.items():
        for name in names:
            if name in vocab:
                kwargs[role] = name
                break
    for role, name in special_tokens.items():
        if role not in guesses:
            raise ValueError(f"unknown special-token role {role!r}; expected one of {sorted(guesses)}")
        if name not in vocab:
            raise ValueError(f"{role}={name!r} is not in the tokenizer's vocabulary")
        kwargs[role] = name
    # BERT-style tokenizers also return segment ids (token_type_ids) for sentence pairs
    names = ["input_ids", "token_type_ids", "attention_mask"] if "cls_token" in kwargs else \
        ["input_ids", "attention_mask"]
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=model_max_length,
                                   clean_up_tokenization_spaces=False, model_input_names=names, **kwargs)


wrap = to_fast_tokenizer  # short alias used in the notebook


def tokens_per_char(tokenizer: Any, texts: Sequence[str]) -> float:
    """Tokens produced per character of ``texts`` (lower = more compression; specials not counted).

    Defined in chapter 2, Tokenization.
    """
    if isinstance(texts, str):
        texts = [texts]
    n_chars = sum(len(t) for t in texts)
    if n_chars == 0:
        raise ValueError("texts are empty: nothing to measure")
    if isinstance(tokenizer, CharTokenizer):
        return sum(len(tokenizer.encode(t)) for t in texts) / n_chars
    tokenizer = getattr(tokenizer, "backend_tokenizer", tokenizer)  # a wrapped (transformers) tokenizer
    if not hasattr(tokenizer, "encode_batch"):
        raise TypeError(f"expected a CharTokenizer, a tokenizers.Tokenizer or a PreTrainedTokenizerFast, "
                        f"got {type(tokenizer).__name__}")
    encs = tokenizer.encode_batch(list(texts), add_special_tokens=False)
    return sum(len(e.ids) for e in encs) / n_chars


__all__ = ["CharTokenizer", "UnknownCharacterError", "train_bpe", "train_wordpiece", "to_fast_tokenizer", "wrap", "tokens_per_char",
           "BPE_SPECIALS", "WORDPIECE_SPECIALS"]
