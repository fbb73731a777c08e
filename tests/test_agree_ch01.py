"""Chapter 1's on-screen n-gram functions and course_utils.ngram.NGramLM give the same numbers."""
from __future__ import annotations

import math

import pytest

from course_utils.ngram import NGramLM
from tests.nbsource import notebook_namespace

NB = "01_background.ipynb"
NAMES = ["count_ngrams", "context_totals", "add_k_prob", "interpolated_prob", "perplexity"]
TRAIN = "to be, or not to be: that is the question. whether 'tis nobler in the mind to suffer"
TEST = "to be or not to suffer the slings"  # contains a character ('g') never seen in TRAIN


@pytest.fixture(scope="module")
def nb() -> dict:
    return notebook_namespace(NB, NAMES)


def _tables(nb: dict, n: int) -> tuple[dict, dict, int]:
    counts = nb["count_ngrams"](TRAIN, n)
    totals = {m: nb["context_totals"](counts[m]) for m in counts}
    return counts, totals, len(set(TRAIN)) + 1


def test_counts_match_the_package(nb: dict) -> None:
    counts, totals, _ = _tables(nb, 3)
    lm = NGramLM(3, "mle").fit(TRAIN)
    assert sum(counts[3].values()) == len(TRAIN)
    for (a, b, c), cnt in list(counts[3].items())[:30]:
        if a != "<s>" and b != "<s>":
            assert lm.prob(c, a + b) == pytest.approx(cnt / totals[3][(a, b)])


@pytest.mark.parametrize("n", [1, 2, 3, 4])
@pytest.mark.parametrize("k", [1.0, 0.1])
def test_add_k_matches(nb: dict, n: int, k: float) -> None:
    counts, totals, V = _tables(nb, n)
    lm = NGramLM(n, "add_k", k=k).fit(TRAIN)
    assert lm.V == V
    for i in range(len(TEST)):
        ctx, w = TEST[:i], TEST[i]
        assert lm.prob(w, ctx) == pytest.approx(nb["add_k_prob"](w, ctx, counts, totals, V, k=k), rel=1e-12)
    by_hand = nb["perplexity"](lambda w, h: nb["add_k_prob"](w, h, counts, totals, V, k=k), TEST)
    assert lm.perplexity(TEST) == pytest.approx(by_hand, rel=1e-10)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_interpolation_matches(nb: dict, n: int) -> None:
    counts, totals, V = _tables(nb, n)
    lam = [0.1] + [0.9 / n] * n
    lm = NGramLM(n, "interpolation", lambdas=lam).fit(TRAIN)
    for i in range(len(TEST)):
        ctx, w = TEST[:i], TEST[i]
        assert lm.prob(w, ctx) == pytest.approx(nb["interpolated_prob"](w, ctx, counts, totals, V, lam), rel=1e-12)
    by_hand = nb["perplexity"](lambda w, h: nb["interpolated_prob"](w, h, counts, totals, V, lam), TEST)
    assert lm.perplexity(TEST) == pytest.approx(by_hand, rel=1e-10)
    assert math.isfinite(by_hand)


# --- section 5: skip-gram with negative sampling, on screen vs course_utils.word2vec ---------

@pytest.fixture(scope="module")
def nb_w2v() -> dict:
    return notebook_namespace(NB, ["skipgram_pairs", "sgns_loss"])


@pytest.mark.parametrize("window", [1, 2, 5])
def test_skipgram_pairs_match_the_package(nb_w2v: dict, window: int) -> None:
    import numpy as np

    from course_utils import word2vec as w2v

    rng = np.random.default_rng(window)
    sents = [rng.integers(0, 30, size=n).tolist() for n in (9, 1, 0, 14, 3)]
    mine = nb_w2v["skipgram_pairs"](sents, window, np.random.default_rng(7))
    pkg = w2v.skipgram_pairs(sents, window, np.random.default_rng(7))
    assert mine[0].dtype == pkg[0].dtype
    assert sorted(zip(mine[0].tolist(), mine[1].tolist())) == sorted(zip(pkg[0].tolist(), pkg[1].tolist()))
    assert len(mine[0]) > 0


def test_sgns_loss_matches_the_package(nb_w2v: dict) -> None:
    import torch

    from course_utils import word2vec as w2v

    g = torch.Generator().manual_seed(0)
    for B, K, d in [(1, 1, 3), (16, 5, 8)]:
        v, u, neg = torch.randn(B, d, generator=g), torch.randn(B, d, generator=g), torch.randn(B, K, d, generator=g)
        v.requires_grad_(True)
        ours, theirs = nb_w2v["sgns_loss"](v, u, neg), w2v.sgns_loss(v, u, neg)
        assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)
        (g1,) = torch.autograd.grad(ours, v)
        (g2,) = torch.autograd.grad(theirs, v)
        assert torch.allclose(g1, g2, atol=1e-6)
