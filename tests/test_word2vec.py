"""course_utils.word2vec: skip-gram with negative sampling, and its queries checked against gensim."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from course_utils import word2vec as w2v


def test_tokenize_english() -> None:
    assert w2v.tokenize_english("'Tis NOW, fair Hippolyta! o'er-hasty") == ["tis", "now", "fair", "hippolyta", "o'er", "hasty"]
    with pytest.raises(TypeError, match="text"):
        w2v.tokenize_english(["a list"])  # type: ignore[arg-type]


def test_build_vocab_orders_by_count_and_drops_rare_words() -> None:
    vocab = w2v.build_vocab([["b", "a", "b"], ["c", "a", "b", "d"]], min_count=2)
    assert vocab.itos == ["b", "a"] and vocab.counts.tolist() == [3, 2]
    assert vocab.encode([["a", "d", "b"]]) == [[1, 0]]
    with pytest.raises(ValueError, match="min_count"):
        w2v.build_vocab([["a"]], min_count=0)
    with pytest.raises(ValueError, match="min_count=5"):
        w2v.build_vocab([["a"]], min_count=5)


def test_keep_probabilities_follow_word2vec() -> None:
    counts = np.array([1000, 100, 10, 1])
    keep = w2v.keep_probabilities(counts, sample=1e-2)
    thr = 1e-2 * counts.sum()
    expected = np.minimum(1, (np.sqrt(counts / thr) + 1) * thr / counts)
    np.testing.assert_allclose(keep, expected)
    assert keep[0] < keep[1] < 1 and keep[-1] == 1.0
    assert (w2v.keep_probabilities(counts, 0) == 1).all()
    with pytest.raises(ValueError, match="sample"):
        w2v.keep_probabilities(counts, -1)


def test_noise_distribution() -> None:
    p = w2v.noise_distribution(np.array([16, 1]), power=0.75)
    assert p.sum().item() == pytest.approx(1.0)
    assert p[0] / p[1] == pytest.approx(8.0)


def test_skipgram_pairs_window_one_and_sentence_boundaries() -> None:
    sents = [[0, 1, 2], [3, 4]]
    c, o = w2v.skipgram_pairs(sents, 1, np.random.default_rng(0))
    assert sorted(zip(c.tolist(), o.tolist())) == [(0, 1), (1, 0), (1, 2), (2, 1), (3, 4), (4, 3)]
    with pytest.raises(ValueError, match="window"):
        w2v.skipgram_pairs(sents, 0, np.random.default_rng(0))


def test_skipgram_pairs_reduced_window_matches_a_plain_loop() -> None:
    rng = np.random.default_rng(3)
    sents = [rng.integers(0, 50, size=n).tolist() for n in (7, 1, 12, 4)]
    window = 3
    reach = np.random.default_rng(9).integers(1, window + 1, size=sum(map(len, sents)))
    expected, t = [], 0
    for s in sents:
        for i, w in enumerate(s):
            for j in range(max(0, i - reach[t]), min(len(s), i + reach[t] + 1)):
                if j != i:
                    expected.append((w, s[j]))
            t += 1
    c, o = w2v.skipgram_pairs(sents, window, np.random.default_rng(9))
    assert sorted(zip(c.tolist(), o.tolist())) == sorted(expected)


def test_sgns_loss_by_hand() -> None:
    g = torch.Generator().manual_seed(0)
    v, u, neg = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g), torch.randn(4, 2, 3, generator=g)
    sig = lambda x: 1 / (1 + math.exp(-x))
    by_hand = 0.0
    for b in range(4):
        by_hand -= math.log(sig(float(v[b] @ u[b])))
        for k in range(2):
            by_hand -= math.log(sig(-float(v[b] @ neg[b, k])))
    assert w2v.sgns_loss(v, u, neg).item() == pytest.approx(by_hand / 4, rel=1e-5)
    with pytest.raises(ValueError, match="negatives"):
        w2v.sgns_loss(v, u, neg[0])


def test_skipgram_module_init_and_errors() -> None:
    m = w2v.SkipGram(10, 4)
    assert m.context.weight.abs().max() == 0 and m.centre.weight.abs().max() <= 0.5 / 4
    loss = m(torch.tensor([1, 2]), torch.tensor([3, 4]), torch.tensor([[5, 6], [7, 8]]))
    assert loss.item() == pytest.approx(3 * math.log(2), rel=1e-6)     # u = 0: every sigmoid is 1/2
    with pytest.raises(ValueError):
        w2v.SkipGram(1, 4)


def _gensim_kv(words: list[str], vectors: torch.Tensor):
    from gensim.models import KeyedVectors
    kv = KeyedVectors(vectors.shape[1])
    kv.add_vectors(words, vectors.numpy())
    return kv


def test_most_similar_and_analogy_equal_gensim() -> None:
    g = torch.Generator().manual_seed(1)
    words = [f"w{i}" for i in range(40)]
    vecs = torch.randn(40, 8, generator=g)
    wv, kv = w2v.WordVectors(words, vecs), _gensim_kv(words, vecs)
    ours = wv.most_similar("w3", 5)
    theirs = kv.most_similar("w3", topn=5)
    assert [w for w, _ in ours] == [w for w, _ in theirs]
    np.testing.assert_allclose([s for _, s in ours], [s for _, s in theirs], rtol=1e-5)
    for a, b, c in [("w1", "w2", "w3"), ("w10", "w0", "w7")]:
        assert wv.analogy(a, b, c, k=3)[0][0] == kv.most_similar(positive=[b, c], negative=[a], topn=3)[0][0]
    assert wv.similarity("w1", "w2") == pytest.approx(float(kv.similarity("w1", "w2")), rel=1e-5)
    with pytest.raises(KeyError, match="nope"):
        wv.most_similar("nope")
    with pytest.raises(ValueError, match="vectors"):
        w2v.WordVectors(words[:3], vecs)


def test_evaluate_analogies_equals_gensim(tmp_path: Path) -> None:
    """Same per-section accuracy as gensim's evaluate_word_analogies on the same vectors and file."""
    g = torch.Generator().manual_seed(2)
    words = [f"w{i}" for i in range(30)]
    vecs = torch.randn(30, 6, generator=g)
    vecs[5] = vecs[1] - vecs[0] + vecs[2]           # w0 : w1 :: w2 : w5 holds exactly
    rng = np.random.default_rng(0)
    lines = [": first", "W0 W1 W2 W5"] + [" ".join(f"W{i}" for i in rng.choice(30, 4, replace=False)) for _ in range(15)]
    lines += [": second"] + [" ".join(f"W{i}" for i in rng.choice(30, 4, replace=False)) for _ in range(15)]
    lines += [": missing", "W0 W1 W2 unknownword"]
    path = tmp_path / "questions.txt"
    path.write_text("\n".join(lines) + "\n")
    sections = w2v.read_analogies(path, words)
    assert set(sections) == {"first", "second"} and sections["first"][0] == ("w0", "w1", "w2", "w5")
    ours = w2v.evaluate_analogies(w2v.WordVectors(words, vecs), sections)
    score, theirs = _gensim_kv(words, vecs).evaluate_word_analogies(str(path))
    for sec in theirs:
        if sec["section"] == "Total accuracy":
            assert ours["total"] == pytest.approx(score)
        elif sec["correct"] or sec["incorrect"]:
            n = len(sec["correct"]) + len(sec["incorrect"])
            assert ours[sec["section"]] == pytest.approx(len(sec["correct"]) / n)
    assert ours["first"] >= 1 / 16


def test_train_skipgram_learns_two_topics_and_is_deterministic() -> None:
    rng = np.random.default_rng(0)
    topics = [[f"a{i}" for i in range(8)], [f"b{i}" for i in range(8)]]
    sents = [list(rng.choice(topics[t], size=6)) for t in rng.integers(0, 2, size=600)]
    kw = dict(dim=16, window=3, negative=4, min_count=1, sample=0.0, epochs=2, batch_size=256, lr=0.05, seed=0)
    wv, losses = w2v.train_skipgram(sents, **kw)
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    within = np.mean([wv.similarity(f"a{i}", f"a{j}") for i in range(8) for j in range(i + 1, 8)])
    across = np.mean([wv.similarity(f"a{i}", f"b{j}") for i in range(8) for j in range(8)])
    assert within > across + 0.3
    wv2, _ = w2v.train_skipgram(sents, **kw)
    assert torch.equal(wv.vectors, wv2.vectors)
    assert torch.allclose(wv.vectors.norm(dim=1), torch.ones(len(wv.itos)), atol=1e-5)
    with pytest.raises(ValueError, match="negative"):
        w2v.train_skipgram(sents, negative=0)
