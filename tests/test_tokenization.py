"""Tests for course_utils.tokenization (chapter 2): round trips, save/load, special tokens, errors."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from course_utils.tokenization import (
    BPE_SPECIALS, WORDPIECE_SPECIALS, CharTokenizer, to_fast_tokenizer, tokens_per_char, train_bpe,
    train_wordpiece, wrap,
)

CORPUS = [
    "First Citizen:\nBefore we proceed any further, hear me speak.",
    "All:\nSpeak, speak.",
    "First Citizen:\nYou are all resolved rather to die than to famish?",
    "All:\nResolved. resolved.",
    "First Citizen:\nFirst, you know Caius Marcius is chief enemy to the people.",
    "人民币汇率由外汇市场供求关系决定。", "中央银行外汇调控只是防止汇率剧烈波动。",
] * 5
HARD = ["Hello, wörld!  double  spaces\tand tabs\n", "北京欢迎你 🙂", "", " leading space", "naïve café — ok"]


@pytest.fixture(scope="module")
def bpe():
    return train_bpe(CORPUS, vocab_size=400)


@pytest.fixture(scope="module")
def wordpiece():
    return train_wordpiece(CORPUS, vocab_size=300)


# --------------------------------------------------------------------------- CharTokenizer
def test_char_round_trip_and_sorted_vocab() -> None:
    text = "To be, or not to be?\n"
    tok = CharTokenizer.from_text(text)
    assert tok.chars == sorted(set(text)) and tok.vocab_size == len(set(text)) == len(tok)
    ids = tok.encode(text)
    assert len(ids) == len(text) and tok.decode(ids) == text
    assert tok.decode(torch.tensor(ids)) == text  # tensors are accepted


def test_char_unknown_characters_error_or_unk() -> None:
    strict = CharTokenizer.from_text("abc")
    with pytest.raises(KeyError, match=r"\['z'\]"):
        strict.encode("abz")
    lenient = CharTokenizer.from_text("abc", unk_token="<unk>")
    assert lenient.vocab_size == 4 and lenient.unk_token_id == 3
    assert lenient.encode("abz") == [0, 1, 3]


def test_char_save_load(tmp_path: Path) -> None:
    cases = [(CharTokenizer.from_text("hello world"), "hello"),
             (CharTokenizer.from_text("hi", unk_token="<unk>"), "hix")]  # 'x' -> <unk>
    for tok, probe in cases:
        tok.save(tmp_path / "t")
        back = CharTokenizer.load(tmp_path / "t")
        assert back.chars == tok.chars and back.unk_token == tok.unk_token
        assert back.encode(probe) == tok.encode(probe)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "chars.json").write_text('["a", "b"]', encoding="utf-8")  # bare list format
    assert CharTokenizer.load(tmp_path / "old").encode("ba") == [1, 0]


def test_char_bad_input() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        CharTokenizer.from_text("")
    with pytest.raises(ValueError, match="single character"):
        CharTokenizer(["ab", "c"])
    with pytest.raises(ValueError, match="distinct"):
        CharTokenizer(["a", "a"])
    tok = CharTokenizer.from_text("ab")
    with pytest.raises(TypeError, match="string"):
        tok.encode([0, 1])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not in 0..1"):
        tok.decode([0, 5])
    with pytest.raises(FileNotFoundError, match="chars.json"):
        CharTokenizer.load("/nonexistent/folder")


# --------------------------------------------------------------------------- BPE / WordPiece
def test_bpe_round_trips_any_string(bpe) -> None:
    assert bpe.get_vocab_size() == 400
    for s in HARD + CORPUS[:7]:
        assert bpe.decode(bpe.encode(s).ids) == s
    # merges were learned: common words take fewer tokens than bytes
    assert len(bpe.encode("First Citizen").ids) < len("First Citizen".encode())


def test_bpe_special_tokens_present(bpe) -> None:
    for t in BPE_SPECIALS:
        assert bpe.token_to_id(t) is not None


def test_wordpiece_specials_template_and_chinese(wordpiece) -> None:
    for t in WORDPIECE_SPECIALS:
        assert wordpiece.token_to_id(t) is not None
    enc = wordpiece.encode("Speak, speak.")
    assert enc.tokens[0] == "[CLS]" and enc.tokens[-1] == "[SEP]"
    zh = wordpiece.encode("外汇市场", add_special_tokens=False).tokens
    assert zh == ["外", "汇", "市", "场"]  # one Chinese character per token, as in BERT
    assert "[UNK]" in wordpiece.encode("🙂").tokens
    assert wordpiece.decode(wordpiece.encode("First Citizen speak").ids) == "First Citizen speak"


def test_wrapped_tokenizers_pad_truncate_and_mask(bpe, wordpiece) -> None:
    wp = to_fast_tokenizer(wordpiece)
    batch = wp(["Speak, speak.", "All"], padding=True, truncation=True, max_length=5, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == mask.shape and ids.shape[1] <= 5
    assert (ids[mask == 0] == wp.pad_token_id).all() and mask[1].sum() < mask[0].sum()
    assert ids[0, 0] == wp.cls_token_id and wp.mask_token == "[MASK]"
    pair = wp("Speak", "All")
    assert pair["token_type_ids"] == [0, 0, 0, 1, 1] and "token_type_ids" not in wrap(bpe)("hear")
    gpt = wrap(bpe)
    assert gpt.pad_token == "<pad>" and gpt.eos_token == "<|endoftext|>"
    b = gpt(["hear me speak", "hear"], padding=True)
    assert b["attention_mask"][1][-1] == 0 and b["input_ids"][1][-1] == gpt.pad_token_id


@pytest.mark.parametrize("which", ["bpe", "wordpiece"])
def test_save_load_round_trip_gives_identical_ids(which: str, bpe, wordpiece, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    fast = to_fast_tokenizer(bpe if which == "bpe" else wordpiece)
    fast.save_pretrained(str(tmp_path))
    back = AutoTokenizer.from_pretrained(str(tmp_path))
    texts = HARD[:2] + CORPUS[:7]
    assert back(texts)["input_ids"] == fast(texts)["input_ids"]
    assert back.all_special_tokens == fast.all_special_tokens
    assert back.pad_token_id == fast.pad_token_id


def test_tokens_per_char(bpe) -> None:
    char = CharTokenizer.from_text("".join(CORPUS))
    assert tokens_per_char(char, CORPUS) == pytest.approx(1.0)
    assert tokens_per_char(bpe, CORPUS) < 1.0  # BPE compresses its own training text
    assert tokens_per_char(wrap(bpe), CORPUS) == tokens_per_char(bpe, CORPUS)
    with pytest.raises(TypeError, match="CharTokenizer"):
        tokens_per_char(object(), CORPUS)
    with pytest.raises(ValueError, match="empty"):
        tokens_per_char(bpe, [""])


def test_training_and_wrapping_bad_input(bpe) -> None:
    with pytest.raises(TypeError, match="list of strings"):
        train_bpe([1, 2], vocab_size=100)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="no characters"):
        train_bpe(["   "], vocab_size=100)
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe(CORPUS, vocab_size=2)
    with pytest.raises(ValueError, match=r"\[CLS\]"):
        train_wordpiece(CORPUS, vocab_size=100, special_tokens=("[UNK]", "[SEP]"))
    with pytest.raises(TypeError, match="tokenizers.Tokenizer"):
        to_fast_tokenizer("not a tokenizer")
    with pytest.raises(ValueError, match="not in the tokenizer's vocabulary"):
        to_fast_tokenizer(bpe, pad_token="[PAD]")
    with pytest.raises(ValueError, match="unknown special-token role"):
        to_fast_tokenizer(bpe, foo_token="<pad>")
