"""Chapter 2's on-screen tokenizers agree with the package (CharTokenizer) and the library (BPE)."""
from __future__ import annotations

import json
import re

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from course_utils.tokenization import CharTokenizer
from tests.nbsource import notebook_namespace

NB = "02_tokenization.ipynb"
NAMES = ["build_char_vocab", "char_encode", "char_decode", "merge_pair", "learn_bpe", "bpe_encode"]
TEXT = ("Now, fair Hippolyta, our nuptial hour draws on apace; four happy days bring in another moon: "
        "but, O, methinks, how slow this old moon wanes! she lingers my desires, like to a step-dame "
        "or a dowager long withering out a young man's revenue. Four days will quickly steep "
        "themselves in night; four nights will quickly dream away the time.") * 3


@pytest.fixture(scope="module")
def nb() -> dict:
    return notebook_namespace(NB, NAMES)


def test_char_functions_match_char_tokenizer(nb: dict) -> None:
    vocab = nb["build_char_vocab"](TEXT)
    tok = CharTokenizer.from_text(TEXT)
    assert vocab == tok.chars
    probe = "four happy days, O moon!"
    ids = nb["char_encode"](probe, vocab)
    assert ids == tok.encode(probe)
    assert nb["char_decode"](ids, vocab) == tok.decode(ids) == probe


@pytest.mark.parametrize("num_merges", [10, 60, 150])
def test_bpe_from_scratch_matches_tokenizers(nb: dict, num_merges: int) -> None:
    merges = nb["learn_bpe"](TEXT, num_merges)
    lib = Tokenizer(models.BPE())
    lib.pre_tokenizer = pre_tokenizers.Whitespace()
    alphabet = {ch for w in re.findall(r"\w+|[^\w\s]+", TEXT) for ch in w}
    lib.train_from_iterator([TEXT], trainers.BpeTrainer(vocab_size=len(alphabet) + num_merges,
                                                        min_frequency=0, show_progress=False))
    lib_merges = [tuple(m) for m in json.loads(lib.to_str())["model"]["merges"]]
    assert lib_merges == merges
    for word in ["Hippolyta", "withering", "quickly", "moonlight", "dreamy"]:  # letters of TEXT only
        assert lib.encode(word).tokens == nb["bpe_encode"](word, merges)


def test_merge_pair(nb: dict) -> None:
    assert nb["merge_pair"](("a", "b", "a", "b", "c"), ("a", "b")) == ("ab", "ab", "c")
    assert nb["merge_pair"](("a", "a", "a"), ("a", "a")) == ("aa", "a")


def test_wordpiece_encode_matches_the_trained_wordpiece_tokenizer() -> None:
    """The chapter's greedy longest-match-first encoder == tokenizers' WordPiece model, word by word."""
    from course_utils.tokenization import train_wordpiece

    wp_ns = notebook_namespace(NB, ["wordpiece_encode"])
    tok = train_wordpiece(TEXT.split(". "), vocab_size=120, min_frequency=1)
    vocab = set(tok.get_vocab())
    words = sorted(set(re.findall(r"[A-Za-z]+", TEXT))) + ["Hippolytaxyz", "moonlight", "qz"]
    for w in words:
        assert wp_ns["wordpiece_encode"](w, vocab) == tok.encode(w, add_special_tokens=False).tokens, w
    assert wp_ns["wordpiece_encode"]("q", {"a"}) == ["[UNK]"]
