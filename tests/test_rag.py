"""Tests of course_utils.rag: chunking, dense/BM25/TF-IDF search, caching, evaluation, prompts."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from course_utils import rag
from course_utils.rag import BM25Index, DenseIndex, Hit, Passage, TfidfIndex

from .nbsource import notebook_namespace

NOTEBOOK = "08_applications.ipynb"


def _rows(scene_words: list[list[int]], play: str = "p") -> list[dict]:
    """Speeches of a toy play: scene i has speeches of the given word counts."""
    rows = []
    for s, counts in enumerate(scene_words):
        for j, n in enumerate(counts):
            rows.append({"play": play, "act": "ACT I", "scene": f"SCENE {s}", "speaker": f"S{j % 2}",
                         "text": "\n".join(f"w{s}_{j}_{k}" for k in range(n))})
    return rows


def _passages(texts: list[str]) -> list[Passage]:
    return [Passage(i, "toy", "ACT I", "SCENE I", "A", t) for i, t in enumerate(texts)]


def test_chunking_respects_scenes_and_budget() -> None:
    ps = rag.chunk_speeches(_rows([[3, 4, 5], [2]]), max_words=8)
    assert [p.scene for p in ps] == ["SCENE 0", "SCENE 0", "SCENE 1"]
    assert all(len(p.text.replace(":", " ").split()) - p.text.count(":") <= 8 for p in ps)
    assert ps[0].speakers == "S0, S1" and ps[0].text.startswith("S0: w0_0_0")
    assert [p.pid for p in ps] == [0, 1, 2]
    # every line of every speech lands in exactly one passage
    words = re.findall(r"w\d+_\d+_\d+", "\n".join(p.text for p in ps))
    assert len(words) == len(set(words)) == 3 + 4 + 5 + 2


def test_long_speech_is_cut_between_lines() -> None:
    ps = rag.chunk_speeches(_rows([[25]]), max_words=10)
    assert len(ps) == 3 and all(p.text.startswith("S0: ") for p in ps)


def test_chunking_bad_input() -> None:
    with pytest.raises(ValueError, match="max_words"):
        rag.chunk_speeches(_rows([[1]]), max_words=0)
    with pytest.raises(KeyError, match="speaker"):
        rag.chunk_speeches([{"play": "p", "act": "", "scene": "", "text": "x"}])


def _fake_embed(calls: list[int]):
    """Bag of hashed words → 64-dim vector: deterministic and cheap, a stand-in for MiniLM."""
    def fn(texts: list[str]) -> torch.Tensor:
        calls.append(len(texts))
        out = torch.zeros(len(texts), 64)
        for i, t in enumerate(texts):
            for w in rag.tokenize_words(t):
                out[i, sum(map(ord, w)) % 64] += 1.0
        return torch.nn.functional.normalize(out + 1e-6, dim=-1)
    return fn


def test_dense_cache_hit_and_invalidation(tmp_path) -> None:
    calls: list[int] = []
    ps = _passages(["the cat sat on the mat", "a dog barked at night", "ships sail on the sea"])
    first = DenseIndex.build(ps, embed_fn=_fake_embed(calls), cache_dir=tmp_path, progress=False)
    assert not first.from_cache and calls == [3]
    again = DenseIndex.build(ps, embed_fn=_fake_embed(calls), cache_dir=tmp_path, progress=False)
    assert again.from_cache and calls == [3], "a second build must read the cache, not embed"
    assert torch.equal(again.embeddings, first.embeddings)
    changed = ps[:2] + [Passage(2, "toy", "ACT I", "SCENE I", "A", "ships sail on the ocean")]
    third = DenseIndex.build(changed, embed_fn=_fake_embed(calls), cache_dir=tmp_path, progress=False)
    assert not third.from_cache and calls == [3, 3]
    other_model = DenseIndex.build(ps, embed_fn=_fake_embed(calls), cache_dir=tmp_path, model_name="other",
                                   progress=False)
    assert not other_model.from_cache
    assert len(list(tmp_path.glob("*.safetensors"))) == 3
    assert rag.passages_hash(ps, "m") != rag.passages_hash(changed, "m")


def test_truncated_embedding_cache_is_embedded_again(tmp_path, capsys) -> None:
    """A cut-off cache file (a kernel killed while another wrote it) is reported and rebuilt,
    not a raw SafetensorError."""
    calls: list[int] = []
    ps = _passages(["the cat sat on the mat", "a dog barked at night", "ships sail on the sea"])
    DenseIndex.build(ps, embed_fn=_fake_embed(calls), cache_dir=tmp_path, progress=False)
    (cache,) = tmp_path.glob("*.safetensors")
    cache.write_bytes(cache.read_bytes()[:-7])
    again = DenseIndex.build(ps, embed_fn=_fake_embed(calls), cache_dir=tmp_path, progress=False)
    assert not again.from_cache and calls == [3, 3]
    assert "embedding the passages again" in capsys.readouterr().out
    assert DenseIndex.build(ps, embed_fn=_fake_embed(calls), cache_dir=tmp_path, progress=False).from_cache
    assert not list(tmp_path.glob("*.tmp")), "no temporary file is left behind"


def test_dense_search_orders_by_cosine() -> None:
    emb = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    index = DenseIndex(_passages(["a", "b", "c"]), emb, embed_fn=lambda t: torch.tensor([[0.0, 2.0]]))
    hits = index.search("anything", k=2)
    assert [h.passage.pid for h in hits] == [2, 1] and [h.rank for h in hits] == [1, 2]
    assert hits[0].score == pytest.approx(1.0) and hits[1].score == pytest.approx(0.8)
    with pytest.raises(ValueError, match="embeddings must be"):
        DenseIndex(_passages(["a"]), emb)
    with pytest.raises(ValueError, match="non-empty query"):
        index.search("  ")
    with pytest.raises(ValueError, match="positive int k"):
        index.search("x", k=0)


def test_bm25_matches_formula_by_hand() -> None:
    docs = ["the king is dead", "long live the king the king", "a horse a horse"]
    index = BM25Index(_passages(docs), k1=1.2, b=0.75)
    toks = [d.split() for d in docs]
    avg = sum(map(len, toks)) / 3
    query = ["king", "horse"]

    def score(doc: list[str]) -> float:
        s = 0.0
        for t in query:
            df = sum(t in d for d in toks)
            idf = math.log(1 + (3 - df + 0.5) / (df + 0.5))
            tf = doc.count(t)
            s += idf * tf * 2.2 / (tf + 1.2 * (1 - 0.75 + 0.75 * len(doc) / avg))
        return s

    hits = index.search("king horse", k=3)
    got = {h.passage.pid: h.score for h in hits}
    for i, d in enumerate(toks):
        assert got[i] == pytest.approx(score(d))
    with pytest.raises(ValueError, match="k1"):
        BM25Index(_passages(docs), b=2.0)


def test_notebook_bm25_agrees_with_package() -> None:
    ns = notebook_namespace(NOTEBOOK, ["bm25_scores"])
    docs = ["To be, or not to be: that is the question", "the king is dead, long live the king",
            "a horse! a horse! my kingdom for a horse!", "O Romeo, Romeo! wherefore art thou Romeo?"]
    index = BM25Index(_passages(docs))
    for query in ("the king", "horse kingdom", "romeo question"):
        mine = ns["bm25_scores"](rag.tokenize_words(query), [rag.tokenize_words(d) for d in docs])
        got = {h.passage.pid: h.score for h in index.search(query, k=4)}
        assert np.allclose(mine, [got[i] for i in range(4)])


def test_tfidf_and_empty_index() -> None:
    index = TfidfIndex(_passages(["red apples", "green pears", "red wine"]))
    assert index.search("apples", k=1)[0].passage.pid == 0
    with pytest.raises(ValueError, match="no passages"):
        TfidfIndex([])
    with pytest.raises(TypeError, match="Passage"):
        BM25Index(["just a string"])  # type: ignore[list-item]


class _FixedRanks:
    """An index whose gold passage appears at a fixed rank per question."""

    def __init__(self, ranks: dict[str, int]):
        self.passages = _passages([f"gold {q}" for q in ranks] + [f"filler {i}" for i in range(10)])
        self.ranks = ranks

    def search(self, query: str, k: int = 5) -> list[Hit]:
        gold = next(p for p in self.passages if p.text == f"gold {query}")
        fill = [p for p in self.passages if p.text.startswith("filler")]
        r = self.ranks[query]
        order = fill[: r - 1] + [gold] + fill[r - 1:] if r <= len(fill) else fill
        return [Hit(p, 0.0, i + 1) for i, p in enumerate(order[:k])]


def test_evaluate_retrieval_metrics() -> None:
    index = _FixedRanks({"a": 1, "b": 2, "c": 7, "d": 99})
    qa = [(q, "toy", f"gold {q}") for q in "abcd"]
    m = rag.evaluate_retrieval(index, qa, ks=(1, 5), depth=20)
    assert m["recall@1"] == 0.25 and m["recall@5"] == 0.5
    assert m["MRR"] == pytest.approx((1 + 1 / 2 + 1 / 7 + 0) / 4)
    with pytest.raises(ValueError, match="no indexed passage"):
        rag.evaluate_retrieval(index, [("a", "toy", "not there")])
    with pytest.raises(ValueError, match="qa is empty"):
        rag.evaluate_retrieval(index, [])


def test_rag_messages_cite_passage_ids() -> None:
    hits = [Hit(Passage(17, "macbeth", "ACT V", "SCENE I", "LADY MACBETH", "Out, damned spot!"), 0.9, 1)]
    msgs = rag.rag_messages("Who sleepwalks?", hits)
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert "[17] (macbeth, ACT V, SCENE I)" in msgs[1]["content"] and "Who sleepwalks?" in msgs[1]["content"]
    assert hits[0].passage.citation() == "[17] macbeth, ACT V, SCENE I"
    with pytest.raises(ValueError, match="no passages"):
        rag.rag_messages("q", [])


@pytest.fixture(scope="module")
def macbeth() -> list[Passage]:
    return rag.shakespeare_passages(["macbeth"])


def test_exact_quote_ranks_first(macbeth: list[Passage]) -> None:
    """Real MiniLM on the first 40 passages of Macbeth: three lines quoted exactly find their passage first."""
    ps = macbeth[:40]
    dense, bm25, tfidf = DenseIndex.build(ps, progress=False), BM25Index(ps), TfidfIndex(ps)
    for i in range(0, len(ps), 4):
        lines = [ln.split(": ", 1)[-1] for ln in ps[i].text.splitlines()]
        quote = " ".join(lines[:3])  # three lines quoted exactly, speaker names left out
        for index in (dense, bm25, tfidf):
            assert index.search(quote, k=1)[0].passage.pid == i, (type(index).__name__, quote)


def test_every_question_has_an_answer_in_its_play() -> None:
    plays = sorted({play for _, play, _ in rag.SHAKESPEARE_QA})
    ps = rag.shakespeare_passages(plays)
    assert 15 <= len(rag.SHAKESPEARE_QA) <= 30
    for question, play, quote in rag.SHAKESPEARE_QA:
        gold = rag.gold_ids(ps, quote)
        assert gold, f"{quote!r} not found"
        assert {ps[i].play for i in gold} == {play}, question
    with pytest.raises(ValueError, match="unknown plays"):
        rag.shakespeare_passages(["hamlett"])
