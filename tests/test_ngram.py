"""Tests for course_utils.ngram (chapter 1): proper distributions, hand-computed cases, errors."""
from __future__ import annotations

import math

import numpy as np
import pytest

from course_utils.ngram import SMOOTHINGS, NGramLM

TEXT = "the cat sat on the mat. the dog sat on the log. a cat and a dog."
WORDS = TEXT.replace(".", " .").split()


@pytest.mark.parametrize("smoothing", SMOOTHINGS)
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_distribution_sums_to_one_for_every_context(smoothing: str, n: int) -> None:
    lm = NGramLM(n, smoothing, k=0.3).fit(TEXT)
    contexts = ["", "t", "th", "the", " ca", "zzz", "q", "at."] + [TEXT[i:i + 3] for i in range(0, 40, 5)]
    for ctx in contexts:
        p = lm.distribution_array(ctx)
        assert p.shape == (lm.V,)
        assert (p >= 0).all()
        assert p.sum() == pytest.approx(1.0, abs=1e-9), (smoothing, n, ctx)


@pytest.mark.parametrize("smoothing", SMOOTHINGS)
def test_word_level_distributions_sum_to_one(smoothing: str) -> None:
    lm = NGramLM(3, smoothing).fit([WORDS[:8], WORDS[8:]])  # two sequences, each bos-padded
    for ctx in ([], ["the"], ["the", "cat"], ["sat", "on"], ["unseen", "words"]):
        assert sum(lm.distribution(ctx).values()) == pytest.approx(1.0, abs=1e-9)
    assert "<unk>" in lm.vocab and "<s>" not in lm.vocab


def test_bigram_mle_probability_and_perplexity_by_hand() -> None:
    # training "abab": padded <s> a b a b; bigram counts <s>a:1 ab:2 ba:1; V = {a, b, <unk>} = 3
    lm = NGramLM(2, "mle").fit("abab")
    assert lm.V == 3
    assert lm.prob("b", "a") == pytest.approx(1.0)
    assert lm.prob("a", "b") == pytest.approx(1.0)
    assert lm.prob("a", "") == pytest.approx(1.0)  # after <s> only "a" was seen
    # "abab" scored: P(a|<s>) P(b|a) P(a|b) P(b|a) = 1 -> perplexity 1
    assert lm.perplexity("abab") == pytest.approx(1.0)
    # unseen bigram "bb" -> probability 0 -> infinite perplexity (why we smooth)
    assert math.isinf(lm.perplexity("abb"))


def test_add_k_by_hand() -> None:
    lm = NGramLM(2, "add_k", k=1.0).fit("abab")
    # P(b|a) = (2 + 1) / (2 + 3);  P(a|b) = (1 + 1) / (1 + 3);  P(a|<s>) = (1 + 1) / (1 + 3)
    assert lm.prob("b", "a") == pytest.approx(3 / 5)
    assert lm.prob("a", "b") == pytest.approx(2 / 4)
    expected = math.exp(-(math.log(2 / 4) + math.log(3 / 5)) / 2)  # "ab"
    assert lm.perplexity("ab") == pytest.approx(expected)
    # unknown characters map to <unk>: P(<unk>|a) = 1/5
    assert lm.prob("z", "a") == pytest.approx(1 / 5)


def test_unigram_uniform_text_perplexity_equals_vocabulary() -> None:
    # each of a, b, c, d appears equally often; with no unk in the test text the MLE unigram
    # assigns 1/4 to each -> perplexity exactly 4
    lm = NGramLM(1, "mle").fit("abcd" * 10)
    assert lm.perplexity("dcba") == pytest.approx(4.0)


def test_interpolation_by_hand_and_em_tuning() -> None:
    lm = NGramLM(2, "interpolation", lambdas=[0.1, 0.3, 0.6]).fit("abab")
    # P(b|a) = 0.1 * 1/3 + 0.3 * 2/4 + 0.6 * 2/2
    assert lm.prob("b", "a") == pytest.approx(0.1 / 3 + 0.3 * 0.5 + 0.6)
    lam = NGramLM(3, "interpolation").fit(TEXT[:40]).tune_lambdas(TEXT[40:])
    assert lam.shape == (4,) and lam.sum() == pytest.approx(1.0) and (lam >= 0).all()


def test_kneser_ney_beats_add_one_on_held_out_text() -> None:
    train, held = TEXT * 3, "the cat sat on the log. a dog and a cat."
    kn = NGramLM(3, "kneser_ney").fit(train).perplexity(held)
    laplace = NGramLM(3, "add_k", k=1.0).fit(train).perplexity(held)
    assert kn < laplace


def test_higher_order_fits_training_text_better() -> None:
    ppl = [NGramLM(n, "add_k", k=0.01).fit(TEXT).perplexity(TEXT) for n in (1, 2, 3)]
    assert ppl[0] > ppl[1] > ppl[2]


def test_sample_is_reproducible_and_in_vocabulary() -> None:
    lm = NGramLM(3, "kneser_ney").fit(TEXT)
    a, b = lm.sample(30, "th", seed=1), lm.sample(30, "th", seed=1)
    assert a == b and len(a) == 30 and set(a) <= set(lm.vocab)
    # a bigram MLE model trained on "abab" can only alternate
    assert "".join(NGramLM(2, "mle").fit("abab").sample(6, "a", seed=0)) == "bababa"


def test_log_probs_shape_and_cross_entropy() -> None:
    lm = NGramLM(2, "add_k").fit(TEXT)
    lp = lm.log_probs("the cat")
    assert lp.shape == (7,) and (lp < 0).all()
    assert lm.cross_entropy("the cat") == pytest.approx(-lp.mean())
    assert lm.perplexity("the cat") == pytest.approx(np.exp(-lp.mean()))


@pytest.mark.parametrize("kwargs, match", [
    ({"n": 0}, "n must be an integer"),
    ({"n": 2.5}, "n must be an integer"),
    ({"n": 2, "smoothing": "laplace"}, "unknown smoothing"),
    ({"n": 2, "k": 0}, "k > 0"),
    ({"n": 2, "discount": 1.5}, "discount"),
    ({"n": 2, "smoothing": "interpolation", "lambdas": [0.5, 0.5]}, "lambdas must be 3"),
])
def test_bad_constructor_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        NGramLM(**kwargs)


def test_bad_use_raises_clear_errors() -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        NGramLM(2).prob("a", "b")
    with pytest.raises(ValueError, match="empty"):
        NGramLM(2).fit("")
    with pytest.raises(TypeError, match="expected a string"):
        NGramLM(2).fit(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bos token"):
        NGramLM(2).fit(["<s>", "a"])
    lm = NGramLM(2).fit("abc")
    with pytest.raises(ValueError, match="empty"):
        lm.perplexity("")
    with pytest.raises(ValueError, match="num_tokens"):
        lm.sample(-1)
    with pytest.raises(ValueError, match="tune_lambdas"):
        lm.tune_lambdas("abc")
    with pytest.raises(ValueError, match="too large"):
        NGramLM(8).fit([str(i) for i in range(1000)])
